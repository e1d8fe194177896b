// CircuitBreaker: stops calling a Redis that keeps failing. After failure_threshold
// consecutive failures it opens, and every call fails at once with CircuitOpenError (no
// connect, no I/O), so callers fall back to their loader immediately instead of each
// waiting out a timeout. After the cool-down one probe call is let through (half-open):
// success closes the breaker, failure opens it for another cool-down.
//
// The closed state, where a healthy service spends its life, costs one atomic load per
// call and, after a success, one more load; every transition takes the mutex.
#pragma once

#include <atomic>
#include <chrono>
#include <cstdint>
#include <mutex>
#include <string>
#include <string_view>

#include "larder/backend/redis/options.hpp"
#include "larder/core/error.hpp"

namespace larder::redis_detail {

class CircuitBreaker {
public:
    /// What admit() let through; handed back to exactly one of succeeded, failed, abandoned.
    enum class Ticket { disabled, normal, probe };

    explicit CircuitBreaker(CircuitBreakerOptions options) : options_(options) {}

    CircuitBreaker(const CircuitBreaker&) = delete;
    CircuitBreaker& operator=(const CircuitBreaker&) = delete;

    /// Lets a call through, or throws CircuitOpenError.
    [[nodiscard]] Ticket admit() {
        if (options_.failure_threshold == 0) return Ticket::disabled;
        const BreakerState s = state_.load(std::memory_order_acquire);
        if (s == BreakerState::closed) return Ticket::normal;
        const auto now = ticks(SteadyClock::now());
        if (s == BreakerState::open && now >= probe_at_.load(std::memory_order_acquire)) {
            std::lock_guard lock(mutex_);
            if (state_.load(std::memory_order_relaxed) == BreakerState::open &&
                now >= probe_at_.load(std::memory_order_relaxed)) {
                state_.store(BreakerState::half_open, std::memory_order_release);
                return Ticket::probe;
            }
        }
        throw_open(now);
    }

    /// true when this closed the breaker (a probe succeeded).
    bool succeeded(Ticket t) noexcept {
        if (t == Ticket::disabled) return false;
        if (t == Ticket::probe) {
            std::lock_guard lock(mutex_);
            failures_.store(0, std::memory_order_relaxed);
            state_.store(BreakerState::closed, std::memory_order_release);
            return true;
        }
        // Read first: a healthy stream of successes must not keep writing the cache line.
        if (failures_.load(std::memory_order_relaxed) != 0) {
            failures_.store(0, std::memory_order_relaxed);
        }
        return false;
    }

    /// true when this opened the breaker.
    bool failed(Ticket t, std::string_view why) noexcept {
        if (t == Ticket::disabled) return false;
        const auto now = ticks(SteadyClock::now());
        std::lock_guard lock(mutex_);
        remember(why);
        if (t == Ticket::probe) {
            open(now);
            return true;
        }
        const auto n = failures_.fetch_add(1, std::memory_order_relaxed) + 1;
        if (n >= options_.failure_threshold &&
            state_.load(std::memory_order_relaxed) == BreakerState::closed) {
            open(now);
            return true;
        }
        return false;
    }

    /// The call ended without saying anything about the server (e.g. no free connection):
    /// a probe gives its turn to the next call.
    void abandoned(Ticket t) noexcept {
        if (t != Ticket::probe) return;
        std::lock_guard lock(mutex_);
        if (state_.load(std::memory_order_relaxed) == BreakerState::half_open) {
            probe_at_.store(ticks(SteadyClock::now()), std::memory_order_relaxed);
            state_.store(BreakerState::open, std::memory_order_release);
        }
    }

    [[nodiscard]] BreakerState state() const noexcept {
        return state_.load(std::memory_order_acquire);
    }

    /// Times the breaker went from closed or half-open to open.
    [[nodiscard]] std::uint64_t opens() const noexcept {
        return opens_.load(std::memory_order_relaxed);
    }

private:
    using SteadyClock = std::chrono::steady_clock;

    static std::int64_t ticks(SteadyClock::time_point t) noexcept {
        return std::chrono::duration_cast<std::chrono::nanoseconds>(t.time_since_epoch()).count();
    }

    void open(std::int64_t now) noexcept {
        const auto cool_down =
            std::chrono::duration_cast<std::chrono::nanoseconds>(options_.cool_down).count();
        probe_at_.store(now + cool_down, std::memory_order_relaxed);
        state_.store(BreakerState::open, std::memory_order_release);
        opens_.fetch_add(1, std::memory_order_relaxed);
    }

    void remember(std::string_view why) noexcept {
        try {
            last_failure_.assign(why.substr(0, 300));
        } catch (...) {
        }
    }

    [[noreturn]] void throw_open(std::int64_t now) const {
        std::string message = "redis: circuit breaker open after " +
                              std::to_string(options_.failure_threshold) + " consecutive failures";
        std::lock_guard lock(mutex_);
        if (state_.load(std::memory_order_relaxed) == BreakerState::half_open) {
            message += "; a probe call is in flight";
        } else {
            const auto left = (probe_at_.load(std::memory_order_relaxed) - now) / 1'000'000;
            message += "; next probe in " + std::to_string(left > 0 ? left : 0) + " ms";
        }
        if (!last_failure_.empty()) message += " (last failure: " + last_failure_ + ")";
        throw CircuitOpenError(message);
    }

    const CircuitBreakerOptions options_;
    std::atomic<BreakerState> state_{BreakerState::closed};
    std::atomic<std::uint32_t> failures_{0};
    std::atomic<std::int64_t> probe_at_{0};  // steady-clock ns when a probe may go
    std::atomic<std::uint64_t> opens_{0};
    mutable std::mutex mutex_;
    std::string last_failure_;
};

}  // namespace larder::redis_detail
