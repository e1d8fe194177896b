// The L1's coherence where features meet: every policy's verbs through Near, writes racing
// local reads, a bus that fails to publish or changes state while a cache subscribes, the
// tag index under churn, hostile key sets, fork(), and the bounds NearCache promises.
// Each [regression] case failed before the fix it names.
#include <larder/codec/json.hpp>
#include <larder/larder.hpp>
#include <larder/near/near.hpp>
#include <larder/policy/write_behind.hpp>
#include <larder/policy/write_through.hpp>

#include <sys/wait.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <string>
#include <thread>
#include <vector>

#include "support/backends.hpp"
#include "support/eventually.hpp"
#include "support/fake_db.hpp"

using namespace std::chrono_literals;
using larder::Millis;
using larder::NearCache;
using larder::test::eventually;
using larder::test::FakeDb;
using larder::test::Gate;

namespace {

using Str = std::optional<std::string>;
using State = larder::detail::Subscribers::State;
using MemoryCache = larder::CacheAside<std::string, larder::MemoryBackend>;
using MemoryWriteBehind = larder::WriteBehind<std::string, larder::MemoryBackend>;

// A bus in one process (as MemoryBus: delivers at once) that can refuse to publish, and
// lose and regain its subscription, on demand.
class SwitchableBus {
public:
    void publish(std::string_view message) {
        if (failing_) throw larder::BackendError("SwitchableBus: publishing fails");
        subscribers_.message(message);
    }
    larder::BusSubscription subscribe(larder::BusHandlers handlers) {
        const auto id = subscribers_.add(std::move(handlers), [this] { return connected_.load(); });
        return larder::BusSubscription([this, id] { subscribers_.remove(id); });
    }
    [[nodiscard]] bool connected() const { return connected_; }

    void fail_publishing(bool on) { failing_ = on; }
    void set_connected(bool on) {
        subscribers_.transition([&] { connected_ = on; }, on ? State::restored : State::lost);
    }

private:
    larder::detail::Subscribers subscribers_;
    std::atomic<bool> failing_{false};
    std::atomic<bool> connected_{true};
};

static_assert(larder::InvalidationBus<SwitchableBus>);

// Counts live objects, to see what the epoch reclamation frees.
struct Counted {
    static inline std::atomic<long> live{0};
    int value = 0;
    explicit Counted(int v) : value(v) { ++live; }
    Counted(const Counted& o) : value(o.value) { ++live; }
    Counted(Counted&& o) noexcept : value(o.value) { ++live; }
    Counted& operator=(const Counted&) = delete;
    ~Counted() { --live; }
};

// `queue`: another instance's (shared_store()): two processes on one store share the
// write-behind queue, which in process memory is one object.
MemoryWriteBehind write_behind(larder::MemoryBackend& store, FakeDb& db, std::string prefix,
                               std::shared_ptr<MemoryWriteBehind::store_type> queue = nullptr) {
    return MemoryWriteBehind(store, std::move(queue),
                             [&db](std::span<const MemoryWriteBehind::Entry> batch) {
                                 for (const auto& e : batch) db.write(e.key, e.value);
                                 return larder::BatchResult{};
                             },
                             {.start_flusher = false, .cache = {.key_prefix = std::move(prefix)}});
}

using Counter = larder::WriteBehind<std::int64_t, larder::MemoryBackend>;

Counter counter(larder::MemoryBackend& store) {
    return Counter(store, [](std::span<const Counter::Entry>) { return larder::BatchResult{}; },
                   {.start_flusher = false, .cache = {.key_prefix = "n:"}});
}

}  // namespace

// ---- every verb of every policy ---------------------------------------------------------

