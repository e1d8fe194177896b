// Key helpers shared by the strategies: the Redis Cluster hash-slot rule, and sibling
// keys (a refresh lease, a write lease) that live in the same slot as the key they serve,
// so one script or one cluster node can touch both.
#pragma once

#include <array>
#include <cstdint>
#include <string>
#include <string_view>

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

/// A key for metadata about `key` (a refresh lease, a version) that hashes to the same
/// Redis Cluster slot and differs from every other key's sibling:
///  - a key with a hash tag keeps it: `key` + 0x1F + role;
///  - a key without one becomes the tag: `{key}` + 0x1F + role;
///  - a key that cannot be a tag (it holds a '}', so `{key}` would cut it short) gets a
///    short tag of the same slot in front: `{t}key` + 0x1F + role.
[[nodiscard]] inline std::string sibling(std::string_view key, std::string_view role) {
    std::string out;
    if (hash_tag(key) != key) {
        out.reserve(key.size() + role.size() + 1);
        out.append(key).append("\x1f").append(role);
    } else if (key.find('}') == std::string_view::npos) {
        out.reserve(key.size() + role.size() + 3);
        out.append("{").append(key).append("}\x1f").append(role);
    } else {
        const std::string& tag = detail::tags_by_slot()[slot(key)];
        out.reserve(tag.size() + key.size() + role.size() + 3);
        out.append("{").append(tag).append("}").append(key).append("\x1f").append(role);
    }
    return out;
}

}  // namespace larder::keys
