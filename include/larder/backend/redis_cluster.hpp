// RedisClusterBackend: the Backend concept on a Redis Cluster, through hiredis. Link with
// larder::redis; docs/cluster.md.
//
// Each node gets a RedisBackend of its own (its pool, its circuit breaker), so a node that
// dies fails fast alone while the others serve. A call goes to the node that serves its
// key's slot, in a slot table refreshed from CLUSTER SLOTS at start, periodically, after a
// MOVED and after a node failed to answer. Redirects are followed inside the call: MOVED
// (the slot has a new owner: remember it, retry there), ASK (one key of a slot in
// migration: ASKING, then the command at the importing node) and TRYAGAIN (a multi-key
// command met a slot half moved: wait and retry), each bounded. Multi-key reads are split
// by node, sent to every node before any reply is read, and put back in order: one round
// trip per node involved, all in parallel.
#pragma once

#include <algorithm>
#include <array>
#include <atomic>
#include <charconv>
#include <chrono>
#include <cstddef>
#include <cstdint>
#include <exception>
#include <functional>
#include <initializer_list>
#include <memory>
#include <mutex>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <thread>
#include <type_traits>
#include <utility>
#include <vector>

#include "larder/backend/backend.hpp"
#include "larder/backend/redis.hpp"
#include "larder/backend/redis/cluster_slots.hpp"
#include "larder/backend/redis/commands.hpp"
#include "larder/core/clock.hpp"
#include "larder/core/error.hpp"
#include "larder/core/keys.hpp"

namespace larder {

struct RedisClusterOptions {
    /// Nodes asked for the slot map until one answers; any node of the cluster will do.
    /// Name more than one, so that the backend starts while one of them is down.
    std::vector<ClusterNode> seeds{};
    /// How every node is reached: credentials, timeouts, pool, circuit breaker, key prefix.
    /// host, port and unix_socket are not used (the nodes come from seeds and from the
    /// cluster itself), nor is db: a cluster has database 0 only.
    RedisOptions node{};
    /// The slot map is read again this often while nothing says it changed.
    Millis refresh_interval{5000};
    /// ... and at most this often after something said it did (a MOVED, a node that did
    /// not answer): during a failover, until a replica is promoted.
    Millis min_refresh_interval{100};
    /// Redirects (MOVED, ASK) one call follows before it fails with ClusterRedirectError.
    unsigned max_redirects = 5;
    /// TRYAGAIN (keys of one slot split by a migration in progress): a call retries for
    /// up to try_again_timeout, the first retry after try_again_backoff, each wait twice
    /// the one before (at most 50 ms). A slot moves in batches of keys, so a large one can
    /// keep a multi-key script waiting for a while.
    Millis try_again_timeout{2000};
    Millis try_again_backoff{2};
    /// Reads (get, get_value, get_many, get_many_values) go to a replica of the key's
    /// slot (READONLY), writes to its primary. Off by default: a replica lags its primary,
    /// so a read just after a write or an invalidation can return the value it replaced
    /// (docs/cluster.md, "Reading from replicas").
    bool read_from_replicas = false;

    /// Seeds and node credentials from a comma-separated list of redis:// URLs (each as
    /// RedisOptions::from_url reads it; credentials from the first); everything else from
    /// the defaults. ConfigError on a malformed list.
    [[nodiscard]] static RedisClusterOptions from_urls(std::string_view urls) {
        auto fail = [](const char* why) {
            throw ConfigError(std::string("RedisClusterOptions: ") + why);
        };
        if (urls.empty()) fail("no URL in the list");
        RedisClusterOptions options;
        for (bool first = true;; first = false) {
            const auto comma = urls.find(',');
            const std::string_view url = urls.substr(0, comma);
            if (url.empty()) fail("an empty URL in the list");
            const RedisOptions parsed = RedisOptions::from_url(url);
            if (!parsed.unix_socket.empty()) fail("cluster nodes are reached over TCP");
            if (parsed.db != 0) fail("a cluster has database 0 only");
            if (first) {
                options.node.user = parsed.user;
                options.node.password = parsed.password;
            } else if (parsed.user != options.node.user ||
                       parsed.password != options.node.password) {
                fail("the URLs name different credentials: every node takes the same");
            }
            options.seeds.push_back(ClusterNode{.host = parsed.host, .port = parsed.port});
            if (comma == std::string_view::npos) return options;
            urls.remove_prefix(comma + 1);
        }
    }
};

/// What one RedisClusterBackend has done since it was built; every node's RedisBackend
/// counts its own round trips, connects and breaker opens (node_stats).
struct RedisClusterStats {
    std::uint64_t errors = 0;            ///< calls that threw BackendError to the caller
    std::uint64_t moved = 0;             ///< MOVED redirects followed
    std::uint64_t asked = 0;             ///< ASK redirects followed
    std::uint64_t try_agains = 0;        ///< TRYAGAIN retries
    std::uint64_t refreshes = 0;         ///< slot maps read (CLUSTER SLOTS answered)
    std::uint64_t refresh_failures = 0;  ///< refreshes that no node answered
    std::uint64_t replica_reads = 0;     ///< reads sent to a replica
    std::uint64_t nodes = 0;             ///< nodes known so far: the seeds and the maps'

