// Outside consumer of larder: checks that the public headers and the CMake
// targets (larder::larder, larder::json and optionally larder::redis) are usable.
#include <larder/codec/json.hpp>
#include <larder/larder.hpp>

#include <iostream>
#include <optional>
#include <string>
#include <vector>

#ifdef LARDER_CONSUMER_WITH_REDIS
#if __has_include(<larder/backend/redis.hpp>)
#include <larder/backend/redis.hpp>
#endif

#include <hiredis/hiredis.h>
#endif

int main() {
    larder::MemoryBackend backend;
    larder::CacheAside<std::string, larder::MemoryBackend> cache{backend};

    int loads = 0;
    auto loader = [&loads]() -> std::optional<std::string> {
        ++loads;
        return std::string("value");
    };
    const auto first = cache.get("key", loader);
    const auto second = cache.get("key", loader);
    if (first != std::optional<std::string>("value") || second != first || loads != 1) {
        std::cerr << "larder consumer: unexpected cache-aside result (loads=" << loads << ")\n";
        return 1;
    }

    const larder::JsonCodec codec;
    std::string bytes;
    codec.encode(std::vector<int>{1, 2, 3}, bytes);
    if (codec.decode<std::vector<int>>(bytes) != std::vector<int>{1, 2, 3}) {
        std::cerr << "larder consumer: json round trip failed: " << bytes << '\n';
        return 1;
    }
    std::cout << "larder consumer: cache-aside and json ok (" << bytes << ")\n";

#ifdef LARDER_CONSUMER_WITH_REDIS
    // Needs no server: only proves that hiredis is found and linked.
    redisReader* reader = redisReaderCreate();
    if (reader == nullptr) {
        return 1;
    }
    redisReaderFree(reader);
    std::cout << "larder consumer: hiredis " << HIREDIS_MAJOR << '.' << HIREDIS_MINOR << '\n';
#endif
    return 0;
}
