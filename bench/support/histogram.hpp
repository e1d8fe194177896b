// A latency recorder for runs too long to keep every sample: log-linear buckets (8 per
// power of two, so a reported percentile is within 12.5% of the true value), an exact
// maximum, constant memory, and merge() to combine per-thread recorders after a run.
#pragma once

#include <algorithm>
#include <array>
#include <bit>
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <string>

namespace larder::bench {

class LatencyHistogram {
public:
    void record(std::uint64_t ns) noexcept {
        ++counts_[bucket_of(ns)];
        ++count_;
        max_ = std::max(max_, ns);
    }

    void merge(const LatencyHistogram& other) noexcept {
        for (std::size_t i = 0; i < bucket_count; ++i) counts_[i] += other.counts_[i];
        count_ += other.count_;
        max_ = std::max(max_, other.max_);
    }

    [[nodiscard]] std::uint64_t count() const noexcept { return count_; }
    [[nodiscard]] std::uint64_t max() const noexcept { return max_; }

    /// The smallest recorded latency bound below which a fraction `q` (0..1) of the
    /// samples lie: the upper edge of the bucket holding that sample (at most `max`).
    [[nodiscard]] std::uint64_t percentile(double q) const noexcept {
        if (count_ == 0) return 0;
        const auto rank = static_cast<std::uint64_t>(q * static_cast<double>(count_ - 1)) + 1;
        std::uint64_t seen = 0;
        for (std::size_t i = 0; i < bucket_count; ++i) {
            seen += counts_[i];
            if (seen >= rank) return std::min(upper_edge(i), max_);
        }
        return max_;
    }

    /// Samples strictly above `ns` (bucket resolution).
    [[nodiscard]] std::uint64_t count_above(std::uint64_t ns) const noexcept {
        std::uint64_t n = 0;
        for (std::size_t i = bucket_of(ns) + 1; i < bucket_count; ++i) n += counts_[i];
        return n;
    }

private:
    static constexpr std::size_t sub_bits = 3;   // 8 buckets per octave
    static constexpr std::size_t max_bits = 40;  // ~18 minutes; longer samples are clamped
    static constexpr std::size_t bucket_count = (max_bits - sub_bits + 1) << sub_bits;

    static std::size_t bucket_of(std::uint64_t v) noexcept {
        constexpr std::uint64_t sub = 1u << sub_bits;
        v = std::min<std::uint64_t>(v, (std::uint64_t{1} << max_bits) - 1);
        if (v < sub) return static_cast<std::size_t>(v);
        const auto msb = static_cast<std::size_t>(63 - std::countl_zero(v));
        return (msb - sub_bits + 1) * sub + ((v >> (msb - sub_bits)) & (sub - 1));
    }

    static std::uint64_t upper_edge(std::size_t b) noexcept {
        constexpr std::size_t sub = 1u << sub_bits;
        if (b < sub) return b;
        const std::size_t msb = b / sub + sub_bits - 1;
        const std::uint64_t mantissa = sub + b % sub;
        return ((mantissa + 1) << (msb - sub_bits)) - 1;
    }

    std::array<std::uint32_t, bucket_count> counts_{};
    std::uint64_t count_ = 0;
    std::uint64_t max_ = 0;
};

/// "812 ns", "54.1 us", "20.4 ms".
inline std::string format_ns(double ns) {
    char buf[32];
    if (ns < 1e3) {
        std::snprintf(buf, sizeof buf, "%.0f ns", ns);
    } else if (ns < 1e6) {
        std::snprintf(buf, sizeof buf, "%.1f us", ns / 1e3);
    } else if (ns < 1e9) {
        std::snprintf(buf, sizeof buf, "%.1f ms", ns / 1e6);
    } else {
        std::snprintf(buf, sizeof buf, "%.2f s", ns / 1e9);
    }
    return buf;
}

}  // namespace larder::bench
