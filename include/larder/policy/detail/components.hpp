// Picks a policy's codec, guard and invalidator out of its template arguments, in any order:
//   CacheAside<User, RedisBackend>                            JSON (default), no guard
//   CacheAside<User, RedisBackend, Guards<XFetch, Lock>>      with a guard
//   CacheAside<User, RedisBackend, MsgPackCodec, Lock>        both
//   CacheAside<User, RedisBackend, Lock, Invalidators<Tags, Events<RedisBus>>>
//                                                             and invalidators (default: Tags)
#pragma once

#include <type_traits>

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

template <class T, class... Ps>
using pick_codec_t =
    typename first_matching<default_codec<T>, codec_for<T>::template matches, Ps...>::type;

template <class T, class... Ps>
using pick_guard_t = typename first_matching<std::type_identity<NoGuard>, is_guard, Ps...>::type;

template <class P>
struct is_invalidator : std::bool_constant<Invalidator<P>> {};

/// Tags unless another invalidator is named, so that get(key, tags, loader) works as is.
template <class T, class... Ps>
using pick_invalidator_t =
    typename first_matching<std::type_identity<Tags>, is_invalidator, Ps...>::type;

/// Every component must be a codec for T, a guard or an invalidator: a typo is an error,
/// not ignored.
template <class T, class... Ps>
inline constexpr bool all_components_known = ((Codec<Ps, T> || StampedeGuard<Ps> ||
                                               Invalidator<Ps>)&&...);

}  // namespace larder::detail
