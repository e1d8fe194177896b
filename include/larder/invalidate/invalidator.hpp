// The Invalidator concept: what, besides its TTL, makes a stored entry stop being served,
// and what a write does so that it does. Invalidators compose around any policy the way
// stampede guards do: CacheAside<User, RedisBackend, Lock, Invalidators<Tags, Events<Bus>>>.
//
// A policy's read path asks its invalidator two things, and tells it two:
// The rules (versions_of, ttl_for) get the caller's key, without the cache's prefix; the
// notices (invalidated, bumped) get keys as stored, to pass on to other processes.
//  - versions_of(key, tags, names): the *version names* an entry of `key`, read with
//    `tags`, depends on. Their current versions are read in the same store command as the
//    value (one MGET), stamped on every fill, and checked on every read: an entry is
//    served only while each version it was stamped with is still current. The entry's
//    own stamp decides, whatever a later reader passes.
//  - ttl_for(key) (optional): how long an entry of `key` stays fresh, when the invalidator
//    has a say; the policy's `ttl` option otherwise.
//  - invalidated(key): the policy removed the entry stored as `key` from the store
//    (invalidate, update, a write path's put). An invalidator may tell others (publish
//    on a bus).
//  - bumped(version_key): the policy gave a version a new value (invalidate_tag,
//    invalidate_version); the argument is the version's stored key. Likewise.
//
// A version name is namespaced by its invalidator ("tag\x1f<tag>", "ver\x1f<entity>");
// the policy stores it under its own key prefix and bumps it to 64 random bits, so a
// version never repeats (docs/invalidation.md). Invalidators hold no per-key state: one
// serves every key of a cache.
#pragma once

#include <concepts>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <tuple>
#include <utility>
#include <vector>

#include "larder/core/clock.hpp"

namespace larder {

template <class I>
concept Invalidator = requires(I& inv, std::string_view key, std::span<const std::string> tags,
                               std::vector<std::string>& names) {
    { inv.versions_of(key, tags, names) } -> std::same_as<void>;
    { inv.invalidated(key) } -> std::same_as<void>;
    { inv.bumped(key) } -> std::same_as<void>;
};

/// Whether an invalidator has a say in an entry's TTL.
template <class I>
concept TtlInvalidator = Invalidator<I> && requires(I& inv, std::string_view key) {
    { inv.ttl_for(key) } -> std::same_as<std::optional<Millis>>;
};

/// Whether an invalidator stamps the tags a read passes (get(key, tags, loader) needs one).
template <class I>
concept TagInvalidator = Invalidator<I> && requires {
    I::stamps_tags;
} && I::stamps_tags;

/// Nothing but the TTL.
struct NoInvalidator {
    void versions_of(std::string_view, std::span<const std::string>, std::vector<std::string>&) {}
    void invalidated(std::string_view) {}
    void bumped(std::string_view) {}
};

/// Several invalidators as one: an entry depends on the versions of all of them; every
/// one hears of every invalidation; the first with a TTL for a key sets it.
template <Invalidator... Is>
class Invalidators {
public:
    static constexpr bool stamps_tags = (TagInvalidator<Is> || ...);

    Invalidators() = default;
    explicit Invalidators(Is... invalidators) : parts_(std::move(invalidators)...) {}

    void versions_of(std::string_view key, std::span<const std::string> tags,
                     std::vector<std::string>& names) {
        std::apply([&](auto&... i) { (i.versions_of(key, tags, names), ...); }, parts_);
    }
    void invalidated(std::string_view key) {
        std::apply([&](auto&... i) { (i.invalidated(key), ...); }, parts_);
    }
    void bumped(std::string_view name) {
        std::apply([&](auto&... i) { (i.bumped(name), ...); }, parts_);
    }
    [[nodiscard]] std::optional<Millis> ttl_for(std::string_view key) {
        std::optional<Millis> ttl;
        std::apply(
            [&](auto&... i) {
                (
                    [&] {
                        if constexpr (TtlInvalidator<std::decay_t<decltype(i)>>) {
                            if (!ttl) ttl = i.ttl_for(key);
                        }
                    }(),
                    ...);
            },
            parts_);
        return ttl;
    }

    template <class I>
    [[nodiscard]] I& get() noexcept {
        return std::get<I>(parts_);
    }

private:
    std::tuple<Is...> parts_;
};

static_assert(Invalidator<NoInvalidator>);

}  // namespace larder
