// Stampede guards on every backend: XFetch's refresh lease and background refresh, the
// Lock guard's waiting, lease theft, holders that throw, die or run long, fail-safe; and
// across real OS processes on a real redis-server.
#include <larder/larder.hpp>

#include <atomic>
#include <barrier>
#include <csignal>
#include <memory>
#include <span>
#include <string>
#include <thread>
#include <vector>

#include "support/backends.hpp"
#include "support/eventually.hpp"
#include "support/fake_db.hpp"

using namespace std::chrono_literals;
using larder::Millis;
using larder::test::eventually;
using larder::test::Gate;
using larder::test::options_for;

namespace {

struct Boom : std::runtime_error {
    using std::runtime_error::runtime_error;
};

// Always elects an early refresh (as long as a recompute time was recorded).
larder::XFetch always_refresh(bool background = false) {
    return larder::XFetch({.beta = 1.0, .background = background, .random = [] { return 1e-300; }});
}

template <class Fn>
double seconds_of(Fn&& fn) {
    const auto start = std::chrono::steady_clock::now();
    fn();
    return std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
}

}  // namespace

BACKEND_TEST_CASE("An elected refresh runs once; everyone else keeps the cached value",
                  "[stampede][xfetch]") {
    TestType fx;
    larder::CacheAside<std::string, decltype(fx.backend), larder::XFetch> cache(
        fx.backend, options_for(fx, {.ttl = 10s}), always_refresh());
    // The first load takes 20 ms: delta * -ln(1e-300) = 13.8 s > 10 s, so every hit elects.
    (void)cache.get("hot", [] {
        std::this_thread::sleep_for(20ms);
        return std::optional<std::string>("old");
    });

    Gate refreshing, release;
    std::atomic<int> loads{0}, got_old{0}, got_new{0};
    std::vector<std::thread> readers;
    for (int t = 0; t < 16; ++t) {
        readers.emplace_back([&] {
            auto v = cache.get("hot", [&] {
                loads.fetch_add(1);
                refreshing.open();
                release.wait();
                return std::optional<std::string>("new");
            });
            (v == "old" ? got_old : got_new).fetch_add(1);
        });
    }
    refreshing.wait();
    // The refresher is blocked; the other 15 return the cached value without waiting.
    REQUIRE(eventually([&] { return got_old.load() == 15; }));
    release.open();
    for (auto& t : readers) t.join();
    REQUIRE(loads.load() == 1);
    REQUIRE(got_new.load() == 1);
    REQUIRE(cache.stats().early_refreshes == 1);
    // The refresh stored its value. Read it through a cache without XFetch: this one would
    // elect a refresh of its own whenever the blocked refresh took over 14.5 ms (a slow
    // machine, a sanitizer), and serve that load instead.
    larder::CacheAside<std::string, decltype(fx.backend)> plain(fx.backend,
                                                                options_for(fx, {.ttl = 10s}));
    REQUIRE(plain.get("hot", [] { return std::optional<std::string>("x"); }) == "new");
}

BACKEND_TEST_CASE("A background refresh returns the current value at once", "[stampede][xfetch]") {
    TestType fx;
    larder::CacheAside<std::string, decltype(fx.backend), larder::XFetch> cache(
        fx.backend, options_for(fx, {.ttl = 10s}), always_refresh(/*background=*/true));
    (void)cache.get("hot", [] {
        std::this_thread::sleep_for(20ms);
        return std::optional<std::string>("old");
    });
    auto release = std::make_shared<Gate>();
    auto loads = std::make_shared<std::atomic<int>>(0);
    // The loader outlives this get() call, so it owns what it captures.
    auto loader = [release, loads] {
        loads->fetch_add(1);
        release->wait();
        return std::optional<std::string>("new");
    };
    REQUIRE(cache.get("hot", larder::detached(loader)) == "old");
    REQUIRE(cache.get("hot", larder::detached(loader)) == "old");  // queued or running: not twice
    release->open();
    cache.wait_for_background_refreshes();
    REQUIRE(loads->load() == 1);
    REQUIRE(cache.get("hot", [] { return std::optional<std::string>("x"); }) == "new");
}

