// The Codec concept: how a T becomes bytes and back. A codec appends to an output string
// (so the envelope header and the payload share one allocation) and decodes from a view
// (so a hit copies nothing it does not need). decode throws larder::CodecError on bytes
// it cannot read.
#pragma once

#include <concepts>
#include <cstdint>
#include <string>
#include <string_view>

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

/// The codec a cache of T uses when none is named. Specialised for strings and bytes in
/// <larder/codec/raw.hpp>, and for every type with nlohmann to_json/from_json in
/// <larder/codec/json.hpp>: a user who wants no JSON includes no JSON.
template <class T>
struct default_codec {};

template <class T>
using default_codec_t = typename default_codec<T>::type;

}  // namespace larder
