// What a WriteBehind takes and gives back: its options, the batch writer's entries and
// result, the reports of a flush and a drain, its counters, a dead letter. The policy is
// in <larder/policy/write_behind.hpp>.
#pragma once

#include <array>
#include <chrono>
#include <concepts>
#include <cstdint>
#include <functional>
#include <optional>
#include <string>
#include <string_view>
#include <type_traits>
#include <utility>
#include <vector>

#include "larder/backend/write_behind_store.hpp"
#include "larder/core/clock.hpp"
#include "larder/core/error.hpp"
#include "larder/core/stats.hpp"
#include "larder/policy/options.hpp"

namespace larder {

/// One value the batch writer is asked to write.
template <class T>
struct DirtyEntry {
    /// The key as given to put (without the key prefix).
    std::string key;
    /// The value of this version: the latest put for the key, unless the queue keeps every
    /// version (WriteBehindOptions::coalesce = false), when the versions come in order.
    T value;
    /// Grows with every put to the key, across processes and restarts: a fencing token for
    /// the database write (UPDATE ... SET v = ?, version = ? WHERE id = ? AND version < ?).
    std::uint64_t version = 0;
    /// 1 on the first try; counts the times the writer rejected this row (and claims that
    /// expired), not the batches that failed as a whole.
    std::uint32_t attempt = 1;
    /// The oldest write of the key the database has not received.
    TimePoint dirty_since{};
    /// A delete queued by WriteBehind::erase: remove the row (fenced on version, as a write).
    bool erased = false;
};

/// A member of T that WriteBehind::increment can add to: a pointer to an integer data
/// member (&User::score), or a callable returning a reference to one.
template <class F, class T>
concept IntegerFieldOf =
    std::invocable<F&, T&> && std::is_lvalue_reference_v<std::invoke_result_t<F&, T&>> &&
    std::integral<std::remove_cvref_t<std::invoke_result_t<F&, T&>>>;

/// What the batch writer reports: by default every entry was written. Mark the entries
/// that failed, with a message; they are retried (or dead-lettered) alone while the rest
/// are acknowledged. A writer that throws fails the whole batch with the exception's text:
/// that is an outage (the database could not be reached), retried after a backoff without
/// counting against any entry's attempts.
class BatchResult {
public:
    struct Failure {
        std::size_t index = 0;
        std::string error;
        /// Refused as stale: the database holds a newer version of the row.
        bool stale = false;
    };

    /// Entry `index` of the batch was not written: the database rejected this row.
    void fail(std::size_t index, std::string error) {
        failures_.push_back(Failure{index, std::move(error)});
    }

    /// Entry `index` was refused as stale: a fenced write (UPDATE ... WHERE version < ?)
    /// found a newer version in the database. Retrying cannot help, and acknowledging would
    /// hide an acknowledged write that never landed: it is dead-lettered at once, counted
    /// and reported, for a person to redrive or discard.
    void stale(std::size_t index, std::string error = "refused as stale") {
        failures_.push_back(Failure{index, std::move(error), true});
    }

