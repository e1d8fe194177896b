// Stampede guards composed: a cold key asked for by 16 threads in two "processes" at once
// makes one database query. Single-flight shares a load inside a process; the Lock guard
// makes the other process wait for the lease holder's value instead of loading too; XFetch
// refreshes a hot key before it expires; jitter keeps keys written together from expiring
// together.
//
//   stampede_guards [redis://127.0.0.1:6379]
#include <larder/backend/redis.hpp>
#include <larder/larder.hpp>

#include <atomic>
#include <chrono>
#include <cstdio>
#include <optional>
#include <string>
#include <thread>
#include <vector>

using namespace std::chrono_literals;

std::atomic<int> queries{0};

std::optional<std::string> expensive_report() {  // a 100 ms query
    queries.fetch_add(1);
    std::this_thread::sleep_for(100ms);
    return std::string("report");
}

int main(int argc, char** argv) {
    const char* url = argc > 1 ? argv[1] : "redis://127.0.0.1:6379";
    using Guard = larder::Guards<larder::XFetch, larder::Lock>;
    using Cache = larder::CacheAside<std::string, larder::RedisBackend, Guard>;
    const larder::CacheAsideOptions options{
        .key_prefix = "example-report:",
        .ttl = 60s,
        .jitter = {.ratio = 0.1},  // each fill lives 54 s .. 66 s
    };
    const Guard guard(larder::XFetch(larder::XFetchOptions{.beta = 1.0}),
                      larder::Lock(larder::LockOptions{.max_wait = 5s}));

    // Two backends and two caches stand for two processes: each has its own single-flight.
    larder::RedisBackend redis_a(larder::RedisOptions::from_url(url));
    larder::RedisBackend redis_b(larder::RedisOptions::from_url(url));
    Cache a(redis_a, options, guard);
    Cache b(redis_b, options, guard);
    a.invalidate("daily");  // start cold on every run

    std::atomic<int> served{0};
    {
        std::vector<std::jthread> readers;
        for (int i = 0; i < 16; ++i) {
            readers.emplace_back([&, i] {
                Cache& cache = i % 2 == 0 ? a : b;
                if (cache.get("daily", expensive_report) == "report") served.fetch_add(1);
            });
        }
    }  // joins

    std::printf("readers served: %d\n", served.load());
    std::printf("loader calls: %d\n", queries.load());
}
