// What the Google Benchmark programs print besides the benchmark table:
//  - initialize(): Google Benchmark set up as every program here runs it unless its
//    command line says otherwise: repetitions in a random order, a warm-up before each
//    that is not measured, and what the numbers were measured with in the JSON output;
//  - RecordingReporter: the console table (the aggregates of repeated benchmarks), plus
//    every repetition's "ops/s" kept by benchmark name, so main() can print larder/peer
//    ratios with their spread once all runs are done;
//  - run_paired(): an interleaved A/B pass. Two code paths are timed in alternating short
//    windows (A B, B A, A B ...) on the same threads, and the ratio quoted is the median
//    of the per-round ratios, so drift in the machine (other processes, the scheduler
//    moving client and server between cores) lands on both sides alike. On the 2-core
//    machine these numbers come from, back-to-back runs of one benchmark differ by far
//    more than the 3% a target allows; see docs/performance.md.
#pragma once

#include <benchmark/benchmark.h>

#include <algorithm>
#include <atomic>
#include <barrier>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <exception>
#include <fstream>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <string_view>
#include <thread>
#include <utility>
#include <vector>

#include <time.h>

#include "machine.hpp"

namespace larder::bench {

/// Google Benchmark's defaults for these programs, each used unless the command line
/// names that flag: 3 repetitions of every benchmark in a random order (drift in a shared
/// machine lands on every benchmark alike, and the spread shows), and 0.1 s of warm-up
/// before each repetition. The JSON output (--benchmark_format=json, --benchmark_out)
/// carries the library's version and commit, the compiler and the machine in its
/// context; a program with a Redis adds its version (add_context). Leaves in argc/argv
/// what Google Benchmark did not take.
inline void initialize(int& argc, char**& argv) {
    static std::vector<std::string> storage;
    static std::vector<char*> args;
    storage.clear();
    const std::pair<const char*, const char*> defaults[] = {
        {"--benchmark_repetitions", "3"},
        {"--benchmark_enable_random_interleaving", "true"},
        {"--benchmark_min_warmup_time", "0.1"},
    };
    storage.emplace_back(argv[0]);
    for (const auto& [flag, value] : defaults) {
        bool given = false;
        for (int i = 1; i < argc; ++i) {
            given = given || std::string_view(argv[i]).starts_with(flag);
        }
        if (!given) storage.push_back(std::string(flag) + "=" + value);
    }
    for (int i = 1; i < argc; ++i) storage.emplace_back(argv[i]);
    args.clear();
    for (auto& a : storage) args.push_back(a.data());
    args.push_back(nullptr);
    argc = static_cast<int>(storage.size());
    argv = args.data();
    benchmark::Initialize(&argc, argv);
    benchmark::AddCustomContext("larder_version", LARDER_VERSION_STRING);
    benchmark::AddCustomContext("larder_commit", build_commit());
    benchmark::AddCustomContext("compiler", compiler());
    benchmark::AddCustomContext("cpu", cpu_model());
}

/// Adds a line to the JSON output's context (the Redis version, say).
inline void add_context(const std::string& key, const std::string& value) {
    benchmark::AddCustomContext(key, value);
}

/// Counter name every Google Benchmark program here reports its throughput under.
inline constexpr const char* ops_counter = "ops/s";

/// Throughput as a Google Benchmark counter: operations per second of wall time, summed
/// over threads (register the benchmark with UseRealTime()).
inline void report_ops(benchmark::State& state) {
    const auto n = static_cast<double>(state.iterations());
    state.counters[ops_counter] = benchmark::Counter(n, benchmark::Counter::kIsRate);
}

/// A figure over repetitions: median and quartiles.
struct Spread {
    double median = 0;
    double q1 = 0;
    double q3 = 0;

