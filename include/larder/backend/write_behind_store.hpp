// The WriteBehindStore concept: the durable queue behind larder::WriteBehind, and the
// in-memory implementation of it. A write-behind cache acknowledges a put before the
// database has it, so the queue of unflushed values is the only copy of acknowledged data:
// every operation here is atomic on its own, and none of them can lose a value that a put
// acknowledged.
//
// The life of one key:
//
//   clean --put--> pending --claim--> processing --settle(ack)--> clean
//                  ^  ^  ^  ^               |
//                  |  |  |  '---------------+ settle(defer): not before now + backoff,
//                  |  |  |                  |   no attempt counted (the database was down)
//                  |  |  '------------------+ settle(retry): not before now + backoff
//                  |  '---------------------+ claim by anyone, once its deadline passed
//                  '--redrive-- dead <------+ settle(dead), after max_attempts
//
//  - put writes the value twice, atomically: the cached copy under the key itself (no TTL,
//    where readers find it) and the dirty copy in the queue, with a new per-key version
//    that never repeats. The queue keeps the dirty copy, not only the cache, so an evicted
//    cache entry cannot lose unflushed data. A put to a key that is waiting replaces its
//    value (coalescing); a put to a key being flushed waits for that flush to settle.
//    With coalesce = false it is queued behind the key's earlier versions instead, and
//    each is claimed once the one before it is acknowledged; a dead version holds back
//    the later ones until it is redriven (back in front of them) or discarded.
//  - claim moves ready entries into processing with a deadline, and first re-queues
//    processing entries whose deadline passed (their flusher died or stalled), counting
//    that as a failed attempt.
//  - settle acknowledges, retries or dead-letters a claimed entry, but only while the claim
//    is still the caller's (named by the token its claim returned: once a claim expired,
//    another flusher may hold the entry, and a late settle must not free it under that
//    flusher's writer) and its version did not change meanwhile; if it did, the key is
//    pending again with the newer value. extend, likewise, keeps only the caller's own
//    claims alive, and never one whose deadline passed.
//  - dead entries are unflushed data too: reads of the unflushed copy see them, they count
//    toward max_pending, and there are at most max_dead of them (an entry that would die
//    beyond that stays pending instead). A put to a dead key replaces the dead entry, as
//    it replaces a waiting value.
//  - versions never go backwards for a key, whatever the clocks: a new one is above the
//    last one issued for the key (kept after the flush) and above its dead entry's.
//
// Rules for implementations: keys and values are arbitrary bytes; the time base (ready
// times, deadlines, ages) is the store's own clock; a failure of the store throws
// larder::BackendError and leaves the queue as it was.
#pragma once

#include <algorithm>
#include <atomic>
#include <concepts>
#include <cstdint>
#include <deque>
#include <map>
#include <mutex>
#include <optional>
#include <set>
#include <span>
#include <string>
#include <string_view>
#include <unordered_map>
#include <utility>
#include <vector>

#include "larder/backend/backend.hpp"
#include "larder/backend/memory.hpp"
#include "larder/core/clock.hpp"
#include "larder/core/error.hpp"

