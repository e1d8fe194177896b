// What a cache calls on a miss. A loader is anything callable with no arguments that
// returns std::optional<T> (nullopt: no such row); a batch loader takes the keys that
// missed and returns one std::optional<T> per key, in order.
#pragma once

#include <functional>
#include <type_traits>
#include <utility>

#include <concepts>
#include <optional>
#include <span>
#include <string>
#include <type_traits>
#include <vector>

namespace larder {

template <class L, class T>
concept LoaderFor = std::convertible_to<std::invoke_result_t<L&>, std::optional<T>>;

template <class L, class T>
concept BatchLoaderFor = std::convertible_to<std::invoke_result_t<L&, std::span<const std::string>>,
                                             std::vector<std::optional<T>>>;

/// A loader that owns what it captures, so a cache may run it after the call that passed
/// it has returned: an XFetch refresh in the background. Made by detached(loader).
/// Any other loader is only ever run before get() returns, so a natural `[&]` loader is
/// always safe; a background refresh needs this explicit promise.
template <class F>
class Detached {
public:
    explicit Detached(F f) : f_(std::move(f)) {}
    decltype(auto) operator()() { return std::invoke(f_); }

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

template <class L>
inline constexpr bool is_detached_v = false;
template <class F>
inline constexpr bool is_detached_v<Detached<F>> = true;

}  // namespace larder