    /// The interquartile range as a fraction of the median: how much the runs moved.
    [[nodiscard]] double relative_iqr() const { return median > 0 ? (q3 - q1) / median : 0; }
};

inline Spread spread_of(std::vector<double> v) {
    if (v.empty()) return {};
    std::sort(v.begin(), v.end());
    auto at = [&](double q) {
        const double pos = q * static_cast<double>(v.size() - 1);
        const auto lo = static_cast<std::size_t>(pos);
        const std::size_t hi = std::min(lo + 1, v.size() - 1);
        return v[lo] + (v[hi] - v[lo]) * (pos - static_cast<double>(lo));
    };
    return {at(0.5), at(0.25), at(0.75)};
}

class RecordingReporter : public benchmark::ConsoleReporter {
public:
    void ReportRuns(const std::vector<Run>& runs) override {
        std::vector<Run> shown;
        for (const Run& run : runs) {
            // Repeated benchmarks show their aggregates only; one run shows itself.
            if (run.run_type == Run::RT_Aggregate || run.repetitions <= 1) shown.push_back(run);
            if (run.error_occurred || run.run_type != Run::RT_Iteration) continue;
            const auto it = run.counters.find(ops_counter);
            if (it == run.counters.end()) continue;
            values_[run.run_name.function_name + threads_suffix(run.threads)].push_back(
                it->second.value);
        }
        if (!shown.empty()) ConsoleReporter::ReportRuns(shown);
    }

    /// Median ops/s of the repetitions of `function_name` (as registered) with `threads`
    /// threads; nullopt when it did not run (filtered out, or failed).
    [[nodiscard]] std::optional<double> ops(const std::string& function_name,
                                            int threads = 1) const {
        const auto s = spread(function_name, threads);
        if (!s) return std::nullopt;
        return s->median;
    }

    /// Median and quartiles of the same.
    [[nodiscard]] std::optional<Spread> spread(const std::string& function_name,
                                               int threads = 1) const {
        const auto it = values_.find(function_name + threads_suffix(threads));
        if (it == values_.end() || it->second.empty()) return std::nullopt;
        return spread_of(it->second);
    }

private:
    static std::string threads_suffix(std::int64_t threads) {
        return "#" + std::to_string(threads);
    }