namespace larder {

/// What put and put_if did.
enum class PutStatus : std::uint8_t {
    stored,    ///< written; the key is dirty with `version`
    conflict,  ///< put_if only: the current value was not the expected one
    full,      ///< the key was clean and max_pending dirty keys are waiting already
};

struct PutOutcome {
    PutStatus status = PutStatus::stored;
    /// The key's new version (when stored): larger than every version issued before.
    std::uint64_t version = 0;
    /// The put replaced a value that was still waiting, which will now never be written.
    bool coalesced = false;
};

/// The value a read-modify-write starts from: the unflushed copy (dirty, or dead) when
/// there is one, otherwise the cached copy.
struct CurrentValue {
    std::string bytes;
    /// From the queue: the database does not have it.
    bool dirty = false;
};

/// One entry as a flusher claimed it.
struct ClaimedEntry {
    std::string key;
    std::uint64_t version = 0;
    std::string value;
    /// Failed attempts before this one (expired claims count).
    std::uint32_t attempts = 0;
    /// The oldest write of the key the database has not received.
    TimePoint dirty_since{};
    /// How long ago that was, on the store's clock (the one dirty_since is on), at the
    /// claim: what a retry budget is measured with.
    Millis waited{0};
    /// The error of the last failed attempt; empty when none.
    std::string last_error;
};

struct ClaimBatch {
    std::vector<ClaimedEntry> entries;
    /// Expired claims of other flushers put back in the queue by this call.
    std::size_t requeued = 0;
    /// Keys whose expired claims used up max_attempts: dead-lettered by this call.
    std::vector<std::string> dead_lettered;
    /// Keys that would have been dead-lettered so, but the dead-letter list is full: pending
    /// again instead.
    std::vector<std::string> held;
};

/// How a claim is bounded and who makes it.
struct ClaimOptions {
    /// An expired claim counts as a failed attempt; one that brings an entry's failed
    /// attempts to this is dead-lettered by the claim itself, not re-queued: the store's
    /// count decides, so an entry whose claims never reach their flusher (a reply that
    /// always times out) cannot circle forever. 0: no bound.
    std::uint32_t max_attempts = 0;
    /// ... and only once the entry's oldest unflushed write is this old (the retry budget).
    Millis budget{0};
    /// The claim stops taking entries once their values pass this many bytes (it always
    /// takes at least one), so one huge value travels alone and cannot drag a whole batch
    /// into its fate. 0: no bound.
    std::size_t max_bytes = 0;
    /// Names this claim, so that only its caller can settle or extend it, and release it
    /// if the reply is lost. 0: anonymous (settled and extended with token 0).
    std::uint64_t token = 0;
    /// Tokens of this caller's earlier claims whose replies never came: whatever they
    /// took is released first, counted as a failed attempt, and may be taken again now
    /// rather than when those claims expire.
    std::span<const std::uint64_t> lost{};
};

/// How a flusher settles a claimed entry.
struct Settlement {
    /// ack: written. retry: the writer rejected it (an attempt). dead: rejected for the last
    /// time. defer: not written because the database could not be reached - pending again
    /// after retry_after, no attempt counted.
    enum Action : std::uint8_t { ack, retry, dead, defer };
    Action action = ack;
    std::string key;
    std::uint64_t version = 0;
    /// retry, defer: not before this much time from now; dead: the same, should the
    /// dead-letter list be full (the entry then stays pending).
    Millis retry_after{0};
    /// retry, dead: what went wrong (kept with the entry).
    std::string error{};
    /// The token of the claim that took the entry (ClaimOptions::token).
    std::uint64_t token = 0;
};

enum class SettleResult : std::uint8_t {
    done,        ///< applied
    superseded,  ///< the version changed: a newer value is pending, nothing else changed
    gone,        ///< the key is no longer dirty (another flusher settled it)
    /// The claim is no longer the caller's: it expired, and was re-queued or taken by
    /// another flusher. Nothing changed; whoever holds the entry now writes it again.
    lost,
    /// dead, with max_dead entries dead already: kept pending instead (retried after
    /// retry_after, the attempt counted), so the dead-letter list stays bounded and nothing
    /// is dropped to keep it so.
    held,
};

/// A dead-lettered entry: a value the writer rejected max_attempts times.
struct DeadRecord {
    std::string key;
    std::uint64_t version = 0;
    std::string value;
    std::uint32_t attempts = 0;
    std::string error;
    TimePoint dead_at{};
    TimePoint dirty_since{};
};

enum class RedriveResult : std::uint8_t {
    requeued,    ///< pending again, as a new write of the dead value
    superseded,  ///< the key is dirty again: the newer write stands, the entry was removed
    not_found,   ///< no dead entry for this key
};

struct QueueStats {
    /// Dirty keys: waiting, in backoff or being flushed (dead entries are not counted here).
    std::size_t pending = 0;
    /// Of those, claimed by a flusher right now.
    std::size_t processing = 0;
    /// Dead-lettered entries.
    std::size_t dead = 0;
    /// Age of the oldest write the database has not received, over all keys; 0 when none.
    /// (A key rewritten during every flush is not "old": each flush brings it up to date.)
    Millis oldest_pending_age{0};
};

/// Whether the store could drop dirty data on its own.
struct EvictionRisk {
    /// unknown: the store answered but did not say; could_not_run: the check was refused
    /// or failed (on Redis, CONFIG GET needs the @admin commands).
    enum Level : std::uint8_t { none, evicting, unknown, could_not_run };
    Level level = none;
    std::string detail;
};

/// What an acknowledged write survives on this store, as far as it can tell.
struct Persistence {
    /// The queue outlives the process that wrote it (Redis: yes; memory: no).
    bool outlives_process = false;
    /// It also survives a restart of the store (Redis with appendonly yes).
    bool survives_restart = false;
    /// Replicas connected to the store now (Redis INFO replication).
    int replicas = 0;
    /// false: the store could not be asked; the flags above are then the worst case.
    bool known = true;
    std::string detail{};
};

template <class S>
concept WriteBehindStore = requires(S& store, std::string_view key, std::string_view bytes,
                                    std::size_t n, Millis ttl, std::span<const std::string> keys,
                                    std::span<const Settlement> settlements,
                                    const ClaimOptions& claim_options) {
    /// Writes the cached copy (no TTL) and the dirty copy with a new version. A clean key
    /// is refused (PutStatus::full) when max_pending (n; 0 = no bound) keys are dirty or
    /// dead.
    { store.put(key, bytes, n) } -> std::same_as<PutOutcome>;
    /// put, only while read_current(key) still gives `expected` (compare-and-put).
    { store.put_if(key, bytes, bytes, n) } -> std::same_as<PutOutcome>;
    /// The unflushed copy when there is one (dirty = true), else the cached copy, else
    /// nullopt.
    { store.read_current(key) } -> std::same_as<std::optional<CurrentValue>>;
    /// The unflushed copy only: the dirty copy, else the dead entry's value. What the
    /// database lacks, whether the cached copy is there or not.
    { store.unflushed_value(key) } -> std::same_as<std::optional<std::string>>;
    /// Re-queues expired and lost claims (dead-lettering those at max_attempts), then
    /// claims up to n ready entries for `ttl`. claim(n, ttl) has no bounds and no token.
    { store.claim(n, ttl, claim_options) } -> std::same_as<ClaimBatch>;
    { store.claim(n, ttl) } -> std::same_as<ClaimBatch>;
    /// Pushes the deadline of these keys to now + ttl (a flusher still working), for those
    /// still claimed under `token` whose deadline has not passed; returns how many.
    { store.extend(keys, ttl, claim_options.token) } -> std::same_as<std::size_t>;
    /// Applies each settlement if the entry is still claimed under the settlement's token
    /// and its version is unchanged; results aligned.
    /// `ttl` is given to the cached copy of an acknowledged value (0: none).
    { store.settle(settlements, ttl) } -> std::same_as<std::vector<SettleResult>>;
    /// Oldest first.
    { store.list_dead(n) } -> std::same_as<std::vector<DeadRecord>>;
    { store.redrive(key) } -> std::same_as<RedriveResult>;
    /// Removes a dead entry (and its cached copy, unless the key was written since).
    { store.discard_dead(key) } -> std::same_as<bool>;
    { store.stats() } -> std::same_as<QueueStats>;
    /// Up to n dirty keys, oldest first (what a drain that ran out of time leaves).
    { store.pending_keys(n) } -> std::same_as<std::vector<std::string>>;
    /// Asks whether the store could drop dirty data. Never called by WriteBehind on its
    /// own (on Redis it needs CONFIG GET, which a tenant's ACL may refuse).
    { store.eviction_risk() } -> std::same_as<EvictionRisk>;
    /// What acknowledged writes survive (on Redis: INFO persistence and replication, and
    /// CONFIG GET save where allowed). May do I/O; throws BackendError when unreachable.
    { store.persistence() } -> std::same_as<Persistence>;
    /// true when the queue outlives the process (what is left unflushed is not lost).
    { S::durable } -> std::convertible_to<bool>;
};

/// Where a store is named and configured; several WriteBehind objects (or processes) with
/// the same name on the same server share one queue.
struct WriteBehindStoreOptions {
    std::string name = "default";
    /// Bound on dead entries (0: none). At the bound an entry that would be dead-lettered
    /// stays pending instead (SettleResult::held), retried with its backoff.
    std::size_t max_dead = 100'000;
    /// The time base of the in-memory store (Redis uses the server's clock).
    const Clock* clock = &SystemClock::instance();
    /// A put is acknowledged only once this many replicas have it (Redis WAIT), or throws
    /// DurabilityError after replica_timeout. 0: acknowledged when the store has it.
    int replicas = 0;
    Millis replica_timeout{50};
    /// true: a put to a key still waiting replaces its value (only the latest is written).
    /// false: every version is kept and written, one at a time per key, in the order of
    /// the puts (what a writer that records history needs); a version that dies holds
    /// back the key's later ones until it is redriven or discarded, so the order holds,
    /// and max_pending then counts every queued version, not keys.
    bool coalesce = true;
};

/// The store WriteBehind<T, B> uses on backend B. Specialized for MemoryBackend here, for
/// RedisBackend and RedisClusterBackend in <larder/backend/redis/write_behind_store.hpp>,
/// for Authenticated<B> (B's store, sealed) and for ChaosBackend<Inner> (a
/// MemoryWriteBehindStore over the decorator, so that its faults reach the cached copies).
///
/// For a backend of your own, specialize it with `using type = S;` where S satisfies
/// WriteBehindStore and is constructible from (B&, WriteBehindStoreOptions):
///  - your own S, when the store can keep the queue itself (beside the cached copies,
///    each operation atomic, as the comment at the top of this file says): acknowledged
///    writes then outlive the process, and S::durable is true;
///  - or MemoryWriteBehindStore<B>, which needs nothing of B beyond the Backend concept:
///    the cached copies go to B, the queue stays in process memory. S::durable is false:
///    what is unflushed when the process ends (a crash, a kill, a drain that ran out of
///    time) is lost, and other processes on the same store neither see nor flush it.
///
///     template <>
///     struct larder::write_behind_store_for<MyBackend> {
///         using type = larder::MemoryWriteBehindStore<MyBackend>;
///     };
template <class B>
struct write_behind_store_for {
    static_assert(sizeof(B) == 0,
                  "no WriteBehindStore for this backend: for RedisBackend include "
                  "<larder/backend/redis/write_behind_store.hpp>; for your own backend "
                  "specialize larder::write_behind_store_for (with "
                  "MemoryWriteBehindStore<B> when a queue in process memory will do)");
};

template <class B>
using write_behind_store_t = typename write_behind_store_for<B>::type;

namespace detail {
/// The last version any MemoryWriteBehindStore of this process issued.
inline std::atomic<std::uint64_t> memory_store_last_version{0};
}  // namespace detail

/// The queue in process memory, beside any backend that holds the cached copies. One
/// mutex over the queue; the cached copy is written under it, so the cache and the queue
/// never disagree about the latest put. Not durable past the process: what is unflushed
/// when the process ends is lost (WriteBehind's drain reports it).
template <Backend B>
class MemoryWriteBehindStore {
public:
    explicit MemoryWriteBehindStore(B& backend, WriteBehindStoreOptions options = {})
        : backend_(backend),
          clock_(options.clock ? options.clock : &SystemClock::instance()),
          name_(std::move(options.name)),
          max_dead_(options.max_dead),
          coalesce_(options.coalesce) {
        if (options.replicas > 0) {
            throw ConfigError(
                "MemoryWriteBehindStore: a process's memory has no replicas to wait "
                "for (replicas must be 0)");
        }
    }

