// The versions an entry is stamped with. Invalidating a tag (or anything an invalidator
// names) gives its version a new random value; an entry is served only while every
// version it carries is the one it was stamped with. This file reads, creates, bumps and
// keeps those versions alive; which versions an entry depends on is the invalidator's
// business, and checking an entry against them the read path's (admit).
#pragma once

#include <algorithm>
#include <charconv>
#include <cstdint>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "larder/backend/backend.hpp"
#include "larder/core/error.hpp"
#include "larder/core/keys.hpp"
#include "larder/core/random.hpp"
#include "larder/core/stats.hpp"

namespace larder::detail {

struct TagVersion {
    std::string name;
    std::uint64_t version = 0;  ///< 0: the tag has no version (yet)
};

template <Backend B>
class TagVersions {
public:
    /// The version whose value every invalidation changes before it bumps another: what
    /// a load that chose its tags after loading checks (add_chosen).
    static constexpr std::string_view bumps_name =
        "\x1e"
        "bumps";

    /// `ttl`: how long a version lives past the last write of an entry stamped with it.
    TagVersions(B& backend, const keys::Namespace& keys, Millis ttl,
                StripedCounters<StatsSnapshot>& stats)
        : backend_(backend), keys_(keys), ttl_(ttl), stats_(stats) {}

    /// The stored key of a version (docs/FORMAT.md, "Keys").
    [[nodiscard]] std::string key(std::string_view name) const { return keys_.meta(role, name); }

    /// The version name a stored version key holds; nullopt for any other key.
    [[nodiscard]] std::optional<std::string_view> name_of(std::string_view stored) const {
        const std::string none = keys_.meta(role, "");
        if (!stored.starts_with(none)) return std::nullopt;
        return stored.substr(none.size());
    }

    /// A stored version's value; 0 for none, and for bytes that are no version.
    static std::uint64_t parse(const std::optional<StoredValue>& v) {
        if (!v) return 0;
        std::uint64_t out = 0;
        const auto* end = v->bytes.data() + v->bytes.size();
        auto [ptr, ec] = std::from_chars(v->bytes.data(), end, out);
        if (ec != std::errc{} || ptr != end) return 0;
        return out;
    }

    /// The current versions of `names`, created where missing. Throws BackendError.
    std::vector<TagVersion> current(std::span<const std::string> names) {
        std::vector<TagVersion> versions;
        try {
            versions = read(names);
        } catch (const BackendError&) {
            stats_.add<&StatsSnapshot::backend_errors>();
            throw;
        }
        if (!create_missing(versions)) {
            throw BackendError("larder: cannot create tag versions");
        }
        return versions;
    }

    /// The versions of `names` as stored now (0 where missing), in one command. Throws
    /// BackendError (uncounted: the caller decides what a failure is).
    std::vector<TagVersion> read(std::span<const std::string> names) {
        std::vector<std::string> keys;
        keys.reserve(names.size());
        for (const auto& n : names) keys.push_back(key(n));
        const auto stored = read_values(backend_, keys);
        std::vector<TagVersion> versions;
        versions.reserve(names.size());
        for (std::size_t i = 0; i < names.size(); ++i) {
            versions.push_back(TagVersion{names[i], parse(stored[i])});
        }
        return versions;
    }

    /// Gives each version that is 0 a value: a new one, or the one another writer created
    /// first. false when one could not be had (the store failed, or the key vanished
    /// again meanwhile): nothing may then be stamped with them.
    bool create_missing(std::vector<TagVersion>& versions) {
        return create_missing(versions, ttl_);
    }

