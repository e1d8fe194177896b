// RedisBackend: the Backend concept on a Redis server, through hiredis (RESP2; builds
// against hiredis 0.14 and 1.x). Link with larder::redis.
//
// A read returns the value and its remaining TTL in one round trip; compare-and-set,
// -delete and -expire are Lua scripts run by EVALSHA. Every call borrows a connection from
// a bounded pool and passes a circuit breaker, so a Redis that is down or slow costs the
// caller a quick, typed exception - TimeoutError, ConnectionError, CircuitOpenError, all
// BackendErrors - which CacheAside turns into a load from the database. See docs/redis.md.
#pragma once

#include <array>
#include <atomic>
#include <cstdint>
#include <initializer_list>
#include <memory>
#include <mutex>
#include <optional>
#include <span>
#include <stdexcept>
#include <string>
#include <string_view>
#include <type_traits>
#include <utility>
#include <vector>

#include "larder/backend/backend.hpp"
#include "larder/backend/lease_notices.hpp"
#include "larder/backend/redis/breaker.hpp"
#include "larder/backend/redis/commands.hpp"
#include "larder/backend/redis/connection.hpp"
#include "larder/backend/redis/lease_listener.hpp"
#include "larder/backend/redis/options.hpp"
#include "larder/backend/redis/pool.hpp"
#include "larder/backend/redis/reply.hpp"
#include "larder/backend/redis/scripts.hpp"
#include "larder/backend/redis/sentinel.hpp"
#include "larder/backend/redis/url.hpp"
#include "larder/core/clock.hpp"
#include "larder/core/error.hpp"
#include "larder/core/keys.hpp"

namespace larder {

/// A Lua script for RedisBackend::eval: `RedisScript s{"name", R"lua(...)lua"};`. The name
/// appears in errors; both strings must outlive the script (string literals do).
using RedisScript = redis_detail::Script;

class RedisBackend {
public:
    /// Validates the options (ConfigError) and, with require_connection, connects,
    /// authenticates and PINGs (ConnectionError). Otherwise no I/O happens here.
    explicit RedisBackend(RedisOptions options = {})
        : options_(validated(std::move(options))),
          endpoint_(redis_detail::Endpoint::from(options_)),
          breaker_(options_.breaker),
          pool_(
              {options_.pool_size, options_.pool_wait_timeout, options_.reconnect_backoff},
              [this] { return connect(); }, where()),
          compare_and_set_script_("compare_and_set", redis_detail::compare_and_set_lua),
          compare_and_delete_script_("compare_and_delete", redis_detail::compare_and_delete_lua),
          compare_and_expire_script_("compare_and_expire", redis_detail::compare_and_expire_lua),
          lease_channel_(options_.key_prefix + "larder:lease-ends") {
        if (!options_.sentinel.sentinels.empty()) {
            sentinel_ = std::make_unique<redis_detail::Sentinel>(
                options_.sentinel, endpoint_, counters_, [this] {
                    options_.log(LogLevel::warn, [&] {
                        return "redis '" + options_.name +
                               "': Sentinel announced a new primary of '" +
                               options_.sentinel.master_name + "'; following it";
                    });
                    pool_.close_idle();
                });
        }
        if (options_.require_connection) {
            try {
                ping();
            } catch (const BackendError& e) {
                throw ConnectionError("RedisBackend: Redis at " + where() +
                                      " is not usable and require_connection is set: " + e.what());
            }
        }
    }

    /// Not copyable: the pool and its connections belong to this object, which may be
    /// destroyed only once every call in flight has returned.
    RedisBackend(const RedisBackend&) = delete;
    RedisBackend& operator=(const RedisBackend&) = delete;

    // ---- the Backend concept --------------------------------------------------------

    /// GET alone, for callers that do not need the TTL: one command per hit.
    [[nodiscard]] std::optional<StoredValue> get_value(std::string_view key) {
        const redis_detail::StoredKey k(options_.key_prefix, key);
        return run("get_value", [&](redis_detail::Connection& c) {
            return redis_detail::get_value(c, k.view());
        });
    }