    friend bool operator==(const RedisClusterStats&, const RedisClusterStats&) = default;
};

template <>
struct counter_set<RedisClusterStats> {
    using S = RedisClusterStats;
    static constexpr std::string_view family = "redis_cluster";
    static constexpr std::array<CounterField<S>, 8> fields{{
        {"errors", "calls that threw BackendError to the caller", &S::errors},
        {"moved", "MOVED redirects followed", &S::moved},
        {"asked", "ASK redirects followed", &S::asked},
        {"try_agains", "TRYAGAIN retries", &S::try_agains},
        {"refreshes", "slot maps read", &S::refreshes},
        {"refresh_failures", "slot map refreshes that no node answered", &S::refresh_failures},
        {"replica_reads", "reads sent to a replica", &S::replica_reads},
        {"nodes", "nodes known so far", &S::nodes},
    }};
};

class RedisClusterBackend {
public:
    /// Validates the options (ConfigError) and reads the slot map from the first seed that
    /// answers (ConnectionError when none does).
    explicit RedisClusterBackend(RedisClusterOptions options)
        : options_(validated(std::move(options))),
          compare_and_set_script_("compare_and_set", redis_detail::compare_and_set_lua),
          compare_and_delete_script_("compare_and_delete", redis_detail::compare_and_delete_lua),
          compare_and_expire_script_("compare_and_expire", redis_detail::compare_and_expire_lua) {
        for (auto& s : primary_) s.store(nullptr, std::memory_order_relaxed);
        for (auto& s : replica_) s.store(nullptr, std::memory_order_relaxed);
        for (const ClusterNode& seed : options_.seeds) {
            (void)node_at(seed.host, seed.port, false, Serving::no);
        }
        refresh_slots();
    }

    RedisClusterBackend(const RedisClusterBackend&) = delete;
    RedisClusterBackend& operator=(const RedisClusterBackend&) = delete;

    // ---- the Backend concept --------------------------------------------------------

    [[nodiscard]] std::optional<StoredValue> get_value(std::string_view key) {
        const redis_detail::StoredKey k(options_.node.key_prefix, key);
        return on_key("get_value", k.view(), Access::read, [&](redis_detail::Connection& c) {
            return redis_detail::get_value(c, k.view());
        });
    }

    [[nodiscard]] std::optional<StoredValue> get(std::string_view key) {
        const redis_detail::StoredKey k(options_.node.key_prefix, key);
        return on_key("get", k.view(), Access::read,
                      [&](redis_detail::Connection& c) { return redis_detail::get(c, k.view()); });
    }

    /// GET + PTTL per key: one pipeline per node involved, all sent before any reply is
    /// read. Aligned with `keys`.
    [[nodiscard]] std::vector<std::optional<StoredValue>> get_many(
        std::span<const std::string> keys) {
        return read_many(keys, true);
    }

    /// GET per key (not MGET: the keys of one node may lie in several slots).
    [[nodiscard]] std::vector<std::optional<StoredValue>> get_many_values(
        std::span<const std::string> keys) {
        return read_many(keys, false);
    }

    void set(std::string_view key, std::string_view value, Millis ttl) {
        const redis_detail::StoredKey k(options_.node.key_prefix, key);
        on_key("set", k.view(), Access::write,
               [&](redis_detail::Connection& c) { redis_detail::set(c, k.view(), value, ttl); });
    }

    bool set_if_absent(std::string_view key, std::string_view value, Millis ttl) {
        const redis_detail::StoredKey k(options_.node.key_prefix, key);
        return on_key("set_if_absent", k.view(), Access::write, [&](redis_detail::Connection& c) {
            return redis_detail::set_if_absent(c, k.view(), value, ttl);
        });
    }

    bool compare_and_set(std::string_view key, std::string_view expected, std::string_view value,
                         Millis ttl) {
        const redis_detail::StoredKey k(options_.node.key_prefix, key);
        const redis_detail::Number px(ttl.count() > 0 ? saturated(ttl).count() : 0);
        const std::array<std::string_view, 3> args{expected, value, px.view()};
        return integer_script(compare_and_set_script_, k.view(), args) == 1;
    }

    bool compare_and_delete(std::string_view key, std::string_view expected) {
        const redis_detail::StoredKey k(options_.node.key_prefix, key);
        const std::array<std::string_view, 1> args{expected};
        return integer_script(compare_and_delete_script_, k.view(), args) == 1;
    }

    bool compare_and_expire(std::string_view key, std::string_view expected, Millis ttl) {
        const redis_detail::StoredKey k(options_.node.key_prefix, key);
        const redis_detail::Number px(ttl.count() > 0 ? saturated(ttl).count() : 0);
        const std::array<std::string_view, 2> args{expected, px.view()};
        return integer_script(compare_and_expire_script_, k.view(), args) == 1;
    }

