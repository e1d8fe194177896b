// A loader that returns the row itself, not std::optional of the cache's value type.
// expect: larder: a loader returns std::optional<T> (std::nullopt: no such row)
#include <larder/backend/memory.hpp>
#include <larder/policy/cache_aside.hpp>

#include <string>

int main() {
    larder::MemoryBackend backend;
    larder::CacheAside<std::string, larder::MemoryBackend> cache(backend);
    (void)cache.get("1", [] { return 42; });
}
