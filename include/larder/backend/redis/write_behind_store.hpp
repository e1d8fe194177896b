// RedisWriteBehindStore: the WriteBehindStore concept on Redis, so that write-behind data
// outlives the process that wrote it. Every operation is one Lua script (loaded once, run
// by EVALSHA through RedisBackend::eval), so each is atomic on the server: a put that
// returned is in the queue, a claim moves entries as a whole, an acknowledgement removes
// an entry only if the claim is still its caller's and its version is unchanged. Link
// with larder::redis.
//
// The queue's keys and the scripts are in <larder/backend/redis/write_behind_lua.hpp>.
//
// Times are the server's (TIME inside the scripts), so flushers on several hosts agree on
// deadlines whatever their clocks say. A version is above the counter (an INCR), the
// server's clock in microseconds, and the key's last version and dead entry's version: a
// Redis that lost its counter (a failover to a replica that missed the last increments,
// whose clock is behind) still never hands a key a version below one it already had. The
// versions hash keeps one field per key ever written for that. Needs Redis 6.2 or later
// (ZADD LT; scripts replicated by effect).
//
// Concurrent puts share round trips (group commit): while two batches of puts are on their
// way to the server, the puts that arrive meanwhile wait and then go together in the next
// script call. A put that finds room goes at once, alone: none waits for company.
#pragma once

#include <algorithm>
#include <array>
#include <charconv>
#include <condition_variable>
#include <cstdint>
#include <deque>
#include <exception>
#include <initializer_list>
#include <mutex>
#include <optional>
#include <span>
#include <stdexcept>
#include <string>
#include <string_view>
#include <tuple>
#include <type_traits>
#include <vector>

#include "larder/backend/redis.hpp"
#include "larder/backend/redis/write_behind_lua.hpp"
#include "larder/backend/redis/write_behind_reply.hpp"
#include "larder/backend/redis_cluster.hpp"
#include "larder/backend/write_behind_store.hpp"
#include "larder/core/error.hpp"
#include "larder/core/keys.hpp"

namespace larder {

/// `Redis` is RedisBackend (RedisWriteBehindStore) or RedisClusterBackend
/// (RedisClusterWriteBehindStore): anything with their eval, eval_and_wait, command,
/// stored_key and options.
template <class Redis>
class BasicRedisWriteBehindStore {
public:
    /// The backend is borrowed and must outlive the store. No I/O happens here.
    explicit BasicRedisWriteBehindStore(Redis& backend, WriteBehindStoreOptions options = {})
        : backend_(backend),
          name_(std::move(options.name)),
          max_dead_(options.max_dead),
          replicas_(options.replicas),
          replica_timeout_(options.replica_timeout),
          coalesce_(options.coalesce),
          put_("write_behind_put", source<redis_detail::write_behind_lua::put>()),
          read_current_("write_behind_read_current",
                        source<redis_detail::write_behind_lua::read_current>(), false),
          claim_("write_behind_claim", source<redis_detail::write_behind_lua::claim>()),
          extend_("write_behind_extend", source<redis_detail::write_behind_lua::extend>()),
          settle_("write_behind_settle", source<redis_detail::write_behind_lua::settle>()),
          list_dead_("write_behind_list_dead", source<redis_detail::write_behind_lua::list_dead>(),
                     false),
          redrive_("write_behind_redrive", source<redis_detail::write_behind_lua::redrive>()),
          discard_dead_("write_behind_discard_dead",
                        source<redis_detail::write_behind_lua::discard_dead>()),
          stats_("write_behind_stats", source<redis_detail::write_behind_lua::stats>(), false) {
        if (name_.empty()) throw ConfigError("RedisWriteBehindStore: the name must not be empty");
        if (replicas_ < 0)
            throw ConfigError("RedisWriteBehindStore: replicas must not be negative");
        // WAIT's reply must come before the connection's own deadline, or a put that
        // reached fewer replicas would look like a lost reply instead.
        if (replicas_ > 0 && (replica_timeout_.count() <= 0 ||
                              replica_timeout_ >= backend_.options().command_timeout)) {
            throw ConfigError(
                "RedisWriteBehindStore: replica_timeout must be positive and below the "
                "backend's command_timeout");
        }
        // With no ':' in the name, no cache prefix (which ends in ':') followed by k: or m:
        // can spell a queue key (docs/FORMAT.md, "Keys").
        if (name_.find(':') != std::string::npos) {
            throw ConfigError("RedisWriteBehindStore: the name must not contain ':'");
        }
        // A put changes the queue and the cached copy in one script: on a cluster both must
        // live in one slot, which a hash tag in the key prefix (applied to both) ensures.
        if constexpr (std::is_same_v<Redis, RedisClusterBackend>) {
            const std::string& prefix = backend_.options().key_prefix;
            if (keys::hash_tag(prefix) == std::string_view(prefix)) {
                throw ConfigError(
                    "RedisClusterWriteBehindStore: the backend's key_prefix needs a hash tag, "
                    "such as \"{app}:\", so that the queue and the cached copies share one "
                    "slot (docs/cluster.md)");
            }
        }
        // A name with its own hash tag is used as is (Redis Cluster: share the cache's tag).
        const std::string base = keys::hash_tag(name_) != std::string_view(name_)
                                     ? "larder:wb:" + name_ + ":"
                                     : "{larder:wb:" + name_ + "}:";
        static constexpr std::array<std::string_view, queue_key_count> roles{
            "pending",    "processing", "values",        "versions",  "attempts",    "errors",
            "since",      "seq",        "dead",          "dead_meta", "dead_errors", "dead_order",
            "since_next", "owners",     "head_versions", "later",     "later_ends"};
        for (std::size_t i = 0; i < roles.size(); ++i) keys_[i] = base + std::string(roles[i]);
    }

