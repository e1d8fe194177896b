// Redis Sentinel: RedisBackend finds the primary through the sentinels and follows it
// through failovers, against real sentinels (support/redis_sentinel.hpp).

#if defined(LARDER_TEST_HAVE_REDIS) && defined(LARDER_TEST_HAVE_REDIS_SERVER)

#include <larder/backend/redis.hpp>
#include <larder/policy/cache_aside.hpp>

#include <atomic>
#include <chrono>
#include <mutex>
#include <optional>
#include <random>
#include <string>
#include <string_view>
#include <thread>
#include <vector>

#include "support/catch.hpp"
#include "support/eventually.hpp"
#include "support/fake_sentinel.hpp"
#include "support/redis_sentinel.hpp"

using namespace std::chrono_literals;
using larder::RedisBackend;
using larder::RedisOptions;
using larder::test::eventually;
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
    REQUIRE(eventually([&] { return group.named_primary_port() == group.replica().port(); }, 30s));

    // The watching backend heard the announcement, without a failed call.
    REQUIRE(eventually([&] { return watching.stats().primary_switches >= 1; }, 30s));
    REQUIRE(watching.sentinel_primary());
    CHECK(watching.sentinel_primary()->port == group.replica().port());
    // The demoted primary closes its clients as it turns into a replica: a query may find
    // its connection reset, and is asked again.
    REQUIRE(eventually(
        [&] {
            try {
                return group.primary().query({"INFO", "replication"}).text.find("role:slave") !=
                       std::string::npos;
            } catch (const std::exception&) {
                return false;
            }
        },
        30s));
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

// ---- what real sentinels do not produce on demand (support/fake_sentinel.hpp) ---------

namespace {

using larder::test::FakeSentinel;
using larder::test::RedisServer;
using larder::test::RedisServerOptions;

bool role_is(const RedisServer& s, std::string_view role) {
    const auto r = s.query({"ROLE"});
    return !r.elements.empty() && r.elements[0].text == role;
}

RedisOptions through_fake(const FakeSentinel& fake) {
    RedisOptions o;
    o.sentinel.sentinels = {{"127.0.0.1", fake.port()}};
    o.sentinel.master_name = "m";
    o.command_timeout = 1s;
    return o;
}

}  // namespace

// Before: the connection that met READONLY went back to the pool, and the retry borrowed
// it again: the caller saw the error whenever the demoted primary kept its clients.
TEST_CASE(
    "A write refused with READONLY by a demoted primary that keeps its clients goes to "
    "the new primary",
    "[redis][sentinel][regression]") {
    RedisServer a;
    RedisServer b(
        RedisServerOptions{.extra_args = {"--replicaof", a.host(), std::to_string(a.port())}});
    std::atomic<int> named{a.port()};
    FakeSentinel fake([&](const std::vector<std::string>& argv) -> std::string {
        if (argv.size() == 3 && argv[0] == "SENTINEL") {
            return FakeSentinel::address("127.0.0.1", std::to_string(named.load()));
        }
        if (!argv.empty() && argv[0] == "SUBSCRIBE") return FakeSentinel::subscribed();
        return "-ERR unknown command\r\n";
    });
    RedisOptions o = through_fake(fake);
    o.sentinel.follow_switch_master = GENERATE(false, true);
    o.pool_size = 1;
    RedisBackend backend(o);
    backend.set("k", "1", 60s);
    REQUIRE(backend.sentinel_primary()->port == a.port());

    // A switchover by hand, without CLIENT KILL: the pooled connection to `a` stays open.
    REQUIRE_FALSE(b.query({"REPLICAOF", "NO", "ONE"}).is_error());
    REQUIRE_FALSE(a.query({"REPLICAOF", b.host(), std::to_string(b.port())}).is_error());
    REQUIRE(eventually([&] { return role_is(a, "slave") && role_is(b, "master"); }, 30s));
    named = b.port();

    CHECK_NOTHROW(backend.set("k", "2", 60s));
    CHECK(b.query({"GET", "k"}).text == "2");
    REQUIRE(backend.sentinel_primary());
    CHECK(backend.sentinel_primary()->port == b.port());
}

