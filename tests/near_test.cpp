// Near (L1 in front of a policy) and the invalidation bus: hits without round trips,
// coherence across caches and OS processes, and what happens when the bus is lost.
#include <larder/larder.hpp>
#include <larder/near/near.hpp>

#include <algorithm>
#include <atomic>
#include <sstream>
#include <thread>
#include <vector>

#include "support/backends.hpp"
#include "support/client_list.hpp"
#include "support/eventually.hpp"
#include "support/fake_db.hpp"

using namespace std::chrono_literals;
using larder::Millis;
using larder::test::client_ids;
using larder::test::eventually;
using larder::test::FakeDb;
using larder::test::Gate;

namespace {

using MemoryCache = larder::CacheAside<std::string, larder::MemoryBackend>;

}  // namespace

BACKEND_TEST_CASE("An L1 hit makes no store call", "[l1]") {
    TestType fx;
    larder::ChaosBackend counted(fx.backend);
    larder::CacheAside<std::string, decltype(counted)> cache(counted);
    larder::MemoryBus bus;
    larder::Near near(cache, bus);
    int loads = 0;
    auto loader = [&] {
        ++loads;
        return std::optional<std::string>("v");
    };
    REQUIRE(near.get("k", loader) == "v");
    const auto calls = counted.calls().total();
    for (int i = 0; i < 100; ++i) REQUIRE(near.get("k", loader) == "v");
    REQUIRE(counted.calls().total() == calls);
    REQUIRE(near.l1().stats().hits == 100);
    REQUIRE(loads == 1);
}

BACKEND_TEST_CASE("A write through one Near reaches another's L1 through the bus", "[l1][event]") {
    TestType fx;
    larder::MemoryBus bus;
    larder::CacheAside<std::string, decltype(fx.backend)> cache_a(fx.backend),
        cache_b(fx.backend);  // two "processes" sharing the store
    larder::Near a(cache_a, bus), b(cache_b, bus);
    FakeDb db;
    db.write("k", "v1");
    auto load = [&] { return db.read("k"); };
    REQUIRE(a.get("k", load) == "v1");
    REQUIRE(b.get("k", load) == "v1");
    REQUIRE(b.get("k", load) == "v1");  // from b's L1
    a.invalidate_after("k", [&] { db.write("k", "v2"); });
    REQUIRE(b.get("k", load) == "v2");
    REQUIRE(a.get("k", load) == "v2");
}

BACKEND_TEST_CASE("A load that raced an invalidation does not land in L1", "[l1][event]") {
    TestType fx;
    larder::MemoryBus bus;
    larder::CacheAside<std::string, decltype(fx.backend)> cache(fx.backend);
    larder::Near near(cache, bus);
    FakeDb db;
    db.write("k", "v1");
    Gate loaded, proceed;
    std::thread reader([&] {
        (void)near.get("k", [&] {
            auto row = db.read("k");
            loaded.open();
            proceed.wait();
            return row;
        });
    });
    loaded.wait();
    near.invalidate_after("k", [&] { db.write("k", "v2"); });
    proceed.open();
    reader.join();
    REQUIRE(near.get("k", [&] { return db.read("k"); }) == "v2");
}

BACKEND_TEST_CASE("Tag invalidation reaches every L1", "[l1][tags]") {
    TestType fx;
    larder::MemoryBus bus;
    larder::CacheAside<std::string, decltype(fx.backend)> cache_a(fx.backend), cache_b(fx.backend);
    larder::Near a(cache_a, bus), b(cache_b, bus);
    FakeDb db;
    db.write("post:1", "p1");
    db.write("post:2", "q1");
    auto load = [&](const char* k) { return [&db, k] { return db.read(k); }; };
    REQUIRE(b.get("post:1", {"user:42"}, load("post:1")) == "p1");
    REQUIRE(b.get("post:2", {"user:7"}, load("post:2")) == "q1");
    db.write("post:1", "p2");
    db.write("post:2", "q2");
    a.invalidate_tag("user:42");
    REQUIRE(b.get("post:1", {"user:42"}, load("post:1")) == "p2");
    REQUIRE(b.get("post:2", {"user:7"}, load("post:2")) == "q1");  // other tag: still cached
}

