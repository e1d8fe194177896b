// Regression tests for the seams a review found between the read path's newer features
// (loaders that choose tags, TTLs or not to cache; loader timeouts) and the pieces around
// it: single-flight, Near's L1, WriteBehind::modify, WriteThrough's failed puts, and tag
// versions whose bytes are not a version. Each test failed on the code before the fix
// (facf413^) and passes after it.
//
// Interleavings are forced with gates and blocking loaders, never with sleeps; waits are
// bounded with `eventually`, whose bound matters only when the behaviour is wrong.
#include <larder/backend/chaos.hpp>
#include <larder/invalidate/events.hpp>
#include <larder/larder.hpp>
#include <larder/near/near.hpp>
#include <larder/policy/write_behind.hpp>
#include <larder/policy/write_through.hpp>

#include <atomic>
#include <memory>
#include <optional>
#include <span>
#include <stdexcept>
#include <string>
#include <string_view>
#include <thread>
#include <vector>

#include "support/backends.hpp"
#include "support/eventually.hpp"
#include "support/fake_db.hpp"

using namespace std::chrono_literals;
using larder::LoadContext;
using larder::test::eventually;
using larder::test::FakeDb;
using larder::test::Gate;
using larder::test::options_for;
using larder::test::SlowRow;

namespace {

using Str = std::optional<std::string>;
using MemoryCache = larder::CacheAside<std::string, larder::MemoryBackend>;

// A detached loader that reads row "k", then waits at `gate` before it returns it.
struct GatedRow {
    std::shared_ptr<FakeDb> db;
    std::shared_ptr<Gate> gate;
    Str operator()() const {
        auto row = db->read("k");
        gate->wait();
        return row;
    }
};

// The same, for a loader that chooses a tag for its entry once it has loaded.
struct GatedTaggingRow {
    std::shared_ptr<FakeDb> db;
    std::shared_ptr<Gate> gate;
    std::string tag;
    Str operator()(LoadContext& ctx) const {
        auto row = db->read("k");
        gate->wait();
        ctx.tags.push_back(tag);
        return row;
    }
};

std::string describe(const Str& v) {
    return v ? "\"" + *v + "\"" : std::string("nullopt");
}

// WriteBehind options for these tests: no flusher thread, on the fixture's clock.
larder::WriteBehindOptions wb_options(larder::test::MemoryFixture& fx) {
    larder::WriteBehindOptions o{.start_flusher = false,
                                 .eviction_check = larder::EvictionCheck::ignore,
                                 .cache = options_for(fx)};
    o.cache.log.level = larder::LogLevel::off;
    return o;
}

}  // namespace

// ---- single-flight --------------------------------------------------------------------

// Before: a lease's fence did not carry the bump counter, so a read that began after
// invalidate_tag(T) returned joined a load in flight whose loader then chose T, and was
// served the row that load read before the change.
TEST_CASE("A read after invalidate_tag does not join a load whose loader chooses that tag",
          "[regression][adaptive][tags][memory]") {
    larder::test::MemoryFixture fx;
    MemoryCache cache(fx.backend, options_for(fx));
    MemoryCache writer(fx.backend, options_for(fx));  // another process
    FakeDb db;
    db.write("post:1", "v1");
    Gate loaded, release;
    std::atomic<int> loads{0};
    auto load = [&](LoadContext& ctx) -> Str {
        auto row = db.read("post:1");
        if (++loads == 1) {
            loaded.open();
            release.wait();
        }
        ctx.tags.push_back("team:7");  // known only once the row is read
        return row;
    };
    Str leader_got;
    std::thread leader([&] { leader_got = cache.get("post:1", load); });
    loaded.wait();  // the leader holds the lease and has read v1
    db.write("post:1", "v2");
    writer.invalidate_tag("team:7");  // returned: nobody may be served v1 from now on

    Str got;
    std::atomic<bool> done{false};
    std::thread reader([&] {
        got = cache.get("post:1", load);
        done = true;
    });
    // The read must not need the leader to finish: it loads for itself.
    const bool without_leader = eventually([&] { return done.load(); }, 5s);
    release.open();
    reader.join();
    leader.join();
    CHECK(without_leader);
    INFO("the read after invalidate_tag got " << describe(got));
    REQUIRE(got == "v2");
    REQUIRE(leader_got == "v1");                 // the leader gets what it loaded...
    REQUIRE(cache.get("post:1", load) == "v2");  // ...and it was not cached
}

