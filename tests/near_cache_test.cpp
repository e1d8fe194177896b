// NearCache<T>, the typed in-process L1: objects in and out, its own TTL, the entry bound
// (SIEVE), disable/enable, the generation guard that fences fills racing invalidations,
// and reads that stay safe while other threads replace, erase and clear.
#include <larder/near/near_cache.hpp>

#include <array>
#include <atomic>
#include <latch>
#include <string>
#include <thread>
#include <vector>

#include "support/catch.hpp"

using namespace std::chrono_literals;
using larder::ManualClock;
using larder::NearCache;

namespace {

struct Profile {
    std::int64_t id = 0;
    std::string name;
    std::vector<std::string> roles;
    friend bool operator==(const Profile&, const Profile&) = default;
};

// Counts live objects and copies, to show what a hit copies and that nothing leaks.
struct Tracked {
    static inline std::atomic<int> live{0};
    static inline std::atomic<int> copies{0};

    int value = 0;
    explicit Tracked(int v) : value(v) { ++live; }
    Tracked(const Tracked& o) : value(o.value) {
        ++live;
        ++copies;
    }
    Tracked(Tracked&& o) noexcept : value(o.value) { ++live; }
    Tracked& operator=(const Tracked&) = delete;
    ~Tracked() { --live; }
};

// A value that names its key and carries a checksum over its fields, so a reader can tell
// a value written for another key, or memory that was freed and reused, from a good one.
struct Stamped {
    std::string key;
    std::uint64_t seq = 0;
    std::array<std::uint64_t, 16> payload{};
    std::uint64_t check = 0;

    static std::uint64_t checksum(const std::string& key, std::uint64_t seq,
                                  const std::array<std::uint64_t, 16>& payload) {
        std::uint64_t c = larder::detail::near_hash(key) ^ (seq * 0x9E3779B97F4A7C15ull);
        for (auto p : payload) c = (c ^ p) * 0x100000001B3ull;
        return c;
    }

    static Stamped make(const std::string& key, std::uint64_t seq) {
        Stamped s{key, seq, {}, 0};
        for (std::size_t i = 0; i < s.payload.size(); ++i) s.payload[i] = seq * 31 + i;
        s.check = checksum(s.key, s.seq, s.payload);
        return s;
    }

    [[nodiscard]] bool intact_for(const std::string& k) const {
        return key == k && check == checksum(key, seq, payload);
    }
};

}  // namespace

TEST_CASE("NearCache stores, replaces and erases objects", "[l1]") {
    ManualClock clock;
    NearCache<Profile> cache({.clock = &clock});
    const Profile ada{1, "Ada", {"admin", "reader"}};

    REQUIRE_FALSE(cache.get("user:1"));
    cache.put("user:1", ada);
    REQUIRE(cache.get("user:1") == ada);
    REQUIRE(cache.size() == 1);

    cache.put("user:1", Profile{1, "Ada L.", {}});
    REQUIRE(cache.get("user:1")->name == "Ada L.");
    REQUIRE(cache.size() == 1);

    cache.put("user:2", Profile{2, "Grace", {}});
    REQUIRE(cache.erase("user:1"));
    REQUIRE_FALSE(cache.erase("user:1"));
    REQUIRE_FALSE(cache.get("user:1"));
    REQUIRE(cache.get("user:2"));

    cache.clear();
    REQUIRE(cache.size() == 0);
    REQUIRE_FALSE(cache.get("user:2"));

    // Keys are bytes: NUL, CR/LF and empty keys are keys like any other.
    const std::string odd("a\0b\r\n", 5);
    cache.put(odd, ada);
    cache.put("", Profile{0, "empty", {}});
    REQUIRE(cache.get(odd) == ada);
    REQUIRE_FALSE(cache.get(std::string_view("a", 1)));
    REQUIRE(cache.get("")->name == "empty");
}

TEST_CASE("A hit hands out a copy, not shared mutable state", "[l1]") {
    NearCache<Profile> cache;
    cache.put("k", Profile{7, "Ada", {"reader"}});

    auto first = cache.get("k");
    REQUIRE(first);
    first->name = "changed";
    first->roles.push_back("admin");

    const auto second = cache.get("k");
    REQUIRE(second == Profile{7, "Ada", {"reader"}});
}

TEST_CASE("visit lends the cached object without copying it", "[l1]") {
    NearCache<Tracked> cache;
    cache.put("k", Tracked{42});
    const int copies_before = Tracked::copies.load();

    int seen = 0;
    REQUIRE(cache.visit("k", [&](const Tracked& t) { seen = t.value; }));
    REQUIRE(seen == 42);
    REQUIRE(Tracked::copies.load() == copies_before);
    REQUIRE_FALSE(cache.visit("absent", [&](const Tracked&) { seen = -1; }));
    REQUIRE(seen == 42);

    REQUIRE(cache.get("k")->value == 42);  // get() copies exactly once
    REQUIRE(Tracked::copies.load() == copies_before + 1);
}

