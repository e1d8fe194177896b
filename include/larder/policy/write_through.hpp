// WriteThrough: a put writes the database, then the cache, so reads after a write hit the
// new value. Reads behave as CacheAside (lease-fenced fills, guards, negative caching).
//
// The textbook version (UPDATE; SELECT; SETEX) lets two concurrent writers leave the older
// value cached: W1 commits, W2 commits, W2 sets, W1 sets (docs/pitfalls.md). This class
// orders them:
//
//  1. A put first takes the key's write lease, a sibling key in the same slot
//     (SET NX PX write_lease_ttl with a random token), so writers of one key run one at a
//     time and their cache updates happen in their database commit order. The lease is
//     extended every write_lease_ttl / 3 while the database write runs.
//  2. It then replaces the cached value with its own lease marker (an envelope of kind
//     lease). A reader that loaded before the commit cannot fill (its own lease is gone),
//     and no new fill can start; readers with the Lock guard wait for the new value.
//  3. It runs db_write. If that throws, the marker is removed (a miss: the row may or may
//     not have changed) and the exception propagates.
//  4. It stores the value by compare-and-set against its marker. If the marker is gone -
//     an invalidate() meanwhile, or this writer stalled past its lease and another took
//     over - it never overwrites what it cannot order: without a row version it deletes
//     whatever is there (a miss is always safe, a stale value never is); with one (db_write
//     returns the row's version) it replaces only a value with a lower version.
//  5. A writer that dies between its commit and step 4 leaves its marker, which expires
//     after write_lease_ttl: a miss, never the old value.
//
// See docs/write-paths.md for the guarantee, its one limit (a writer stalled longer than
// its lease) and the tests that prove it.
#pragma once

#include <array>
#include <atomic>
#include <chrono>
#include <concepts>
#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <thread>
#include <type_traits>
#include <utility>

#include "larder/backend/backend.hpp"
#include "larder/codec/raw.hpp"
#include "larder/core/clock.hpp"
#include "larder/core/codec.hpp"
#include "larder/core/envelope.hpp"
#include "larder/core/error.hpp"
#include "larder/core/keys.hpp"
#include "larder/core/loader.hpp"
#include "larder/core/random.hpp"
#include "larder/core/stats.hpp"
#include "larder/policy/detail/components.hpp"
#include "larder/policy/detail/lease_keeper.hpp"
#include "larder/policy/detail/read_path.hpp"
#include "larder/policy/options.hpp"

namespace larder {

struct WriteThroughOptions {
    /// The cache side, as CacheAside's: key prefix, clock, and the TTL, jitter and grace
    /// of the values put here as well as of those get() loads.
    CacheAsideOptions cache{};
    /// How long a writer holds the key's write lease (and its marker) without news. It is
    /// extended every third of this while db_write runs, so it only bounds how long a
    /// writer that died blocks the key - and how long a stalled one keeps its order.
    Millis write_lease_ttl = std::chrono::seconds(10);
    /// How long a put waits for another writer of the same key before it gives up with
    /// WriteConflictError (before its database write).
    Millis max_lock_wait = std::chrono::seconds(10);
};

/// What WriteThrough::put runs: a database write returning nothing, or the row's version
/// after the write (any number that grows with every committed write of the row).
template <class W>
concept DatabaseWrite = std::invocable<W&> &&
    (std::is_void_v<std::invoke_result_t<W&>> ||
     std::convertible_to<std::invoke_result_t<W&>, std::uint64_t>);

/// What a put left in the cache (the database write always happened when put returns).
enum class WriteOutcome : std::uint8_t {
    cached,             ///< the new value
    kept_newer,         ///< a value with a higher row version, which stays
    invalidated,        ///< nothing: the next read loads from the database
    cache_unavailable,  ///< the store failed after the write; the writer's marker expires
                        ///< after write_lease_ttl, leaving a miss
};

struct WriteThroughStats {
    std::uint64_t puts = 0;               ///< puts whose database write succeeded
    std::uint64_t cached = 0;             ///< ... that left their value in the cache
    std::uint64_t kept_newer = 0;         ///< ... that found a newer version there
    std::uint64_t invalidated = 0;        ///< ... that left a miss
    std::uint64_t cache_unavailable = 0;  ///< ... whose cache update failed
    std::uint64_t lock_waits = 0;         ///< puts that waited for another writer
    std::uint64_t db_failures = 0;        ///< database writes that threw
    std::uint64_t backend_errors = 0;     ///< store failures on the write path
    StatsSnapshot reads{};                ///< the read side (get)

