// stampede_bench: one hot key, a short TTL, a slow loader, many readers in several
// "processes", and what each stampede guard does about it. Prints a table.
//
// A process is simulated by a CacheAside object of its own (its own in-process
// single-flight, lease keeper and background worker) used by its own reader threads; on
// Redis each process also has its own RedisBackend (its own connection pool), as separate
// processes would. MemoryBackend is one store shared by all the processes' caches.
//
// Every reader reads the key at a fixed pace (default every 500 us: 16 readers make
// 32,000 reads/s, below what either store serves on 2 cores, so latencies show the guard
// rather than a saturated machine). The loader sleeps a fixed time (default 20 ms) and
// records when it ran. After the run:
//  - a recompute is a burst of loader calls (calls less than 100 ms apart); the first one
//    of each burst is the expiry (or the early refresh) it answers;
//  - "calls/recompute" is what a stampede costs the database: 1 is ideal;
//  - "every (ms)" is the mean time between recomputes: TTL + loader time when a value is
//    recomputed after it expired, less when XFetch recomputes it before;
//  - latencies: every read, and the reads that started within 10 ms of a recompute
//    ("near recompute"); "blocked" counts reads that took longer than 5 ms.
//
// Rows: "get/load/set" is the seed's code over the same backend (no lease, no
// single-flight, no guard); "none" is CacheAside without a guard (leases and in-process
// single-flight only); "grace" is none plus a fail-safe grace period (stale-while-
// revalidate); then Lock (waiters woken by the holder's lease notice), Lock(poll) (the same
// without notices: waiters poll), XFetch (refresh in the reader), XFetch(bg) (refresh on
// the cache's background thread) and XFetch+Lock. The targets printed after the table:
// Lock's near-recompute p99 within the loader's time + 5 ms, and on Redis at most 2 GETs
// per waiting process during a load (INFO commandstats around each load) beyond the one
// GET every read sends as it begins.
//
// Every row runs --repeat times (default 3), all rows once before any twice; the table
// shows the first repeat, the targets the median and quartiles over all of them.
//
// Flags: --seconds=3.3 --ttl-ms=1000 --load-ms=20 --interval-us=500 --processes=4
//        --threads=4 --backends=memory,redis --repeat=3
#include <algorithm>
#include <array>
#include <atomic>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "larder/backend/redis.hpp"
#include "larder/larder.hpp"
#include "support/histogram.hpp"
#include "support/machine.hpp"
#include "support/redis.hpp"

namespace {

using Clock = std::chrono::steady_clock;
using larder::bench::format_ns;
using larder::bench::LatencyHistogram;

struct Settings {
    double seconds = 3.3;
    int ttl_ms = 1000;
    int load_ms = 20;
    int interval_us = 500;
    int processes = 4;
    int threads = 4;  // per process
    bool memory = true;
    bool redis = true;
    int repeat = 3;
};

constexpr auto slot_width = std::chrono::milliseconds(5);
constexpr std::int64_t slot_ns = std::chrono::nanoseconds(slot_width).count();
constexpr std::int64_t burst_gap_ns = 100'000'000;  // loader calls closer than this: one recompute
constexpr std::int64_t near_ns = 10'000'000;        // "near recompute": within 10 ms of one
constexpr std::uint64_t blocked_ns = 5'000'000;     // a read slower than this was blocked
constexpr std::uint64_t max_reads_per_thread = 20'000'000;

/// What one configuration's run shares between its loader and its readers.
struct Run {
    Clock::time_point start;
    std::chrono::milliseconds load_time{20};
    std::string value;
    std::atomic<std::uint64_t> generation{0};
    std::mutex mutex;
    std::vector<std::pair<std::int64_t, std::int64_t>> loads;  // [start, end) ns since start
    /// Redis: GETs served while the loader ran (INFO commandstats before and after each
    /// load), and the reads that began then. Each read sends one GET as it begins (and
    /// then, finding the lease, joins its process's wait); what the waiters send beyond
    /// that is the difference.
    std::function<long()> get_calls;
    std::atomic<long> reads_started{0};
    long gets_during_loads = 0;
    long reads_during_loads = 0;