    MemoryWriteBehindStore(const MemoryWriteBehindStore&) = delete;
    MemoryWriteBehindStore& operator=(const MemoryWriteBehindStore&) = delete;

    PutOutcome put(std::string_view key, std::string_view bytes, std::size_t max_pending) {
        std::lock_guard lock(mutex_);
        return put_locked(key, bytes, max_pending);
    }

    PutOutcome put_if(std::string_view key, std::string_view bytes, std::string_view expected,
                      std::size_t max_pending) {
        std::lock_guard lock(mutex_);
        const auto current = read_current_locked(key);
        if (!current || current->bytes != expected) {
            return PutOutcome{.status = PutStatus::conflict};
        }
        return put_locked(key, bytes, max_pending);
    }

    std::optional<CurrentValue> read_current(std::string_view key) {
        std::lock_guard lock(mutex_);
        return read_current_locked(key);
    }

    std::optional<std::string> unflushed_value(std::string_view key) {
        std::lock_guard lock(mutex_);
        if (const std::string* v = unflushed_locked(key)) return *v;
        return std::nullopt;
    }

    ClaimBatch claim(std::size_t max, Millis claim_ttl, const ClaimOptions& options = {}) {
        std::lock_guard lock(mutex_);
        const std::int64_t now = now_ms();
        ClaimBatch out;
        // Lost claims first: the caller never saw what they took.
        if (!options.lost.empty()) {
            std::vector<std::string> lost;
            for (const auto& [at, key] : processing_) {
                const Entry& e = entries_.find(key)->second;
                if (e.token != 0 && std::find(options.lost.begin(), options.lost.end(), e.token) !=
                                        options.lost.end()) {
                    lost.push_back(key);
                }
            }
            for (const auto& key : lost) {
                auto it = entries_.find(key);
                processing_.erase({it->second.at, key});
                release(it, now, "its claim's reply was lost (a timeout)", options, out);
            }
        }
        while (!processing_.empty() && processing_.begin()->first <= now) {
            const std::string key = processing_.begin()->second;
            processing_.erase(processing_.begin());
            auto it = entries_.find(key);
            if (it == entries_.end()) continue;
            release(it, now, "claim expired: the flusher holding it died or stalled", options, out);
        }
        std::size_t bytes = 0;
        while (out.entries.size() < max && !pending_.empty() && pending_.begin()->first <= now) {
            const std::string key = pending_.begin()->second;
            Entry& e = entries_.find(key)->second;
            if (options.max_bytes > 0 && !out.entries.empty() &&
                bytes + e.value.size() > options.max_bytes) {
                break;
            }
            bytes += e.value.size();
            pending_.erase(pending_.begin());
            e.in_flight = true;
            e.token = options.token;
            e.at = now + claim_ttl.count();
            processing_.emplace(e.at, key);
            out.entries.push_back(ClaimedEntry{key, e.version, e.value, e.attempts,
                                               TimePoint{Millis{e.since}}, Millis{now - e.since},
                                               e.error});
        }
        return out;
    }

