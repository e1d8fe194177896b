// TTL jitter: entries written together should not expire together. The common
// `ttl + random(0, 60)` is `max_extra`; a `ratio` spreads proportionally instead
// (ttl * (1 ± ratio)); `floor` keeps a jittered TTL from dropping below a minimum.
#pragma once

#include <algorithm>
#include <cmath>

#include "larder/core/clock.hpp"
#include "larder/core/error.hpp"
#include "larder/core/random.hpp"

namespace larder {

struct TtlJitter {
    /// Uniform extra time added, in [0, max_extra].
    Millis max_extra{0};
    /// Uniform spread around the TTL, in [-ratio, +ratio] of it. 0 ≤ ratio < 1.
    double ratio = 0.0;
    /// The result never drops below this (nor below 1 ms).
    Millis floor{0};

    [[nodiscard]] bool enabled() const noexcept { return max_extra.count() > 0 || ratio > 0.0; }

    void validate() const {
        if (max_extra.count() < 0 || floor.count() < 0 || !(ratio >= 0.0 && ratio < 1.0)) {
            throw ConfigError("TtlJitter: need max_extra >= 0, floor >= 0 and 0 <= ratio < 1");
        }
    }

    /// The jittered TTL, drawn with `unit`, a uniform source in (0, 1].
    template <class UnitRandom>
    [[nodiscard]] Millis apply(Millis ttl, UnitRandom&& unit) const {
        double ms = static_cast<double>(ttl.count());
        if (ratio > 0.0) ms *= 1.0 + ratio * (2.0 * unit() - 1.0);
        if (max_extra.count() > 0)
            ms += std::floor(unit() * static_cast<double>(max_extra.count()));
        // Clamped before the conversion: a double past the integer range has no integer.
        ms = std::min(ms, static_cast<double>(max_ttl.count()));
        const auto result = static_cast<Millis::rep>(std::llround(ms));
        return saturated(Millis{std::max<Millis::rep>({result, floor.count(), 1})});
    }

    [[nodiscard]] Millis apply(Millis ttl) const {
        if (!enabled()) return saturated(std::max(ttl, floor));
        return apply(ttl, random_unit_open_closed);
    }
};

}  // namespace larder