    bool del(std::string_view key) {
        const redis_detail::StoredKey k(options_.node.key_prefix, key);
        return integer_command("del", k.view(), redis_detail::Args{"DEL", k.view()}, "DEL") > 0;
    }

    std::int64_t increment(std::string_view key, std::int64_t delta) {
        const redis_detail::StoredKey k(options_.node.key_prefix, key);
        const redis_detail::Number by(delta);
        return integer_command("increment", k.view(),
                               redis_detail::Args{"INCRBY", k.view(), by.view()}, "INCRBY");
    }

    // ---- beyond the concept ----------------------------------------------------------

    /// A command, as given (no key prefix is applied), on the node that serves the slot of
    /// argv[1] (the first key of nearly every command); a command of one word goes to any
    /// node. An error reply throws BackendError.
    RedisReply command(std::span<const std::string_view> argv) {
        return command_at(argv.size() > 1 ? argv[1] : std::string_view{}, argv);
    }

    RedisReply command(std::initializer_list<std::string_view> argv) {
        return command(std::span<const std::string_view>(argv.begin(), argv.size()));
    }

    /// A command on the node that serves the slot of `stored_key` (the key as Redis sees
    /// it, prefix included): for commands about the server (INFO, CONFIG GET) asked of the
    /// node that holds a given key.
    RedisReply command_at(std::string_view stored_key, std::span<const std::string_view> argv) {
        if (argv.empty()) throw ConfigError("RedisClusterBackend::command: empty argv");
        redis_detail::Args args;
        for (std::string_view a : argv) args.push(a);
        const std::string name(argv.front().substr(0, 32));
        return on_key("command", stored_key,
                      redis_detail::reads_only(argv) ? Access::read_primary : Access::write,
                      [&](redis_detail::Connection& c) {
                          const auto reply = c.command(args);
                          redis_detail::check(*reply, name);
                          return redis_detail::to_reply(*reply);
                      });
    }

    RedisReply command_at(std::string_view stored_key,
                          std::initializer_list<std::string_view> argv) {
        return command_at(stored_key, std::span<const std::string_view>(argv.begin(), argv.size()));
    }

    /// A Lua script on the node that serves its keys' slot; the key prefix is applied to
    /// every key, and all of them must share one slot (a hash tag), or the node answers
    /// CROSSSLOT (ClusterRedirectError).
    RedisReply eval(RedisScript& script, std::span<const std::string_view> keys,
                    std::span<const std::string_view> args) {
        const redis_detail::StoredKeys stored(options_.node.key_prefix, keys);
        return on_key(script.name(), first_of(stored.views()), access_of(script),
                      [&](redis_detail::Connection& c) {
                          return redis_detail::to_reply(*script.run(c, stored.views(), args));
                      });
    }

    RedisReply eval(RedisScript& script, std::initializer_list<std::string_view> keys,
                    std::initializer_list<std::string_view> args) {
        return eval(script, std::span<const std::string_view>(keys.begin(), keys.size()),
                    std::span<const std::string_view>(args.begin(), args.size()));
    }

    /// eval, then WAIT `replicas` `timeout` on the same connection (RedisBackend's).
    std::pair<RedisReply, std::int64_t> eval_and_wait(RedisScript& script,
                                                      std::span<const std::string_view> keys,
                                                      std::span<const std::string_view> args,
                                                      int replicas, Millis timeout) {
        const redis_detail::StoredKeys stored(options_.node.key_prefix, keys);
        const redis_detail::Number n(replicas);
        const redis_detail::Number ms(timeout.count());
        return on_key(
            script.name(), first_of(stored.views()), Access::write,
            [&](redis_detail::Connection& c) {
                RedisReply reply = redis_detail::to_reply(*script.run(c, stored.views(), args));
                const auto acked = c.command(redis_detail::Args{"WAIT", n.view(), ms.view()});
                redis_detail::check(*acked, "WAIT");
                return std::pair{std::move(reply), redis_detail::to_reply(*acked).integer};
            });
    }

    /// Reads the slot map now, from the first node that answers (primaries first). Throws
    /// ConnectionError when none does; the map in use is then kept.
    void refresh_slots() {
        try {
            std::lock_guard lock(refresh_mutex_);
            refresh_locked();
        } catch (const ConnectionError& e) {
            log_refresh_failure(e);
            throw;
        }
    }

    /// The key as Redis sees it: key_prefix + key.
    [[nodiscard]] std::string stored_key(std::string_view key) const {
        return options_.node.key_prefix + std::string(key);
    }

    /// Every node's options (RedisClusterOptions::node).
    [[nodiscard]] const RedisOptions& options() const noexcept { return options_.node; }

    [[nodiscard]] const RedisClusterOptions& cluster_options() const noexcept { return options_; }

    [[nodiscard]] RedisClusterStats stats() const {
        RedisClusterStats s = counters_.snapshot();
        std::lock_guard lock(nodes_mutex_);
        s.nodes = nodes_.size();
        return s;
    }