    [[nodiscard]] const std::vector<Failure>& failures() const noexcept { return failures_; }
    [[nodiscard]] bool ok() const noexcept { return failures_.empty(); }

private:
    std::vector<Failure> failures_;
};

/// How a failed write is retried. Two failures are told apart: a row the writer rejects
/// (BatchResult::fail) is an attempt, and the row is dead-lettered once it has used both
/// max_attempts and budget; a batch writer that throws is an outage of the database,
/// which backs off up to max_outage_backoff and costs no entry an attempt, however long
/// it lasts (nothing is dead-lettered because the database was down).
struct RetryOptions {
    /// Rejections per entry, the first included, before it may be dead-lettered. An
    /// expired claim (a flusher that died on it) counts as one.
    std::uint32_t max_attempts = 5;
    /// A rejected entry is retried for at least this long, counted from its oldest write
    /// the database has not received, before it is dead-lettered (0: attempts alone).
    Millis budget = std::chrono::minutes(1);
    /// Delay before the first retry; it doubles per attempt up to max_backoff, half of it
    /// random (equal jitter).
    Millis first_backoff{200};
    Millis max_backoff = std::chrono::seconds(30);
    /// Cap of the backoff after a batch that failed as a whole (it starts at
    /// first_backoff and doubles per failed batch in a row): the longest an outage's end
    /// goes unnoticed.
    Millis max_outage_backoff = std::chrono::seconds(5);
};

/// What on_dead_letter is told.
struct DeadLetterEvent {
    std::string key;  ///< as given to put
    std::uint64_t version = 0;
    std::string error;
    /// The dead-letter list holds max_dead entries already: this one was kept pending
    /// instead, and is retried with its backoff.
    bool list_full = false;
};

/// What a put does when max_pending keys are dirty already.
enum class WhenFull : std::uint8_t {
    block,  ///< wake the flusher and wait up to block_timeout for room, then throw
    fail,   ///< throw BackpressureError at once
};

/// What the constructor does about the store evicting unflushed data (Redis with an
/// allkeys-* maxmemory-policy). ignore: nothing, no I/O (the default: on Redis the check
/// needs CONFIG GET, an @admin command a tenant's ACL refuses; call check_eviction() where
/// it is allowed). warn, refuse: run check_eviction() and log, or throw ConfigError.
enum class EvictionCheck : std::uint8_t { warn, refuse, ignore };

struct WriteBehindOptions {
    /// The queue's name: every WriteBehind (in any process) with the same name on the same
    /// store shares one queue, which belongs to one cache prefix (a flusher dead-letters
    /// keys of any other). Empty: named after cache.key_prefix ("users:" gives "users",
    /// no prefix "default"), so caches with distinct prefixes get distinct queues. No ':'.
    std::string name{};
    /// How often the flusher thread flushes what is ready.
    Millis interval = std::chrono::seconds(1);
    /// false: no flusher thread; only flush() and the final drain write (for processes that
    /// only produce, or for tests).
    bool start_flusher = true;
    /// Entries per batch-writer call.
    std::size_t batch_size = 100;
    /// Bound on the bytes of the values one claim carries (it always carries at least one
    /// entry; 0: no bound). A huge value then travels alone, so if its claim's reply times
    /// out, no other entry waits for that claim to expire.
    std::size_t batch_bytes = std::size_t{16} << 20;
    /// Bound on the batches one flush() writes, so producers cannot keep it going forever.
    std::size_t max_batches_per_flush = 1000;
    /// How long a claim lasts without news from its flusher. A live flusher extends its
    /// claims every claim_ttl / 3 while its writer runs; a dead one's are re-queued.
    Millis claim_ttl = std::chrono::seconds(30);
    RetryOptions retry{};
    /// Bound on dirty and dead keys together (0: none): both hold acknowledged writes the
    /// database lacks. A put to a key that is dirty already always fits.
    std::size_t max_pending = 0;
    /// Bound on dead-lettered entries (0: none). At the bound an entry that would die stays
    /// pending instead, and on_dead_letter is told (list_full). A store's bound is set by
    /// the WriteBehind that creates it.
    std::size_t max_dead = 100'000;
    WhenFull when_full = WhenFull::block;
    Millis block_timeout = std::chrono::seconds(1);
    /// How long destruction (or close()) keeps flushing before it reports what is left.
    Millis drain_timeout = std::chrono::seconds(5);
    /// Once flushed, a cached copy becomes an ordinary cache entry with this TTL
    /// (0: it stays without one). While dirty it never has a TTL.
    Millis clean_ttl = std::chrono::minutes(5);
    EvictionCheck eviction_check = EvictionCheck::ignore;
    /// The acknowledgement level: a put (modify, increment) returns only once this many
    /// replicas have it too (Redis WAIT), so a failover to one of them cannot lose it; when
    /// fewer confirm within replica_timeout it throws DurabilityError (the write is on the
    /// primary: retrying a put is safe). replica_timeout must be below the backend's
    /// command_timeout. 0: acknowledged once the store has it. Not on the memory store.
    int replicas = 0;
    Millis replica_timeout{50};
    /// true: a put to a key still waiting replaces its value, and the batch writer gets
    /// only the latest. false: it gets every version, in order, one per key per batch
    /// (Hazelcast's write-coalescing=false), for writers that record history; a version
    /// that dies then holds back the key's later ones until it is redriven or discarded,
    /// and max_pending counts versions. Every writer of one queue must agree.
    bool coalesce = true;
    /// The cache side, as CacheAside's: cached copies live under the cache's entry keys,
    /// and get() loads and caches misses with these TTLs. Its `log` also hears the
    /// queue's warnings, dead-lettered entries (error) and incomplete drains (error).
    CacheAsideOptions cache{};
    /// The alert hook: called (from the flusher's thread) for every entry this object
    /// dead-letters, or would have but for max_dead. Exceptions it throws are ignored.
    std::function<void(const DeadLetterEvent&)> on_dead_letter{};
};

/// What one flush did.
struct FlushReport {
    std::size_t batches = 0;        ///< batch-writer calls
    std::size_t claimed = 0;        ///< entries claimed
    std::size_t flushed = 0;        ///< written and acknowledged
    std::size_t superseded = 0;     ///< settled while a newer value came: that one is queued
    std::size_t retried = 0;        ///< rejected by the writer, queued again with a backoff
    std::size_t deferred = 0;       ///< in a batch that failed as a whole: no attempt counted
    std::size_t dead_lettered = 0;  ///< failed for the last time
    std::size_t held = 0;           ///< would have died, but the dead-letter list was full
    std::size_t stale = 0;          ///< refused as stale by the writer (dead-lettered)
    std::size_t requeued = 0;       ///< expired claims of other flushers taken back
    /// Claims whose reply never came (a timeout): what they took is released by the next
    /// claim, as a failed attempt, and the flush goes on past them.
    std::size_t lost_claims = 0;
    /// Settlements the store refused because the claim had expired (this flusher stalled,
    /// or the store paused, past claim_ttl): another flusher writes those entries again.
    std::size_t forfeited = 0;
    /// "key: message" of failed entries (the first 16).
    std::vector<std::string> errors;
    /// Set when the store failed; what was claimed is re-queued when its claim expires.
    std::string store_error;

