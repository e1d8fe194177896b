// Redis Cluster: what larder does when the cache lives on a cluster, against a real one
// (support/redis_cluster.hpp: redis-servers in cluster mode on loopback).

// Under CMake only when larder::redis was found; compiled by hand, whenever hiredis is there.
#if __has_include(<hiredis/hiredis.h>) &&                                     \
    (defined(LARDER_TEST_HAVE_REDIS) || !defined(LARDER_TEST_SOURCE_DIR)) && \
    (defined(LARDER_TEST_HAVE_REDIS_SERVER) || defined(LARDER_TEST_REDIS_SERVER))

#include <larder/backend/redis.hpp>
#include <larder/backend/redis/cluster_slots.hpp>
#include <larder/core/error.hpp>
#include <larder/core/keys.hpp>
#include <larder/policy/cache_aside.hpp>

#include <atomic>
#include <cstdint>
#include <optional>
#include <random>
#include <string>
#include <string_view>
#include <vector>

#include "support/catch.hpp"
#include "support/redis_cluster.hpp"
#include "support/redis_fixture.hpp"

using namespace std::chrono_literals;
using larder::ClusterRedirectError;
using larder::test::make_test_backend;
using larder::test::RedisCluster;

namespace {

bool contains(std::string_view text, std::string_view part) {
    return text.find(part) != std::string_view::npos;
}

/// One cluster for the whole test process: starting one takes a few seconds.
RedisCluster& shared_cluster() {
    static RedisCluster cluster(3);
    return cluster;
}

larder::RedisReply integer(std::int64_t n) {
    larder::RedisReply r;
    r.type = larder::RedisReply::Type::integer;
    r.integer = n;
    return r;
}
larder::RedisReply string(std::string s) {
    larder::RedisReply r;
    r.type = larder::RedisReply::Type::string;
    r.str = std::move(s);
    return r;
}
larder::RedisReply array(std::vector<larder::RedisReply> elements) {
    larder::RedisReply r;
    r.type = larder::RedisReply::Type::array;
    r.elements = std::move(elements);
    return r;
}
larder::RedisReply node(std::string host, std::int64_t port) {
    return array({string(std::move(host)), integer(port), string("id")});
}

}  // namespace

TEST_CASE("A RedisBackend pointed at a cluster node fails loudly, and a cache does not load",
          "[redis][cluster]") {
    RedisCluster& cluster = shared_cluster();
    larder::RedisBackend backend = make_test_backend(cluster.node(0));
    const std::string here = cluster.key_on(0, "k");
    const std::string elsewhere = cluster.key_on(1, "k");

    // Keys the node serves work as on one server.
    backend.set(here, "v", 10s);
    REQUIRE(backend.get(here).has_value());

    // MOVED: another node serves the key. The error names the mistake.
    try {
        (void)backend.get(elsewhere);
        FAIL("a read of another node's key returned");
    } catch (const ClusterRedirectError& e) {
        CHECK(contains(e.what(), "MOVED"));
        CHECK(contains(e.what(), "Redis Cluster"));
    }
    CHECK_THROWS_AS(backend.set(elsewhere, "v", 10s), ClusterRedirectError);
    // CROSSSLOT: one command for keys of several slots.
    const std::vector<std::string> both{here, elsewhere};
    CHECK_THROWS_AS(backend.get_many(both), ClusterRedirectError);
    // Scripts too.
    CHECK_THROWS_AS(backend.compare_and_set(elsewhere, "a", "b", 10s), ClusterRedirectError);
    CHECK_THROWS_AS(backend.compare_and_delete(elsewhere, "a"), ClusterRedirectError);
    // Only a redirect's own shape is one: an error text of a user's script is not.
    using larder::redis_detail::means_cluster;
    CHECK(means_cluster("MOVED 3999 127.0.0.1:6381"));
    CHECK(means_cluster("ASK 3999 [::1]:6381"));
    CHECK(means_cluster("CROSSSLOT Keys in request don't hash to the same slot"));
    CHECK_FALSE(means_cluster("MOVED house"));
    CHECK_FALSE(means_cluster("MOVEDX 1 h:1"));
    CHECK_FALSE(means_cluster("ASKING 1 h:1"));
    CHECK_FALSE(means_cluster("ERR MOVED 1 h:1"));
    CHECK_FALSE(means_cluster("MOVED 1"));

    // The cache fails the read instead of loading the row every time (a naive cache
    // treats the error as an outage and serves every read from the database).
    larder::CacheAside<std::string, larder::RedisBackend> cache(backend);
    std::atomic<int> loads{0};
    auto loader = [&] {
        ++loads;
        return std::optional<std::string>("row");
    };
    for (int i = 0; i < 5; ++i) CHECK_THROWS_AS(cache.get(elsewhere, loader), ClusterRedirectError);
    CHECK(loads.load() == 0);
    CHECK(cache.get(here, loader) == "row");  // the node's own keys are cached as usual
    CHECK(cache.get(here, loader) == "row");
    CHECK(loads.load() == 1);

    // The server answered every time: the breaker stays closed.
    CHECK(backend.breaker_state() == larder::BreakerState::closed);
}

