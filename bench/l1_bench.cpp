// l1_bench: hits in NearCache<T>, the typed in-process L1, against the map a user writes
// by hand (std::unordered_map<std::string, T> under a std::shared_mutex: shared_lock, find,
// copy out), on 1 and 2 threads, in the same run. T is a 200-byte struct.
//
//   uniform  10,000 keys read in a uniform random order (each thread its own sequence)
//   hot      16 keys, every thread reading the same ones: what a shared write costs
//
//   hits/s   aggregate hits per second (all threads)
//   s/hit    wall time of one hit on one thread ("21n" = 21 ns)
//   CPU ns   (summary) thread CPU time per hit, per thread: the cost of a hit even when
//            other processes take turns on the cores, which the wall-time figures include.
//            A shared write shows as CPU ns 2T above CPU ns 1T; 2T wall time above CPU
//            time means the two threads did not get two cores at once.
//
// Each case runs 5 times; the summary after the table takes the median run. Targets from the
// issue, reported and never asserted: a NearCache hit <= 50 ns on one thread, and two
// threads >= 1.8x the hits/s of one.
//
// coveooss/cachemere is not measured: it is not packaged by Debian and nothing is
// downloaded at build time.
#include <benchmark/benchmark.h>

#include <algorithm>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <random>
#include <shared_mutex>
#include <string>
#include <string_view>
#include <thread>
#include <unordered_map>
#include <vector>

#include "larder/near/near_cache.hpp"
#include "support/report.hpp"

namespace {

struct Row {
    std::int64_t id = 0;
    std::int64_t version = 0;
    std::int64_t created_at = 0;
    std::int64_t updated_at = 0;
    double balance = 0;
    double score = 0;
    std::uint32_t flags = 0;
    std::uint32_t region = 0;
    char name[48] = {};
    char email[64] = {};
    char city[32] = {};
};
static_assert(sizeof(Row) == 200);

Row make_row(std::size_t i) {
    Row r;
    r.id = static_cast<std::int64_t>(i);
    r.version = 1;
    r.created_at = 1'700'000'000'000 + static_cast<std::int64_t>(i);
    r.updated_at = r.created_at;
    r.balance = static_cast<double>(i) * 1.25;
    r.score = 0.5;
    r.flags = 3;
    r.region = static_cast<std::uint32_t>(i % 7);
    std::snprintf(r.name, sizeof r.name, "Ada Lovelace-Byron the %zuth", i);
    std::snprintf(r.email, sizeof r.email, "ada.lovelace.%zu@analytical-engine.example.org", i);
    std::snprintf(r.city, sizeof r.city, "London, Marylebone");
    return r;
}

// The peer: what a user writes by hand when reads must be concurrent.
template <class T>
class SharedMutexMap {
public:
    std::optional<T> get(const std::string& key) const {
        std::shared_lock lock(mutex_);
        const auto it = map_.find(key);
        if (it == map_.end()) return std::nullopt;
        return it->second;
    }