    std::map<std::string, std::vector<double>> values_;
};

/// "1.23M", "98.4k", "812".
inline std::string si(double v) {
    char buf[32];
    if (v >= 1e6) {
        std::snprintf(buf, sizeof buf, "%.2fM", v / 1e6);
    } else if (v >= 1e3) {
        std::snprintf(buf, sizeof buf, "%.1fk", v / 1e3);
    } else {
        std::snprintf(buf, sizeof buf, "%.0f", v);
    }
    return buf;
}

/// One line of a larder/peer summary: "name  peer  larder  ratio  spread  target".
struct RatioLine {
    std::string what;
    std::optional<Spread> larder;
    std::optional<Spread> peer;
    double target = 0;  ///< 0: no target
};

/// Medians over the repetitions, their ratio, and each side's interquartile range as a
/// share of its median (the ratio means little when these are wider than its distance
/// from the target).
inline void print_ratio_table(const std::string& title, const std::vector<RatioLine>& lines) {
    std::printf("\n%s\n", title.c_str());
    std::printf("  %-46s %11s %11s %7s %-15s %s\n", "comparison (larder / peer)", "peer ops/s",
                "larder", "ratio", "IQR peer,larder", "target");
    for (const auto& l : lines) {
        if (!l.larder || !l.peer || l.peer->median <= 0) {
            std::printf("  %-46s %11s %11s %7s\n", l.what.c_str(), "-", "-", "(not run)");
            continue;
        }
        const double ratio = l.larder->median / l.peer->median;
        char spread[32];
        std::snprintf(spread, sizeof spread, "%.1f%%, %.1f%%", l.peer->relative_iqr() * 100,
                      l.larder->relative_iqr() * 100);
        char target[32] = "";
        if (l.target > 0) {
            std::snprintf(target, sizeof target, ">=%.2fx %s", l.target,
                          ratio >= l.target ? "met" : "MISSED");
        }
        std::printf("  %-46s %11s %11s %6.3fx %-15s %s\n", l.what.c_str(),
                    si(l.peer->median).c_str(), si(l.larder->median).c_str(), ratio, spread,
                    target);
    }
    std::fflush(stdout);
}

/// CPU time consumed so far by the calling thread, in ns.
inline std::int64_t thread_cpu_ns() noexcept {
    timespec ts{};
    clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
    return static_cast<std::int64_t>(ts.tv_sec) * 1'000'000'000 + ts.tv_nsec;
}

/// CPU time consumed so far by the main thread of process `pid` (redis-server runs every
/// command on its main thread), in ns, from /proc/<pid>/schedstat; -1 when unavailable.
inline std::int64_t process_main_thread_cpu_ns(int pid) {
    if (pid <= 0) return -1;
    std::ifstream in("/proc/" + std::to_string(pid) + "/schedstat");
    long long ns = -1;
    if (!(in >> ns)) return -1;
    return ns;
}

/// Result of an interleaved A/B pass. Side A is the peer, side B larder.
struct PairedResult {
    double a_ops = 0;  ///< aggregate ops/s over all of A's windows
    double b_ops = 0;
    /// B/A throughput per round (two adjacent windows), summarised: the median is the
    /// ratio to quote, the quartiles say how much the machine moved meanwhile.
    double ratio_median = 0;
    double ratio_q1 = 0;
    double ratio_q3 = 0;
    double a_client_cpu_ns = 0;  ///< CPU time of the calling threads per operation
    double b_client_cpu_ns = 0;
    double a_server_cpu_ns = -1;  ///< server main-thread CPU time per operation; -1: unknown
    double b_server_cpu_ns = -1;
    std::string error;  ///< non-empty when an operation threw
};

/// Runs `a(thread)` and `b(thread)` on `threads` threads in `rounds` rounds of two
/// adjacent windows of `window` each, in the order A B, B A, A B, ..., after one window of
/// each that is not measured (the warm-up); every thread switches together. A window is bounded by
/// time and by `max_ops_per_window` operations per thread. With `server_pid`, the server's CPU time
/// is sampled at window edges.
inline PairedResult run_paired(int threads, int rounds, std::chrono::milliseconds window,
                               const std::function<void(int)>& a, const std::function<void(int)>& b,
                               int server_pid = -1, std::uint64_t max_ops_per_window = 50'000'000) {
    using Clock = std::chrono::steady_clock;
    struct Window {
        std::atomic<std::uint64_t> ops{0};
        std::atomic<std::int64_t> wall_ns{0};  // summed over threads
        std::atomic<std::int64_t> cpu_ns{0};   // summed over threads
        std::int64_t server_ns = -1;           // written by thread 0 only
    };
    const auto cells = static_cast<std::size_t>(rounds) * 2;
    std::unique_ptr<Window[]> win(new Window[cells]);  // [round * 2 + side]
    std::barrier sync(threads);
    std::mutex error_mutex;
    std::string error;

    auto body = [&](int t) {
        // A warm-up window of each side, not measured: connections open, caches fill.
        for (const auto* fn : {&a, &b}) {
            sync.arrive_and_wait();
            const auto until = Clock::now() + window;
            try {
                for (std::uint64_t n = 0; n < max_ops_per_window; ++n) {
                    (*fn)(t);
                    if ((n & 15) == 15 && Clock::now() >= until) break;
                }
            } catch (const std::exception&) {
                // reported by the measured windows
            }
        }
        for (int r = 0; r < rounds; ++r) {
            for (int half = 0; half < 2; ++half) {
                const int side = (r + half) % 2;  // A B, B A, A B, ...
                const auto& fn = side == 0 ? a : b;
                Window& w = win[static_cast<std::size_t>(r) * 2 + static_cast<std::size_t>(side)];
                sync.arrive_and_wait();
                const std::int64_t server0 = t == 0 ? process_main_thread_cpu_ns(server_pid) : -1;
                const std::int64_t cpu0 = thread_cpu_ns();
                const auto start = Clock::now();
                const auto deadline = start + window;
                std::uint64_t n = 0;
                try {
                    // The clock is read every 16 operations: cheap operations stay cheap.
                    while (n < max_ops_per_window) {
                        fn(t);
                        ++n;
                        if ((n & 15) == 0 && Clock::now() >= deadline) break;
                    }
                } catch (const std::exception& e) {
                    std::lock_guard lock(error_mutex);
                    if (error.empty()) error = e.what();
                }
                const auto took = Clock::now() - start;
                w.cpu_ns.fetch_add(thread_cpu_ns() - cpu0);
                w.wall_ns.fetch_add(
                    std::chrono::duration_cast<std::chrono::nanoseconds>(took).count());
                w.ops.fetch_add(n);
                if (t == 0) {
                    const std::int64_t server1 = process_main_thread_cpu_ns(server_pid);
                    if (server0 >= 0 && server1 >= 0) w.server_ns = server1 - server0;
                }
            }
        }
    };
    std::vector<std::thread> pool;
    for (int t = 1; t < threads; ++t) pool.emplace_back(body, t);
    body(0);
    for (auto& th : pool) th.join();

    PairedResult out;
    out.error = error;
    double ops[2] = {0, 0};
    double seconds[2] = {0, 0};
    double cpu[2] = {0, 0};
    double server[2] = {0, 0};
    bool server_known = server_pid > 0;
    std::vector<double> ratios;
    for (int r = 0; r < rounds; ++r) {
        double rate[2] = {0, 0};
        for (int side = 0; side < 2; ++side) {
            const Window& w = win[static_cast<std::size_t>(r) * 2 + static_cast<std::size_t>(side)];
            const double n = static_cast<double>(w.ops.load());
            const double secs = static_cast<double>(w.wall_ns.load()) / 1e9 / threads;
            ops[side] += n;
            seconds[side] += secs;
            cpu[side] += static_cast<double>(w.cpu_ns.load());
            if (w.server_ns < 0) server_known = false;
            server[side] += static_cast<double>(w.server_ns);
            rate[side] = secs > 0 ? n / secs : 0;
        }
        if (rate[0] > 0 && rate[1] > 0) ratios.push_back(rate[1] / rate[0]);
    }
    if (seconds[0] > 0) out.a_ops = ops[0] / seconds[0];
    if (seconds[1] > 0) out.b_ops = ops[1] / seconds[1];
    if (ops[0] > 0) out.a_client_cpu_ns = cpu[0] / ops[0];
    if (ops[1] > 0) out.b_client_cpu_ns = cpu[1] / ops[1];
    if (server_known && ops[0] > 0 && ops[1] > 0) {
        out.a_server_cpu_ns = server[0] / ops[0];
        out.b_server_cpu_ns = server[1] / ops[1];
    }
    if (!ratios.empty()) {
        std::sort(ratios.begin(), ratios.end());
        auto at = [&](double q) {
            const double pos = q * static_cast<double>(ratios.size() - 1);
            const auto lo = static_cast<std::size_t>(pos);
            const std::size_t hi = std::min(lo + 1, ratios.size() - 1);
            return ratios[lo] + (ratios[hi] - ratios[lo]) * (pos - static_cast<double>(lo));
        };
        out.ratio_median = at(0.5);
        out.ratio_q1 = at(0.25);
        out.ratio_q3 = at(0.75);
    }
    return out;
}

/// One line of an A/B summary; side A is the peer, side B larder.
struct PairedLine {
    std::string what;
    PairedResult result;
    double target = 0;  ///< 0: no target
};

inline void print_paired_table(const std::string& title, const std::vector<PairedLine>& lines) {
    std::printf("\n%s\n", title.c_str());
    std::printf("  %-46s %8s %8s %7s %-15s %-15s %-18s %-18s\n", "comparison (larder / peer)",
                "peer/s", "larder/s", "ratio", "[q1, q3]", "target", "client CPU/op",
                "server CPU/op");
    std::printf("  %-46s %8s %8s %7s %-15s %-15s %-18s %-18s\n", "", "", "", "median", "", "",
                "peer -> larder", "peer -> larder");
    auto us = [](double ns) {
        char buf[16];
        std::snprintf(buf, sizeof buf, "%.2f", ns / 1e3);
        return std::string(buf);
    };
    for (const auto& l : lines) {
        const auto& r = l.result;
        if (r.a_ops <= 0 || r.b_ops <= 0 || !r.error.empty()) {
            std::printf("  %-46s (failed%s%s)\n", l.what.c_str(), r.error.empty() ? "" : ": ",
                        r.error.c_str());
            continue;
        }
        char spread[32];
        std::snprintf(spread, sizeof spread, "[%.3f, %.3f]", r.ratio_q1, r.ratio_q3);
        char target[32] = "";
        if (l.target > 0) {
            std::snprintf(target, sizeof target, ">=%.2fx %s", l.target,
                          r.ratio_median >= l.target ? "met" : "MISSED");
        }
        const std::string client = us(r.a_client_cpu_ns) + " -> " + us(r.b_client_cpu_ns) + " us";
        const std::string server =
            r.a_server_cpu_ns < 0 ? std::string("-")
                                  : us(r.a_server_cpu_ns) + " -> " + us(r.b_server_cpu_ns) + " us";
        std::printf("  %-46s %8s %8s %6.3fx %-15s %-15s %-18s %-18s\n", l.what.c_str(),
                    si(r.a_ops).c_str(), si(r.b_ops).c_str(), r.ratio_median, spread, target,
                    client.c_str(), server.c_str());
    }
    std::fflush(stdout);
}

}  // namespace larder::bench
