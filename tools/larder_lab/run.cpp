// Running one configuration: worker threads issue the workload against the Subject and
// check every value they read; the calling thread cuts the run into 100 ms slices (the
// timeline), shows progress and stops the workers when time or the op budget is up.
#include <unistd.h>

#include <algorithm>
#include <array>
#include <atomic>
#include <cinttypes>
#include <cmath>
#include <cstdio>
#include <memory>
#include <optional>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "history.hpp"
#include "lab.hpp"

namespace lab {
namespace {

constexpr Millis slice_length{100};
constexpr std::size_t ring = 4;  // slices a worker keeps before the sampler has read them

/// A worker's counts for one 100 ms slice. Written only by its worker (so relaxed loads
/// and stores suffice), read by the sampler once the slice is over.
struct Slot {
    std::atomic<std::uint64_t> slice{~std::uint64_t{0}};  // which slice the counts belong to
    std::atomic<std::uint64_t> ops{0};
    std::array<std::atomic<std::uint64_t>, Buckets::count> reads{};
};

struct alignas(64) Worker {
    Histogram reads;
    Histogram writes;
    std::array<Slot, ring> slots;
    std::uint64_t ops = 0;
    std::uint64_t n_reads = 0;
    std::uint64_t n_writes = 0;
    std::uint64_t stale = 0;
    std::uint64_t wrong = 0;
    std::uint64_t read_errors = 0;
    std::uint64_t write_errors = 0;
    std::string first_error;
    std::atomic<bool> done{false};
    std::atomic<std::int64_t> finished_ns{0};

    static void bump(std::atomic<std::uint64_t>& a, std::uint64_t n = 1) {
        a.store(a.load(std::memory_order_relaxed) + n, std::memory_order_relaxed);
    }

    /// An operation that took `ns` and ended in `slice`; `measured`: after the warm-up.
    void record(bool is_write, std::uint64_t ns, std::uint64_t slice, bool measured) {
        Slot& s = slots[slice % ring];
        if (s.slice.load(std::memory_order_relaxed) != slice) {
            s.slice.store(~std::uint64_t{0}, std::memory_order_release);  // being reset
            s.ops.store(0, std::memory_order_relaxed);
            for (auto& b : s.reads) b.store(0, std::memory_order_relaxed);
            s.slice.store(slice, std::memory_order_release);
        }
        bump(s.ops);
        if (!is_write) bump(s.reads[Buckets::index(ns)]);
        if (!measured) return;
        ++ops;
        ++(is_write ? n_writes : n_reads);
        (is_write ? writes : reads).add(ns);
    }