    std::size_t extend(std::span<const std::string> keys, Millis claim_ttl, std::uint64_t token) {
        std::lock_guard lock(mutex_);
        const std::int64_t now = now_ms();
        const std::int64_t deadline = now + claim_ttl.count();
        std::size_t extended = 0;
        for (const auto& key : keys) {
            auto it = entries_.find(key);
            if (it == entries_.end() || !held_by(it->second, token, now)) continue;
            processing_.erase({it->second.at, key});
            it->second.at = deadline;
            processing_.emplace(deadline, key);
            ++extended;
        }
        return extended;
    }

    std::vector<SettleResult> settle(std::span<const Settlement> settlements, Millis clean_ttl) {
        std::lock_guard lock(mutex_);
        const std::int64_t now = now_ms();
        std::vector<SettleResult> out;
        out.reserve(settlements.size());
        for (const auto& s : settlements) {
            auto it = entries_.find(s.key);
            if (it == entries_.end()) {
                out.push_back(SettleResult::gone);
                continue;
            }
            Entry& e = it->second;
            // Not this claim's any more: its deadline passed and the entry was re-queued
            // (or taken by another flusher, whose writer may be running right now).
            if (!e.in_flight || e.token != s.token) {
                out.push_back(SettleResult::lost);
                continue;
            }
            if (e.version != s.version) {
                // A newer put came while this version was being flushed: flush that next.
                unclaim(s.key, e);
                schedule(s.key, e, now);
                // Written (ack): what is still unflushed is what came after the claim.
                if (s.action == Settlement::ack && e.since_next != 0) {
                    since_.erase({e.since, s.key});
                    e.since = e.since_next;
                    since_.emplace(e.since, s.key);
                }
                e.since_next = 0;
                out.push_back(SettleResult::superseded);
                continue;
            }
            switch (s.action) {
                case Settlement::ack:
                    if (!e.later.empty()) {
                        unclaim(s.key, e);
                        promote(s.key, e);
                        schedule(s.key, e, now);
                        break;
                    }
                    if (clean_ttl.count() > 0) expire_clean_copy(s.key, e.value, clean_ttl);
                    remove(it);
                    break;
                case Settlement::retry:
                    unclaim(s.key, e);
                    e.since_next = 0;
                    ++e.attempts;
                    e.error = s.error;
                    schedule(s.key, e, now + std::max<std::int64_t>(0, s.retry_after.count()));
                    break;
                case Settlement::defer:
                    unclaim(s.key, e);
                    e.since_next = 0;
                    e.error = s.error;
                    schedule(s.key, e, now + std::max<std::int64_t>(0, s.retry_after.count()));
                    break;
                case Settlement::dead:
                    if (dead_full(s.key)) {
                        unclaim(s.key, e);
                        e.since_next = 0;
                        ++e.attempts;
                        e.error = s.error;
                        schedule(s.key, e, now + std::max<std::int64_t>(0, s.retry_after.count()));
                        out.push_back(SettleResult::held);
                        continue;
                    }
                    bury(it, now, s.error, e.attempts + 1);
                    break;
            }
            out.push_back(SettleResult::done);
        }
        return out;
    }

