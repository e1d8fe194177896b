// An invalidator that forgot bumped().
// expect: larder: an Invalidator needs void bumped(std::string_view version_key)
#include <larder/backend/memory.hpp>
#include <larder/policy/cache_aside.hpp>

#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

struct AuditInvalidator {
    void versions_of(std::string_view, std::span<const std::string>, std::vector<std::string>&) {}
    void invalidated(std::string_view) {}
};

int main() {
    larder::MemoryBackend backend;
    larder::CacheAside<std::string, larder::MemoryBackend, AuditInvalidator> cache(backend);
    (void)cache.get("1", [] { return std::optional<std::string>("v"); });
}
