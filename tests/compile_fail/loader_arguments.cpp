// A loader that wants the key as an argument.
// expect: larder: a loader is called with no arguments, or with a larder::LoadContext&
#include <larder/backend/memory.hpp>
#include <larder/policy/cache_aside.hpp>

#include <optional>
#include <string>

int main() {
    larder::MemoryBackend backend;
    larder::CacheAside<std::string, larder::MemoryBackend> cache(backend);
    (void)cache.get("1", [](const std::string& key) { return std::optional<std::string>(key); });
}