TEST_CASE("L1 serves nothing while the bus is lost, and starts over when it is back",
          "[l1][memory]") {
    // A bus whose subscription can be dropped on demand.
    class FlakyBus {
    public:
        void publish(std::string_view m) {
            if (up_) inner_.publish(m);
        }
        larder::BusSubscription subscribe(larder::BusHandlers h) {
            handlers_ = h;
            return inner_.subscribe(std::move(h));
        }
        bool connected() const { return up_; }
        void drop() {
            up_ = false;
            handlers_.on_lost();
        }
        void restore() {
            up_ = true;
            handlers_.on_restored();
        }

    private:
        larder::MemoryBus inner_;
        larder::BusHandlers handlers_;
        bool up_ = true;
    };
    larder::MemoryBackend store;
    FlakyBus bus;
    MemoryCache cache(store);
    larder::Near near(cache, bus);
    int loads = 0;
    auto loader = [&] { return std::optional<std::string>("v" + std::to_string(++loads)); };
    REQUIRE(near.get("k", loader) == "v1");
    REQUIRE(near.get("k", loader) == "v1");
    const auto hits = near.l1().stats().hits;
    bus.drop();
    store.del(cache.full_key("k"));  // a write this process never hears about
    REQUIRE(near.get("k", loader) == "v2");
    REQUIRE(near.get("k", loader) == "v2");  // from L2, not L1
    REQUIRE(near.l1().stats().hits == hits);
    bus.restore();
    REQUIRE(near.get("k", loader) == "v2");
    REQUIRE(near.get("k", loader) == "v2");
    REQUIRE(near.l1().stats().hits == hits + 1);
}

#if defined(LARDER_TEST_REDIS_BACKEND)
#include <larder/near/redis_bus.hpp>

#include "support/child_process.hpp"

namespace {

larder::RedisOptions redis_options(const larder::test::RedisServer& server) {
    return larder::RedisOptions{.port = server.port(), .command_timeout = 2s};
}

}  // namespace

TEST_CASE("A killed subscriber connection: no stale L1 reads, then recovery",
          "[l1][event][redis]") {
    larder::test::RedisServer server;
    larder::RedisBackend redis(redis_options(server));
    larder::RedisBus bus_a(redis_options(server)), bus_b(redis_options(server));
    larder::CacheAside<std::string, larder::RedisBackend> cache_a(redis), cache_b(redis);
    larder::Near a(cache_a, bus_a), b(cache_b, bus_b);
    REQUIRE(bus_a.wait_connected(5s));
    REQUIRE(bus_b.wait_connected(5s));
    auto db = [&] { return std::optional<std::string>(redis.get("db:k")->bytes); };
    redis.set("db:k", "v1", larder::no_expiry);
    REQUIRE(b.get("k", db) == "v1");
    REQUIRE(b.get("k", db) == "v1");  // now in b's L1

    server.command({"CLIENT", "KILL", "TYPE", "pubsub"});
    // b notices at once (EOF); until it has resubscribed, its L1 serves nothing.
    REQUIRE(eventually([&] { return !bus_b.connected() || bus_b.subscriptions() >= 2; }));
    redis.set("db:k", "v2", larder::no_expiry);
    a.invalidate("k");  // b may or may not hear this: it must not matter
    REQUIRE(b.get("k", db) == "v2");

    // connected() turns true just before on_restored enables L1; and a copy may still be
    // refused once, if the invalidation above arrives live as well as replayed.
    REQUIRE(eventually([&] { return bus_b.subscriptions() >= 2 && b.l1().enabled(); }));
    REQUIRE(eventually([&] { return bus_a.connected(); }));
    REQUIRE(eventually(
        [&] { return b.get("k", db) == "v2" && b.l1().contains(cache_b.full_key("k")); }));
    const auto hits = b.l1().stats().hits;
    REQUIRE(b.get("k", db) == "v2");
    REQUIRE(b.l1().stats().hits == hits + 1);  // L1 is serving again
    redis.set("db:k", "v3", larder::no_expiry);
    a.invalidate("k");
    REQUIRE(eventually([&] { return b.get("k", db) == "v3"; }));
}