TEST_CASE("Near wraps WriteBehind with every verb, and each write drops every L1 copy",
          "[l1][write_behind][memory]") {
    larder::MemoryBackend store;
    larder::MemoryBus bus;
    FakeDb db;
    auto p1 = write_behind(store, db, "wb:");
    auto p2 = write_behind(store, db, "wb:", p1.shared_store());
    larder::Near n1(p1, bus), n2(p2, bus);  // two processes
    db.write("k", "1");
    auto load = [&] { return db.read("k"); };
    auto other_sees = [&](const std::string& want) {
        const auto hits = n2.l1().stats().hits;
        return n2.get("k", load) == want && n2.l1().stats().hits == hits + 1;  // from its L1
    };
    REQUIRE(n2.get("k", load) == "1");
    REQUIRE(other_sees("1"));

    (void)n1.put("k", "2");
    REQUIRE(n2.get("k", load) == "2");
    REQUIRE(other_sees("2"));

    REQUIRE(n1.modify(
                "k", [](std::string& v) { v += "+"; }, load) == "2+");
    REQUIRE(n2.get("k", load) == "2+");

    auto c1 = counter(store);
    auto c2 = counter(store);
    larder::Near m1(c1, bus), m2(c2, bus);
    auto zero = [] { return std::optional<std::int64_t>(0); };
    REQUIRE(m2.get("n", zero) == 0);
    REQUIRE(m1.increment("n", 42, zero) == 42);
    REQUIRE(m2.get("n", zero) == 42);

    (void)p1.flush();
    REQUIRE(n2.get("k", load) == "2+");
    n1.invalidate("k");  // the value stays in the database; L1 and L2 copies go
    REQUIRE(n2.l1().get(p2.full_key("k")) == std::nullopt);

    db.write("t", "t1");
    REQUIRE(n2.get("t", {"team"}, [&] { return db.read("t"); }) == "t1");
    REQUIRE(n2.l1().get(p2.full_key("t")) == "t1");
    n1.invalidate_tag("team");
    REQUIRE(n2.l1().get(p2.full_key("t")) == std::nullopt);

    const std::vector<std::string> keys{"k", "t", "absent"};
    const auto many = n2.get_many(keys, [&](std::span<const std::string> missed) {
        std::vector<Str> rows;
        for (const auto& k : missed) rows.push_back(db.read(k));
        return rows;
    });
    REQUIRE(many.size() == 3);
    REQUIRE(many[0] == "2+");
    REQUIRE(many[1] == "t1");
    REQUIRE(many[2] == std::nullopt);

    REQUIRE(n2.get("k", load) == "2+");
    REQUIRE(other_sees("2+"));  // in n2's L1
    (void)n1.erase("k");
    REQUIRE(n2.l1().get(p2.full_key("k")) == std::nullopt);
    REQUIRE(n2.get("k", load) == std::nullopt);  // the queued delete, not the database's row
    n2.invalidate("k");                          // the cached tombstone goes; the queue's stays
    REQUIRE(n2.get("k", load) == std::nullopt);
    REQUIRE(n2.modify(
                "k", [](std::string& v) { v += "+"; }, load) == "+");  // built on no row
}

BACKEND_TEST_CASE("get_many through Near serves L1 copies without asking the store for them",
                  "[l1]") {
    TestType fx;
    larder::ChaosBackend counted(fx.backend);
    larder::CacheAside<std::string, decltype(counted)> cache(counted);
    larder::MemoryBus bus;
    larder::Near near(cache, bus);
    REQUIRE(near.get("a", [] { return Str("A"); }) == "A");
    REQUIRE(near.get("b", [] { return Str("B"); }) == "B");
    const auto calls = counted.calls().total();
    const std::vector<std::string> keys{"a", "b"};
    int asked = 0;
    const auto got = near.get_many(keys, [&](std::span<const std::string> missed) {
        asked += static_cast<int>(missed.size());
        return std::vector<Str>(missed.size(), std::nullopt);
    });
    REQUIRE(got == std::vector<Str>{"A", "B"});
    REQUIRE(counted.calls().total() == calls);
    REQUIRE(asked == 0);
}

// ---- a: writes racing local reads -------------------------------------------------------

// Before: Near erased L1 before the policy's write; a local reader in between re-read the
// old value from L2 and kept it in L1 after the write returned.
BACKEND_TEST_CASE("Once a write through Near returns, no local read sees the old value",
                  "[regression][l1][write_through]") {
    TestType fx;
    larder::MemoryBus bus;
    larder::WriteThrough<std::string, decltype(fx.backend)> policy(fx.backend);
    larder::Near near(policy, bus);
    FakeDb db;
    db.write("k", "v1");
    auto load = [&] { return db.read("k"); };
    REQUIRE(near.get("k", load) == "v1");
    for (int round = 0; round < 50; ++round) {
        const std::string next = "v" + std::to_string(round + 2);
        Gate writing, written;
        std::atomic<bool> stop{false};
        std::thread reader([&] {
            writing.wait();
            while (!stop.load()) (void)near.get("k", load);  // races the write
        });
        (void)near.put("k", next, [&] {
            writing.open();
            std::this_thread::sleep_for(1ms);  // the reader reads the old row meanwhile
            db.write("k", next);
        });
        REQUIRE(near.get("k", load) == next);
        stop = true;
        reader.join();
        REQUIRE(near.get("k", load) == next);
    }
}

