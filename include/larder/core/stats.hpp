// The one shape of every stats struct in larder: a plain aggregate of std::uint64_t
// counters (copy it, compare it, subtract two), described by a counter_set
// specialization (its metric family and each counter's name and help) so that an
// exporter (<larder/metrics/prometheus.hpp>) writes any of them without knowing it. A
// policy or backend counts into detail::StripedCounters: increments land on one of
// several cache-line-sized stripes picked per thread, so a hot read path never makes all
// cores write one line; snapshot() sums the stripes, locally, without I/O.
#pragma once

#include <array>
#include <atomic>
#include <concepts>
#include <cstddef>
#include <cstdint>
#include <string_view>

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

/// One counter of the stats struct S: what an exporter calls it.
template <class S>
struct CounterField {
    std::string_view name;  ///< snake_case, unique in S
    std::string_view help;  ///< one line
    std::uint64_t S::*member;
};

/// Specialized for each stats struct S with `static constexpr std::string_view family`
/// (the metric prefix: "cache", "write_behind", "redis", ...) and
/// `static constexpr std::array<CounterField<S>, N> fields`.
template <class S>
struct counter_set;

template <class S>
concept CounterStats = requires {
    { counter_set<S>::family } -> std::convertible_to<std::string_view>;
    counter_set<S>::fields.size();
};

/// Calls fn(field, value) for each counter of `stats`, in declaration order.
template <CounterStats S, class Fn>
void for_each_counter(const S& stats, Fn&& fn) {
    for (const auto& f : counter_set<S>::fields) fn(f, stats.*f.member);
}

namespace detail {

/// The counters behind a stats struct S: `add<&S::field>()` from any thread, snapshot()
/// sums the stripes into an S.
template <CounterStats S>
class StripedCounters {
public:
    template <auto Member>
    void add(std::uint64_t n = 1) noexcept {
        constexpr std::size_t i = index_of<Member>();
        stripes_[stripe_index(stripe_count)].values[i].fetch_add(n, std::memory_order_relaxed);
    }

    template <auto Member>
    [[nodiscard]] std::uint64_t get() const noexcept {
        return sum(index_of<Member>());
    }

    [[nodiscard]] S snapshot() const noexcept {
        S s{};
        for (std::size_t i = 0; i < fields.size(); ++i) s.*fields[i].member = sum(i);
        return s;
    }

private:
    static constexpr auto& fields = counter_set<S>::fields;
    static constexpr std::size_t stripe_count = 16;

    template <auto Member>
    static consteval std::size_t index_of() {
        for (std::size_t i = 0; i < fields.size(); ++i) {
            if (fields[i].member == Member) return i;
        }
        throw "not a counter of this stats struct";  // a compile error: consteval
    }

    [[nodiscard]] std::uint64_t sum(std::size_t i) const noexcept {
        std::uint64_t n = 0;
        for (const auto& s : stripes_) n += s.values[i].load(std::memory_order_relaxed);
        return n;
    }

    struct alignas(64) Stripe {
        std::array<std::atomic<std::uint64_t>, fields.size()> values{};
    };
    std::array<Stripe, stripe_count> stripes_{};
};

}  // namespace detail

/// What a cache's reads did, counted since the cache object was built.
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

template <>
struct counter_set<StatsSnapshot> {
    using S = StatsSnapshot;
    static constexpr std::string_view family = "cache";
    static constexpr std::array<CounterField<S>, 18> fields{{
        {"hits", "reads served from the cache (negative hits included)", &S::hits},
        {"negative_hits", "reads served a cached not-found", &S::negative_hits},
        {"misses", "reads that found nothing usable in the cache", &S::misses},
        {"loads", "loader calls", &S::loads},
        {"load_errors", "loader calls that threw", &S::load_errors},
        {"stale_served", "stale values served instead of an error or a wait", &S::stale_served},
        {"corrupt_values", "stored bytes that failed to decode", &S::corrupt_values},
        {"backend_errors", "store operations that failed or timed out", &S::backend_errors},
        {"fills", "values written to the cache after a load", &S::fills},
        {"fills_rejected", "fills fenced off by a concurrent invalidation", &S::fills_rejected},
        {"not_cached", "loads whose loader said not to cache them", &S::not_cached},
        {"too_large", "loaded values over max_value_bytes, not cached", &S::too_large},
        {"lease_waits", "reads that found another loader's lease", &S::lease_waits},
        {"coalesced", "callers that shared another caller's load", &S::coalesced},
        {"early_refreshes", "probabilistic refreshes before expiry", &S::early_refreshes},
        {"overdue_loads", "loads past max_load_time: served, not stored", &S::overdue_loads},
        {"invalidations", "keys invalidated through this cache", &S::invalidations},
        {"evictions", "entries the store dropped for space", &S::evictions},
    }};
};

}  // namespace larder
