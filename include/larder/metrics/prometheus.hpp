// PrometheusMetrics: everything larder measures, in the Prometheus text exposition format
// (version 0.0.4), for a /metrics endpoint. No dependency.
//
//   larder::PrometheusMetrics metrics;
//   larder::RedisBackend redis({.name = "main", .metrics = &metrics});
//   larder::CacheAside<User, larder::RedisBackend> users(redis, {.name = "users", .metrics =
//   &metrics}); metrics.add("main", redis);   // counters, read from stats() at every scrape
//   metrics.add("users", users);
//   std::string body = metrics.text();   // serve with PrometheusMetrics::content_type
//
// It is the MetricsListener of the caches and backends that name it: loader calls and
// backend calls become latency histograms (larder_load_duration_seconds{cache},
// larder_backend_call_duration_seconds{backend,operation}) with failure counters beside
// them. Counters of the objects added are larder_<family>_<counter>_total, labelled with
// the name given to add(): cache="..." for caches, backend="..." for backends. Histogram
// updates are a few relaxed atomic additions under a shared lock.
#pragma once

#include <algorithm>
#include <atomic>
#include <charconv>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <shared_mutex>
#include <string>
#include <string_view>
#include <system_error>
#include <utility>
#include <vector>

#include "larder/core/error.hpp"
#include "larder/core/metrics.hpp"
#include "larder/core/stats.hpp"

namespace larder {

struct PrometheusOptions {
    /// The first word of every metric name.
    std::string prefix = "larder";
    /// Upper bounds of the latency histograms' buckets, in seconds: positive, ascending.
    std::vector<double> buckets{0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025,
                                0.05,   0.1,     0.25,   0.5,   1,      2.5,   5,    10};
};

namespace detail {

/// One latency histogram: a count per bucket (not cumulative; text() adds them up), the
/// sum in nanoseconds, and how many of the calls failed.
class LatencyHistogram {
public:
    explicit LatencyHistogram(std::size_t buckets) : counts_(buckets + 1) {}

    void observe(std::size_t bucket, std::chrono::nanoseconds took, bool failed) noexcept {
        counts_[bucket].fetch_add(1, std::memory_order_relaxed);
        sum_ns_.fetch_add(static_cast<std::uint64_t>(std::max<std::int64_t>(took.count(), 0)),
                          std::memory_order_relaxed);
        if (failed) failures_.fetch_add(1, std::memory_order_relaxed);
    }

    [[nodiscard]] std::uint64_t count(std::size_t bucket) const noexcept {
        return counts_[bucket].load(std::memory_order_relaxed);
    }
    [[nodiscard]] std::uint64_t sum_ns() const noexcept {
        return sum_ns_.load(std::memory_order_relaxed);
    }
    [[nodiscard]] std::uint64_t failures() const noexcept {
        return failures_.load(std::memory_order_relaxed);
    }

private:
    std::vector<std::atomic<std::uint64_t>> counts_;  // the last one: above every bound
    std::atomic<std::uint64_t> sum_ns_{0};
    std::atomic<std::uint64_t> failures_{0};
};

/// Histograms by the values of up to two labels, created on first use; an observation
/// of an existing series allocates nothing.
class HistogramFamily {
public:
    using Labels = std::vector<std::pair<std::string, std::string>>;

    /// `second_label` empty: one label.
    HistogramFamily(std::string first_label, std::string second_label)
        : first_label_(std::move(first_label)), second_label_(std::move(second_label)) {}

    void observe(const std::vector<double>& bounds, std::string_view first, std::string_view second,
                 std::chrono::nanoseconds took, bool failed) {
        const double seconds = std::chrono::duration<double>(took).count();
        const auto bucket = static_cast<std::size_t>(
            std::lower_bound(bounds.begin(), bounds.end(), seconds) - bounds.begin());
        {
            std::shared_lock lock(mutex_);
            if (auto* h = find(first, second)) {
                h->observe(bucket, took, failed);
                return;
            }
        }
        std::unique_lock lock(mutex_);
        auto& inner = series_[std::string(first)];
        auto it = inner.find(second);
        if (it == inner.end()) {
            it =
                inner
                    .emplace(std::string(second), std::make_unique<LatencyHistogram>(bounds.size()))
                    .first;
        }
        it->second->observe(bucket, took, failed);
    }

    template <class Fn>
    void for_each(Fn&& fn) const {
        std::shared_lock lock(mutex_);
        for (const auto& [first, inner] : series_) {
            for (const auto& [second, h] : inner) {
                Labels labels{{first_label_, first}};
                if (!second_label_.empty()) labels.emplace_back(second_label_, second);
                fn(labels, *h);
            }
        }
    }

private:
    using Inner = std::map<std::string, std::unique_ptr<LatencyHistogram>, std::less<>>;

