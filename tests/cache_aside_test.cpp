// CacheAside on every backend: hits and misses, TTLs, negative caching, single-flight,
// the stale-set race (with the seed's naive version failing the same test), corrupt
// values, hostile keys, batch reads and store failures.
#include <larder/backend/chaos.hpp>
#include <larder/codec/json.hpp>
#include <larder/codec/msgpack.hpp>
#include <larder/policy/cache_aside.hpp>

#include <atomic>
#include <barrier>
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

struct User {
    int id = 0;
    std::string name;
    bool operator==(const User&) const = default;
};
NLOHMANN_DEFINE_TYPE_NON_INTRUSIVE(User, id, name)

struct Boom : std::runtime_error {
    using std::runtime_error::runtime_error;
};

// The seed's cache-aside, transcribed: GET, load, SETEX; update = write DB, DEL.
template <class B>
class NaiveCacheAside {
public:
    explicit NaiveCacheAside(B& backend) : backend_(backend) {}

    template <class Loader>
    std::optional<std::string> get(const std::string& key, Loader&& loader) {
        if (auto cached = backend_.get(key); cached && !cached->bytes.empty()) {
            return cached->bytes;
        }
        auto value = loader();
        if (value) backend_.set(key, *value, 300s);
        return value;
    }
    void invalidate(const std::string& key) { backend_.del(key); }

private:
    B& backend_;
};

}  // namespace

BACKEND_TEST_CASE("A miss loads once, then hits without the loader", "[cache_aside]") {
    TestType fx;
    larder::CacheAside<std::string, decltype(fx.backend)> cache(fx.backend, options_for(fx));
    int calls = 0;
    auto loader = [&] {
        ++calls;
        return std::optional<std::string>("value");
    };
    REQUIRE(cache.get("k", loader) == "value");
    REQUIRE(cache.get("k", loader) == "value");
    REQUIRE(cache.get("k", loader) == "value");
    REQUIRE(calls == 1);
    const auto s = cache.stats();
    REQUIRE(s.misses == 1);
    REQUIRE(s.loads == 1);
    REQUIRE(s.fills == 1);
    REQUIRE(s.hits == 2);
}

BACKEND_TEST_CASE("An empty value is a hit, not a miss", "[cache_aside]") {
    TestType fx;
    larder::CacheAside<std::string, decltype(fx.backend)> cache(fx.backend, options_for(fx));
    NaiveCacheAside naive(fx.backend);
    int calls = 0, naive_calls = 0;
    for (int i = 0; i < 3; ++i) {
        REQUIRE(cache.get("empty", [&] {
            ++calls;
            return std::optional<std::string>("");
        }) == "");
        REQUIRE(naive.get("naive-empty", [&] {
            ++naive_calls;
            return std::optional<std::string>("");
        }) == "");
    }
    REQUIRE(calls == 1);
    REQUIRE(naive_calls == 3);  // the seed's `if cached:` reloads an empty value every time
}

BACKEND_TEST_CASE("Structured values round-trip through JSON and MsgPack", "[cache_aside]") {
    TestType fx;
    larder::CacheAside<User, decltype(fx.backend)> json(fx.backend,
                                                        options_for(fx, {.key_prefix = "j:"}));
    larder::CacheAside<User, decltype(fx.backend), larder::MsgPackCodec> msgpack(
        fx.backend, options_for(fx, {.key_prefix = "m:"}));
    const User alice{1, "alice \r\n\0"};
    REQUIRE(json.get("1", [&] { return std::optional<User>(alice); }) == alice);
    REQUIRE(json.get("1", [] { return std::optional<User>(); }) == alice);
    REQUIRE(msgpack.get("1", [&] { return std::optional<User>(alice); }) == alice);
    REQUIRE(msgpack.get("1", [] { return std::optional<User>(); }) == alice);
    REQUIRE(json.stats().hits == 1);
    REQUIRE(msgpack.stats().hits == 1);
}