// Reconnect without a cold herd: a subscriber that comes back replays what it missed
// from the bus's log, drops just those keys, and keeps serving the rest from L1.
TEST_CASE("A reconnect replays what it missed and keeps the rest of L1", "[l1][event][redis]") {
    larder::test::RedisServer server;
    larder::RedisBackend redis(redis_options(server));
    larder::RedisBus bus_a(redis_options(server));
    larder::RedisBus bus_b(redis_options(server), {.first_backoff = 1s});  // slow to return
    larder::CacheAside<std::string, larder::RedisBackend> cache_a(redis), cache_b(redis);
    larder::Near a(cache_a, bus_a), b(cache_b, bus_b, {.ttl = 1h});
    REQUIRE(bus_a.wait_connected(5s));
    REQUIRE(bus_b.wait_connected(5s));
    auto db = [&](const char* k) {
        return [&redis, k] { return std::optional<std::string>(redis.get(k)->bytes); };
    };
    redis.set("db:hot", "h1", larder::no_expiry);
    redis.set("db:k", "v1", larder::no_expiry);
    a.invalidate("warm-up");  // the log has a message before the loss
    REQUIRE(eventually([&] { return bus_b.connected(); }));
    REQUIRE(b.get("hot", db("db:hot")) == "h1");
    REQUIRE(b.get("k", db("db:k")) == "v1");

    server.command({"CLIENT", "KILL", "TYPE", "pubsub"});
    REQUIRE(eventually([&] { return !bus_b.connected(); }));
    redis.set("db:k", "v2", larder::no_expiry);
    a.invalidate("k");                        // published while b is away
    REQUIRE(b.get("k", db("db:k")) == "v2");  // L1 serves nothing meanwhile

    REQUIRE(eventually([&] { return bus_b.subscriptions() >= 2 && b.l1().enabled(); }, 10s));
    REQUIRE(bus_b.resumes() == 1);
    REQUIRE(bus_b.replayed() >= 1);
    REQUIRE_FALSE(b.l1().contains(cache_b.full_key("k")));  // the missed write dropped it
    const auto hits = b.l1().stats().hits;
    REQUIRE(b.get("hot", db("db:hot")) == "h1");
    REQUIRE(b.l1().stats().hits == hits + 1);  // kept across the reconnect: no cold start
    REQUIRE(b.get("k", db("db:k")) == "v2");
}

// Before: the numbers began again after a flush (or a restart without persistence), and a
// subscriber that had heard number 1 took the new number 1 for one it had heard: it
// resumed, kept its L1, and never dropped the key that new message named.
TEST_CASE("A reconnect after the bus's counter began again starts L1 over",
          "[regression][l1][event][redis]") {
    larder::test::RedisServer server;
    larder::RedisBackend redis(redis_options(server));
    larder::RedisBus bus_a(redis_options(server));
    larder::RedisBus bus_b(redis_options(server), {.first_backoff = 1s});
    larder::CacheAside<std::string, larder::RedisBackend> cache_a(redis), cache_b(redis);
    larder::Near a(cache_a, bus_a), b(cache_b, bus_b, {.ttl = 1h});
    REQUIRE(bus_a.wait_connected(5s));
    REQUIRE(bus_b.wait_connected(5s));
    a.invalidate("warm-up");  // number 1 of the first epoch; b hears it
    REQUIRE(eventually([&] { return bus_b.connected(); }));
    std::this_thread::sleep_for(100ms);
    int version = 1;
    auto load = [&] { return std::optional<std::string>("v" + std::to_string(version)); };
    REQUIRE(b.get("k", load) == "v1");

    server.command({"CLIENT", "KILL", "TYPE", "pubsub"});
    REQUIRE(eventually([&] { return !bus_b.connected(); }));
    server.command({"FLUSHALL"});  // the counter and the log go with everything else
    version = 2;
    a.invalidate("k");  // number 1 again, in a new epoch

    REQUIRE(eventually([&] { return bus_b.subscriptions() >= 2 && b.l1().enabled(); }, 10s));
    REQUIRE(bus_b.resumes() == 0);
    REQUIRE(b.get("k", load) == "v2");
}

