// WriteBehind: puts go to the cache and a durable queue at once; a flusher writes them to
// the database later, in batches, with the latest value of each key.
//
// What the textbook write-behind (SMEMBERS dirty; DEL dirty; write each) gets wrong, and
// what this class does instead (docs/pitfalls.md):
//  - ids added between SMEMBERS and DEL are lost: here a claim is one atomic operation
//    that moves entries into a processing set; nothing is deleted until it is written.
//  - a crash after DEL loses the batch: claimed entries carry a deadline, and the claims
//    of a dead flusher are re-queued by any live one. Acknowledgement follows the write.
//  - writes the database rejected are dropped: a row the writer rejects is retried with
//    exponential backoff and jitter, up to max_attempts and a time budget, then kept in a
//    bounded dead-letter list that can be listed, re-driven or discarded. One poison entry
//    fails alone; the rest are acked. A batch that fails as a whole is an outage, not a
//    bad row: it backs off and costs no entry an attempt, however long it lasts.
//  - two flushers can write an older value last: an entry is acknowledged only if its
//    version did not change meanwhile, so a put that arrives during a flush is flushed
//    next time; and every entry carries its version, for a database write that must be
//    safe even against a flusher that stalled past its claim (UPDATE ... WHERE version <).
//  - the counter lives only in the cache entry: here the queue keeps its own dirty copy,
//    so an evicted cache entry cannot lose unflushed data, and the dirty data has no TTL.
//
// Durability is the store's: on RedisBackend (include
// <larder/backend/redis/write_behind_store.hpp>) an acknowledged put survives the process
// and, as far as Redis persistence goes, Redis itself (and a failover, with `replicas`:
// acknowledged once replicas have it); on MemoryBackend it lives as long as the process.
// docs/write-paths.md states exactly what each failure can cost.
#pragma once

#include <algorithm>
#include <atomic>
#include <chrono>
#include <concepts>
#include <condition_variable>
#include <cstdint>
#include <functional>
#include <iostream>
#include <limits>
#include <memory>
#include <mutex>
#include <optional>
#include <set>
#include <shared_mutex>
#include <span>
#include <stdexcept>
#include <string>
#include <string_view>
#include <thread>
#include <type_traits>
#include <utility>
#include <vector>

#include "larder/backend/backend.hpp"
#include "larder/backend/write_behind_store.hpp"
#include "larder/codec/raw.hpp"
#include "larder/core/clock.hpp"
#include "larder/core/codec.hpp"
#include "larder/core/envelope.hpp"
#include "larder/core/error.hpp"
#include "larder/core/loader.hpp"
#include "larder/core/random.hpp"
#include "larder/core/stats.hpp"
#include "larder/policy/detail/components.hpp"
#include "larder/policy/detail/read_path.hpp"
#include "larder/policy/detail/write_behind_flusher.hpp"
#include "larder/policy/options.hpp"
#include "larder/policy/write_behind_types.hpp"

namespace larder {

/// WriteBehind<T, Backend, Components...>: Components are an optional codec for T, an
/// optional StampedeGuard and an optional Invalidator, in any order, as for CacheAside.
/// The read verbs are the read path's, as CacheAside's, except that a miss of a dirty key
/// (its cached copy evicted) is served from the queue; the write verbs are put, modify
/// and increment.
template <class T, Backend B, class... Components>
class WriteBehind : public detail::ReadPath<T, B, Components...> {
    using Base = detail::ReadPath<T, B, Components...>;
    using TagVersion = typename Base::TagVersion;

public:
    using typename Base::codec_type;
    using typename Base::guard_type;
    using typename Base::invalidator_type;
    using store_type = write_behind_store_t<B>;
    using Entry = DirtyEntry<T>;
    using BatchWriter = std::function<BatchResult(std::span<const Entry>)>;

    static_assert(WriteBehindStore<store_type>);

    /// The backend is borrowed and must outlive this object; so must everything the batch
    /// writer uses, since destruction flushes through it. Throws ConfigError on bad options
    /// and, with EvictionCheck::refuse, when the store could evict unflushed data.
    WriteBehind(B& backend, BatchWriter writer, WriteBehindOptions options = {},
                guard_type guard = {}, codec_type codec = {}, invalidator_type invalidator = {})
        : WriteBehind(backend, nullptr, std::move(writer), std::move(options), std::move(guard),
                      std::move(codec), std::move(invalidator)) {}