    /// Each node's own counters, "host:port" first ("host:port (replica reads)" for the
    /// READONLY connections of read_from_replicas).
    [[nodiscard]] std::vector<std::pair<std::string, RedisBackendStats>> node_stats() const {
        std::lock_guard lock(nodes_mutex_);
        std::vector<std::pair<std::string, RedisBackendStats>> out;
        for (const auto& n : nodes_) out.emplace_back(n->name, n->backend.stats());
        return out;
    }

    /// Told when a node starts serving calls (it is in the slot table, or a redirect sent a
    /// call there) and when it stops (the table no longer names it): a per-node companion,
    /// such as RedisClusterTrackingBus, follows the nodes with it. A node is told it serves
    /// before any call reaches it through the table or a redirect. At once, `watcher` is
    /// told every node serving now. Told under a lock of the backend's, one call at a time,
    /// on whichever thread changed the map: keep it short, and do not call the backend from
    /// it. One watcher per backend (ConfigError); nullptr removes it.
    void watch_nodes(std::function<void(RedisBackend& node, bool serving)> watcher) {
        std::lock_guard lock(watch_mutex_);
        if (watcher && watcher_) {
            throw ConfigError(
                "RedisClusterBackend: its nodes are watched already (one watcher, "
                "such as one RedisClusterTrackingBus, per backend)");
        }
        watcher_ = std::move(watcher);
        if (!watcher_) return;
        try {
            for (Node* n : all_nodes()) {
                if (n->serving.load()) watcher_(n->backend, true);
            }
        } catch (...) {
            watcher_ = nullptr;  // a watcher that failed to start is not kept
            throw;
        }
    }

    /// The address ("host:port") of the primary that serves `key` in the slot map in use.
    [[nodiscard]] std::string node_of(std::string_view key) const {
        const Node* n = primary_[keys::slot(stored_key(key))].load(std::memory_order_acquire);
        return n != nullptr ? n->address : std::string{};
    }

private:
    using Args = redis_detail::Args;
    using Effect = RedisBackend::Effect;

    // Where a call may go: a read may go to a replica (read_from_replicas); a read that
    // must see the latest write, and every write, go to the slot's primary.
    enum class Access : std::uint8_t { read, read_primary, write };

    struct Node {
        Node(std::string host, int port, RedisOptions o)
            : address(host + ":" + std::to_string(port)),
              name(o.readonly ? address + " (replica reads)" : address),
              backend(std::move(o)) {}
        std::string address;  // host:port
        std::string name;     // address, marked when its connections are READONLY
        RedisBackend backend;
        // In the slot table, or the target of a redirect since: see watch_nodes. Changed
        // under watch_mutex_; read without it on the call path.
        std::atomic<bool> serving{false};
    };

    /// A redirect, as a node sent it.
    struct Redirect {
        enum class Kind : std::uint8_t { moved, ask, try_again, other } kind = Kind::other;
        std::uint16_t slot = 0;
        std::string host;
        int port = 0;
    };

    static RedisClusterOptions validated(RedisClusterOptions o) {
        auto fail = [](const std::string& why) {
            throw ConfigError("RedisClusterOptions: " + why);
        };
        if (o.seeds.empty()) fail("seeds is empty: name at least one node");
        for (const ClusterNode& s : o.seeds) {
            if (s.host.empty()) fail("a seed has no host");
            if (s.port < 1 || s.port > 65535) fail("a seed's port must be in 1..65535");
        }
        if (!o.node.unix_socket.empty())
            fail("node.unix_socket: cluster nodes are reached over TCP");
        if (o.node.db != 0) fail("node.db must be 0: a cluster has one database");
        if (!o.node.sentinel.sentinels.empty()) {
            fail("node.sentinel: a cluster finds its primaries itself, without Sentinel");
        }
        if (o.refresh_interval.count() <= 0) fail("refresh_interval must be positive");
        if (o.min_refresh_interval.count() < 0 || o.min_refresh_interval > o.refresh_interval) {
            fail("min_refresh_interval must be in 0..refresh_interval");
        }
        if (o.try_again_timeout.count() < 0 || o.try_again_timeout > std::chrono::minutes(1)) {
            fail("try_again_timeout must be in 0..1 min");
        }
        if (o.try_again_backoff.count() < 1 ||
            o.try_again_backoff > std::chrono::milliseconds(50)) {
            fail("try_again_backoff must be in 1..50 ms");
        }
        // The node options themselves are checked by the first RedisBackend built on them.
        RedisOptions probe = o.node;
        probe.host = o.seeds.front().host;
        probe.port = o.seeds.front().port;
        probe.require_connection = false;
        (void)RedisBackend(std::move(probe));
        return o;
    }

