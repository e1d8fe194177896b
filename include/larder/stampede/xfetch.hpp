// XFetch guard: probabilistic early recomputation (Vattani, Chierichetti, Lowenstein,
// "Optimal Probabilistic Cache Stampede Prevention", VLDB 2015).
//
// A reader refreshes early when   now - delta * beta * ln(U) >= expiry,   U uniform in
// (0, 1], delta the time the value took to compute (stored in its envelope). With t the
// time left, a read refreshes with probability exp(-t / (beta * delta)): almost never
// while t is large against delta, more and more often as expiry nears, so that one reader,
// not a herd, recomputes just before the value would expire. beta > 1 favours earlier
// refreshes; beta = 0 turns early refresh off.
//
// A common transcription, `remaining_ttl - beta * log(random()) < 0`, can never fire for a
// live key (log of a number in (0, 1] is <= 0, so the left side is >= remaining_ttl > 0)
// and has no delta; tests/xfetch_test.cpp keeps it as a regression (docs/pitfalls.md).
#pragma once

#include <chrono>
#include <cmath>
#include <functional>

#include "larder/core/random.hpp"
#include "larder/stampede/guard.hpp"

namespace larder {

/// The decision itself: refresh now? `u` must lie in (0, 1].
[[nodiscard]] inline bool xfetch_should_refresh(Millis remaining, std::chrono::microseconds delta,
                                                double beta, double u) noexcept {
    if (remaining.count() <= 0) return true;
    if (beta <= 0.0 || delta.count() <= 0) return false;
    const double delta_ms = static_cast<double>(delta.count()) / 1000.0;
    return -delta_ms * beta * std::log(u) >= static_cast<double>(remaining.count());
}

struct XFetchOptions {
    /// > 1 refreshes earlier, < 1 later, 0 never early.
    double beta = 1.0;
    /// Refresh on a background thread; the electing reader gets the current value at once.
    bool background = false;
    /// Uniform in (0, 1]; inject a fixed or seeded source in tests.
    std::function<double()> random = random_unit_open_closed;
};

class XFetch {
public:
    XFetch() = default;
    explicit XFetch(XFetchOptions options) : options_(std::move(options)) {
        if (!options_.random) options_.random = random_unit_open_closed;
    }

    [[nodiscard]] bool refresh_early(const FreshHit& hit) {
        return xfetch_should_refresh(hit.remaining, hit.recompute_time, options_.beta,
                                     options_.random());
    }
    [[nodiscard]] LeaseWait lease_wait() const noexcept { return {}; }
    [[nodiscard]] bool refresh_in_background() const noexcept { return options_.background; }

    [[nodiscard]] const XFetchOptions& options() const noexcept { return options_; }

private:
    XFetchOptions options_{};
};

static_assert(StampedeGuard<XFetch>);

}  // namespace larder