// 09443b1 ran a natural `[&]` loader on the background thread after get() returned: a
// stack-use-after-return. Only a loader passed through detached() may outlive the call.
BACKEND_TEST_CASE("A background-refreshing guard runs a by-reference loader before get returns",
                  "[stampede][xfetch][regression]") {
    TestType fx;
    larder::CacheAside<std::string, decltype(fx.backend), larder::XFetch> cache(
        fx.backend, options_for(fx, {.ttl = 10s}), always_refresh(/*background=*/true));
    (void)cache.get("hot", [] {
        std::this_thread::sleep_for(20ms);
        return std::optional<std::string>("old");
    });
    std::optional<std::string> got;
    {
        int calls = 0;                    // on this scope's stack
        std::string fresh = "refreshed";  // likewise
        got = cache.get("hot", [&] {
            ++calls;
            return std::optional<std::string>(fresh);
        });
        REQUIRE(calls == 1);  // ran inline, while its captures were alive
    }
    REQUIRE(got == "refreshed");
    cache.wait_for_background_refreshes();
    REQUIRE(cache.get("hot", [] { return std::optional<std::string>("x"); }) == "refreshed");
}

BACKEND_TEST_CASE("Lock: another process's reader waits for the holder's value",
                  "[stampede][lock]") {
    TestType fx;
    // Two cache objects on one store behave like two processes: no shared single-flight.
    larder::CacheAside<std::string, decltype(fx.backend)> holder(fx.backend, options_for(fx));
    larder::CacheAside<std::string, decltype(fx.backend), larder::Lock> waiter(fx.backend,
                                                                               options_for(fx));
    larder::CacheAside<std::string, decltype(fx.backend)> unguarded(fx.backend, options_for(fx));
    Gate loading, release;
    std::thread h([&] {
        (void)holder.get("k", [&] {
            loading.open();
            release.wait();
            return std::optional<std::string>("holder's");
        });
    });
    loading.wait();

    int unguarded_loads = 0;
    REQUIRE(unguarded.get("k", [&] {
        ++unguarded_loads;
        return std::optional<std::string>("own");
    }) == "own");
    REQUIRE(unguarded_loads == 1);  // no guard: loads without filling

    int waiter_loads = 0;
    std::optional<std::string> waited;
    std::thread w([&] {
        waited = waiter.get("k", [&] {
            ++waiter_loads;
            return std::optional<std::string>("waiter's");
        });
    });
    std::this_thread::sleep_for(50ms);
    release.open();
    h.join();
    w.join();
    REQUIRE(waited == "holder's");
    REQUIRE(waiter_loads == 0);
    REQUIRE(waiter.stats().lease_waits == 1);
    REQUIRE(holder.stats().fills == 1);
}

TEST_CASE("Lock: a waiter sleeps until the holder's fill is announced",
          "[stampede][lock][memory]") {
    larder::MemoryBackend store;
    larder::CacheAside<std::string, larder::MemoryBackend> holder(store);
    // It polls every 20 s and waits as long: it gets the holder's value in time only by
    // hearing the fill.
    larder::CacheAside<std::string, larder::MemoryBackend, larder::Lock> waiter(
        store, {},
        larder::Lock(
            {.max_wait = 20s, .first_backoff = 20s, .max_backoff = 20s, .fallback_poll = 20s}));
    Gate loading, release;
    std::thread h([&] {
        (void)holder.get("k", [&] {
            loading.open();
            release.wait();
            return std::optional<std::string>("holder's");
        });
    });
    loading.wait();
    int waiter_loads = 0;
    std::optional<std::string> got;
    double waited = 0;
    std::thread w([&] {
        waited = seconds_of([&] {
            got = waiter.get("k", [&] {
                ++waiter_loads;
                return std::optional<std::string>("waiter's");
            });
        });
    });
    REQUIRE(eventually([&] { return waiter.stats().lease_waits == 1; }));
    release.open();
    h.join();
    w.join();
    CHECK(got == "holder's");
    CHECK(waiter_loads == 0);
    CHECK(waited < 20.0);  // woken by the announcement, not by a poll or max_wait
}