TEST_CASE("keys::slot is CLUSTER KEYSLOT, hash tags included", "[redis][cluster]") {
    // The reference value from the Redis Cluster specification: CRC16 of "123456789".
    STATIC_REQUIRE(larder::keys::crc16("123456789") == 0x31C3);
    STATIC_REQUIRE(larder::keys::slot("{user1000}.following") ==
                   larder::keys::slot("{user1000}.followers"));
    CHECK(larder::keys::hash_tag("foo{}{bar}") == "foo{}{bar}");  // an empty tag: the whole key
    CHECK(larder::keys::hash_tag("foo{{bar}}zap") == "{bar");
    CHECK(larder::keys::hash_tag("foo{bar}{zap}") == "bar");
    CHECK(larder::keys::hash_tag("no{tag") == "no{tag");

    RedisCluster& cluster = shared_cluster();
    std::vector<std::string> keys{"", "{", "}", "{}", "a{b}c", "{a}{b}", "{{a}}", "x}y{z}"};
    std::mt19937 rng(7);
    const std::string alphabet("ab{}\0\xff", 6);  // braces, a NUL and a byte above 127
    for (int i = 0; i < 300; ++i) {
        std::string key;
        const int n = std::uniform_int_distribution<int>(0, 12)(rng);
        for (int j = 0; j < n; ++j) {
            key +=
                alphabet[std::uniform_int_distribution<std::size_t>(0, alphabet.size() - 1)(rng)];
        }
        keys.push_back(key);
    }
    for (const auto& key : keys) {
        INFO("key " << key);
        CHECK(larder::keys::slot(key) == cluster.slot_of(key));
    }
}

TEST_CASE("A SlotMap read from CLUSTER SLOTS routes every slot to the node that serves it",
          "[redis][cluster]") {
    RedisCluster& cluster = shared_cluster();
    larder::RedisBackend backend = make_test_backend(cluster.node(0));
    const auto map = larder::SlotMap::from_cluster_slots(backend.command({"CLUSTER", "SLOTS"}),
                                                         cluster.node(0).host());
    REQUIRE(map.covers_every_slot());
    REQUIRE(map.ranges().size() == cluster.size());
    for (std::size_t i = 0; i < cluster.size(); ++i) {
        const std::string key = cluster.key_on(i, "route");
        const larder::ClusterNode* primary = map.primary_of(larder::keys::slot(key));
        REQUIRE(primary != nullptr);
        CHECK(primary->port == cluster.node(i).port());
        CHECK(primary->host == cluster.node(i).host());
        CHECK_FALSE(primary->id.empty());
    }
}

TEST_CASE("A SlotMap refuses a reply that is not CLUSTER SLOTS's, and routes around holes",
          "[redis][cluster]") {
    using larder::SlotMap;
    auto parse = [](const larder::RedisReply& r) { return SlotMap::from_cluster_slots(r, "h"); };
    const auto ok =
        parse(array({array({integer(0), integer(99), node("a", 7000)}),
                     array({integer(200), integer(16383), node("", 7001), node("r", 7002)})}));
    CHECK(ok.primary_of(0)->host == "a");
    CHECK(ok.primary_of(99)->port == 7000);
    CHECK(ok.primary_of(100) == nullptr);      // a slot no node serves
    CHECK(ok.primary_of(16383)->host == "h");  // no address: the node that answered
    CHECK(ok.range_of(300)->replicas.size() == 1);
    CHECK_FALSE(ok.covers_every_slot());

    const std::vector<larder::RedisReply> hostile{
        string("ERR"),
        array({string("x")}),
        array({array({integer(0), integer(5)})}),
        array({array({integer(-1), integer(5), node("a", 1)})}),
        array({array({integer(0), integer(16384), node("a", 1)})}),
        array({array({integer(9), integer(5), node("a", 1)})}),
        array({array({integer(0), integer(5), node("a", 0)})}),
        array({array({integer(0), integer(5), node("a", 65536)})}),
        array({array({integer(0), integer(5), array({string("a")})})}),
        array({array({integer(0), integer(5), array({integer(1), integer(2)})})}),
        array({array({integer(0), integer(10), node("a", 1)}),
               array({integer(10), integer(20), node("b", 2)})}),  // overlap
    };
    for (std::size_t i = 0; i < hostile.size(); ++i) {
        INFO("reply " << i);
        CHECK_THROWS_AS(parse(hostile[i]), larder::BackendError);
    }
}

#endif
