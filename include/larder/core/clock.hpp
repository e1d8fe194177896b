// Time sources. Every strategy reads time through a Clock so tests can drive expiry,
// early refresh and write-behind deadlines deterministically with a ManualClock.
#pragma once

#include <atomic>
#include <chrono>
#include <cstdint>

namespace larder {

using Millis = std::chrono::milliseconds;

/// Milliseconds since the Unix epoch. Wall time, not steady time: values written by one
/// process carry timestamps that another process must be able to compare.
using TimePoint = std::chrono::time_point<std::chrono::system_clock, Millis>;

/// The longest TTL larder hands a store (about 100 years). Longer ones, Millis::max()
/// included, are saturated to it: `now + ttl` can then never overflow, and Redis never
/// rejects the expiry.
inline constexpr Millis max_ttl =
    std::chrono::duration_cast<Millis>(std::chrono::hours(24 * 36525));

/// `ttl`, saturated to max_ttl.
[[nodiscard]] constexpr Millis saturated(Millis ttl) noexcept {
    return ttl > max_ttl ? max_ttl : ttl;
}

/// `a + b` for durations that may be huge: saturates to max_ttl instead of overflowing.
[[nodiscard]] constexpr Millis saturated_sum(Millis a, Millis b) noexcept {
    a = saturated(a);
    b = saturated(b);
    return saturated(a + b);
}

/// A source of the current time. Implementations must be thread-safe.
class Clock {
public:
    virtual ~Clock() = default;
    [[nodiscard]] virtual TimePoint now() const noexcept = 0;
};

class SystemClock final : public Clock {
public:
    [[nodiscard]] TimePoint now() const noexcept override {
        return std::chrono::time_point_cast<Millis>(std::chrono::system_clock::now());
    }

    /// The process-wide instance that options default to.
    [[nodiscard]] static const SystemClock& instance() noexcept {
        static const SystemClock clock;
        return clock;
    }
};

/// A clock that moves only when told to. Starts at an arbitrary fixed instant so that
/// tests do not depend on the wall clock.
class ManualClock final : public Clock {
public:
    explicit ManualClock(TimePoint start = TimePoint{Millis{1'700'000'000'000}}) noexcept
        : now_ms_(start.time_since_epoch().count()) {}

    [[nodiscard]] TimePoint now() const noexcept override {
        return TimePoint{Millis{now_ms_.load(std::memory_order_acquire)}};
    }

    void advance(Millis by) noexcept { now_ms_.fetch_add(by.count(), std::memory_order_acq_rel); }
    void set(TimePoint to) noexcept {
        now_ms_.store(to.time_since_epoch().count(), std::memory_order_release);
    }

private:
    std::atomic<std::int64_t> now_ms_;
};

}  // namespace larder