// Before: a subscriber that had heard no message could not tell the epoch the first
// publish drew from one drawn, flushed away and drawn again while it was gone, so every
// process started L1 over on the first reconnect of a quiet bus (reconnect_bench: the
// same GETs with a log as without). The subscriber now draws the epoch itself.
TEST_CASE("A reconnect of a bus that had heard nothing yet replays what it missed",
          "[regression][l1][event][redis]") {
    larder::test::RedisServer server;
    larder::RedisBackend redis(redis_options(server));
    larder::RedisBus bus_a(redis_options(server));
    larder::RedisBus bus_b(redis_options(server), {.first_backoff = 1s});
    larder::CacheAside<std::string, larder::RedisBackend> cache_a(redis), cache_b(redis);
    larder::Near a(cache_a, bus_a), b(cache_b, bus_b, {.ttl = 1h});
    REQUIRE(bus_a.wait_connected(5s));
    REQUIRE(bus_b.wait_connected(5s));
    int version = 1;
    auto load = [&] { return std::optional<std::string>("v" + std::to_string(version)); };
    REQUIRE(b.get("hot", load) == "v1");
    REQUIRE(b.get("k", load) == "v1");

    server.command({"CLIENT", "KILL", "TYPE", "pubsub"});
    REQUIRE(eventually([&] { return !bus_b.connected(); }));
    version = 2;
    a.invalidate("k");  // the bus's first message

    REQUIRE(eventually([&] { return bus_b.subscriptions() >= 2 && b.l1().enabled(); }, 10s));
    REQUIRE(bus_b.resumes() == 1);
    REQUIRE(b.get("k", load) == "v2");
    REQUIRE(b.get("hot", load) == "v1");  // kept
}

TEST_CASE("A bus that heard nothing, away while the counter was drawn and flushed, starts over",
          "[l1][event][redis]") {
    larder::test::RedisServer server;
    larder::RedisBackend redis(redis_options(server));
    larder::RedisBus bus_a(redis_options(server));
    larder::RedisBus bus_b(redis_options(server), {.first_backoff = 1s});
    larder::CacheAside<std::string, larder::RedisBackend> cache_a(redis), cache_b(redis);
    larder::Near a(cache_a, bus_a), b(cache_b, bus_b, {.ttl = 1h});
    REQUIRE(bus_a.wait_connected(5s));
    REQUIRE(bus_b.wait_connected(5s));
    int version = 1;
    auto load = [&] { return std::optional<std::string>("v" + std::to_string(version)); };
    REQUIRE(b.get("k", load) == "v1");

    server.command({"CLIENT", "KILL", "TYPE", "pubsub"});
    REQUIRE(eventually([&] { return !bus_b.connected(); }));
    version = 2;
    a.invalidate("k");             // number 1; then the counter and log are flushed away
    server.command({"FLUSHALL"});  // and the next publish draws a new epoch
    a.invalidate("other");         // number 1 again

    REQUIRE(eventually([&] { return bus_b.subscriptions() >= 2 && b.l1().enabled(); }, 10s));
    REQUIRE(bus_b.resumes() == 0);
    REQUIRE(b.get("k", load) == "v2");
}

