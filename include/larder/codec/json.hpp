// JsonCodec: any type with nlohmann to_json/from_json. Including this header makes it the
// default codec for such types. Needs the larder::json target.
#pragma once

#include <nlohmann/json.hpp>
#include <string>
#include <string_view>

#include "larder/codec/detail/bounded_dom.hpp"
#include "larder/core/codec.hpp"
#include "larder/core/error.hpp"

namespace larder {

namespace detail {
template <class T>
concept NlohmannSerializable = requires(nlohmann::json& j, const T& value) {
    nlohmann::to_json(j, value);
    { j.template get<T>() } -> std::same_as<T>;
};
}  // namespace detail

/// JSON text. decode refuses (CodecError) what exceeds `limits`; a cache that needs other
/// limits holds a configured instance: CacheAside<T, B, JsonCodec>(store, {}, {},
/// JsonCodec{.limits = {.max_depth = 32}}).
struct JsonCodec {
    static constexpr std::uint8_t id = codec_id::json;

    DecodeLimits limits{};

    template <class T>
    void encode(const T& value, std::string& out) const {
        try {
            out += nlohmann::json(value).dump();
        } catch (const nlohmann::json::exception& e) {
            throw CodecError(std::string("json: ") + e.what());  // e.g. invalid UTF-8
        }
    }

    template <class T>
    [[nodiscard]] T decode(std::string_view bytes) const {
        try {
            const nlohmann::json doc =
                detail::parse_bounded(bytes, nlohmann::json::input_format_t::json, limits, "json");
            detail::check_fits<T>(doc);
            return doc.template get<T>();
        } catch (const nlohmann::json::exception& e) {
            throw CodecError(std::string("json: ") + e.what());
        }
    }
};

namespace detail {
template <class T>
concept JsonByDefault = NlohmannSerializable<T> && !RawBytes<T>;
}  // namespace detail

template <detail::JsonByDefault T>
struct default_codec<T> {
    using type = JsonCodec;
};

}  // namespace larder