    BasicRedisWriteBehindStore(const BasicRedisWriteBehindStore&) = delete;
    BasicRedisWriteBehindStore& operator=(const BasicRedisWriteBehindStore&) = delete;

    PutOutcome put(std::string_view key, std::string_view bytes, std::size_t max_pending) {
        return put_impl(key, bytes, max_pending, "put", {});
    }

    PutOutcome put_if(std::string_view key, std::string_view bytes, std::string_view expected,
                      std::size_t max_pending) {
        return put_impl(key, bytes, max_pending, "cas", expected);
    }

    std::optional<CurrentValue> read_current(std::string_view key) {
        return read_current_impl(key, "all");
    }

    std::optional<std::string> unflushed_value(std::string_view key) {
        auto current = read_current_impl(key, "unflushed");
        if (!current) return std::nullopt;
        return std::move(current->bytes);
    }

    ClaimBatch claim(std::size_t max, Millis claim_ttl, const ClaimOptions& options = {}) {
        const redis_detail::Number n(static_cast<std::int64_t>(max));
        const redis_detail::Number ttl(claim_ttl.count());
        const redis_detail::Number requeue_limit(
            static_cast<std::int64_t>(std::max<std::size_t>(max, 100)));
        const redis_detail::Number max_attempts(static_cast<std::int64_t>(options.max_attempts));
        const redis_detail::Number max_bytes(static_cast<std::int64_t>(
            std::min<std::size_t>(options.max_bytes, std::size_t{1} << 50)));
        std::vector<std::string> tokens;  // the claim's token, then the lost ones
        tokens.reserve(1 + options.lost.size());
        tokens.push_back(std::to_string(options.token));
        for (std::uint64_t t : options.lost) tokens.push_back(std::to_string(t));
        const redis_detail::Number max_dead(static_cast<std::int64_t>(max_dead_));
        const redis_detail::Number budget(std::max<std::int64_t>(0, options.budget.count()));
        std::vector<std::string_view> args{
            n.view(),         ttl.view(), requeue_limit.view(), max_attempts.view(),
            max_bytes.view(), tokens[0],  max_dead.view(),      budget.view()};
        args.insert(args.end(), tokens.begin() + 1, tokens.end());
        return redis_detail::write_behind_reply::claim(backend_.eval(claim_, queue_keys(), args));
    }