    void put(const std::string& key, const T& value) {
        std::unique_lock lock(mutex_);
        map_.insert_or_assign(key, value);
    }

private:
    mutable std::shared_mutex mutex_;
    std::unordered_map<std::string, T> map_;
};

constexpr std::size_t uniform_keys = 10'000;
constexpr std::size_t hot_keys = 16;
constexpr std::size_t order_size = 1 << 16;  // per-thread access sequence, reused cyclically

struct World {
    std::vector<std::string> keys;
    std::unique_ptr<larder::NearCache<Row>> near;
    std::unique_ptr<SharedMutexMap<Row>> peer;
    std::vector<std::vector<std::uint32_t>> uniform_orders;  // one per thread
    std::vector<std::vector<std::uint32_t>> hot_orders;
};

World* world = nullptr;

enum Workload : int { uniform = 0, hot = 1 };

template <class Hit>
void run_hits(benchmark::State& state, Hit&& hit) {
    const auto& orders = state.range(0) == hot ? world->hot_orders : world->uniform_orders;
    const auto& order = orders[static_cast<std::size_t>(state.thread_index()) % orders.size()];
    std::size_t i = 0;
    for (auto _ : state) {
        const std::string& key = world->keys[order[i]];
        i = (i + 1) & (order_size - 1);
        if (!hit(key)) {
            state.SkipWithError("miss");
            break;
        }
    }
    state.counters["hits/s"] =
        benchmark::Counter(static_cast<double>(state.iterations()), benchmark::Counter::kIsRate);
    state.counters["s/hit"] =
        benchmark::Counter(static_cast<double>(state.iterations()),
                           benchmark::Counter::kIsRate | benchmark::Counter::kAvgThreads |
                               benchmark::Counter::kInvert);
}

void BM_Larder_NearCache_Get(benchmark::State& state) {
    run_hits(state, [](const std::string& k) {
        auto v = world->near->get(k);
        benchmark::DoNotOptimize(v);
        return v.has_value();
    });
}

// No copy: the visitor reads one field of the cached object in place.
void BM_Larder_NearCache_Visit(benchmark::State& state) {
    run_hits(state, [](const std::string& k) {
        std::int64_t version = 0;
        const bool hit = world->near->visit(k, [&](const Row& r) { version = r.version; });
        benchmark::DoNotOptimize(version);
        return hit;
    });
}

void BM_Peer_SharedMutexMap_Get(benchmark::State& state) {
    run_hits(state, [](const std::string& k) {
        auto v = world->peer->get(k);
        benchmark::DoNotOptimize(v);
        return v.has_value();
    });
}

// Control: private arithmetic, no memory shared at all. Its 2T/1T ratio is what the machine
// gives two threads at the time of the run (2.0 on two idle cores); read the others
// against it. On a shared machine, another process's compile halves it.
void BM_Control_PrivateArithmetic(benchmark::State& state) {
    std::uint64_t h = static_cast<std::uint64_t>(state.thread_index()) + 1;
    for (auto _ : state) {
        for (int i = 0; i < 4; ++i) {
            h ^= h >> 31;
            h *= 0x9E3779B97F4A7C15ull;
        }
        benchmark::DoNotOptimize(h);
    }
    state.counters["hits/s"] =
        benchmark::Counter(static_cast<double>(state.iterations()), benchmark::Counter::kIsRate);
    state.counters["s/hit"] =
        benchmark::Counter(static_cast<double>(state.iterations()),
                           benchmark::Counter::kIsRate | benchmark::Counter::kAvgThreads |
                               benchmark::Counter::kInvert);
}

#define LARDER_L1_CASES(b) \
    BENCHMARK(b)           \
        ->ArgName("hot")   \
        ->Arg(uniform)     \
        ->Arg(hot)         \
        ->UseRealTime()    \
        ->MinTime(0.2)     \
        ->Repetitions(5)   \
        ->Threads(1)       \
        ->Threads(2)
LARDER_L1_CASES(BM_Control_PrivateArithmetic);
LARDER_L1_CASES(BM_Larder_NearCache_Get);
LARDER_L1_CASES(BM_Larder_NearCache_Visit);
LARDER_L1_CASES(BM_Peer_SharedMutexMap_Get);
#undef LARDER_L1_CASES

// The console table, plus the median of each case's counters, for the summary.
class MedianReporter : public benchmark::ConsoleReporter {
public:
    struct Median {
        double hits_per_s = 0;
        double s_per_hit = 0;
        double cpu_ns_per_hit = 0;  // thread CPU time: what a hit costs, preemption aside
    };