BACKEND_TEST_CASE("A value expires after its TTL", "[cache_aside][ttl]") {
    TestType fx;
    larder::CacheAside<std::string, decltype(fx.backend)> cache(fx.backend,
                                                                options_for(fx, {.ttl = 200ms}));
    int calls = 0;
    auto loader = [&] { return std::optional<std::string>("v" + std::to_string(++calls)); };
    REQUIRE(cache.get("k", loader) == "v1");
    fx.advance(50ms);
    REQUIRE(cache.get("k", loader) == "v1");
    fx.advance(400ms);
    REQUIRE(cache.get("k", loader) == "v2");
    REQUIRE(calls == 2);
}

BACKEND_TEST_CASE("Not found is cached for the shorter negative TTL", "[cache_aside][ttl]") {
    TestType fx;
    larder::CacheAside<std::string, decltype(fx.backend)> cache(
        fx.backend, options_for(fx, {.ttl = 60s, .negative_ttl = 200ms}));
    int calls = 0;
    auto loader = [&] {
        ++calls;
        return std::optional<std::string>();
    };
    REQUIRE_FALSE(cache.get("ghost", loader));
    REQUIRE_FALSE(cache.get("ghost", loader));
    REQUIRE(calls == 1);
    REQUIRE(cache.stats().negative_hits == 1);
    const auto stored = fx.backend.get(cache.full_key("ghost"));
    REQUIRE(stored);
    REQUIRE(stored->ttl);
    REQUIRE(*stored->ttl <= 200ms);
    fx.advance(400ms);
    REQUIRE_FALSE(cache.get("ghost", loader));
    REQUIRE(calls == 2);
}

TEST_CASE("The stored TTL carries the configured jitter", "[cache_aside][jitter][memory]") {
    larder::test::MemoryFixture fx;
    larder::CacheAside<std::string, larder::MemoryBackend> cache(
        fx.backend, options_for(fx, {.ttl = 300s, .jitter = larder::TtlJitter{.max_extra = 60s}}));
    Millis lo = Millis::max(), hi = Millis::min();
    for (int i = 0; i < 400; ++i) {
        const std::string key = "k" + std::to_string(i);
        (void)cache.get(key, [] { return std::optional<std::string>("v"); });
        const auto ttl = *fx.backend.get(cache.full_key(key))->ttl;
        lo = std::min(lo, ttl);
        hi = std::max(hi, ttl);
    }
    REQUIRE(lo >= 300s);
    REQUIRE(hi <= 360s);
    REQUIRE(hi - lo > 40s);  // spread, not synchronised
}

BACKEND_TEST_CASE("invalidate and update make the next read load again", "[cache_aside]") {
    TestType fx;
    FakeDb db;
    db.write("k", "v1");
    larder::CacheAside<std::string, decltype(fx.backend)> cache(fx.backend, options_for(fx));
    auto loader = [&] { return db.read("k"); };
    REQUIRE(cache.get("k", loader) == "v1");
    cache.invalidate_after("k", [&] { db.write("k", "v2"); });
    REQUIRE(cache.get("k", loader) == "v2");
    db.write("k", "v3");
    REQUIRE(cache.get("k", loader) == "v2");
    cache.invalidate("k");
    REQUIRE(cache.get("k", loader) == "v3");
    REQUIRE(cache.stats().invalidations == 2);

    SECTION("a DB write that throws invalidates nothing") {
        REQUIRE_THROWS_AS(cache.invalidate_after("k", [] { throw Boom("db down"); }), Boom);
        REQUIRE(cache.stats().invalidations == 2);
        REQUIRE(cache.get("k", [] { return std::optional<std::string>("other"); }) == "v3");
    }
}

BACKEND_TEST_CASE("A loader's exception propagates unchanged and caches nothing", "[cache_aside]") {
    TestType fx;
    larder::CacheAside<std::string, decltype(fx.backend)> cache(fx.backend, options_for(fx));
    REQUIRE_THROWS_AS(cache.get("k", []() -> std::optional<std::string> { throw Boom("db"); }),
                      Boom);
    // The lease was released: the next reader loads and fills at once.
    REQUIRE(cache.get("k", [] { return std::optional<std::string>("v"); }) == "v");
    REQUIRE(cache.get("k", [] { return std::optional<std::string>("x"); }) == "v");
    const auto s = cache.stats();
    REQUIRE(s.load_errors == 1);
    REQUIRE(s.fills == 1);
}

