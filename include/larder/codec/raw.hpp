// RawCodec: strings and byte vectors stored as they are.
#pragma once

#include <cstdint>
#include <limits>
#include <string>
#include <string_view>

#include "larder/core/codec.hpp"
#include "larder/core/error.hpp"

namespace larder {

struct RawCodec {
    static constexpr std::uint8_t id = codec_id::raw;

    /// Largest payload decode accepts. Unlimited by default: raw bytes have no structure
    /// to amplify, and the copy decode makes is the size of bytes the store already
    /// handed over. A cache that wants a bound anyway sets one (CodecError beyond it).
    std::size_t max_bytes = std::numeric_limits<std::size_t>::max();

    template <detail::RawBytes T>
    void encode(const T& value, std::string& out) const {
        out.append(reinterpret_cast<const char*>(value.data()), value.size());
    }

    template <detail::RawBytes T>
    [[nodiscard]] T decode(std::string_view bytes) const {
        if (bytes.size() > max_bytes) {
            throw CodecError("raw: " + std::to_string(bytes.size()) +
                             " bytes, over the decode limit of " + std::to_string(max_bytes));
        }
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