TEST_CASE("Entries expire after the cache's own TTL", "[l1]") {
    ManualClock clock;
    NearCache<int> cache({.ttl = 5s, .clock = &clock});
    cache.put("k", 1);
    clock.advance(4999ms);
    REQUIRE(cache.get("k") == 1);
    clock.advance(1ms);
    REQUIRE_FALSE(cache.get("k"));

    // A shorter per-entry TTL (L2's remaining TTL) wins; a longer one is capped.
    cache.put("short", 2, 100ms);
    cache.put("long", 3, 1h);
    clock.advance(100ms);
    REQUIRE_FALSE(cache.get("short"));
    REQUIRE(cache.get("long") == 3);
    clock.advance(4900ms);
    REQUIRE_FALSE(cache.get("long"));

    cache.put("gone", 4, 0ms);  // already expired: nothing stored
    REQUIRE_FALSE(cache.get("gone"));
}

TEST_CASE("Expired entries are reclaimed by later writes", "[l1]") {
    ManualClock clock;
    NearCache<int> cache({.max_entries = 2000, .ttl = 1s, .shards = 1, .clock = &clock});
    for (int i = 0; i < 1000; ++i) cache.put("old" + std::to_string(i), i);
    REQUIRE(cache.size() == 1000);
    clock.advance(2s);
    // Each write examines two entries from the oldest end.
    for (int i = 0; i < 600; ++i) cache.put("new" + std::to_string(i), i);
    REQUIRE(cache.size() == 600);
    REQUIRE(cache.stats().evictions == 0);  // expiry is not eviction
}

TEST_CASE("NearCache stays within max_entries", "[l1]") {
    NearCache<int> cache({.max_entries = 1000, .shards = 4});
    REQUIRE(cache.capacity() == 1000);
    for (int i = 0; i < 5000; ++i) cache.put("k" + std::to_string(i), i);
    REQUIRE(cache.size() <= 1000);
    REQUIRE(cache.size() >= 990);
    REQUIRE(cache.stats().evictions >= 4000);

    NearCache<int> tiny({.max_entries = 3});
    for (int i = 0; i < 100; ++i) tiny.put("k" + std::to_string(i), i);
    REQUIRE(tiny.size() <= 3);
}

TEST_CASE("A scan of one-off keys does not flush the hot set (SIEVE)", "[l1]") {
    NearCache<int> cache({.max_entries = 1000, .shards = 1});
    for (int i = 0; i < 500; ++i) cache.put("hot" + std::to_string(i), i);
    for (int i = 0; i < 500; ++i) REQUIRE(cache.get("hot" + std::to_string(i)) == i);
    for (int i = 0; i < 3000; ++i) {
        cache.put("scan" + std::to_string(i), i);
        if (i % 100 == 0) {
            for (int h = 0; h < 500; ++h) (void)cache.get("hot" + std::to_string(h));
        }
    }
    int survived = 0;
    for (int i = 0; i < 500; ++i) survived += cache.get("hot" + std::to_string(i)) ? 1 : 0;
    // Plain LRU or FIFO keeps none of them after a scan six times the hot set.
    REQUIRE(survived >= 475);
}

TEST_CASE("A disabled NearCache serves nothing and stores nothing; enable starts empty", "[l1]") {
    NearCache<int> cache;
    cache.put("a", 1);
    REQUIRE(cache.enabled());

    cache.disable();
    REQUIRE_FALSE(cache.enabled());
    REQUIRE_FALSE(cache.get("a"));
    cache.put("b", 2);
    const auto g = cache.generation("c");
    REQUIRE_FALSE(cache.put_if_generation("c", 3, g));
    REQUIRE(cache.size() == 0);

    cache.enable();
    REQUIRE(cache.enabled());
    REQUIRE_FALSE(cache.get("a"));  // what was held before the outage is gone
    REQUIRE_FALSE(cache.get("b"));
    // A fill that read its generation while disabled cannot land after enable().
    REQUIRE_FALSE(cache.put_if_generation("c", 3, g));
    cache.put("d", 4);
    REQUIRE(cache.get("d") == 4);
}