    /// With a store shared with other WriteBehind objects (nullptr: a new one).
    WriteBehind(B& backend, std::shared_ptr<store_type> store, BatchWriter writer,
                WriteBehindOptions options = {}, guard_type guard = {}, codec_type codec = {},
                invalidator_type invalidator = {})
        : Base(backend, options.cache, std::move(guard), std::move(codec), std::move(invalidator)),
          backend_(backend),
          options_(validated(std::move(options), this->cache_options())),
          store_(store ? std::move(store)
                       : std::make_shared<store_type>(
                             backend,
                             WriteBehindStoreOptions{.name = options_.name,
                                                     .max_dead = options_.max_dead,
                                                     .clock = clock(),
                                                     .replicas = options_.replicas,
                                                     .replica_timeout = options_.replica_timeout,
                                                     .coalesce = options_.coalesce})),
          flusher_(options_, *store_, std::move(writer), counters_, this->keeper(),
                   flusher_hooks()) {
        check_eviction_at_start();
        check_persistence_at_start();
        if (options_.start_flusher) flusher_thread_ = std::thread([this] { run_flusher(); });
    }

    WriteBehind(const WriteBehind&) = delete;
    WriteBehind& operator=(const WriteBehind&) = delete;

    /// Stops the flusher and drains: flushes until nothing is dirty or drain_timeout
    /// passes, then logs what is left (see close()).
    ~WriteBehind() {
        try {
            (void)close(options_.drain_timeout);
        } catch (...) {
        }
        // Loads and refreshes still running call back into this object (the dirty copy).
        this->wait_for_loads();
    }

    // ---- reads ----------------------------------------------------------------------

    /// As the read path's get, except that a miss of a dirty key (its cached copy
    /// evicted) is served from the queue, not from the loader (the database is behind).
    /// A put during a load wins over the load's fill.
    template <class L>
    std::optional<T> get(std::string_view key, L&& loader, const CallOptions& call = {}) {
        if constexpr (detail::check_loader<T, L>()) {
            const std::string full = this->full_key(key);
            return Base::get(key, through(full, loader), call);
        } else {
            return std::nullopt;  // not compiled: check_loader failed the build
        }
    }

    template <class L>
    std::optional<T> get(std::string_view key, std::span<const std::string> tags, L&& loader,
                         const CallOptions& call = {}) requires TagInvalidator<invalidator_type> {
        if constexpr (detail::check_loader<T, L>()) {
            const std::string full = this->full_key(key);
            return Base::get(key, tags, through(full, loader), call);
        } else {
            return std::nullopt;
        }
    }

    template <class L>
    std::optional<T> get(std::string_view key, std::initializer_list<std::string> tags, L&& loader,
                         const CallOptions& call = {}) requires TagInvalidator<invalidator_type> {
        return get(key, std::span<const std::string>(tags.begin(), tags.size()), loader, call);
    }

    template <LoaderFor<T> L>
    std::optional<T> get_served(std::string_view key, std::span<const std::string> tags, L&& loader,
                                const CallOptions& call, typename Base::Served& served) {
        const std::string full = this->full_key(key);
        return Base::get_served(key, tags, through(full, loader), call, served);
    }

    /// As the read path's get_many; keys that missed are served from the queue where dirty.
    template <class BatchLoader>
    std::vector<std::optional<T>> get_many(std::span<const std::string> keys,
                                           BatchLoader&& batch_loader) {
        return get_many(keys, std::span<const std::vector<std::string>>{}, batch_loader);
    }

    /// As the read path's get_many with tags; keys that missed are served from the queue
    /// where dirty.
    template <class BatchLoader>
    std::vector<std::optional<T>> get_many(std::span<const std::string> keys,
                                           std::span<const std::vector<std::string>> tags,
                                           BatchLoader&& batch_loader) {
        if constexpr (detail::check_batch_loader<T, BatchLoader>()) {
            return Base::get_many(keys, tags, [&](std::span<const std::string> missed) {
                return load_many_through(missed, batch_loader);
            });
        } else {
            return {};
        }
    }

    // ---- writes ---------------------------------------------------------------------

    /// Caches `value` and queues it for the database, atomically; returns its version.
    /// When it returns, the put is acknowledged: it reaches the database unless it is
    /// dead-lettered (or, on a non-durable store, the process ends first). Throws
    /// BackendError (nothing acknowledged), CodecError, BackpressureError.
    std::uint64_t put(std::string_view key, const T& value) {
        return enqueue(key, [&](std::span<const TagVersion> stamp) {
            std::string bytes = encode(value, stamp);
            check_size(key, bytes);
            return bytes;
        });
    }

    /// Queues a delete of the key's row, as put queues a write (the latest of the key's
    /// writes and deletes wins, coalesced as puts are): the batch writer receives it with
    /// DirtyEntry::erased set. Until it is flushed the key reads as not found, from the
    /// cached copy or, once that is evicted, from the queue; a modify or increment starts
    /// from T{}. Returns its version. Throws as put does.
    std::uint64_t erase(std::string_view key) {
        static_assert(std::default_initializable<T>,
                      "WriteBehind::erase hands the batch writer a DirtyEntry whose value is "
                      "T{}: T must be default-constructible");
        return enqueue(key, [&](std::span<const TagVersion> stamp) { return tombstone(stamp); });
    }

