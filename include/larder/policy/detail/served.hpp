// What a read tells a cache in front of its policy (Near's L1) about the value it
// returned: the versions it is stamped with in the store, whether it may be kept at all,
// and how long it stays fresh. Every function takes the report by pointer: a plain get()
// passes none, and pays nothing.
#pragma once

#include <optional>
#include <span>
#include <string>
#include <vector>

#include "larder/core/clock.hpp"
#include "larder/policy/detail/read.hpp"
#include "larder/policy/detail/tag_versions.hpp"

namespace larder::detail {

/// Which versions the value a read returned is stamped with in the store: what a cache
/// in front of the policy must drop it on. `known` is false when the read cannot tell (it
/// shared another caller's load, its loader chose tags, or the value was not stored).
struct Served {
    bool known = false;
    std::vector<std::string> names{};
    /// false: the loader said not to cache the value.
    bool cacheable = true;
    /// How long the value stays fresh, when the read can tell (0: it is stale).
    std::optional<Millis> fresh_for{};
};

/// The value is stored stamped with `stamped`.
inline void report_stamped(Served* served, std::span<const TagVersion> stamped,
                           std::optional<Millis> fresh_for = std::nullopt) {
    if (!served) return;
    served->known = true;
    served->names.clear();
    for (const auto& t : stamped) served->names.push_back(t.name);
    served->fresh_for = fresh_for;
}

/// The value is the one the read found.
template <class T>
void report_found(Served* served, const Read<T>& found) {
    report_stamped(served, found.stamped,
                   found.state == Read<T>::fresh ? found.fresh_for : Millis{0});
}

/// The value at hand is served while a refresh may replace its entry with one stamped
/// with `names` (the entry's own and the caller's) - and more, if the loader may choose
/// tags (`adaptive`): a copy kept elsewhere must go on a bump of any of them.
template <class T>
void report_refreshing(Served* served, const Read<T>& found, std::span<const std::string> names,
                       bool adaptive) {
    report_found(served, found);
    if (!served) return;
    served->names.assign(names.begin(), names.end());
    if (adaptive) served->known = false;
}

/// A value this caller loads is stamped with `stamp` - and, if its loader may choose
/// tags (`adaptive`), with more that nobody knows yet.
inline void report_load(Served* served, std::span<const TagVersion> stamp, bool adaptive) {
    report_stamped(served, stamp);
    if (served && adaptive) served->known = false;
}

/// What this caller's load decided about its entry: whether it may be kept at all, and
/// the shortest it stays fresh.
inline void report_loaded(Served* served, bool cacheable, Millis fresh_for) {
    if (!served) return;
    served->cacheable = cacheable;
    served->fresh_for = fresh_for;
}

/// Nothing is known of what the store holds for the value (another caller's load was
/// shared, or the value was not stored): nothing to keep in a copy elsewhere.
inline void report_unknown(Served* served) {
    if (served) served->known = served->cacheable = false;
}

}  // namespace larder::detail