    FlushReport& operator+=(const FlushReport& o) {
        batches += o.batches;
        claimed += o.claimed;
        flushed += o.flushed;
        superseded += o.superseded;
        retried += o.retried;
        deferred += o.deferred;
        dead_lettered += o.dead_lettered;
        held += o.held;
        stale += o.stale;
        requeued += o.requeued;
        lost_claims += o.lost_claims;
        forfeited += o.forfeited;
        for (const auto& e : o.errors) {
            if (errors.size() < 16) errors.push_back(e);
        }
        if (!o.store_error.empty()) store_error = o.store_error;
        return *this;
    }
};

/// What the final drain (destruction or close()) did and left.
struct DrainReport {
    /// Nothing dirty is left in the queue.
    bool complete = true;
    /// What is left stays in the store and is flushed by the next flusher (Redis); false:
    /// it is lost with this process (memory).
    bool kept_in_store = false;
    /// What is left also survives a restart of the store (Redis with appendonly yes, as
    /// checked at construction); false when it does not, or could not be told.
    bool durable = false;
    FlushReport flushed{};
    QueueStats left{};
    /// Up to 100 of the keys left, oldest first.
    std::vector<std::string> keys_left{};
    /// The store could not be reached.
    std::string error{};

    [[nodiscard]] std::string describe(std::string_view name = {}) const {
        std::string out = "write-behind";
        if (!name.empty()) out.append(" '").append(name).append("'");
        if (complete) return out + ": drained, " + std::to_string(flushed.flushed) + " flushed";
        out += ": drain incomplete, " + std::to_string(left.pending) + " dirty key(s) not flushed";
        out += !kept_in_store ? " (NOT durable: they are lost with this process)"
               : durable      ? " (they stay in the store for the next flusher)"
                              : " (they stay in the store for the next flusher, but a restart "
                                "of the store would lose them: it does not persist them)";
        if (left.dead > 0) out += ", " + std::to_string(left.dead) + " dead-lettered";
        if (!error.empty()) out += "; store error: " + error;
        if (!keys_left.empty()) {
            out += "; keys:";
            for (const auto& k : keys_left) out.append(" ").append(k);
        }
        return out;
    }
};

/// What one WriteBehind object did, counted since it was built. The queue's sizes, which
/// the store counts over every process on it, are WriteBehind::queue_stats().
struct WriteBehindStats {
    std::uint64_t puts = 0;        ///< puts, increments and modifications acknowledged
    std::uint64_t increments = 0;  ///< of those, increments and modifications
    std::uint64_t flushed = 0;     ///< entries written and acknowledged
    std::uint64_t coalesced = 0;   ///< puts that replaced a value still waiting (a DB write saved)
    std::uint64_t superseded = 0;  ///< entries written while a newer value came
    std::uint64_t retried = 0;     ///< entries the writer rejected, queued again
    std::uint64_t deferred = 0;    ///< entries of batches that failed as a whole (outages)
    std::uint64_t dead_lettered = 0;  ///< entries moved to the dead-letter list
    std::uint64_t held = 0;   ///< entries kept pending because the dead-letter list was full
    std::uint64_t stale = 0;  ///< entries the writer refused as stale
    std::uint64_t requeued_claims = 0;  ///< expired claims of dead flushers taken back
    /// Entries this object wrote whose claim had expired by the time it settled them (it
    /// stalled, or the store paused, past claim_ttl): refused, and written again.
    std::uint64_t forfeited = 0;
    std::uint64_t batches = 0;         ///< batch-writer calls
    std::uint64_t failed_batches = 0;  ///< of those, calls that threw
    std::uint64_t conflicts = 0;       ///< read-modify-writes that raced and went again
    std::uint64_t rejected = 0;        ///< puts refused by backpressure
    std::uint64_t backend_errors = 0;  ///< store failures seen by the flusher and reads
    /// The read side (get).
    StatsSnapshot reads{};