    void ReportRuns(const std::vector<Run>& runs) override {
        std::vector<Run> shown;  // the table shows the aggregates; the runs feed the IQR
        for (const Run& run : runs) {
            if (run.run_type == Run::RT_Aggregate) shown.push_back(run);
            if (run.error_occurred) continue;
            const std::string k = key(run.run_name.function_name, run.run_name.args, run.threads);
            if (run.run_type == Run::RT_Iteration) {
                if (auto it = run.counters.find("hits/s"); it != run.counters.end()) {
                    hits_per_s_runs_[k].push_back(it->second.value);
                }
                continue;
            }
            if (run.aggregate_name != "median") continue;
            Median m;
            m.cpu_ns_per_hit = run.GetAdjustedCPUTime();  // ns per iteration, per thread
            if (auto it = run.counters.find("hits/s"); it != run.counters.end()) {
                m.hits_per_s = it->second.value;
            }
            if (auto it = run.counters.find("s/hit"); it != run.counters.end()) {
                m.s_per_hit = it->second.value;
            }
            medians_[k] = m;
        }
        if (!shown.empty()) ConsoleReporter::ReportRuns(shown);
    }

    /// Median and quartiles of hits/s over the repetitions.
    [[nodiscard]] larder::bench::Spread hits_spread(const std::string& function, Workload w,
                                                    int threads) const {
        const auto it = hits_per_s_runs_.find(
            key(function, "hot:" + std::to_string(static_cast<int>(w)), threads));
        return it == hits_per_s_runs_.end() ? larder::bench::Spread{}
                                            : larder::bench::spread_of(it->second);
    }

    [[nodiscard]] std::optional<Median> median(const std::string& function, Workload w,
                                               int threads) const {
        const auto it =
            medians_.find(key(function, "hot:" + std::to_string(static_cast<int>(w)), threads));
        if (it == medians_.end()) return std::nullopt;
        return it->second;
    }

private:
    static std::string key(const std::string& function, const std::string& args,
                           std::int64_t threads) {
        return function + "/" + args + "#" + std::to_string(threads);
    }