    std::size_t extend(std::span<const std::string> keys, Millis claim_ttl, std::uint64_t token) {
        if (keys.empty()) return 0;
        const redis_detail::Number ttl(claim_ttl.count());
        const std::string owner = std::to_string(token);
        std::vector<std::string_view> args;
        args.reserve(keys.size() + 2);
        args.push_back(ttl.view());
        args.push_back(owner);
        for (const auto& k : keys) args.push_back(k);
        return static_cast<std::size_t>(redis_detail::write_behind_reply::integer(
            backend_.eval(extend_, queue_keys(), args), "extend"));
    }

    std::vector<SettleResult> settle(std::span<const Settlement> settlements, Millis clean_ttl) {
        std::vector<SettleResult> out;
        out.reserve(settlements.size());
        // Scripts take at most 255 keys: settle in chunks.
        constexpr std::size_t chunk = 100;
        for (std::size_t first = 0; first < settlements.size(); first += chunk) {
            const auto part =
                settlements.subspan(first, std::min(chunk, settlements.size() - first));
            settle_chunk(part, clean_ttl, out);
        }
        return out;
    }

    std::vector<DeadRecord> list_dead(std::size_t limit) {
        if (limit == 0) return {};
        const redis_detail::Number n(static_cast<std::int64_t>(limit));
        const std::array<std::string_view, 1> args{n.view()};
        return redis_detail::write_behind_reply::list_dead(
            backend_.eval(list_dead_, queue_keys(), args));
    }

    RedriveResult redrive(std::string_view key) {
        const auto keys = with_user_keys({key});
        const std::array<std::string_view, 1> args{key};
        return redis_detail::write_behind_reply::redrive(backend_.eval(redrive_, keys, args));
    }

    bool discard_dead(std::string_view key) {
        const auto keys = with_user_keys({key});
        const std::array<std::string_view, 1> args{key};
        return redis_detail::write_behind_reply::integer(backend_.eval(discard_dead_, keys, args),
                                                         "discard_dead") == 1;
    }

    QueueStats stats() {
        return redis_detail::write_behind_reply::stats(
            backend_.eval(stats_, queue_keys(), std::span<const std::string_view>{}));
    }

    std::vector<std::string> pending_keys(std::size_t limit) {
        if (limit == 0) return {};
        const std::string since = backend_.stored_key(keys_[6]);
        const redis_detail::Number last(static_cast<std::int64_t>(limit) - 1);
        return redis_detail::write_behind_reply::keys(
            backend_.command({"ZRANGE", since, "0", last.view()}));
    }

    static constexpr bool durable = true;

    /// An allkeys-* maxmemory-policy may evict the queue and unflushed cached copies.
    /// Sends CONFIG GET maxmemory-policy, an @admin command that a tenant's ACL usually
    /// refuses (and records in ACL LOG): so it runs only when asked, never on its own.
    EvictionRisk eviction_risk() {
        try {
            return redis_detail::write_behind_reply::eviction_risk(
                server_command({"CONFIG", "GET", "maxmemory-policy"}));
        } catch (const BackendError& e) {
            return {EvictionRisk::could_not_run,
                    std::string("could not read maxmemory-policy: ") + e.what()};
        }
    }

    /// INFO persistence and INFO replication: allowed by a tenant's ACL with +info. (The
    /// RDB snapshot settings would need CONFIG GET, an @admin command a tenant's ACL refuses
    /// and logs, so they are not asked: without appendonly, a restart is taken to lose
    /// what is unflushed.)
    Persistence persistence() {
        const std::string persistence = info_text("persistence");
        const std::string replication = info_text("replication");
        return redis_detail::write_behind_reply::persistence(persistence, replication);
    }

    [[nodiscard]] const std::string& name() const noexcept { return name_; }

    /// The Redis key of one part of the queue ("pending", "values", ...), before the
    /// backend's key_prefix.
    [[nodiscard]] std::string queue_key(std::string_view role) const {
        for (const auto& k : keys_) {
            if (k.size() > role.size() && k.ends_with(role) &&
                k[k.size() - role.size() - 1] == ':') {
                return k;
            }
        }
        throw InvalidArgumentError("RedisWriteBehindStore: no queue key '" + std::string(role) +
                                   "'");
    }

private:
    static constexpr std::size_t queue_key_count = 17;
    // Group commit bounds: batches of puts on their way at once (two, so that one is built
    // while the other travels), and what one batch carries at most.
    static constexpr int max_put_batches = 2;
    static constexpr std::size_t put_batch_size = 64;
    static constexpr std::size_t put_batch_bytes = std::size_t{1} << 20;