// Before: a caller that joined another's load waited for it however long it took: its
// own hard_timeout bounded only a load it ran itself.
TEST_CASE("A single-flight joiner throws LoadTimeoutError at its hard timeout",
          "[regression][timeout][memory]") {
    larder::test::MemoryFixture fx;
    MemoryCache cache(fx.backend, options_for(fx));
    SlowRow slow;  // the leader's: no timeout, waits until the test opens its gate
    slow.gate = std::make_shared<Gate>();
    Str leader_got;
    std::thread leader([&] { leader_got = cache.get("k", larder::detached(slow)); });
    const bool leading = eventually([&] { return *slow.calls == 1; });

    enum class Outcome { pending, timed_out, returned, other };
    std::atomic<Outcome> outcome{Outcome::pending};
    SlowRow mine{.value = "mine"};  // never waits
    std::thread joiner([&] {
        try {
            (void)cache.get("k", larder::detached(mine), {.hard_timeout = 50ms});
            outcome = Outcome::returned;
        } catch (const larder::LoadTimeoutError&) {
            outcome = Outcome::timed_out;
        } catch (...) {
            outcome = Outcome::other;
        }
    });
    // The gate opens once the joiner is done (or, when it keeps waiting, after the bound).
    const bool joiner_done = eventually([&] { return outcome.load() != Outcome::pending; }, 5s);
    slow.gate->open();
    joiner.join();
    leader.join();
    REQUIRE(leading);
    CHECK(joiner_done);
    REQUIRE(outcome.load() == Outcome::timed_out);
    REQUIRE(*mine.calls == 0);  // it joined the leader's load: it did not load itself
    REQUIRE(leader_got == "row");
}

// ---- Near (L1) ------------------------------------------------------------------------

// Before: a refresh that outlived its call (soft timeout) left the stale value in L1,
// indexed under the old entry's versions; the late fill stamped the tag the read passed,
// and a bump of that tag did not drop the L1 copy.
TEST_CASE("Near drops a value whose late refresh stamped the read's tag, on that tag's bump",
          "[regression][l1][timeout][tags][memory]") {
    larder::test::MemoryFixture fx;
    larder::MemoryBus bus;
    MemoryCache cache(fx.backend, options_for(fx, {.ttl = 1s, .grace = 1h}));
    larder::Near near(cache, bus, {.ttl = 1h, .clock = &fx.clock});
    auto db = std::make_shared<FakeDb>();
    db->write("k", "v1");
    REQUIRE(cache.get("k", [&] { return db->read("k"); }) == "v1");  // stored, no tags
    fx.advance(2s);                                                  // stale, within grace
    db->write("k", "v2");

    const std::vector<std::string> tags{"t"};
    auto gate = std::make_shared<Gate>();
    // The refresh waits at the gate: the stale value is served at the soft timeout.
    REQUIRE(near.get("k", tags, larder::detached(GatedRow{db, gate}), {.soft_timeout = 20ms}) ==
            "v1");
    gate->open();
    REQUIRE(eventually([&] { return cache.stats().fills == 2; }));  // v2, stamped with t

    db->write("k", "v3");
    near.invalidate_tag("t");
    const auto got = near.get("k", tags, [&] { return db->read("k"); });
    INFO("Near after invalidate_tag(t) got " << describe(got));
    REQUIRE(got == "v3");
}

