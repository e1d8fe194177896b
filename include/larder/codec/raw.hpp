// RawCodec: strings and byte vectors stored as they are.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>

#include "larder/core/codec.hpp"

namespace larder {

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

}  // namespace larder