// Before: a server restored from an older snapshot came back with the same epoch and a
// counter behind what a subscriber had heard, so the messages it missed carried numbers it
// took for heard ones: it resumed and kept the copy of a key written while it was away.
// Now every message carries a random id, and a bus resumes only if the log still holds the
// very message it heard last.
TEST_CASE("A reconnect to a server restored from an older snapshot starts L1 over",
          "[regression][l1][event][redis]") {
    larder::test::RedisServer server;  // no AOF: restart() loads the last SAVE
    larder::RedisBackend redis(redis_options(server));
    larder::RedisBus bus_a(redis_options(server));
    larder::RedisBus bus_b(redis_options(server), {.first_backoff = 2s, .max_backoff = 2s});
    larder::CacheAside<std::string, larder::RedisBackend> cache_a(redis), cache_b(redis);
    larder::Near a(cache_a, bus_a), b(cache_b, bus_b, {.ttl = 1h});
    REQUIRE(bus_a.wait_connected(5s));
    REQUIRE(bus_b.wait_connected(5s));
    std::atomic<int> heard_b{0};
    auto recorder = bus_b.subscribe(
        larder::BusHandlers{.on_message = [&](std::string_view) { heard_b.fetch_add(1); }});
    int version = 1;
    auto load = [&] { return std::optional<std::string>("v" + std::to_string(version)); };
    REQUIRE(b.get("k", load) == "v1");
    a.invalidate("warm-up");  // number 1
    REQUIRE(eventually([&] { return heard_b.load() >= 1; }));
    REQUIRE(server.command({"SAVE"}) == "OK");  // the snapshot: the counter at 1
    for (int i = 0; i < 4; ++i) a.invalidate("other" + std::to_string(i));  // 2 to 5
    REQUIRE(eventually([&] { return heard_b.load() >= 5; }));
    server.restart();  // the snapshot comes back: the counter at 1, the same epoch
    REQUIRE(eventually([&] { return !bus_b.connected(); }));
    // b's process publishes too, as a process that writes during an outage does: its
    // catch-up then finds live pooled connections (a dead one would start over anyway).
    REQUIRE(eventually([&] {
        try {
            bus_b.publish("kb-was-here");
            return true;
        } catch (const larder::BackendError&) {
            return false;
        }
    }));
    version = 2;
    REQUIRE(eventually([&] {  // number 2 again, naming k this time
        try {
            a.invalidate("k");
            return a.unsent() == 0;
        } catch (const larder::BackendError&) {
            return false;
        }
    }));
    SECTION("the counter stays behind the last number heard") {}
    SECTION("the counter passes it") {
        for (int i = 0; i < 5; ++i) a.invalidate("again" + std::to_string(i));  // 3 to 7
    }
    REQUIRE_FALSE(bus_b.connected());  // b is still away (its backoff is 2 s)
    REQUIRE(eventually([&] { return bus_b.subscriptions() >= 2 && b.l1().enabled(); }, 10s));
    REQUIRE(bus_b.resumes() == 0);
    REQUIRE(b.get("k", load) == "v2");
}