// Before: as above, with the tag chosen by the refreshing loader (which nobody knew when
// L1 kept the stale value).
TEST_CASE("Near drops a value whose late refresh stamped a loader's tag, on that tag's bump",
          "[regression][l1][timeout][adaptive][tags][memory]") {
    larder::test::MemoryFixture fx;
    larder::MemoryBus bus;
    MemoryCache cache(fx.backend, options_for(fx, {.ttl = 1s, .grace = 1h}));
    larder::Near near(cache, bus, {.ttl = 1h, .clock = &fx.clock});
    auto db = std::make_shared<FakeDb>();
    db->write("k", "v1");
    REQUIRE(cache.get("k", [&] { return db->read("k"); }) == "v1");  // stored, no tags
    fx.advance(2s);                                                  // stale, within grace
    db->write("k", "v2");

    auto gate = std::make_shared<Gate>();
    REQUIRE(near.get("k", larder::detached(GatedTaggingRow{db, gate, "team:7"}),
                     {.soft_timeout = 20ms}) == "v1");
    gate->open();
    REQUIRE(eventually([&] { return cache.stats().fills == 2; }));  // v2, stamped with team:7

    db->write("k", "v3");
    near.invalidate_tag("team:7");
    const auto got = near.get("k", [&] { return db->read("k"); });
    INFO("Near after invalidate_tag(team:7) got " << describe(got));
    REQUIRE(got == "v3");
}

// Before: Near kept in L1 every value the policy returned, also one its loader said not
// to cache (ctx.cache = false), and served it from there.
TEST_CASE("Near does not keep in L1 a value its loader said not to cache",
          "[regression][l1][adaptive][memory]") {
    larder::test::MemoryFixture fx;
    larder::MemoryBus bus;
    MemoryCache cache(fx.backend, options_for(fx));
    larder::Near near(cache, bus, {.ttl = 1h, .clock = &fx.clock});
    int loads = 0;
    auto load = [&](LoadContext& ctx) -> Str {
        ++loads;
        ctx.cache = false;  // "serve, but do not cache"
        return "placeholder" + std::to_string(loads);
    };
    REQUIRE(near.get("k", load) == "placeholder1");
    REQUIRE(near.get("k", load) == "placeholder2");
    REQUIRE(loads == 2);
    REQUIRE_FALSE(fx.backend.get(cache.full_key("k")).has_value());
}

// Before: L1 kept every value for its own ttl, so an entry whose loader (ctx.ttl) or call
// (CallOptions::ttl) said it goes stale sooner was served from L1 long after.
TEST_CASE("Near keeps an L1 copy no longer than the loader's or the call's ttl",
          "[regression][l1][adaptive][memory]") {
    larder::test::MemoryFixture fx;
    larder::MemoryBus bus;
    MemoryCache cache(fx.backend, options_for(fx, {.ttl = 10min}));
    larder::Near near(cache, bus, {.ttl = 1h, .clock = &fx.clock});

    int loads = 0;
    auto adaptive = [&](LoadContext& ctx) -> Str {
        ctx.ttl = 2s;  // "this row changes often"
        return "v" + std::to_string(++loads);
    };
    REQUIRE(near.get("k", adaptive) == "v1");
    int calls = 0;
    auto plain = [&]() -> Str { return "w" + std::to_string(++calls); };
    REQUIRE(near.get("j", plain, {.ttl = 2s}) == "w1");

    fx.advance(1s);
    REQUIRE(near.get("k", adaptive) == "v1");
    REQUIRE(near.get("j", plain, {.ttl = 2s}) == "w1");
    fx.advance(2s);  // past both entries' 2 s, well within L1's 1 h and the cache's 10 min
    CHECK(near.get("k", adaptive) == "v2");
    CHECK(near.get("j", plain, {.ttl = 2s}) == "w2");
}

// ---- WriteBehind::modify ----------------------------------------------------------------