BACKEND_TEST_CASE("Lock: a waiter gives up at max_wait and loads without filling",
                  "[stampede][lock]") {
    TestType fx;
    larder::CacheAside<std::string, decltype(fx.backend)> holder(fx.backend, options_for(fx));
    larder::CacheAside<std::string, decltype(fx.backend), larder::Lock> waiter(
        fx.backend, options_for(fx), larder::Lock({.max_wait = 100ms}));
    Gate loading, release;
    std::thread h([&] {
        (void)holder.get("k", [&] {
            loading.open();
            release.wait();
            return std::optional<std::string>("holder's");
        });
    });
    loading.wait();
    REQUIRE(waiter.get("k", [] { return std::optional<std::string>("waiter's"); }) == "waiter's");
    REQUIRE(waiter.stats().fills == 0);
    release.open();
    h.join();
    REQUIRE(holder.stats().fills == 1);
    REQUIRE(waiter.get("k", [] { return std::optional<std::string>("?"); }) == "holder's");
}

BACKEND_TEST_CASE("Lease theft: an expired holder's release cannot remove the next lease",
                  "[stampede][lock]") {
    TestType fx;
    SECTION("the lease primitives") {
        const auto a = larder::envelope::make_lease(larder::random_token(), {});
        const auto b = larder::envelope::make_lease(larder::random_token(), {});
        REQUIRE(fx.backend.set_if_absent("lock", a, 100ms));
        fx.advance(250ms);  // A's lease expires while A still works
        REQUIRE(fx.backend.set_if_absent("lock", b, 10s));
        REQUIRE_FALSE(fx.backend.compare_and_delete("lock", a));  // A's release
        REQUIRE(fx.backend.get("lock")->bytes == b);
        // The seed's release, `redis.delete(lock_key)`, removes B's lock.
        fx.backend.del("lock");
        REQUIRE_FALSE(fx.backend.get("lock"));
    }
    SECTION("two caches") {
        larder::CacheAside<std::string, decltype(fx.backend)> a(fx.backend, options_for(fx));
        larder::CacheAside<std::string, decltype(fx.backend)> b(fx.backend, options_for(fx));
        Gate a_loading, a_fail, b_loading, b_release;
        std::thread ta([&] {
            REQUIRE_THROWS_AS(a.get("k",
                                    [&]() -> std::optional<std::string> {
                                        a_loading.open();
                                        a_fail.wait();
                                        throw Boom("A gives up");
                                    }),
                              Boom);
        });
        a_loading.wait();
        fx.backend.del(a.full_key("k"));  // A's lease is gone, as if it had expired
        std::thread tb([&] {
            (void)b.get("k", [&] {
                b_loading.open();
                b_release.wait();
                return std::optional<std::string>("B");
            });
        });
        b_loading.wait();
        a_fail.open();  // A throws and releases: it must not touch B's lease
        ta.join();
        const auto held = larder::envelope::parse(fx.backend.get(a.full_key("k"))->bytes);
        REQUIRE(held->header.kind == larder::EntryKind::lease);
        b_release.open();
        tb.join();
        REQUIRE(b.stats().fills == 1);
        REQUIRE(b.get("k", [] { return std::optional<std::string>("?"); }) == "B");
    }
}