    /// Read-modify-write: applies `change(T&)` to the current value (the dirty copy, the
    /// cached copy, or the loader's when neither is there; T{} when the loader says there
    /// is no row) and stores the result with a compare-and-put, going again when another
    /// writer got there first. `change` may run more than once: make it depend only on
    /// the value. Returns the value stored.
    template <std::invocable<T&> Change, class L>
    T modify(std::string_view key, Change&& change, L&& loader) {
        if constexpr (!detail::check_loader<T, L>()) {
            throw LoaderError("not a loader");  // not compiled: check_loader failed the build
        } else {
            return modify_with(key, change, loader);
        }
    }

    /// Adds `delta` to the integer member `field` (a pointer
    /// to member, or a callable returning a reference to it) and returns its new value.
    /// Overflow throws InvalidArgumentError and stores nothing.
    template <IntegerFieldOf<T> Field, class L>
    auto increment(std::string_view key, Field field, std::int64_t delta, L&& loader) {
        using F = std::remove_cvref_t<std::invoke_result_t<Field&, T&>>;
        F result{};
        (void)modify(
            key,
            [&](T& v) {
                F& f = std::invoke(field, v);
                F next{};
                if (__builtin_add_overflow(f, delta, &next)) {
                    throw InvalidArgumentError("WriteBehind::increment: the field would overflow");
                }
                f = next;
                result = next;
            },
            std::forward<L>(loader));
        return result;
    }

    /// increment for a cache whose values are integers.
    template <class L>
    T increment(std::string_view key, std::int64_t delta, L&& loader) {
        static_assert(std::integral<T>,
                      "increment(key, delta, loader) needs integer values; "
                      "for a member use increment(key, &T::member, ...)");
        return increment(
            key, [](T& v) -> T& { return v; }, delta, std::forward<L>(loader));
    }

    // ---- eviction ---------------------------------------------------------------------

    /// Asks the store whether it could evict unflushed data (on Redis: CONFIG GET
    /// maxmemory-policy, an @admin command). Never run unless called, or unless
    /// eviction_check is warn or refuse. A refused or failed check is
    /// EvictionRisk::could_not_run, with the reason in `detail`; it does not throw.
    EvictionRisk check_eviction() {
        try {
            return store_->eviction_risk();
        } catch (const std::exception& e) {
            return {EvictionRisk::could_not_run, e.what()};
        }
    }

    // ---- flushing -------------------------------------------------------------------

    /// Flushes what is ready now (claims, writes, settles batch after batch until a claim
    /// comes back short, or max_batches_per_flush). Safe to call while the flusher thread
    /// and other processes flush too. Entries in backoff wait for their time.
    FlushReport flush() {
        return flusher_.flush_ready(options_.max_batches_per_flush, std::nullopt);
    }

    /// Stops taking writes (put, modify and increment throw ClosedError from now on; those
    /// under way finish first), stops the flusher thread and drains for at most `timeout`:
    /// flushes until nothing is dirty, waiting out backoffs and other flushers' claims. The
    /// drain never dead-letters for lack of time or a database outage: what it cannot
    /// write stays pending, and the report says so, and whether it stays in the store for
    /// the next flusher (Redis) or is lost with this process (memory); it is logged too.
    /// (Entries that can never be written - not this cache's key, or undecodable - are
    /// dead-lettered as at any time.) Idempotent: a later or concurrent call waits for the
    /// one drain and returns its report.
    DrainReport close(Millis timeout) {
        DrainReport report;
        {
            // One drain: a second (or concurrent) call waits for it and gets its report.
            std::lock_guard drain_lock(drain_mutex_);
            if (drained_) return *drained_;
            {
                std::unique_lock writes(close_mutex_);
                std::lock_guard lock(flusher_mutex_);
                closed_ = true;
                stopping_ = true;
            }
            stop_requested_.store(true,
                                  std::memory_order_relaxed);  // ends the flush between batches
            flusher_wake_.notify_all();
            if (flusher_thread_.joinable()) flusher_thread_.join();
            drained_ = drain(timeout);
            report = *drained_;
        }
        // Outside the lock: a log sink may ask this object anything, close() included.
        if (!report.complete) log(LogLevel::error, report.describe());
        return report;
    }

    DrainReport close() { return close(options_.drain_timeout); }

    // ---- dead letters -----------------------------------------------------------------

