// Picks a policy's codec, guard and invalidator out of its template arguments, in any order:
//   CacheAside<User, RedisBackend>                            JSON (default), no guard
//   CacheAside<User, RedisBackend, Guards<XFetch, Lock>>      with a guard
//   CacheAside<User, RedisBackend, MsgPackCodec, Lock>        both
//   CacheAside<User, RedisBackend, Lock, Invalidators<Tags, Events<RedisBus>>>
//                                                             and invalidators (default: Tags)
#pragma once

#include <concepts>
#include <cstdint>
#include <span>
#include <string>
#include <string_view>
#include <type_traits>
#include <vector>

#include "larder/core/codec.hpp"
#include "larder/invalidate/invalidator.hpp"
#include "larder/invalidate/tags.hpp"
#include "larder/stampede/guard.hpp"

namespace larder::detail {

// The first P that Matches, else Default::type. Default is a metafunction evaluated only
// when nothing matched, so naming a codec never asks for the default one (which may need
// a header the user did not include).
template <class Default, template <class> class Matches, class... Ps>
struct first_matching {
    using type = typename Default::type;
};

template <class Default, template <class> class Matches, class P, class... Ps>
struct first_matching<Default, Matches, P, Ps...> {
    using type = typename std::conditional_t<Matches<P>::value, std::type_identity<P>,
                                             first_matching<Default, Matches, Ps...>>::type;
};

template <class T>
struct codec_for {
    template <class P>
    struct matches : std::bool_constant<Codec<P, T>> {};
};

template <class P>
struct is_guard : std::bool_constant<StampedeGuard<P>> {};

/// What a cache of T falls back on when no codec is named and T has no default one (T is
/// not a string, and <larder/codec/json.hpp> is not included or T is not JSON-serializable).
/// It models Codec for every T, so that a policy using it compiles on to the one
/// static_assert that explains what is missing, and no further; its functions are never
/// defined.
struct MissingCodec {
    static constexpr std::uint8_t id = 0;
    template <class U>
    void encode(const U& value, std::string& out) const;
    template <class U>
    U decode(std::string_view bytes) const;
};

template <class T>
struct default_codec_or_missing {
    using type = MissingCodec;
};

template <class T>
requires requires {
    typename default_codec<T>::type;
}
struct default_codec_or_missing<T> {
    using type = typename default_codec<T>::type;
};

template <class T, class... Ps>
using pick_codec_t = typename first_matching<default_codec_or_missing<T>,
                                             codec_for<T>::template matches, Ps...>::type;

template <class T, class... Ps>
using pick_guard_t = typename first_matching<std::type_identity<NoGuard>, is_guard, Ps...>::type;

template <class P>
struct is_invalidator : std::bool_constant<Invalidator<P>> {};

/// Tags unless another invalidator is named, so that get(key, tags, loader) works as is.
template <class T, class... Ps>
using pick_invalidator_t =
    typename first_matching<std::type_identity<Tags>, is_invalidator, Ps...>::type;

// Which concept a component that models none was meant for, told by the members it names.
template <class P>
concept NamesGuardMember = requires {
    &P::refresh_early;
}
|| requires {
    &P::lease_wait;
}
|| requires {
    &P::refresh_in_background;
};

template <class P>
concept NamesInvalidatorMember = requires {
    &P::versions_of;
}
|| requires {
    &P::invalidated;
}
|| requires {
    &P::bumped;
};

template <class P>
concept NamesCodecMember = requires {
    P::id;
};

template <class>
inline constexpr bool always_false = false;

/// Every component must be a codec for T, a guard or an invalidator: a typo is an error,
/// not ignored. A component that is none of them fails the build with the requirement it
/// missed, of the concept its members say it was meant for.
template <class T, class P>
consteval bool check_component() {
    if constexpr (Codec<P, T> || StampedeGuard<P> || Invalidator<P>) {
        return true;
    } else if constexpr (NamesGuardMember<P>) {
        static_assert(
            requires(P & g, const FreshHit& hit) {
                { g.refresh_early(hit) } -> std::same_as<bool>;
            },
            "larder: a StampedeGuard needs bool refresh_early(const larder::FreshHit&)");
        static_assert(
            requires(P & g) {
                { g.lease_wait() } -> std::same_as<LeaseWait>;
            },
            "larder: a StampedeGuard needs larder::LeaseWait lease_wait()");
        static_assert(
            requires(P & g) {
                { g.refresh_in_background() } -> std::same_as<bool>;
            },
            "larder: a StampedeGuard needs bool refresh_in_background()");
        return false;
    } else if constexpr (NamesInvalidatorMember<P>) {
        static_assert(
            requires(P & inv, std::string_view key, std::span<const std::string> tags,
                     std::vector<std::string> & names) {
                { inv.versions_of(key, tags, names) } -> std::same_as<void>;
            },
            "larder: an Invalidator needs void versions_of(std::string_view key, "
            "std::span<const std::string> tags, std::vector<std::string>& names)");
        static_assert(
            requires(P & inv, std::string_view key) {
                { inv.invalidated(key) } -> std::same_as<void>;
            },
            "larder: an Invalidator needs void invalidated(std::string_view stored_key)");
        static_assert(
            requires(P & inv, std::string_view key) {
                { inv.bumped(key) } -> std::same_as<void>;
            },
            "larder: an Invalidator needs void bumped(std::string_view version_key)");
        return false;
    } else if constexpr (NamesCodecMember<P>) {
        static_assert(
            requires {
                { P::id } -> std::convertible_to<std::uint8_t>;
            },
            "larder: a Codec needs static constexpr std::uint8_t id");
        static_assert(
            requires(const P& codec, const T& value, std::string& out) {
                codec.encode(value, out);
            },
            "larder: a Codec for the cache's value type T needs encode(const T&, std::string& out) "
            "const");
        static_assert(
            requires(const P& codec, std::string_view bytes) {
                { codec.template decode<T>(bytes) } -> std::same_as<T>;
            },
            "larder: a Codec for the cache's value type T needs template <class U> U "
            "decode(std::string_view) const");
        return false;
    } else {
        static_assert(always_false<P>,
                      "larder: each component after the backend is a Codec for the value type "
                      "(id, encode, decode), a StampedeGuard (refresh_early, lease_wait, "
                      "refresh_in_background) or an Invalidator (versions_of, invalidated, "
                      "bumped); this one is none of them");
        return false;
    }
}

}  // namespace larder::detail