    std::vector<DeadRecord> list_dead(std::size_t limit) {
        std::lock_guard lock(mutex_);
        std::vector<DeadRecord> out;
        for (const auto& [at, key] : dead_order_) {
            if (out.size() >= limit) break;
            out.push_back(dead_.at(key));
        }
        return out;
    }

    RedriveResult redrive(std::string_view key) {
        std::lock_guard lock(mutex_);
        auto it = dead_.find(key);
        if (it == dead_.end()) return RedriveResult::not_found;
        DeadRecord d = std::move(it->second);
        erase_dead(it);
        auto held_back = entries_.find(key);
        if (held_back != entries_.end() && held_back->second.blocked) {
            // The dead version goes back in front of the versions it held back, as itself:
            // they are written after it, in order.
            Entry& e = held_back->second;
            since_.erase({e.since, held_back->first});
            e.later.push_front(Later{std::move(e.value), e.version, e.since});
            ++later_count_;
            e.value = std::move(d.value);
            e.version = d.version;
            e.since = d.dirty_since.time_since_epoch().count();
            since_.emplace(e.since, held_back->first);
            e.attempts = 0;
            e.error.clear();
            e.blocked = false;
            schedule(held_back->first, e, now_ms());
            return RedriveResult::requeued;
        }
        if (held_back != entries_.end()) return RedriveResult::superseded;
        try {
            put_locked(key, d.value, 0);
        } catch (...) {
            // Not queued (the cached copy was refused): the dead entry stays as it was.
            const std::int64_t dead_at = d.dead_at.time_since_epoch().count();
            dead_.emplace(std::string(key), std::move(d));
            dead_order_.emplace(dead_at, std::string(key));
            throw;
        }
        return RedriveResult::requeued;
    }