    std::int64_t since_start(Clock::time_point t) const {
        return std::chrono::duration_cast<std::chrono::nanoseconds>(t - start).count();
    }

    /// The database query: slow, counted, timestamped.
    std::optional<std::string> load() {
        const long gets_before = get_calls ? get_calls() : 0;
        const long reads_before = reads_started.load();
        const auto t0 = Clock::now();
        std::this_thread::sleep_for(load_time);
        const auto t1 = Clock::now();
        const long gets = get_calls ? get_calls() - gets_before : 0;
        const long reads = reads_started.load() - reads_before;
        {
            std::lock_guard lock(mutex);
            loads.emplace_back(since_start(t0), since_start(t1));
            gets_during_loads += gets;
            reads_during_loads += reads;
        }
        std::string v = value;
        v += std::to_string(generation.fetch_add(1));
        return v;
    }
};

/// A reader thread's latencies: one histogram per 5 ms slot of the run, by start time.
struct ReaderLog {
    std::vector<LatencyHistogram> slots;
    std::uint64_t reads = 0;
    std::uint64_t failures = 0;
};

struct Row {
    std::string backend;
    std::string guard;
    std::size_t recomputes = 0;
    std::size_t loader_calls = 0;
    std::size_t max_calls_per_recompute = 0;
    double mean_period_ms = 0;  ///< between the starts of consecutive recomputes
    std::uint64_t reads = 0;
    std::uint64_t failures = 0;
    double seconds = 0;
    LatencyHistogram all;
    LatencyHistogram near;
    larder::StatsSnapshot stats{};
    bool has_stats = false;
    /// Redis: GETs during a load per waiting process, beyond each read's own first GET
    double gets_per_waiter = -1;
    double raw_gets_per_waiter = -1;  ///< the same, every GET counted
};

/// Runs `read(process, thread)` on processes x threads readers for the configured time.
Row drive(const Settings& s, Run& run, const std::function<bool(int)>& read) {
    const auto duration =
        std::chrono::duration_cast<Clock::duration>(std::chrono::duration<double>(s.seconds));
    const auto slot_count =
        static_cast<std::size_t>(std::chrono::nanoseconds(duration).count() / slot_ns) + 400;
    const int readers = s.processes * s.threads;
    std::vector<ReaderLog> logs(static_cast<std::size_t>(readers));
    for (auto& l : logs) l.slots.resize(slot_count);

    run.start = Clock::now();
    const auto deadline = run.start + duration;
    const auto interval = std::chrono::microseconds(s.interval_us);
    std::vector<std::thread> threads;
    for (int r = 0; r < readers; ++r) {
        threads.emplace_back([&, r] {
            ReaderLog& log = logs[static_cast<std::size_t>(r)];
            const int process = r / s.threads;
            // Readers start spread over one interval, not in lockstep.
            auto next = run.start + interval * r / readers;
            while (log.reads < max_reads_per_thread) {
                if (interval.count() > 0) {
                    const auto now = Clock::now();
                    if (next > now) std::this_thread::sleep_until(next);
                    next = std::max(next + interval, now);
                }
                const auto t0 = Clock::now();
                if (t0 >= deadline) break;
                const bool ok = read(process);
                const auto t1 = Clock::now();
                const auto slot = static_cast<std::size_t>(run.since_start(t0) / slot_ns);
                log.slots[std::min(slot, slot_count - 1)].record(static_cast<std::uint64_t>(
                    std::chrono::duration_cast<std::chrono::nanoseconds>(t1 - t0).count()));
                ++log.reads;
                if (!ok) ++log.failures;
            }
        });
    }
    for (auto& t : threads) t.join();

    Row row;
    row.seconds = std::chrono::duration<double>(Clock::now() - run.start).count();
    // Recomputes: bursts of loader calls.
    std::vector<std::pair<std::int64_t, std::int64_t>> loads;
    {
        std::lock_guard lock(run.mutex);
        loads = run.loads;
    }
    std::sort(loads.begin(), loads.end());
    struct Burst {
        std::int64_t start, end;
        std::size_t calls;
    };
    std::vector<Burst> bursts;
    for (const auto& [a, b] : loads) {
        if (!bursts.empty() && a <= bursts.back().end + burst_gap_ns) {
            bursts.back().end = std::max(bursts.back().end, b);
            ++bursts.back().calls;
        } else {
            bursts.push_back({a, b, 1});
        }
    }
    row.recomputes = bursts.size();
    row.loader_calls = loads.size();
    for (const auto& b : bursts) {
        row.max_calls_per_recompute = std::max(row.max_calls_per_recompute, b.calls);
    }
    if (bursts.size() >= 2) {
        row.mean_period_ms = static_cast<double>(bursts.back().start - bursts.front().start) /
                             static_cast<double>(bursts.size() - 1) / 1e6;
    }

    // Slots within near_ns of a burst count as "near recompute".
    std::vector<bool> near(slot_count, false);
    for (const auto& b : bursts) {
        const auto first = std::max<std::int64_t>(0, (b.start - near_ns) / slot_ns);
        const auto last = std::min<std::int64_t>(static_cast<std::int64_t>(slot_count) - 1,
                                                 (b.end + near_ns) / slot_ns);
        for (auto i = first; i <= last; ++i) near[static_cast<std::size_t>(i)] = true;
    }
    for (const auto& log : logs) {
        row.reads += log.reads;
        row.failures += log.failures;
        for (std::size_t i = 0; i < slot_count; ++i) {
            row.all.merge(log.slots[i]);
            if (near[i]) row.near.merge(log.slots[i]);
        }
    }
    return row;
}

std::string padded_value() {
    return std::string(200, 'v');
}

// ---- CacheAside rows ------------------------------------------------------------------

template <class Backend, class Guard>
Row cache_row(const Settings& s, std::vector<Backend*> backends, const std::string& key,
              larder::CacheAsideOptions options, std::function<Guard()> make_guard,
              std::function<long()> get_calls = {}) {
    Run run;
    run.load_time = std::chrono::milliseconds(s.load_ms);
    run.value = padded_value();
    run.get_calls = std::move(get_calls);
    using Cache = larder::CacheAside<std::string, Backend, Guard>;
    std::vector<std::unique_ptr<Cache>> caches;
    for (int p = 0; p < s.processes; ++p) {
        caches.push_back(std::make_unique<Cache>(
            *backends[static_cast<std::size_t>(p) % backends.size()], options, make_guard()));
    }
    Run* shared = &run;
    // Owns what it captures (a pointer to the run, which outlives the caches): may run in
    // the background.
    auto loader = larder::detached([shared] { return shared->load(); });

    // The value is there when the readers start; the first expiry is one TTL away.
    run.start = Clock::now();
    (void)caches[0]->get(key, loader);
    {
        std::lock_guard lock(run.mutex);
        run.loads.clear();
    }
    auto sum_stats = [&] {
        larder::StatsSnapshot t{};
        for (auto& c : caches) {
            const auto st = c->stats();
            t.hits += st.hits;
            t.misses += st.misses;
            t.loads += st.loads;
            t.stale_served += st.stale_served;
            t.backend_errors += st.backend_errors;
            t.lease_waits += st.lease_waits;
            t.coalesced += st.coalesced;
            t.early_refreshes += st.early_refreshes;
            t.fills += st.fills;
            t.fills_rejected += st.fills_rejected;
        }
        return t;
    };
    const larder::StatsSnapshot before = sum_stats();  // the warm-up's miss and fill
    Row row = drive(s, run, [&](int process) {
        shared->reads_started.fetch_add(1, std::memory_order_relaxed);
        return caches[static_cast<std::size_t>(process)]->get(key, loader).has_value();
    });
    // A background refresh still running is waited for; its loader call came after the
    // readers stopped and is not in the table.
    for (auto& c : caches) c->wait_for_background_refreshes();
    const larder::StatsSnapshot after = sum_stats();
    larder::StatsSnapshot total{};
    total.hits = after.hits - before.hits;
    total.misses = after.misses - before.misses;
    total.loads = after.loads - before.loads;
    total.stale_served = after.stale_served - before.stale_served;
    total.backend_errors = after.backend_errors - before.backend_errors;
    total.lease_waits = after.lease_waits - before.lease_waits;
    total.coalesced = after.coalesced - before.coalesced;
    total.early_refreshes = after.early_refreshes - before.early_refreshes;
    total.fills = after.fills - before.fills;
    total.fills_rejected = after.fills_rejected - before.fills_rejected;
    row.stats = total;
    row.has_stats = true;
    if (run.get_calls && row.loader_calls > 0 && s.processes > 1) {
        // Each load's other processes wait (their other threads share their wait).
        const double per =
            static_cast<double>(row.loader_calls) * static_cast<double>(s.processes - 1);
        row.raw_gets_per_waiter = static_cast<double>(run.gets_during_loads) / per;
        row.gets_per_waiter = std::max(
            0.0, static_cast<double>(run.gets_during_loads - run.reads_during_loads) / per);
    }
    return row;
}

// The seed's get_user: GET, on a miss load and SET. No lease, no single-flight, no guard.
template <class Backend>
Row seed_row(const Settings& s, std::vector<Backend*> backends, const std::string& key) {
    Run run;
    run.load_time = std::chrono::milliseconds(s.load_ms);
    run.value = padded_value();
    const auto ttl = std::chrono::milliseconds(s.ttl_ms);
    run.start = Clock::now();
    backends[0]->set(key, *run.load(), ttl);
    {
        std::lock_guard lock(run.mutex);
        run.loads.clear();
    }
    return drive(s, run, [&](int process) {
        Backend& b = *backends[static_cast<std::size_t>(process) % backends.size()];
        try {
            if (auto hit = b.get(key)) return true;
            auto v = run.load();
            if (v) b.set(key, *v, ttl);
            return v.has_value();
        } catch (const larder::BackendError&) {
            return false;
        }
    });
}

template <class Backend>
std::vector<Row> rows_for(const Settings& s, const std::string& backend_name,
                          std::vector<Backend*> backends, std::function<long()> get_calls = {}) {
    using namespace larder;
    const auto ttl = std::chrono::milliseconds(s.ttl_ms);
    const std::string prefix = "stampede:" + backend_name + ":";
    CacheAsideOptions base;
    base.ttl = ttl;
    CacheAsideOptions with_grace = base;
    with_grace.grace = ttl;

    std::vector<Row> rows;
    auto add = [&](Row row, const char* guard) {
        row.backend = backend_name;
        row.guard = guard;
        std::printf("  %-7s %-12s done: %zu recomputes, %zu loader calls, %llu reads\n",
                    backend_name.c_str(), guard, row.recomputes, row.loader_calls,
                    static_cast<unsigned long long>(row.reads));
        std::fflush(stdout);
        rows.push_back(std::move(row));
    };
    add(seed_row(s, backends, prefix + "seed"), "get/load/set");
    add(cache_row<Backend, NoGuard>(s, backends, prefix + "none", base, [] { return NoGuard{}; }),
        "none");
    add(cache_row<Backend, NoGuard>(s, backends, prefix + "grace", with_grace,
                                    [] { return NoGuard{}; }),
        "grace");
    add(cache_row<Backend, Lock>(
            s, backends, prefix + "lock", base, [] { return Lock{}; }, get_calls),
        "Lock");
    {
        // The same Lock without lease notices: a wrapper that does not pass them on, so the
        // waiters poll (2 ms doubling to 50 ms), as before notices.
        std::vector<std::unique_ptr<ChaosBackend<Backend>>> wrapped;
        std::vector<ChaosBackend<Backend>*> polling;
        for (Backend* b : backends) {
            wrapped.push_back(std::make_unique<ChaosBackend<Backend>>(*b));
            polling.push_back(wrapped.back().get());
        }
        add(cache_row<ChaosBackend<Backend>, Lock>(
                s, polling, prefix + "lock-polling", base, [] { return Lock{}; }, get_calls),
            "Lock(poll)");
    }
    add(cache_row<Backend, XFetch>(s, backends, prefix + "xfetch", base, [] { return XFetch{}; }),
        "XFetch");
    add(cache_row<Backend, XFetch>(s, backends, prefix + "xfetch-bg", base,
                                   [] { return XFetch(XFetchOptions{.background = true}); }),
        "XFetch(bg)");
    using Both = Guards<XFetch, Lock>;
    add(cache_row<Backend, Both>(s, backends, prefix + "xfetch-lock", base, [] { return Both{}; }),
        "XFetch+Lock");
    return rows;
}

/// Median and quartiles of `v` (empty: zeros).
std::array<double, 3> median_q1_q3(std::vector<double> v) {
    if (v.empty()) return {0, 0, 0};
    std::sort(v.begin(), v.end());
    auto at = [&](double q) {
        const double pos = q * static_cast<double>(v.size() - 1);
        const auto lo = static_cast<std::size_t>(pos);
        const std::size_t hi = std::min(lo + 1, v.size() - 1);
        return v[lo] + (v[hi] - v[lo]) * (pos - static_cast<double>(lo));
    };
    return {at(0.5), at(0.25), at(0.75)};
}

/// `all`: every repeat's rows, the repeats one after another.
void print_rows(const Settings& s, const std::vector<Row>& all) {
    const std::vector<Row> rows(all.begin(),
                                all.begin() + static_cast<std::ptrdiff_t>(all.size() / s.repeat));
    std::printf(
        "\n%d processes x %d reader threads, one read every %d us per thread; TTL %d ms, "
        "loader %d ms, run %.1f s\n",
        s.processes, s.threads, s.interval_us, s.ttl_ms, s.load_ms, s.seconds);
    std::printf(
        "\n| backend | guard | recomputes | every (ms) | loader calls | calls/recompute (max) "
        "| reads/s | p50 | p99 | p99.9 | max | near recompute: p99 | max | blocked reads/recompute "
        "|\n");
    std::printf("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n");
    for (const auto& r : rows) {
        const double per =
            r.recomputes ? static_cast<double>(r.loader_calls) / static_cast<double>(r.recomputes)
                         : 0.0;
        const double blocked = r.recomputes ? static_cast<double>(r.near.count_above(blocked_ns)) /
                                                  static_cast<double>(r.recomputes)
                                            : 0.0;
        std::printf(
            "| %s | %s | %zu | %.0f | %zu | %.2f (%zu) | %.0f | %s | %s | %s | %s | %s | %s | %.1f "
            "|\n",
            r.backend.c_str(), r.guard.c_str(), r.recomputes, r.mean_period_ms, r.loader_calls, per,
            r.max_calls_per_recompute, static_cast<double>(r.reads) / r.seconds,
            format_ns(static_cast<double>(r.all.percentile(0.50))).c_str(),
            format_ns(static_cast<double>(r.all.percentile(0.99))).c_str(),
            format_ns(static_cast<double>(r.all.percentile(0.999))).c_str(),
            format_ns(static_cast<double>(r.all.max())).c_str(),
            format_ns(static_cast<double>(r.near.percentile(0.99))).c_str(),
            format_ns(static_cast<double>(r.near.max())).c_str(), blocked);
    }
    std::printf("\nTargets (Lock, across an expiry), median [q1, q3] over %d repeats:\n\n",
                s.repeat);
    for (const auto& r : rows) {
        if (r.guard != "Lock" && r.guard != "Lock(poll)") continue;
        std::vector<double> p99s;
        std::vector<double> gets;
        std::vector<double> raw_gets;
        for (const auto& other : all) {
            if (other.backend != r.backend || other.guard != r.guard) continue;
            p99s.push_back(static_cast<double>(other.near.percentile(0.99)) / 1e6);
            if (other.gets_per_waiter >= 0) gets.push_back(other.gets_per_waiter);
            if (other.raw_gets_per_waiter >= 0) raw_gets.push_back(other.raw_gets_per_waiter);
        }
        const auto p99 = median_q1_q3(p99s);
        const double target_ms = s.load_ms + 5.0;
        std::printf(
            "  %-6s %-10s near-recompute p99 %.1f ms [%.1f, %.1f], target <= loader + 5 ms = "
            "%.0f ms: %s",
            r.backend.c_str(), r.guard.c_str(), p99[0], p99[1], p99[2], target_ms,
            p99[0] <= target_ms ? "met" : "missed");
        if (!gets.empty()) {
            const auto g = median_q1_q3(gets);
            const auto raw = median_q1_q3(raw_gets);
            std::printf(
                "; GETs per waiting process during a load beyond its readers' own %.1f [%.1f, "
                "%.1f] (all GETs %.1f), target <= 2: %s",
                g[0], g[1], g[2], raw[0], g[0] <= 2.0 ? "met" : "missed");
        }
        std::printf("\n");
    }
    std::printf("\nCacheAside counters, summed over the processes:\n\n");
    std::printf(
        "| backend | guard | misses | coalesced | lease waits | stale served | early "
        "refreshes | fills | fills rejected | backend errors | failed reads |\n");
    std::printf("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n");
    for (const auto& r : rows) {
        if (!r.has_stats) {
            std::printf("| %s | %s | - | - | - | - | - | - | - | - | %llu |\n", r.backend.c_str(),
                        r.guard.c_str(), static_cast<unsigned long long>(r.failures));
            continue;
        }
        const auto& st = r.stats;
        std::printf("| %s | %s | %llu | %llu | %llu | %llu | %llu | %llu | %llu | %llu | %llu |\n",
                    r.backend.c_str(), r.guard.c_str(), static_cast<unsigned long long>(st.misses),
                    static_cast<unsigned long long>(st.coalesced),
                    static_cast<unsigned long long>(st.lease_waits),
                    static_cast<unsigned long long>(st.stale_served),
                    static_cast<unsigned long long>(st.early_refreshes),
                    static_cast<unsigned long long>(st.fills),
                    static_cast<unsigned long long>(st.fills_rejected),
                    static_cast<unsigned long long>(st.backend_errors),
                    static_cast<unsigned long long>(r.failures));
    }
}

Settings parse(int argc, char** argv) {
    Settings s;
    for (int i = 1; i < argc; ++i) {
        const std::string arg = argv[i];
        auto value = [&](const char* name) -> const char* {
            const std::size_t n = std::strlen(name);
            return arg.compare(0, n, name) == 0 ? arg.c_str() + n : nullptr;
        };
        if (const char* v = value("--seconds=")) {
            s.seconds = std::atof(v);
        } else if (const char* v2 = value("--ttl-ms=")) {
            s.ttl_ms = std::atoi(v2);
        } else if (const char* v3 = value("--load-ms=")) {
            s.load_ms = std::atoi(v3);
        } else if (const char* v4 = value("--interval-us=")) {
            s.interval_us = std::atoi(v4);
        } else if (const char* v5 = value("--processes=")) {
            s.processes = std::atoi(v5);
        } else if (const char* v6 = value("--threads=")) {
            s.threads = std::atoi(v6);
        } else if (const char* v8 = value("--repeat=")) {
            s.repeat = std::atoi(v8);
        } else if (const char* v7 = value("--backends=")) {
            const std::string list = v7;
            s.memory = list.find("memory") != std::string::npos;
            s.redis = list.find("redis") != std::string::npos;
        } else {
            std::fprintf(stderr,
                         "unknown argument %s\nflags: --seconds=3.3 --ttl-ms=1000 --load-ms=20 "
                         "--interval-us=500 --processes=4 --threads=4 --backends=memory,redis "
                         "--repeat=3\n",
                         arg.c_str());
            std::exit(2);
        }
    }
    // Bounds that keep a typo from running for an hour.
    s.seconds = std::clamp(s.seconds, 0.5, 30.0);
    s.ttl_ms = std::clamp(s.ttl_ms, 50, 10'000);
    s.load_ms = std::clamp(s.load_ms, 0, 1'000);
    s.interval_us = std::clamp(s.interval_us, 0, 100'000);
    s.processes = std::clamp(s.processes, 1, 16);
    s.threads = std::clamp(s.threads, 1, 64);
    s.repeat = std::clamp(s.repeat, 1, 20);
    return s;
}

}  // namespace

int main(int argc, char** argv) {
    const Settings s = parse(argc, argv);
    std::printf("stampede_bench on %s\n", larder::bench::machine_description().c_str());
    std::vector<Row> rows;

    std::vector<Row> memory_rows;
    for (int r = 0; s.memory && r < s.repeat; ++r) {
        larder::MemoryBackend store;
        auto more = rows_for<larder::MemoryBackend>(s, "memory", {&store});
        memory_rows.insert(memory_rows.end(), more.begin(), more.end());
    }
    std::vector<Row> redis_rows;
    if (s.redis) {
        auto server = larder::bench::start_redis_server();
        std::printf("redis-server %s (private, started by this program)\n",
                    larder::bench::redis_version(*server).c_str());
        std::vector<std::unique_ptr<larder::RedisBackend>> owned;
        std::vector<larder::RedisBackend*> backends;
        for (int p = 0; p < s.processes; ++p) {
            owned.push_back(std::make_unique<larder::RedisBackend>(
                larder::bench::options_for(*server, static_cast<std::size_t>(s.threads))));
            backends.push_back(owned.back().get());
        }
        larder::bench::RawConnection stats_connection(*server);
        std::mutex stats_mutex;  // loads of several processes may overlap
        auto get_calls = [&] {
            std::lock_guard lock(stats_mutex);
            auto* reply =
                static_cast<redisReply*>(redisCommand(stats_connection.get(), "INFO commandstats"));
            long calls = 0;
            if (reply != nullptr && reply->type == REDIS_REPLY_STRING) {
                const std::string text(reply->str, reply->len);
                const std::string field = "cmdstat_get:calls=";
                const auto at = text.find(field);
                if (at != std::string::npos) calls = std::atol(text.c_str() + at + field.size());
            }
            if (reply != nullptr) freeReplyObject(reply);
            return calls;
        };
        for (int r = 0; r < s.repeat; ++r) {
            auto more = rows_for<larder::RedisBackend>(s, "redis", backends, get_calls);
            redis_rows.insert(redis_rows.end(), more.begin(), more.end());
        }
        owned.clear();
    }
    // The repeats one after another, each with its memory rows, then its Redis rows.
    const std::size_t memory_per = memory_rows.size() / static_cast<std::size_t>(s.repeat);
    const std::size_t redis_per = redis_rows.size() / static_cast<std::size_t>(s.repeat);
    for (int r = 0; r < s.repeat; ++r) {
        const auto at = static_cast<std::size_t>(r);
        rows.insert(rows.end(), memory_rows.begin() + static_cast<std::ptrdiff_t>(at * memory_per),
                    memory_rows.begin() + static_cast<std::ptrdiff_t>((at + 1) * memory_per));
        rows.insert(rows.end(), redis_rows.begin() + static_cast<std::ptrdiff_t>(at * redis_per),
                    redis_rows.begin() + static_cast<std::ptrdiff_t>((at + 1) * redis_per));
    }
    print_rows(s, rows);
    return 0;
}
