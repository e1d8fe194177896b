// What a cache calls on a miss. A loader is anything callable with no arguments that
// returns std::optional<T> (nullopt: no such row); a batch loader takes the keys that
// missed and returns one std::optional<T> per key, in order.
#pragma once

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

}  // namespace larder
