// Redis Sentinel: RedisBackend finds the primary through the sentinels and follows it
// through failovers, against real sentinels (support/redis_sentinel.hpp).

#if defined(LARDER_TEST_HAVE_REDIS) && defined(LARDER_TEST_HAVE_REDIS_SERVER)

#include <larder/backend/redis.hpp>
#include <larder/policy/cache_aside.hpp>

#include <atomic>
#include <chrono>
#include <optional>
#include <random>
#include <string>
#include <string_view>
#include <thread>
#include <vector>

#include "support/catch.hpp"
#include "support/redis_sentinel.hpp"

using namespace std::chrono_literals;
using larder::RedisBackend;
using larder::RedisOptions;
using larder::test::RedisSentinelGroup;

namespace {

using Clock = std::chrono::steady_clock;

bool contains(std::string_view text, std::string_view part) {
    return text.find(part) != std::string_view::npos;
}

RedisOptions through(const RedisSentinelGroup& group) {
    RedisOptions o;
    o.sentinel = group.options();
    o.connect_timeout = 1s;
    o.command_timeout = 1s;
    return o;
}

template <class Predicate>
bool eventually(Predicate done, std::chrono::seconds bound = 30s) {
    for (const auto deadline = Clock::now() + bound; Clock::now() < deadline;) {
        if (done()) return true;
        std::this_thread::sleep_for(20ms);
    }
    return done();
}

}  // namespace

TEST_CASE("RedisBackend finds the primary through a sentinel that answers", "[redis][sentinel]") {
    RedisSentinelGroup group;
    RedisOptions o = through(group);
    // The first sentinel named is down: the next one answers.
    o.sentinel.sentinels.insert(o.sentinel.sentinels.begin(),
                                {"127.0.0.1", larder::test::detail::pick_free_loopback_port()});
    RedisBackend backend(o);
    backend.set("k", "v", 10s);
    CHECK(backend.get("k")->bytes == "v");
    REQUIRE(backend.sentinel_primary());
    CHECK(backend.sentinel_primary()->port == group.primary().port());
    // Written on the primary (and replicated), not on the replica.
    CHECK(group.primary().query({"GET", "k"}).text == "v");
}

TEST_CASE("Sentinel options are checked, and a name no sentinel monitors is a clear error",
          "[redis][sentinel]") {
    auto refused = [](RedisOptions o) {
        try {
            RedisBackend b(std::move(o));
        } catch (const larder::ConfigError& e) {
            return std::string(e.what());
        }
        return std::string("accepted");
    };
    RedisOptions o;
    o.sentinel.sentinels = {{"127.0.0.1", 26379}};
    CHECK(contains(refused(o), "master_name"));
    o.sentinel.master_name = "m";
    o.sentinel.sentinels = {{"", 26379}};
    CHECK(contains(refused(o), "host"));
    o.sentinel.sentinels = {{"127.0.0.1", 0}};
    CHECK(contains(refused(o), "port"));

    RedisSentinelGroup group;
    RedisOptions unknown = through(group);
    unknown.sentinel.master_name = "nobody";
    unknown.require_connection = true;
    try {
        RedisBackend b(unknown);
        FAIL("a backend for a primary no sentinel monitors was built");
    } catch (const larder::ConnectionError& e) {
        CHECK(contains(e.what(), "does not monitor 'nobody'"));
    }
}

TEST_CASE(
    "A switchover is followed: +switch-master moves the pool, and a write refused by "
    "the demoted primary goes to the new one",
    "[redis][sentinel]") {
    RedisSentinelGroup group;
    RedisOptions followed = through(group);
    RedisOptions unfollowed = through(group);
    unfollowed.sentinel.follow_switch_master = false;
    RedisBackend watching(followed);
    RedisBackend blind(unfollowed);
    watching.set("a", "1", 60s);
    blind.set("b", "1", 60s);
    REQUIRE(blind.sentinel_primary()->port == group.primary().port());

    // A graceful failover: the replica becomes the primary, the old primary its replica.
    const auto r = group.sentinel(0).query(
        {"SENTINEL", "FAILOVER", std::string(RedisSentinelGroup::master_name)});
    REQUIRE_FALSE(r.is_error());
    REQUIRE(eventually([&] { return group.named_primary_port() == group.replica().port(); }));

    // The watching backend heard the announcement, without a failed call.
    REQUIRE(eventually([&] { return watching.stats().primary_switches >= 1; }));
    REQUIRE(watching.sentinel_primary());
    CHECK(watching.sentinel_primary()->port == group.replica().port());
    REQUIRE(eventually([&] {
        return group.primary().query({"INFO", "replication"}).text.find("role:slave") !=
               std::string::npos;
    }));
    watching.set("a", "2", 60s);
    CHECK(group.replica().query({"GET", "a"}).text == "2");

    // The blind one still holds a connection to the demoted primary: its write is refused
    // with READONLY, which sends it to the new primary, and the caller sees no error.
    CHECK_NOTHROW(blind.set("b", "2", 60s));
    CHECK(group.replica().query({"GET", "b"}).text == "2");
    REQUIRE(blind.sentinel_primary());
    CHECK(blind.sentinel_primary()->port == group.replica().port());
    CHECK(blind.stats().primary_switches == 0);
}

