// The Codec concept: how a T becomes bytes and back. A codec appends to an output string
// (so the envelope header and the payload share one allocation) and decodes from a view
// (so a hit copies nothing it does not need). decode throws larder::CodecError on bytes
// it cannot read, and on bytes beyond the limits it was given (DecodeLimits): the bytes in
// a store are input like any other, and a reader must survive whatever is planted there.
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

/// What a structured codec (JsonCodec, MsgPackCodec) accepts before it gives up with a
/// CodecError, which the cache counts as a corrupt value and treats as a miss. The limits
/// hold on every path that decodes: reads, background refreshes, the write-behind flusher.
struct DecodeLimits {
    /// Deepest nesting of arrays and objects (maps): a scalar is depth 0, `[]` and `{}` are
    /// 1, `[[1]]` is 2. The parsers, the DOM's copies and a user's from_json recurse once
    /// per level, so without a bound a few hundred KiB of `[` exhaust a thread's stack.
    /// 128 (serde_json's default too) is far beyond any record and costs a few tens of KiB
    /// of stack even in sanitizer builds.
    std::size_t max_depth = 128;
    /// Largest payload accepted, in bytes. A document's in-memory form can be tens of
    /// times its encoded size (a MessagePack byte can become a 16-byte node and a map
    /// allocation), so this bounds the memory one planted value can claim. 16 MiB is twice
    /// the cache's default max_value_bytes: a cache reads back anything it writes with its
    /// defaults. Raise both together.
    std::size_t max_bytes = std::size_t{16} << 20;
    /// Reject a floating-point number that is not finite or lies outside the range of
    /// std::int64_t. nlohmann converts a float read into an integer field with a plain
    /// static_cast, which is undefined behaviour when the value does not fit; the codec
    /// cannot know a field's type, so it refuses the floats that fit no 64-bit integer.
    /// Turn off to store doubles beyond +-9.2e18 (or NaN/infinity in MessagePack); see
    /// docs/codecs.md for exactly what each setting guarantees.
    bool reject_floats_beyond_int64 = true;
};

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