// Before: modify built on whatever cached copy it found, also one an invalidation had
// retired (a get would have loaded the new row): the change was applied to the old row.
TEST_CASE("WriteBehind::modify does not build on a cached copy retired by an invalidation",
          "[regression][write_behind][tags][memory]") {
    larder::test::MemoryFixture fx;
    FakeDb db;
    larder::WriteBehind<std::string, larder::MemoryBackend> wb(
        fx.backend,
        [&](std::span<const larder::DirtyEntry<std::string>> entries) {
            for (const auto& e : entries) db.write(e.key, e.value);
            return larder::BatchResult{};
        },
        wb_options(fx));
    auto load = [&] { return db.read("k"); };
    db.write("k", "A");
    REQUIRE(wb.get("k", {"t"}, load) == "A");  // cached copy "A", stamped with t
    db.write("k", "C");                        // the row changes behind the cache...
    SECTION("by invalidate_tag") {
        wb.invalidate_tag("t");  // ...and its tag is invalidated
    }
    SECTION("by invalidate_version") {
        wb.invalidate_version(larder::Tags::version_name("t"));
    }
    const auto got = wb.modify(
        "k", [](std::string& v) { v += "+x"; }, load);
    REQUIRE(got == "C+x");
    REQUIRE(wb.get("k", {"t"}, load) == "C+x");
    (void)wb.flush();
    REQUIRE(db.read("k") == "C+x");
}

// Before: modify loaded through get() to have a copy to compare-and-put against; a loader
// that said not to cache left none, so modify went round (loading each time) until it
// gave up with WriteConflictError.
TEST_CASE("WriteBehind::modify succeeds with a loader that says not to cache",
          "[regression][write_behind][adaptive][memory]") {
    larder::test::MemoryFixture fx;
    larder::WriteBehind<std::string, larder::MemoryBackend> wb(
        fx.backend, [](auto) { return larder::BatchResult{}; }, wb_options(fx));
    int loads = 0;
    auto load = [&](LoadContext& ctx) -> Str {
        ++loads;
        ctx.cache = false;  // e.g. a row not worth caching
        return "row";
    };
    std::string got;
    REQUIRE_NOTHROW(got = wb.modify(
                        "k", [](std::string& v) { v += "+x"; }, load));
    INFO("the loader ran " << loads << " times");
    REQUIRE(got == "row+x");
    REQUIRE(loads <= 2);
    REQUIRE(wb.get("k", load) == "row+x");  // the dirty value
}

// ---- WriteThrough::put and the Events invalidator ---------------------------------------

// Before: a put that changed the database but stored nothing new - its store failed before
// the database write, or db_write threw after it committed - published nothing on the
// Events invalidator's bus, so another process's Near kept the old value in its L1.
TEST_CASE("WriteThrough::put that leaves a miss tells other processes' L1 through Events",
          "[regression][write_through][event][l1][memory]") {
    using Chaos = larder::ChaosBackend<larder::MemoryBackend>;
    using Inv = larder::Events<larder::MemoryBus>;
    larder::test::MemoryFixture fx;
    Chaos chaos(fx.backend);
    larder::MemoryBus bus;
    larder::WriteThroughOptions o;
    o.cache = options_for(fx);
    larder::WriteThrough<std::string, Chaos, Inv> writer(chaos, o, {}, {}, Inv(bus));  // process 1
    MemoryCache policy2(fx.backend, options_for(fx));                                  // process 2
    larder::Near near2(policy2, bus, {.ttl = 1h, .clock = &fx.clock});
    FakeDb db;
    db.write("k", "v1");
    auto load = [&] { return db.read("k"); };
    REQUIRE(near2.get("k", load) == "v1");
    REQUIRE(near2.l1().get(policy2.full_key("k")) == "v1");  // process 2's L1 holds v1

    SECTION("the store fails before the database write") {
        chaos.fail_next(1);
        REQUIRE(writer.put("k", "v2", [&] { db.write("k", "v2"); }) ==
                larder::WriteOutcome::invalidated);
        REQUIRE(chaos.injected_failures() == 1);
    }
    SECTION("db_write commits, then throws") {
        REQUIRE_THROWS_AS(writer.put("k", "v2",
                                     [&] {
                                         db.write("k", "v2");
                                         throw std::runtime_error("commit ack lost");
                                     }),
                          std::runtime_error);
    }
    REQUIRE(db.read("k") == "v2");
    const auto seen = near2.get("k", load);
    INFO("process 2 read " << describe(seen));
    REQUIRE(seen == "v2");
}