    /// One MGET for all keys, without TTLs.
    [[nodiscard]] std::vector<std::optional<StoredValue>> get_many_values(
        std::span<const std::string> keys) {
        if (keys.empty()) return {};
        const redis_detail::StoredKeys k(options_.key_prefix, keys);
        return run("get_many_values", [&](redis_detail::Connection& c) {
            redis_detail::send_mget(c, k.views());
            return redis_detail::receive_mget(c, keys.size());
        });
    }

    /// GET and PTTL, pipelined: one round trip (redis/commands.hpp says why not a script).
    [[nodiscard]] std::optional<StoredValue> get(std::string_view key) {
        const redis_detail::StoredKey k(options_.key_prefix, key);
        return run("get",
                   [&](redis_detail::Connection& c) { return redis_detail::get(c, k.view()); });
    }

    /// GET + PTTL per key, all in one pipeline: one round trip, aligned with `keys`.
    /// No keys, no round trip.
    [[nodiscard]] std::vector<std::optional<StoredValue>> get_many(
        std::span<const std::string> keys) {
        if (keys.empty()) return {};
        const redis_detail::StoredKeys k(options_.key_prefix, keys);
        return run("get_many", [&](redis_detail::Connection& c) {
            redis_detail::send_get_many(c, k.views());
            return redis_detail::receive_get_many(c, keys.size());
        });
    }

    /// SET key value [PX ttl]; a TTL of no_expiry (or below) stores without one.
    void set(std::string_view key, std::string_view value, Millis ttl) {
        const redis_detail::StoredKey k(options_.key_prefix, key);
        run_write("set",
                  [&](redis_detail::Connection& c) { redis_detail::set(c, k.view(), value, ttl); });
    }

    /// SET key value NX [PX ttl]: true when this call created the key.
    bool set_if_absent(std::string_view key, std::string_view value, Millis ttl) {
        const redis_detail::StoredKey k(options_.key_prefix, key);
        return run_write("set_if_absent", [&](redis_detail::Connection& c) {
            return redis_detail::set_if_absent(c, k.view(), value, ttl);
        });
    }

    /// Replaces the value (and TTL) only while it still equals `expected`. A script.
    bool compare_and_set(std::string_view key, std::string_view expected, std::string_view value,
                         Millis ttl) {
        const redis_detail::StoredKey k(options_.key_prefix, key);
        const redis_detail::Number px(ttl.count() > 0 ? saturated(ttl).count() : 0);
        const std::array<std::string_view, 1> keys{k.view()};
        const std::array<std::string_view, 3> args{expected, value, px.view()};
        return run_script(compare_and_set_script_, keys, args) == 1;
    }

    /// Deletes only while the value still equals `expected`. A script.
    bool compare_and_delete(std::string_view key, std::string_view expected) {
        const redis_detail::StoredKey k(options_.key_prefix, key);
        const std::array<std::string_view, 1> keys{k.view()};
        const std::array<std::string_view, 1> args{expected};
        return run_script(compare_and_delete_script_, keys, args) == 1;
    }

    /// Resets the TTL only while the value still equals `expected`. A script.
    bool compare_and_expire(std::string_view key, std::string_view expected, Millis ttl) {
        const redis_detail::StoredKey k(options_.key_prefix, key);
        const redis_detail::Number px(ttl.count() > 0 ? saturated(ttl).count() : 0);
        const std::array<std::string_view, 1> keys{k.view()};
        const std::array<std::string_view, 2> args{expected, px.view()};
        return run_script(compare_and_expire_script_, keys, args) == 1;
    }

    // ---- lease notices (NotifiesLeaseEnds) ------------------------------------------

    /// compare_and_set of a lease that also announces, to every process's lease
    /// listener, that the lease on `key` ended (a PUBLISH inside the same script).
    bool replace_lease(std::string_view key, std::string_view lease, std::string_view value,
                       Millis ttl) {
        const redis_detail::StoredKey k(options_.key_prefix, key);
        const redis_detail::Number px(ttl.count() > 0 ? saturated(ttl).count() : 0);
        const std::array<std::string_view, 1> keys{k.view()};
        const std::array<std::string_view, 5> args{lease, value, px.view(), lease_channel_, key};
        return run_script(compare_and_set_script_, keys, args) == 1;
    }