// Before: the snapshot held the very message b had heard last, and the message it missed
// (naming k) went with the restore, number and all: the log and the counter agreed, b
// resumed and kept its copy of k. Now a bus that finds another server process starts over.
TEST_CASE("A restart that loses only messages the subscriber missed starts L1 over",
          "[regression][l1][event][redis]") {
    larder::test::RedisServer server;  // no AOF: restart() loads the last SAVE
    larder::RedisBackend redis(redis_options(server));
    larder::RedisBus bus_b(redis_options(server), {.first_backoff = 3s, .max_backoff = 3s});
    REQUIRE(bus_b.wait_connected(5s));
    const auto b_subscriber = client_ids(server, "pubsub", "");
    REQUIRE(b_subscriber.size() == 1);
    larder::RedisBus bus_a(redis_options(server));
    REQUIRE(bus_a.wait_connected(5s));
    larder::CacheAside<std::string, larder::RedisBackend> cache_a(redis), cache_b(redis);
    larder::Near a(cache_a, bus_a), b(cache_b, bus_b, {.ttl = 1h});
    REQUIRE(eventually([&] { return a.l1().enabled() && b.l1().enabled(); }));
    std::atomic<int> heard_b{0};
    auto recorder = bus_b.subscribe(
        larder::BusHandlers{.on_message = [&](std::string_view) { heard_b.fetch_add(1); }});

    a.invalidate("warm-up");  // number 1
    REQUIRE(eventually([&] { return heard_b.load() >= 1; }));
    REQUIRE(server.command({"SAVE"}) == "OK");  // the snapshot: the counter at 1, b heard 1

    std::atomic<int> version{1};
    auto load = [&] { return std::optional<std::string>("v" + std::to_string(version.load())); };
    REQUIRE(b.get("k", load) == "v1");  // after the SAVE: neither L2's copy nor b's is in it
    REQUIRE(b.l1().contains(cache_b.full_key("k")));

    // b's subscription drops (nothing else); b stays away for 3 s.
    REQUIRE(server.command({"CLIENT", "KILL", "ID", b_subscriber[0]}) == "1");
    REQUIRE(eventually([&] { return !bus_b.connected(); }));
    version = 2;
    a.invalidate("k");  // number 2: published (not in any outbox), b does not hear it
    REQUIRE(a.unsent() == 0);
    REQUIRE(a.get("k", load) == "v2");

    server.restart();  // the snapshot: the counter at 1, the log [1], no copy of k in L2
    // b's process writes during the outage (as in near_test.cpp's snapshot regression test),
    // so its catch-up meets live pooled connections.
    REQUIRE(eventually([&] {
        try {
            bus_b.publish("kb-was-here");
            return true;
        } catch (const larder::BackendError&) {
            return false;
        }
    }));
    REQUIRE(bus_b.subscriptions() == 1);  // b has not been back since the kill
    REQUIRE(eventually([&] { return bus_b.subscriptions() >= 2 && b.l1().enabled(); }, 10s));

    // The write b missed is gone from the log and the counter; the server's run_id tells.
    REQUIRE(bus_b.resumes() == 0);
    REQUIRE(b.get("k", load) == "v2");
}

// Before: a publish that met a pooled connection the server had closed failed, and the
// message waited in the writer's outbox - unnumbered, so a subscriber that reconnected
// meanwhile found no gap, resumed, and kept the old copy until the writer's next write.
TEST_CASE("A write whose publisher connection was closed still reaches a reconnecting L1",
          "[regression][l1][event][redis]") {
    larder::test::RedisServer server;
    larder::RedisBackend redis(redis_options(server));
    larder::RedisBus bus_b(redis_options(server), {.first_backoff = 200ms});
    REQUIRE(bus_b.wait_connected(5s));
    const auto b_subscriber = client_ids(server, "pubsub", "");
    REQUIRE(b_subscriber.size() == 1);
    larder::RedisBus bus_a(redis_options(server));
    REQUIRE(bus_a.wait_connected(5s));
    larder::CacheAside<std::string, larder::RedisBackend> cache_a(redis), cache_b(redis);
    larder::Near a(cache_a, bus_a), b(cache_b, bus_b, {.ttl = 1h});
    REQUIRE(eventually([&] { return a.l1().enabled() && b.l1().enabled(); }));
    int version = 1;
    auto load = [&] { return std::optional<std::string>("v" + std::to_string(version)); };
    a.invalidate("warm-up");  // a's publisher connection's last command is the script
    const auto a_publisher = client_ids(server, "normal", "cmd=eval");
    REQUIRE(a_publisher.size() == 1);
    REQUIRE(b.get("k", load) == "v1");
    REQUIRE(b.get("k", load) == "v1");  // in b's L1

    // A blip: a's publishing connection and b's subscription drop, nothing else.
    REQUIRE(server.command({"CLIENT", "KILL", "ID", a_publisher[0]}) == "1");
    REQUIRE(server.command({"CLIENT", "KILL", "ID", b_subscriber[0]}) == "1");
    REQUIRE(eventually([&] { return !bus_b.connected(); }));
    version = 2;
    a.invalidate("k");
    REQUIRE(a.unsent() == 0);  // sent on a new connection
    REQUIRE(bus_a.connected());
    REQUIRE(eventually([&] { return bus_b.subscriptions() >= 2 && b.l1().enabled(); }, 10s));
    REQUIRE(b.get("k", load) == "v2");
}

