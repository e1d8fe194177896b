// A component that is no codec, guard or invalidator (options passed as a type).
// expect: larder: each component after the backend is a Codec for the value type
#include <larder/backend/memory.hpp>
#include <larder/policy/cache_aside.hpp>

#include <optional>
#include <string>

int main() {
    larder::MemoryBackend backend;
    larder::CacheAside<std::string, larder::MemoryBackend, larder::CacheAsideOptions> cache(
        backend);
    (void)cache.get("1", [] { return std::optional<std::string>("v"); });
}