    // `answered_by`: the host of the node that sent the redirect, for the addresses Redis 7
    // leaves out ("?:port" or ":port", cluster-preferred-endpoint-type unknown-endpoint or
    // hostname without one).
    static Redirect parse_redirect(std::string_view reply, std::string_view answered_by) {
        Redirect r;
        const auto space = reply.find(' ');
        const std::string_view word = reply.substr(0, space);
        if (word == "TRYAGAIN") {
            r.kind = Redirect::Kind::try_again;
            return r;
        }
        if ((word != "MOVED" && word != "ASK") || space == std::string_view::npos) return r;
        const std::string_view rest = reply.substr(space + 1);
        const auto gap = rest.find(' ');
        if (gap == std::string_view::npos) return r;
        const std::string_view slot = rest.substr(0, gap);
        const std::string_view address = rest.substr(gap + 1);
        const auto colon = address.rfind(':');
        if (colon == std::string_view::npos) return r;
        int slot_number = 0;
        int port = 0;
        const std::string_view port_text = address.substr(colon + 1);
        if (std::from_chars(slot.data(), slot.data() + slot.size(), slot_number).ec !=
                std::errc{} ||
            std::from_chars(port_text.data(), port_text.data() + port_text.size(), port).ec !=
                std::errc{} ||
            slot_number < 0 || slot_number >= cluster_slot_count || port < 1 || port > 65535) {
            return r;
        }
        r.kind = word == "MOVED" ? Redirect::Kind::moved : Redirect::Kind::ask;
        r.slot = static_cast<std::uint16_t>(slot_number);
        const std::string_view host = address.substr(0, colon);
        if (host.find('\0') != std::string_view::npos) return r;
        r.host = std::string(host.empty() || host == "?" ? answered_by : host);
        r.port = port;
        return r;
    }

    static std::string_view first_of(std::span<const std::string_view> keys) {
        return keys.empty() ? std::string_view{} : keys.front();
    }

    static Access access_of(const RedisScript& script) {
        return script.writes() ? Access::write : Access::read_primary;
    }

    // ---- nodes and the slot table ----------------------------------------------------

    // Whether a node found by node_at is about to serve calls (a seed only answers
    // CLUSTER SLOTS).
    enum class Serving : bool { no, yes };

    Node* node_at(const std::string& host, int port, bool readonly, Serving serving) {
        Node* node = find_or_add(host, port, readonly);
        if (serving == Serving::yes) serve(*node);
        return node;
    }

    Node* find_or_add(const std::string& host, int port, bool readonly) {
        const std::string address = host + ":" + std::to_string(port);
        std::lock_guard lock(nodes_mutex_);
        for (const auto& n : nodes_) {
            if (n->address == address && n->backend.options().readonly == readonly) {
                return n.get();
            }
        }
        RedisOptions o = options_.node;
        o.host = host;
        o.port = port;
        o.readonly = readonly;
        o.require_connection = false;
        nodes_.push_back(std::make_unique<Node>(host, port, std::move(o)));
        nodes_.back()->backend.cluster_node_ = true;
        return nodes_.back().get();
    }

    std::vector<Node*> all_nodes() const {
        std::lock_guard lock(nodes_mutex_);
        std::vector<Node*> out;
        for (const auto& n : nodes_) out.push_back(n.get());
        return out;
    }

    // The node is about to serve calls: the watcher hears it first. One load when it
    // already serves, as it does on every call but the first after a change.
    // A watcher that throws (it could not start what the node needs) leaves the node not
    // serving: the call fails, and the next one tells the watcher again.
    void serve(Node& node) {
        if (node.serving.load()) return;
        std::lock_guard lock(watch_mutex_);
        if (node.serving.load()) return;
        if (watcher_) {
            try {
                watcher_(node.backend, true);
            } catch (const Error&) {
                throw;
            } catch (const std::exception& e) {
                throw BackendError(std::string("RedisClusterBackend: the node watcher failed: ") +
                                   e.what());
            }
        }
        node.serving.store(true);
    }

    // After a map was applied: nodes the table no longer names stop serving. A MOVED that
    // stores a node in the table concurrently checks `serving` after its store, and this
    // checks the table again after clearing `serving` (both sequentially consistent): one of
    // the two sees the other, so a node in the table is never left not serving.
    void retire_unnamed_nodes() {
        const std::vector<Node*> nodes = all_nodes();
        auto named_in_table = [&](const Node* node) {
            for (std::size_t s = 0; s < cluster_slot_count; ++s) {
                if (primary_[s].load() == node || replica_[s].load() == node) return true;
            }
            return false;
        };
        std::vector<const Node*> in_table;
        for (std::size_t s = 0; s < cluster_slot_count; ++s) {
            for (const Node* n : {primary_[s].load(), replica_[s].load()}) {
                if (n != nullptr &&
                    std::find(in_table.begin(), in_table.end(), n) == in_table.end())
                    in_table.push_back(n);
            }
        }
        for (Node* n : nodes) {
            if (!n->serving.load() ||
                std::find(in_table.begin(), in_table.end(), n) != in_table.end())
                continue;
            std::lock_guard lock(watch_mutex_);
            if (!n->serving.exchange(false)) continue;
            if (named_in_table(n)) {
                n->serving.store(true);
                continue;
            }
            if (watcher_) watcher_(n->backend, false);
        }
    }