    /// compare_and_delete of a lease that also announces its end.
    bool release_lease(std::string_view key, std::string_view lease) {
        const redis_detail::StoredKey k(options_.key_prefix, key);
        const std::array<std::string_view, 1> keys{k.view()};
        const std::array<std::string_view, 3> args{lease, lease_channel_, key};
        return run_script(compare_and_delete_script_, keys, args) == 1;
    }

    /// What this backend hears of ended leases. The first call starts the listener: one
    /// connection and one thread, subscribed to `<key_prefix>larder:lease-ends`.
    LeaseNotices& lease_notices() {
        std::call_once(lease_listener_started_, [this] {
            lease_listener_ = std::make_unique<redis_detail::LeaseListener>(
                [this](redis_detail::Counters& counters) {
                    return sentinel_
                               ? sentinel_->connect_to_primary()
                               : std::make_unique<redis_detail::Connection>(endpoint_, counters);
                },
                lease_channel_, lease_notices_);
        });
        return lease_notices_;
    }

    /// DEL key: true when a key was removed.
    bool del(std::string_view key) {
        const redis_detail::StoredKey k(options_.key_prefix, key);
        return integer_command("del", Args{"DEL", k.view()}) > 0;
    }

    /// INCRBY: a missing key counts from 0, a TTL is kept; a value that is not an integer
    /// (or an overflow) is BackendError.
    std::int64_t increment(std::string_view key, std::int64_t delta) {
        const redis_detail::StoredKey k(options_.key_prefix, key);
        const redis_detail::Number by(delta);
        return integer_command("increment", Args{"INCRBY", k.view(), by.view()});
    }

    // ---- beyond the concept ----------------------------------------------------------

    /// PING; throws like any other call. A health check that also warms one connection.
    void ping() {
        run("ping", [&](redis_detail::Connection& c) {
            const auto reply = c.command(Args{"PING"});
            redis_detail::check(*reply, "PING");
        });
    }

    /// PUBLISH; returns the number of subscribers that received it. Channel names are not
    /// keys: the key prefix is not applied.
    std::int64_t publish(std::string_view channel, std::string_view message) {
        return integer_command("publish", Args{"PUBLISH", channel, message});
    }

    /// Any command, as given (no key prefix is applied), through the same pool and breaker.
    /// An error reply throws BackendError; errors nested in an array reply are returned.
    RedisReply command(std::span<const std::string_view> argv) {
        if (argv.empty()) throw InvalidArgumentError("RedisBackend::command: empty argv");
        Args args;
        for (std::string_view a : argv) args.push(a);
        const std::string name(argv.front().substr(0, 32));
        return run(
            "command",
            [&](redis_detail::Connection& c) {
                const auto reply = c.command(args);
                redis_detail::check(*reply, name);
                return redis_detail::to_reply(*reply);
            },
            redis_detail::reads_only(argv) ? Effect::read : Effect::write);
    }

    RedisReply command(std::initializer_list<std::string_view> argv) {
        return command(std::span<const std::string_view>(argv.begin(), argv.size()));
    }

    /// Runs a Lua script (loaded once per backend, then EVALSHA; reloaded on NOSCRIPT)
    /// through the same pool and breaker. The key prefix is applied to every key in
    /// `keys`; keep all of them in one hash slot for Redis Cluster. An error reply, or a
    /// script error, throws BackendError.
    RedisReply eval(RedisScript& script, std::span<const std::string_view> keys,
                    std::span<const std::string_view> args) {
        std::vector<std::string> prefixed;
        prefixed.reserve(keys.size());
        for (std::string_view k : keys) prefixed.push_back(stored_key(k));
        std::vector<std::string_view> views(prefixed.begin(), prefixed.end());
        return run(
            script.name(),
            [&](redis_detail::Connection& c) {
                return redis_detail::to_reply(*script.run(c, views, args));
            },
            script.writes() ? Effect::write : Effect::read);
    }

