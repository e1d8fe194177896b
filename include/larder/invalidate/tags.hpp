// Tags: invalidate every entry that carries a tag, in O(1). An entry read with tags is
// stamped with each tag's current version (read in the same command as the value);
// invalidate_tag(t) gives t a new version, and every entry stamped with the old one misses
// from then on. Nothing lists a tag's entries, so nothing grows with them; a tag's version
// outlives every entry stamped with it (each fill extends it), so a hot tag never expires
// under its entries, and a version that vanished anyway (eviction, FLUSHALL) makes its
// entries miss, never come back.
#pragma once

#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "larder/invalidate/invalidator.hpp"

namespace larder {

struct Tags {
    static constexpr bool stamps_tags = true;

    /// The version name of a tag.
    [[nodiscard]] static std::string version_name(std::string_view tag) {
        std::string name("tag\x1f");
        name.append(tag);
        return name;
    }

    void versions_of(std::string_view, std::span<const std::string> tags,
                     std::vector<std::string>& names) {
        for (const auto& t : tags) names.push_back(version_name(t));
    }
    void invalidated(std::string_view) {}
    void bumped(std::string_view) {}
};

static_assert(TagInvalidator<Tags>);

}  // namespace larder