// ---- tag versions ---------------------------------------------------------------------

// Before: bytes in a tag's version key that are not a version were never replaced: no
// fill could be stamped, so every tagged read of the key loaded, and nothing counted it.
TEST_CASE("A tag version that is not a number is replaced: tagged reads fill, then hit",
          "[regression][tags][memory]") {
    larder::test::MemoryFixture fx;
    MemoryCache cache(fx.backend, options_for(fx));
    fx.raw_set(cache.tag_key("t"), "not-a-version");
    int loads = 0;
    auto load = [&] {
        ++loads;
        return Str("row");
    };
    REQUIRE(cache.get("k", {"t"}, load) == "row");
    REQUIRE(cache.get("k", {"t"}, load) == "row");
    REQUIRE(loads == 1);
    REQUIRE(cache.stats().corrupt_values == 1);
    // The replaced version works as a version: a bump retires the entry.
    cache.invalidate_tag("t");
    REQUIRE(cache.get("k", {"t"}, load) == "row");
    REQUIRE(loads == 2);
}

// A Near reader that shared another caller's load kept the result in L1 for L1's whole
// TTL, though that load's loader had said not to cache it (or gave it a short TTL).
TEST_CASE("A Near reader that shared a load keeps nothing its loader decided about",
          "[regression][l1][adaptive][memory]") {
    larder::ManualClock clock;
    larder::MemoryBackend store({.clock = &clock});
    larder::MemoryBus bus;
    MemoryCache cache(store, {.clock = &clock});
    larder::Near near(cache, bus, {.ttl = 1h, .clock = &clock});
    Gate loading, release;
    std::atomic<int> loads{0};
    auto load = [&](LoadContext& ctx) -> Str {
        const int n = ++loads;
        if (n == 1) {
            loading.open();
            release.wait();
        }
        ctx.cache = false;
        return "placeholder" + std::to_string(n);
    };
    Str a, b;
    std::thread leader([&] { a = near.get("k", load); });
    loading.wait();
    std::thread joiner([&] { b = near.get("k", load); });
    // Let the joiner reach the load in flight; if it comes later it loads itself, and the
    // assertions below hold all the same.
    REQUIRE(eventually([&] { return cache.stats().misses == 2; }));
    std::this_thread::sleep_for(20ms);
    release.open();
    leader.join();
    joiner.join();
    const int before = loads.load();
    REQUIRE(near.get("k", load) == "placeholder" + std::to_string(before + 1));
    REQUIRE(loads == before + 1);
}

// Near::put announced the key only after the policy's put returned: a put whose database
// write committed and then threw left other processes' L1 with the old value.
TEST_CASE("Near::put that throws still drops the key from every L1",
          "[regression][l1][write_through][memory]") {
    larder::MemoryBackend store;
    larder::MemoryBus bus;
    larder::WriteThrough<std::string, larder::MemoryBackend> p1(store), p2(store);
    larder::Near n1(p1, bus), n2(p2, bus);  // two processes
    FakeDb db;
    db.write("k", "v1");
    auto load = [&] { return db.read("k"); };
    REQUIRE(n2.get("k", load) == "v1");  // process 2's L1 holds v1
    REQUIRE_THROWS_AS(n1.put("k", "v2",
                             [&] {
                                 db.write("k", "v2");
                                 throw std::runtime_error("the acknowledgement was lost");
                             }),
                      std::runtime_error);
    REQUIRE(n2.get("k", load) == "v2");
}

// ---- second review --------------------------------------------------------------------
// Each test below failed on 2ca13b2 and passes after 810ce60.