    /// eval, then WAIT `replicas` `timeout` on the same connection: the script's reply and
    /// how many replicas acknowledged its writes (WAIT counts the connection's writes).
    std::pair<RedisReply, std::int64_t> eval_and_wait(RedisScript& script,
                                                      std::span<const std::string_view> keys,
                                                      std::span<const std::string_view> args,
                                                      int replicas, Millis timeout) {
        std::vector<std::string> prefixed;
        prefixed.reserve(keys.size());
        for (std::string_view k : keys) prefixed.push_back(stored_key(k));
        std::vector<std::string_view> views(prefixed.begin(), prefixed.end());
        const redis_detail::Number n(replicas);
        const redis_detail::Number ms(timeout.count());
        return run(
            script.name(),
            [&](redis_detail::Connection& c) {
                RedisReply reply = redis_detail::to_reply(*script.run(c, views, args));
                const auto acked = c.command(Args{"WAIT", n.view(), ms.view()});
                redis_detail::check(*acked, "WAIT");
                return std::pair{std::move(reply), redis_detail::to_reply(*acked).integer};
            },
            Effect::write);
    }

    RedisReply eval(RedisScript& script, std::initializer_list<std::string_view> keys,
                    std::initializer_list<std::string_view> args) {
        return eval(script, std::span<const std::string_view>(keys.begin(), keys.size()),
                    std::span<const std::string_view>(args.begin(), args.size()));
    }

    [[nodiscard]] BreakerState breaker_state() const noexcept { return breaker_.state(); }

    [[nodiscard]] RedisBackendStats stats() const noexcept {
        RedisBackendStats s = counters_.snapshot();
        s.breaker_opens = breaker_.opens();
        s.primary_switches = sentinel_ ? sentinel_->switches() : 0;
        return s;
    }

    /// Sentinel: the primary's address in use, nullopt while none is known (or without
    /// Sentinel).
    [[nodiscard]] std::optional<RedisAddress> sentinel_primary() const {
        return sentinel_ ? sentinel_->known() : std::nullopt;
    }

    [[nodiscard]] const RedisOptions& options() const noexcept { return options_; }

    /// Server-assisted tracking of this backend's reads (RedisTrackingBus, keys_read mode):
    /// from now on every pooled connection, before its next command, points its tracking
    /// at `redirect`'s client id whenever redirect's epoch has moved. nullptr detaches (the
    /// connections then turn tracking off on their next use). A backend serves at most one
    /// such bus: attaching a second is a ConfigError.
    void redirect_tracking(std::shared_ptr<redis_detail::TrackingRedirect> redirect) {
        std::lock_guard lock(redirect_mutex_);
        if (redirect && redirect_owner_) {
            throw ConfigError(
                "RedisBackend: its reads are tracked for another RedisTrackingBus already (one "
                "backend serves at most one bus in keys_read mode)");
        }
        // A call in flight may still hold the old pointer: the object is kept until this
        // backend goes (one small object per bus ever attached).
        if (redirect_owner_) retired_redirects_.push_back(std::move(redirect_owner_));
        redirect_owner_ = std::move(redirect);
        redirect_.store(redirect_owner_.get(), std::memory_order_release);
    }

    /// Closes the idle pooled connections whose server hung up, at once rather than on
    /// their next use (RedisTrackingBus asks every ping_interval / 2). Returns how many.
    std::size_t close_hung_up_connections() noexcept { return pool_.close_hung_up_idle(); }

    /// The key as Redis sees it: key_prefix + key.
    [[nodiscard]] std::string stored_key(std::string_view key) const {
        return options_.key_prefix + std::string(key);
    }

private:
    // A cluster runs one RedisBackend per node and sends each call through the node's run().
    friend class RedisClusterBackend;

    using Args = redis_detail::Args;
    using Counters = redis_detail::Counters;

    /// Whether a call can change data: a write whose reply never came has an unknown
    /// outcome (OutcomeUnknownError), a read that timed out simply failed.
    enum class Effect : std::uint8_t { read, write };

