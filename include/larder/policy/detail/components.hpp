// Picks a policy's codec and guard out of its template arguments, in any order:
//   CacheAside<User, RedisBackend>                            JSON (default), no guard
//   CacheAside<User, RedisBackend, Guards<XFetch, Lock>>      with a guard
//   CacheAside<User, RedisBackend, MsgPackCodec, Lock>        both
#pragma once

#include <type_traits>

#include "larder/core/codec.hpp"
#include "larder/stampede/guard.hpp"

namespace larder::detail {

template <class T, class Default, template <class> class Matches, class... Ps>
struct first_matching {
    using type = Default;
};

template <class T, class Default, template <class> class Matches, class P, class... Ps>
struct first_matching<T, Default, Matches, P, Ps...> {
    using type = std::conditional_t<Matches<P>::value, P,
                                    typename first_matching<T, Default, Matches, Ps...>::type>;
};

template <class T>
struct codec_for {
    template <class P>
    struct matches : std::bool_constant<Codec<P, T>> {};
};

template <class P>
struct is_guard : std::bool_constant<StampedeGuard<P>> {};

template <class T, class... Ps>
struct default_codec_or_none {
    using type = default_codec_t<T>;
};

template <class T, class... Ps>
using pick_codec_t = typename first_matching<T, typename default_codec_or_none<T>::type,
                                             codec_for<T>::template matches, Ps...>::type;

template <class T, class... Ps>
using pick_guard_t = typename first_matching<T, NoGuard, is_guard, Ps...>::type;

/// Every component must be a codec for T or a guard: a typo is an error, not ignored.
template <class T, class... Ps>
inline constexpr bool all_components_known = ((Codec<Ps, T> || StampedeGuard<Ps>)&&...);

}  // namespace larder::detail