TEST_CASE("put_if_generation fails after an invalidation of its key", "[l1]") {
    NearCache<int> cache;

    SECTION("no invalidation: the fill lands") {
        const auto g = cache.generation("k");
        REQUIRE(cache.put_if_generation("k", 1, g));
        REQUIRE(cache.get("k") == 1);
        // Fills do not fence each other: both read the same generation.
        REQUIRE(cache.put_if_generation("k", 2, g));
        REQUIRE(cache.get("k") == 2);
    }
    SECTION("erase of the key, present or not") {
        const auto g = cache.generation("k");
        REQUIRE_FALSE(cache.erase("k"));
        REQUIRE_FALSE(cache.put_if_generation("k", 1, g));
        REQUIRE_FALSE(cache.get("k"));
        REQUIRE(cache.put_if_generation("k", 1, cache.generation("k")));
    }
    SECTION("a plain put of the key (a newer value)") {
        const auto g = cache.generation("k");
        cache.put("k", 2);
        REQUIRE_FALSE(cache.put_if_generation("k", 1, g));
        REQUIRE(cache.get("k") == 2);
    }
    SECTION("clear") {
        const auto g = cache.generation("k");
        cache.clear();
        REQUIRE_FALSE(cache.put_if_generation("k", 1, g));
    }
    SECTION("disable and enable") {
        const auto g = cache.generation("k");
        cache.disable();
        cache.enable();
        REQUIRE_FALSE(cache.put_if_generation("k", 1, g));
    }
}