    static RedisOptions validated(RedisOptions o) {
        auto fail = [](const std::string& why) { throw ConfigError("RedisOptions: " + why); };
        if (!o.sentinel.sentinels.empty()) {
            if (o.sentinel.master_name.empty()) fail("sentinel.master_name is empty");
            for (const RedisAddress& s : o.sentinel.sentinels) {
                if (s.host.empty()) fail("a sentinel has no host");
                if (s.port < 1 || s.port > 65535) fail("a sentinel's port must be in 1..65535");
            }
            if (!o.unix_socket.empty()) fail("unix_socket and sentinels exclude each other");
        } else if (o.unix_socket.empty()) {
            if (o.host.empty()) fail("host is empty (and no unix_socket)");
            if (o.port < 1 || o.port > 65535) fail("port must be in 1..65535");
        }
        if (o.db < 0) fail("db must not be negative");
        if (o.connect_timeout.count() <= 0) fail("connect_timeout must be positive");
        if (o.command_timeout.count() <= 0) fail("command_timeout must be positive");
        if (o.pool_size == 0) fail("pool_size must be at least 1");
        // A tenant's prefix ends in a separator, so that "tB" cannot reach the keys of "tB:".
        try {
            (void)keys::Namespace(o.key_prefix);
        } catch (const ConfigError& e) {
            fail(std::string("key_prefix: ") + e.what());
        }
        if (o.pool_wait_timeout.count() < 0) fail("pool_wait_timeout must not be negative");
        if (o.reconnect_backoff.count() < 0) fail("reconnect_backoff must not be negative");
        if (o.breaker.failure_threshold > 0 && o.breaker.cool_down.count() <= 0) {
            fail("breaker.cool_down must be positive");
        }
        return o;
    }

    std::string where() const {
        return options_.sentinel.sentinels.empty()
                   ? endpoint_.describe()
                   : "the primary of '" + options_.sentinel.master_name + "' (Sentinel)";
    }

    std::unique_ptr<redis_detail::Connection> connect() {
        try {
            auto conn = sentinel_
                            ? sentinel_->connect_to_primary()
                            : std::make_unique<redis_detail::Connection>(endpoint_, counters_);
            counters_.add<&RedisBackendStats::connects>();
            return conn;
        } catch (...) {
            counters_.add<&RedisBackendStats::connect_failures>();
            options_.log(LogLevel::info, [&] {
                return "redis '" + options_.name +
                       "': connecting failed: " + detail::current_exception_message();
            });
            throw;
        }
    }

    // Every call goes through here: breaker, pool, accounting. A failure that says the
    // server is unwell (I/O error, timeout, failed connect, LOADING...) counts against the
    // breaker; an error reply about the request itself (wrong type, rejected script) does
    // not, since the server answered it. Nor does a timeout that came while replies were
    // arriving: the server was answering, and what ran out was the time for the size of
    // the exchange (a large value), which says nothing about the server or other callers.
    template <class F>
    auto run(std::string_view operation, F&& body, Effect effect = Effect::read)
        -> std::invoke_result_t<F&, redis_detail::Connection&> {
        const auto timer = detail::time_backend_call(options_.metrics, options_.name, operation);
        if (!sentinel_) return run_once(body, effect);
        try {
            return run_once(body, effect);
        } catch (const ReplyError& e) {
            if (!e.read_only()) throw;
        }
        // A demoted primary refused the command, so it was not applied: once more, on the
        // primary the sentinels name now.
        return run_once(body, effect);
    }

