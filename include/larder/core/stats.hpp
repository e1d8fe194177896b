// Counters every strategy keeps. Increments land on one of several cache-line-sized
// stripes picked per thread, so a hot read path never makes all cores write one line;
// snapshot() sums the stripes.
#pragma once

#include <array>
#include <atomic>
#include <cstddef>
#include <cstdint>

namespace larder {

namespace detail {

/// The calling thread's number in the process, in the order threads first asked: threads
/// that run together get consecutive numbers, so they spread over stripes and slots
/// without the collisions a hash of their ids would have.
[[nodiscard]] inline std::size_t thread_ordinal() noexcept {
    static std::atomic<std::size_t> next{0};
    thread_local const std::size_t ordinal = next.fetch_add(1, std::memory_order_relaxed);
    return ordinal;
}

/// The calling thread's stripe among `count`: fixed per thread.
[[nodiscard]] inline std::size_t stripe_index(std::size_t count) noexcept {
    return thread_ordinal() % count;
}

/// One counter that many threads bump: each thread adds to its own cache line, reads sum
/// them (as Stats does for a whole set of counters).
class StripedCount {
public:
    void add(std::uint64_t n = 1) noexcept {
        stripes_[stripe_index(stripes_.size())].value.fetch_add(n, std::memory_order_relaxed);
    }

    [[nodiscard]] std::uint64_t load() const noexcept {
        std::uint64_t sum = 0;
        for (const auto& s : stripes_) sum += s.value.load(std::memory_order_relaxed);
        return sum;
    }

private:
    struct alignas(64) Stripe {
        std::atomic<std::uint64_t> value{0};
    };
    std::array<Stripe, 16> stripes_{};
};

}  // namespace detail

/// What happened, counted since the cache object was built. A plain value: copy it,
/// compare it, subtract two of them.
struct StatsSnapshot {
    std::uint64_t hits = 0;             ///< served from the cache (negative hits included)
    std::uint64_t negative_hits = 0;    ///< served a cached "not found"
    std::uint64_t misses = 0;           ///< nothing usable in the cache
    std::uint64_t loads = 0;            ///< loader calls made by this object
    std::uint64_t load_errors = 0;      ///< loader calls that threw
    std::uint64_t stale_served = 0;     ///< a stale value served instead of an error or wait
    std::uint64_t corrupt_values = 0;   ///< stored bytes that failed to decode
    std::uint64_t backend_errors = 0;   ///< store operations that failed or timed out
    std::uint64_t fills = 0;            ///< values written to the cache after a load
    std::uint64_t fills_rejected = 0;   ///< fills fenced off by a concurrent invalidation
    std::uint64_t not_cached = 0;       ///< loads whose loader said not to cache them
    std::uint64_t too_large = 0;        ///< loaded values over max_value_bytes, not cached
    std::uint64_t lease_waits = 0;      ///< reads that found another loader's lease
    std::uint64_t coalesced = 0;        ///< callers that shared another caller's load
    std::uint64_t early_refreshes = 0;  ///< probabilistic refreshes before expiry
    std::uint64_t overdue_loads = 0;    ///< loads past max_load_time: served, not stored
    std::uint64_t invalidations = 0;    ///< keys invalidated through this object
    std::uint64_t evictions = 0;        ///< entries the store dropped for space (if it says)

    friend bool operator==(const StatsSnapshot&, const StatsSnapshot&) = default;
};

enum class Counter : std::size_t {
    hits,
    negative_hits,
    misses,
    loads,
    load_errors,
    stale_served,
    corrupt_values,
    backend_errors,
    fills,
    fills_rejected,
    not_cached,
    too_large,
    lease_waits,
    coalesced,
    early_refreshes,
    overdue_loads,
    invalidations,
    count_
};

class Stats {
public:
    void add(Counter c, std::uint64_t n = 1) noexcept {
        stripes_[detail::stripe_index(stripe_count)].values[static_cast<std::size_t>(c)].fetch_add(
            n, std::memory_order_relaxed);
    }

    [[nodiscard]] std::uint64_t get(Counter c) const noexcept {
        std::uint64_t sum = 0;
        for (const auto& s : stripes_) {
            sum += s.values[static_cast<std::size_t>(c)].load(std::memory_order_relaxed);
        }
        return sum;
    }

    [[nodiscard]] StatsSnapshot snapshot() const noexcept {
        StatsSnapshot s;
        s.hits = get(Counter::hits);
        s.negative_hits = get(Counter::negative_hits);
        s.misses = get(Counter::misses);
        s.loads = get(Counter::loads);
        s.load_errors = get(Counter::load_errors);
        s.stale_served = get(Counter::stale_served);
        s.corrupt_values = get(Counter::corrupt_values);
        s.backend_errors = get(Counter::backend_errors);
        s.fills = get(Counter::fills);
        s.fills_rejected = get(Counter::fills_rejected);
        s.not_cached = get(Counter::not_cached);
        s.too_large = get(Counter::too_large);
        s.lease_waits = get(Counter::lease_waits);
        s.coalesced = get(Counter::coalesced);
        s.early_refreshes = get(Counter::early_refreshes);
        s.overdue_loads = get(Counter::overdue_loads);
        s.invalidations = get(Counter::invalidations);
        return s;
    }

private:
    static constexpr std::size_t stripe_count = 16;
    static constexpr std::size_t counter_count = static_cast<std::size_t>(Counter::count_);

    struct alignas(64) Stripe {
        std::array<std::atomic<std::uint64_t>, counter_count> values{};
    };

    std::array<Stripe, stripe_count> stripes_{};
};

}  // namespace larder
