// Tags and version keys on every backend: O(1) invalidation, bounded metadata, and no
// resurrection when the metadata is evicted, flushed or deleted behind the cache's back.
#include <larder/larder.hpp>

#include <atomic>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include "support/backends.hpp"
#include "support/eventually.hpp"
#include "support/fake_db.hpp"

using namespace std::chrono_literals;
using larder::Millis;
using larder::test::FakeDb;
using larder::test::Gate;
using larder::test::options_for;

namespace {

// A loader that counts its calls and returns "<key>#<call>".
struct CountingLoader {
    int calls = 0;
    auto operator()(const std::string& key) {
        return
            [this, key] { return std::optional<std::string>(key + "#" + std::to_string(++calls)); };
    }
};

}  // namespace

BACKEND_TEST_CASE("Invalidating a tag misses exactly the entries that carry it", "[tags]") {
    TestType fx;
    larder::CacheAside<std::string, decltype(fx.backend)> cache(fx.backend, options_for(fx));
    CountingLoader load;
    const std::vector<std::string> a_tags{"user:1"}, b_tags{"user:1", "category:5"},
        c_tags{"category:5"}, d_tags{};
    REQUIRE(cache.get("a", a_tags, load("a")) == "a#1");
    REQUIRE(cache.get("b", b_tags, load("b")) == "b#2");
    REQUIRE(cache.get("c", c_tags, load("c")) == "c#3");
    REQUIRE(cache.get("d", d_tags, load("d")) == "d#4");
    // All hits now.
    REQUIRE(cache.get("a", a_tags, load("a")) == "a#1");
    REQUIRE(cache.get("b", b_tags, load("b")) == "b#2");
    REQUIRE(load.calls == 4);

    cache.invalidate_tag("user:1");
    REQUIRE(cache.get("a", a_tags, load("a")) == "a#5");  // tagged user:1: miss
    REQUIRE(cache.get("b", b_tags, load("b")) == "b#6");  // one of its tags: miss
    REQUIRE(cache.get("c", c_tags, load("c")) == "c#3");  // untouched tag: hit
    REQUIRE(cache.get("d", d_tags, load("d")) == "d#4");  // untagged: hit
    REQUIRE(load.calls == 6);

    cache.invalidate_tag("category:5");
    REQUIRE(cache.get("a", a_tags, load("a")) == "a#5");
    REQUIRE(cache.get("b", b_tags, load("b")) == "b#7");
    REQUIRE(cache.get("c", c_tags, load("c")) == "c#8");
}

BACKEND_TEST_CASE("A tag's version deleted behind the cache's back misses its entries", "[tags]") {
    TestType fx;
    larder::CacheAside<std::string, decltype(fx.backend)> cache(fx.backend, options_for(fx));
    CountingLoader load;
    const std::vector<std::string> tags{"user:1"};
    REQUIRE(cache.get("a", tags, load("a")) == "a#1");
    REQUIRE(cache.get("a", tags, load("a")) == "a#1");
    REQUIRE(fx.backend.del(cache.tag_key("user:1")));  // evicted, expired, deleted...
    // The old entry does not come back, and the new one is cached under a new version.
    REQUIRE(cache.get("a", tags, load("a")) == "a#2");
    REQUIRE(cache.get("a", tags, load("a")) == "a#2");
}

TEST_CASE("Tag metadata stays one key per tag, however many writes and invalidations",
          "[tags][memory]") {
    larder::MemoryBackend backend;
    larder::CacheAside<std::string, larder::MemoryBackend> cache(backend);
    CountingLoader load;
    const std::vector<std::string> tags{"hot"};
    for (int i = 0; i < 500; ++i) {
        (void)cache.get("k" + std::to_string(i % 10), tags, load("k"));
        if (i % 3 == 0) cache.invalidate_tag("hot");
    }
    // 10 entries, 1 version key and the cache's bump counter: nothing grows with the
    // number of writes or invalidations (a per-tag member set, as in Laravel's tags, would).
    REQUIRE(backend.size() <= 12);
    const auto version = backend.get(cache.tag_key("hot"));
    REQUIRE(version);
    REQUIRE(version->ttl);  // and bounded in time
}

BACKEND_TEST_CASE("A load that raced a tag invalidation is not served afterwards",
                  "[tags][stale_set]") {
    TestType fx;
    FakeDb db;
    db.write("post:1", "v1");
    larder::CacheAside<std::string, decltype(fx.backend)> cache(fx.backend, options_for(fx));
    const std::vector<std::string> tags{"user:42"};
    Gate loaded, proceed;
    std::thread reader([&] {
        (void)cache.get("post:1", tags, [&] {
            auto row = db.read("post:1");
            loaded.open();
            proceed.wait();
            return row;
        });
    });
    loaded.wait();
    db.write("post:1", "v2");
    cache.invalidate_tag("user:42");
    proceed.open();
    reader.join();
    REQUIRE(cache.get("post:1", tags, [&] { return db.read("post:1"); }) == "v2");
}

BACKEND_TEST_CASE("A read after invalidate_tag does not join a load stamped before it",
                  "[tags][concurrency]") {
    TestType fx;
    FakeDb db;
    db.write("post:1", "v1");
    larder::CacheAside<std::string, decltype(fx.backend)> cache(fx.backend, options_for(fx));
    const std::vector<std::string> tags{"user:42"};
    Gate loaded, proceed;
    std::thread slow([&] {
        (void)cache.get("post:1", tags, [&] {
            auto row = db.read("post:1");
            loaded.open();
            proceed.wait();
            return row;
        });
    });
    loaded.wait();
    db.write("post:1", "v2");
    cache.invalidate_tag("user:42");
    // A reader that joined the slow load would wait for it and then get v1.
    std::optional<std::string> fresh;
    std::atomic<bool> done{false};
    std::thread late([&] {
        fresh = cache.get("post:1", tags, [&] { return db.read("post:1"); });
        done = true;
    });
    const bool without_waiting = larder::test::eventually([&] { return done.load(); }, 2s);
    proceed.open();
    late.join();
    slow.join();
    REQUIRE(without_waiting);
    REQUIRE(fresh == "v2");
    REQUIRE(cache.get("post:1", tags, [&] { return db.read("post:1"); }) == "v2");
}