TEST_CASE("A reconnect that missed more than the log holds starts L1 over", "[l1][event][redis]") {
    larder::test::RedisServer server;
    larder::RedisBackend redis(redis_options(server));
    larder::RedisBus bus_a(redis_options(server), {.replay_log = 2});
    larder::RedisBus bus_b(redis_options(server), {.first_backoff = 1s, .replay_log = 2});
    larder::CacheAside<std::string, larder::RedisBackend> cache_a(redis), cache_b(redis);
    larder::Near a(cache_a, bus_a), b(cache_b, bus_b, {.ttl = 1h});
    REQUIRE(bus_a.wait_connected(5s));
    REQUIRE(bus_b.wait_connected(5s));
    REQUIRE(b.get("hot", [] { return std::optional<std::string>("h"); }) == "h");

    server.command({"CLIENT", "KILL", "TYPE", "pubsub"});
    REQUIRE(eventually([&] { return !bus_b.connected(); }));
    for (int i = 0; i < 5; ++i) a.invalidate("other" + std::to_string(i));  // 3 fall out

    REQUIRE(eventually([&] { return bus_b.subscriptions() >= 2 && b.l1().enabled(); }, 10s));
    REQUIRE(bus_b.resumes() == 0);
    REQUIRE_FALSE(b.l1().contains(cache_b.full_key("hot")));  // it cannot know: cleared
}

#if defined(LARDER_TEST_HELPER_L1_CHILD)
TEST_CASE("A write in one process reaches another's L1: 1000 writes, propagation delay",
          "[l1][event][redis][multiprocess]") {
    larder::test::RedisServer server;
    larder::RedisBackend redis(redis_options(server));
    larder::RedisBus bus(redis_options(server));
    larder::CacheAside<std::string, larder::RedisBackend> cache(redis);
    larder::Near near(cache, bus);
    REQUIRE(bus.wait_connected(5s));
    redis.set("db:k", "0", larder::no_expiry);

    larder::test::ChildProcess child(LARDER_TEST_HELPER_L1_CHILD, {std::to_string(server.port())});
    REQUIRE(child.read_line(30s) == "ready");
    child.write_line("get k");
    REQUIRE(child.read_line(20s) == "0");

    const int writes = 1000;
    child.write_line("watch k " + std::to_string(writes));
    REQUIRE(child.read_line(20s) == "watching 0");
    std::vector<double> delays_ms;
    for (int i = 1; i <= writes; ++i) {
        redis.set("db:k", std::to_string(i), larder::no_expiry);
        const auto written = std::chrono::duration_cast<std::chrono::microseconds>(
                                 std::chrono::system_clock::now().time_since_epoch())
                                 .count();
        near.invalidate("k");
        const auto line = child.read_line(20s);
        REQUIRE(line);
        std::istringstream in(*line);
        std::string word, value;
        long long seen_at = 0;
        in >> word >> value >> seen_at;
        REQUIRE(word == "seen");
        REQUIRE(value == std::to_string(i));  // every write seen, in order, none stale
        delays_ms.push_back(static_cast<double>(seen_at - written) / 1000.0);
    }
    const auto done = child.read_line(20s);
    REQUIRE(done);
    REQUIRE(done->rfind("done ", 0) == 0);
    REQUIRE(std::stoll(done->substr(5)) > writes);  // the child's reads were mostly L1 hits
    std::sort(delays_ms.begin(), delays_ms.end());
    WARN("propagation delay over " << writes << " writes: p50 " << delays_ms[writes / 2]
                                   << " ms, p99 " << delays_ms[writes * 99 / 100] << " ms, max "
                                   << delays_ms.back() << " ms");
    child.write_line("quit");
    REQUIRE(child.wait() == 0);
}

