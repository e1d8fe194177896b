// MsgPackCodec: the same nlohmann to_json/from_json types, stored as MessagePack, which is
// smaller and faster to parse than JSON text. Needs the larder::json target.
#pragma once

#include <nlohmann/json.hpp>
#include <string>
#include <string_view>

#include "larder/core/codec.hpp"
#include "larder/core/error.hpp"

namespace larder {

struct MsgPackCodec {
    static constexpr std::uint8_t id = codec_id::msgpack;

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
            return nlohmann::json::from_msgpack(bytes.begin(), bytes.end()).template get<T>();
        } catch (const nlohmann::json::exception& e) {
            throw CodecError(std::string("msgpack: ") + e.what());
        }
    }
};

}  // namespace larder
