// A batch loader that returns values, not one std::optional per key.
// expect: larder: a batch loader returns std::vector<std::optional<T>>
#include <larder/backend/memory.hpp>
#include <larder/policy/cache_aside.hpp>

#include <span>
#include <string>
#include <vector>

int main() {
    larder::MemoryBackend backend;
    larder::CacheAside<std::string, larder::MemoryBackend> cache(backend);
    const std::vector<std::string> keys{"a", "b"};
    (void)cache.get_many(keys, [](std::span<const std::string> missed) {
        return std::vector<std::string>(missed.begin(), missed.end());
    });
}