    friend bool operator==(const WriteThroughStats&, const WriteThroughStats&) = default;
};

template <>
struct counter_set<WriteThroughStats> {
    using S = WriteThroughStats;
    static constexpr std::string_view family = "write_through";
    static constexpr std::array<CounterField<S>, 8> fields{{
        {"puts", "puts whose database write succeeded", &S::puts},
        {"cached", "puts that left their value in the cache", &S::cached},
        {"kept_newer", "puts that found a newer version in the cache", &S::kept_newer},
        {"invalidated", "puts that left a miss", &S::invalidated},
        {"cache_unavailable", "puts whose cache update failed", &S::cache_unavailable},
        {"lock_waits", "puts that waited for another writer", &S::lock_waits},
        {"db_failures", "database writes that threw", &S::db_failures},
        {"backend_errors", "store failures on the write path", &S::backend_errors},
    }};
};

/// WriteThrough<T, Backend, Components...>: Components are an optional codec for T, an
/// optional StampedeGuard and an optional Invalidator, in any order, as for CacheAside.
/// The read verbs are the read path's, as CacheAside's: while a put of a key runs,
/// readers find its marker and load without filling, or wait for the new value with the
/// Lock guard. The write verb is put.
template <class T, Backend B, class... Components>
class WriteThrough : public detail::ReadPath<T, B, Components...> {
    using Base = detail::ReadPath<T, B, Components...>;
    using TagVersion = typename Base::TagVersion;

public:
    using typename Base::codec_type;
    using typename Base::guard_type;
    using typename Base::invalidator_type;

    /// The backend is borrowed: it must outlive this object.
    explicit WriteThrough(B& backend, WriteThroughOptions options = {}, guard_type guard = {},
                          codec_type codec = {}, invalidator_type invalidator = {})
        : Base(backend, options.cache, std::move(guard), std::move(codec), std::move(invalidator)),
          backend_(backend),
          options_(validated(std::move(options), this->cache_options())),
          // The write lock is held for as long as the database write runs.
          write_leases_(this->keeper(), backend, options_.write_lease_ttl, Millis::max()) {}

    WriteThrough(const WriteThrough&) = delete;
    WriteThrough& operator=(const WriteThrough&) = delete;

