// larder-lab: the pieces every part of the lab shares - the options, a configuration
// (policy x guard x invalidator x L1), the fake database, the latency histogram and the
// interface every configuration is driven through.
#pragma once

#include <pthread.h>
#include <algorithm>
#include <array>
#include <atomic>
#include <bit>
#include <cerrno>
#include <charconv>
#include <chrono>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <functional>
#include <memory>
#include <mutex>
#include <optional>
#include <random>
#include <span>
#include <stdexcept>
#include <string>
#include <string_view>
#include <thread>
#include <utility>
#include <vector>

#include <larder/core/clock.hpp>

namespace lab {

using Clock = std::chrono::steady_clock;
using Millis = std::chrono::milliseconds;
using Micros = std::chrono::microseconds;

/// A problem the user can fix: a bad flag, a configuration that does not exist, a
/// redis-server that does not start. main() prints it and exits with status 2.
class UsageError : public std::runtime_error {
public:
    using std::runtime_error::runtime_error;
};

/// An argument as a message may repeat it: quoted when every character is in `alphabet`
/// (the characters a valid value of that flag is made of), else only described. Arguments
/// can be URLs with a password, or a password that slid into the wrong place (a flag with
/// its value forgotten, a URL without --backend), and messages end up in CI logs.
inline std::string shown(std::string_view arg, std::string_view alphabet) {
    if (!arg.empty() && arg.size() <= 48 &&
        arg.find_first_not_of(alphabet) == std::string_view::npos) {
        return "'" + std::string(arg) + "'";
    }
    return "a value not repeated here, as it may hold a password";
}

/// The alphabets of shown(): numbers, and words (configurations, backend names, flags).
inline constexpr std::string_view number_chars = "0123456789.eE+-";
inline constexpr std::string_view word_chars = "abcdefghijklmnopqrstuvwxyz-+,";

enum class BackendKind { memory, redis };

struct Options {
    // The workload.
    std::size_t keys = 10'000;
    double skew = 0.99;
    double write_ratio = 0.05;
    std::size_t value_size = 256;
    std::size_t threads = 8;
    std::size_t instances = 4;
    double duration_s = 5;
    /// Run first and left out of every figure but the correctness counts (stale, wrong,
    /// lost): the cache fills and the store's connections open meanwhile.
    double warmup_s = 1;
    std::size_t repeat = 1;     ///< runs of each configuration, interleaved A B A B
    std::uint64_t max_ops = 0;  ///< 0: only the duration bounds the run (warm-up included)
    double loader_latency_ms = 2;
    double db_write_latency_ms = -1;  ///< < 0: the same as loader_latency_ms
    double db_write_capacity = 0;     ///< rows per second; 0: unlimited
    std::uint64_t seed = 42;