    template <class F>
    auto run_once(F& body, Effect effect) -> std::invoke_result_t<F&, redis_detail::Connection&> {
        using Result = std::invoke_result_t<F&, redis_detail::Connection&>;
        using Ticket = redis_detail::CircuitBreaker::Ticket;
        Ticket ticket;
        try {
            ticket = breaker_.admit();
        } catch (const CircuitOpenError&) {
            counters_.add<&RedisBackendStats::short_circuited>();
            throw;
        }
        bool answering = false;  // a timeout came while replies were arriving
        try {
            auto lease = borrow(effect);
            follow_tracking(*lease);
            try {
                if constexpr (std::is_void_v<Result>) {
                    body(*lease);
                    call_succeeded(ticket);
                } else {
                    Result result = body(*lease);
                    call_succeeded(ticket);
                    return result;
                }
            } catch (const TimeoutError& e) {
                answering = lease->reply_started();
                if (effect == Effect::write && lease->request_sent() &&
                    dynamic_cast<const OutcomeUnknownError*>(&e) == nullptr) {
                    throw OutcomeUnknownError(std::string(e.what()) +
                                              " (the write was sent: it may have been applied)");
                }
                throw;
            } catch (const ReplyError& e) {
                if (sentinel_ && e.read_only()) {
                    primary_moved(*lease);
                    lease.discard();  // it goes to the demoted primary: not back to the pool
                }
                throw;
            } catch (const ConnectionError& e) {
                if (sentinel_ && lease->lost()) primary_moved(*lease);
                // The connection died after the whole write left: the server may have run
                // it before the reply was lost, so this is no plain failure either. (One
                // cut short while sending never ran: the server had no whole command.)
                if (effect == Effect::write && lease->request_complete() && lease->lost()) {
                    throw OutcomeUnknownError(std::string(e.what()) +
                                              " (after the write was sent: it may have been "
                                              "applied)");
                }
                throw;
            }
        } catch (const PoolExhaustedError&) {
            counters_.add<&RedisBackendStats::errors>();
            counters_.add<&RedisBackendStats::timeouts>();
            breaker_.abandoned(ticket);
            throw;
        } catch (const ClusterRedirectError&) {
            counters_.add<&RedisBackendStats::errors>();
            call_succeeded(ticket);  // the server answered: it is only the wrong one
            throw;
        } catch (const ReplyError& e) {
            counters_.add<&RedisBackendStats::errors>();
            // A cluster node that answers CLUSTERDOWN is up: another primary is missing, and
            // the node serves again as soon as that primary's replica takes over.
            if (e.server_unavailable() && !(cluster_node_ && e.cluster_down())) {
                call_failed(ticket, e.what());
            } else {
                call_succeeded(ticket);
            }
            throw;
        } catch (const TimeoutError& e) {
            counters_.add<&RedisBackendStats::errors>();
            counters_.add<&RedisBackendStats::timeouts>();
            if (answering) {
                counters_.add<&RedisBackendStats::payload_timeouts>();
                call_succeeded(ticket);
            } else {
                call_failed(ticket, e.what());
            }
            throw;
        } catch (const BackendError& e) {
            counters_.add<&RedisBackendStats::errors>();
            call_failed(ticket, e.what());
            throw;
        } catch (...) {
            breaker_.abandoned(ticket);
            throw;
        }
    }

    // Before a connection's command: point its tracking at the subscriber of the
    // RedisTrackingBus this backend serves, when that has moved since the connection last
    // looked (a new connection, a subscriber reconnect), or turn it off once no bus is
    // attached. Outside the body's try, so a write's outcome is never muddled by it: a
    // failure here happened before the write was sent. One extra round trip per
    // connection per subscriber (re)connect; on every other call, two atomic loads.
    void follow_tracking(redis_detail::Connection& c) {
        const redis_detail::TrackingRedirect* r = redirect_.load(std::memory_order_acquire);
        if (r == nullptr) {
            if (c.tracking_epoch() == 0) return;
            c.set_tracking(0, nullptr);  // from here on its closing concerns no bus
            send_tracking(c, Args{"CLIENT", "TRACKING", "off"});
            return;
        }
        const std::uint64_t epoch = r->epoch.load(std::memory_order_acquire);
        if (epoch == 0 || epoch == c.tracking_epoch()) return;
        const std::int64_t client = r->client_id.load(std::memory_order_acquire);
        if (client == 0) return;  // the subscriber is away: follow once it is back
        std::shared_ptr<redis_detail::TrackingRedirect> owner;
        {
            std::lock_guard lock(redirect_mutex_);
            if (redirect_owner_.get() == r) owner = redirect_owner_;
        }
        if (!owner) return;  // detached meanwhile: the next call turns tracking off
        const redis_detail::Number id(client);
        send_tracking(c, Args{"CLIENT", "TRACKING", "on", "REDIRECT", id.view()});
        c.set_tracking(epoch, std::move(owner));
    }

    // A write never leaves on a connection its server has closed already (a failover's
    // CLIENT KILL, an idle timeout): the lost reply would make an unsent write's outcome
    // "unknown". One poll() per write; reads just retry on the next call.
    redis_detail::ConnectionPool::Lease borrow(Effect effect) {
        for (std::size_t tries = 0;; ++tries) {
            auto lease = pool_.borrow();
            if (effect == Effect::read || tries > options_.pool_size || !lease->hung_up()) {
                return lease;
            }
            if (sentinel_) primary_moved(*lease);
            lease.discard();
        }
    }