BACKEND_TEST_CASE("A holder that throws frees its waiters at once", "[stampede][lock]") {
    TestType fx;
    larder::CacheAside<std::string, decltype(fx.backend)> holder(
        fx.backend, options_for(fx, {.lease_ttl = 5s}));
    larder::CacheAside<std::string, decltype(fx.backend), larder::Lock> waiter(
        fx.backend, options_for(fx, {.lease_ttl = 5s}), larder::Lock({.max_wait = 10s}));
    Gate loading;
    std::thread h([&] {
        REQUIRE_THROWS_AS(holder.get("k",
                                     [&]() -> std::optional<std::string> {
                                         loading.open();
                                         std::this_thread::sleep_for(100ms);
                                         throw Boom("db");
                                     }),
                          Boom);
    });
    loading.wait();
    std::optional<std::string> got;
    const double waited = seconds_of(
        [&] { got = waiter.get("k", [] { return std::optional<std::string>("waiter's"); }); });
    h.join();
    WARN("waiter blocked " << waited * 1000 << " ms after the holder started (lease 5000 ms)");
    REQUIRE(got == "waiter's");
    REQUIRE(waiter.stats().fills == 1);  // the waiter took the freed lease and filled
    REQUIRE(waited < 4.0);               // not the lease TTL: the release freed it
}

BACKEND_TEST_CASE("A loader slower than the lease keeps its lease", "[stampede][lock]") {
    TestType fx;
    larder::CacheAside<std::string, decltype(fx.backend)> holder(
        fx.backend, options_for(fx, {.lease_ttl = 150ms}));
    larder::CacheAside<std::string, decltype(fx.backend), larder::Lock> waiter(
        fx.backend, options_for(fx), larder::Lock({.max_wait = 5s}));
    Gate loading;
    std::thread h([&] {
        (void)holder.get("k", [&] {
            loading.open();
            std::this_thread::sleep_for(600ms);  // four lease TTLs
            return std::optional<std::string>("slow");
        });
    });
    loading.wait();
    int waiter_loads = 0;
    auto got = waiter.get("k", [&] {
        ++waiter_loads;
        return std::optional<std::string>("waiter's");
    });
    h.join();
    REQUIRE(holder.lease_extensions() >= 2);
    REQUIRE(got == "slow");
    REQUIRE(waiter_loads == 0);
    REQUIRE(holder.stats().fills == 1);
}

BACKEND_TEST_CASE("A load past max_load_time is served but not stored", "[stampede][lock]") {
    TestType fx;
    larder::CacheAside<std::string, decltype(fx.backend)> cache(
        fx.backend, options_for(fx, {.max_load_time = 50ms}));
    using Str = std::optional<std::string>;
    int loads = 0;
    REQUIRE(cache.get("k", [&] {
        ++loads;
        fx.advance(80ms);  // longer than max_load_time
        return Str("late");
    }) == "late");
    CHECK(cache.stats().overdue_loads == 1);
    CHECK(cache.stats().fills == 0);
    // Nothing stored, and the lease given back: the next read loads at once, and fills.
    REQUIRE(cache.get("k", [&] {
        ++loads;
        return Str("quick");
    }) == "quick");
    CHECK(loads == 2);
    CHECK(cache.stats().fills == 1);
    // A batch load past it: served, nothing stored, every lease given back.
    const std::vector<std::string> keys{"a", "b"};
    auto batch = [&](std::span<const std::string> missed) {
        fx.advance(80ms);
        return std::vector<Str>(missed.size(), Str("late"));
    };
    CHECK(cache.get_many(keys, batch) == std::vector<Str>{"late", "late"});
    CHECK(cache.stats().overdue_loads == 2);
    CHECK(cache.get_many(keys, [](std::span<const std::string> missed) {
        return std::vector<Str>(missed.size(), Str("quick"));
    }) == std::vector<Str>{"quick", "quick"});
    CHECK(cache.stats().fills == 3);
}

