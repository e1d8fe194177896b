// RawCodec: strings and byte vectors stored as they are.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "larder/core/codec.hpp"

namespace larder {

namespace detail {
template <class T>
concept RawBytes = std::same_as<T, std::string> || std::same_as<T, std::vector<std::byte>> ||
                   std::same_as<T, std::vector<std::uint8_t>> ||
                   std::same_as<T, std::vector<char>>;
}  // namespace detail

struct RawCodec {
    static constexpr std::uint8_t id = codec_id::raw;

    template <detail::RawBytes T>
    void encode(const T& value, std::string& out) const {
        out.append(reinterpret_cast<const char*>(value.data()), value.size());
    }

    template <detail::RawBytes T>
    [[nodiscard]] T decode(std::string_view bytes) const {
        if constexpr (std::same_as<T, std::string>) {
            return T(bytes);
        } else {
            using Byte = typename T::value_type;
            const auto* first = reinterpret_cast<const Byte*>(bytes.data());
            return T(first, first + bytes.size());
        }
    }
};

template <>
struct default_codec<std::string> {
    using type = RawCodec;
};
template <>
struct default_codec<std::vector<std::byte>> {
    using type = RawCodec;
};
template <>
struct default_codec<std::vector<std::uint8_t>> {
    using type = RawCodec;
};

}  // namespace larder