    /// A script's full source: the prelude, then its body. Built once, kept for the program.
    template <const std::string_view& Body>
    static const std::string& source() {
        static const std::string text =
            std::string(redis_detail::write_behind_lua::prelude) + std::string(Body);
        return text;
    }

    [[nodiscard]] std::array<std::string_view, queue_key_count> queue_keys() const {
        std::array<std::string_view, queue_key_count> out;
        for (std::size_t i = 0; i < queue_key_count; ++i) out[i] = keys_[i];
        return out;
    }

    [[nodiscard]] std::vector<std::string_view> with_user_keys(
        std::initializer_list<std::string_view> user) const {
        std::vector<std::string_view> out(keys_.begin(), keys_.end());
        out.insert(out.end(), user.begin(), user.end());
        return out;
    }

    std::optional<CurrentValue> read_current_impl(std::string_view key, std::string_view what) {
        const auto keys = with_user_keys({key});
        const std::array<std::string_view, 2> args{key, what};
        return redis_detail::write_behind_reply::read_current(
            backend_.eval(read_current_, keys, args));
    }

    // One put waiting for its batch. Its views point into the caller's frame, which waits.
    struct QueuedPut {
        std::string_view key, bytes, mode, expected;
        std::size_t max_pending = 0;
        PutOutcome outcome{};
        std::exception_ptr error{};
        bool done = false;
        // Its caller waits here, woken alone: waking every waiting caller at the end of each
        // batch cost more than the batch saved once many threads put at once.
        std::condition_variable wake{};
    };

    // Group commit: the caller's put joins the queue; while fewer than max_put_batches
    // batches are on their way, a waiting caller takes up to put_batch_size puts from the
    // front and sends them as one script call, then wakes their callers. Whenever a batch
    // could be sent and puts wait, the first of them is woken to send it.
    PutOutcome put_impl(std::string_view key, std::string_view bytes, std::size_t max_pending,
                        std::string_view mode, std::string_view expected) {
        QueuedPut mine{key, bytes, mode, expected, max_pending};
        std::unique_lock lock(put_mutex_);
        put_queue_.push_back(&mine);
        while (!mine.done) {
            if (put_batches_ < max_put_batches && !put_queue_.empty()) {
                ++put_batches_;
                std::vector<QueuedPut*> batch;
                std::size_t bytes_taken = 0;
                while (!put_queue_.empty() && batch.size() < put_batch_size &&
                       (batch.empty() || bytes_taken < put_batch_bytes)) {
                    bytes_taken += put_queue_.front()->bytes.size();
                    batch.push_back(put_queue_.front());
                    put_queue_.pop_front();
                }
                wake_next_sender();
                lock.unlock();
                send_puts(batch);
                lock.lock();
                --put_batches_;
                // Each woken caller needs the lock to return, so its QueuedPut outlives this.
                for (QueuedPut* p : batch) {
                    p->done = true;
                    p->wake.notify_one();
                }
                wake_next_sender();
            } else {
                mine.wake.wait(lock);
            }
        }
        lock.unlock();
        if (mine.error) std::rethrow_exception(mine.error);
        return mine.outcome;
    }

    // Called with put_mutex_ held.
    void wake_next_sender() {
        if (put_batches_ < max_put_batches && !put_queue_.empty()) {
            put_queue_.front()->wake.notify_one();
        }
    }

