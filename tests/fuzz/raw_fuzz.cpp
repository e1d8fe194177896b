// Fuzz target: RawCodec::decode of arbitrary bytes into each raw type: every byte comes
// back unchanged, and a set size limit is exact.
#include <larder/codec/raw.hpp>

#include <cstddef>
#include <cstdint>
#include <cstring>
#include <string>
#include <string_view>
#include <vector>

#include "fuzz_record.hpp"

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
    using larder::fuzz::check;
    using larder::fuzz::decodes;
    const std::string_view bytes(reinterpret_cast<const char*>(data), size);
    const larder::RawCodec codec;

    check(codec.decode<std::string>(bytes) == bytes);
    const auto u8 = codec.decode<std::vector<std::uint8_t>>(bytes);
    check(u8.size() == size && (size == 0 || std::memcmp(u8.data(), data, size) == 0));
    check(codec.decode<std::vector<std::byte>>(bytes).size() == size);
    check(codec.decode<std::vector<char>>(bytes).size() == size);

    const larder::RawCodec bounded{.max_bytes = 64};
    check(decodes([&] { (void)bounded.decode<std::string>(bytes); }) == (size <= 64));
    return 0;
}