TEST_CASE("Generations are per hash bucket: other keys' erases rarely fence a fill", "[l1]") {
    // 10,000 entries get at least 10,000 buckets: an erase of an unrelated key fails a fill
    // in flight only when the two keys share a bucket (about 1 in 16,384 here).
    NearCache<int> cache({.max_entries = 10'000});
    const auto g = cache.generation("user:1");
    int fenced = 0;
    for (int i = 2; i < 66; ++i) {
        const std::string other = "user:" + std::to_string(i);
        (void)cache.erase(other);
        cache.put(other, i);
        if (cache.generation("user:1") != g) ++fenced;
    }
    REQUIRE(fenced <= 2);  // each shares user:1's bucket with probability 1/16,384
    REQUIRE(cache.put_if_generation("user:1", 1, g));
    REQUIRE(cache.get("user:1") == 1);
}

TEST_CASE("Fills racing invalidations never leave an older value in L1", "[l1][concurrency]") {
    // The writer publishes version v in "L2", then erases the key, as an invalidation
    // subscriber would. Fillers read their generation, then L2, then fill. Once the erase
    // of v has returned, L1 may hold v or newer, never older.
    NearCache<std::uint64_t> cache;
    std::atomic<std::uint64_t> l2{0};
    std::atomic<bool> done{false};
    std::atomic<int> stale{0};
    std::atomic<int> fills{0};
    std::vector<std::thread> fillers;
    for (int t = 0; t < 3; ++t) {
        fillers.emplace_back([&] {
            while (!done.load()) {
                const auto g = cache.generation("k");
                const auto v = l2.load();
                if (cache.put_if_generation("k", v, g)) ++fills;
                (void)cache.get("k");
            }
        });
    }
    for (std::uint64_t v = 1; v <= 20'000; ++v) {
        l2.store(v);
        (void)cache.erase("k");
        if (auto held = cache.get("k"); held && *held < v) ++stale;
    }
    done = true;
    for (auto& t : fillers) t.join();
    REQUIRE(stale.load() == 0);
    REQUIRE(fills.load() > 0);
}

TEST_CASE("Hits and misses are counted, across threads", "[l1]") {
    NearCache<int> cache;
    cache.put("k", 1);
    std::vector<std::thread> threads;
    for (int t = 0; t < 4; ++t) {
        threads.emplace_back([&] {
            for (int i = 0; i < 1000; ++i) {
                (void)cache.get("k");
                (void)cache.get("absent");
            }
        });
    }
    for (auto& t : threads) t.join();
    REQUIRE(cache.stats().hits == 4000);
    REQUIRE(cache.stats().misses == 4000);

    cache.disable();
    (void)cache.get("k");
    REQUIRE(cache.stats().misses == 4001);
}

TEST_CASE("Bad NearCache options are a ConfigError", "[l1]") {
    REQUIRE_THROWS_AS(NearCache<int>({.max_entries = 0}), larder::ConfigError);
    REQUIRE_THROWS_AS(NearCache<int>({.ttl = 0ms}), larder::ConfigError);
}

TEST_CASE("Replaced, evicted and erased objects are freed, and so is the rest on destruction",
          "[l1]") {
    const int live_before = Tracked::live.load();
    {
        NearCache<Tracked> cache({.max_entries = 100, .shards = 2});
        for (int i = 0; i < 100'000; ++i) {
            cache.put("k" + std::to_string(i % 300), Tracked{i});
            if (i % 7 == 0) (void)cache.erase("k" + std::to_string(i % 13));
        }
        // Held entries plus, per shard, at most a batch waiting for readers to move on.
        REQUIRE(Tracked::live.load() - live_before <= 100 + 2 * 2 * 64);
        cache.clear();
        REQUIRE(Tracked::live.load() - live_before <= 2 * 2 * 64 + 100);
    }
    REQUIRE(Tracked::live.load() == live_before);
}

TEST_CASE("An object lent to visit stays valid while other threads replace it", "[l1]") {
    NearCache<Stamped> cache({.max_entries = 64, .shards = 1});
    cache.put("k", Stamped::make("k", 0));
    std::latch inside(1);
    std::latch replaced(1);
    std::thread writer([&] {
        inside.wait();
        // Many times a retire batch: the writer tries to free old nodes again and again.
        for (std::uint64_t i = 1; i <= 2000; ++i) {
            cache.put("k", Stamped::make("k", i));
            if (i % 3 == 0) (void)cache.erase("k");
            if (i % 500 == 0) cache.clear();
        }
        replaced.count_down();
    });
    bool intact = false;
    std::uint64_t seq = 99;
    REQUIRE(cache.visit("k", [&](const Stamped& s) {
        inside.count_down();
        replaced.wait();
        // Under AddressSanitizer, reading a freed node here would abort.
        intact = s.intact_for("k");
        seq = s.seq;
    }));
    writer.join();
    REQUIRE(intact);
    REQUIRE(seq == 0);
}

TEST_CASE("A visit callback may read and write the cache it visits", "[l1]") {
    NearCache<int> cache;
    cache.put("a", 1);
    cache.put("b", 2);
    int sum = 0;
    REQUIRE(cache.visit("a", [&](const int& a) {
        sum = a + cache.get("b").value_or(0);
        for (int i = 0; i < 500; ++i) cache.put("a", 100 + i);  // replaces what we hold
        sum += a;                                               // still the old object
    }));
    REQUIRE(sum == 4);
    REQUIRE(cache.get("a") == 599);
}

TEST_CASE("Threads that exit give their reader slot back", "[l1]") {
    NearCache<int> cache;
    cache.put("k", 1);
    (void)cache.get("k");  // this thread's slot
    const auto slots_before = larder::detail::EpochDomain::global().slot_count();
    for (int i = 0; i < 50; ++i) {
        std::thread([&] { (void)cache.get("k"); }).join();
    }
    REQUIRE(larder::detail::EpochDomain::global().slot_count() <= slots_before + 1);
}

TEST_CASE("Concurrent gets, puts, erases and clears only ever read values written for the key",
          "[l1][concurrency]") {
    constexpr int thread_count = 8;
    constexpr int ops_per_thread = 20'000;
    constexpr int key_count = 64;
    // Fewer entries than keys, so eviction runs too; one shard per two threads.
    NearCache<Stamped> cache({.max_entries = 48, .shards = 4});
    std::vector<std::string> keys;
    for (int k = 0; k < key_count; ++k) keys.push_back("key:" + std::to_string(k));

    std::atomic<int> bad{0};
    std::atomic<int> hits{0};
    std::vector<std::thread> threads;
    for (int t = 0; t < thread_count; ++t) {
        threads.emplace_back([&, t] {
            std::uint64_t seq = static_cast<std::uint64_t>(t) << 32;
            std::uint32_t x = 2463534242u + static_cast<std::uint32_t>(t);
            int local_hits = 0;
            for (int i = 0; i < ops_per_thread; ++i) {
                x ^= x << 13;
                x ^= x >> 17;
                x ^= x << 5;
                const std::string& key = keys[x % key_count];
                switch ((x >> 8) % 16) {
                    case 0:
                    case 1:
                    case 2:
                        cache.put(key, Stamped::make(key, ++seq));
                        break;
                    case 3: {
                        const auto g = cache.generation(key);
                        (void)cache.put_if_generation(key, Stamped::make(key, ++seq), g);
                        break;
                    }
                    case 4:
                        (void)cache.erase(key);
                        break;
                    case 5:
                        if ((x >> 12) % 64 == 0) cache.clear();
                        break;
                    case 6:
                        if ((x >> 12) % 256 == 0) {
                            cache.disable();
                            cache.enable();
                        }
                        break;
                    case 7:
                        (void)cache.visit(key, [&](const Stamped& s) {
                            if (!s.intact_for(key)) ++bad;
                        });
                        break;
                    default:
                        if (auto v = cache.get(key)) {
                            ++local_hits;
                            if (!v->intact_for(key)) ++bad;
                        }
                        break;
                }
            }
            hits += local_hits;
        });
    }
    for (auto& t : threads) t.join();
    REQUIRE(bad.load() == 0);
    REQUIRE(hits.load() > 0);
    REQUIRE(cache.size() <= 48);
    REQUIRE(cache.enabled());
}
