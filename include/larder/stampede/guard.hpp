// The StampedeGuard concept: how a read path behaves around a recompute. A policy asks
// its guard two questions and nothing else:
//  - on a fresh hit: refresh this value now, before it expires? (XFetch says sometimes)
//  - on finding another loader's lease: wait for its value, and how long? (Lock says yes)
// Guards hold no per-key state, so one guard serves every key of a cache. Compose them
// with Guards<A, B>: a refresh is elected if any guard elects it, and a waiter waits as
// long as the most patient guard says.
#pragma once

#include <algorithm>
#include <chrono>
#include <concepts>
#include <tuple>

#include "larder/core/clock.hpp"

namespace larder {

/// What a guard sees of a fresh hit.
struct FreshHit {
    /// Time until the value stops being fresh, from the envelope (the writer's clock).
    Millis remaining{0};
    /// How long the value took to compute (XFetch's delta), from its envelope.
    std::chrono::microseconds recompute_time{0};
};

/// How a reader that finds another loader's lease waits for its value. Waiters poll
/// with jittered exponential backoff; at `max_wait` they load without filling.
struct LeaseWait {
    Millis max_wait{0};  ///< 0: do not wait at all
    Millis first_backoff{2};
    Millis max_backoff{50};
    /// With a backend that announces lease ends (NotifiesLeaseEnds): a waiter sleeps until
    /// the announcement, and reads the key at least this often meanwhile (a holder that
    /// died announces nothing).
    Millis fallback_poll{100};
};

template <class G>
concept StampedeGuard = requires(G& guard, const FreshHit& hit) {
    { guard.refresh_early(hit) } -> std::same_as<bool>;
    { guard.lease_wait() } -> std::same_as<LeaseWait>;
    /// true: an elected early refresh runs on a background thread and the reader gets
    /// the current value at once.
    { guard.refresh_in_background() } -> std::same_as<bool>;
};

/// No waiting, no early refresh: in-process single-flight and fenced fills only.
struct NoGuard {
    [[nodiscard]] bool refresh_early(const FreshHit&) const noexcept { return false; }
    [[nodiscard]] LeaseWait lease_wait() const noexcept { return {}; }
    [[nodiscard]] bool refresh_in_background() const noexcept { return false; }
};

/// Several guards as one.
template <StampedeGuard... Gs>
class Guards {
public:
    Guards() = default;
    explicit Guards(Gs... guards) : guards_(std::move(guards)...) {}

    [[nodiscard]] bool refresh_early(const FreshHit& hit) {
        return std::apply([&](auto&... g) { return (g.refresh_early(hit) || ...); }, guards_);
    }

    [[nodiscard]] LeaseWait lease_wait() {
        LeaseWait longest{};
        std::apply(
            [&](auto&... g) {
                ((longest = std::max(longest, g.lease_wait(),
                                     [](const LeaseWait& a, const LeaseWait& b) {
                                         return a.max_wait < b.max_wait;
                                     })),
                 ...);
            },
            guards_);
        return longest;
    }

    [[nodiscard]] bool refresh_in_background() {
        return std::apply([](auto&... g) { return (g.refresh_in_background() || ...); }, guards_);
    }

    template <class G>
    [[nodiscard]] G& get() noexcept {
        return std::get<G>(guards_);
    }

private:
    std::tuple<Gs...> guards_;
};

static_assert(StampedeGuard<NoGuard>);

}  // namespace larder
