// Adaptive entries (a loader decides its entry's TTL and tags, or not to cache it),
// per-call options, and loader timeouts (soft: serve the stale value; hard: bound every
// caller's wait). See docs/adaptive.md.
#include <larder/larder.hpp>
#include <larder/policy/write_behind.hpp>
#include <larder/policy/write_through.hpp>

#include <atomic>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "support/backends.hpp"
#include "support/eventually.hpp"
#include "support/fake_db.hpp"

using namespace std::chrono_literals;
using larder::LoadContext;
using larder::Millis;
using larder::test::eventually;
using larder::test::FakeDb;
using larder::test::Gate;
using larder::test::options_for;
using larder::test::SlowRow;

namespace {

using Str = std::optional<std::string>;

}  // namespace

// ---- adaptive entries ---------------------------------------------------------------

TEST_CASE("A loader sets its entry's TTL from what it loaded", "[adaptive][memory]") {
    larder::test::MemoryFixture fx;
    larder::CacheAside<std::string, larder::MemoryBackend> cache(fx.backend,
                                                                 options_for(fx, {.ttl = 10min}));
    int loads = 0;
    auto load = [&](LoadContext& ctx) -> Str {
        ++loads;
        ctx.ttl = 2s;  // say, a row that changes often
        return "row";
    };
    REQUIRE(cache.get("k", load) == "row");
    fx.advance(1500ms);
    REQUIRE(cache.get("k", load) == "row");
    REQUIRE(loads == 1);
    fx.advance(1s);  // past the loader's 2 s, well within the cache's 10 min
    REQUIRE(cache.get("k", load) == "row");
    REQUIRE(loads == 2);
}

BACKEND_TEST_CASE("A loader may say not to cache what it loaded", "[adaptive]") {
    TestType fx;
    larder::CacheAside<std::string, decltype(fx.backend)> cache(fx.backend, options_for(fx));
    int loads = 0;
    auto load = [&](LoadContext& ctx) -> Str {
        ctx.cache = ++loads > 1;  // the first answer is a placeholder
        return "row" + std::to_string(loads);
    };
    REQUIRE(cache.get("k", load) == "row1");
    REQUIRE_FALSE(fx.backend.get(cache.full_key("k")).has_value());  // no lease left behind
    REQUIRE(cache.get("k", load) == "row2");
    REQUIRE(cache.get("k", load) == "row2");
    REQUIRE(loads == 2);
    REQUIRE(cache.stats().not_cached == 1);
}

BACKEND_TEST_CASE("A loader's tags retire its entry like the read's own", "[adaptive][tags]") {
    TestType fx;
    larder::CacheAside<std::string, decltype(fx.backend)> cache(fx.backend, options_for(fx));
    FakeDb db;
    db.write("post:1", "v1");
    auto load = [&](LoadContext& ctx) {
        ctx.tags.push_back("team:7");  // known only once the row is read
        return db.read("post:1");
    };
    REQUIRE(cache.get("post:1", load) == "v1");
    db.write("post:1", "v2");
    REQUIRE(cache.get("post:1", load) == "v1");  // cached
    cache.invalidate_tag("team:7");
    REQUIRE(cache.get("post:1", load) == "v2");
    // A reader that passes other tags does not strip the entry of the loader's.
    db.write("post:1", "v3");
    REQUIRE(cache.get("post:1", {"other"}, load) == "v2");
    cache.invalidate_tag("team:7");
    REQUIRE(cache.get("post:1", {"other"}, load) == "v3");
}

// The naive way to stamp tags a loader chose after loading reads their versions after
// the load, and so stamps a bump that happened during it: the row it read before the
// change is then served as current. Here the fill is rejected.
BACKEND_TEST_CASE("A tag the loader chose, bumped during the load, does not let the old row in",
                  "[adaptive][tags][regression]") {
    TestType fx;
    larder::CacheAside<std::string, decltype(fx.backend)> cache(fx.backend, options_for(fx));
    larder::CacheAside<std::string, decltype(fx.backend)> writer(fx.backend, options_for(fx));
    FakeDb db;
    db.write("post:1", "v1");
    int loads = 0;
    auto load = [&](LoadContext& ctx) {
        auto row = db.read("post:1");
        if (++loads == 1) {
            // Between this load's read and its fill, the row changes and its team's tag
            // is invalidated (by another process).
            db.write("post:1", "v2");
            writer.invalidate_tag("team:7");
        }
        ctx.tags.push_back("team:7");
        return row;
    };
    REQUIRE(cache.get("post:1", load) == "v1");  // this caller gets what it loaded...
    REQUIRE(cache.stats().fills_rejected == 1);  // ...and it is not cached
    REQUIRE(cache.get("post:1", load) == "v2");
    REQUIRE(cache.get("post:1", load) == "v2");
    REQUIRE(loads == 2);
}