BACKEND_TEST_CASE("64 threads on one cold key make exactly one loader call",
                  "[cache_aside][concurrency]") {
    TestType fx;
    larder::CacheAside<std::string, decltype(fx.backend)> cache(fx.backend, options_for(fx));
    std::atomic<int> calls{0};
    std::atomic<int> wrong{0};
    std::barrier start(64);
    std::vector<std::thread> threads;
    for (int t = 0; t < 64; ++t) {
        threads.emplace_back([&] {
            start.arrive_and_wait();
            auto v = cache.get("cold", [&] {
                calls.fetch_add(1);
                std::this_thread::sleep_for(100ms);  // long enough for everyone to arrive
                return std::optional<std::string>("loaded");
            });
            if (v != "loaded") wrong.fetch_add(1);
        });
    }
    for (auto& t : threads) t.join();
    REQUIRE(calls.load() == 1);
    REQUIRE(wrong.load() == 0);
}

BACKEND_TEST_CASE("Every caller sharing a load gets its exception", "[cache_aside][concurrency]") {
    TestType fx;
    larder::CacheAside<std::string, decltype(fx.backend)> cache(fx.backend, options_for(fx));
    std::atomic<int> calls{0}, caught{0};
    std::barrier start(16);
    std::vector<std::thread> threads;
    for (int t = 0; t < 16; ++t) {
        threads.emplace_back([&] {
            start.arrive_and_wait();
            try {
                (void)cache.get("k", [&]() -> std::optional<std::string> {
                    calls.fetch_add(1);
                    std::this_thread::sleep_for(100ms);
                    throw Boom("db");
                });
            } catch (const Boom&) {
                caught.fetch_add(1);
            }
        });
    }
    for (auto& t : threads) t.join();
    REQUIRE(calls.load() == 1);
    REQUIRE(caught.load() == 16);
}

// The race: a reader loads v1 from the DB; before it writes the cache, a writer stores v2
// and invalidates. The naive reader then caches v1, and every later read is stale until
// the TTL. The test interleaves the two with gates, so it fails the same way every time.
BACKEND_TEST_CASE("A load that raced an update cannot cache the old value (stale set)",
                  "[cache_aside][stale_set]") {
    TestType fx;
    FakeDb db;
    db.write("user:1", "v1");

    auto race = [&](auto&& get, auto&& invalidate) {
        Gate loaded, proceed;
        std::thread reader([&] {
            (void)get([&] {
                auto row = db.read("user:1");
                loaded.open();
                proceed.wait();
                return row;
            });
        });
        loaded.wait();
        db.write("user:1", "v2");
        invalidate();
        proceed.open();
        reader.join();
        db.write("user:1", "v1");  // reset for the next contender
    };

    SECTION("the seed's cache-aside caches the stale value") {
        NaiveCacheAside naive(fx.backend);
        race([&](auto loader) { return naive.get("user:1", loader); },
             [&] { naive.invalidate("user:1"); });
        db.write("user:1", "v2");
        REQUIRE(naive.get("user:1", [&] { return db.read("user:1"); }) == "v1");  // stale
    }
    SECTION("CacheAside's fenced fill is rejected") {
        larder::CacheAside<std::string, decltype(fx.backend)> cache(fx.backend, options_for(fx));
        race([&](auto loader) { return cache.get("user:1", loader); },
             [&] { cache.invalidate("user:1"); });
        db.write("user:1", "v2");
        REQUIRE(cache.get("user:1", [&] { return db.read("user:1"); }) == "v2");
        REQUIRE(cache.stats().fills_rejected == 1);
    }
}