    /// Dead-lettered entries, oldest first.
    std::vector<DeadEntry<T>> list_dead(std::size_t limit = 100) {
        std::vector<DeadEntry<T>> out;
        for (auto& d : store_->list_dead(limit)) {
            DeadEntry<T> e;
            e.key = user_key(d.key);
            e.value = decode_value(d.value, nullptr);
            e.version = d.version;
            e.attempts = d.attempts;
            e.error = std::move(d.error);
            e.dead_at = d.dead_at;
            e.dirty_since = d.dirty_since;
            out.push_back(std::move(e));
        }
        return out;
    }

    /// Queues a dead entry again as a new write of its value, with fresh attempts. (A put
    /// to a dead key replaces the dead entry, as it replaces a waiting value: there is
    /// then nothing to redrive.)
    RedriveResult redrive(std::string_view key) { return store_->redrive(this->full_key(key)); }

    /// How many dead entries redrive_all and redrive_dead_between requeued, and how many
    /// they removed because a later put superseded them.
    struct RedriveCount {
        std::size_t requeued = 0;
        std::size_t superseded = 0;
    };

    /// Redrives every dead entry (up to `limit`), oldest first.
    RedriveCount redrive_all(std::size_t limit = std::numeric_limits<std::size_t>::max()) {
        return redrive_dead_between(TimePoint::min(), TimePoint::max(), limit);
    }

    /// Redrives the dead entries that died in [from, to) (the store's clock, as
    /// DeadEntry::dead_at), up to `limit`, oldest first: after an incident, the writes of
    /// its window.
    RedriveCount redrive_dead_between(TimePoint from, TimePoint to,
                                      std::size_t limit = std::numeric_limits<std::size_t>::max()) {
        RedriveCount out;
        // Entries skipped (before `from`) stay at the head of the list; an entry redriven
        // here that dies again meanwhile comes back at its end, and is left for next time.
        std::size_t seen = 0;
        std::set<std::string, std::less<>> done;
        while (out.requeued + out.superseded < limit) {
            const std::vector<DeadRecord> dead = store_->list_dead(seen + 100);
            if (dead.size() <= seen) break;
            bool past = false;
            for (std::size_t i = seen; i < dead.size(); ++i) {
                const DeadRecord& d = dead[i];
                if (d.dead_at >= to) {
                    past = true;
                    break;
                }
                if (d.dead_at < from || !done.insert(d.key).second) {
                    ++seen;
                    continue;
                }
                switch (store_->redrive(d.key)) {
                    case RedriveResult::requeued:
                        ++out.requeued;
                        break;
                    case RedriveResult::superseded:
                        ++out.superseded;
                        break;
                    case RedriveResult::not_found:
                        break;
                }
                if (out.requeued + out.superseded >= limit) break;
            }
            if (past) break;
        }
        return out;
    }

    /// Drops a dead entry. Its cached copy is removed too (unless the key was written
    /// since), so reads go back to the database.
    bool discard_dead(std::string_view key) { return store_->discard_dead(this->full_key(key)); }

    // ---- introspection --------------------------------------------------------------

    /// This object's counters, and its read side's; local, no I/O. What the queue holds
    /// (counted over every process on it) is queue_stats().
    [[nodiscard]] WriteBehindStats stats() const {
        WriteBehindStats s = counters_.snapshot();
        s.reads = this->read_stats();
        return s;
    }

    /// The queue's sizes, from the store: one round trip on Redis. Throws BackendError when
    /// the store cannot be asked.
    [[nodiscard]] QueueStats queue_stats() const { return store_->stats(); }

    /// What acknowledged writes survive, as checked at construction.
    [[nodiscard]] const Persistence& persistence() const noexcept { return persistence_; }