// Before: L1 kept a loaded value for its own ttl (5 s), past the cache's ttl (100 ms),
// and served it after the cache itself had reloaded the row.
TEST_CASE("Near keeps an L1 copy no longer than the cache's own ttl", "[regression][l1][memory]") {
    larder::ManualClock clock;
    larder::MemoryBackend store({.clock = &clock});
    larder::MemoryBus bus;
    MemoryCache cache(store, {.ttl = 100ms, .clock = &clock});
    larder::Near near(cache, bus, {.ttl = 5s, .clock = &clock});
    int loads = 0;
    auto load = [&]() -> Str { return "v" + std::to_string(++loads); };
    REQUIRE(near.get("k", load) == "v1");
    REQUIRE(near.get("k", load) == "v1");  // from L1
    clock.advance(1s);                     // ten times the cache's ttl, well within L1's
    const auto got = near.get("k", load);
    INFO("Near after 1 s got " << describe(got));
    REQUIRE(got == "v2");
    REQUIRE(loads == 2);
}

// Before: a Near write (invalidate_after, invalidate_tag) whose store call failed threw
// before telling anyone, so other processes' L1 kept the old value; and a value loaded
// while the store was down (so not stored) was kept in L1 and served from there.
TEST_CASE("Near's failed invalidations still drop other L1 copies; an unstored load is not kept",
          "[regression][l1][chaos][memory]") {
    using Chaos = larder::ChaosBackend<larder::MemoryBackend>;
    larder::ManualClock clock;
    larder::MemoryBackend store({.clock = &clock});
    Chaos chaos(store);
    larder::MemoryBus bus;
    larder::CacheAside<std::string, Chaos> pa(chaos, {.clock = &clock});  // process A
    larder::CacheAside<std::string, Chaos> pb(chaos, {.clock = &clock});  // process B
    larder::Near a(pa, bus, {.ttl = 1h, .clock = &clock});
    larder::Near b(pb, bus, {.ttl = 1h, .clock = &clock});
    FakeDb db;
    db.write("k", "v1");
    db.write("t", "v1");
    auto load_k = [&]() -> Str { return db.read("k"); };
    auto load_t = [&]() -> Str { return db.read("t"); };

    SECTION("invalidate_after and invalidate_tag throw, and B's L1 drops its copies") {
        REQUIRE(b.get("k", load_k) == "v1");           // stored, and in B's L1
        REQUIRE(b.get("t", {"tag"}, load_t) == "v1");  // likewise, tagged
        chaos.fail_all(true);                          // the store goes down
        REQUIRE_THROWS_AS(a.invalidate_after("k", [&] { db.write("k", "v2"); }),
                          larder::BackendError);
        db.write("t", "v2");
        REQUIRE_THROWS_AS(a.invalidate_tag("tag"), larder::BackendError);
        REQUIRE(db.read("k") == "v2");
        const auto k = b.get("k", load_k);
        const auto t = b.get("t", {"tag"}, load_t);
        INFO("B read k=" << describe(k) << " t=" << describe(t));
        CHECK(k == "v2");
        CHECK(t == "v2");
    }
    SECTION("a value loaded while the store is down is not kept in L1") {
        int loads = 0;
        auto counted = [&]() -> Str { return "v" + std::to_string(++loads); };
        chaos.fail_all(true);
        REQUIRE(b.get("j", counted) == "v1");  // loaded, not stored
        chaos.fail_all(false);
        REQUIRE(b.get("j", counted) == "v2");  // loads again
        REQUIRE(loads == 2);
    }
}