    /// Writes the database with `db_write()`, then caches `value` (see the header comment
    /// for how concurrent writers are ordered). db_write returns void, or the row's version
    /// after the write (any number that grows with every committed write of the row, such
    /// as a version column bumped by the UPDATE); with a version, an older write can never
    /// replace a newer cached value, even past the write lease.
    ///
    /// Throws what db_write throws (the key is then left uncached); WriteConflictError when
    /// another writer holds the key longer than max_lock_wait (db_write did not run);
    /// CodecError when the value cannot be encoded (db_write did not run); BackendError
    /// only when the store failed before the database write and the old value could not be
    /// removed after it - the entry may then stay until its TTL, as with
    /// CacheAside::update.
    template <DatabaseWrite DbWrite>
    WriteOutcome put(std::string_view key, const T& value, DbWrite&& db_write) {
        const std::string full = this->full_key(key);
        std::string payload;
        // Before anything is written: a CodecError costs nothing.
        this->codec().encode(value, payload);

        const std::string lock_key = this->keys().sibling(key, "write");
        const std::string marker = envelope::make_lease(random_token(), options_.cache.clock->now(),
                                                        envelope::flag_write_marker);
        bool locked = false;
        bool fenced = false;
        // The versions the invalidator says this key depends on, read before the database
        // write: a bump during it leaves the put's value stamped with the old version, so
        // it is never served.
        std::vector<TagVersion> stamp;
        try {
            locked = acquire(key, lock_key, marker);
            stamp = this->versions_for_write(full);
            backend_.set(full, marker, options_.write_lease_ttl);
            fenced = true;
        } catch (const BackendError&) {
            stats_.add<&WriteThroughStats::backend_errors>();
            if (locked) release(lock_key, marker);
            locked = false;
        }

        std::uint64_t version = 0;
        {
            std::optional<detail::Keeper::Hold> hold_lock, hold_marker;
            if (locked) {
                hold_lock.emplace(write_leases_.hold(lock_key, marker));
                hold_marker.emplace(write_leases_.hold(full, marker));
            }
            try {
                if constexpr (std::is_void_v<std::invoke_result_t<DbWrite&>>) {
                    std::invoke(db_write);
                } else {
                    version = static_cast<std::uint64_t>(std::invoke(db_write));
                }
            } catch (...) {
                stats_.add<&WriteThroughStats::db_failures>();
                hold_lock.reset();
                hold_marker.reset();
                // Committed or not, nobody can tell: leave a miss, here and (through the
                // invalidator) in other processes' copies.
                if (fenced) {
                    remove_quietly(full, marker);
                } else {
                    try {
                        backend_.del(full);  // the old value, unfenced: a best effort
                    } catch (...) {
                        stats_.add<&WriteThroughStats::backend_errors>();
                    }
                }
                if (locked) release(lock_key, marker);
                this->written(full, stamp, /*cached=*/false);
                throw;
            }
        }
        stats_.add<&WriteThroughStats::puts>();

        if (!fenced) {
            // No lease and no marker: the old value may be cached. Remove it; if even that
            // fails, the caller must learn that the entry may live until its TTL. Other
            // processes' copies go either way, once the shared copy is gone (or not).
            try {
                backend_.del(full);
            } catch (...) {
                this->written(full, stamp, /*cached=*/false);
                throw;
            }
            this->written(full, stamp, /*cached=*/false);
            stats_.add<&WriteThroughStats::invalidated>();
            return WriteOutcome::invalidated;
        }

        WriteOutcome outcome = WriteOutcome::cache_unavailable;
        try {
            const auto entry = entry_of(full, payload, version, stamp);
            if (this->too_large(entry.bytes.size())) {
                remove_quietly(full, marker);  // in the database, not in the cache
                outcome = WriteOutcome::invalidated;
            } else {
                outcome = finish(full, marker, entry.bytes, entry.ttl, version);
            }
        } catch (const BackendError&) {
            stats_.add<&WriteThroughStats::backend_errors>();
        }
        if (locked) release(lock_key, marker);
        this->written(full, stamp, outcome == WriteOutcome::cached);
        switch (outcome) {
            case WriteOutcome::cached:
                stats_.add<&WriteThroughStats::cached>();
                break;
            case WriteOutcome::kept_newer:
                stats_.add<&WriteThroughStats::kept_newer>();
                break;
            case WriteOutcome::invalidated:
                stats_.add<&WriteThroughStats::invalidated>();
                break;
            case WriteOutcome::cache_unavailable:
                stats_.add<&WriteThroughStats::cache_unavailable>();
                options_.cache.log(LogLevel::warn, [&] {
                    return "write-through '" + options_.cache.name + "': '" + std::string(key) +
                           "' is written, but the cache could not be updated; it misses "
                           "once its write marker expires (write_lease_ttl)";
                });
                break;
        }
        return outcome;
    }