TEST_CASE("Once an increment through Near returns, a local read sees the new value",
          "[regression][l1][write_behind][memory]") {
    larder::MemoryBackend store;
    larder::MemoryBus bus;
    auto policy = counter(store);
    larder::Near near(policy, bus);
    auto zero = [] { return std::optional<std::int64_t>(0); };
    REQUIRE(near.get("n", zero) == 0);
    for (int i = 1; i <= 20; ++i) {
        REQUIRE(near.increment("n", 1, zero) == i);
        REQUIRE(near.get("n", zero) == i);
    }
}

// ---- c: a subscriber added while the connection changes ---------------------------------

// Before: RedisBus::subscribe read the connection state and called on_restored outside the
// lock the state change took: a drop in between left the new subscriber's L1 enabled
// while disconnected.
TEST_CASE("A subscriber added while the bus drops hears the drop after its restore",
          "[regression][l1][memory]") {
    larder::detail::Subscribers subscribers;
    bool connected = true;
    std::vector<std::string> heard;
    std::atomic<bool> inside{false};
    std::thread dropper;
    const auto id =
        subscribers.add(larder::BusHandlers{
                            .on_lost = [&] { heard.push_back("lost"); },
                            .on_restored = [&] { heard.push_back("restored"); },
                        },
                        [&] {
                            // The drop starts while the subscription is being made.
                            dropper = std::thread([&] {
                                inside = true;
                                subscribers.transition([&] { connected = false; }, State::lost);
                            });
                            while (!inside.load()) std::this_thread::yield();
                            std::this_thread::sleep_for(20ms);
                            return connected;
                        });
    dropper.join();
    REQUIRE(heard == std::vector<std::string>{"restored", "lost"});
    subscribers.remove(id);
}

// Before: the bus marked itself disconnected and only then told its subscribers, so a
// caller that saw connected() == false could still read from an L1 that was serving
// (CI caught it: "A silent subscriber is noticed within ping_interval + ping_timeout").
TEST_CASE("Once a bus says it is disconnected, every subscriber has heard the loss",
          "[regression][l1][memory]") {
    larder::detail::ListenerState state;
    state.set_connected(true);
    std::atomic<bool> lost_heard{false};
    auto subscription = state.subscribe(larder::BusHandlers{.on_lost = [&] {
        std::this_thread::sleep_for(50ms);  // a subscriber that takes its time
        lost_heard = true;
    }});
    std::thread dropper([&] { state.set_connected(false); });
    while (state.connected()) std::this_thread::yield();
    const bool heard_when_disconnected = lost_heard.load();
    dropper.join();
    REQUIRE(heard_when_disconnected);
}

TEST_CASE("A Near made while its bus is down serves nothing until the bus is back",
          "[l1][memory]") {
    larder::MemoryBackend store;
    SwitchableBus bus;
    bus.set_connected(false);
    MemoryCache cache(store);
    larder::Near near(cache, bus);
    int loads = 0;
    auto load = [&] { return Str("v" + std::to_string(++loads)); };
    REQUIRE(near.get("k", load) == "v1");
    REQUIRE_FALSE(near.l1().enabled());
    REQUIRE(near.l1().get(cache.full_key("k")) == std::nullopt);
    bus.set_connected(true);
    REQUIRE(near.l1().enabled());
    REQUIRE(near.get("k", load) == "v1");  // from L2, now kept
    REQUIRE(near.l1().get(cache.full_key("k")) == "v1");
}

// ---- g: a message the bus could not carry -----------------------------------------------

