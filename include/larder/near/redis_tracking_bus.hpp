// RedisTrackingBus: the invalidation bus produced by Redis itself (client-side caching,
// CLIENT TRACKING, RESP2 redirect mode). Redis tells the bus which keys changed - by any
// writer, larder or not, in any process - so no writer has to publish anything. One
// dedicated subscriber connection and one thread per bus, like RedisBus (redis_bus.hpp),
// with the same reconnect, backoff and PING liveness. See docs/tracking.md.
//
// Two modes:
//  - keys_read: Redis remembers which keys each connection of the given RedisBackend read
//    and reports a write to any of them once (then forgets the key until it is read
//    again). Each pooled connection points its tracking at the subscriber: the bus
//    publishes the subscriber's client id and an epoch through the backend
//    (RedisBackend::redirect_tracking), and a connection whose epoch is behind sends
//    CLIENT TRACKING on REDIRECT <id> before its next command.
//  - broadcast: Redis reports every write to keys under some prefixes, whoever read them;
//    only the subscriber tracks (BCAST), the backend's connections are left alone.
//
// Messages delivered: "k" + the stored key without the tenant prefix (an entry's or a
// version's; Near tells which), and "*" when the database was flushed. Keys of other
// tenants are dropped.
//
// A subscriber whose connection dies hears nothing more and Redis says nothing about it to
// the tracked connections (RESP2): the bus reports on_lost, reconnects, points the pool
// at the new connection, and only then reports on_restored.
#pragma once

#include <fcntl.h>
#include <poll.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <functional>
#include <memory>
#include <mutex>
#include <string>
#include <string_view>
#include <thread>
#include <vector>

#include "larder/backend/redis.hpp"
#include "larder/backend/redis/pubsub.hpp"
#include "larder/core/keys.hpp"
#include "larder/near/bus.hpp"

namespace larder {

enum class TrackingMode {
    /// Redis tracks the keys the backend's connections read (default mode, REDIRECT).
    keys_read,
    /// Redis reports every write under prefixes (BCAST), whoever read the key.
    broadcast,
};

struct RedisTrackingOptions {
    TrackingMode mode = TrackingMode::keys_read;
    /// broadcast only: the key prefixes of the caches, as they see them (e.g. "users:";
    /// empty or ending in ':'). Each covers its entries and its versions: the BCAST
    /// prefixes `<tenant><p>k:` and `<tenant><p>m:`. No prefixes: every key of the tenant
    /// (or, without a tenant prefix, every key).
    std::vector<std::string> prefixes{};
    /// First wait before reconnecting; doubles up to max_backoff.
    Millis first_backoff{20};
    Millis max_backoff{1000};
    /// A PING on a quiet subscription, and how long its answer may take. Until a dead
    /// subscriber is noticed, writes go unheard: this is the bound on how long an L1 may
    /// serve a stale value when the subscriber dies silently.
    Millis ping_interval{1000};
    Millis ping_timeout{2000};
    /// Told (on the bus's thread) why tracking failed or was refused; by default the
    /// reason goes to stderr. Keep it short; it must not throw.
    std::function<void(std::string_view)> on_error{};
};

class RedisTrackingBus {
public:
    /// The channel Redis sends invalidations on.
    static constexpr std::string_view channel = "__redis__:invalidate";