    [[nodiscard]] const WriteBehindOptions& options() const noexcept { return options_; }
    [[nodiscard]] store_type& store() noexcept { return *store_; }
    [[nodiscard]] std::shared_ptr<store_type> shared_store() const { return store_; }

private:
    template <class Change, class L>
    T modify_with(std::string_view key, Change& change, L& loader) {
        const auto open = open_for_writes();
        const std::string full = this->full_key(key);
        for (std::uint32_t round = 0; round < max_modify_rounds; ++round) {
            if (round >= 2) {
                // Many writers on one key: spread them out a little.
                const auto cap = std::min<std::int64_t>(std::int64_t{1} << std::min(round, 4u), 10);
                std::this_thread::sleep_for(Millis{random_between(0, cap)});
            }
            std::optional<CurrentValue> current = store_->read_current(full);
            if (current && !current->dirty && this->retired(current->bytes)) {
                // A cached copy no read would serve (retired by an invalidation, or past
                // its freshness) is no base to build on: drop exactly it, and load afresh.
                try {
                    backend_.compare_and_delete(full, current->bytes);
                } catch (const BackendError&) {
                    counters_.add<&WriteBehindStats::backend_errors>();
                    continue;
                }
                current.reset();
            }
            if (!current) {
                // Neither dirty nor cached: load through the cache, which fills it (a
                // compare-and-put needs something to compare with), then read again. The
                // fill is needed even if the loader says not to cache (the put replaces
                // it at once), and a timeout has nothing to wait for here.
                std::optional<T> loaded;
                (void)get(
                    key,
                    [&](LoadContext& context) {
                        std::optional<T> value = call_loader<T>(loader, context);
                        context.cache = true;
                        loaded = value;
                        return value;
                    },
                    CallOptions{.soft_timeout = Millis{0}, .hard_timeout = Millis{0}});
                current = store_->read_current(full);
                if (!current && loaded && this->too_large(encode(*loaded, {}).size())) {
                    // The row cannot be cached, so there is nothing to fence the change on.
                    throw ValueTooLargeError("WriteBehind '" + options_.name + "': the row of '" +
                                             std::string(key) + "' is over max_value_bytes");
                }
                if (!current) continue;
                // Retired already (a bump during the load): drop it next round.
                if (!current->dirty && this->retired(current->bytes)) continue;
            }
            std::optional<T> value = base_of(full, *current, loader);
            if (!value) continue;
            std::invoke(change, *value);
            const auto stamp = this->versions_for_write(full);
            const std::string bytes = encode(*value, stamp);
            check_size(key, bytes);
            PutOutcome out;
            try {
                out = with_room([&] {
                    return store_->put_if(full, bytes, current->bytes, options_.max_pending);
                });
            } catch (const OutcomeUnknownError&) {
                // The change may be queued: a caller retrying an increment would count it
                // twice. Our bytes carry a nonce no other write has, so finding them in
                // the store proves it applied; anything else stays unknown.
                if (!applied(full, bytes)) throw;
                out = PutOutcome{.status = PutStatus::stored};
            }
            if (out.status == PutStatus::conflict) {
                counters_.add<&WriteBehindStats::conflicts>();
                continue;
            }
            acknowledged(out, true);
            this->written(full, stamp, /*cached=*/true);
            return std::move(*value);
        }
        throw WriteConflictError("WriteBehind: key '" + std::string(key) +
                                 "' changed under every read-modify-write attempt");
    }

    static constexpr std::uint32_t max_modify_rounds = 64;

    // The loader a read path's miss runs: the dirty copy first, then `loader`, which gets
    // the load's context if it takes one. A detached loader stays detached (it owns its
    // copy, so a background refresh may run it); any other is borrowed, and so never
    // outlives the get() that passed it.
    template <class L>
    auto through(const std::string& full, L& loader) {
        if constexpr (is_detached_v<std::decay_t<L>>) {
            return detached(Through<std::string, std::decay_t<L>>{this, full, loader});
        } else {
            return Through<const std::string&, L&>{this, full, loader};
        }
    }

    template <class Key, class L>
    struct Through {
        WriteBehind* self;
        Key full;
        L loader;
        std::optional<T> operator()() requires(!is_adaptive_loader_v<std::remove_reference_t<L>>) {
            LoadContext unused;
            return self->load_through(full, loader, unused);
        }
        std::optional<T> operator()(LoadContext& context) requires
            is_adaptive_loader_v<std::remove_reference_t<L>> {
            return self->load_through(full, loader, context);
        }
    };

    // The prefix without its last ':', with '%' and ':' escaped: distinct prefixes, distinct
    // names.
    static std::string queue_name_for(std::string_view prefix) {
        if (prefix.empty()) return "default";
        prefix.remove_suffix(1);
        std::string name;
        for (const char c : prefix) {
            if (c == '%') {
                name += "%25";
            } else if (c == ':') {
                name += "%3A";
            } else {
                name += c;
            }
        }
        return name;
    }

    // `cache` as the read path validated it (clock set, durations saturated).
    static WriteBehindOptions validated(WriteBehindOptions o, const CacheAsideOptions& cache) {
        o.cache = cache;
        auto fail = [](const char* why) { throw ConfigError(std::string("WriteBehind: ") + why); };
        if (o.name.empty()) o.name = queue_name_for(cache.key_prefix);
        if (o.name.find(':') != std::string::npos) fail("name must not contain ':'");
        if (o.interval.count() <= 0) fail("interval must be positive");
        if (o.batch_size == 0) fail("batch_size must be positive");
        if (o.max_batches_per_flush == 0) fail("max_batches_per_flush must be positive");
        if (o.claim_ttl.count() < 3) fail("claim_ttl must be at least 3 ms");
        if (o.retry.max_attempts == 0) fail("retry.max_attempts must be at least 1");
        if (o.retry.first_backoff.count() < 0 || o.retry.max_backoff < o.retry.first_backoff ||
            o.retry.max_outage_backoff < o.retry.first_backoff) {
            fail(
                "retry backoffs must satisfy 0 <= first_backoff <= max_backoff, "
                "max_outage_backoff");
        }
        if (o.retry.budget.count() < 0) fail("retry.budget must not be negative");
        if (o.block_timeout.count() < 0 || o.drain_timeout.count() < 0 || o.clean_ttl.count() < 0) {
            fail("block_timeout, drain_timeout and clean_ttl must not be negative");
        }
        return o;
    }