BACKEND_TEST_CASE("set stores a value with its tags at once", "[tags]") {
    TestType fx;
    larder::CacheAside<std::string, decltype(fx.backend)> cache(fx.backend, options_for(fx));
    const std::vector<std::string> tags{"t"};
    cache.set("k", "written", tags);
    REQUIRE(cache.get("k", tags, [] { return std::optional<std::string>("loaded"); }) == "written");
    cache.invalidate_tag("t");
    REQUIRE(cache.get("k", tags, [] { return std::optional<std::string>("loaded"); }) == "loaded");
}

BACKEND_TEST_CASE("Version keys move readers to a new key on a bump", "[version_keys]") {
    TestType fx;
    larder::VersionKeys versions(fx.backend, {.clock = fx.time_source()});
    larder::CacheAside<std::string, decltype(fx.backend)> cache(fx.backend, options_for(fx));
    FakeDb db;
    db.write("user:42", "v1");
    auto read = [&] {
        return cache.get(versions.key("user:42"), [&] { return db.read("user:42"); });
    };
    REQUIRE(read() == "v1");
    const std::string old_key = versions.key("user:42");
    db.write("user:42", "v2");
    REQUIRE(read() == "v1");  // cached under the current version
    versions.bump("user:42");
    REQUIRE(versions.key("user:42") != old_key);
    REQUIRE(read() == "v2");
    // The old key is left to its TTL, as the seed says: no delete needed.
    REQUIRE(fx.backend.get(cache.full_key(old_key)));
}

BACKEND_TEST_CASE("A deleted version key never brings an old value back", "[version_keys]") {
    TestType fx;
    larder::VersionKeys versions(fx.backend, {.clock = fx.time_source()});
    larder::CacheAside<std::string, decltype(fx.backend)> cache(fx.backend, options_for(fx));
    FakeDb db;
    db.write("user:42", "v1");
    auto read = [&] {
        return cache.get(versions.key("user:42"), [&] { return db.read("user:42"); });
    };
    std::set<std::string> seen_keys;
    for (int round = 0; round < 20; ++round) {
        const std::string value = "v" + std::to_string(round);
        db.write("user:42", value);
        // The version key vanishes (eviction, FLUSHALL of metadata, a restart without
        // persistence) while the old entries are still cached.
        fx.backend.del(versions.version_key("user:42"));
        REQUIRE(read() == value);
        REQUIRE(seen_keys.insert(versions.key("user:42")).second);  // never a repeat
        fx.advance(2ms);
    }
}

TEST_CASE("Textbook INCR version keys resurrect old entries after eviction",
          "[version_keys][memory]") {
    larder::MemoryBackend backend;
    // The seed: version = INCR user:42:version; key = f'user:42:v{version}'.
    auto naive_key = [&] {
        if (!backend.get("user:42:version")) backend.increment("user:42:version", 1);
        return "user:42:v" + backend.get("user:42:version")->bytes;
    };
    backend.set(naive_key(), "old profile", larder::no_expiry);  // cached under v1
    backend.increment("user:42:version", 1);                     // a write bumps to v2
    backend.del("user:42:version");                              // the version key is evicted
    REQUIRE(backend.get(naive_key())->bytes == "old profile");   // v1 again: stale data served

    larder::VersionKeys versions(backend);
    const auto first = versions.key("user:42");
    backend.set(first, "old profile", larder::no_expiry);
    versions.bump("user:42");
    backend.del(versions.version_key("user:42"));
    REQUIRE(versions.key("user:42") != first);
    REQUIRE_FALSE(backend.get(versions.key("user:42")));
}

#if defined(LARDER_TEST_REDIS_BACKEND)
TEST_CASE("A tagged hit costs one round trip on Redis", "[tags][redis]") {
    larder::test::RedisServer server;
    auto redis = larder::test::make_test_backend(server);
    larder::CacheAside<std::string, larder::RedisBackend> cache(redis);
    const std::vector<std::string> tags{"user:1", "category:5"};
    (void)cache.get("post:1", tags, [] { return std::optional<std::string>("p"); });
    const auto before = redis.stats().round_trips;
    for (int i = 0; i < 50; ++i) {
        REQUIRE(cache.get("post:1", tags, [] { return std::optional<std::string>("x"); }) == "p");
    }
    REQUIRE(redis.stats().round_trips - before == 50);
}

TEST_CASE("Tag versions removed with redis-cli, or FLUSHALL, resurrect nothing", "[tags][redis]") {
    larder::test::RedisServer server;
    auto redis = larder::test::make_test_backend(server);
    larder::CacheAside<std::string, larder::RedisBackend> cache(redis);
    const std::vector<std::string> tags{"user:1"};
    int calls = 0;
    auto loader = [&] { return std::optional<std::string>("v" + std::to_string(++calls)); };
    REQUIRE(cache.get("a", tags, loader) == "v1");
    server.command({"DEL", cache.tag_key("user:1")});
    REQUIRE(cache.get("a", tags, loader) == "v2");
    REQUIRE(cache.get("a", tags, loader) == "v2");
    server.command({"FLUSHALL"});
    REQUIRE(cache.get("a", tags, loader) == "v3");
}
#endif