BACKEND_TEST_CASE("Fail-safe: a stale value is served when the loader fails",
                  "[stampede][fail_safe]") {
    TestType fx;
    larder::CacheAside<std::string, decltype(fx.backend)> cache(
        fx.backend, options_for(fx, {.ttl = 200ms, .grace = 60s}));
    (void)cache.get("k", [] { return std::optional<std::string>("v1"); });
    fx.advance(400ms);  // stale, within grace
    auto failing = []() -> std::optional<std::string> { throw Boom("db down"); };
    REQUIRE(cache.get("k", failing) == "v1");
    auto s = cache.stats();
    REQUIRE(s.stale_served == 1);
    REQUIRE(s.load_errors == 1);
    // A working loader refreshes it.
    REQUIRE(cache.get("k", [] { return std::optional<std::string>("v2"); }) == "v2");
    REQUIRE(cache.get("k", failing) == "v2");

    SECTION("without grace the error propagates") {
        larder::CacheAside<std::string, decltype(fx.backend)> strict(
            fx.backend, options_for(fx, {.key_prefix = "strict:", .ttl = 200ms}));
        (void)strict.get("k", [] { return std::optional<std::string>("v1"); });
        fx.advance(400ms);
        REQUIRE_THROWS_AS(strict.get("k", failing), Boom);
    }
}

BACKEND_TEST_CASE("Fail-safe: while one reader refreshes a stale value, others get it at once",
                  "[stampede][fail_safe]") {
    TestType fx;
    larder::CacheAside<std::string, decltype(fx.backend)> cache(
        fx.backend, options_for(fx, {.ttl = 200ms, .grace = 60s}));
    (void)cache.get("k", [] { return std::optional<std::string>("v1"); });
    fx.advance(400ms);
    Gate refreshing, release;
    std::thread r([&] {
        REQUIRE(cache.get("k", [&] {
            refreshing.open();
            release.wait();
            return std::optional<std::string>("v2");
        }) == "v2");
    });
    refreshing.wait();
    int loads = 0;
    REQUIRE(cache.get("k", [&] {
        ++loads;
        return std::optional<std::string>("other");
    }) == "v1");
    REQUIRE(loads == 0);
    release.open();
    r.join();
    REQUIRE(cache.get("k", [] { return std::optional<std::string>("?"); }) == "v2");
}

BACKEND_TEST_CASE("Guards compose: XFetch with Lock", "[stampede][xfetch][lock]") {
    TestType fx;
    using Guard = larder::Guards<larder::XFetch, larder::Lock>;
    larder::CacheAside<std::string, decltype(fx.backend), Guard> cache(
        fx.backend, options_for(fx, {.ttl = 10s}), Guard(always_refresh(), larder::Lock()));
    REQUIRE(cache.guard().lease_wait().max_wait == larder::LockOptions{}.max_wait);
    (void)cache.get("k", [] {
        std::this_thread::sleep_for(20ms);
        return std::optional<std::string>("v1");
    });
    REQUIRE(cache.get("k", [] { return std::optional<std::string>("v2"); }) == "v2");
    REQUIRE(cache.stats().early_refreshes == 1);
}

#if defined(LARDER_TEST_REDIS_BACKEND) && defined(LARDER_TEST_HELPER_STAMPEDE_CHILD)
#include "support/child_process.hpp"

namespace {

// 4 processes x 32 threads read one key the moment it expires; the loader takes 200 ms.
// The key is written, and the instant chosen, only once every child is ready.
long stampede_loader_calls(const larder::test::RedisServer& server, const std::string& mode) {
    server.command({"FLUSHALL"});
    std::vector<std::unique_ptr<larder::test::ChildProcess>> children;
    for (int p = 0; p < 4; ++p) {
        children.push_back(std::make_unique<larder::test::ChildProcess>(
            LARDER_TEST_HELPER_STAMPEDE_CHILD,
            std::vector<std::string>{"read", std::to_string(server.port()), mode, "hot", "32"}));
    }
    for (auto& c : children) REQUIRE(c->read_line(60s) == "ready");
    auto redis = larder::test::make_test_backend(server);
    larder::CacheAside<std::string, larder::RedisBackend> cache(redis, {.ttl = 300ms});
    (void)cache.get("hot", [] { return std::optional<std::string>("warm"); });
    const auto expires = larder::SystemClock::instance().now() + 300ms;
    const auto start = std::to_string((expires + 2ms).time_since_epoch().count());
    for (auto& c : children) c->write_line(start);
    for (auto& c : children) REQUIRE(c->wait() == 0);
    return std::stol(server.command({"GET", "loader_calls"}));
}

}  // namespace

