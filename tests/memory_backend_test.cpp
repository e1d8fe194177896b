// MemoryBackend's own promises beyond the conformance suite: bounds, scan resistance,
// reclaiming expired entries without a thread.
#include <larder/backend/memory.hpp>

#include <dirent.h>

#include <string>
#include <thread>

#include "support/catch.hpp"

using namespace std::chrono_literals;
using larder::Millis;

namespace {

std::size_t thread_count() {
    std::size_t n = 0;
    if (DIR* dir = opendir("/proc/self/task")) {
        while (dirent* e = readdir(dir)) {
            if (e->d_name[0] != '.') ++n;
        }
        closedir(dir);
    }
    return n;
}

}  // namespace

TEST_CASE("MemoryBackend stays within its entry bound", "[memory]") {
    larder::MemoryBackend backend({.max_entries = 1000, .shards = 4});
    for (int i = 0; i < 5000; ++i) backend.set("k" + std::to_string(i), "v", larder::no_expiry);
    REQUIRE(backend.size() <= 1000);
    REQUIRE(backend.size() >= 900);
    REQUIRE(backend.evictions() >= 4000);
}

TEST_CASE("MemoryBackend stays within its byte bound", "[memory]") {
    larder::MemoryBackend backend({.max_bytes = 1 << 20, .shards = 4});
    const std::string value(10'000, 'x');
    for (int i = 0; i < 1000; ++i) backend.set("k" + std::to_string(i), value, larder::no_expiry);
    REQUIRE(backend.bytes() <= (1u << 20));
    REQUIRE(backend.size() < 110);
    REQUIRE(backend.evictions() > 890);
    REQUIRE_THROWS_AS(backend.set("huge", std::string(1 << 20, 'x'), larder::no_expiry),
                      larder::BackendError);
}

TEST_CASE("MemoryBackend: a scan of one-off keys does not flush the hot set", "[memory]") {
    larder::MemoryBackend backend({.max_entries = 1000, .shards = 1});
    for (int i = 0; i < 500; ++i) backend.set("hot" + std::to_string(i), "v", larder::no_expiry);
    for (int i = 0; i < 500; ++i) REQUIRE(backend.get("hot" + std::to_string(i)));
    // A scan three times the capacity, each key written once and never read again.
    for (int i = 0; i < 3000; ++i) {
        backend.set("scan" + std::to_string(i), "v", larder::no_expiry);
        if (i % 100 == 0) {
            for (int h = 0; h < 500; ++h) (void)backend.get("hot" + std::to_string(h));
        }
    }
    int survived = 0;
    for (int i = 0; i < 500; ++i) survived += backend.get("hot" + std::to_string(i)) ? 1 : 0;
    // Plain LRU keeps none of them after this scan; SIEVE keeps the ones that were read.
    REQUIRE(survived >= 475);
}

TEST_CASE("Expired entries are reclaimed by later writes, without a thread", "[memory]") {
    larder::ManualClock clock;
    const auto threads_before = thread_count();
    larder::MemoryBackend backend({.shards = 1, .clock = &clock});
    REQUIRE(thread_count() == threads_before);

    for (int i = 0; i < 1000; ++i) backend.set("old" + std::to_string(i), "v", 1s);
    REQUIRE(backend.size() == 1000);
    clock.advance(2s);
    for (int i = 0; i < 600; ++i) backend.set("new" + std::to_string(i), "v", 60s);
    // Each write sweeps two entries: 1200 examined covers the 1000 expired.
    REQUIRE(backend.size() == 600);

    for (int i = 0; i < 100; ++i) backend.set("more" + std::to_string(i), "v", 1s);
    clock.advance(2s);
    backend.purge_expired();
    REQUIRE(backend.size() == 600);
}

TEST_CASE("Bad MemoryBackend options are a ConfigError", "[memory]") {
    REQUIRE_THROWS_AS(larder::MemoryBackend({.max_entries = 0}), larder::ConfigError);
    REQUIRE_THROWS_AS(larder::MemoryBackend({.max_bytes = 0}), larder::ConfigError);
}

TEST_CASE("MemoryBackend survives concurrent mixed operations", "[memory][concurrency]") {
    larder::MemoryBackend backend({.max_entries = 200, .shards = 4});
    std::vector<std::thread> threads;
    for (int t = 0; t < 8; ++t) {
        threads.emplace_back([&, t] {
            for (int i = 0; i < 5000; ++i) {
                const std::string key = "k" + std::to_string((i * 7 + t) % 400);
                switch (i % 5) {
                    case 0:
                        backend.set(key, "v", Millis{1 + i % 3});
                        break;
                    case 1:
                        (void)backend.get(key);
                        break;
                    case 2:
                        backend.set_if_absent(key, "w", 10s);
                        break;
                    case 3:
                        backend.compare_and_delete(key, "v");
                        break;
                    default:
                        backend.del(key);
                        break;
                }
            }
        });
    }
    for (auto& t : threads) t.join();
    REQUIRE(backend.size() <= 200);
}