TEST_CASE("L1 with tags and version keys across two processes",
          "[l1][tags][version_keys][redis][multiprocess]") {
    larder::test::RedisServer server;
    larder::RedisBackend redis(redis_options(server));
    larder::RedisBus bus(redis_options(server));
    larder::CacheAside<std::string, larder::RedisBackend> cache(redis);
    larder::Near near(cache, bus);
    larder::VersionKeys versions(redis);
    REQUIRE(bus.wait_connected(5s));
    larder::test::ChildProcess child(LARDER_TEST_HELPER_L1_CHILD, {std::to_string(server.port())});
    REQUIRE(child.read_line(30s) == "ready");
    auto ask = [&](const std::string& command) {
        child.write_line(command);
        return child.read_line(20s).value_or("(no answer)");
    };

    redis.set("db:post", "p1", larder::no_expiry);
    redis.set("db:user", "u1", larder::no_expiry);
    REQUIRE(ask("get post user:1 category:5") == "p1");
    REQUIRE(ask("getv user") == "u1");

    redis.set("db:post", "p2", larder::no_expiry);
    redis.set("db:user", "u2", larder::no_expiry);
    REQUIRE(ask("get post user:1 category:5") == "p1");  // cached in the child's L1
    near.invalidate_tag("category:5");
    versions.bump("user");
    // The version bump needs no message: the child's next read asks for a new key.
    REQUIRE(ask("getv user") == "u2");
    // The tag travels on the bus; once it arrives, the child reads p2 (never p1 after p2).
    bool saw_new = false;
    REQUIRE(eventually([&] {
        const auto v = ask("get post user:1 category:5");
        if (v == "p2") saw_new = true;
        return saw_new && v == "p2";
    }));
    REQUIRE(ask("get post user:1 category:5") == "p2");
    child.write_line("quit");
    REQUIRE(child.wait() == 0);
}
#endif
#endif

// L1 used to index a key under the tags its read passed; the stored entry's own tags
// decide in L2, so a key read without them (or with a loader that chose them) stayed in
// L1 after its tag was invalidated in another process.
TEST_CASE("An L1 copy goes when any tag its stored entry carries is invalidated",
          "[l1][tags][regression][memory]") {
    larder::MemoryBackend store;
    larder::MemoryBus bus;
    MemoryCache cache_a(store), cache_b(store);
    larder::Near a(cache_a, bus), b(cache_b, bus);
    FakeDb db;
    db.write("post:1", "v1");
    db.write("post:2", "w1");
    auto load = [&](const char* k) { return [&db, k] { return db.read(k); }; };
    // post:1 is stored with its tag by one reader; b reads it without tags.
    REQUIRE(a.get("post:1", {"user:42"}, load("post:1")) == "v1");
    REQUIRE(b.get("post:1", load("post:1")) == "v1");
    // post:2's loader chooses its tag.
    auto adaptive = [&](larder::LoadContext& ctx) {
        ctx.tags.push_back("user:42");
        return db.read("post:2");
    };
    REQUIRE(b.get("post:2", adaptive) == "w1");
    REQUIRE(b.get("post:1", load("post:1")) == "v1");  // from b's L1
    REQUIRE(b.get("post:2", adaptive) == "w1");
    const auto l1_hits = b.l1().stats().hits;
    REQUIRE(l1_hits == 2);
    db.write("post:1", "v2");
    db.write("post:2", "w2");
    a.invalidate_tag("user:42");
    REQUIRE(b.get("post:1", load("post:1")) == "v2");
    REQUIRE(b.get("post:2", adaptive) == "w2");
    // An untagged key that carries no tag is not dropped by the bump.
    db.write("plain", "p1");
    REQUIRE(b.get("plain", load("plain")) == "p1");
    a.invalidate_tag("user:42");
    REQUIRE(b.get("plain", load("plain")) == "p1");
    REQUIRE(b.l1().stats().hits == l1_hits + 1);
}