    [[nodiscard]] const Clock* clock() const noexcept { return options_.cache.clock; }

    // What the store says acknowledged writes survive; a store that outlives the process
    // but not its own restart is worth a warning (the surprise is Redis without AOF).
    void check_persistence_at_start() {
        try {
            persistence_ = store_->persistence();
        } catch (const std::exception& e) {
            persistence_ =
                Persistence{.outlives_process = store_type::durable,
                            .known = false,
                            .detail = std::string("could not ask the store: ") + e.what()};
        }
        if (persistence_.outlives_process && !persistence_.survives_restart) {
            log(LogLevel::warn, "warning: " + persistence_.detail);
        }
    }

    [[nodiscard]] DrainReport drain_report() const {
        return DrainReport{.kept_in_store = persistence_.outlives_process,
                           .durable = persistence_.known && persistence_.outlives_process &&
                                      persistence_.survives_restart};
    }

    void check_eviction_at_start() {
        if (options_.eviction_check == EvictionCheck::ignore) return;
        const EvictionRisk risk = check_eviction();
        if (risk.level == EvictionRisk::evicting) {
            if (options_.eviction_check == EvictionCheck::refuse) {
                throw ConfigError("WriteBehind '" + options_.name + "': " + risk.detail);
            }
            log(LogLevel::warn, "warning: " + risk.detail);
        } else if (risk.level != EvictionRisk::none) {
            log(LogLevel::warn,
                "warning: cannot tell whether the store may evict unflushed data: " + risk.detail);
        }
    }

    // An entry the store would carry on every call and every flush: refused before
    // anything is written, so nothing is acknowledged and nothing queued is lost.
    void check_size(std::string_view key, const std::string& bytes) {
        const std::size_t max = options_.cache.max_value_bytes;
        if (max > 0 && bytes.size() > max) {
            counters_.add<&WriteBehindStats::rejected>();
            throw ValueTooLargeError("WriteBehind '" + options_.name + "': the value of '" +
                                     std::string(key) + "' is " + std::to_string(bytes.size()) +
                                     " bytes encoded, over max_value_bytes (" +
                                     std::to_string(max) + ")");
        }
    }

    // After a write whose reply was lost: whether the store holds exactly these bytes (a
    // write's nonce makes them unique). A failed read-back proves nothing.
    bool applied(const std::string& full, const std::string& bytes) {
        try {
            const auto current = store_->read_current(full);
            return current && current->bytes == bytes;
        } catch (const BackendError&) {
            return false;
        }
    }

    void log(LogLevel level, const std::string& message) const noexcept {
        options_.cache.log(level,
                           [&] { return "write-behind '" + options_.name + "': " + message; });
    }

    [[nodiscard]] std::string user_key(std::string_view full) const {
        return std::string(this->caller_key(full));
    }

    typename detail::WriteBehindFlusher<T, store_type>::Cache flusher_hooks() {
        return {
            .key_of = [this](std::string_view full) { return this->keys().key_of(full); },
            .user_key = [this](std::string_view full) { return user_key(full); },
            .decode = [this](std::string_view bytes,
                             std::string* why) { return decode_value(bytes, why); },
            .log = [this](LogLevel level, const std::string& message) { log(level, message); },
        };
    }

    // A dirty copy: fresh while stored (it has no TTL until flushed), stamped with the
    // versions it depends on, so that a bump after the put reaches its clean copy too.
    std::string encode(const T& value, std::span<const TagVersion> stamp) const {
        std::string bytes;
        envelope::write_header(
            bytes,
            EnvelopeHeader{
                .kind = EntryKind::value, .codec = codec_type::id, .written_at = clock()->now()},
            stamp);
        this->codec().encode(value, bytes);
        return bytes;
    }