    bool create_missing(std::vector<TagVersion>& versions, Millis ttl) {
        for (auto& t : versions) {
            if (t.version != 0) continue;
            const std::string k = key(t.name);
            try {
                const std::uint64_t fresh = random_version();
                if (backend_.set_if_absent(k, std::to_string(fresh), ttl)) {
                    t.version = fresh;
                    continue;
                }
                const auto stored = backend_.get(k);
                if (const auto v = parse(stored); v != 0) {
                    t.version = v;  // another writer created it first
                    continue;
                }
                if (!stored) return false;  // gone again meanwhile: next time
                // Bytes that are no version: no entry can be stamped with them, so
                // replacing them (only them) is a bump, and the version works again.
                stats_.add<&StatsSnapshot::corrupt_values>();
                if (!backend_.compare_and_set(k, stored->bytes, std::to_string(fresh), ttl)) {
                    return false;
                }
                t.version = fresh;
            } catch (const BackendError&) {
                stats_.add<&StatsSnapshot::backend_errors>();
                return false;
            }
        }
        return true;
    }

    /// Gives the version `name` a new value. The bump counter moves first: a load that
    /// chose its tags only after loading, and reads their versions then, sees the
    /// counter moved if it could see the new version (docs/adaptive.md). Throws
    /// BackendError.
    void bump(std::string_view name) {
        try {
            backend_.set(key(bumps_name), std::to_string(random_version()), no_expiry);
            backend_.set(key(name), std::to_string(random_version()), ttl_);
        } catch (const BackendError&) {
            stats_.add<&StatsSnapshot::backend_errors>();
            throw;
        }
    }

    /// The bump counter now (0: none, or unreadable). Part of a lease's fence: two readers
    /// that saw the same lease, versions and counter saw no invalidation between them, of
    /// the tags they passed or of any other (an entry may carry tags its readers do not).
    std::uint64_t bumps() noexcept {
        try {
            return parse(read_value(backend_, key(bumps_name)));
        } catch (const BackendError&) {
            stats_.add<&StatsSnapshot::backend_errors>();
        } catch (...) {
        }
        return 0;
    }

    /// A tag outlives every entry stamped with it: each write of such an entry extends the
    /// tag's version (only that version: a newer one is left as it is) to the versions'
    /// TTL, which is longer than any entry lives. A hot tag then never expires under its
    /// entries.
    void keep_alive(std::span<const TagVersion> stamp) noexcept {
        for (const auto& t : stamp) {
            try {
                backend_.compare_and_expire(key(t.name), std::to_string(t.version), ttl_);
            } catch (const BackendError&) {
                stats_.add<&StatsSnapshot::backend_errors>();
            } catch (...) {
            }
        }
    }

    /// Adds to `stamp` the versions `names` a loader chose once it had loaded. They were
    /// not read before the load, so they are read now - and then the bump counter, which
    /// every invalidation moves before it bumps a version. If the counter is still what
    /// it was before the load (`bumps_before`), no version was bumped since, and the
    /// versions read are the ones the load saw; otherwise false: the fill is given up (the
    /// load may have read the row before a change whose bump this read already sees).
    bool add_chosen(std::span<const std::string> names, std::vector<TagVersion>& stamp,
                    std::uint64_t bumps_before) {
        if (bumps_before == 0) return false;
        std::vector<std::string> unstamped;
        for (const auto& n : names) {
            const bool stamped = std::any_of(stamp.begin(), stamp.end(),
                                             [&](const TagVersion& t) { return t.name == n; });
            if (!stamped && std::find(unstamped.begin(), unstamped.end(), n) == unstamped.end()) {
                unstamped.push_back(n);
            }
        }
        if (unstamped.empty()) return true;
        try {
            std::vector<TagVersion> added = read(unstamped);
            // Created before the counter is read: a bump racing the creation shows there.
            if (!create_missing(added)) return false;
            if (parse(read_value(backend_, key(bumps_name))) != bumps_before) return false;
            stamp.insert(stamp.end(), added.begin(), added.end());
        } catch (const BackendError&) {
            stats_.add<&StatsSnapshot::backend_errors>();
            return false;
        }
        return true;
    }

private:
    static constexpr std::string_view role = "v";

    B& backend_;
    const keys::Namespace& keys_;
    const Millis ttl_;
    StripedCounters<StatsSnapshot>& stats_;
};

}  // namespace larder::detail
