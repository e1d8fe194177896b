// MsgPackCodec: the same nlohmann to_json/from_json types, stored as MessagePack, which is
// smaller and faster to parse than JSON text. Needs the larder::json target.
#pragma once

#include <nlohmann/json.hpp>
#include <string>
#include <string_view>

#include "larder/codec/detail/bounded_dom.hpp"
#include "larder/core/codec.hpp"
#include "larder/core/error.hpp"

namespace larder {

/// MessagePack. decode refuses (CodecError) what exceeds `limits`, as JsonCodec does.
struct MsgPackCodec {
    static constexpr std::uint8_t id = codec_id::msgpack;

    DecodeLimits limits{};

    template <class T>
    void encode(const T& value, std::string& out) const {
        // nlohmann appends to a std::string through its output adapter.
        try {
            nlohmann::json::to_msgpack(nlohmann::json(value), out);
        } catch (const nlohmann::json::exception& e) {
            throw CodecError(std::string("msgpack: ") + e.what());
        }
    }

    template <class T>
    [[nodiscard]] T decode(std::string_view bytes) const {
        try {
            const nlohmann::json doc = detail::parse_bounded(
                bytes, nlohmann::json::input_format_t::msgpack, limits, "msgpack");
            detail::check_fits<T>(doc);
            return doc.template get<T>();
        } catch (const nlohmann::json::exception& e) {
            throw CodecError(std::string("msgpack: ") + e.what());
        }
    }
};

}  // namespace larder