// Before: a failed PUBLISH was lost; the other process's L1 kept the old value for its TTL.
TEST_CASE(
    "A message the bus could not publish goes out on a retry, with the next one, or "
    "when the bus is back",
    "[regression][l1][memory]") {
    larder::MemoryBackend store;
    SwitchableBus bus;
    MemoryCache c1(store), c2(store);
    larder::Near n1(c1, bus), n2(c2, bus, {.ttl = 1h});
    FakeDb db;
    db.write("a", "a1");
    db.write("b", "b1");
    auto load = [&](const char* k) { return [&db, k] { return db.read(k); }; };
    REQUIRE(n2.get("a", load("a")) == "a1");
    REQUIRE(n2.get("b", load("b")) == "b1");

    bus.fail_publishing(true);
    n1.invalidate_after("a", [&] { db.write("a", "a2"); });  // succeeds: the write happened
    REQUIRE(n1.bus_errors() == 1);
    REQUIRE(n1.unsent() == 1);
    REQUIRE(n2.get("a", load("a")) == "a1");  // not told yet

    // The retry thread may be sending when the next write or the reconnect comes; then
    // the thread sends it, so each section waits for the outbox to empty.
    SECTION("on a retry, with no write and no reconnect") {
        // Before: it waited for the next write or reconnect, while other L1s that had
        // resumed (a replayed log cannot hold an unsent message) served the old value.
        bus.fail_publishing(false);
    }
    SECTION("with the next message") {
        bus.fail_publishing(false);
        n1.invalidate_after("b", [&] { db.write("b", "b2"); });
    }
    SECTION("when the subscription comes back") {
        bus.fail_publishing(false);
        bus.set_connected(false);
        bus.set_connected(true);
    }
    REQUIRE(eventually([&] { return n1.unsent() == 0; }));
    REQUIRE(n2.get("a", load("a")) == "a2");
}

TEST_CASE("An outbox that overflows becomes one message that clears every L1", "[l1][memory]") {
    larder::MemoryBackend store;
    SwitchableBus bus;
    MemoryCache c1(store), c2(store);
    larder::Near n1(c1, bus), n2(c2, bus, {.ttl = 1h});
    REQUIRE(n2.get("x", [] { return Str("x"); }) == "x");
    bus.fail_publishing(true);
    for (int i = 0; i < 5000; ++i) n1.invalidate("k" + std::to_string(i));
    REQUIRE(n1.unsent() <= 4096);
    bus.fail_publishing(false);
    n1.invalidate("last");
    REQUIRE(eventually([&] { return n1.unsent() == 0; }));
    REQUIRE(n2.l1().size() == 0);  // cleared: it cannot know which keys it missed
}

// ---- b, h: the tag index ----------------------------------------------------------------

// Before: past a bound the tag index cleared the whole L1 (evicted keys stayed in it), so a
// tagged working set larger than L1 wiped the hot set again and again.
TEST_CASE("Tagged churn through a small L1 keeps the hot set and every tag's invalidation",
          "[regression][l1][tags][memory]") {
    larder::MemoryBackend store;
    larder::MemoryBus bus;
    MemoryCache cache(store);
    larder::Near near(cache, bus, {.max_entries = 64, .shards = 1});
    auto value_of = [](const std::string& k) { return [k] { return Str(k); }; };
    auto hot = [](int h) { return "hot" + std::to_string(h); };
    // 2,000 one-off keys, each with its own tag: the index outgrows its bound
    // (4 x 64 + 1,024 keys).
    for (int round = 0; round < 100; ++round) {
        for (int h = 0; h < 8; ++h) REQUIRE(near.get(hot(h), {"hot"}, value_of(hot(h))) == hot(h));
        for (int c = 0; c < 20; ++c) {
            const std::string k = "cold" + std::to_string(round * 20 + c);
            (void)near.get(k, {"t" + k}, value_of(k));
        }
        int held = 0;
        for (int h = 0; h < 8; ++h) held += near.l1().contains(cache.full_key(hot(h))) ? 1 : 0;
        INFO("round " << round);
        REQUIRE(held == 8);  // SIEVE keeps them; the index must not throw them out
    }
    near.invalidate_tag("hot");
    for (int h = 0; h < 8; ++h) REQUIRE_FALSE(near.l1().contains(cache.full_key(hot(h))));
}