TEST_CASE("A loader's bad context is a LoaderError, and the lease is given back",
          "[adaptive][memory]") {
    larder::test::MemoryFixture fx;
    larder::CacheAside<std::string, larder::MemoryBackend, larder::NoInvalidator> untagged(
        fx.backend, options_for(fx, {.key_prefix = "u:"}));
    REQUIRE_THROWS_AS(untagged.get("k",
                                   [](LoadContext& ctx) -> Str {
                                       ctx.tags.push_back("t");
                                       return "v";
                                   }),
                      larder::LoaderError);
    larder::CacheAside<std::string, larder::MemoryBackend> cache(fx.backend, options_for(fx));
    REQUIRE_THROWS_AS(cache.get("k",
                                [](LoadContext& ctx) -> Str {
                                    ctx.ttl = 0ms;
                                    return "v";
                                }),
                      larder::LoaderError);
    REQUIRE_FALSE(fx.backend.get(cache.full_key("k")).has_value());
    REQUIRE_FALSE(fx.backend.get(untagged.full_key("k")).has_value());
    REQUIRE(cache.get("k", [] { return Str("v"); }) == "v");
}

TEST_CASE("Per-call options override the cache's", "[adaptive][memory]") {
    larder::test::MemoryFixture fx;
    larder::CacheAside<std::string, larder::MemoryBackend> cache(
        fx.backend, options_for(fx, {.ttl = 10min, .negative_ttl = 10min}));
    int loads = 0;
    auto row = [&] {
        ++loads;
        return Str("row");
    };
    auto none = [&] {
        ++loads;
        return Str();
    };
    REQUIRE(cache.get("a", row, {.ttl = 1s}) == "row");
    REQUIRE(cache.get("b", none, {.negative_ttl = 1s}) == std::nullopt);
    REQUIRE(cache.get("c", row, {.ttl = 1s, .grace = 1h}) == "row");
    fx.advance(2s);
    REQUIRE(cache.get("a", row) == "row");
    REQUIRE(cache.get("b", none) == std::nullopt);
    REQUIRE(loads == 5);
    // c is stale but within the call's grace: served (and refreshed).
    REQUIRE(cache.get("c", [] { return Str("new"); }) == "new");
    REQUIRE_THROWS_AS(cache.get("d", row, {.ttl = 0ms}), larder::ConfigError);
    REQUIRE_THROWS_AS(cache.get("d", row, {.grace = -1ms}), larder::ConfigError);
}

// ---- loader timeouts ----------------------------------------------------------------

TEST_CASE("A timeout needs a loader that owns what it captures", "[timeout][memory]") {
    larder::test::MemoryFixture fx;
    larder::CacheAside<std::string, larder::MemoryBackend> cache(fx.backend, options_for(fx));
    auto by_reference = [&] { return Str("v"); };
    REQUIRE_THROWS_AS(cache.get("k", by_reference, {.hard_timeout = 1s}), larder::ConfigError);
    REQUIRE(cache.get("k", larder::detached(SlowRow{}), {.hard_timeout = 1s}) == "row");

    larder::CacheAside<std::string, larder::MemoryBackend> timed(
        fx.backend, options_for(fx, {.key_prefix = "t:", .soft_timeout = 1s}));
    REQUIRE_THROWS_AS(timed.get("k", by_reference), larder::ConfigError);
    REQUIRE(timed.get("k", larder::detached(SlowRow{})) == "row");
}

BACKEND_TEST_CASE("Past the hard timeout a miss throws, and the load fills when it ends",
                  "[timeout]") {
    TestType fx;
    larder::CacheAside<std::string, decltype(fx.backend)> cache(fx.backend, options_for(fx));
    SlowRow slow;
    slow.gate = std::make_shared<Gate>();
    REQUIRE_THROWS_AS(cache.get("k", larder::detached(slow), {.hard_timeout = 50ms}),
                      larder::LoadTimeoutError);
    slow.gate->open();
    int loads = 0;
    auto counted = [&] {
        ++loads;
        return Str("other");
    };
    REQUIRE(eventually([&] { return cache.stats().fills == 1; }));
    REQUIRE(cache.get("k", counted) == "row");
    REQUIRE(loads == 0);
    REQUIRE(*slow.calls == 1);
}

TEST_CASE("Past the soft timeout a stale value is served, and the load fills when it ends",
          "[timeout][memory]") {
    larder::test::MemoryFixture fx;
    larder::CacheAside<std::string, larder::MemoryBackend> cache(
        fx.backend, options_for(fx, {.ttl = 1s, .grace = 1h, .soft_timeout = 20ms}));
    REQUIRE(cache.get("k", larder::detached(SlowRow{.value = "old"})) == "old");
    fx.advance(2s);  // stale, within grace
    SlowRow slow{.value = "new"};
    slow.gate = std::make_shared<Gate>();
    REQUIRE(cache.get("k", larder::detached(slow)) == "old");
    REQUIRE(cache.stats().stale_served == 1);
    slow.gate->open();
    REQUIRE(eventually([&] { return cache.stats().fills == 2; }));
    REQUIRE(cache.get("k", larder::detached(SlowRow{.value = "unused"})) == "new");
}

