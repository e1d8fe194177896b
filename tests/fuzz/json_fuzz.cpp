// Fuzz target: JsonCodec::decode of arbitrary bytes, into a record, into nlohmann::json and
// under a tight depth limit. A value that decodes must survive a re-encode and decode.
#include <larder/codec/json.hpp>

#include <cstddef>
#include <cstdint>
#include <string_view>

#include "fuzz_record.hpp"

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
    using larder::fuzz::check;
    using larder::fuzz::decodes;
    const std::string_view bytes(reinterpret_cast<const char*>(data), size);
    const larder::JsonCodec codec;

    decodes([&] { (void)codec.decode<larder::fuzz::Record>(bytes); });
    decodes([&] { (void)codec.decode<int>(bytes); });

    nlohmann::json doc;
    if (decodes([&] { doc = codec.decode<nlohmann::json>(bytes); })) {
        std::string again;
        codec.encode(doc, again);
        check(codec.decode<nlohmann::json>(again) == doc);
    }

    // The limit holds at any setting, not only the default.
    const larder::JsonCodec shallow{.limits = {.max_depth = 3, .max_bytes = 4096}};
    if (decodes([&] { doc = shallow.decode<nlohmann::json>(bytes); })) {
        check(size <= 4096);
    }
    return 0;
}