    // Callers hold refresh_mutex_.
    void refresh_locked() {
        std::vector<Node*> candidates;
        {
            std::lock_guard lock(nodes_mutex_);
            for (const auto& n : nodes_) {
                if (!n->backend.options().readonly) candidates.push_back(n.get());
            }
        }
        // Nodes whose breaker is closed first; the rest only if none of those answers.
        std::stable_partition(candidates.begin(), candidates.end(), [](const Node* n) {
            return n->backend.breaker_state() != BreakerState::open;
        });
        std::string failures;
        for (Node* n : candidates) {
            try {
                const RedisReply reply = n->backend.command({"CLUSTER", "SLOTS"});
                apply(SlotMap::from_cluster_slots(reply, n->backend.options().host));
                counters_.add<&RedisClusterStats::refreshes>();
                schedule_refresh(options_.refresh_interval);
                return;
            } catch (const BackendError& e) {
                if (!failures.empty()) failures += "; ";
                failures += n->address + ": " + e.what();
            }
        }
        counters_.add<&RedisClusterStats::refresh_failures>();
        schedule_refresh(options_.min_refresh_interval);
        throw ConnectionError("RedisClusterBackend: no node answered CLUSTER SLOTS (" + failures +
                              ")");
    }

    void apply(const SlotMap& map) {
        for (const SlotRange& range : map.ranges()) {
            Node* primary = node_at(range.primary.host, range.primary.port, false, Serving::yes);
            Node* replica = primary;
            if (options_.read_from_replicas && !range.replicas.empty()) {
                replica = node_at_replica(range);
            }
            // Slots the map leaves out keep their last known node: a partial view during a
            // reconfiguration is no reason to fail calls the old owner may still serve.
            for (std::uint32_t s = range.first; s <= range.last; ++s) {
                primary_[s].store(primary, std::memory_order_release);
                replica_[s].store(replica, std::memory_order_release);
            }
        }
        retire_unnamed_nodes();
    }

    // The replica that serves a range's reads: the one serving them now while the map
    // still names it (its pool stays warm, and nothing that follows the nodes churns);
    // otherwise the next in turn, spreading ranges over replicas.
    Node* node_at_replica(const SlotRange& range) {
        const Node* current = replica_[range.first].load(std::memory_order_acquire);
        for (const ClusterNode& r : range.replicas) {
            if (current != nullptr && current->backend.options().readonly &&
                current->address == r.host + ":" + std::to_string(r.port)) {
                return node_at(r.host, r.port, true, Serving::yes);
            }
        }
        const ClusterNode& r = range.replicas[(next_replica_++) % range.replicas.size()];
        return node_at(r.host, r.port, true, Serving::yes);
    }

    // After a MOVED stored `node` in the table: retire_unnamed_nodes may have cleared
    // `serving` between node_at and the store (see there).
    void serve_again(Node& node) {
        if (!node.serving.load()) serve(node);
    }

    void schedule_refresh(Millis after) {
        next_refresh_.store(
            now_ns() + std::chrono::duration_cast<std::chrono::nanoseconds>(after).count(),
            std::memory_order_relaxed);
    }

    // Something said the map may be stale: read it again soon (rate-limited).
    void suspect_map() noexcept {
        const std::int64_t soon =
            last_refresh_start_.load(std::memory_order_relaxed) +
            std::chrono::duration_cast<std::chrono::nanoseconds>(options_.min_refresh_interval)
                .count();
        std::int64_t current = next_refresh_.load(std::memory_order_relaxed);
        while (soon < current &&
               !next_refresh_.compare_exchange_weak(current, soon, std::memory_order_relaxed)) {
        }
    }

    // On the call path: one clock read and one atomic load, unless a refresh is due; then
    // the one caller that takes the lock refreshes, the others go on with the map in use.
    void refresh_if_due() {
        const std::int64_t now = now_ns();
        if (now < next_refresh_.load(std::memory_order_relaxed)) return;
        std::unique_lock lock(refresh_mutex_, std::try_to_lock);
        if (!lock.owns_lock() || now < next_refresh_.load(std::memory_order_relaxed)) return;
        last_refresh_start_.store(now, std::memory_order_relaxed);
        try {
            refresh_locked();
        } catch (const Error& e) {
            // Counted; the calls go on with the map in use and meet the failure themselves.
            lock.unlock();
            log_refresh_failure(e);
        }
    }

    // Outside refresh_mutex_, so that a log sink may call this backend.
    void log_refresh_failure(const Error& e) const noexcept {
        options_.node.log(LogLevel::warn, [&] {
            return "redis cluster '" + options_.node.name +
                   "': keeping the slot map in use: " + std::string(e.what());
        });
    }

    static std::int64_t now_ns() noexcept {
        return std::chrono::duration_cast<std::chrono::nanoseconds>(
                   std::chrono::steady_clock::now().time_since_epoch())
            .count();
    }

    Node* route(std::uint16_t slot, Access access) {
        if (access == Access::read && options_.read_from_replicas) {
            if (Node* r = replica_[slot].load(std::memory_order_acquire)) return r;
        }
        if (Node* p = primary_[slot].load(std::memory_order_acquire)) return p;
        // No node known for the slot: the cluster was not all up when the map was read.
        try {
            refresh_slots();
        } catch (const BackendError&) {
        }
        if (Node* p = primary_[slot].load(std::memory_order_acquire)) return p;
        throw BackendError("RedisClusterBackend: no node serves slot " + std::to_string(slot));
    }