BACKEND_TEST_CASE("A read that starts after invalidate does not join an older load",
                  "[cache_aside][concurrency]") {
    TestType fx;
    FakeDb db;
    db.write("k", "v1");
    larder::CacheAside<std::string, decltype(fx.backend)> cache(fx.backend, options_for(fx));
    Gate loaded, proceed;
    std::thread slow([&] {
        (void)cache.get("k", [&] {
            auto row = db.read("k");
            loaded.open();
            proceed.wait();
            return row;
        });
    });
    loaded.wait();
    cache.invalidate_after("k", [&] { db.write("k", "v2"); });
    // The old load is still running; a new reader must see v2, not wait for v1.
    REQUIRE(cache.get("k", [&] { return db.read("k"); }) == "v2");
    proceed.open();
    slow.join();
    REQUIRE(cache.get("k", [&] { return db.read("k"); }) == "v2");
}

BACKEND_TEST_CASE("A read after another process's invalidate does not join an older load",
                  "[cache_aside][concurrency][stale_set]") {
    TestType fx;
    FakeDb db;
    db.write("k", "v1");
    // Two cache objects on one store: two processes, each with its own single-flight.
    larder::CacheAside<std::string, decltype(fx.backend)> writer(fx.backend, options_for(fx));
    larder::CacheAside<std::string, decltype(fx.backend)> reader(fx.backend, options_for(fx));
    Gate loaded, proceed;
    std::thread slow([&] {
        (void)reader.get("k", [&] {
            auto row = db.read("k");
            loaded.open();
            proceed.wait();
            return row;
        });
    });
    loaded.wait();
    writer.invalidate_after("k", [&] { db.write("k", "v2"); });  // deletes the slow load's lease
    // Started after the write returned: it finds the lease gone and loads for itself. (A
    // reader that joined the slow load would wait for it and then get v1.)
    std::optional<std::string> fresh;
    std::atomic<bool> done{false};
    std::thread late([&] {
        fresh = reader.get("k", [&] { return db.read("k"); });
        done = true;
    });
    const bool without_waiting = larder::test::eventually([&] { return done.load(); }, 2s);
    proceed.open();
    late.join();
    slow.join();
    REQUIRE(without_waiting);
    REQUIRE(fresh == "v2");
    REQUIRE(reader.get("k", [&] { return db.read("k"); }) == "v2");
}

BACKEND_TEST_CASE("Corrupt or foreign stored values are a counted miss", "[cache_aside][corrupt]") {
    TestType fx;
    larder::CacheAside<User, decltype(fx.backend)> cache(fx.backend, options_for(fx));
    const User bob{2, "bob"};
    auto loader = [&] { return std::optional<User>(bob); };

    auto envelope_with = [](std::uint8_t codec, std::string_view payload) {
        std::string b;
        larder::envelope::write_header(b, larder::EnvelopeHeader{.codec = codec});
        b += payload;
        return b;
    };
    std::string good = envelope_with(larder::codec_id::json, R"({"id":2,"name":"bob"})");
    std::string unknown_version = good;
    unknown_version[2] = 99;

    const std::vector<std::pair<std::string, std::string>> cases{
        {"random bytes", "\x13\x37garbage\xff\x00\x01"},
        {"truncated envelope", good.substr(0, 20)},
        {"unknown format version", unknown_version},
        {"foreign JSON (another app's raw value)", R"({"id":2,"name":"bob"})"},
        {"wrong schema", envelope_with(larder::codec_id::json, R"({"uid":"x"})")},
        {"not JSON at all", envelope_with(larder::codec_id::json, "<html>")},
        {"another codec's bytes", envelope_with(larder::codec_id::msgpack, "\x81\xa1x\x01")},
        {"empty", ""},
    };
    std::uint64_t corrupt = 0;
    for (const auto& [name, bytes] : cases) {
        INFO(name);
        fx.raw_set(cache.full_key("2"), bytes);
        REQUIRE(cache.get("2", loader) == bob);
        REQUIRE(cache.stats().corrupt_values == ++corrupt);
        // The bad bytes were removed and replaced by a good fill: the next read hits.
        REQUIRE(cache.get("2", [] { return std::optional<User>(); }) == bob);
        REQUIRE(cache.stats().corrupt_values == corrupt);
    }
}

