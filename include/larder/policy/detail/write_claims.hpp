// Keeps a flusher's claims alive while its batch writer runs. A claim has a deadline so that
// the entries of a flusher that died are re-queued by any other; a live flusher whose
// writer is merely slow must not lose its claims that way, or a second flusher would write
// the same keys at the same time. Every held claim is extended every claim_ttl / 3, on
// the cache's Keeper thread (the one that extends its leases). The store extends only claims still
// held under their token and not yet expired: a claim that ran out (the process stalled, or Redis
// paused, for longer than claim_ttl) is forfeit, and its settle will be refused.
#pragma once

#include <algorithm>
#include <atomic>
#include <cstdint>
#include <exception>
#include <string>
#include <utility>
#include <vector>

#include "larder/core/clock.hpp"
#include "larder/core/error.hpp"
#include "larder/core/random.hpp"
#include "larder/policy/detail/keeper.hpp"

namespace larder::detail {

template <class Store>
class ClaimKeeper {
public:
    using Hold = Keeper::Hold;

    ClaimKeeper(Keeper& keeper, Store& store, Millis claim_ttl)
        : keeper_(keeper), store_(store), claim_ttl_(claim_ttl) {}

    ClaimKeeper(const ClaimKeeper&) = delete;
    ClaimKeeper& operator=(const ClaimKeeper&) = delete;

    /// Extends the claims of `keys` under `token` until the returned object is destroyed.
    [[nodiscard]] Hold hold(std::vector<std::string> keys, std::uint64_t token) {
        return keeper_.hold(claim_ttl_ / 3, [this, keys = std::move(keys), token] {
            try {
                const std::size_t n = store_.extend(keys, claim_ttl_, token);
                forfeited_.fetch_add(keys.size() - std::min(n, keys.size()),
                                     std::memory_order_relaxed);
                extensions_.fetch_add(1, std::memory_order_relaxed);
            } catch (const std::exception&) {
                // Whatever the store threw, the claims may run out: the entries are then
                // flushed again by someone else, which a version-fenced database write
                // makes harmless.
            }
        });
    }

    /// Extension rounds that reached the store (for tests and monitoring).
    [[nodiscard]] std::uint64_t extensions() const {
        return extensions_.load(std::memory_order_relaxed);
    }

    /// Keys whose claim the store would not extend: it had expired, or another flusher
    /// held the key.
    [[nodiscard]] std::uint64_t forfeited() const {
        return forfeited_.load(std::memory_order_relaxed);
    }

private:
    Keeper& keeper_;
    Store& store_;
    const Millis claim_ttl_;
    std::atomic<std::uint64_t> extensions_{0};
    std::atomic<std::uint64_t> forfeited_{0};
};

/// Exponential backoff with "equal jitter": half the delay is fixed, half random, so
/// retries of a batch that failed together spread out but never come back at once.
/// `attempt` is 1 for the first retry.
inline Millis retry_delay(std::uint32_t attempt, Millis first, Millis max) {
    const std::int64_t cap = std::max<std::int64_t>(max.count(), 0);
    std::int64_t d = std::max<std::int64_t>(first.count(), 0);
    for (std::uint32_t i = 1; i < attempt && d < cap; ++i) d *= 2;
    d = std::min(d, cap);
    if (d <= 1) return Millis{d};
    return Millis{d / 2 + random_between(0, d - d / 2)};
}

}  // namespace larder::detail