    // ---- calls -----------------------------------------------------------------------

    /// Runs `body` on a connection to the node that serves `key`'s slot, through that
    /// node's breaker and pool, following redirects.
    template <class F>
    auto on_key(std::string_view operation, std::string_view key, Access access, F&& body)
        -> std::invoke_result_t<F&, redis_detail::Connection&> {
        refresh_if_due();
        try {
            return on_slot(operation, keys::slot(key), access, body);
        } catch (const BackendError&) {
            counters_.add<&RedisClusterStats::errors>();
            throw;
        }
    }

    template <class F>
    auto on_slot(std::string_view operation, std::uint16_t slot, Access access, F& body)
        -> std::invoke_result_t<F&, redis_detail::Connection&> {
        const Effect effect = access == Access::write ? Effect::write : Effect::read;
        Node* node = route(slot, access);
        bool asking = false;
        unsigned redirects = 0;
        std::optional<std::chrono::steady_clock::time_point> try_again_until;
        Millis backoff = options_.try_again_backoff;
        for (;;) {
            try {
                if (node->backend.options().readonly)
                    counters_.add<&RedisClusterStats::replica_reads>();
                if (!asking) return node->backend.run(operation, body, effect);
                return node->backend.run(
                    operation,
                    [&](redis_detail::Connection& c) {
                        c.asking(true);
                        struct Off {
                            redis_detail::Connection& c;
                            ~Off() { c.asking(false); }
                        } off{c};
                        return body(c);
                    },
                    effect);
            } catch (const ClusterRedirectError& e) {
                const Redirect r = parse_redirect(e.reply(), node->backend.options().host);
                switch (r.kind) {
                    case Redirect::Kind::moved:
                        counters_.add<&RedisClusterStats::moved>();
                        if (++redirects > options_.max_redirects) throw exhausted(e);
                        node = node_at(r.host, r.port, false, Serving::yes);
                        primary_[r.slot].store(node);
                        replica_[r.slot].store(node);
                        serve_again(*node);
                        suspect_map();
                        asking = false;
                        continue;
                    case Redirect::Kind::ask:
                        counters_.add<&RedisClusterStats::asked>();
                        if (++redirects > options_.max_redirects) throw exhausted(e);
                        node = node_at(r.host, r.port, false, Serving::yes);
                        asking = true;
                        continue;
                    case Redirect::Kind::try_again: {
                        counters_.add<&RedisClusterStats::try_agains>();
                        const auto now = std::chrono::steady_clock::now();
                        if (!try_again_until) try_again_until = now + options_.try_again_timeout;
                        if (now >= *try_again_until) throw exhausted(e);
                        std::this_thread::sleep_for(std::min<std::chrono::steady_clock::duration>(
                            backoff, *try_again_until - now));
                        backoff = std::min(backoff * 2, Millis{50});
                        continue;
                    }
                    case Redirect::Kind::other:
                        throw;
                }
            } catch (const ConnectionError&) {
                suspect_map();
                throw;
            } catch (const TimeoutError&) {
                suspect_map();
                throw;
            } catch (const CircuitOpenError&) {
                suspect_map();
                throw;
            } catch (const ReplyError& e) {
                if (e.server_unavailable()) suspect_map();  // CLUSTERDOWN, LOADING...
                throw;
            }
        }
    }

    static ClusterRedirectError exhausted(const ClusterRedirectError& e) {
        return ClusterRedirectError(
            std::string("RedisClusterBackend: still redirected after the retries allowed "
                        "(the cluster is being reconfigured, or it is misconfigured): ") +
                e.what(),
            e.reply());
    }

    std::int64_t integer_script(redis_detail::Script& script, std::string_view key,
                                std::span<const std::string_view> args) {
        const std::array<std::string_view, 1> keys{key};
        return on_key(script.name(), key, access_of(script), [&](redis_detail::Connection& c) {
            return redis_detail::integer_script(c, script, keys, args);
        });
    }

    std::int64_t integer_command(std::string_view operation, std::string_view key, const Args& args,
                                 std::string_view what) {
        return on_key(operation, key, Access::write, [&](redis_detail::Connection& c) {
            return redis_detail::integer_reply(*c.command(args), what);
        });
    }

    // The keys of one node in a multi-key read, and what its round trip brought back.
    struct Batch {
        Node* node = nullptr;
        std::vector<std::size_t> index{};      // positions in the caller's keys
        std::vector<std::string_view> keys{};  // stored keys
        std::vector<redis_detail::ReplyPtr> replies{};
        std::exception_ptr error{};
    };

    std::vector<std::optional<StoredValue>> read_many(std::span<const std::string> keys,
                                                      bool with_ttl) {
        if (keys.empty()) return {};
        refresh_if_due();
        try {
            return read_many_routed(keys, with_ttl);
        } catch (const BackendError&) {
            counters_.add<&RedisClusterStats::errors>();
            throw;
        }
    }