    void error(const std::exception& e, bool is_write) {
        ++(is_write ? write_errors : read_errors);
        if (first_error.empty()) first_error = e.what();
    }
};

/// The hit and miss counts from `earlier` on (what the warm-up counted taken out).
CacheCounts since(CacheCounts now, const CacheCounts& earlier) {
    now.hits -= std::min(now.hits, earlier.hits);
    now.misses -= std::min(now.misses, earlier.misses);
    now.l1_hits -= std::min(now.l1_hits, earlier.l1_hits);
    return now;
}

void raise_to(std::atomic<std::uint64_t>& a, std::uint64_t v) {
    std::uint64_t cur = a.load(std::memory_order_relaxed);
    while (cur < v && !a.compare_exchange_weak(cur, v, std::memory_order_acq_rel)) {
    }
}

}  // namespace

std::atomic<bool> interrupted{false};

std::string human(double v) {
    char buf[32];
    if (v >= 1e6) {
        std::snprintf(buf, sizeof buf, "%.2fM", v / 1e6);
    } else if (v >= 1e4) {
        std::snprintf(buf, sizeof buf, "%.1fk", v / 1e3);
    } else {
        std::snprintf(buf, sizeof buf, "%.0f", v);
    }
    return buf;
}

// ---- progress -------------------------------------------------------------------------

Progress::Progress(bool enabled) : enabled_(enabled), tty_(::isatty(STDERR_FILENO) == 1) {}

void Progress::clear_line() {
    if (bar_shown_) std::fputs("\r\033[K", stderr);
    bar_shown_ = false;
}

void Progress::update(std::string_view config, std::size_t index, std::size_t count,
                      double fraction, double ops_per_s, double elapsed_s) {
    if (!enabled_) return;
    fraction = std::clamp(fraction, 0.0, 1.0);
    if (tty_) {
        constexpr int width = 30;
        const int filled = static_cast<int>(fraction * width + 0.5);
        std::string bar(static_cast<std::size_t>(filled), '#');
        bar.append(static_cast<std::size_t>(width - filled), '.');
        std::fprintf(stderr, "\r\033[K[%s] %3.0f%% %s ops/s  %.*s (%zu/%zu)", bar.c_str(),
                     fraction * 100, human(ops_per_s).c_str(), static_cast<int>(config.size()),
                     config.data(), index + 1, count);
        bar_shown_ = true;
    } else if (last_line_s_ < 0 || elapsed_s - last_line_s_ >= 1.0) {
        std::fprintf(stderr, "larder-lab: %.*s (%zu/%zu) %.1f s %3.0f%% %s ops/s\n",
                     static_cast<int>(config.size()), config.data(), index + 1, count, elapsed_s,
                     fraction * 100, human(ops_per_s).c_str());
        last_line_s_ = elapsed_s;
    }
    std::fflush(stderr);
}

void Progress::message(std::string_view config, std::string_view text) {
    if (!enabled_ || !tty_) return;  // a passing state: not worth a line in a log
    std::fprintf(stderr, "\r\033[K%.*s: %.*s", static_cast<int>(config.size()), config.data(),
                 static_cast<int>(text.size()), text.data());
    bar_shown_ = true;
    std::fflush(stderr);
}

void Progress::done(const RunResult& r, std::size_t index, std::size_t count) {
    last_line_s_ = -1;
    if (!enabled_) return;
    clear_line();
    std::fprintf(stderr, "larder-lab: %s (%zu/%zu) done: %.1f s, %s ops/s, hit ratio %.1f%%%s\n",
                 r.config.c_str(), index + 1, count, r.seconds, human(r.throughput()).c_str(),
                 r.hit_ratio() * 100, r.interrupted ? " (interrupted)" : "");
    std::fflush(stderr);
}

// ---- one run --------------------------------------------------------------------------

RunResult run_config(const Options& o, const Spec& spec, const Zipf& zipf, const Target& target,
                     Progress& progress, std::size_t index, std::size_t count) {
    RunResult result;
    result.config = spec.name();

    const auto warmup_slices = static_cast<std::size_t>(std::llround(o.warmup_s * 10));
    const auto run_slices = warmup_slices + static_cast<std::size_t>(o.duration_s * 10) + 2;
    const auto after_slices = static_cast<std::size_t>(o.drain_timeout / slice_length) + 100;
    FakeDb db(FakeDb::Settings{.keys = o.keys,
                               .value_size = o.value_size,
                               .read_latency = std::chrono::duration_cast<Micros>(
                                   std::chrono::duration<double, std::milli>(o.loader_latency_ms)),
                               .write_latency = std::chrono::duration_cast<Micros>(
                                   std::chrono::duration<double, std::milli>(o.write_latency_ms())),
                               .write_capacity = o.db_write_capacity},
              Clock::now(), run_slices + after_slices);

    std::mutex log_mutex;
    std::vector<std::string> library_log;
    RunEnv env{o, db, target.kind, target.redis_url, target.key_prefix, [&](std::string_view m) {
                   std::lock_guard lock(log_mutex);
                   if (library_log.size() < 1000) library_log.emplace_back(m);
               }};
    std::unique_ptr<Subject> subject = spec.policy->make(env, spec);

    auto acked = std::make_unique<std::atomic<std::uint64_t>[]>(o.keys);
    for (std::size_t i = 0; i < o.keys; ++i) acked[i].store(0, std::memory_order_relaxed);
    std::vector<std::unique_ptr<Worker>> workers;
    for (std::size_t t = 0; t < o.threads; ++t) workers.push_back(std::make_unique<Worker>());
    std::atomic<bool> stop{false};
    std::atomic<std::uint64_t> issued{0};

    const auto begin = Clock::now();
    db.set_start(begin);
    const auto measure_from = begin + static_cast<Millis::rep>(warmup_slices) * slice_length;
    const auto deadline = measure_from + std::chrono::duration_cast<Clock::duration>(
                                             std::chrono::duration<double>(o.duration_s));
    auto work = [&](std::size_t t) {
        Worker& w = *workers[t];
        std::mt19937_64 rng(o.seed * 0x9E3779B97F4A7C15ull + t + 1);
        std::bernoulli_distribution is_write(o.write_ratio);
        const std::size_t instance = t % o.instances;
        while (!stop.load(std::memory_order_relaxed)) {
            if (o.max_ops && issued.fetch_add(1, std::memory_order_relaxed) >= o.max_ops) break;
            const std::size_t k = zipf(rng);
            const bool write = is_write(rng);
            const auto t0 = Clock::now();
            if (write) {
                try {
                    if (const std::uint64_t v = subject->write(instance, k)) raise_to(acked[k], v);
                } catch (const std::exception& e) {
                    w.error(e, true);
                }
            } else {
                // The newest version this read may not be older than: the newest
                // acknowledged before it started (history.hpp).
                const std::uint64_t floor = acked[k].load(std::memory_order_acquire);
                try {
                    const auto value = subject->read(instance, k);
                    const auto parsed = value ? FakeDb::parse_value(*value) : std::nullopt;
                    if (!parsed || parsed->key != k) {
                        ++w.wrong;
                    } else if (history::is_stale(parsed->version, floor)) {
                        ++w.stale;
                    }
                } catch (const std::exception& e) {
                    w.error(e, false);
                }
            }
            const auto t1 = Clock::now();
            w.record(write, static_cast<std::uint64_t>((t1 - t0).count()),
                     static_cast<std::uint64_t>((t1 - begin) / slice_length), t0 >= measure_from);
        }
        w.finished_ns.store((Clock::now() - begin).count(), std::memory_order_relaxed);
        w.done.store(true, std::memory_order_release);
    };
    std::vector<std::thread> threads;
    for (std::size_t t = 0; t < o.threads; ++t) threads.emplace_back(work, t);

    // The sampler: read each slice once every worker has moved past it.
    std::size_t next = 0;
    bool stopping = false;
    auto collect = [&](std::size_t i, double length_s) {
        Histogram h;
        std::uint64_t ops = 0;
        for (const auto& w : workers) {
            const Slot& s = w->slots[i % ring];
            if (s.slice.load(std::memory_order_acquire) != i) continue;
            ops += s.ops.load(std::memory_order_relaxed);
            for (std::size_t b = 0; b < Buckets::count; ++b) {
                if (const auto n = s.reads[b].load(std::memory_order_relaxed)) h.add_bucket(b, n);
            }
        }
        Sample x;
        x.t_s = 0.1 * static_cast<double>(i) + length_s;
        x.ops_per_s = static_cast<double>(ops) / length_s;
        x.read_p99_us = h.quantile_us(0.99);
        x.db_reads_per_s = static_cast<double>(db.slice_reads(i)) / length_s;
        x.db_writes_per_s = static_cast<double>(db.slice_writes(i)) / length_s;
        result.timeline.push_back(x);
    };
    auto all_done = [&] {
        return std::all_of(workers.begin(), workers.end(),
                           [](const auto& w) { return w->done.load(std::memory_order_acquire); });
    };
    const Millis settle{20};  // a slice is read this long after it ends
    // The cache's counts when the warm-up ended, taken out of the run's.
    std::optional<CacheCounts> at_measure_start;
    for (;;) {
        Clock::time_point wake = begin + static_cast<Millis::rep>(next + 1) * slice_length + settle;
        if (!stopping) wake = std::min(wake, deadline);
        if (!at_measure_start) wake = std::min(wake, measure_from);
        std::this_thread::sleep_until(wake);
        const auto now = Clock::now();
        if (!at_measure_start && now >= measure_from) at_measure_start = subject->counts();
        if (!stopping && (now >= deadline || interrupted.load() || all_done())) {
            stop.store(true);
            stopping = true;
            result.interrupted = interrupted.load();
        }
        if (stopping && all_done()) break;
        while (begin + static_cast<Millis::rep>(next + 1) * slice_length + settle <= now) {
            collect(next++, 0.1);
        }
        const double elapsed = std::chrono::duration<double>(now - begin).count();
        double fraction = elapsed / (o.duration_s + static_cast<double>(warmup_slices) / 10);
        if (o.max_ops) {
            fraction = std::max(
                fraction, static_cast<double>(issued.load()) / static_cast<double>(o.max_ops));
        }
        double recent = 0;
        const std::size_t from = result.timeline.size() > 10 ? result.timeline.size() - 10 : 0;
        for (std::size_t i = from; i < result.timeline.size(); ++i) {
            recent += result.timeline[i].ops_per_s;
        }
        if (result.timeline.size() > from)
            recent /= static_cast<double>(result.timeline.size() - from);
        progress.update(result.config, index, count, fraction, recent, elapsed);
    }
    for (auto& t : threads) t.join();

    std::int64_t end_ns = 0;
    for (const auto& w : workers) end_ns = std::max(end_ns, w->finished_ns.load());
    const auto warmup_ns = std::chrono::nanoseconds(measure_from - begin).count();
    result.warmup_seconds = static_cast<double>(std::min(warmup_ns, end_ns)) / 1e9;
    result.seconds = static_cast<double>(std::max<std::int64_t>(end_ns - warmup_ns, 0)) / 1e9;
    // The whole slices not read yet. A partial last one (the workers stopping) says nothing
    // about a rate, and the timeline ends with the last whole slice.
    const auto slice_ns = std::chrono::nanoseconds(slice_length).count();
    while (static_cast<std::int64_t>(next + 1) * slice_ns <= end_ns) collect(next++, 0.1);

    for (const auto& w : workers) {
        result.read_latency.merge(w->reads);
        result.write_latency.merge(w->writes);
        result.ops += w->ops;
        result.reads += w->n_reads;
        result.writes += w->n_writes;
        result.stale_reads += w->stale;
        result.wrong_values += w->wrong;
        result.read_errors += w->read_errors;
        result.write_errors += w->write_errors;
    }

    // Flush what is pending (write-behind), then hold the database against every write
    // that was acknowledged.
    if (!result.interrupted) {
        progress.message(result.config, "final flush...");
        const auto drain_start = Clock::now();
        const auto written_before = db.writes();
        db.refuse_writes_after(drain_start + o.drain_timeout);
        result.notes = subject->finish();
        result.drain_seconds = std::chrono::duration<double>(Clock::now() - drain_start).count();
        if (const auto rows = db.writes() - written_before) {
            char buf[128];
            std::snprintf(buf, sizeof buf, "final flush wrote %" PRIu64 " rows in %.2f s", rows,
                          result.drain_seconds);
            result.notes.insert(result.notes.begin(), buf);
        }
        // Cache-aside acknowledges only versions the database picked and holds. For the
        // others VersionIssuer makes the acknowledged versions of a row 2, 3, ... without
        // gaps, so the writes of row k the database lacks are exactly those between its
        // version and the highest acknowledged one.
        for (std::size_t k = 0; k < o.keys; ++k) {
            const std::uint64_t have = db.version(k);
            const std::uint64_t want = acked[k].load();
            if (history::lost_writes(want, have) == 0) continue;
            result.lost_writes += history::lost_writes(want, have);
            if (++result.lost_rows <= 3) {
                result.notes.push_back(
                    "lost write: " + key_name(k) + " version " + std::to_string(want) +
                    " was acknowledged, the database has " + std::to_string(have));
            }
        }
        if (result.lost_writes > 0) {
            result.notes.push_back(std::to_string(result.lost_writes) + " acknowledged writes to " +
                                   std::to_string(result.lost_rows) +
                                   " rows never reached the database (nor did a later write "
                                   "of the same row)");
        }
    } else {
        result.notes.push_back("interrupted: no final flush, lost writes not checked");
    }
    result.counts = since(subject->counts(), at_measure_start.value_or(CacheCounts{}));
    // The database's work during the warm-up, counted per slice, is left out.
    std::uint64_t warmup_reads = 0;
    std::uint64_t warmup_writes = 0;
    for (std::size_t i = 0; i < warmup_slices; ++i) {
        warmup_reads += db.slice_reads(i);
        warmup_writes += db.slice_writes(i);
    }
    result.db_reads = db.reads() - std::min(db.reads(), warmup_reads);
    result.db_writes = db.writes() - std::min(db.writes(), warmup_writes);
    subject.reset();

    for (const auto& w : workers) {
        if (!w->first_error.empty()) {
            result.notes.push_back("first error: " + w->first_error);
            break;
        }
    }
    {
        // The library's own messages (write-behind drains), once each and kept short.
        std::lock_guard lock(log_mutex);
        std::vector<std::string> seen;
        std::size_t more = 0;
        for (auto& m : library_log) {
            if (std::find(seen.begin(), seen.end(), m) != seen.end()) continue;
            seen.push_back(m);
            if (seen.size() > 5) {
                ++more;
                continue;
            }
            result.notes.push_back(m.size() > 240 ? m.substr(0, 240) + " ..." : m);
        }
        if (more) result.notes.push_back("(" + std::to_string(more) + " more such messages)");
    }
    if (result.counts.backend_errors > 0) {
        result.notes.push_back(std::to_string(result.counts.backend_errors) +
                               " cache store errors (served from the database)");
    }
    progress.done(result, index, count);
    return result;
}

}  // namespace lab