    /// `backend` is the one whose reads fill the L1s on this bus: where Redis is, how to
    /// log in, and the tenant's key prefix come from it. It must outlive the bus. In
    /// keys_read mode its reads are tracked for this bus; one backend serves at most one
    /// keys_read bus (ConfigError).
    explicit RedisTrackingBus(RedisBackend& backend, RedisTrackingOptions options = {})
        : options_(validated(std::move(options))),
          prefix_(backend.options().key_prefix),
          bcast_prefixes_(bcast_prefixes(options_, prefix_)),
          endpoint_(redis_detail::Endpoint::from(backend.options())),
          backend_(backend) {
        if (options_.mode == TrackingMode::keys_read) {
            redirect_ = std::make_shared<redis_detail::TrackingRedirect>();
            // A pooled connection that closes takes what Redis tracked for it along: a
            // write to a key only it read would never be reported, so L1 starts over.
            // Told on the bus's thread, not on the one that closed the connection: that
            // one may hold locks of its own (a subscriber's handler working through this
            // backend), and the subscribers' lock taken after them would invert the order.
            redirect_->on_untracked([this] {
                untracked_.fetch_add(1, std::memory_order_relaxed);
                untracked_pending_.store(true);
                wake();
            });
            backend_.redirect_tracking(redirect_);
        }
        if (pipe2(wake_, O_CLOEXEC | O_NONBLOCK) != 0) {
            if (redirect_) {
                redirect_->on_untracked(nullptr);
                backend_.redirect_tracking(nullptr);
            }
            throw BackendError("RedisTrackingBus: cannot create a wake-up pipe");
        }
        thread_ = std::thread([this] { run(); });
    }

    RedisTrackingBus(const RedisTrackingBus&) = delete;
    RedisTrackingBus& operator=(const RedisTrackingBus&) = delete;

    ~RedisTrackingBus() {
        if (redirect_) redirect_->on_untracked(nullptr);  // connections may outlive the bus
        stopping_.store(true);
        wake();
        thread_.join();
        close(wake_[0]);
        close(wake_[1]);
        if (redirect_) backend_.redirect_tracking(nullptr);
    }

    /// Does nothing: Redis produces the invalidations itself, from the writes (Near's
    /// writes included). Never throws.
    void publish(std::string_view) noexcept {}

    BusSubscription subscribe(BusHandlers handlers) {
        return state_.subscribe(std::move(handlers));
    }

    [[nodiscard]] bool connected() const noexcept { return state_.connected(); }

    /// Blocks until connected and every subscriber has been told so, or `timeout` passes;
    /// returns whether that happened.
    bool wait_connected(Millis timeout) { return state_.wait_connected(timeout); }

    [[nodiscard]] TrackingMode mode() const noexcept { return options_.mode; }

    /// The BCAST prefixes as sent to Redis (broadcast mode; empty: the whole keyspace).
    [[nodiscard]] const std::vector<std::string>& broadcast_prefixes() const noexcept {
        return bcast_prefixes_;
    }

    /// Subscriptions made so far (1 + reconnects): lets tests see a recovery.
    [[nodiscard]] std::uint64_t subscriptions() const noexcept { return state_.subscriptions(); }

    /// Attempts Redis refused (an ACL without CLIENT or the channel): each was reported.
    [[nodiscard]] std::uint64_t refusals() const noexcept { return refusals_.load(); }

    /// Why the last attempt failed; empty once subscribed.
    [[nodiscard]] std::string last_error() const { return state_.last_error(); }

    /// Invalidation messages received from Redis (one may name several keys).
    [[nodiscard]] std::uint64_t messages() const noexcept { return messages_.load(); }
    /// Keys delivered as "k" messages (keys of other tenants are not counted).
    [[nodiscard]] std::uint64_t keys_invalidated() const noexcept { return keys_.load(); }
    /// Flushes (FLUSHALL, FLUSHDB) delivered as "*".
    [[nodiscard]] std::uint64_t flushes() const noexcept { return flushes_.load(); }
    /// Pooled connections that closed while tracking (keys_read): each started L1 over.
    [[nodiscard]] std::uint64_t untracked_closes() const noexcept { return untracked_.load(); }

    /// The subscriber's client id while connected (0 otherwise).
    [[nodiscard]] std::int64_t client_id() const noexcept { return client_id_.load(); }