    LatencyHistogram* find(std::string_view first, std::string_view second) const {
        const auto outer = series_.find(first);
        if (outer == series_.end()) return nullptr;
        const auto it = outer->second.find(second);
        return it == outer->second.end() ? nullptr : it->second.get();
    }

    const std::string first_label_;
    const std::string second_label_;
    mutable std::shared_mutex mutex_;
    std::map<std::string, Inner, std::less<>> series_;
};

/// Builds the exposition text: every sample of one metric together, under its HELP and
/// TYPE lines, metrics in name order.
class Exposition {
public:
    using Labels = HistogramFamily::Labels;

    void sample(const std::string& metric, std::string_view type, std::string_view help,
                std::string_view series_suffix, const Labels& labels, std::string_view value) {
        auto& m = metrics_[metric];
        if (m.type.empty()) {
            m.type = type;
            m.help = help;
        }
        std::string& out = m.samples;
        out.append(metric).append(series_suffix);
        if (!labels.empty()) {
            out.push_back('{');
            for (std::size_t i = 0; i < labels.size(); ++i) {
                if (i > 0) out.push_back(',');
                out.append(labels[i].first).append("=\"");
                escape(out, labels[i].second, /*quotes=*/true);
                out.push_back('"');
            }
            out.push_back('}');
        }
        out.push_back(' ');
        out.append(value).push_back('\n');
    }

    [[nodiscard]] std::string text() const {
        std::string out;
        for (const auto& [name, m] : metrics_) {
            out.append("# HELP ").append(name).push_back(' ');
            escape(out, m.help, /*quotes=*/false);
            out.append("\n# TYPE ").append(name).push_back(' ');
            out.append(m.type).push_back('\n');
            out.append(m.samples);
        }
        return out;
    }

    static std::string number(std::uint64_t v) { return std::to_string(v); }

    static std::string number(double v) {
        if (std::isinf(v)) return v > 0 ? "+Inf" : "-Inf";
        // Fixed notation of a finite double is at most 309 digits before the point and
        // some 330 after it (the shortest that reads back): room for any, checked anyway.
        char buf[512];
        const auto r = std::to_chars(buf, buf + sizeof buf, v, std::chars_format::fixed);
        if (r.ec != std::errc{}) {
            const auto g = std::to_chars(buf, buf + sizeof buf, v);
            return std::string(buf, g.ptr);
        }
        return std::string(buf, r.ptr);
    }

private:
    struct Metric {
        std::string type;
        std::string help;
        std::string samples;
    };

    // Label values escape \, " and newline; HELP text escapes \ and newline.
    static void escape(std::string& out, std::string_view text, bool quotes) {
        for (char c : text) {
            if (c == '\\') {
                out.append("\\\\");
            } else if (c == '\n') {
                out.append("\\n");
            } else if (c == '"' && quotes) {
                out.append("\\\"");
            } else {
                out.push_back(c);
            }
        }
    }

    std::map<std::string, Metric> metrics_;
};

}  // namespace detail

class PrometheusMetrics final : public MetricsListener {
public:
    /// The Content-Type of text()'s body.
    static constexpr std::string_view content_type = "text/plain; version=0.0.4; charset=utf-8";

    /// Throws ConfigError when the prefix is not a metric name or the buckets are not
    /// positive and ascending.
    explicit PrometheusMetrics(PrometheusOptions options = {}) : options_(std::move(options)) {
        if (!valid_name(options_.prefix)) {
            throw ConfigError("PrometheusMetrics: prefix '" + options_.prefix +
                              "' is not a metric name ([a-zA-Z_:][a-zA-Z0-9_:]*)");
        }
        if (options_.buckets.empty() || options_.buckets.front() <= 0 ||
            !std::is_sorted(options_.buckets.begin(), options_.buckets.end(),
                            std::less_equal<>())) {
            throw ConfigError("PrometheusMetrics: buckets must be positive and ascending");
        }
        for (double b : options_.buckets) {
            if (!std::isfinite(b)) throw ConfigError("PrometheusMetrics: buckets must be finite");
        }
    }