TEST_CASE("A tag bump in one cache leaves another prefix's L1 copies alone",
          "[regression][l1][tags][memory]") {
    larder::MemoryBackend store;
    larder::MemoryBus bus;
    MemoryCache a(store, {.key_prefix = "a:"}), b(store, {.key_prefix = "b:"});
    larder::Near na(a, bus), nb(b, bus);
    REQUIRE(nb.get("k", {"team"}, [] { return Str("b"); }) == "b");
    REQUIRE(na.get("k", {"team"}, [] { return Str("a"); }) == "a");
    na.invalidate_tag("team");
    REQUIRE_FALSE(na.l1().contains(a.full_key("k")));
    REQUIRE(nb.l1().contains(b.full_key("k")));  // another cache's tag of the same name
}

// ---- d, f, h: NearCache ----------------------------------------------------------------

// Before: put with a TTL <= 0 did nothing: the old value stayed, and fills in flight
// were not fenced; Millis::max() overflowed the expiry, so the entry was born expired.
TEST_CASE("NearCache put with no time left removes the old value and fences fills",
          "[regression][l1]") {
    NearCache<int> cache;
    cache.put("k", 1);
    const auto g = cache.generation("k");
    cache.put("k", 2, Millis{0});
    REQUIRE(cache.get("k") == std::nullopt);
    REQUIRE_FALSE(cache.put_if_generation("k", 3, g));
    cache.put("m", 4, Millis::max());
    REQUIRE(cache.get("m") == 4);
    REQUIRE(cache.put_if_generation("n", 5, cache.generation("n"), Millis::max()));
    REQUIRE(cache.get("n") == 5);
}

// Before: SIEVE gave up after 2n+1 steps when readers kept setting visited bits, and the
// shard grew past its bound.
TEST_CASE("NearCache never holds more than its capacity while readers keep every key hot",
          "[regression][l1][concurrency]") {
    NearCache<int> cache({.max_entries = 4, .shards = 1});
    for (int i = 0; i < 4; ++i) cache.put("k" + std::to_string(i), i);
    std::atomic<bool> stop{false};
    std::vector<std::thread> readers;
    for (int t = 0; t < 3; ++t) {
        readers.emplace_back([&] {
            while (!stop.load()) {
                for (int i = 0; i < 400; ++i) (void)cache.get("k" + std::to_string(i));
            }
        });
    }
    std::size_t most = 0;
    for (int i = 4; i < 20'000; ++i) {
        cache.put("k" + std::to_string(i % 400), i);
        most = std::max(most, cache.size());
    }
    stop = true;
    for (auto& r : readers) r.join();
    REQUIRE(most <= cache.capacity());
}

// Before: the bucket hash was fixed, so keys chosen offline to share a target's bucket
// built long chains and failed its fills (a shared generation) in every process.
TEST_CASE("Keys that share a bucket in one NearCache do not in another", "[regression][l1]") {
    NearCache<int> first({.max_entries = 1024, .shards = 1});
    NearCache<int> second({.max_entries = 1024, .shards = 1});
    const std::string target = "user:1";
    // Find keys whose erase moves the target's generation in the first cache.
    std::vector<std::string> colliding;
    for (int i = 0; colliding.size() < 16 && i < 2'000'000; ++i) {
        const std::string k = "x" + std::to_string(i);
        const auto g = first.generation(target);
        (void)first.erase(k);
        if (first.generation(target) != g) colliding.push_back(k);
    }
    REQUIRE(colliding.size() == 16);
    int still = 0;
    for (const auto& k : colliding) {
        const auto g = second.generation(target);
        (void)second.erase(k);
        still += second.generation(target) != g;
    }
    // Independent seeds: each shares the target's bucket with probability 1/1024.
    REQUIRE(still <= 2);
}

TEST_CASE("NearCache::contains sees live entries only, and counts neither hit nor miss", "[l1]") {
    larder::ManualClock clock;
    NearCache<int> cache({.ttl = 1s, .clock = &clock});
    cache.put("k", 1);
    REQUIRE(cache.contains("k"));
    REQUIRE_FALSE(cache.contains("other"));
    clock.advance(2s);
    REQUIRE_FALSE(cache.contains("k"));
    cache.put("k", 2);
    cache.disable();
    REQUIRE_FALSE(cache.contains("k"));
    REQUIRE(cache.stats().hits == 0);
    REQUIRE(cache.stats().misses == 0);
}

// ---- e: fork ----------------------------------------------------------------------------