    std::vector<std::optional<StoredValue>> read_many_routed(std::span<const std::string> keys,
                                                             bool with_ttl) {
        const redis_detail::StoredKeys stored(options_.node.key_prefix, keys);
        std::vector<Batch> batches;
        for (std::size_t i = 0; i < keys.size(); ++i) {
            Node* node = route(keys::slot(stored.views()[i]), Access::read);
            auto it = std::find_if(batches.begin(), batches.end(),
                                   [&](const Batch& b) { return b.node == node; });
            if (it == batches.end()) it = batches.insert(batches.end(), Batch{.node = node});
            it->index.push_back(i);
            it->keys.push_back(stored.views()[i]);
        }
        // Each batch holds its node's connection while the next borrows one: in one global
        // order, so that two calls with their keys in opposite orders never wait on each
        // other's pools.
        std::sort(batches.begin(), batches.end(), [](const Batch& a, const Batch& b) {
            return std::less<const Node*>{}(a.node, b.node);
        });
        send_batches(batches, 0, with_ttl);
        for (const Batch& b : batches) {
            if (b.error) std::rethrow_exception(b.error);
        }
        const std::size_t per_key = with_ttl ? 2 : 1;
        std::vector<std::optional<StoredValue>> out(keys.size());
        for (Batch& b : batches) {
            for (std::size_t j = 0; j < b.index.size(); ++j) {
                const redisReply& value = *b.replies[per_key * j];
                const std::string_view key = b.keys[j];
                auto redirected = [](const redisReply& r) {
                    return r.type == REDIS_REPLY_ERROR &&
                           redis_detail::means_cluster(redis_detail::text_of(r));
                };
                // Either reply: a key can move between its GET and its PTTL.
                if (redirected(value) || (with_ttl && redirected(*b.replies[2 * j + 1]))) {
                    // The slot moved (or is moving) since the map was read: this key alone
                    // takes the single-key path, which follows the redirect.
                    out[b.index[j]] = with_ttl ? on_slot_read(key, true) : on_slot_read(key, false);
                    continue;
                }
                out[b.index[j]] = with_ttl
                                      ? redis_detail::stored_value(value, *b.replies[2 * j + 1])
                                      : redis_detail::value_reply(value);
            }
        }
        return out;
    }

    std::optional<StoredValue> on_slot_read(std::string_view key, bool with_ttl) {
        auto body = [&](redis_detail::Connection& c) {
            return with_ttl ? redis_detail::get(c, key) : redis_detail::get_value(c, key);
        };
        return on_slot(with_ttl ? "get" : "get_value", keys::slot(key), Access::read, body);
    }

    // Sends batch i, then (while its replies are on their way) the batches after it, then
    // reads batch i's replies: every node works at once, and no thread is started. A
    // failure stays with its own batch, so one node's error never counts against another
    // node's breaker.
    void send_batches(std::vector<Batch>& batches, std::size_t i, bool with_ttl) {
        if (i == batches.size()) return;
        Batch& b = batches[i];
        bool rest_sent = false;
        try {
            if (b.node->backend.options().readonly)
                counters_.add<&RedisClusterStats::replica_reads>();
            b.node->backend.run(
                with_ttl ? "get_many" : "get_many_values",
                [&](redis_detail::Connection& c) {
                    for (std::string_view k : b.keys) {
                        c.append(Args{"GET", k});
                        if (with_ttl) c.append(Args{"PTTL", k});
                    }
                    c.flush();
                    rest_sent = true;
                    send_batches(batches, i + 1, with_ttl);
                    const std::size_t count = b.keys.size() * (with_ttl ? 2 : 1);
                    b.replies.clear();
                    b.replies.reserve(count);
                    for (std::size_t j = 0; j < count; ++j) b.replies.push_back(c.receive());
                },
                Effect::read);
        } catch (...) {
            b.error = std::current_exception();
            suspect_map();
        }
        if (!rest_sent) send_batches(batches, i + 1, with_ttl);
    }

    const RedisClusterOptions options_;
    detail::StripedCounters<RedisClusterStats> counters_;
    mutable std::mutex nodes_mutex_;
    std::vector<std::unique_ptr<Node>> nodes_;  // never shrinks: the slot table points here
    std::array<std::atomic<Node*>, cluster_slot_count> primary_;
    std::array<std::atomic<Node*>, cluster_slot_count> replica_;  // the primary without replicas
    std::mutex watch_mutex_;  // orders the changes of Node::serving and what watcher_ hears
    std::function<void(RedisBackend&, bool)> watcher_;  // under watch_mutex_
    std::mutex refresh_mutex_;
    std::size_t next_replica_ = 0;  // under refresh_mutex_
    std::atomic<std::int64_t> next_refresh_{0};
    std::atomic<std::int64_t> last_refresh_start_{0};
    redis_detail::Script compare_and_set_script_;
    redis_detail::Script compare_and_delete_script_;
    redis_detail::Script compare_and_expire_script_;
};

static_assert(Backend<RedisClusterBackend>);
static_assert(Increments<RedisClusterBackend>);
static_assert(ValueOnlyReads<RedisClusterBackend>);

}  // namespace larder