TEST_CASE("Hostile sentinel answers are errors, and garbage on +switch-master moves nothing",
          "[redis][sentinel][security]") {
    RedisServer real;
    const std::string port = std::to_string(real.port());
    std::mutex answer_mutex;
    std::string answer = FakeSentinel::address("127.0.0.1", port);
    FakeSentinel fake([&](const std::vector<std::string>& argv) -> std::string {
        if (!argv.empty() && argv[0] == "SUBSCRIBE") return FakeSentinel::subscribed();
        std::lock_guard lock(answer_mutex);
        return answer;
    });
    const std::vector<std::string> hostile{
        "*2\r\n$9\r\n127.0.0.1\r\n:" + port + "\r\n",  // the port as an integer
        "*1\r\n" + FakeSentinel::bulk("127.0.0.1"),
        "*0\r\n",
        "*-1\r\n",
        "-ERR no\r\n",
        "+OK\r\n",
        FakeSentinel::address("127.0.0.1", "0"),
        FakeSentinel::address("127.0.0.1", "65536"),
        FakeSentinel::address("127.0.0.1", port + " "),
        FakeSentinel::address("127.0.0.1", "99999999999999999999"),
        FakeSentinel::address("", port),
        FakeSentinel::address(std::string("127.0.0.1\0.elsewhere", 20), port),
    };
    for (const auto& h : hostile) {
        {
            std::lock_guard lock(answer_mutex);
            answer = h;
        }
        RedisOptions o = through_fake(fake);
        o.sentinel.follow_switch_master = false;
        RedisBackend backend(o);
        INFO(h);
        CHECK_THROWS_AS(backend.set("k", "v", 10s), larder::BackendError);
        CHECK_FALSE(backend.sentinel_primary());
    }

    {
        std::lock_guard lock(answer_mutex);
        answer = FakeSentinel::address("127.0.0.1", port);
    }
    RedisBackend backend(through_fake(fake));
    backend.set("k", "v", 10s);
    REQUIRE(eventually([&] { return fake.subscribers() == 1; }, 30s));
    const std::string other = std::to_string(real.port() == 1 ? 2 : real.port() - 1);
    for (const std::string& text :
         {"m 127.0.0.1 " + port + " 127.0.0.1 " + other + " trailing words",
          "m 127.0.0.1 " + port + " 127.0.0.1 " + other + " ", "m 127.0.0.1 " + port + "  " + other,
          "m 127.0.0.1 " + port + " 127.0.0.1 nope", "m 127.0.0.1 " + port + " 127.0.0.1",
          "other 127.0.0.1 " + port + " 127.0.0.1 " + other,
          "m 127.0.0.1 " + port + " " + std::string("1\0.2", 4) + " " + other}) {
        fake.push(FakeSentinel::announcement(text));
    }
    // A well-formed announcement after the garbage is the one that counts.
    fake.push(FakeSentinel::announcement("m 127.0.0.1 1 127.0.0.1 " + port));
    REQUIRE(eventually([&] { return backend.stats().primary_switches == 1; }, 30s));
    CHECK(backend.sentinel_primary()->port == real.port());
    CHECK(backend.get("k")->bytes == "v");
}

// Before: the subscription's SUBSCRIBE waited for its answer with the connection's own
// timeout, and the backend's destructor waited for that thread.
TEST_CASE("Destroying a backend does not wait for a sentinel that never answers",
          "[redis][sentinel][regression]") {
    RedisServer real;
    FakeSentinel silent([&](const std::vector<std::string>& argv) -> std::string {
        if (argv.size() == 3 && argv[0] == "SENTINEL") {
            return FakeSentinel::address("127.0.0.1", std::to_string(real.port()));
        }
        return "";  // SUBSCRIBE: no answer, ever
    });
    RedisOptions o = through_fake(silent);
    o.command_timeout = 60s;
    const auto started = Clock::now();
    {
        RedisBackend backend(o);
        backend.set("k", "v", 10s);
        REQUIRE(eventually([&] { return silent.subscribers() == 1; }, 30s));
    }
    // Far below the 60 s the subscription's connection would wait for an answer.
    CHECK(Clock::now() - started < 30s);
}

#endif