    /// This object's counters, and its read side's; local, no I/O.
    [[nodiscard]] WriteThroughStats stats() const {
        WriteThroughStats s = stats_.snapshot();
        s.reads = this->read_stats();
        return s;
    }

    [[nodiscard]] const WriteThroughOptions& options() const noexcept { return options_; }

private:
    // `cache` as the read path validated it (clock set, durations saturated).
    static WriteThroughOptions validated(WriteThroughOptions o, const CacheAsideOptions& cache) {
        o.cache = cache;
        if (o.write_lease_ttl.count() < 3) {
            throw ConfigError("WriteThrough: write_lease_ttl must be at least 3 ms");
        }
        if (o.max_lock_wait.count() < 0) {
            throw ConfigError("WriteThrough: max_lock_wait must not be negative");
        }
        return o;
    }

    // Takes the key's write lease, waiting (jittered backoff) while another writer holds it.
    bool acquire(std::string_view key, const std::string& lock_key, const std::string& marker) {
        const auto deadline = std::chrono::steady_clock::now() + options_.max_lock_wait;
        Millis backoff{1};
        bool counted = false;
        for (;;) {
            if (backend_.set_if_absent(lock_key, marker, options_.write_lease_ttl)) return true;
            if (!counted) {
                stats_.add<&WriteThroughStats::lock_waits>();
                counted = true;
            }
            const auto now = std::chrono::steady_clock::now();
            if (now >= deadline) {
                throw WriteConflictError("WriteThrough: another writer held key '" +
                                         std::string(key) + "' for longer than max_lock_wait");
            }
            const Millis nap{random_between(backoff.count() / 2 + 1, backoff.count())};
            std::this_thread::sleep_for(
                std::min<std::chrono::steady_clock::duration>(nap, deadline - now));
            backoff = std::min(backoff * 2, Millis{50});
        }
    }

    void release(const std::string& lock_key, const std::string& marker) noexcept {
        remove_quietly(lock_key, marker);
    }

    void remove_quietly(const std::string& key, const std::string& expected) noexcept {
        try {
            backend_.compare_and_delete(key, expected);
        } catch (...) {
            stats_.add<&WriteThroughStats::backend_errors>();  // it expires by itself
        }
    }

    // The entry of a put, with the read side's freshness (TTL, jitter, grace).
    auto entry_of(const std::string& full, const std::string& payload, std::uint64_t version,
                  std::span<const TagVersion> stamp) {
        return this->make_entry(full, EntryKind::value, std::chrono::microseconds{0}, stamp,
                                version, [&](std::string& out) { out += payload; });
    }

    // Step 4: replace our marker with the value; if the marker is gone, never leave a value
    // that cannot be ordered after ours.
    WriteOutcome finish(const std::string& full, const std::string& marker,
                        const std::string& bytes, Millis ttl, std::uint64_t version) {
        for (int round = 0; round < 16; ++round) {
            if (backend_.compare_and_set(full, marker, bytes, ttl)) return WriteOutcome::cached;
            const auto current = backend_.get(full);
            if (!current) return WriteOutcome::invalidated;
            const auto env = envelope::parse(current->bytes);
            if (version > 0 && env && env->header.kind == EntryKind::value &&
                env->header.version > 0) {
                if (env->header.version >= version) return WriteOutcome::kept_newer;
                if (backend_.compare_and_set(full, current->bytes, bytes, ttl)) {
                    return WriteOutcome::cached;
                }
                continue;
            }
            // Another writer's marker, a reader's lease or fill, a value without a version:
            // nothing here can be ordered against this write. A miss is safe.
            if (backend_.compare_and_delete(full, current->bytes)) return WriteOutcome::invalidated;
        }
        backend_.del(full);
        return WriteOutcome::invalidated;
    }

    B& backend_;
    const WriteThroughOptions options_;
    detail::StripedCounters<WriteThroughStats> stats_;
    detail::LeaseKeeper<B> write_leases_;
};

}  // namespace larder