    /// The options, checked (ConfigError names what is wrong).
    static RedisTrackingOptions validated(RedisTrackingOptions o) {
        auto fail = [](const std::string& why) {
            throw ConfigError("RedisTrackingOptions: " + why);
        };
        if (o.mode == TrackingMode::keys_read && !o.prefixes.empty()) {
            fail("prefixes apply to broadcast mode only");
        }
        for (const auto& p : o.prefixes) {
            try {
                (void)keys::Namespace(p);
            } catch (const ConfigError& e) {
                fail("prefix '" + p + "': " + e.what());
            }
        }
        if (o.first_backoff.count() <= 0 || o.max_backoff < o.first_backoff) {
            fail("backoffs must be positive, max_backoff at least first_backoff");
        }
        if (o.ping_interval.count() <= 0 || o.ping_timeout.count() <= 0) {
            fail("ping_interval and ping_timeout must be positive");
        }
        return o;
    }

private:
    static std::vector<std::string> bcast_prefixes(const RedisTrackingOptions& o,
                                                   const std::string& tenant) {
        std::vector<std::string> out;
        if (o.mode != TrackingMode::broadcast) return out;
        if (o.prefixes.empty()) {
            if (!tenant.empty()) out.push_back(tenant);
            return out;
        }
        for (const auto& p : o.prefixes) {
            for (const char* part : {"k:", "m:"}) {
                std::string full = tenant + p + part;
                if (std::find(out.begin(), out.end(), full) == out.end()) {
                    out.push_back(std::move(full));
                }
            }
        }
        return out;
    }

    void wake() const {
        const char byte = 1;
        [[maybe_unused]] const auto n = ::write(wake_[1], &byte, 1);
    }

    // Sleeps up to `d`, or less when the bus is being destroyed. (A closed tracking
    // connection does not matter meanwhile: L1 starts over when the bus is back.)
    void nap(Millis d) const {
        const auto until = std::chrono::steady_clock::now() + d;
        while (!stopping_.load()) {
            const auto left =
                std::chrono::duration_cast<Millis>(until - std::chrono::steady_clock::now());
            if (left.count() <= 0) return;
            pollfd p{wake_[0], POLLIN, 0};
            if (::poll(&p, 1, static_cast<int>(left.count())) > 0) drain_wakes();
        }
    }

    void drain_wakes() const {
        char buffer[64];
        while (::read(wake_[0], buffer, sizeof buffer) > 0) {
        }
    }

    void run() {
        Millis backoff = options_.first_backoff;
        while (!stopping_.load()) {
            try {
                listen();
                backoff = options_.first_backoff;
            } catch (const Refused& e) {
                // Not a network fault: it lasts until someone changes the ACL.
                // Reported before counted: whoever sees the count sees the reason too.
                report(e.what());
                refusals_.fetch_add(1);
                backoff = options_.max_backoff;
            } catch (const std::exception& e) {
                // Connection refused, lost, or silent: retry below.
                state_.set_error(e.what());
            }
            // on_lost first: L1 stops serving before anything else happens.
            if (state_.connected()) {
                state_.set_connected(false, [&] {
                    client_id_.store(0);
                    if (redirect_) redirect_->suspend();
                });
            }
            if (stopping_.load()) break;
            nap(backoff);
            backoff = std::min(backoff * 2, options_.max_backoff);
        }
    }

    static void refused_unless(const redisReply& reply, int type, const std::string& what) {
        if (reply.type == type) return;
        std::string why = "RedisTrackingBus: " + what + " refused";
        if (reply.type == REDIS_REPLY_ERROR)
            why += ": " + std::string(redis_detail::text_of(reply));
        throw Refused(why);
    }

