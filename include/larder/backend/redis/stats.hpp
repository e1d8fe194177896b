// RedisBackendStats: what one RedisBackend (its pool, its connections, its scripts) has
// counted, and the counters they count into.
#pragma once

#include <array>
#include <cstdint>
#include <string_view>

#include "larder/core/stats.hpp"

namespace larder {

/// What one RedisBackend has done since it was built. A plain value: copy it, subtract two.
struct RedisBackendStats {
    std::uint64_t round_trips = 0;  ///< requests sent; a pipeline counts once
    std::uint64_t errors = 0;       ///< calls that threw BackendError (not fast fails)
    std::uint64_t timeouts = 0;     ///< of those, TimeoutErrors
    /// Of those, timeouts while the reply was arriving (a large exchange, not a sick
    /// server): not counted by the circuit breaker.
    std::uint64_t payload_timeouts = 0;
    std::uint64_t connects = 0;          ///< connections opened
    std::uint64_t connect_failures = 0;  ///< connection attempts that failed
    std::uint64_t breaker_opens = 0;     ///< times the circuit breaker opened
    std::uint64_t short_circuited = 0;   ///< calls refused by the open breaker, without I/O
    std::uint64_t script_loads = 0;      ///< scripts (re)loaded: first use, after NOSCRIPT
    /// CLIENT TRACKING commands sent to point a pooled connection at a RedisTrackingBus's
    /// subscriber (or to stop tracking): one per connection per subscriber (re)connect.
    std::uint64_t tracking_redirects = 0;
    /// Of those, refused by Redis (an ACL without CLIENT): the call threw BackendError.
    std::uint64_t tracking_refusals = 0;
    /// Sentinel: +switch-master announcements followed.
    std::uint64_t primary_switches = 0;

    friend bool operator==(const RedisBackendStats&, const RedisBackendStats&) = default;
};

template <>
struct counter_set<RedisBackendStats> {
    using S = RedisBackendStats;
    static constexpr std::string_view family = "redis";
    static constexpr std::array<CounterField<S>, 12> fields{{
        {"round_trips", "requests sent; a pipeline counts once", &S::round_trips},
        {"errors", "calls that threw BackendError", &S::errors},
        {"timeouts", "calls that timed out", &S::timeouts},
        {"payload_timeouts", "timeouts while the reply was arriving", &S::payload_timeouts},
        {"connects", "connections opened", &S::connects},
        {"connect_failures", "connection attempts that failed", &S::connect_failures},
        {"breaker_opens", "times the circuit breaker opened", &S::breaker_opens},
        {"short_circuited", "calls refused by the open breaker", &S::short_circuited},
        {"script_loads", "scripts loaded or reloaded", &S::script_loads},
        {"tracking_redirects", "CLIENT TRACKING commands sent", &S::tracking_redirects},
        {"tracking_refusals", "CLIENT TRACKING commands refused", &S::tracking_refusals},
        {"primary_switches", "Sentinel primary switches followed", &S::primary_switches},
    }};
};

namespace redis_detail {

/// Counters shared by every connection of one backend; read by RedisBackend::stats().
using Counters = detail::StripedCounters<RedisBackendStats>;

}  // namespace redis_detail

}  // namespace larder