    // put and erase: the bytes made by `make(stamp)` become the key's cached copy and its
    // queued write, at once.
    template <class Make>
    std::uint64_t enqueue(std::string_view key, Make&& make) {
        const auto open = open_for_writes();
        const std::string full = this->full_key(key);
        const auto stamp = this->versions_for_write(full);
        const std::string bytes = make(std::span<const TagVersion>(stamp));
        // OutcomeUnknownError (a TimeoutError) when the reply was lost: the write may be
        // queued. Retrying it is safe: the latest write of a key wins.
        const PutOutcome out =
            with_room([&] { return store_->put(full, bytes, options_.max_pending); });
        acknowledged(out, false);
        this->written(full, stamp, /*cached=*/true);
        return out.version;
    }

    // A queued delete: what a read of the key finds until it is flushed.
    std::string tombstone(std::span<const TagVersion> stamp) const {
        std::string bytes;
        envelope::write_header(bytes,
                               EnvelopeHeader{.kind = EntryKind::not_found,
                                              .codec = codec_type::id,
                                              .written_at = clock()->now()},
                               stamp);
        return bytes;
    }

    // What a read makes of an unflushed copy: the value, "no row" for a queued delete, or
    // nothing usable (nullopt).
    std::optional<std::optional<T>> read_unflushed(std::string_view bytes) const {
        if (detail::is_tombstone(bytes)) return std::optional<T>{};
        if (auto v = decode_value(bytes, nullptr)) return std::optional<T>(std::move(v));
        return std::nullopt;
    }

    std::optional<T> decode_value(std::string_view bytes, std::string* why) const {
        const auto env = envelope::parse(bytes);
        if (!env || env->header.kind != EntryKind::value) {
            if (why) *why = "not a value envelope";
            return std::nullopt;
        }
        return this->decode_payload(*env, why);
    }

    // A miss of get(): the unflushed copy (dirty, or dead) if there is one, else the
    // database. When the queue cannot be asked the read fails: the database lacks every
    // acknowledged put still queued, so its row could be older than what this caller or
    // another was told is written.
    template <class L>
    std::optional<T> load_through(const std::string& full, L& loader, LoadContext& context) {
        try {
            if (auto dirty = store_->unflushed_value(full)) {
                if (auto v = read_unflushed(*dirty)) return std::move(*v);
            }
        } catch (const BackendError&) {
            counters_.add<&WriteBehindStats::backend_errors>();
            throw;
        }
        return call_loader<T>(loader, context);
    }

    // A miss of get_many(): unflushed copies where there are some, the database for the rest.
    template <class BatchLoader>
    std::vector<std::optional<T>> load_many_through(std::span<const std::string> keys,
                                                    BatchLoader& batch_loader) {
        std::vector<std::optional<T>> out(keys.size());
        std::vector<std::string> rest;
        std::vector<std::size_t> rest_at;
        for (std::size_t i = 0; i < keys.size(); ++i) {
            try {
                if (auto dirty = store_->unflushed_value(this->full_key(keys[i]))) {
                    if (auto v = read_unflushed(*dirty)) {
                        out[i] = std::move(*v);
                        continue;
                    }
                }
            } catch (const BackendError&) {
                counters_.add<&WriteBehindStats::backend_errors>();
                throw;  // as load_through: the database may be older than the queue
            }
            rest.push_back(keys[i]);
            rest_at.push_back(i);
        }
        if (rest.empty()) return out;
        std::vector<std::optional<T>> loaded =
            std::invoke(batch_loader, std::span<const std::string>(rest));
        if (loaded.size() != rest.size()) {
            throw LoaderError("get_many: the batch loader returned " +
                              std::to_string(loaded.size()) + " values for " +
                              std::to_string(rest.size()) + " keys");
        }
        for (std::size_t j = 0; j < rest.size(); ++j) out[rest_at[j]] = std::move(loaded[j]);
        return out;
    }

    template <class L>
    std::optional<T> base_of(const std::string& full, const CurrentValue& current, L& loader) {
        if (const auto env = envelope::parse(current.bytes)) {
            switch (env->header.kind) {
                case EntryKind::value:
                    if (auto value = this->decode_payload(*env)) return value;
                    break;
                case EntryKind::not_found:
                    return no_row();
                case EntryKind::lease: {
                    // A reader is loading the key. Load it here too; the compare-and-put
                    // against the lease then makes that reader's fill fail.
                    LoadContext unused;  // nothing loaded here is cached as loaded
                    std::optional<T> loaded = call_loader<T>(loader, unused);
                    if (loaded) return loaded;
                    return no_row();
                }
            }
        }
        if (current.dirty) {
            throw CodecError("WriteBehind: the queued value of '" + user_key(full) +
                             "' cannot be decoded with this cache's codec");
        }
        // Bytes in the cache we cannot read: remove exactly them, then load afresh.
        try {
            backend_.compare_and_delete(full, current.bytes);
        } catch (const BackendError&) {
            counters_.add<&WriteBehindStats::backend_errors>();
        }
        return std::nullopt;
    }