    // The cache.
    Millis ttl{30'000};
    Millis ttl_jitter{0};
    Millis l1_ttl{0};  ///< 0: min(ttl, 1 s)
    std::size_t l1_entries = 10'000;
    double xfetch_beta = 1.0;
    Millis lock_wait{2'000};
    Millis flush_interval{100};
    Millis drain_timeout{10'000};
    Millis claim_ttl{30'000};  ///< how long a flusher's claim lives unless extended
    /// How long a read lease (and write-through's write lease) lives unless its holder
    /// extends it: what a stopped holder costs the others.
    Millis lease_ttl{10'000};
    /// The wall clock every larder::Clock option of the composition reads (larder-check
    /// steps it); null: the system's.
    const larder::Clock* clock = nullptr;

    // What to run, where, and how to report it.
    std::vector<std::string> configs{"cache-aside"};
    BackendKind backend = BackendKind::memory;
    std::string redis_url;  ///< empty with BackendKind::redis: start a private server
    bool json = false;
    std::string svg_path;
    bool progress = true;

    [[nodiscard]] Millis effective_l1_ttl() const {
        return l1_ttl.count() > 0 ? l1_ttl : std::min(ttl, Millis{1000});
    }
    [[nodiscard]] double write_latency_ms() const {
        return db_write_latency_ms < 0 ? loader_latency_ms : db_write_latency_ms;
    }
};

// ---- configurations -------------------------------------------------------------------

enum class Invalidator {
    event,     ///< a write deletes the key (CacheAside::invalidate_after)
    tags,      ///< entries carry an entity tag; a write invalidates the tag
    versions,  ///< version keys: a write bumps the entity's version
    ttl,       ///< a write does nothing to the cache: entries live out their TTL
};

struct PolicyEntry;

/// A parsed configuration spec such as "cache-aside+xfetch+lock+l1".
struct Spec {
    const PolicyEntry* policy = nullptr;
    bool lock = false;
    bool xfetch = false;
    bool l1 = false;
    Invalidator invalidator = Invalidator::event;

    /// 0 none, 1 Lock, 2 XFetch, 3 Guards<XFetch, Lock>: the index into GuardTypes.
    [[nodiscard]] std::size_t guard_index() const { return (lock ? 1u : 0u) + (xfetch ? 2u : 0u); }
    /// The canonical spelling: policy, guards, invalidator, l1.
    [[nodiscard]] std::string name() const;
};

/// Parses a spec; throws UsageError naming what is wrong.
Spec parse_spec(std::string_view text);
/// What --list prints.
std::string describe_configurations();

// ---- the fake database ----------------------------------------------------------------

/// The cache key of row `k`.
inline std::string key_name(std::size_t k) {
    return "k" + std::to_string(k);
}

/// Faults larder-check injects into the fake database; in memory every process of a check
/// maps (steady_clock is CLOCK_MONOTONIC: one clock for every process of the machine).
struct DbFaults {
    std::atomic<std::int64_t> down_until_ns{0};          ///< reads and writes fail until then
    std::atomic<std::int64_t> extra_read_latency_us{0};  ///< a slow loader

    void check_up(const char* what) const {
        if (Clock::now().time_since_epoch().count() <
            down_until_ns.load(std::memory_order_relaxed)) {
            throw std::runtime_error(std::string("fake database: down, ") + what + " refused");
        }
    }
};

/// The fencing column of a row that write-behind writes (UPDATE ... WHERE fence < ?: the
/// queue's version of the entry, DirtyEntry::version), with the lock that makes the
/// fenced write of row and fence one step. Robust: a process killed while holding it
/// does not stop the others.
struct DbFence {
    pthread_mutex_t lock;
    std::uint64_t version;
};

/// A robust mutex (one whose holder died is handed to the next locker with EOWNERDEAD),
/// shared between processes if `shared`.
inline void init_robust_mutex(pthread_mutex_t& m, bool shared) {
    pthread_mutexattr_t attr;
    pthread_mutexattr_init(&attr);
    pthread_mutexattr_setrobust(&attr, PTHREAD_MUTEX_ROBUST);
    if (shared) pthread_mutexattr_setpshared(&attr, PTHREAD_PROCESS_SHARED);
    pthread_mutex_init(&m, &attr);
    pthread_mutexattr_destroy(&attr);
}

/// Makes fences[0..n) ready (fence 0), shared between processes if `shared`.
inline void init_db_fences(DbFence* fences, std::size_t n, bool shared) {
    for (std::size_t i = 0; i < n; ++i) {
        init_robust_mutex(fences[i].lock, shared);
        fences[i].version = 0;
    }
}

/// Reads and writes "rows" that are just versions. A row's value is "k<id>|<version>|"
/// padded to value_size, so whoever reads a value can tell which version it holds. A
/// deleted row (write-behind's erase) keeps no value: reading it finds nothing.
class FakeDb {
public:
    /// Set in a row's word when the row is deleted.
    static constexpr std::uint64_t deleted_bit = std::uint64_t{1} << 63;

    struct Settings {
        std::size_t keys = 0;
        std::size_t value_size = 0;
        Micros read_latency{0};
        Micros write_latency{0};
        double write_capacity = 0;  ///< rows per second, 0: unlimited
        /// Rows kept elsewhere (memory shared by processes, set to 1 by its owner); null:
        /// this object owns them.
        std::atomic<std::uint64_t>* shared_rows = nullptr;
        /// The rows' fences, kept with shared_rows (made ready by their owner); null: this
        /// object owns them.
        DbFence* shared_fences = nullptr;
        const DbFaults* faults = nullptr;
    };

    /// `slices`: how many 100 ms slices from `start` the per-slice counters cover; later
    /// operations are counted in the last one.
    FakeDb(Settings s, Clock::time_point start, std::size_t slices)
        : settings_(s),
          owned_rows_(s.shared_rows ? nullptr
                                    : std::make_unique<std::atomic<std::uint64_t>[]>(s.keys)),
          rows_(s.shared_rows ? s.shared_rows : owned_rows_.get()),
          owned_fences_(s.shared_fences ? 0 : s.keys),
          fences_(s.shared_fences ? s.shared_fences : owned_fences_.data()),
          start_(start),
          slices_(std::max<std::size_t>(slices, 1)),
          slice_reads_(std::make_unique<std::atomic<std::uint64_t>[]>(slices_)),
          slice_writes_(std::make_unique<std::atomic<std::uint64_t>[]>(slices_)) {
        if (owned_rows_) {
            for (std::size_t i = 0; i < s.keys; ++i) rows_[i].store(1, std::memory_order_relaxed);
        }
        if (!owned_fences_.empty()) init_db_fences(fences_, s.keys, false);
        for (std::size_t i = 0; i < slices_; ++i) {
            slice_reads_[i].store(0, std::memory_order_relaxed);
            slice_writes_[i].store(0, std::memory_order_relaxed);
        }
        tokens_ = burst();
        refilled_ = Clock::now();
    }
    FakeDb(const FakeDb&) = delete;
    FakeDb& operator=(const FakeDb&) = delete;
    ~FakeDb() {
        for (auto& f : owned_fences_) pthread_mutex_destroy(&f.lock);
    }

    /// SELECT: the row as it is now, returned after the read latency (the snapshot is
    /// taken first, as a database takes a statement's snapshot when it starts, so a write
    /// that commits during the latency, slow-loader's included, is not in the result).
    /// Nothing for a deleted row.
    [[nodiscard]] std::optional<std::string> read(std::size_t k) {
        Micros extra{0};
        if (settings_.faults) {
            settings_.faults->check_up("read");
            extra = Micros{settings_.faults->extra_read_latency_us.load(std::memory_order_relaxed)};
        }
        reads_.fetch_add(1, std::memory_order_relaxed);
        slice_reads_[slice()].fetch_add(1, std::memory_order_relaxed);
        const std::uint64_t v = rows_[k].load(std::memory_order_acquire);
        pause(settings_.read_latency + extra);
        if (v & deleted_bit) return std::nullopt;
        return make_value(k, v, settings_.value_size);
    }

    /// UPDATE ... SET version = version + 1: the database picks the new version, at commit
    /// (after the write latency). Returns it.
    std::uint64_t commit(std::size_t k) {
        if (settings_.faults) settings_.faults->check_up("write");
        take_tokens(1);
        pause(settings_.write_latency);
        writes_.fetch_add(1, std::memory_order_relaxed);
        slice_writes_[slice()].fetch_add(1, std::memory_order_relaxed);
        return rows_[k].fetch_add(1, std::memory_order_acq_rel) + 1;
    }

    /// UPDATE ... WHERE version < ?: writes the given versions of rows in one statement
    /// (one write latency, one capacity token per row); a row already newer is kept.
    /// Fenced (UPDATE ... WHERE version < ?): a row keeps a newer version it holds.
    /// Returns how many rows took their new version.
    std::size_t write_rows(std::span<const std::pair<std::size_t, std::uint64_t>> rows) {
        if (rows.empty()) return 0;
        if (settings_.faults) settings_.faults->check_up("write");
        take_tokens(rows.size());
        pause(settings_.write_latency);
        std::size_t applied = 0;
        for (const auto& [k, v] : rows) {
            auto& row = rows_[k];
            std::uint64_t cur = row.load(std::memory_order_relaxed);
            while (cur < v && !row.compare_exchange_weak(cur, v, std::memory_order_acq_rel)) {
            }
            if (cur < v) ++applied;
        }
        writes_.fetch_add(rows.size(), std::memory_order_relaxed);
        slice_writes_[slice()].fetch_add(rows.size(), std::memory_order_relaxed);
        return applied;
    }

    /// One row of a fenced write: the version it takes (or its deletion), if `fence` is
    /// above the row's fence.
    struct FencedRow {
        std::size_t key = 0;
        std::uint64_t fence = 0;
        std::uint64_t version = 0;
        bool deleted = false;
    };

    /// Write-behind's batch: UPDATE ... WHERE fence < ? (DELETE ... WHERE fence < ? for a
    /// deleted row, which keeps its fence as a tombstone so an older write cannot bring it
    /// back), fenced on the queue's versions as docs/write-behind.md tells applications.
    /// One statement: one write latency, one capacity token per row. Returns how many rows
    /// changed.
    std::size_t write_fenced(std::span<const FencedRow> rows) {
        if (rows.empty()) return 0;
        if (settings_.faults) settings_.faults->check_up("write");
        take_tokens(rows.size());
        pause(settings_.write_latency);
        std::size_t applied = 0;
        for (const FencedRow& r : rows) {
            DbFence& fence = fences_[r.key];
            if (pthread_mutex_lock(&fence.lock) == EOWNERDEAD) {
                pthread_mutex_consistent(&fence.lock);  // a fenced write is one store each
            }
            if (r.fence > fence.version) {
                fence.version = r.fence;
                rows_[r.key].store(r.deleted ? deleted_bit : r.version, std::memory_order_release);
                ++applied;
            }
            pthread_mutex_unlock(&fence.lock);
        }
        writes_.fetch_add(rows.size(), std::memory_order_relaxed);
        slice_writes_[slice()].fetch_add(rows.size(), std::memory_order_relaxed);
        return applied;
    }

    /// The version of row k (0 when deleted).
    [[nodiscard]] std::uint64_t version(std::size_t k) const {
        const std::uint64_t v = rows_[k].load(std::memory_order_acquire);
        return v & deleted_bit ? 0 : v;
    }
    [[nodiscard]] bool deleted(std::size_t k) const {
        return (rows_[k].load(std::memory_order_acquire) & deleted_bit) != 0;
    }
    [[nodiscard]] std::uint64_t reads() const { return reads_.load(std::memory_order_relaxed); }
    [[nodiscard]] std::uint64_t writes() const { return writes_.load(std::memory_order_relaxed); }
    /// From `t` on, a write that would finish later fails (the lab's bound on a final
    /// flush): what is still queued then counts as lost.
    void refuse_writes_after(Clock::time_point t) {
        write_deadline_ns_.store(t.time_since_epoch().count(), std::memory_order_relaxed);
    }

    /// Where slice 0 starts; call before the workload does.
    void set_start(Clock::time_point t) { start_ = t; }

    /// Reads and rows written in 100 ms slice i.
    [[nodiscard]] std::uint64_t slice_reads(std::size_t i) const {
        return i < slices_ ? slice_reads_[i].load(std::memory_order_relaxed) : 0;
    }
    [[nodiscard]] std::uint64_t slice_writes(std::size_t i) const {
        return i < slices_ ? slice_writes_[i].load(std::memory_order_relaxed) : 0;
    }
    [[nodiscard]] std::size_t keys() const { return settings_.keys; }
    [[nodiscard]] std::size_t value_size() const { return settings_.value_size; }

    static std::string make_value(std::size_t k, std::uint64_t v, std::size_t size) {
        std::string out = key_name(k);
        out += '|';
        out += std::to_string(v);
        out += '|';
        if (out.size() < size) out.append(size - out.size(), 'x');
        return out;
    }

    /// The row of a cache key (key_name's inverse).
    static std::optional<std::size_t> parse_key(std::string_view s) {
        std::size_t k = 0;
        if (s.size() < 2 || s[0] != 'k') return std::nullopt;
        const auto [end, ec] = std::from_chars(s.data() + 1, s.data() + s.size(), k);
        if (ec != std::errc{} || end != s.data() + s.size()) return std::nullopt;
        return k;
    }

    struct Parsed {
        std::size_t key = 0;
        std::uint64_t version = 0;
    };
    static std::optional<Parsed> parse_value(std::string_view s) {
        if (s.size() < 4 || s[0] != 'k') return std::nullopt;
        Parsed p;
        const char* end = s.data() + s.size();
        auto [a, ea] = std::from_chars(s.data() + 1, end, p.key);
        if (ea != std::errc{} || a == end || *a != '|') return std::nullopt;
        auto [b, eb] = std::from_chars(a + 1, end, p.version);
        if (eb != std::errc{} || b == end || *b != '|') return std::nullopt;
        return p;
    }

private:
    static void pause(Micros d) {
        if (d.count() > 0) std::this_thread::sleep_for(d);
    }

    [[nodiscard]] std::size_t slice() const {
        const auto i = static_cast<std::size_t>((Clock::now() - start_) / Millis{100});
        return std::min(i, slices_ - 1);
    }

    [[nodiscard]] double burst() const {
        return std::max(1.0, settings_.write_capacity / 10.0);  // a tenth of a second
    }

    // Token bucket with reservations: a writer that finds too few tokens takes them
    // anyway (the balance goes negative) and sleeps until they would have been there,
    // so writers are served in arrival order and nobody spins.
    void take_tokens(std::size_t n) {
        const auto deadline =
            Clock::time_point(Clock::duration(write_deadline_ns_.load(std::memory_order_relaxed)));
        const auto latency = std::chrono::duration_cast<Clock::duration>(settings_.write_latency);
        if (Clock::now() + latency > deadline) {
            throw std::runtime_error("fake database: write refused, the final flush is over time");
        }
        if (settings_.write_capacity <= 0) return;
        double wait_s = 0;
        {
            std::lock_guard lock(bucket_mutex_);
            const auto now = Clock::now();
            tokens_ = std::min(
                burst(), tokens_ + settings_.write_capacity *
                                       std::chrono::duration<double>(now - refilled_).count());
            refilled_ = now;
            tokens_ -= static_cast<double>(n);
            if (tokens_ < 0) wait_s = -tokens_ / settings_.write_capacity;
        }
        if (wait_s > 0) {
            const auto until = Clock::now() + std::chrono::duration_cast<Clock::duration>(
                                                  std::chrono::duration<double>(wait_s));
            if (until + latency > deadline) {
                // Give the reservation back: this write never happens.
                std::lock_guard lock(bucket_mutex_);
                tokens_ += static_cast<double>(n);
                throw std::runtime_error(
                    "fake database: write refused, the final flush is over time");
            }
            std::this_thread::sleep_until(until);
        }
    }

    Settings settings_;
    std::unique_ptr<std::atomic<std::uint64_t>[]> owned_rows_;
    std::atomic<std::uint64_t>* rows_;
    std::vector<DbFence> owned_fences_;
    DbFence* fences_;
    Clock::time_point start_;
    std::size_t slices_;
    std::unique_ptr<std::atomic<std::uint64_t>[]> slice_reads_;
    std::unique_ptr<std::atomic<std::uint64_t>[]> slice_writes_;
    std::atomic<std::uint64_t> reads_{0};
    std::atomic<std::uint64_t> writes_{0};
    std::atomic<Clock::rep> write_deadline_ns_{Clock::time_point::max().time_since_epoch().count()};
    std::mutex bucket_mutex_;
    double tokens_ = 0;
    Clock::time_point refilled_;
};

// ---- what the runner drives -----------------------------------------------------------

/// Counters read from the policy (and its L1) after a run.
struct CacheCounts {
    std::uint64_t hits = 0;  ///< L1 hits included
    std::uint64_t misses = 0;
    std::uint64_t l1_hits = 0;
    std::uint64_t backend_errors = 0;
    std::uint64_t dead_lettered = 0;  ///< write-behind entries given up on
};

/// One configuration, built over a fresh store, with `instances` application
/// processes simulated inside this one (each with its own policy object, so its own
/// single-flight and its own L1).
class Subject {
public:
    virtual ~Subject() = default;
    /// The value of row k as the application sees it.
    virtual std::optional<std::string> read(std::size_t instance, std::size_t k) = 0;
    /// Writes row k through the policy's write path; returns the version of the write
    /// once it is acknowledged (the call returned), 0 when nothing was acknowledged.
    virtual std::uint64_t write(std::size_t instance, std::size_t k) = 0;
    /// The values of rows ks, aligned with them: the policy's batch read (get_many).
    virtual std::vector<std::optional<std::string>> read_many(std::size_t instance,
                                                              std::span<const std::size_t> ks) {
        std::vector<std::optional<std::string>> out;
        for (const std::size_t k : ks) out.push_back(read(instance, k));
        return out;
    }
    /// A read-modify-write of row k (write-behind's modify): the version written once it is
    /// acknowledged, and the version the change was applied to.
    struct Modified {
        std::uint64_t version = 0;
        std::uint64_t base = 0;
        bool absent = false;  ///< the change was applied to no row (it had been erased)
    };
    /// Whether the policy has a read-modify-write.
    [[nodiscard]] virtual bool modifies() const { return false; }
    virtual Modified modify(std::size_t /*instance*/, std::size_t /*k*/) {
        throw std::logic_error("this policy has no read-modify-write");
    }
    /// Whether the policy deletes rows (write-behind's erase).
    [[nodiscard]] virtual bool erases() const { return false; }
    /// Deletes row k through the policy; returns the delete's version once it is
    /// acknowledged. `sending(version)` is called before the delete is sent, so a caller
    /// knows which version may have landed even if the erase throws, or its process dies.
    virtual std::uint64_t erase(std::size_t /*instance*/, std::size_t /*k*/,
                                const std::function<void(std::uint64_t)>& /*sending*/) {
        throw std::logic_error("this policy has no erase");
    }
    /// Drops row k's cached copies without changing the database (the policy's
    /// invalidate, or its tag's): a later read loads the row again.
    virtual void invalidate(std::size_t instance, std::size_t k) = 0;
    /// After the last operation: flush what is pending (write-behind). Returns notes.
    virtual std::vector<std::string> finish() { return {}; }
    [[nodiscard]] virtual CacheCounts counts() = 0;
};

/// A row's newest acknowledged version (see VersionIssuer in subjects.hpp), the lock its
/// writers take turns on, and the last version drawn by writers that race instead. In
/// memory shared by the processes of a check, or an issuer's own.
struct VersionRow {
    pthread_mutex_t turn;
    std::uint64_t issued;
    std::uint64_t drawn;
    /// The newest version a writer taking turns was given, acknowledged or not: no later
    /// write takes it again (a write that failed may still have landed).
    std::uint64_t sent;
    /// The newest version an erase was sent with, acknowledged or not.
    std::uint64_t erase_sent;
    /// The newest acknowledged erase's version: whether the newest acknowledged write of
    /// the row is a delete.
    std::uint64_t erase_acknowledged;
};

/// Makes rows[0..n) ready: version 1 (the database's first), a robust lock (a writer killed
/// while holding it does not stop the others), shared between processes if `shared`.
inline void init_version_rows(VersionRow* rows, std::size_t n, bool shared) {
    for (std::size_t i = 0; i < n; ++i) {
        init_robust_mutex(rows[i].turn, shared);
        rows[i].issued = 1;
        rows[i].drawn = 1;
        rows[i].sent = 1;
        rows[i].erase_sent = 0;
        rows[i].erase_acknowledged = 0;
    }
}

struct RunEnv {
    const Options& options;
    FakeDb& db;
    BackendKind backend;
    std::string redis_url;   ///< with BackendKind::redis
    std::string key_prefix;  ///< unique per run, for a shared Redis
    /// Messages from the library (write-behind warnings); thread-safe, bounded.
    std::function<void(std::string_view)> log;
    /// Version rows shared with other processes (options.keys of them); null: the
    /// subject's own.
    VersionRow* shared_versions = nullptr;
};

struct PolicyEntry {
    std::string_view name;
    std::string_view about;
    /// Takes +tags, +versions, +ttl (its writes invalidate rather than store).
    bool takes_invalidator;
    /// Takes any component at all (naive, the hand-written baseline, takes none).
    bool takes_components;
    std::unique_ptr<Subject> (*make)(const RunEnv&, const Spec&);
};

std::unique_ptr<Subject> make_cache_aside(const RunEnv&, const Spec&);
std::unique_ptr<Subject> make_write_through(const RunEnv&, const Spec&);
std::unique_ptr<Subject> make_write_behind(const RunEnv&, const Spec&);
std::unique_ptr<Subject> make_naive(const RunEnv&, const Spec&);

// ---- latency histogram ----------------------------------------------------------------

/// Log-linear buckets of nanoseconds: exact below 32 ns, then 32 buckets per power of
/// two (3% wide), up to 2^40 ns (18 minutes).
struct Buckets {
    static constexpr std::size_t sub_bits = 5;
    static constexpr std::size_t sub = std::size_t{1} << sub_bits;
    static constexpr std::size_t max_exp = 40;
    static constexpr std::size_t count = sub + (max_exp - sub_bits + 1) * sub;

    static std::size_t index(std::uint64_t ns) {
        ns = std::min<std::uint64_t>(ns, (std::uint64_t{1} << (max_exp + 1)) - 1);
        if (ns < sub) return static_cast<std::size_t>(ns);
        const std::size_t e = static_cast<std::size_t>(std::bit_width(ns)) - 1;
        const std::size_t s = static_cast<std::size_t>(ns >> (e - sub_bits)) & (sub - 1);
        return sub + (e - sub_bits) * sub + s;
    }
    /// The middle of bucket i, in nanoseconds.
    static double middle(std::size_t i) {
        if (i < sub) return static_cast<double>(i);
        const std::size_t e = (i - sub) / sub + sub_bits;
        const std::size_t s = (i - sub) % sub;
        const double width = static_cast<double>(std::uint64_t{1} << (e - sub_bits));
        return static_cast<double>(sub + s) * width + width / 2;
    }
};

class Histogram {
public:
    Histogram() : counts_(Buckets::count, 0) {}
    void add(std::uint64_t ns) {
        ++counts_[Buckets::index(ns)];
        ++total_;
    }
    void add_bucket(std::size_t i, std::uint64_t n) {
        counts_[i] += n;
        total_ += n;
    }
    void merge(const Histogram& o) {
        for (std::size_t i = 0; i < counts_.size(); ++i) counts_[i] += o.counts_[i];
        total_ += o.total_;
    }
    [[nodiscard]] std::uint64_t total() const { return total_; }
    /// The p-quantile (0 < p <= 1) in microseconds; 0 when empty.
    [[nodiscard]] double quantile_us(double p) const {
        if (total_ == 0) return 0;
        const auto rank = static_cast<std::uint64_t>(std::ceil(p * static_cast<double>(total_)));
        std::uint64_t seen = 0;
        for (std::size_t i = 0; i < counts_.size(); ++i) {
            seen += counts_[i];
            if (seen >= std::max<std::uint64_t>(rank, 1)) return Buckets::middle(i) / 1000.0;
        }
        return Buckets::middle(counts_.size() - 1) / 1000.0;
    }

private:
    std::vector<std::uint64_t> counts_;
    std::uint64_t total_ = 0;
};

// ---- results --------------------------------------------------------------------------

/// One 100 ms slice of a run.
struct Sample {
    double t_s = 0;  ///< end of the slice, seconds since the start
    double ops_per_s = 0;
    double read_p99_us = 0;
    double db_reads_per_s = 0;
    double db_writes_per_s = 0;
};

struct RunResult {
    std::string config;
    double warmup_seconds = 0;  ///< before `seconds`, not measured
    double seconds = 0;         ///< measured: from the warm-up's end to the last operation
    double drain_seconds = 0;
    std::uint64_t ops = 0;
    std::uint64_t reads = 0;
    std::uint64_t writes = 0;
    Histogram read_latency;
    Histogram write_latency;
    CacheCounts counts;
    std::uint64_t db_reads = 0;
    std::uint64_t db_writes = 0;
    std::uint64_t stale_reads = 0;
    std::uint64_t lost_writes = 0;
    std::uint64_t lost_rows = 0;     ///< rows with at least one lost write
    std::uint64_t wrong_values = 0;  ///< missing, unparsable or another key's value
    std::uint64_t read_errors = 0;
    std::uint64_t write_errors = 0;
    std::vector<Sample> timeline;  ///< the whole run, warm-up included
    std::vector<std::string> notes;
    bool interrupted = false;

    [[nodiscard]] double throughput() const {
        return seconds > 0 ? static_cast<double>(ops) / seconds : 0;
    }
    [[nodiscard]] double hit_ratio() const {
        const auto n = counts.hits + counts.misses;
        return n ? static_cast<double>(counts.hits) / static_cast<double>(n) : 0;
    }
};

// ---- running ----------------------------------------------------------------------

/// Zipf-distributed row ids in [0, n): row 0 is the hottest. skew 0 is uniform.
class Zipf {
public:
    Zipf(std::size_t n, double skew) : cdf_(n) {
        double sum = 0;
        for (std::size_t i = 0; i < n; ++i) {
            sum += 1.0 / std::pow(static_cast<double>(i + 1), skew);
            cdf_[i] = sum;
        }
        for (auto& c : cdf_) c /= sum;
    }
    template <class Rng>
    std::size_t operator()(Rng& rng) const {
        const double u = std::uniform_real_distribution<double>(0.0, 1.0)(rng);
        const auto it = std::lower_bound(cdf_.begin(), cdf_.end(), u);
        return std::min<std::size_t>(static_cast<std::size_t>(it - cdf_.begin()), cdf_.size() - 1);
    }

private:
    std::vector<double> cdf_;
};

/// Set by SIGINT / SIGTERM: the current run stops early and no further run starts.
extern std::atomic<bool> interrupted;

/// Progress on stderr: a bar redrawn in place on a terminal, a line a second otherwise.
class Progress {
public:
    explicit Progress(bool enabled);
    void update(std::string_view config, std::size_t index, std::size_t count, double fraction,
                double ops_per_s, double elapsed_s);
    /// A transient state ("final flush..."), shown on a terminal only.
    void message(std::string_view config, std::string_view text);
    void done(const RunResult& r, std::size_t index, std::size_t count);

private:
    void clear_line();

    bool enabled_;
    bool tty_;
    bool bar_shown_ = false;
    double last_line_s_ = -1;
};

/// Where a run's cache lives.
struct Target {
    BackendKind kind = BackendKind::memory;
    std::string redis_url;
    std::string key_prefix;
};

/// Runs one configuration on the workload and measures it.
RunResult run_config(const Options& o, const Spec& spec, const Zipf& zipf, const Target& target,
                     Progress& progress, std::size_t index, std::size_t count);

/// "12.3k", "1.20M".
std::string human(double v);

// ---- reporting (report.cpp) -------------------------------------------------------------

/// A figure over the repeats of a configuration: median and quartiles.
struct Spread {
    double median = 0;
    double q1 = 0;
    double q3 = 0;
};
Spread spread_of(std::vector<double> values);

/// Every run of one configuration (--repeat), in the order they ran.
struct ConfigResult {
    std::vector<RunResult> runs;

    /// The run whose throughput is the median: the one the table's single-run columns and
    /// the SVG show.
    [[nodiscard]] const RunResult& typical() const;
    [[nodiscard]] Spread throughput() const;
    [[nodiscard]] Spread read_p99_us() const;
};

/// What the numbers were measured with, printed with them.
struct RunInfo {
    std::string library;   ///< "0.1.0"
    std::string commit;    ///< configured at; "unknown" outside git
    std::string compiler;  ///< "g++ 12.2.0"
    std::string cpu;       ///< "AMD EPYC 7B13"
    unsigned cores = 0;
    std::string redis;  ///< redis-server's version; empty with the memory backend
};
RunInfo run_info(const std::string& redis_version);

std::string describe_workload(const Options& o, const std::string& backend);
std::string describe_run_info(const RunInfo& info);
/// The results as aligned text, or as a Markdown table.
std::string render_table(const std::vector<ConfigResult>& results, bool markdown);
std::string render_json(const Options& o, const std::string& backend, const RunInfo& info,
                        const std::vector<ConfigResult>& results);
std::string render_svg(const Options& o, const std::string& backend, const RunInfo& info,
                       const std::vector<ConfigResult>& results);

}  // namespace lab