// Before: a lease fence without the bump counter let a read that began after
// invalidate_tag(t) returned - neither reader passing t, the lease's holder in another
// process filling with t - share a load (waited out, unfilled) that read the old row.
TEST_CASE("A read after invalidate_tag does not share an untagged load that read the row before",
          "[regression][single_flight][tags][memory]") {
    larder::test::MemoryFixture fx;
    FakeDb db;
    using Locked = larder::CacheAside<std::string, larder::MemoryBackend, larder::Lock>;
    MemoryCache x(fx.backend, options_for(fx));  // process X: holds the lease, fills with t
    MemoryCache w(fx.backend, options_for(fx));  // a writer process
    Locked y(fx.backend, options_for(fx), larder::Lock({.max_wait = 0ms}));  // process Y
    db.write("k", "v1");
    Gate x_loading, x_release, r1_loaded, r1_release;
    std::thread tx([&] {
        (void)x.get("k", {"t"}, [&]() -> Str {
            x_loading.open();
            x_release.wait();
            return db.read("k");
        });
    });
    x_loading.wait();  // X holds the lease on k
    Str r1, r2;
    std::thread t1([&] {
        r1 = y.get("k", [&]() -> Str {
            auto row = db.read("k");
            r1_loaded.open();
            r1_release.wait();
            return row;
        });
    });
    r1_loaded.wait();  // R1 found the lease held, and loads (unfilled): it read v1
    db.write("k", "v2");
    w.invalidate_tag("t");  // returned: nobody may be served v1 from now on
    std::atomic<bool> done{false};
    std::thread t2([&] {
        r2 = y.get("k", [&]() -> Str { return db.read("k"); });
        done = true;
    });
    // R2 must not need R1 to finish: it loads for itself.
    const bool without_r1 = eventually([&] { return done.load(); }, 5s);
    r1_release.open();
    t1.join();
    t2.join();
    x_release.open();
    tx.join();
    CHECK(without_r1);
    INFO("R1 got " << describe(r1) << ", R2 (after invalidate_tag) got " << describe(r2));
    REQUIRE(r1 == "v1");
    REQUIRE(r2 == "v2");
}

// Before: a put whose store failed before the database write (so unfenced) published the
// key to other processes before it deleted the old value, and when db_write committed and
// then threw it did not delete it at all: the old value stayed readable after put.
TEST_CASE(
    "WriteThrough::put with a failed store leaves no old value readable after it returns or throws",
    "[regression][write_through][event][l1][memory]") {
    using Chaos = larder::ChaosBackend<larder::MemoryBackend>;
    using Inv = larder::Events<larder::MemoryBus>;
    larder::ManualClock clock;
    larder::MemoryBackend store({.clock = &clock});
    Chaos chaos(store);
    larder::MemoryBus bus;
    larder::WriteThroughOptions o;
    o.cache = {.clock = &clock};
    larder::WriteThrough<std::string, Chaos, Inv> writer(chaos, o, {}, {}, Inv(bus));  // process 1
    MemoryCache policy2(store, {.clock = &clock});                                     // process 2
    larder::Near near2(policy2, bus, {.ttl = 1h, .clock = &clock});
    FakeDb db;
    db.write("k", "v1");
    auto load = [&]() -> Str { return db.read("k"); };
    REQUIRE(near2.get("k", load) == "v1");  // L2 and process 2's L1 hold v1

    // When process 2 hears of k, it reads k again before put goes on (MemoryBus delivers
    // on the publisher's thread, after Near's own subscriber dropped its copy).
    Gate heard, reread;
    std::atomic<bool> armed{false};
    auto sub = bus.subscribe({.on_message = [&](std::string_view m) {
        if (armed.exchange(false) && !m.empty() && m.front() == 'k') {
            heard.open();
            reread.wait();
        }
    }});
    Str during;
    std::thread reader([&] {
        heard.wait();
        during = near2.get("k", load);
        reread.open();
    });
    chaos.fail_next(1);  // the store fails before the database write: no marker
    armed = true;
    SECTION("db_write returns") {
        CHECK(writer.put("k", "v2", [&] { db.write("k", "v2"); }) ==
              larder::WriteOutcome::invalidated);
    }
    SECTION("db_write commits, then throws") {
        CHECK_THROWS_AS(writer.put("k", "v2",
                                   [&] {
                                       db.write("k", "v2");
                                       throw std::runtime_error("commit ack lost");
                                   }),
                        std::runtime_error);
    }
    if (armed.exchange(false)) heard.open();  // nothing was published: let the reader go
    reader.join();
    REQUIRE(db.read("k") == "v2");
    const auto near_after = near2.get("k", load);
    const auto l2_after = policy2.get("k", load);
    INFO("process 2 read " << describe(during) << " when it heard of k; after put: Near "
                           << describe(near_after) << ", policy " << describe(l2_after));
    REQUIRE(l2_after == "v2");
    REQUIRE(near_after == "v2");
}