    friend bool operator==(const WriteBehindStats&, const WriteBehindStats&) = default;
};

template <>
struct counter_set<WriteBehindStats> {
    using S = WriteBehindStats;
    static constexpr std::string_view family = "write_behind";
    static constexpr std::array<CounterField<S>, 17> fields{{
        {"puts", "puts, increments and modifications acknowledged", &S::puts},
        {"increments", "increments and modifications acknowledged", &S::increments},
        {"flushed", "entries written to the database and acknowledged", &S::flushed},
        {"coalesced", "puts that replaced a value still waiting", &S::coalesced},
        {"superseded", "entries written while a newer value came", &S::superseded},
        {"retried", "entries the writer rejected, queued again", &S::retried},
        {"deferred", "entries of batches that failed as a whole", &S::deferred},
        {"dead_lettered", "entries moved to the dead-letter list", &S::dead_lettered},
        {"held", "entries kept pending because the dead-letter list was full", &S::held},
        {"stale", "entries the writer refused as stale", &S::stale},
        {"requeued_claims", "expired claims of dead flushers taken back", &S::requeued_claims},
        {"forfeited", "entries written after their claim expired", &S::forfeited},
        {"batches", "batch-writer calls", &S::batches},
        {"failed_batches", "batch-writer calls that threw", &S::failed_batches},
        {"conflicts", "read-modify-writes that raced and went again", &S::conflicts},
        {"rejected", "puts refused by backpressure", &S::rejected},
        {"backend_errors", "store failures seen by the flusher and reads", &S::backend_errors},
    }};
};

/// A dead-lettered entry, decoded.
template <class T>
struct DeadEntry {
    std::string key;
    /// nullopt when the stored bytes cannot be decoded with this cache's codec.
    std::optional<T> value;
    std::uint64_t version = 0;
    std::uint32_t attempts = 0;
    std::string error;
    TimePoint dead_at{};
    TimePoint dirty_since{};
};

}  // namespace larder
