// Keeps leases alive while their loaders run. A loader slower than the lease TTL would
// otherwise lose its lease mid-load, letting a second process take it and load too. Every
// held lease is extended every lease_ttl / 3 by compare-and-expire (only the holder's own
// bytes are extended, never someone else's), for at most max_hold: a loader that hangs
// must not hold its key for ever. The extensions run on the cache's Keeper thread.
#pragma once

#include <atomic>
#include <chrono>
#include <cstdint>
#include <exception>
#include <string>

#include "larder/backend/backend.hpp"
#include "larder/policy/detail/keeper.hpp"

namespace larder::detail {

template <Backend B>
class LeaseKeeper {
public:
    using Hold = Keeper::Hold;

    LeaseKeeper(Keeper& keeper, B& backend, Millis lease_ttl, Millis max_hold)
        : keeper_(keeper), backend_(backend), lease_ttl_(lease_ttl), max_hold_(max_hold) {}

    LeaseKeeper(const LeaseKeeper&) = delete;
    LeaseKeeper& operator=(const LeaseKeeper&) = delete;

    /// Extends the lease until the returned object is destroyed, or max_hold passes.
    [[nodiscard]] Hold hold(const std::string& key, const std::string& lease) {
        const auto now = std::chrono::steady_clock::now();
        const auto until = max_hold_ >= std::chrono::duration_cast<Millis>(
                                            std::chrono::steady_clock::time_point::max() - now)
                               ? std::chrono::steady_clock::time_point::max()
                               : now + max_hold_;
        return keeper_.hold(lease_ttl_ / 3, [this, key, lease, until] {
            if (std::chrono::steady_clock::now() >= until) return;  // left to run out
            try {
                if (backend_.compare_and_expire(key, lease, lease_ttl_)) {
                    extensions_.fetch_add(1, std::memory_order_relaxed);
                }
            } catch (const std::exception&) {
                // Whatever the store threw, the lease runs out; the fill is fenced anyway.
            }
        });
    }

    /// Leases extended so far (for tests and monitoring).
    [[nodiscard]] std::uint64_t extensions() const {
        return extensions_.load(std::memory_order_relaxed);
    }

private:
    Keeper& keeper_;
    B& backend_;
    const Millis lease_ttl_;
    const Millis max_hold_;
    std::atomic<std::uint64_t> extensions_{0};
};

}  // namespace larder::detail