// Before: a caller with no timeout that joined a load whose leader had a hard_timeout
// was thrown the leader's LoadTimeoutError.
TEST_CASE("A joiner without a timeout does not get the leader's LoadTimeoutError",
          "[regression][single_flight][timeout][memory]") {
    larder::test::MemoryFixture fx;
    MemoryCache cache(fx.backend, options_for(fx));
    SlowRow slow;  // the leader's: waits until the test opens its gate
    slow.gate = std::make_shared<Gate>();
    enum class Outcome { pending, timed_out, returned, other };
    std::atomic<Outcome> leader_outcome{Outcome::pending};
    std::thread leader([&] {
        try {
            (void)cache.get("k", larder::detached(slow), {.hard_timeout = 300ms});
            leader_outcome = Outcome::returned;
        } catch (const larder::LoadTimeoutError&) {
            leader_outcome = Outcome::timed_out;
        } catch (...) {
            leader_outcome = Outcome::other;
        }
    });
    const bool leading = eventually([&] { return *slow.calls == 1; });

    std::atomic<Outcome> outcome{Outcome::pending};
    std::string joiner_got;
    SlowRow mine{.value = "mine"};  // no timeout, never waits
    std::thread joiner([&] {
        try {
            const auto v = cache.get("k", mine);
            joiner_got = v.value_or("nullopt");
            outcome = Outcome::returned;
        } catch (const larder::LoadTimeoutError&) {
            outcome = Outcome::timed_out;
        } catch (...) {
            outcome = Outcome::other;
        }
    });
    leader.join();      // the leader gives up at its hard timeout...
    slow.gate->open();  // ...then its detached load may finish
    joiner.join();
    REQUIRE(leading);
    REQUIRE(leader_outcome.load() == Outcome::timed_out);
    INFO("the joiner got " << joiner_got);
    REQUIRE(outcome.load() == Outcome::returned);
    REQUIRE((joiner_got == "mine" || joiner_got == "row"));
}

// Before: with EntityVersions, a bump while modify's own loader ran left modify building
// on the copy that load filled (retired by the bump): the change was applied to the old row.
TEST_CASE("WriteBehind::modify does not build on a copy retired while its own load ran",
          "[regression][write_behind][entity][memory]") {
    larder::test::MemoryFixture fx;
    FakeDb db;
    using WB = larder::WriteBehind<std::string, larder::MemoryBackend, larder::EntityVersions>;
    WB wb(
        fx.backend,
        [&](std::span<const larder::DirtyEntry<std::string>> entries) {
            for (const auto& e : entries) db.write(e.key, e.value);
            return larder::BatchResult{};
        },
        wb_options(fx), {}, {}, larder::EntityVersions{});
    db.write("k", "A");
    Gate loaded, go;
    std::atomic<int> calls{0};
    auto load = [&]() -> Str {
        auto row = db.read("k");
        if (++calls == 1) {
            loaded.open();
            go.wait();
        }
        return row;
    };
    std::string got;
    std::thread t([&] {
        got = wb.modify(
            "k", [](std::string& v) { v += "+x"; }, load);
    });
    loaded.wait();       // modify's load read "A"
    db.write("k", "C");  // another service changes the row, then retires the entity
    wb.invalidate_version(larder::EntityVersions::version_name("k"));
    go.open();
    t.join();
    (void)wb.flush();
    INFO("modify returned " << got << ", db holds " << describe(db.read("k")));
    REQUIRE(got == "C+x");
    REQUIRE(db.read("k") == "C+x");
}
