// The Codec concept: how a T becomes bytes and back. A codec appends to an output string
// (so the envelope header and the payload share one allocation) and decodes from a view
// (so a hit copies nothing it does not need). decode throws larder::CodecError on bytes
// it cannot read.
#pragma once

#include <concepts>
#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

namespace larder {

/// Codec ids stored in the envelope. A value written with another codec is a miss, never
/// a misread. Ids 128-255 are free for user codecs.
namespace codec_id {
inline constexpr std::uint8_t raw = 1;
inline constexpr std::uint8_t json = 2;
inline constexpr std::uint8_t msgpack = 3;
}  // namespace codec_id

template <class C, class T>
concept Codec = requires(const C& codec, const T& value, std::string& out, std::string_view bytes) {
    { C::id } -> std::convertible_to<std::uint8_t>;
    codec.encode(value, out);
    { codec.template decode<T>(bytes) } -> std::same_as<T>;
};

namespace detail {
template <class T>
concept RawBytes = std::same_as<T, std::string> || std::same_as<T, std::vector<std::byte>> ||
    std::same_as<T, std::vector<std::uint8_t>> || std::same_as<T, std::vector<char>>;
}  // namespace detail

struct RawCodec;  // <larder/codec/raw.hpp>

/// The codec a cache of T uses when none is named: RawCodec for strings and bytes (always,
/// whatever else is included, so every translation unit agrees), JsonCodec for other types
/// with nlohmann to_json/from_json once <larder/codec/json.hpp> is included. A user who
/// wants no JSON includes no JSON.
template <class T>
struct default_codec {};

template <detail::RawBytes T>
struct default_codec<T> {
    using type = RawCodec;
};

template <class T>
using default_codec_t = typename default_codec<T>::type;

}  // namespace larder