TEST_CASE("Across 4 processes x 32 threads, Lock loads an expiring key exactly once",
          "[stampede][lock][redis][multiprocess]") {
    larder::test::RedisServer server;
    const long naive = stampede_loader_calls(server, "naive");
    const long unguarded = stampede_loader_calls(server, "none");
    const long locked = stampede_loader_calls(server, "lock");
    WARN("loader calls for 128 readers at expiry: seed's cache-aside "
         << naive << ", CacheAside without guard " << unguarded << ", CacheAside + Lock "
         << locked);
    REQUIRE(locked == 1);
    REQUIRE(unguarded <= 4);  // single-flight: at most one per process
    REQUIRE(naive >= 96);     // the seed: (nearly) every caller goes to the database
}

namespace {

long get_calls(const larder::test::RedisServer& server) {
    const std::string stats = server.command({"INFO", "commandstats"});
    const auto at = stats.find("cmdstat_get:calls=");
    if (at == std::string::npos) return 0;
    return std::stol(stats.substr(at + std::string("cmdstat_get:calls=").size()));
}

}  // namespace

// Before: a waiter polled from 2 ms doubling to 50 ms, two commands a poll (the key and
// the bump counter): about 20 commands each for a 400 ms load.
TEST_CASE("Lock waiters in other processes hear the fill: three commands each, not a poll loop",
          "[stampede][lock][redis][notices]") {
    larder::test::RedisServer server;
    auto holder_store = larder::test::make_test_backend(server);
    larder::CacheAside<std::string, larder::RedisBackend> holder(holder_store);
    constexpr int waiters = 4;
    std::vector<std::unique_ptr<larder::RedisBackend>> stores;
    using Waiter = larder::CacheAside<std::string, larder::RedisBackend, larder::Lock>;
    std::vector<std::unique_ptr<Waiter>> caches;
    for (int i = 0; i < waiters; ++i) {
        stores.push_back(std::make_unique<larder::RedisBackend>(
            larder::RedisOptions{.host = server.host(), .port = server.port()}));
        caches.push_back(
            std::make_unique<Waiter>(*stores.back(), larder::CacheAsideOptions{},
                                     larder::Lock({.max_wait = 20s, .fallback_poll = 5s})));
        REQUIRE(eventually([&] { return stores.back()->lease_notices().listening(); }));
    }
    Gate loading, release;
    std::thread h([&] {
        (void)holder.get("k", [&] {
            loading.open();
            release.wait();
            return std::optional<std::string>("holder's");
        });
    });
    loading.wait();
    const long before = get_calls(server);
    std::vector<std::optional<std::string>> got(waiters);
    std::vector<std::thread> threads;
    for (int i = 0; i < waiters; ++i) {
        threads.emplace_back([&, i] {
            got[static_cast<std::size_t>(i)] = caches[static_cast<std::size_t>(i)]->get(
                "k", [] { return std::optional<std::string>("waiter's"); });
        });
    }
    for (auto& c : caches) REQUIRE(eventually([&] { return c->stats().lease_waits == 1; }));
    std::this_thread::sleep_for(400ms);  // a load that takes a while
    release.open();
    h.join();
    for (auto& t : threads) t.join();
    const long per_waiter = (get_calls(server) - before) / waiters;
    WARN("GETs per waiter across a 400 ms load: " << per_waiter);
    for (const auto& g : got) CHECK(g == "holder's");
    // The read that found the lease, the bump counter beside it, the read after the fill.
    CHECK(per_waiter <= 3);
}

// Before: Millis::max() overflowed once added to now(), and the waiter re-read the key in
// a busy loop.
TEST_CASE("Lock durations of Millis::max() mean for ever, and do not overflow",
          "[stampede][lock][memory][regression]") {
    const larder::Lock lock({.max_wait = larder::Millis::max(),
                             .max_backoff = larder::Millis::max(),
                             .fallback_poll = larder::Millis::max()});
    const auto wait = lock.lease_wait();
    const auto now = std::chrono::steady_clock::now();
    CHECK(now + wait.fallback_poll > now + std::chrono::hours(24));
    CHECK(now + wait.max_wait > now + std::chrono::hours(24));
    CHECK(now + wait.max_backoff > now + std::chrono::hours(24));
}