    // One subscription, until it fails or the bus stops.
    void listen() {
        redis_detail::Counters counters;
        redis_detail::Connection conn(endpoint_, counters);
        using Args = redis_detail::Args;

        const auto id_reply = conn.command(Args{"CLIENT", "ID"});
        refused_unless(*id_reply, REDIS_REPLY_INTEGER, "CLIENT ID");
        const std::int64_t id = id_reply->integer;
        const redis_detail::Number id_arg(id);

        // The subscriber tracks too, redirected to itself: in broadcast mode it is the one
        // tracking client; in keys_read mode it reads nothing, so this only proves early
        // that the ACL allows CLIENT TRACKING (the pool's connections would be refused
        // later, one call at a time).
        //
        // No NOLOOP, in keys_read mode: Redis removes a key from a connection's tracking
        // when that connection writes it, even when NOLOOP suppresses the message. A value
        // this process reads back into L1 after its own write would then never hear of the
        // next write by anyone else. (In broadcast mode the tracking client is this
        // subscriber, which never writes: NOLOOP would change nothing.)
        Args tracking{"CLIENT", "TRACKING", "on", "REDIRECT", id_arg.view()};
        if (options_.mode == TrackingMode::broadcast) {
            tracking.push("BCAST");
            for (const auto& p : bcast_prefixes_) {
                tracking.push("PREFIX");
                tracking.push(p);
            }
        }
        refused_unless(*conn.command(tracking), REDIS_REPLY_STATUS, "CLIENT TRACKING");
        refused_unless(*conn.command(Args{"SUBSCRIBE", channel}), REDIS_REPLY_ARRAY,
                       "SUBSCRIBE " + std::string(channel));
        client_id_.store(id);

        // Order matters (keys_read). The pool's connections must follow the new id before
        // on_restored: Near clears and re-enables L1 there, and every L1 fill that started
        // earlier fails by generation. A fill that can succeed read its generation after
        // that, hence after the retarget below (the clear is ordered after it), so the read
        // it fills from runs on a connection that first compares its epoch with this one
        // and, being behind, redirects to this subscriber: whatever it read is tracked here.
        untracked_pending_.store(false);  // connections that tracked for the old subscriber
        if (redirect_) redirect_->retarget(id);
        state_.set_connected(true);

        // ["message", channel, [key...] or nil]; PING answers ["pong", ""].
        const auto on_reply = [this](const redisReply& message) {
            const redisReply* payload = redis_detail::message_payload(message);
            if (payload == nullptr) return;
            messages_.fetch_add(1, std::memory_order_relaxed);
            redis_detail::for_each_invalidation(
                *payload, [this](std::string_view key) { deliver(key); },
                [this] {
                    // FLUSHALL / FLUSHDB: every key may have changed.
                    flushes_.fetch_add(1, std::memory_order_relaxed);
                    state_.message("*");
                });
        };
        redis_detail::SubscriptionLiveness liveness(options_.ping_interval, options_.ping_timeout,
                                                    "RedisTrackingBus");
        while (!stopping_.load()) {
            if (redis_detail::subscription_turn(conn.context(), wake_[0], liveness, on_reply)) {
                drain_wakes();
                if (stopping_.load()) return;
            }
            // keys_read: a pooled connection the server closed while idle took what it
            // tracked along; closing it here starts L1 over within ping_interval / 2.
            if (redirect_) backend_.close_hung_up_connections();
            if (untracked_pending_.exchange(false)) state_.message("*");
        }
    }

    // A stored key: "k" + the key without the tenant prefix; another tenant's is dropped.
    void deliver(std::string_view stored) {
        if (!stored.starts_with(prefix_)) return;
        stored.remove_prefix(prefix_.size());
        message_.assign("k").append(stored);
        keys_.fetch_add(1, std::memory_order_relaxed);
        state_.message(message_);
    }

    void report(const std::string& why) { state_.report(why, options_.on_error); }

    class Refused : public BackendError {
    public:
        using BackendError::BackendError;
    };

    const RedisTrackingOptions options_;
    const std::string prefix_;
    const std::vector<std::string> bcast_prefixes_;
    const redis_detail::Endpoint endpoint_;
    RedisBackend& backend_;
    std::shared_ptr<redis_detail::TrackingRedirect> redirect_;  // keys_read only
    detail::ListenerState state_;
    std::string message_;  // reused by deliver(), on the bus's thread
    std::atomic<bool> stopping_{false};
    std::atomic<std::int64_t> client_id_{0};
    std::atomic<std::uint64_t> untracked_{0};
    std::atomic<bool> untracked_pending_{false};  // a "*" for the bus's thread to deliver
    std::atomic<std::uint64_t> refusals_{0};
    std::atomic<std::uint64_t> messages_{0};
    std::atomic<std::uint64_t> keys_{0};
    std::atomic<std::uint64_t> flushes_{0};
    int wake_[2] = {-1, -1};
    std::thread thread_;  // last: starts after everything it uses exists
};

static_assert(InvalidationBus<RedisTrackingBus>);

}  // namespace larder