    void call_succeeded(redis_detail::CircuitBreaker::Ticket ticket) noexcept {
        if (breaker_.succeeded(ticket)) {
            options_.log(LogLevel::info, [&] {
                return "redis '" + options_.name + "': " + where() +
                       " answered the probe; circuit breaker closed";
            });
        }
    }

    void call_failed(redis_detail::CircuitBreaker::Ticket ticket, std::string_view why) noexcept {
        if (breaker_.failed(ticket, why)) {
            options_.log(LogLevel::warn, [&] {
                return "redis '" + options_.name + "': circuit breaker open for " +
                       std::to_string(options_.breaker.cool_down.count()) +
                       " ms after: " + std::string(why);
            });
        }
    }

    // Under Sentinel: `c` found the node it reached is no longer the primary (it went
    // away, or refuses writes). The next connection asks the sentinels again, and the idle
    // ones, which go to the same node, are closed.
    void primary_moved(const redis_detail::Connection& c) {
        options_.log(LogLevel::warn, [&] {
            return "redis '" + options_.name + "': " + c.endpoint().describe() +
                   " is no longer the primary of '" + options_.sentinel.master_name +
                   "'; asking the sentinels";
        });
        sentinel_->forget(RedisAddress{c.endpoint().host, c.endpoint().port});
        pool_.close_idle();
    }

    void send_tracking(redis_detail::Connection& c, const Args& args) {
        counters_.add<&RedisBackendStats::tracking_redirects>();
        const auto reply = c.command(args);
        if (reply->type == REDIS_REPLY_ERROR)
            counters_.add<&RedisBackendStats::tracking_refusals>();
        redis_detail::check(*reply, "CLIENT TRACKING");
        if (reply->type != REDIS_REPLY_STATUS) redis_detail::unexpected(*reply, "CLIENT TRACKING");
    }

    template <class F>
    auto run_write(std::string_view operation, F&& body)
        -> std::invoke_result_t<F&, redis_detail::Connection&> {
        return run(operation, std::forward<F>(body), Effect::write);
    }

    std::int64_t run_script(redis_detail::Script& script, std::span<const std::string_view> keys,
                            std::span<const std::string_view> args) {
        return run(
            script.name(),
            [&](redis_detail::Connection& c) {
                return redis_detail::integer_script(c, script, keys, args);
            },
            script.writes() ? Effect::write : Effect::read);
    }

    // DEL, INCRBY, PUBLISH: all writes.
    std::int64_t integer_command(std::string_view operation, const Args& args) {
        return run_write(operation, [&](redis_detail::Connection& c) {
            return redis_detail::integer_reply(*c.command(args),
                                               std::string_view(args.argv()[0], args.lengths()[0]));
        });
    }

    const RedisOptions options_;
    const redis_detail::Endpoint endpoint_;
    Counters counters_;
    redis_detail::CircuitBreaker breaker_;
    redis_detail::ConnectionPool pool_;
    redis_detail::Script compare_and_set_script_;
    redis_detail::Script compare_and_delete_script_;
    redis_detail::Script compare_and_expire_script_;
    const std::string lease_channel_;
    std::atomic<redis_detail::TrackingRedirect*> redirect_{nullptr};
    std::mutex redirect_mutex_;
    std::shared_ptr<redis_detail::TrackingRedirect> redirect_owner_;
    std::vector<std::shared_ptr<redis_detail::TrackingRedirect>> retired_redirects_;
    bool cluster_node_ = false;  // set by RedisClusterBackend for each node it runs
    LeaseNotices lease_notices_;
    std::once_flag lease_listener_started_;
    // Its thread closes idle connections of pool_ until it is destroyed.
    std::unique_ptr<redis_detail::Sentinel> sentinel_;
    // Last: its thread connects through sentinel_ and tells lease_notices_.
    std::unique_ptr<redis_detail::LeaseListener> lease_listener_;
};

static_assert(Backend<RedisBackend>);
static_assert(Increments<RedisBackend>);
static_assert(ValueOnlyReads<RedisBackend>);
static_assert(NotifiesLeaseEnds<RedisBackend>);

}  // namespace larder
