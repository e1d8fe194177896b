// Key helpers shared by the strategies.
#pragma once

#include <string>
#include <string_view>

namespace larder::keys {

/// The Redis Cluster hash tag of a key: the part between the first '{' and the next '}',
/// when that part is not empty; otherwise the whole key.
[[nodiscard]] inline std::string_view hash_tag(std::string_view key) noexcept {
    const auto open = key.find('{');
    if (open == std::string_view::npos) return key;
    const auto close = key.find('}', open + 1);
    if (close == std::string_view::npos || close == open + 1) return key;
    return key.substr(open + 1, close - open - 1);
}

/// A key for metadata about `key` (a refresh lease, a version) that hashes to the same
/// Redis Cluster slot, so one script can touch both. A key that already has a hash tag
/// keeps it; otherwise the whole key becomes the tag.
[[nodiscard]] inline std::string sibling(std::string_view key, std::string_view role) {
    std::string out;
    if (hash_tag(key) != key) {
        out.reserve(key.size() + role.size() + 2);
        out.append(key).append("\x1f").append(role);
    } else {
        out.reserve(key.size() + role.size() + 4);
        out.append("{").append(key).append("}\x1f").append(role);
    }
    return out;
}

}  // namespace larder::keys
