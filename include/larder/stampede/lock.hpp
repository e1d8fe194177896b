// Lock guard: when another process holds the lease on a missing key, wait for its value
// instead of loading too. In-process callers already share one load (single-flight); this
// extends the "one load per key" across processes.
//
// The lock is an efficiency lock, not a correctness lock: the fill is fenced by the lease
// token, so if the lock fails (the holder dies, a wait times out) the cost is one extra
// database query, never a wrong cached value.
#pragma once

#include <algorithm>
#include <chrono>

#include "larder/core/error.hpp"
#include "larder/stampede/guard.hpp"

namespace larder {

struct LockOptions {
    /// Longest a waiter waits for the holder's value before loading itself (without
    /// filling). Keep it near the loader's worst case; a dead holder's lease expires after
    /// the policy's lease_ttl, and a waiter then takes the lease over.
    Millis max_wait = std::chrono::seconds(5);
    /// Polling starts here and doubles (with jitter) up to max_backoff.
    Millis first_backoff{2};
    Millis max_backoff{50};
    /// With a backend that announces lease ends (RedisBackend, MemoryBackend), a waiter
    /// is woken by the announcement instead, and polls only this often: a holder that died
    /// announces nothing (its lease runs out within the policy's lease_ttl), nor does an
    /// invalidation or a WriteThrough put that replaces the lease.
    Millis fallback_poll{100};
};

class Lock {
public:
    Lock() = default;
    /// Throws ConfigError unless 0 <= max_wait, 1 ms <= first_backoff <= max_backoff and
    /// first_backoff <= fallback_poll.
    explicit Lock(LockOptions options) : options_(validated(options)) {}

    [[nodiscard]] bool refresh_early(const FreshHit&) const noexcept { return false; }
    [[nodiscard]] LeaseWait lease_wait() const noexcept {
        return LeaseWait{options_.max_wait, options_.first_backoff, options_.max_backoff,
                         options_.fallback_poll};
    }
    [[nodiscard]] bool refresh_in_background() const noexcept { return false; }

private:
    static LockOptions validated(LockOptions o) {
        // Longer than anyone waits, and short enough that now() + it cannot overflow:
        // Millis::max() means "for ever".
        constexpr Millis longest = std::chrono::hours(24 * 365);
        o.max_wait = std::min(o.max_wait, longest);
        o.max_backoff = std::min(o.max_backoff, longest);
        o.fallback_poll = std::min(o.fallback_poll, longest);
        o.first_backoff = std::min(o.first_backoff, longest);
        if (o.max_wait.count() < 0 || o.first_backoff.count() < 1 ||
            o.max_backoff < o.first_backoff || o.fallback_poll < o.first_backoff) {
            throw ConfigError(
                "Lock: need max_wait >= 0, 1 ms <= first_backoff <= max_backoff and "
                "first_backoff <= fallback_poll");
        }
        return o;
    }

    LockOptions options_{};
};

static_assert(StampedeGuard<Lock>);

}  // namespace larder
