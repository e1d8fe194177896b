// A child process for the L1 coherence tests: a CacheAside on Redis behind an L1 (Near)
// kept coherent by a RedisBus - or, with a second argument "tracking", by a
// RedisTrackingBus in keys_read mode - driven by commands on stdin, one per line:
//
//   get KEY [TAG...]     prints the value ("(none)" when not found); the loader reads the
//                        "database", which is the Redis key db:KEY
//   getv BASE            get through version keys: the cache key is versions.key(BASE)
//   watch KEY N          prints "watching VALUE", then reads KEY in a loop until it has
//                        printed N changes of value, each as "seen VALUE MICROS" (wall
//                        clock), or 60 s pass; then "done L1_HITS"
//   quit
//
// Every reply line ends with "\n" and is flushed. The first line is "ready" once the bus is
// subscribed.
#include <chrono>
#include <iostream>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#if defined(LARDER_TEST_HAVE_REDIS)
#include <larder/backend/redis.hpp>
#include <larder/larder.hpp>
#include <larder/near/near.hpp>
#include <larder/near/redis_bus.hpp>
#include <larder/near/redis_tracking_bus.hpp>

namespace {

using namespace std::chrono_literals;

std::int64_t now_us() {
    return std::chrono::duration_cast<std::chrono::microseconds>(
               std::chrono::system_clock::now().time_since_epoch())
        .count();
}

// Runs the commands until "quit" or the end of stdin.
template <class Bus>
void serve(larder::RedisBackend& redis, Bus& bus) {
    larder::CacheAside<std::string, larder::RedisBackend> cache(redis);
    larder::Near near(cache, bus, {.ttl = 60s});
    larder::VersionKeys versions(redis);
    if (!bus.wait_connected(10s)) throw std::runtime_error("bus not connected");
    auto loader_for = [&](const std::string& key) {
        return [&redis, key]() -> std::optional<std::string> {
            if (auto row = redis.get("db:" + key)) return row->bytes;
            return std::nullopt;
        };
    };
    std::cout << "ready" << std::endl;

    std::string line;
    while (std::getline(std::cin, line)) {
        std::istringstream in(line);
        std::string op, key;
        in >> op >> key;
        if (op == "quit") break;
        if (op == "get") {
            std::vector<std::string> tags;
            for (std::string t; in >> t;) tags.push_back(t);
            auto v = near.get(key, tags, loader_for(key));
            std::cout << (v ? *v : "(none)") << std::endl;
        } else if (op == "getv") {
            auto v = near.get(versions.key(key), loader_for(key));
            std::cout << (v ? *v : "(none)") << std::endl;
        } else if (op == "watch") {
            int wanted = 0;
            in >> wanted;
            std::string last = near.get(key, loader_for(key)).value_or("(none)");
            std::cout << "watching " << last << std::endl;
            const auto deadline = std::chrono::steady_clock::now() + 60s;
            for (int seen = 0; seen < wanted && std::chrono::steady_clock::now() < deadline;) {
                const std::string v = near.get(key, loader_for(key)).value_or("(none)");
                if (v != last) {
                    std::cout << "seen " << v << " " << now_us() << std::endl;
                    last = v;
                    ++seen;
                }
            }
            std::cout << "done " << near.l1().stats().hits << std::endl;
        } else {
            std::cout << "error unknown command" << std::endl;
        }
    }
}

}  // namespace

int main(int argc, char** argv) {
    const bool tracking = argc == 3 && std::string(argv[2]) == "tracking";
    if (argc != 2 && !tracking) {
        std::cerr << "usage: l1_child PORT [tracking]\n";
        return 2;
    }
    try {
        larder::RedisOptions options{.port = std::stoi(argv[1]), .command_timeout = 2s};
        larder::RedisBackend redis(options);
        if (tracking) {
            larder::RedisTrackingBus bus(redis);
            serve(redis, bus);
        } else {
            larder::RedisBus bus(options);
            serve(redis, bus);
        }
    } catch (const std::exception& e) {
        std::cerr << "l1_child: " << e.what() << "\n";
        return 3;
    }
    return 0;
}
#else
int main() {
    std::cerr << "l1_child: built without hiredis\n";
    return 2;
}
#endif