    /// Exports the counters of `source` - anything whose stats() gives a counter set: a
    /// policy (its write counters and its reads), a RedisBackend, a RedisClusterBackend, a
    /// NearCache - at every scrape, labelled with `name`. `source` must outlive this
    /// object, or be removed first. Adding a name again replaces the source.
    template <class Source>
    requires CounterStats<std::remove_cvref_t<decltype(std::declval<const Source&>().stats())>>
    void add(std::string name, const Source& source) {
        Collect collect = [&source](detail::Exposition& out, const std::string& prefix,
                                    const std::string& label) {
            write_counters(out, prefix, label, source.stats());
        };
        std::lock_guard lock(sources_mutex_);
        sources_.insert_or_assign(std::move(name), std::move(collect));
    }

    /// Stops exporting what was added under `name`.
    void remove(std::string_view name) {
        std::lock_guard lock(sources_mutex_);
        if (auto it = sources_.find(name); it != sources_.end()) sources_.erase(it);
    }

    void on_load(const LoadEvent& e) noexcept override {
        try {
            loads_.observe(options_.buckets, e.cache, {}, e.took, e.failed);
        } catch (...) {
            // Out of memory for a new series: this one observation is lost.
        }
    }

    void on_backend_call(const BackendCallEvent& e) noexcept override {
        try {
            calls_.observe(options_.buckets, e.backend, e.operation, e.took, e.failed);
        } catch (...) {
        }
    }

    /// The exposition: every histogram and every added source's counters, read now.
    [[nodiscard]] std::string text() const {
        detail::Exposition out;
        write_histograms(out, loads_, "load", "loader calls");
        write_histograms(out, calls_, "backend_call", "backend calls");
        std::lock_guard lock(sources_mutex_);
        for (const auto& [name, collect] : sources_) collect(out, options_.prefix, name);
        return out.text();
    }

    [[nodiscard]] const PrometheusOptions& options() const noexcept { return options_; }

private:
    using Collect =
        std::function<void(detail::Exposition&, const std::string&, const std::string&)>;

    static bool valid_name(std::string_view name) {
        if (name.empty()) return false;
        for (std::size_t i = 0; i < name.size(); ++i) {
            const char c = name[i];
            const bool alpha =
                (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || c == '_' || c == ':';
            if (!alpha && !(i > 0 && c >= '0' && c <= '9')) return false;
        }
        return true;
    }

    // Caches are labelled cache="...", backends backend="...".
    static std::string_view label_for(std::string_view family) {
        return family.starts_with("redis") ? "backend" : "cache";
    }

    template <class S>
    static void write_counters(detail::Exposition& out, const std::string& prefix,
                               const std::string& name, const S& stats) {
        const detail::Exposition::Labels labels{
            {std::string(label_for(counter_set<S>::family)), name}};
        for_each_counter(stats, [&](const CounterField<S>& f, std::uint64_t value) {
            const std::string metric = prefix + "_" + std::string(counter_set<S>::family) + "_" +
                                       std::string(f.name) + "_total";
            out.sample(metric, "counter", f.help, "", labels, detail::Exposition::number(value));
        });
        if constexpr (requires { stats.reads; }) write_counters(out, prefix, name, stats.reads);
    }

    void write_histograms(detail::Exposition& out, const detail::HistogramFamily& family,
                          std::string_view what, std::string_view help_of) const {
        const std::string base = options_.prefix + "_" + std::string(what);
        const std::string duration = base + "_duration_seconds";
        const std::string failures = base + "_failures_total";
        const std::string help = "Latency of " + std::string(help_of) + ", in seconds.";
        const std::string failures_help = "Failed " + std::string(help_of) + ".";
        family.for_each(
            [&](const detail::Exposition::Labels& labels, const detail::LatencyHistogram& h) {
                std::uint64_t cumulative = 0;
                for (std::size_t i = 0; i <= options_.buckets.size(); ++i) {
                    cumulative += h.count(i);
                    auto with_le = labels;
                    with_le.emplace_back("le", i < options_.buckets.size()
                                                   ? detail::Exposition::number(options_.buckets[i])
                                                   : std::string("+Inf"));
                    out.sample(duration, "histogram", help, "_bucket", with_le,
                               detail::Exposition::number(cumulative));
                }
                out.sample(duration, "histogram", help, "_sum", labels,
                           detail::Exposition::number(static_cast<double>(h.sum_ns()) / 1e9));
                out.sample(duration, "histogram", help, "_count", labels,
                           detail::Exposition::number(cumulative));
                out.sample(failures, "counter", failures_help, "", labels,
                           detail::Exposition::number(h.failures()));
            });
    }

    const PrometheusOptions options_;
    detail::HistogramFamily loads_{"cache", ""};
    detail::HistogramFamily calls_{"backend", "operation"};
    mutable std::mutex sources_mutex_;
    std::map<std::string, Collect, std::less<>> sources_;
};

}  // namespace larder