TEST_CASE("A soft timeout without a stale value does not cut a load short", "[timeout][memory]") {
    larder::test::MemoryFixture fx;
    larder::CacheAside<std::string, larder::MemoryBackend> cache(
        fx.backend, options_for(fx, {.soft_timeout = 1ms}));
    SlowRow slow;
    slow.gate = std::make_shared<Gate>();
    std::thread opener([&] {
        std::this_thread::sleep_for(30ms);
        slow.gate->open();
    });
    REQUIRE(cache.get("k", larder::detached(slow)) == "row");
    opener.join();
}

// A Lock waiter whose hard timeout passes while another process's loader holds the key
// stops waiting: it does not wait out the guard's max_wait.
BACKEND_TEST_CASE("The hard timeout bounds a Lock waiter's wait", "[timeout][lock]") {
    TestType fx;
    using Cache = larder::CacheAside<std::string, decltype(fx.backend), larder::Lock>;
    Cache holder(fx.backend, options_for(fx), larder::Lock(larder::LockOptions{.max_wait = 1h}));
    Cache waiter(fx.backend, options_for(fx), larder::Lock(larder::LockOptions{.max_wait = 1h}));
    Gate loading, release;
    std::jthread t([&] {
        (void)holder.get("k", [&] {
            loading.open();
            release.wait();
            return Str("held");
        });
    });
    // A failed assertion below still lets the holder finish before `t` joins.
    struct Release {
        Gate& gate;
        ~Release() { gate.open(); }
    } released{release};
    loading.wait();
    SlowRow unused;
    REQUIRE_THROWS_AS(waiter.get("k", larder::detached(unused), {.hard_timeout = 50ms}),
                      larder::LoadTimeoutError);
    REQUIRE(*unused.calls == 0);  // it waited; time ran out before it could load
    release.open();
    t.join();
    REQUIRE(waiter.get("k", [] { return Str("unused"); }) == "held");
}

TEST_CASE("Destroying a cache waits for a load that outlived its call", "[timeout][memory]") {
    larder::test::MemoryFixture fx;
    SlowRow slow;
    slow.gate = std::make_shared<Gate>();
    std::atomic<bool> destroyed{false};
    std::atomic<bool> destroyed_before_load_ended{false};
    std::thread opener;
    {
        larder::CacheAside<std::string, larder::MemoryBackend> cache(fx.backend, options_for(fx));
        REQUIRE_THROWS_AS(cache.get("k", larder::detached(slow), {.hard_timeout = 10ms}),
                          larder::LoadTimeoutError);
        opener = std::thread([&] {
            std::this_thread::sleep_for(20ms);
            destroyed_before_load_ended = destroyed.load();
            slow.gate->open();
        });
    }
    destroyed = true;
    opener.join();
    REQUIRE_FALSE(destroyed_before_load_ended.load());
    REQUIRE(fx.backend.get(larder::keys::Namespace("").entry("k"))
                .has_value());  // filled before the cache went
}

// ---- every policy -------------------------------------------------------------------

TEST_CASE("Write paths read with adaptive loaders and per-call options",
          "[adaptive][write_through][write_behind][memory]") {
    larder::test::MemoryFixture fx;
    larder::WriteThrough<std::string, larder::MemoryBackend> wt(
        fx.backend, {.cache = options_for(fx, {.key_prefix = "wt:"})});
    larder::WriteBehind<std::string, larder::MemoryBackend> wb(
        fx.backend, [](auto) { return larder::BatchResult{}; },
        {.start_flusher = false, .cache = options_for(fx, {.key_prefix = "wb:"})});
    int loads = 0;
    auto load = [&](LoadContext& ctx) -> Str {
        ++loads;
        ctx.tags.push_back("team");
        ctx.ttl = 1s;
        return "row";
    };
    REQUIRE(wt.get("k", load) == "row");
    REQUIRE(wb.get("k", load) == "row");
    REQUIRE(wt.get("k", load) == "row");
    REQUIRE(wb.get("k", load) == "row");
    REQUIRE(loads == 2);
    wt.invalidate_tag("team");
    wb.invalidate_tag("team");
    REQUIRE(wt.get("k", load) == "row");
    REQUIRE(wb.get("k", load) == "row");
    REQUIRE(loads == 4);
    fx.advance(2s);
    REQUIRE(wt.get("k", load, {.ttl = 1h}) == "row");
    REQUIRE(loads == 5);
    // A dirty key is served from the queue, not loaded, whatever the loader.
    (void)wb.put("d", "dirty");
    REQUIRE(fx.backend.del(wb.full_key("d")));  // its cached copy evicted
    REQUIRE(wb.get("d", load) == "dirty");
    REQUIRE(loads == 5);
}