BACKEND_TEST_CASE("Keys with hostile bytes round-trip through the cache", "[cache_aside]") {
    TestType fx;
    larder::CacheAside<std::string, decltype(fx.backend)> cache(
        fx.backend, options_for(fx, {.key_prefix = "app:"}));
    const std::vector<std::string> keys{"with space",
                                        "cr\rlf\n",
                                        std::string("nul\0key", 7),
                                        "100%s%n",
                                        std::string("\xc3\x28\xa0\xa1", 4),
                                        std::string(1 << 20, 'x')};
    for (const auto& key : keys) {
        REQUIRE(cache.get(key, [&] { return std::optional<std::string>("v:" + key); }) ==
                "v:" + key);
    }
    for (const auto& key : keys) {
        REQUIRE(cache.get(key, [] { return std::optional<std::string>("wrong"); }) == "v:" + key);
        REQUIRE(fx.backend.get("app:k:" + key));  // docs/FORMAT.md, "Keys"
    }
    REQUIRE(cache.stats().hits == keys.size());
}

BACKEND_TEST_CASE("get_many reads once and loads only the misses, once", "[cache_aside][batch]") {
    TestType fx;
    larder::ChaosBackend counted(fx.backend);
    larder::CacheAside<std::string, decltype(counted)> cache(counted, options_for(fx));
    (void)cache.get("a", [] { return std::optional<std::string>("A"); });
    (void)cache.get("gone", [] { return std::optional<std::string>(); });

    const auto reads_before = counted.calls().get + counted.calls().get_many;
    std::vector<std::vector<std::string>> batches;
    const std::vector<std::string> keys{"a", "b", "c", "b", "gone", "d"};
    auto got = cache.get_many(keys, [&](std::span<const std::string> missing) {
        batches.emplace_back(missing.begin(), missing.end());
        std::vector<std::optional<std::string>> out;
        for (const auto& k : missing) {
            out.push_back(k == "d" ? std::nullopt : std::optional<std::string>(k + "!"));
        }
        return out;
    });
    REQUIRE(counted.calls().get + counted.calls().get_many - reads_before == 1);
    REQUIRE(batches.size() == 1);
    REQUIRE(batches[0] == std::vector<std::string>{"b", "c", "d"});
    REQUIRE(got == std::vector<std::optional<std::string>>{"A", "b!", "c!", "b!", std::nullopt,
                                                           std::nullopt});

    // Everything, the "not found" for d included, is cached now.
    batches.clear();
    got = cache.get_many(keys, [&](std::span<const std::string> missing) {
        batches.emplace_back(missing.begin(), missing.end());
        return std::vector<std::optional<std::string>>(missing.size());
    });
    REQUIRE(batches.empty());
    REQUIRE(got[1] == "b!");

    SECTION("a batch loader that answers the wrong count is a LoaderError") {
        REQUIRE_THROWS_AS(cache.get_many(std::vector<std::string>{"x", "y"},
                                         [](std::span<const std::string>) {
                                             return std::vector<std::optional<std::string>>(1);
                                         }),
                          larder::LoaderError);
        // Its leases were released: x loads and fills normally.
        REQUIRE(cache.get("x", [] { return std::optional<std::string>("X"); }) == "X");
        REQUIRE(cache.get("x", [] { return std::optional<std::string>("?"); }) == "X");
    }
}