// Before: the PUBLISH inside the fill script made a fill by a user without channel
// permissions fail (after its SET had happened), and the listener was refused in silence.
TEST_CASE("A user without pub/sub permissions fills and releases leases; waiters poll",
          "[stampede][lock][redis][notices][regression]") {
    larder::test::RedisServer server;
    REQUIRE(server.command({"ACL", "SETUSER", "app", "on", ">pw", "~*", "+@all", "-@admin",
                            "-@dangerous", "resetchannels"}) == "OK");
    const larder::RedisOptions as_app{
        .host = server.host(), .port = server.port(), .user = "app", .password = "pw"};
    larder::RedisBackend holder_store(as_app);
    larder::RedisBackend waiter_store(as_app);
    larder::CacheAside<std::string, larder::RedisBackend> holder(holder_store);
    larder::CacheAside<std::string, larder::RedisBackend, larder::Lock> waiter(
        waiter_store, {}, larder::Lock({.max_wait = 10s}));
    Gate loading, release;
    std::thread h([&] {
        (void)holder.get("k", [&] {
            loading.open();
            release.wait();
            return std::optional<std::string>("holder's");
        });
    });
    loading.wait();
    std::optional<std::string> got;
    std::thread w([&] { got = waiter.get("k", [] { return std::optional<std::string>("own"); }); });
    REQUIRE(eventually([&] { return waiter.stats().lease_waits == 1; }));
    release.open();
    h.join();
    w.join();
    CHECK(got == "holder's");  // found by polling: no notice can reach it
    CHECK_FALSE(waiter_store.lease_notices().listening());
    CHECK(holder.stats().fills == 1);
    CHECK(holder.stats().backend_errors == 0);
    // A release (a loader that throws) works too.
    CHECK_THROWS(holder.get(
        "gone", []() -> std::optional<std::string> { throw std::runtime_error("no row"); }));
    CHECK(holder.stats().backend_errors == 0);
    CHECK_FALSE(holder_store.get("gone"));
}

// Before: the listener's SUBSCRIBE to a silent server held the backend's destructor for
// the whole command_timeout.
TEST_CASE("A backend whose lease listener waits on a silent server is destroyed at once",
          "[stampede][lock][redis][notices][regression]") {
    larder::test::RedisServer server;
    server.pause();  // the kernel accepts the connection; nothing answers
    double took = 0;
    {
        auto store = std::make_unique<larder::RedisBackend>(larder::RedisOptions{
            .host = server.host(), .port = server.port(), .command_timeout = 5s});
        auto cache =
            std::make_unique<larder::CacheAside<std::string, larder::RedisBackend, larder::Lock>>(
                *store);
        std::this_thread::sleep_for(300ms);  // the listener is waiting for SUBSCRIBE's answer
        took = seconds_of([&] {
            cache.reset();
            store.reset();
        });
    }
    server.resume();
    WARN("destroyed in " << took * 1000 << " ms (command_timeout 5000 ms)");
    CHECK(took < 4.0);
}