    bool discard_dead(std::string_view key) {
        std::lock_guard lock(mutex_);
        auto it = dead_.find(key);
        if (it == dead_.end()) return false;
        erase_dead(it);
        auto held_back = entries_.find(key);
        if (held_back != entries_.end() && held_back->second.blocked) {
            held_back->second.blocked = false;  // the versions it held back go on
            schedule(held_back->first, held_back->second, now_ms());
        }
        // Whatever is cached holds the dead value (a read may have cached it again with a new
        // envelope), unless the key is dirty again: drop it, so reads go to the database.
        if (held_back == entries_.end()) {
            try {
                (void)backend_.del(key);
            } catch (const BackendError&) {
                // The cached copy stays until it is replaced; the dead entry is gone.
            }
        }
        return true;
    }

    QueueStats stats() {
        std::lock_guard lock(mutex_);
        QueueStats s;
        s.pending = entries_.size();
        s.processing = processing_.size();
        s.dead = dead_.size();
        if (!since_.empty()) s.oldest_pending_age = Millis{now_ms() - since_.begin()->first};
        return s;
    }

    std::vector<std::string> pending_keys(std::size_t limit) {
        std::lock_guard lock(mutex_);
        std::vector<std::string> out;
        for (const auto& [since, key] : since_) {
            if (out.size() >= limit) break;
            out.push_back(key);
        }
        return out;
    }

    static constexpr bool durable = false;

    /// The queue keeps its own maps and never evicts them.
    EvictionRisk eviction_risk() const { return {}; }

    Persistence persistence() const {
        return {.detail = "process memory: unflushed writes are lost when the process ends"};
    }

    [[nodiscard]] const std::string& name() const noexcept { return name_; }

private:
    struct Hash {
        using is_transparent = void;
        std::size_t operator()(std::string_view s) const noexcept {
            return std::hash<std::string_view>{}(s);
        }
    };

    // A version queued behind the one written next (coalesce = false).
    struct Later {
        std::string value;
        std::uint64_t version = 0;
        std::int64_t since = 0;
    };

    struct Entry {
        std::string value;  // the version written next
        std::uint64_t version = 0;
        std::uint64_t token = 0;  // the claim holding it, while in flight
        std::uint32_t attempts = 0;
        std::string error;
        std::int64_t since = 0;       // time of the oldest write not yet flushed
        std::int64_t since_next = 0;  // first write during the flush in progress (0: none)
        bool in_flight = false;
        // Behind a dead version of the key (coalesce = false): not claimed until that one is
        // redriven or discarded.
        bool blocked = false;
        std::int64_t at = 0;      // ready time when pending, deadline when in flight
        std::deque<Later> later;  // newer versions, oldest first (coalesce = false)
    };

    // Claimed under `token`, and not expired: an expired claim is forfeit even before
    // another flusher takes the entry.
    static bool held_by(const Entry& e, std::uint64_t token, std::int64_t now) {
        return e.in_flight && e.token == token && e.at > now;
    }

    using Entries = std::unordered_map<std::string, Entry, Hash, std::equal_to<>>;
    using Dead = std::map<std::string, DeadRecord, std::less<>>;

