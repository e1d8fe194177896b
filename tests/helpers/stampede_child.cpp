// A child process for the multi-process stampede tests.
//
//   stampede_child read <port> <lock|none|naive> <key> <threads>
//       connects, starts its threads, prints "ready", then reads the start instant
//       (epoch ms) from stdin; the threads all read <key> at that instant. The loader
//       takes 200 ms and counts itself in Redis (INCR loader_calls). Exit 0 when every
//       read got a value.
//   stampede_child hold <port> <key> <lease_ttl_ms>
//       misses <key>, prints "holding" from inside the loader and never returns: a
//       lease holder for the test to SIGKILL.
//   stampede_child slow <port> <key> <lease_ttl_ms> <max_load_ms> <load_ms>
//       misses <key>, prints "holding" from inside the loader, which returns "late" after
//       <load_ms>; then prints what its get returned and its counters:
//       "<value> overdue=<n> fills=<n> rejected=<n>". A holder for the test to SIGSTOP,
//       or one that hangs past max_load_time.
#include <atomic>
#include <chrono>
#include <cstdio>
#include <iostream>
#include <string>
#include <thread>
#include <vector>

#if defined(LARDER_TEST_HAVE_REDIS)
#include <larder/backend/redis.hpp>
#include <larder/larder.hpp>

namespace {

using namespace std::chrono_literals;

larder::RedisBackend connect(int port, std::size_t pool) {
    return larder::RedisBackend(larder::RedisOptions{
        .port = port, .command_timeout = 2s, .pool_size = pool, .require_connection = true});
}

std::optional<std::string> slow_loader(larder::RedisBackend& redis) {
    redis.increment("loader_calls", 1);
    // Long enough that every reader of a slow, loaded machine reads within it.
    std::this_thread::sleep_for(200ms);
    return "fresh";
}

// The seed's cache-aside: GET, on a miss load and SETEX.
std::optional<std::string> naive_get(larder::RedisBackend& redis, const std::string& key) {
    if (auto cached = redis.get(key)) return cached->bytes;
    auto value = slow_loader(redis);
    redis.set(key, *value, 60s);
    return value;
}

// Starts the threads, says "ready", and lets them all read at the instant the parent
// sends: a parent that picks the instant only after every child is ready knows that no
// child starts late, however slow the machine.
template <class Read>
int run_readers(int threads, Read read) {
    std::vector<std::thread> pool;
    std::atomic<int> failures{0};
    std::atomic<std::int64_t> start_ms{0};
    for (int t = 0; t < threads; ++t) {
        pool.emplace_back([&] {
            while (start_ms.load() == 0) std::this_thread::sleep_for(1ms);
            std::this_thread::sleep_until(larder::TimePoint{larder::Millis{start_ms.load()}});
            try {
                if (!read()) failures.fetch_add(1);
            } catch (const std::exception& e) {
                std::cerr << "reader: " << e.what() << "\n";
                failures.fetch_add(1);
            }
        });
    }
    std::cout << "ready" << std::endl;
    std::string line;
    const bool got_start = static_cast<bool>(std::getline(std::cin, line));
    start_ms.store(got_start ? std::stoll(line) : 1);
    for (auto& t : pool) t.join();
    return got_start && failures.load() == 0 ? 0 : 1;
}

int read_main(int port, const std::string& mode, const std::string& key, int threads) {
    auto redis = connect(port, static_cast<std::size_t>(threads));
    if (mode == "naive") {
        return run_readers(threads, [&] { return naive_get(redis, key).has_value(); });
    }
    if (mode == "lock") {
        larder::CacheAside<std::string, larder::RedisBackend, larder::Lock> cache(redis);
        return run_readers(threads, [&] {
            return cache.get(key, [&] { return slow_loader(redis); }).has_value();
        });
    }
    larder::CacheAside<std::string, larder::RedisBackend> cache(redis);
    return run_readers(
        threads, [&] { return cache.get(key, [&] { return slow_loader(redis); }).has_value(); });
}

int hold_main(int port, const std::string& key, int lease_ttl_ms) {
    auto redis = connect(port, 2);
    larder::CacheAside<std::string, larder::RedisBackend> cache(
        redis, {.lease_ttl = larder::Millis{lease_ttl_ms}});
    (void)cache.get(key, []() -> std::optional<std::string> {
        std::cout << "holding" << std::endl;
        std::this_thread::sleep_for(60s);
        return "never";
    });
    return 0;
}

int slow_main(int port, const std::string& key, int lease_ttl_ms, int max_load_ms, int load_ms) {
    auto redis = connect(port, 2);
    larder::CacheAside<std::string, larder::RedisBackend> cache(
        redis,
        {.lease_ttl = larder::Millis{lease_ttl_ms}, .max_load_time = larder::Millis{max_load_ms}});
    const auto got = cache.get(key, [&]() -> std::optional<std::string> {
        std::cout << "holding" << std::endl;
        std::this_thread::sleep_for(larder::Millis{load_ms});
        return "late";
    });
    const auto s = cache.stats();
    std::cout << got.value_or("(none)") << " overdue=" << s.overdue_loads << " fills=" << s.fills
              << " rejected=" << s.fills_rejected << std::endl;
    return 0;
}

}  // namespace

int main(int argc, char** argv) {
    const std::vector<std::string> args(argv + 1, argv + argc);
    try {
        if (args.size() == 5 && args[0] == "read") {
            return read_main(std::stoi(args[1]), args[2], args[3], std::stoi(args[4]));
        }
        if (args.size() == 4 && args[0] == "hold") {
            return hold_main(std::stoi(args[1]), args[2], std::stoi(args[3]));
        }
        if (args.size() == 6 && args[0] == "slow") {
            return slow_main(std::stoi(args[1]), args[2], std::stoi(args[3]), std::stoi(args[4]),
                             std::stoi(args[5]));
        }
    } catch (const std::exception& e) {
        std::cerr << "stampede_child: " << e.what() << "\n";
        return 3;
    }
    std::cerr << "usage: stampede_child read PORT MODE KEY THREADS | hold PORT KEY TTL | slow PORT "
                 "KEY TTL MAX_LOAD LOAD\n";
    return 2;
}
#else
int main() {
    std::cerr << "stampede_child: built without hiredis\n";
    return 2;
}
#endif