    static std::optional<T> no_row() {
        if constexpr (std::default_initializable<T>) {
            return T{};
        } else {
            throw LoaderError("WriteBehind: no row to start from, and T has no default value");
        }
    }

    template <class Op>
    PutOutcome with_room(Op&& op) {
        const auto deadline = std::chrono::steady_clock::now() + options_.block_timeout;
        Millis nap{1};
        for (;;) {
            PutOutcome out = op();
            if (out.status != PutStatus::full) return out;
            const auto now = std::chrono::steady_clock::now();
            if (options_.when_full == WhenFull::fail || now >= deadline) {
                counters_.add<&WriteBehindStats::rejected>();
                throw BackpressureError("WriteBehind '" + options_.name +
                                        "': " + std::to_string(options_.max_pending) +
                                        " keys are waiting to be flushed");
            }
            nudge();
            std::this_thread::sleep_for(
                std::min<std::chrono::steady_clock::duration>(nap, deadline - now));
            nap = std::min(nap * 2, Millis{20});
        }
    }

    void acknowledged(const PutOutcome& out, bool increment) {
        counters_.add<&WriteBehindStats::puts>();
        if (increment) counters_.add<&WriteBehindStats::increments>();
        if (out.coalesced) counters_.add<&WriteBehindStats::coalesced>();
    }

    [[nodiscard]] std::shared_lock<std::shared_mutex> open_for_writes() {
        std::shared_lock lock(close_mutex_);
        if (closed_) {
            throw ClosedError("WriteBehind '" + options_.name +
                              "' is closed: it acknowledges no more writes");
        }
        return lock;
    }

    void nudge() {
        {
            std::lock_guard lock(flusher_mutex_);
            nudged_ = true;
        }
        flusher_wake_.notify_all();
    }

    void run_flusher() {
        std::unique_lock lock(flusher_mutex_);
        auto last_error_log = std::chrono::steady_clock::time_point{};
        for (;;) {
            flusher_wake_.wait_for(lock, options_.interval, [&] { return stopping_ || nudged_; });
            if (stopping_) return;
            nudged_ = false;
            lock.unlock();
            FlushReport report;
            try {
                report = flusher_.flush_ready(options_.max_batches_per_flush, std::nullopt,
                                              &stop_requested_);
            } catch (const std::exception& e) {
                report.store_error = e.what();
            } catch (...) {
                report.store_error = "unknown error";
            }
            if (!report.store_error.empty()) {
                const auto now = std::chrono::steady_clock::now();
                if (now - last_error_log > std::chrono::seconds(5)) {
                    log(LogLevel::warn, "flush failed (will retry): " + report.store_error);
                    last_error_log = now;
                }
            }
            lock.lock();
        }
    }

    DrainReport drain(Millis timeout) {
        DrainReport out = drain_report();
        const auto deadline = std::chrono::steady_clock::now() + timeout;
        for (;;) {
            out.flushed += flusher_.flush_ready(std::numeric_limits<std::size_t>::max(), deadline,
                                                nullptr, true);
            try {
                out.left = store_->stats();
            } catch (const BackendError& e) {
                out.error = e.what();
                break;
            }
            if (out.left.pending == 0) break;
            const auto now = std::chrono::steady_clock::now();
            if (now >= deadline) break;
            // Entries in backoff, or claimed by another flusher: wait for them a little.
            std::this_thread::sleep_for(
                std::min<std::chrono::steady_clock::duration>(Millis{10}, deadline - now));
        }
        flusher_.release_lost_claims();
        out.complete = out.error.empty() && out.left.pending == 0;
        if (!out.complete) {
            try {
                for (auto& k : store_->pending_keys(100)) out.keys_left.push_back(user_key(k));
            } catch (const BackendError&) {
            }
        }
        return out;
    }

    B& backend_;
    const WriteBehindOptions options_;
    std::shared_ptr<store_type> store_;
    detail::StripedCounters<WriteBehindStats> counters_;
    detail::WriteBehindFlusher<T, store_type> flusher_;

    std::mutex flusher_mutex_;
    std::condition_variable flusher_wake_;
    bool stopping_ = false;
    bool nudged_ = false;
    bool closed_ = false;  // written under close_mutex_ (unique) and flusher_mutex_
    // Writes hold it shared, close() takes it alone: once close() returns, no write is
    // under way, and none is acknowledged after the drain began.
    std::shared_mutex close_mutex_;
    Persistence persistence_{};           // set at construction
    std::mutex drain_mutex_;              // held by close() for its whole drain
    std::optional<DrainReport> drained_;  // batches in a row that failed as a whole
    std::atomic<bool> stop_requested_{false};
    std::thread flusher_thread_;
};

}  // namespace larder