// Before: a thread inside a read section when another forked left its pinned slot in the
// child, whose epoch then never moved: nothing replaced was ever freed there.
TEST_CASE("A child forked while another thread reads still frees what it replaces",
          "[regression][l1][multiprocess]") {
    NearCache<Counted> cache({.max_entries = 1000});
    cache.put("pinned", Counted(0));
    Gate inside, leave;
    std::thread reader([&] {
        (void)cache.visit("pinned", [&](const Counted&) {
            inside.open();
            leave.wait();  // holds its read section open across the fork
        });
    });
    inside.wait();
    const pid_t child = fork();
    if (child == 0) {
        for (int i = 0; i < 200'000; ++i) cache.put("k" + std::to_string(i % 5000), Counted(i));
        // 1,000 held, plus what waits a few epochs to be freed; without reclamation, 200,000.
        _exit(Counted::live.load() < 20'000 ? 0 : 1);
    }
    leave.open();
    reader.join();
    REQUIRE(child > 0);
    int status = 0;
    REQUIRE(waitpid(child, &status, 0) == child);
    REQUIRE(WIFEXITED(status));
    REQUIRE(WEXITSTATUS(status) == 0);
}

// Before: a "*" message (a flush) cleared L1 before the tag index: a read that took its
// generation after the clear and indexed its key before the index was emptied kept its L1
// copy unindexed, and a later bump of its tag left it there.
TEST_CASE("A flush message racing tagged fills leaves no copy a tag bump would miss",
          "[regression][l1][tags][memory]") {
    larder::MemoryBackend store;
    larder::MemoryBus bus;
    MemoryCache cache(store);
    larder::Near near(cache, bus, {.max_entries = 20'000});
    std::atomic<bool> stop{false};
    std::thread flusher([&] {
        while (!stop.load()) {
            bus.publish("*");
            std::this_thread::yield();
        }
    });
    const int keys = 5000;
    for (int i = 0; i < keys; ++i) {
        const std::string k = "k" + std::to_string(i);
        (void)near.get(k, {"A"}, [k] { return Str(k); });
    }
    stop = true;
    flusher.join();
    near.invalidate_tag("A");
    int left = 0;
    for (int i = 0; i < keys; ++i)
        left += near.l1().contains(cache.full_key("k" + std::to_string(i)));
    REQUIRE(left == 0);
}

// Before: a value served while its refresh failed slowly was kept in L1 for the freshness
// it had before the refresh, counted from the L1 put: 30 s later, past L2's own expiry.
TEST_CASE("An L1 copy's freshness is counted from the read, not from the L1 put",
          "[regression][l1][xfetch][memory]") {
    larder::ManualClock clock;
    larder::MemoryBackend store({.clock = &clock});
    larder::CacheAside<std::string, larder::MemoryBackend, larder::XFetch> cache(
        store, {.ttl = 10s, .clock = &clock},
        larder::XFetch({.beta = 1.0, .random = [] { return 1e-300; }}));  // always early
    larder::MemoryBus bus;
    larder::Near near(cache, bus, {.ttl = 60s, .clock = &clock});
    const auto full = cache.full_key("k");
    REQUIRE(near.get("k", [&] {
        clock.advance(1s);
        return Str("v1");
    }) == "v1");
    near.l1().erase(full);  // evicted from L1; L2 still fresh
    clock.advance(8s);      // 2 s of freshness left: XFetch elects an early refresh
    const auto got = near.get("k", [&]() -> Str {
        clock.advance(30s);  // the database is slow, then fails
        throw std::runtime_error("database down");
    });
    REQUIRE(got == "v1");                     // the value at hand is served
    REQUIRE_FALSE(near.l1().contains(full));  // but its freshness ran out during the read
}

BACKEND_TEST_CASE("CacheAside::set through Near drops every L1 copy", "[l1]") {
    TestType fx;
    larder::MemoryBus bus;
    larder::CacheAside<std::string, decltype(fx.backend)> c1(fx.backend), c2(fx.backend);
    larder::Near n1(c1, bus), n2(c2, bus);
    REQUIRE(n2.get("k", [] { return Str("v1"); }) == "v1");
    n1.set("k", "v2");
    REQUIRE_FALSE(n2.l1().contains(c2.full_key("k")));
    REQUIRE(n2.get("k", [] { return Str("loader"); }) == "v2");
}
