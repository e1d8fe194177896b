// Key helpers shared by the strategies: the Redis Cluster hash-slot rule, and a cache's
// key layout (Namespace): callers' entries and larder's own keys apart, and sibling keys
// (a refresh lease, a write lease) in the same slot as the entry they serve.
#pragma once

#include <array>
#include <cstdint>
#include <optional>
#include <string>
#include <string_view>

#include "larder/core/error.hpp"

namespace larder::keys {

/// The Redis Cluster hash tag of a key: the part between the first '{' and the next '}',
/// when that part is not empty; otherwise the whole key.
[[nodiscard]] constexpr std::string_view hash_tag(std::string_view key) noexcept {
    const auto open = key.find('{');
    if (open == std::string_view::npos) return key;
    const auto close = key.find('}', open + 1);
    if (close == std::string_view::npos || close == open + 1) return key;
    return key.substr(open + 1, close - open - 1);
}

/// CRC16-CCITT (XMODEM), the checksum Redis Cluster hashes keys with.
[[nodiscard]] constexpr std::uint16_t crc16(std::string_view bytes) noexcept {
    std::uint16_t crc = 0;
    for (const char c : bytes) {
        crc = static_cast<std::uint16_t>(crc ^ (static_cast<unsigned char>(c) << 8));
        for (int bit = 0; bit < 8; ++bit) {
            crc = static_cast<std::uint16_t>((crc & 0x8000) ? (crc << 1) ^ 0x1021 : crc << 1);
        }
    }
    return crc;
}

/// The Redis Cluster slot of a key (0 to 16383).
[[nodiscard]] constexpr std::uint16_t slot(std::string_view key) noexcept {
    return static_cast<std::uint16_t>(crc16(hash_tag(key)) & 0x3FFF);
}

namespace detail {

// For each slot, a two-byte string without braces that hashes to it: the hash tag of a
// sibling whose key cannot be wrapped in braces as it is. Two bytes reach every slot
// (tests/regression_test.cpp checks the whole table).
inline const std::array<std::string, 16384>& tags_by_slot() {
    static const std::array<std::string, 16384> table = [] {
        std::array<std::string, 16384> t{};
        std::size_t filled = 0;
        auto offer = [&](const std::string& s) {
            auto& entry = t[crc16(s) & 0x3FFF];
            if (entry.empty()) {
                entry = s;
                ++filled;
            }
        };
        auto usable = [](int c) { return c != '{' && c != '}'; };
        for (int a = 0; a < 256 && filled < t.size(); ++a) {
            for (int b = 0; b < 256; ++b) {
                if (usable(a) && usable(b)) offer({static_cast<char>(a), static_cast<char>(b)});
            }
        }
        return t;
    }();
    return table;
}

}  // namespace detail

/// A cache's part of a store (docs/FORMAT.md, "Keys"). Every key larder writes for a
/// cache starts with the cache's prefix, which ends in ':' (or is empty), and then either
///  - `k:` and the caller's key, as it is: an entry; or
///  - `m:`, a role, 0x1F and a name: larder's own keys (versions, refresh and write
///    leases, version keys).
/// So no caller key, whatever its bytes, equals or addresses a key larder uses for itself,
/// and two caches with distinct prefixes never touch each other's keys as long as neither
/// prefix starts with the other followed by `k:` or `m:`.
class Namespace {
public:
    Namespace() = default;

    /// Throws ConfigError for a non-empty prefix that does not end in ':', and for one
    /// with a '{' that does not open a complete, non-empty hash tag: the slot of every key after it
    /// would be the caller's to choose.
    explicit Namespace(std::string_view prefix) : prefix_(prefix) {
        if (prefix_.find('{') != std::string::npos && hash_tag(prefix_) == prefix_) {
            throw ConfigError(
                "larder: a key prefix's '{' must open a complete, non-empty hash tag");
        }
        // Not added silently: "tB" and "tB:" would then be one namespace.
        if (!prefix_.empty() && prefix_.back() != ':') {
            throw ConfigError("larder: a key prefix must end in ':' (or be empty)");
        }
        tagged_ = hash_tag(prefix_) != std::string_view(prefix_);
    }

    /// The prefix, ending in ':' (or empty).
    [[nodiscard]] const std::string& prefix() const noexcept { return prefix_; }

    /// The stored key of the caller's `key`.
    [[nodiscard]] std::string entry(std::string_view key) const {
        std::string out;
        out.reserve(prefix_.size() + 2 + key.size());
        out.append(prefix_).append(entries).append(key);
        return out;
    }

    /// The caller's key of a stored entry key; nullopt for any other key.
    [[nodiscard]] std::optional<std::string_view> key_of(std::string_view stored) const {
        if (!stored.starts_with(prefix_)) return std::nullopt;
        stored.remove_prefix(prefix_.size());
        if (!stored.starts_with(entries)) return std::nullopt;
        return stored.substr(entries.size());
    }

    /// One of larder's own keys: `role` names what it is (no 0x1F in it), `name` which.
    [[nodiscard]] std::string meta(std::string_view role, std::string_view name) const {
        std::string out;
        out.reserve(prefix_.size() + 3 + role.size() + name.size());
        out.append(prefix_).append(metadata).append(role).append("\x1f").append(name);
        return out;
    }

    /// A key of larder's about the entry of `key` (a refresh lease, a write lease) that
    /// hashes to the entry's Redis Cluster slot, so one script or one node can touch both.
    /// With a hash tag in the prefix every key of the cache shares its slot already;
    /// otherwise a two-byte tag of the entry's slot goes in front of the caller's key.
    [[nodiscard]] std::string sibling(std::string_view key, std::string_view role) const {
        if (tagged_) return meta(role, key);
        const std::string& tag = detail::tags_by_slot()[slot(entry(key))];
        std::string name;
        name.reserve(tag.size() + 2 + key.size());
        name.append("{").append(tag).append("}").append(key);
        return meta(role, name);
    }

private:
    static constexpr std::string_view entries = "k:";
    static constexpr std::string_view metadata = "m:";

    std::string prefix_{};
    bool tagged_ = false;
};

}  // namespace larder::keys
