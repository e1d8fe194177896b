// An in-process L1 (Near) in front of Redis, kept coherent by an invalidation bus: a write
// made through one client drops the key from every other client's L1.
//
//   near_cache [redis://127.0.0.1:6379]
#include <larder/backend/redis.hpp>
#include <larder/larder.hpp>
#include <larder/near/redis_bus.hpp>

#include <chrono>
#include <cstdio>
#include <map>
#include <optional>
#include <string>
#include <thread>

using namespace std::chrono_literals;
using Cache = larder::CacheAside<std::string, larder::RedisBackend>;

std::map<std::string, std::string> prices{{"apple", "1.20"}};  // stands for the database

// One application instance: its Redis connections, its bus subscription and its L1.
struct Client {
    explicit Client(const larder::RedisOptions& where)
        : redis(where),
          bus(where),
          cache(redis, {.key_prefix = "example-price:"}),
          near(cache, bus, {.max_entries = 1000, .ttl = 30s}) {
        // L1 serves nothing until the bus has subscribed (it could miss invalidations).
        for (int i = 0; i < 5000 && !near.l1().enabled(); ++i) std::this_thread::sleep_for(1ms);
    }
    std::string price(const std::string& item) {
        return *near.get(item, [item] { return std::optional<std::string>(prices[item]); });
    }
    larder::RedisBackend redis;
    larder::RedisBus bus;
    Cache cache;
    larder::Near<Cache, larder::RedisBus> near;
};

int main(int argc, char** argv) {
    const auto where =
        larder::RedisOptions::from_url(argc > 1 ? argv[1] : "redis://127.0.0.1:6379");
    Client a(where), b(where);
    a.cache.invalidate("apple");  // start cold on every run (in Redis; the L1s are new)

    std::printf("a reads: %s\n", a.price("apple").c_str());  // Redis miss: loads
    std::printf("a reads: %s\n", a.price("apple").c_str());  // L1 hit: no round trip
    std::printf("a L1 hits: %llu\n", static_cast<unsigned long long>(a.near.l1().stats().hits));

    // b changes the price: database, then Redis, then b's L1, then a message to every L1.
    b.near.invalidate_after("apple", [] { prices["apple"] = "1.35"; });

    // The message reaches a within about a millisecond; wait for it (at most 5 s). a's L1
    // held only apple, so it is empty once the message is applied.
    for (int i = 0; i < 5000 && a.near.l1().size() > 0; ++i) std::this_thread::sleep_for(1ms);
    std::printf("a L1 after b's write: %s\n", a.near.l1().size() == 0 ? "dropped" : "kept");
    std::printf("a reads: %s\n", a.price("apple").c_str());
}