    // Sends one batch; every put in it gets its outcome, or the error (none is left unset).
    void send_puts(std::span<QueuedPut* const> batch) noexcept {
        try {
            std::vector<std::string_view> keys(keys_.begin(), keys_.end());
            std::vector<std::string> numbers;  // reserved: the views below stay valid
            numbers.reserve(1 + batch.size());
            std::vector<std::string_view> args;
            args.reserve(1 + 6 * batch.size());
            numbers.push_back(std::to_string(batch.size()));
            args.push_back(numbers.back());
            for (const QueuedPut* p : batch) {
                keys.push_back(p->key);
                numbers.push_back(std::to_string(p->max_pending));
                args.insert(args.end(), {p->key, p->bytes, numbers.back(), p->mode, p->expected,
                                         coalesce_ ? "1" : "0"});
            }
            std::int64_t acked = 0;
            RedisReply r;
            if (replicas_ > 0) {
                std::tie(r, acked) =
                    backend_.eval_and_wait(put_, keys, args, replicas_, replica_timeout_);
            } else {
                r = backend_.eval(put_, keys, args);
            }
            const auto& parts = redis_detail::write_behind_reply::put_parts(r, batch.size());
            for (std::size_t i = 0; i < batch.size(); ++i) {
                try {
                    batch[i]->outcome = redis_detail::write_behind_reply::put_outcome(
                        std::span(parts).subspan(3 * i, 3), acked, replicas_, replica_timeout_);
                } catch (...) {
                    batch[i]->error = std::current_exception();
                }
            }
        } catch (...) {
            for (QueuedPut* p : batch) p->error = std::current_exception();
        }
    }

    void settle_chunk(std::span<const Settlement> part, Millis clean_ttl,
                      std::vector<SettleResult>& out) {
        std::vector<std::string_view> keys(keys_.begin(), keys_.end());
        // Numbers as text; reserved up front so the views below stay valid.
        std::vector<std::string> numbers;
        numbers.reserve(2 + 3 * part.size());
        std::vector<std::string_view> args;
        args.reserve(2 + 6 * part.size());
        numbers.push_back(std::to_string(std::max<std::int64_t>(0, clean_ttl.count())));
        args.push_back(numbers.back());
        numbers.push_back(std::to_string(max_dead_));
        args.push_back(numbers.back());
        for (const auto& s : part) {
            keys.push_back(s.key);
            args.push_back(op_code(s.action));
            args.push_back(s.key);
            numbers.push_back(std::to_string(s.version));
            args.push_back(numbers.back());
            numbers.push_back(std::to_string(std::max<std::int64_t>(0, s.retry_after.count())));
            args.push_back(numbers.back());
            args.push_back(s.error);
            numbers.push_back(std::to_string(s.token));
            args.push_back(numbers.back());
        }
        redis_detail::write_behind_reply::settle(backend_.eval(settle_, keys, args), part.size(),
                                                 out);
    }

    std::string info_text(std::string_view section) {
        return redis_detail::write_behind_reply::info_text(server_command({"INFO", section}));
    }

    // A command about the server, asked of the one that holds the queue.
    RedisReply server_command(std::initializer_list<std::string_view> argv) {
        if constexpr (std::is_same_v<Redis, RedisClusterBackend>) {
            return backend_.command_at(backend_.stored_key(keys_[0]), argv);
        } else {
            return backend_.command(argv);
        }
    }

    static std::string_view op_code(Settlement::Action action) {
        switch (action) {
            case Settlement::ack:
                return "a";
            case Settlement::retry:
                return "r";
            case Settlement::dead:
                return "d";
            case Settlement::defer:
                return "w";
        }
        return "r";
    }

    Redis& backend_;
    std::string name_;
    std::size_t max_dead_;
    int replicas_;
    Millis replica_timeout_;
    bool coalesce_;
    std::array<std::string, queue_key_count> keys_;
    std::mutex put_mutex_;
    std::deque<QueuedPut*> put_queue_;
    int put_batches_ = 0;  // on their way now
    RedisScript put_;
    RedisScript read_current_;
    RedisScript claim_;
    RedisScript extend_;
    RedisScript settle_;
    RedisScript list_dead_;
    RedisScript redrive_;
    RedisScript discard_dead_;
    RedisScript stats_;
};

using RedisWriteBehindStore = BasicRedisWriteBehindStore<RedisBackend>;
using RedisClusterWriteBehindStore = BasicRedisWriteBehindStore<RedisClusterBackend>;

template <>
struct write_behind_store_for<RedisBackend> {
    using type = RedisWriteBehindStore;
};

template <>
struct write_behind_store_for<RedisClusterBackend> {
    using type = RedisClusterWriteBehindStore;
};

static_assert(WriteBehindStore<RedisWriteBehindStore>);
static_assert(WriteBehindStore<RedisClusterWriteBehindStore>);

}  // namespace larder