    // The dirty copy, else the dead entry's; nullptr when neither.
    const std::string* unflushed_locked(std::string_view key) const {
        if (auto it = entries_.find(key); it != entries_.end()) {
            const Entry& e = it->second;
            return e.later.empty() ? &e.value : &e.later.back().value;
        }
        if (auto d = dead_.find(key); d != dead_.end()) {
            return &d->second.value;
        }
        return nullptr;
    }

    std::optional<CurrentValue> read_current_locked(std::string_view key) {
        if (const std::string* v = unflushed_locked(key)) return CurrentValue{*v, true};
        if (auto cached = backend_.get(key)) return CurrentValue{std::move(cached->bytes), false};
        return std::nullopt;
    }

    // One more dead entry would pass max_dead (an entry replacing its own earlier one
    // takes no room).
    bool dead_full(std::string_view key) const {
        return max_dead_ > 0 && dead_.size() >= max_dead_ && !dead_.contains(key);
    }

    PutOutcome put_locked(std::string_view key, std::string_view bytes, std::size_t max_pending) {
        auto it = entries_.find(key);
        auto dead = dead_.find(key);
        // Dead entries hold acknowledged data as much as dirty ones: they take room too.
        // Coalesced, a put to a dirty or dead key takes that key's place; kept in order,
        // every version takes one.
        const bool has_place = coalesce_ && (it != entries_.end() || dead != dead_.end());
        if (max_pending > 0 && !has_place &&
            entries_.size() + later_count_ + dead_.size() >= max_pending) {
            return PutOutcome{.status = PutStatus::full};
        }
        // The cached copy first: if the backend refuses it (an entry too large), the queue
        // is left as it was and the put is not acknowledged.
        backend_.set(key, bytes, no_expiry);
        const std::int64_t now = now_ms();
        PutOutcome out{.status = PutStatus::stored, .version = next_version(now)};
        if (it == entries_.end()) {
            it = entries_.emplace(std::string(key), Entry{}).first;
            Entry& e = it->second;
            e.value.assign(bytes);
            e.version = out.version;
            e.since = now;
            since_.emplace(now, it->first);
            if (!coalesce_ && dead != dead_.end()) {
                e.blocked = true;  // in order: after the dead version, whenever that is settled
            } else {
                schedule(it->first, e, now);
            }
            // Coalesced, the dead value is replaced as a waiting one is: the put was built on
            // it (reads and read-modify-writes see it) or overwrites it.
            if (coalesce_ && dead != dead_.end()) erase_dead(dead);
            return out;
        }
        Entry& e = it->second;
        if (!coalesce_) {
            e.later.push_back(Later{std::string(bytes), out.version, now});
            ++later_count_;
            return out;
        }
        out.coalesced = true;
        // The newest queued version is the one replaced: a queue kept in order by another
        // writer of this queue stays in order.
        if (!e.later.empty()) {
            e.later.back().value.assign(bytes);
            e.later.back().version = out.version;
            return out;
        }
        // Replaced a value that will never be written: one waiting, or one that arrived
        // during the flush in progress.
        out.coalesced = !e.in_flight || e.since_next != 0;
        if (e.in_flight && e.since_next == 0) e.since_next = now;
        // A key in backoff gets the new value's chance at once.
        if (!e.in_flight && !e.blocked && e.at > now) {
            pending_.erase({e.at, it->first});
            schedule(it->first, e, now);
        }
        e.value.assign(bytes);
        e.version = out.version;
        e.attempts = 0;
        e.error.clear();
        return out;
    }

    // A flushed value's cached copy becomes an ordinary cache entry. Best effort: without
    // it the copy just stays longer.
    void expire_clean_copy(const std::string& key, const std::string& value, Millis ttl) {
        try {
            backend_.compare_and_expire(key, value, ttl);
        } catch (const BackendError&) {
        }
    }

    // A claim that ended without news (expired, or its reply lost) is a failed attempt;
    // the last one allowed dead-letters the entry. `it` is no longer in processing_.
    void release(typename Entries::iterator it, std::int64_t now, const char* why,
                 const ClaimOptions& options, ClaimBatch& out) {
        const std::string key = it->first;
        Entry& e = it->second;
        e.in_flight = false;
        e.since_next = 0;
        e.token = 0;
        ++e.attempts;
        e.error = why;
        if (options.max_attempts > 0 && e.attempts >= options.max_attempts &&
            now - e.since >= options.budget.count()) {
            if (!dead_full(key)) {
                bury(it, now, "gave up after " + std::to_string(e.attempts) + " attempts: " + why,
                     e.attempts);
                out.dead_lettered.push_back(key);
                return;
            }
            out.held.push_back(key);
        }
        schedule(key, e, now);
        ++out.requeued;
    }

