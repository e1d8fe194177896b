// Version keys (`key = f'user:{user_id}:v{version}'`): readers read an entity's
// current version and use `base:v<version>` as the cache key; a writer bumps the version,
// which moves every reader to a new key at once, and the old keys expire by their TTL.
//
// A version kept with INCR restarts at 1 after the version key is evicted or Redis
// restarts, so `user:42:v1` comes back and serves whatever was cached under it long ago.
// Here a version is 64 random bits, created with SET NX when missing: a version made after
// the old one vanished never equals any earlier one (docs/invalidation.md argues the odds).
#pragma once

#include <charconv>
#include <chrono>
#include <cstdint>
#include <string>
#include <string_view>

#include "larder/backend/backend.hpp"
#include "larder/core/clock.hpp"
#include "larder/core/error.hpp"
#include "larder/core/keys.hpp"
#include "larder/core/random.hpp"

namespace larder {

struct VersionKeyOptions {
    /// The namespace of the version keys (not of the keys they return): a version key is
    /// `<prefix>m:ver` 0x1F `<base>` (docs/FORMAT.md), so no cache key can be one. Use the
    /// prefix of the cache the keys are for.
    std::string prefix{};
    /// How long a version lives without a bump; keep it longer than the entries' TTL (a
    /// version that expires only moves readers to a new key: safe, a miss).
    Millis ttl = std::chrono::hours(24);
    const Clock* clock = &SystemClock::instance();
};

template <Backend B>
class VersionKeys {
public:
    explicit VersionKeys(B& backend, VersionKeyOptions options = {})
        : backend_(backend), options_(std::move(options)), keys_(options_.prefix) {
        if (!options_.clock) options_.clock = &SystemClock::instance();
        if (options_.ttl.count() <= 0) throw ConfigError("VersionKeys: ttl must be positive");
    }

    /// The current version of `base`, created if it has none. One round trip when it
    /// exists. Throws BackendError when the store cannot be reached.
    [[nodiscard]] std::uint64_t current(std::string_view base) {
        const std::string key = version_key(base);
        for (int attempt = 0; attempt < 3; ++attempt) {
            const auto stored = backend_.get(key);
            if (auto v = parse(stored)) return *v;
            const std::uint64_t fresh = make_version();
            // Bytes that are not a version (planted, or damaged) are replaced, but only
            // exactly those: a version written meanwhile by another process survives.
            if (stored ? backend_.compare_and_set(key, stored->bytes, std::to_string(fresh),
                                                  options_.ttl)
                       : backend_.set_if_absent(key, std::to_string(fresh), options_.ttl)) {
                return fresh;
            }
        }
        throw BackendError("VersionKeys: the version of a key keeps vanishing");
    }

    /// The cache key for `base` at its current version: `base:v<version>`.
    [[nodiscard]] std::string key(std::string_view base) { return key_at(base, current(base)); }

    [[nodiscard]] static std::string key_at(std::string_view base, std::uint64_t version) {
        std::string out(base);
        out.append(":v").append(std::to_string(version));
        return out;
    }

    /// Moves readers of `base` to a new key; returns the new version.
    std::uint64_t bump(std::string_view base) {
        const std::uint64_t fresh = make_version();
        backend_.set(version_key(base), std::to_string(fresh), options_.ttl);
        return fresh;
    }

    /// The stored key holding the version of `base`.
    [[nodiscard]] std::string version_key(std::string_view base) const {
        return keys_.meta("ver", base);
    }

private:
    static std::optional<std::uint64_t> parse(const std::optional<StoredValue>& v) {
        if (!v) return std::nullopt;
        std::uint64_t out = 0;
        const char* end = v->bytes.data() + v->bytes.size();
        auto [ptr, ec] = std::from_chars(v->bytes.data(), end, out);
        if (ec != std::errc{} || ptr != end || out == 0) return std::nullopt;
        return out;
    }

    // 64 random bits: only equality matters, and a version made after the old one vanished
    // (eviction, restart, a clock step back) must never equal any earlier one.
    static std::uint64_t make_version() { return random_version(); }

    B& backend_;
    VersionKeyOptions options_;
    keys::Namespace keys_;
};

}  // namespace larder