TEST_CASE(
    "A primary dies under load: reads load from the database without errors until the "
    "sentinels promote its replica",
    "[redis][sentinel]") {
    RedisSentinelGroup group;
    RedisOptions o = through(group);
    o.breaker.cool_down = 200ms;
    RedisBackend backend(o);
    std::vector<std::string> keys;
    for (int i = 0; i < 30; ++i) keys.push_back("k" + std::to_string(i));
    auto row = [](const std::string& k) { return std::optional<std::string>("row of " + k); };
    larder::CacheAside<std::string, RedisBackend> cache(backend, {.ttl = 120s});
    for (const auto& k : keys) REQUIRE(cache.get(k, [&] { return row(k); }) == row(k));
    REQUIRE(group.primary().query({"WAIT", "1", "5000"}).integer == 1);

    larder::CacheAside<std::string, RedisBackend> probe(backend, {.ttl = 120s});
    std::atomic<bool> stop{false};
    std::atomic<int> errors{0};
    std::atomic<int> wrong{0};
    std::vector<std::thread> readers;
    for (int t = 0; t < 3; ++t) {
        readers.emplace_back([&, t] {
            std::mt19937 rng(static_cast<unsigned>(t));
            std::uniform_int_distribution<std::size_t> pick(0, keys.size() - 1);
            for (int i = 0; i < 200'000 && !stop.load(); ++i) {
                const std::string& k = keys[pick(rng)];
                try {
                    if (cache.get(k, [&] { return row(k); }) != row(k)) ++wrong;
                } catch (const std::exception&) {
                    ++errors;
                }
                std::this_thread::sleep_for(200us);
            }
        });
    }
    std::this_thread::sleep_for(200ms);
    const auto killed = Clock::now();
    group.primary().kill();
    std::optional<Clock::time_point> first_degraded;
    std::optional<Clock::time_point> hits_again;
    for (const auto give_up = killed + 60s; !hits_again && Clock::now() < give_up;) {
        const auto before = probe.stats();
        try {
            if (probe.get(keys[0], [&] { return row(keys[0]); }) != row(keys[0])) ++wrong;
        } catch (const std::exception&) {
            ++errors;
        }
        if (probe.stats().hits > before.hits) {
            if (first_degraded) hits_again = Clock::now();
        } else if (!first_degraded) {
            first_degraded = Clock::now();
        }
        std::this_thread::sleep_for(5ms);
    }
    stop = true;
    for (auto& t : readers) t.join();

    REQUIRE(first_degraded);
    REQUIRE(hits_again);
    const auto ms = [](auto d) {
        return std::chrono::duration_cast<std::chrono::milliseconds>(d).count();
    };
    WARN("primary killed: degraded reads (from the database) for "
         << ms(*hits_again - *first_degraded) << " ms, hits again " << ms(*hits_again - killed)
         << " ms after the kill (down-after-milliseconds 1000); "
         << backend.stats().primary_switches << " +switch-master followed");
    CHECK(errors.load() == 0);
    CHECK(wrong.load() == 0);
    CHECK(backend.sentinel_primary()->port == group.replica().port());
    // The promoted replica holds every copy: hits, no load.
    const auto before = cache.stats();
    for (const auto& k : keys) CHECK(cache.get(k, [&] { return row(k); }) == row(k));
    CHECK(cache.stats().hits - before.hits == keys.size());
}

#endif