    void bury(typename Entries::iterator it, std::int64_t now, std::string error,
              std::uint32_t attempts) {
        const std::string key = it->first;
        Entry& e = it->second;
        if (auto old = dead_.find(key); old != dead_.end()) {
            dead_order_.erase({old->second.dead_at.time_since_epoch().count(), key});
        }
        dead_[key] = DeadRecord{key,
                                e.version,
                                std::move(e.value),
                                attempts,
                                std::move(error),
                                TimePoint{Millis{now}},
                                TimePoint{Millis{e.since}}};
        dead_order_.emplace(now, key);
        if (e.later.empty()) {
            remove(it);
            return;
        }
        // Kept in order: the next version waits for the dead one's redrive or discard.
        unclaim(key, e);
        promote(key, e);
        e.blocked = true;
    }

    // Above every version any store of this process issued (a store made anew on the same
    // cache, after the old one's were flushed to a fenced database, must not reissue
    // theirs), and never below the clock in microseconds, so a restarted process does not
    // either.
    static std::uint64_t next_version(std::int64_t now) {
        std::atomic<std::uint64_t>& last = detail::memory_store_last_version;
        const auto floor = static_cast<std::uint64_t>(std::max<std::int64_t>(now, 0)) * 1000;
        std::uint64_t seen = last.load(std::memory_order_relaxed);
        std::uint64_t next = 0;
        do {
            next = std::max(seen + 1, floor);
        } while (!last.compare_exchange_weak(seen, next, std::memory_order_relaxed));
        return next;
    }

    // The next queued version becomes the one written next (coalesce = false).
    void promote(const std::string& key, Entry& e) {
        since_.erase({e.since, key});
        Later next = std::move(e.later.front());
        e.later.pop_front();
        --later_count_;
        e.value = std::move(next.value);
        e.version = next.version;
        e.since = next.since;
        since_.emplace(e.since, key);
        e.since_next = 0;
        e.attempts = 0;
        e.error.clear();
    }

    void schedule(const std::string& key, Entry& e, std::int64_t ready_at) {
        e.in_flight = false;
        e.at = ready_at;
        pending_.emplace(ready_at, key);
    }

    void unclaim(const std::string& key, Entry& e) {
        if (!e.in_flight) {
            pending_.erase({e.at, key});
        } else {
            processing_.erase({e.at, key});
        }
        e.in_flight = false;
    }

    void remove(typename Entries::iterator it) {
        Entry& e = it->second;
        unclaim(it->first, e);
        since_.erase({e.since, it->first});
        later_count_ -= e.later.size();
        entries_.erase(it);
    }

    void erase_dead(typename Dead::iterator it) {
        dead_order_.erase({it->second.dead_at.time_since_epoch().count(), it->first});
        dead_.erase(it);
    }

    // The store's time: the clock's, except that it never goes back. A clock stepped back
    // (an NTP correction) would leave every ready time and deadline in the future and strand
    // the queue until the clock caught up; the store's time carries on from where it was.
    std::int64_t now_ms() {
        const std::int64_t wall = clock_->now().time_since_epoch().count();
        if (wall + offset_ < last_now_) offset_ = last_now_ - wall;
        last_now_ = wall + offset_;
        return last_now_;
    }

    B& backend_;
    const Clock* clock_;
    std::string name_;
    std::mutex mutex_;
    Entries entries_;
    std::set<std::pair<std::int64_t, std::string>> pending_;     // (ready at, key)
    std::set<std::pair<std::int64_t, std::string>> processing_;  // (deadline, key)
    std::set<std::pair<std::int64_t, std::string>> since_;       // (oldest unflushed write, key)
    Dead dead_;
    std::set<std::pair<std::int64_t, std::string>> dead_order_;  // (dead at, key)
    std::size_t max_dead_;
    bool coalesce_;
    std::size_t later_count_ = 0;  // versions queued behind others (coalesce = false)
    std::int64_t last_now_ = 0;    // see now_ms()
    std::int64_t offset_ = 0;
};

template <>
struct write_behind_store_for<MemoryBackend> {
    using type = MemoryWriteBehindStore<MemoryBackend>;
};

static_assert(WriteBehindStore<MemoryWriteBehindStore<MemoryBackend>>);

}  // namespace larder
