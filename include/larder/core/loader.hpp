// What a cache calls on a miss. A loader is anything callable that returns
// std::optional<T> (nullopt: no such row), with no arguments or with a LoadContext& in
// which it may decide about the entry it loaded (adaptive caching). A batch loader takes
// the keys that missed and returns one std::optional<T> per key, in order.
#pragma once

#include <concepts>
#include <functional>
#include <optional>
#include <span>
#include <string>
#include <type_traits>
#include <utility>
#include <vector>

#include "larder/core/clock.hpp"

namespace larder {

/// What a loader may decide about the entry it loads, known only once it has loaded
/// (a row's team, whether the row is worth caching). A loader that takes a LoadContext&
/// gets one, filled with what the call asked for; what it leaves there is what the cache
/// stores.
struct LoadContext {
    /// How long the loaded value (or "not found") stays fresh. Unset: the call's ttl, else
    /// the cache's (negative_ttl for "not found"). Must be positive.
    std::optional<Millis> ttl{};
    /// Tags of the entry, besides those the read passed: the entry is retired when any of
    /// them is invalidated. Needs a tag invalidator (Tags, the default). A bump of any
    /// version of this cache during the load makes the fill a counted rejection (the
    /// load may have read the row before the change); see docs/adaptive.md.
    std::vector<std::string> tags{};
    /// false: the value is returned to the callers, and nothing is cached.
    bool cache = true;
};

template <class L, class T>
concept LoaderFor = std::convertible_to<std::invoke_result_t<L&>, std::optional<T>> ||
    std::convertible_to<std::invoke_result_t<L&, LoadContext&>, std::optional<T>>;

/// Whether a loader takes a LoadContext&.
template <class L>
inline constexpr bool is_adaptive_loader_v = std::invocable<L&, LoadContext&>;

/// Calls a loader with the context if it takes one.
template <class T, class L>
std::optional<T> call_loader(L& loader, LoadContext& context) {
    if constexpr (is_adaptive_loader_v<L>) {
        return std::invoke(loader, context);
    } else {
        return std::invoke(loader);
    }
}

template <class L, class T>
concept BatchLoaderFor = std::convertible_to<std::invoke_result_t<L&, std::span<const std::string>>,
                                             std::vector<std::optional<T>>>;

/// A loader that owns what it captures, so a cache may run it after the call that passed
/// it has returned: an XFetch refresh in the background, or a load its caller stopped
/// waiting for (loader timeouts). Made by detached(loader). Any other loader is only ever
/// run before get() returns, so a natural `[&]` loader is always safe; running it later
/// needs this explicit promise.
template <class F>
class Detached {
    static_assert(std::is_copy_constructible_v<F>,
                  "a detached loader is copied to run after the call (a background refresh, a "
                  "timed-out load): it must be copyable; hold move-only state in a shared_ptr");

public:
    explicit Detached(F f) : f_(std::move(f)) {}
    template <class... Args>
    requires std::invocable<F&, Args...>
    decltype(auto) operator()(Args&&... args) {
        return std::invoke(f_, std::forward<Args>(args)...);
    }

private:
    F f_;
};

/// Wraps a loader that owns everything it captures (captures by value, or shared_ptr):
/// with XFetch{.background = true}, an elected refresh then runs on a background thread
/// and the reader gets the current value at once. Without it the refresh runs inline.
template <class F>
[[nodiscard]] Detached<std::decay_t<F>> detached(F&& f) {
    return Detached<std::decay_t<F>>(std::forward<F>(f));
}

namespace detail {

template <class L, class... Args>
struct loader_result {
    using type = void;
};
template <class L, class... Args>
requires std::invocable<L&, Args...>
struct loader_result<L, Args...> {
    using type = std::invoke_result_t<L&, Args...>;
};

/// LoaderFor<L, T>, with a compile error that says which requirement L missed. The
/// policies take any L and check it here, so a wrong loader gets one message instead of
/// every overload's candidate list; if constexpr on the result skips the body after it.
template <class T, class L>
consteval bool check_loader() {
    using F = std::remove_cvref_t<L>;
    constexpr bool plain = std::invocable<F&>;
    constexpr bool adaptive = std::invocable<F&, LoadContext&>;
    static_assert(plain || adaptive,
                  "larder: a loader is called with no arguments, or with a larder::LoadContext&; "
                  "this one takes neither (a batch loader, taking the keys that missed, goes to "
                  "get_many)");
    if constexpr (plain || adaptive) {
        using R = typename std::conditional_t<adaptive, loader_result<F, LoadContext&>,
                                              loader_result<F>>::type;
        static_assert(std::convertible_to<R, std::optional<T>>,
                      "larder: a loader returns std::optional<T> (std::nullopt: no such row), "
                      "with T the cache's value type; this one returns something else");
        return std::convertible_to<R, std::optional<T>>;
    }
    return false;
}

/// BatchLoaderFor<L, T>, checked the same way.
template <class T, class L>
consteval bool check_batch_loader() {
    using F = std::remove_cvref_t<L>;
    constexpr bool callable = std::invocable<F&, std::span<const std::string>>;
    static_assert(callable,
                  "larder: a batch loader is called with std::span<const std::string>, the keys "
                  "that missed; this one cannot be (a loader of one key goes to get)");
    if constexpr (callable) {
        using R = std::invoke_result_t<F&, std::span<const std::string>>;
        static_assert(std::convertible_to<R, std::vector<std::optional<T>>>,
                      "larder: a batch loader returns std::vector<std::optional<T>>, one per key "
                      "it was given, with T the cache's value type; this one returns something "
                      "else");
        return std::convertible_to<R, std::vector<std::optional<T>>>;
    }
    return false;
}

}  // namespace detail

template <class L>
inline constexpr bool is_detached_v = false;
template <class F>
inline constexpr bool is_detached_v<Detached<F>> = true;

}  // namespace larder