// Found by larder-check (get_many in cache-aside+tags): a batch read took no tags, so what
// it filled carried none and no invalidate_tag ever reached it.
BACKEND_TEST_CASE("get_many with tags stamps what it fills: invalidate_tag reaches it",
                  "[cache_aside][batch][tags][regression]") {
    TestType fx;
    larder::CacheAside<std::string, decltype(fx.backend)> cache(fx.backend, options_for(fx));
    FakeDb db;
    db.write("a", "a1");
    db.write("b", "b1");
    const std::vector<std::string> keys{"a", "b"};
    const std::vector<std::vector<std::string>> tags{{"row:a"}, {"row:b", "team:1"}};
    auto load = [&](std::span<const std::string> missing) {
        std::vector<std::optional<std::string>> out;
        for (const auto& k : missing) out.push_back(db.read(k));
        return out;
    };
    REQUIRE(cache.get_many(keys, tags, load) ==
            std::vector<std::optional<std::string>>{"a1", "b1"});

    db.write("a", "a2");
    db.write("b", "b2");
    cache.invalidate_tag("row:a");
    cache.invalidate_tag("team:1");
    REQUIRE(cache.get_many(keys, tags, load) ==
            std::vector<std::optional<std::string>>{"a2", "b2"});
    // A single read without tags too: the entry's own stamped tags decide.
    db.write("a", "a3");
    cache.invalidate_tag("row:a");
    REQUIRE(cache.get("a", [&] { return db.read("a"); }) == "a3");

    SECTION("tag lists that do not match the keys are a ConfigError") {
        REQUIRE_THROWS_AS(cache.get_many(keys, std::span(tags.data(), 1), load),
                          larder::ConfigError);
    }
}

BACKEND_TEST_CASE("A failing store degrades every read to the loader", "[cache_aside][faults]") {
    TestType fx;
    larder::ChaosBackend chaos(fx.backend);
    larder::CacheAside<std::string, decltype(chaos)> cache(chaos, options_for(fx));
    (void)cache.get("warm", [] { return std::optional<std::string>("cached"); });

    chaos.fail_all(true);
    int calls = 0;
    for (int i = 0; i < 5; ++i) {
        REQUIRE(cache.get("warm", [&] {
            ++calls;
            return std::optional<std::string>("from-db");
        }) == "from-db");
    }
    REQUIRE(calls == 5);
    auto many = cache.get_many(std::vector<std::string>{"warm", "cold"},
                               [](std::span<const std::string> m) {
                                   return std::vector<std::optional<std::string>>(m.size(), "db");
                               });
    REQUIRE(many == std::vector<std::optional<std::string>>{"db", "db"});
    REQUIRE(cache.stats().backend_errors >= 6);
    REQUIRE_THROWS_AS(cache.invalidate("warm"), larder::BackendError);

    chaos.fail_all(false);
    REQUIRE(cache.get("warm", [] { return std::optional<std::string>("x"); }) == "cached");
}

BACKEND_TEST_CASE("Random store failures never surface from a read",
                  "[cache_aside][faults][concurrency]") {
    TestType fx;
    larder::ChaosBackend chaos(fx.backend);
    chaos.fail_probability(0.3);
    larder::CacheAside<std::string, decltype(chaos)> cache(chaos, options_for(fx));
    std::atomic<int> wrong{0};
    std::vector<std::thread> threads;
    for (int t = 0; t < 8; ++t) {
        threads.emplace_back([&, t] {
            for (int i = 0; i < 200; ++i) {
                const std::string key = "k" + std::to_string((i + t) % 20);
                if (cache.get(key, [&] { return std::optional<std::string>("v" + key); }) !=
                    "v" + key) {
                    wrong.fetch_add(1);
                }
            }
        });
    }
    for (auto& t : threads) t.join();
    REQUIRE(wrong.load() == 0);
    REQUIRE(chaos.injected_failures() > 0);
    REQUIRE(cache.stats().backend_errors == chaos.injected_failures());
}

TEST_CASE("Bad CacheAside options are a ConfigError", "[cache_aside]") {
    larder::MemoryBackend backend;
    using Cache = larder::CacheAside<std::string, larder::MemoryBackend>;
    REQUIRE_THROWS_AS(Cache(backend, {.ttl = 0s}), larder::ConfigError);
    REQUIRE_THROWS_AS(Cache(backend, {.negative_ttl = -1s}), larder::ConfigError);
    REQUIRE_THROWS_AS(Cache(backend, {.jitter = {.ratio = 2.0}}), larder::ConfigError);
}