// Before: the keeper extended a lease for as long as its loader ran. A loader that hung
// held the key: every other process's reader waited max_wait, then loaded unfilled.
TEST_CASE("A holder whose loader hangs past max_load_time loses its lease to a waiter",
          "[stampede][lock][redis][multiprocess][takeover]") {
    larder::test::RedisServer server;
    // Leases of 300 ms, extended for 300 ms; the loader takes 3 s.
    larder::test::ChildProcess holder(
        LARDER_TEST_HELPER_STAMPEDE_CHILD,
        {"slow", std::to_string(server.port()), "k", "300", "300", "3000"});
    REQUIRE(holder.read_line(10s) == "holding");
    auto redis = larder::test::make_test_backend(server);
    larder::CacheAside<std::string, larder::RedisBackend, larder::Lock> waiter(
        redis, {}, larder::Lock({.max_wait = 10s}));
    std::optional<std::string> got;
    const double waited = seconds_of(
        [&] { got = waiter.get("k", [] { return std::optional<std::string>("recovered"); }); });
    WARN("reader blocked " << waited * 1000
                           << " ms by a hung holder (max_load_time 300 ms, lease 300 ms)");
    REQUIRE(got == "recovered");
    // It took the lease over and filled: it did not wait out max_wait and load unfilled.
    CHECK(waiter.stats().fills == 1);
    // The holder's late value was served to its caller, not stored.
    CHECK(holder.read_line(10s) == "late overdue=1 fills=0 rejected=0");
    CHECK(holder.wait() == 0);
    larder::CacheAside<std::string, larder::RedisBackend> reader(redis);
    CHECK(reader.get("k", [] { return std::optional<std::string>("loader"); }) == "recovered");
}

TEST_CASE("A stopped holder (SIGSTOP) loses its lease to a waiter, and its late fill is refused",
          "[stampede][lock][redis][multiprocess][takeover]") {
    larder::test::RedisServer server;
    larder::test::ChildProcess holder(
        LARDER_TEST_HELPER_STAMPEDE_CHILD,
        {"slow", std::to_string(server.port()), "k", "300", "30000", "1000"});
    REQUIRE(holder.read_line(10s) == "holding");
    holder.signal(SIGSTOP);  // its lease keeper stops with it
    auto redis = larder::test::make_test_backend(server);
    larder::CacheAside<std::string, larder::RedisBackend, larder::Lock> waiter(
        redis, {}, larder::Lock({.max_wait = 10s}));
    std::optional<std::string> got;
    const double waited = seconds_of(
        [&] { got = waiter.get("k", [] { return std::optional<std::string>("recovered"); }); });
    WARN("reader blocked " << waited * 1000 << " ms by a stopped holder (lease 300 ms)");
    REQUIRE(got == "recovered");
    CHECK(waiter.stats().fills == 1);
    holder.signal(SIGCONT);
    // The holder wakes, loads "late", and finds its lease replaced: its fill is refused.
    CHECK(holder.read_line(10s) == "late overdue=0 fills=0 rejected=1");
    CHECK(holder.wait() == 0);
    larder::CacheAside<std::string, larder::RedisBackend> reader(redis);
    CHECK(reader.get("k", [] { return std::optional<std::string>("loader"); }) == "recovered");
}

TEST_CASE("A killed holder (SIGKILL) loses its lease to a waiter when the lease runs out",
          "[stampede][lock][redis][multiprocess][takeover]") {
    larder::test::RedisServer server;
    const Millis lease_ttl = 500ms;
    larder::test::ChildProcess holder(
        LARDER_TEST_HELPER_STAMPEDE_CHILD,
        {"hold", std::to_string(server.port()), "k", std::to_string(lease_ttl.count())});
    REQUIRE(holder.read_line(10s) == "holding");
    auto redis = larder::test::make_test_backend(server);
    larder::CacheAside<std::string, larder::RedisBackend, larder::Lock> waiter(
        redis, {.lease_ttl = lease_ttl}, larder::Lock({.max_wait = 10s}));
    holder.kill();
    std::optional<std::string> got;
    const double waited = seconds_of(
        [&] { got = waiter.get("k", [] { return std::optional<std::string>("recovered"); }); });
    WARN("reader blocked " << waited * 1000 << " ms by a killed holder (lease "
                           << lease_ttl.count() << " ms, fallback poll 100 ms)");
    REQUIRE(got == "recovered");
    REQUIRE(waiter.stats().fills == 1);  // it took the lease over, not just loaded
    // It did not wait out max_wait (10 s) and then load unfilled: the fill above says so,
    // and so does the time, whatever the machine's speed.
    REQUIRE(waited < 10.0);
}
#endif
