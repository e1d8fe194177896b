// Options checked once: a cache's when it is built, a call's at each get. Durations are
// saturated here (past max_ttl they mean "as long as a store keeps anything"), so that no
// sum of them further on can overflow.
#pragma once

#include <algorithm>
#include <chrono>
#include <optional>
#include <string>

#include "larder/core/clock.hpp"
#include "larder/core/error.hpp"
#include "larder/core/keys.hpp"
#include "larder/policy/options.hpp"

namespace larder::detail {

/// A cache's options, checked and completed (clock, name, tag_ttl). Throws ConfigError.
inline CacheAsideOptions validated(CacheAsideOptions o) {
    if (!o.clock) o.clock = &SystemClock::instance();
    if (o.name.empty()) o.name = o.key_prefix.empty() ? "default" : o.key_prefix;
    (void)keys::Namespace(o.key_prefix);  // throws ConfigError on a bad prefix
    o.jitter.validate();
    if (o.ttl.count() <= 0 || o.negative_ttl.count() <= 0 || o.lease_ttl.count() <= 0 ||
        o.max_load_time.count() <= 0) {
        throw ConfigError(
            "larder: ttl, negative_ttl, lease_ttl and max_load_time must be positive");
    }
    if (o.grace.count() < 0 || o.tag_ttl.count() < 0) {
        throw ConfigError("larder: grace and tag_ttl must not be negative");
    }
    o.ttl = saturated(o.ttl);
    o.negative_ttl = saturated(o.negative_ttl);
    o.grace = saturated(o.grace);
    o.lease_ttl = saturated(o.lease_ttl);
    o.max_load_time = saturated(o.max_load_time);
    o.tag_ttl = saturated(o.tag_ttl);
    if (o.tag_ttl.count() == 0) {
        // A version must outlive every entry stamped with it: twice the longest entry.
        const double spread = o.jitter.ratio * static_cast<double>(o.ttl.count());
        const Millis longest_jitter = saturated_sum(
            o.jitter.max_extra,
            Millis{static_cast<Millis::rep>(std::min(spread, double(max_ttl.count())))});
        const Millis longest_entry =
            saturated_sum(saturated_sum(std::max(o.ttl, o.negative_ttl), longest_jitter), o.grace);
        o.tag_ttl = saturated_sum(longest_entry, longest_entry);
    }
    return o;
}

/// What one call or load decides of an entry's times; unset: the cache's.
struct EntryTimes {
    std::optional<Millis> ttl{};
    std::optional<Millis> negative_ttl{};
    std::optional<Millis> grace{};
};

using SteadyTime = std::chrono::steady_clock::time_point;
inline constexpr SteadyTime no_deadline = SteadyTime::max();

/// What one get() asks, resolved against the cache's options.
struct Call {
    EntryTimes times{};                 ///< the call's TTL and grace
    SteadyTime deadline = no_deadline;  ///< the hard timeout's instant
    SteadyTime soft_deadline = no_deadline;
};

/// The call's options over the cache's. `detached_loader`: the loader owns what it
/// captures, so it may outlive the call (a timeout needs that). Throws ConfigError.
inline Call resolve(const CallOptions& o, const CacheAsideOptions& cache, bool detached_loader) {
    auto checked = [](std::optional<Millis> d, bool zero_ok, const char* what) {
        if (d && (d->count() < 0 || (!zero_ok && d->count() == 0))) {
            throw ConfigError(std::string("larder: the call's ") + what +
                              (zero_ok ? " must not be negative" : " must be positive"));
        }
        return d ? std::optional<Millis>(saturated(*d)) : std::nullopt;
    };
    Call call;
    call.times.ttl = checked(o.ttl, false, "ttl");
    call.times.negative_ttl = checked(o.negative_ttl, false, "negative_ttl");
    call.times.grace = checked(o.grace, true, "grace");
    const Millis soft = checked(o.soft_timeout, true, "soft_timeout").value_or(cache.soft_timeout);
    const Millis hard = checked(o.hard_timeout, true, "hard_timeout").value_or(cache.hard_timeout);
    if (soft.count() == 0 && hard.count() == 0) return call;
    if (!detached_loader) {
        throw ConfigError(
            "larder: a loader timeout lets the load outlive the call, so the loader must own "
            "what it captures: wrap it in larder::detached()");
    }
    const SteadyTime now = std::chrono::steady_clock::now();
    if (hard.count() > 0) call.deadline = now + hard;
    // With a value at hand, a caller waits the shorter of the two.
    const Millis at_hand = soft.count() > 0 && hard.count() > 0 ? std::min(soft, hard)
                           : soft.count() > 0                   ? soft
                                                                : hard;
    call.soft_deadline = now + at_hand;
    return call;
}

}  // namespace larder::detail
