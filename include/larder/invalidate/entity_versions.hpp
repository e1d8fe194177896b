// EntityVersions: version keys as an invalidator. Every entry of an entity (a
// user's profile, their posts, their settings: keys an `entity` rule maps to one name) is
// stamped with the entity's current version, read in the same command as the value; a
// writer bumps the version and every entry of the entity misses at once:
//
//   CacheAside<Post, RedisBackend, EntityVersions> posts(redis, {},
//       EntityVersions([](std::string_view key) { return key.substr(0, key.find('/')); }));
//   posts.get("user:42/posts", load);                       // stamped with user:42's version
//   posts.invalidate_version(EntityVersions::version_name("user:42"));  // all of user:42
//
// Unlike VersionKeys (<larder/invalidate/version_keys.hpp>), which names a new cache key
// per version and so costs a read of the version before every read of the value, this
// reads both in one command, and the old entries do not linger under old keys.
#pragma once

#include <functional>
#include <span>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "larder/invalidate/invalidator.hpp"

namespace larder {

class EntityVersions {
public:
    /// Maps a caller's key (without the cache's prefix) to its entity's name.
    using Entity = std::function<std::string(std::string_view key)>;

    /// Every key is its own entity.
    EntityVersions() = default;
    explicit EntityVersions(Entity entity) : entity_(std::move(entity)) {}

    /// The version name of an entity: what invalidate_version takes.
    [[nodiscard]] static std::string version_name(std::string_view entity) {
        std::string name("ver\x1f");
        name.append(entity);
        return name;
    }

    void versions_of(std::string_view key, std::span<const std::string>,
                     std::vector<std::string>& names) {
        names.push_back(version_name(entity_ ? entity_(key) : std::string(key)));
    }
    void invalidated(std::string_view) {}
    void bumped(std::string_view) {}

private:
    Entity entity_;
};

static_assert(Invalidator<EntityVersions>);

}  // namespace larder