    std::map<std::string, Median> medians_;
    std::map<std::string, std::vector<double>> hits_per_s_runs_;
};

void print_summary(const MedianReporter& r) {
    struct Line {
        const char* label;
        const char* function;
    };
    const Line lines[] = {
        {"NearCache<Row>::get (copy out)", "BM_Larder_NearCache_Get"},
        {"NearCache<Row>::visit (no copy)", "BM_Larder_NearCache_Visit"},
        {"unordered_map + shared_mutex get", "BM_Peer_SharedMutexMap_Get"},
        {"control: private arithmetic", "BM_Control_PrivateArithmetic"},
    };
    for (Workload w : {uniform, hot}) {
        std::printf("\n%s, median of 5 runs:\n", w == uniform ? "Uniform random over 10,000 keys"
                                                              : "16 hot keys read by every thread");
        std::printf("  %-34s %9s %9s %12s %12s %8s %10s %10s %14s\n", "", "ns/hit 1T", "ns/hit 2T",
                    "hits/s 1T", "hits/s 2T", "2T/1T", "CPU ns 1T", "CPU ns 2T", "IQR 1T, 2T");
        for (const Line& l : lines) {
            const auto one = r.median(l.function, w, 1);
            const auto two = r.median(l.function, w, 2);
            auto cell = [](const std::optional<MedianReporter::Median>& m, bool ns) {
                char buf[32] = "-";
                if (m && ns) std::snprintf(buf, sizeof buf, "%.1f", m->s_per_hit * 1e9);
                if (m && !ns) std::snprintf(buf, sizeof buf, "%.2fM", m->hits_per_s / 1e6);
                return std::string(buf);
            };
            char ratio[32] = "-";
            if (one && two && one->hits_per_s > 0) {
                std::snprintf(ratio, sizeof ratio, "%.2fx", two->hits_per_s / one->hits_per_s);
            }
            char cpu1[32] = "-";
            char cpu2[32] = "-";
            if (one) std::snprintf(cpu1, sizeof cpu1, "%.1f", one->cpu_ns_per_hit);
            if (two) std::snprintf(cpu2, sizeof cpu2, "%.1f", two->cpu_ns_per_hit);
            char iqr[32];
            std::snprintf(iqr, sizeof iqr, "%.1f%%, %.1f%%",
                          100 * r.hits_spread(l.function, w, 1).relative_iqr(),
                          100 * r.hits_spread(l.function, w, 2).relative_iqr());
            std::printf("  %-34s %9s %9s %12s %12s %8s %10s %10s %14s\n", l.label,
                        cell(one, true).c_str(), cell(two, true).c_str(), cell(one, false).c_str(),
                        cell(two, false).c_str(), ratio, cpu1, cpu2, iqr);
        }
    }
    const auto one = r.median("BM_Larder_NearCache_Get", uniform, 1);
    const auto two = r.median("BM_Larder_NearCache_Get", uniform, 2);
    const auto control_one = r.median("BM_Control_PrivateArithmetic", uniform, 1);
    const auto control_two = r.median("BM_Control_PrivateArithmetic", uniform, 2);
    if (one && two && one->hits_per_s > 0) {
        const double ns = one->s_per_hit * 1e9;
        const double ratio = two->hits_per_s / one->hits_per_s;
        std::printf(
            "\nTargets (NearCache<Row>::get, uniform): hit %.1f ns on 1 thread (<= 50: %s); "
            "2 threads %.2fx of 1 (>= 1.8x: %s)\n",
            ns, ns <= 50 ? "met" : "MISSED", ratio, ratio >= 1.8 ? "met" : "MISSED");
    }
    if (control_one && control_two && control_one->hits_per_s > 0) {
        // The control shares nothing: below ~1.9x the machine did not give this run two
        // cores, and no 2-thread figure above can show scaling.
        const double control = control_two->hits_per_s / control_one->hits_per_s;
        std::printf("control (private arithmetic) 2 threads %.2fx of 1: %s\n", control,
                    control >= 1.8 ? "two cores were available"
                                   : "the run did not get two cores; the 2-thread target cannot "
                                     "be judged from it");
    }
    std::fflush(stdout);
}

void fill_world(World& w) {
    for (std::size_t i = 0; i < uniform_keys; ++i) w.keys.push_back("user:" + std::to_string(i));
    w.near = std::make_unique<larder::NearCache<Row>>(larder::NearCacheOptions{
        .max_entries = 2 * uniform_keys,
        .ttl = std::chrono::hours(1),
    });
    w.peer = std::make_unique<SharedMutexMap<Row>>();
    for (std::size_t i = 0; i < uniform_keys; ++i) {
        const Row row = make_row(i);
        w.near->put(w.keys[i], row);
        w.peer->put(w.keys[i], row);
    }
    std::mt19937 rng(12345);
    std::uniform_int_distribution<std::uint32_t> pick(0, uniform_keys - 1);
    std::uniform_int_distribution<std::uint32_t> pick_hot(0, hot_keys - 1);
    for (int t = 0; t < 4; ++t) {
        std::vector<std::uint32_t> order(order_size);
        for (auto& o : order) o = pick(rng);
        w.uniform_orders.push_back(std::move(order));
        std::vector<std::uint32_t> hot_order(order_size);
        for (auto& o : hot_order) o = pick_hot(rng);
        w.hot_orders.push_back(std::move(hot_order));
    }
}

}  // namespace

int main(int argc, char** argv) {
    // Repetitions of all cases run in a random order unless told otherwise, so that a
    // burst of load from another process spreads over every case instead of one.
    larder::bench::initialize(argc, argv);
    if (benchmark::ReportUnrecognizedArguments(argc, argv)) return 1;

    World w;
    world = &w;
    fill_world(w);
    const auto misses_before = w.near->misses();
    std::printf(
        "NearCache<Row> (sizeof(Row) = %zu) vs std::unordered_map + std::shared_mutex; %s\n",
        sizeof(Row), larder::bench::machine_description().c_str());
    std::fflush(stdout);

    MedianReporter reporter;
    benchmark::RunSpecifiedBenchmarks(&reporter);
    print_summary(reporter);
    std::printf(
        "checks: NearCache misses during the runs %llu (0 = every read was a hit), "
        "evictions %llu\n",
        static_cast<unsigned long long>(w.near->misses() - misses_before),
        static_cast<unsigned long long>(w.near->evictions()));
    benchmark::Shutdown();
    return 0;
}
