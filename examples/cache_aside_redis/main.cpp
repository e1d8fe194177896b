// Cache-aside over Redis: get_user reads through the cache and loads from the database on a
// miss; update_user writes the database, then invalidates, so the next read loads the new row.
//
//   cache_aside_redis [redis://127.0.0.1:6379]
#include <larder/backend/redis.hpp>
#include <larder/codec/json.hpp>
#include <larder/larder.hpp>

#include <cstdio>
#include <map>
#include <optional>
#include <string>

struct User {
    int id = 0;
    std::string name;
};
// With to_json/from_json defined, CacheAside<User, ...> stores a User as JSON.
NLOHMANN_DEFINE_TYPE_NON_INTRUSIVE(User, id, name)

std::map<int, User> users_table{{42, {42, "Ada"}}};  // stands for the database
int db_reads = 0;

std::optional<User> select_user(int id) {
    ++db_reads;
    auto row = users_table.find(id);
    if (row == users_table.end()) return std::nullopt;  // "not found" is cached too
    return row->second;
}

int main(int argc, char** argv) {
    const char* url = argc > 1 ? argv[1] : "redis://127.0.0.1:6379";
    larder::RedisBackend redis(larder::RedisOptions::from_url(url));
    larder::CacheAside<User, larder::RedisBackend> users(
        redis, {.key_prefix = "example-user:", .ttl = std::chrono::minutes(5)});

    auto get_user = [&](int id) {
        return users.get(std::to_string(id), [id] { return select_user(id); });
    };
    auto update_user = [&](const User& u) {
        // The database first, then the cache: a reader that raced the update cannot
        // cache the old row afterwards (its fill is fenced by the invalidation).
        users.invalidate_after(std::to_string(u.id), [&] { users_table[u.id] = u; });
    };

    users.invalidate("42");  // start cold, so every run prints the same lines

    std::printf("first read: %s\n", get_user(42)->name.c_str());   // a miss: loads
    std::printf("second read: %s\n", get_user(42)->name.c_str());  // a hit: no load
    std::printf("loads: %d\n", db_reads);

    update_user({42, "Grace"});
    std::printf("after update: %s\n", get_user(42)->name.c_str());  // loads the new row
    std::printf("loads: %d\n", db_reads);

    const auto s = users.stats();
    std::printf("hits: %llu, misses: %llu\n", static_cast<unsigned long long>(s.hits),
                static_cast<unsigned long long>(s.misses));
}
