// A cache of a struct with no codec: <larder/codec/json.hpp> is not included.
// expect: larder: no codec for the cache's value type T. For JSON, include <larder/codec/json.hpp>
#include <larder/backend/memory.hpp>
#include <larder/policy/cache_aside.hpp>

#include <optional>
#include <string>

struct User {
    int id = 0;
    std::string name;
};

int main() {
    larder::MemoryBackend backend;
    larder::CacheAside<User, larder::MemoryBackend> users(backend);
    (void)users.get("1", [] { return std::optional<User>(User{1, "ada"}); });
}
