// What one store read found, and the two checks every read passes before anything is
// served: classify() sorts the bytes by the envelope's own freshness (the store's TTL
// plays no part), admit() serves an entry only while every version it was stamped with
// is still current.
#pragma once

#include <algorithm>
#include <chrono>
#include <cstdint>
#include <optional>
#include <span>
#include <string>
#include <utility>
#include <vector>

#include "larder/backend/backend.hpp"
#include "larder/backend/lease_notices.hpp"
#include "larder/core/clock.hpp"
#include "larder/core/envelope.hpp"
#include "larder/core/stats.hpp"
#include "larder/policy/detail/tag_versions.hpp"

namespace larder::detail {

/// One store read, classified and admitted.
template <class T>
struct Read {
    enum State {
        fresh,    ///< a value or a cached "not found", still fresh
        stale,    ///< a value past its freshness, within the grace period
        absent,   ///< nothing usable there: this caller may lease and fill
        leased,   ///< another loader holds the key
        unknown,  ///< the store failed: load, but do not fill
    } state = absent;
    bool negative = false;     ///< the value is a cached "not found"
    std::optional<T> value{};  ///< fresh or stale value
    /// What is stored now: the value (a refresh fences on it), another loader's lease
    /// (deciding whether to share its load), or bytes a lease may replace (expired,
    /// corrupt, or no longer admitted); empty when nothing is stored.
    std::string bytes{};
    bool present = false;  ///< something is stored: `bytes` (which may be empty)
    Millis fresh_for{0};   ///< time left until stale
    std::chrono::microseconds recompute_time{0};
    std::vector<TagVersion> stamped{};  ///< the entry's own tags, as written
    std::uint64_t bumps = 0;            ///< the bump counter, when read with it
    LeaseNotices::Mark mark{};          ///< the lease notices heard before the read

    [[nodiscard]] bool servable() const noexcept { return state == fresh || state == stale; }

    /// What a lease taken after this read replaces: the bytes found, or nothing.
    [[nodiscard]] const std::string* replaced() const noexcept {
        return present ? &bytes : nullptr;
    }
};

/// Sorts what the store holds (nothing: absent) by its envelope, as of `clock`'s now. `decode`
/// turns a value envelope into a T, or nullopt when this cache cannot read it. Bytes that
/// cannot be read are a miss (counted as corrupt_values) whose bytes a lease may replace:
/// only while they are still the same bytes, so a good value written meanwhile survives.
template <class T, class Decode>
Read<T> classify(std::optional<StoredValue> stored, const Clock& clock, const Decode& decode,
                 StripedCounters<StatsSnapshot>& stats) {
    using R = Read<T>;
    if (!stored) return R{.state = R::absent};
    auto corrupt = [&] {
        stats.add<&StatsSnapshot::corrupt_values>();
        return R{.state = R::absent, .bytes = std::move(stored->bytes), .present = true};
    };
    const auto env = envelope::parse(stored->bytes);
    if (!env) return corrupt();
    const auto& h = env->header;
    if (h.kind == EntryKind::lease) {
        // Whose lease it is decides joining its load.
        return R{.state = R::leased, .bytes = std::move(stored->bytes), .present = true};
    }

    R r{.present = true};
    r.recompute_time = h.recompute_time;
    const TimePoint now = clock.now();
    const bool fresh_while_stored = h.fresh_until == TimePoint{};
    // Compared before subtracting: a hostile fresh_until must not overflow.
    r.fresh_for = fresh_while_stored    ? Millis::max()
                  : h.fresh_until > now ? h.fresh_until - now
                                        : Millis{0};
    if (r.fresh_for.count() > 0) {
        r.state = R::fresh;
    } else if (h.grace_until == TimePoint{} || now < h.grace_until) {
        r.state = R::stale;
    } else {
        // Past its grace, and the store (whose clock may lag ours) still has it.
        r.state = R::absent;
        r.bytes = std::move(stored->bytes);
        return r;
    }
    if (h.kind == EntryKind::not_found) {
        r.negative = true;
    } else {
        r.value = decode(*env);
        if (!r.value) return corrupt();
    }
    if (env->tag_count > 0) {
        r.stamped.reserve(env->tag_count);
        envelope::for_each_tag(*env, [&](std::string_view name, std::uint64_t version) {
            r.stamped.push_back(TagVersion{std::string(name), version});
        });
    }
    r.bytes = std::move(stored->bytes);
    return r;
}

/// The one admission check: an entry is served only while every tag it was stamped with
/// still has the version it was stamped with. `known` holds versions read along with the
/// values; the others are read in one more command. An entry not admitted becomes a miss
/// whose bytes a lease may replace. Throws BackendError.
template <class T, Backend B>
void admit(std::span<Read<T>> reads, std::span<const TagVersion> known, TagVersions<B>& versions) {
    auto find = [](std::span<const TagVersion> in, const std::string& name) -> const TagVersion* {
        for (const auto& t : in) {
            if (t.name == name) return &t;
        }
        return nullptr;
    };
    std::vector<std::string> unknown;
    for (const auto& r : reads) {
        for (const auto& t : r.stamped) {
            if (!find(known, t.name) &&
                std::find(unknown.begin(), unknown.end(), t.name) == unknown.end()) {
                unknown.push_back(t.name);
            }
        }
    }
    const std::vector<TagVersion> more =
        unknown.empty() ? std::vector<TagVersion>{} : versions.read(unknown);
    for (auto& r : reads) {
        if (r.stamped.empty() || !r.servable()) continue;
        const bool current = std::all_of(r.stamped.begin(), r.stamped.end(), [&](const auto& t) {
            const TagVersion* now = find(known, t.name);
            if (!now) now = find(more, t.name);
            return now && now->version != 0 && now->version == t.version;
        });
        if (!current) {
            r.state = Read<T>::absent;
            r.value.reset();
            r.negative = false;
        }
    }
}

}  // namespace larder::detail
