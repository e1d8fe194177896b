// Redis Cluster: what larder does when the cache lives on a cluster, against a real one
// (support/redis_cluster.hpp: redis-servers in cluster mode on loopback).

// Under CMake only when larder::redis was found; compiled by hand, whenever hiredis is there.
#if __has_include(<hiredis/hiredis.h>) &&                                     \
    (defined(LARDER_TEST_HAVE_REDIS) || !defined(LARDER_TEST_SOURCE_DIR)) && \
    (defined(LARDER_TEST_HAVE_REDIS_SERVER) || defined(LARDER_TEST_REDIS_SERVER))

#include <larder/backend/redis.hpp>
#include <larder/backend/redis/cluster_slots.hpp>
#include <larder/backend/redis/write_behind_store.hpp>
#include <larder/backend/redis_cluster.hpp>
#include <larder/core/error.hpp>
#include <larder/core/keys.hpp>
#include <larder/near/near.hpp>
#include <larder/near/redis_bus.hpp>
#include <larder/policy/cache_aside.hpp>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdint>
#include <mutex>
#include <optional>
#include <random>
#include <string>
#include <string_view>
#include <thread>
#include <vector>

#include "support/catch.hpp"
#include "support/eventually.hpp"
#include "support/redis_cluster.hpp"
#include "support/redis_cluster_fixture.hpp"
#include "support/redis_fixture.hpp"

using namespace std::chrono_literals;
using larder::ClusterRedirectError;
using larder::test::eventually;
using larder::test::make_test_backend;
using larder::test::RedisCluster;

namespace {

bool contains(std::string_view text, std::string_view part) {
    return text.find(part) != std::string_view::npos;
}

RedisCluster& shared_cluster() {
    return larder::test::shared_redis_cluster();
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

// ---- RedisClusterBackend ------------------------------------------------------------

namespace {

using larder::RedisClusterBackend;
using larder::RedisClusterOptions;
using larder::test::make_cluster_backend;

RedisClusterOptions patient() {
    RedisClusterOptions o;
    o.node.connect_timeout = 2s;
    o.node.command_timeout = 2s;
    o.node.pool_wait_timeout = 2s;
    return o;
}

std::string address_of(const larder::test::RedisServer& s) {
    return s.host() + ":" + std::to_string(s.port());
}

std::uint64_t round_trips(const RedisClusterBackend& b, const std::string& address) {
    for (const auto& [name, stats] : b.node_stats()) {
        if (name == address) return stats.round_trips;
    }
    return 0;
}

}  // namespace

TEST_CASE("RedisClusterBackend stores each key on the primary that serves its slot",
          "[redis][cluster]") {
    RedisCluster& cluster = shared_cluster();
    cluster.flush_all();
    RedisClusterBackend backend = make_cluster_backend(cluster, patient());
    for (std::size_t i = 0; i < cluster.size(); ++i) {
        const std::string key = cluster.key_on(i, "owned");
        backend.set(key, "on " + std::to_string(i), 10s);
        INFO("node " << i);
        CHECK(backend.node_of(key) == address_of(cluster.node(i)));
        // Written where the cluster says the slot lives, and nowhere else.
        CHECK(cluster.node(i).query({"GET", key}).text == "on " + std::to_string(i));
        const auto read = backend.get(key);
        REQUIRE(read);
        CHECK(read->bytes == "on " + std::to_string(i));
        CHECK(read->ttl.has_value());
    }
    // Nothing was redirected: the slot table was right from the start.
    CHECK(backend.stats().moved == 0);
    CHECK(backend.stats().asked == 0);
    CHECK(backend.stats().refreshes >= 1);
}

TEST_CASE("RedisClusterBackend's get_many costs one round trip per node, in key order",
          "[redis][cluster]") {
    RedisCluster& cluster = shared_cluster();
    cluster.flush_all();
    RedisClusterBackend backend = make_cluster_backend(cluster, patient());
    std::vector<std::string> keys;
    for (int i = 0; i < 60; ++i) keys.push_back("many:" + std::to_string(i));
    for (std::size_t i = 0; i < keys.size(); i += 2) backend.set(keys[i], keys[i] + "=v", 10s);

    std::vector<std::uint64_t> before;
    for (std::size_t n = 0; n < cluster.size(); ++n) {
        before.push_back(round_trips(backend, address_of(cluster.node(n))));
    }
    const auto got = backend.get_many(keys);
    const auto values = backend.get_many_values(keys);
    REQUIRE(got.size() == keys.size());
    REQUIRE(values.size() == keys.size());
    for (std::size_t i = 0; i < keys.size(); ++i) {
        INFO(keys[i]);
        CHECK(got[i].has_value() == (i % 2 == 0));
        CHECK(values[i].has_value() == (i % 2 == 0));
        if (i % 2 == 0) {
            CHECK(got[i]->bytes == keys[i] + "=v");
            CHECK(got[i]->ttl.has_value());
            CHECK(values[i]->bytes == keys[i] + "=v");
        }
    }
    // 60 keys over three nodes: each node answered each call in one round trip.
    for (std::size_t n = 0; n < cluster.size(); ++n) {
        INFO("node " << n);
        CHECK(round_trips(backend, address_of(cluster.node(n))) - before[n] == 2);
    }
}

TEST_CASE(
    "Concurrent get_many calls with their keys in opposite orders do not starve each "
    "other's pools",
    "[redis][cluster]") {
    RedisCluster& cluster = shared_cluster();
    RedisClusterOptions o = patient();
    o.node.pool_size = 1;  // the tightest: one connection per node
    o.node.pool_wait_timeout = 100ms;
    RedisClusterBackend backend = make_cluster_backend(cluster, o);
    const std::vector<std::string> forward{cluster.key_on(0, "order"), cluster.key_on(1, "order")};
    const std::vector<std::string> backward{forward[1], forward[0]};
    std::atomic<int> failures{0};
    std::atomic<int> calls{0};
    std::vector<std::thread> threads;
    for (int t = 0; t < 4; ++t) {
        threads.emplace_back([&, t] {
            const auto& keys = t % 2 == 0 ? forward : backward;
            for (int i = 0; i < 300; ++i) {
                try {
                    (void)backend.get_many(keys);
                    ++calls;
                } catch (const larder::BackendError&) {
                    ++failures;
                }
            }
        });
    }
    for (auto& t : threads) t.join();
    CHECK(failures.load() == 0);
    CHECK(calls.load() == 1200);
}

TEST_CASE("RedisClusterBackend follows MOVED once and then goes straight to the new owner",
          "[redis][cluster]") {
    RedisCluster cluster(3);
    // Redis 7 may leave a node's address out of MOVED (":port") and CLUSTER SLOTS (nil):
    // it means the node that answered.
    const bool without_addresses = GENERATE(false, true);
    if (without_addresses) {
        for (std::size_t i = 0; i < cluster.size(); ++i) {
            REQUIRE_FALSE(
                cluster.node(i)
                    .query({"CONFIG", "SET", "cluster-preferred-endpoint-type", "unknown-endpoint"})
                    .is_error());
        }
    }
    RedisClusterBackend backend = make_cluster_backend(cluster, patient());
    const std::string key = cluster.key_on(0, "moving");
    backend.set(key, "before", 10s);
    // The slot moves behind the backend's back.
    cluster.move_slot(cluster.slot_of(key), 0, 1);
    const auto read = backend.get(key);
    REQUIRE(read);
    CHECK(read->bytes == "before");
    CHECK(backend.stats().moved == 1);
    CHECK(backend.node_of(key) == address_of(cluster.node(1)));
    backend.set(key, "after", 10s);
    CHECK(backend.get(key)->bytes == "after");
    CHECK(backend.stats().moved == 1);  // the table was updated: no second redirect
    CHECK(cluster.node(1).query({"GET", key}).text == "after");
}

TEST_CASE("RedisClusterBackend follows ASK into a slot being imported, and retries TRYAGAIN",
          "[redis][cluster]") {
    RedisCluster cluster(3);
    RedisClusterOptions o = patient();
    o.try_again_timeout = 100ms;
    o.try_again_backoff = 1ms;
    RedisClusterBackend backend = make_cluster_backend(cluster, o);
    const std::string stay = "{ask}:stays";
    const std::string go = "{ask}:goes";
    const std::size_t from = cluster.owner_of(stay);
    const std::size_t to = (from + 1) % cluster.size();
    backend.set(stay, "s", 10s);
    backend.set(go, "g", 10s);

    // The slot half moved: `go` is on the target, `stay` still on the source.
    const std::string slot = std::to_string(cluster.slot_of(stay));
    const auto& source = cluster.node(from);
    const auto& target = cluster.node(to);
    REQUIRE_FALSE(
        target.query({"CLUSTER", "SETSLOT", slot, "IMPORTING", RedisCluster::id_of(source)})
            .is_error());
    REQUIRE_FALSE(
        source.query({"CLUSTER", "SETSLOT", slot, "MIGRATING", RedisCluster::id_of(target)})
            .is_error());
    REQUIRE_FALSE(source
                      .query({"MIGRATE", target.host(), std::to_string(target.port()), "", "0",
                              "5000", "KEYS", "{ask}:goes"})
                      .is_error());

    // Single keys: served where they are (ASK for the one that left).
    CHECK(backend.get(stay)->bytes == "s");
    CHECK(backend.get(go)->bytes == "g");
    CHECK(backend.stats().asked >= 1);
    CHECK(backend.stats().moved == 0);  // an ASK does not change the table
    // A new key of the slot is created at the target, through ASKING.
    backend.set("{ask}:new", "n", 10s);
    const auto imported = target.query({"CLUSTER", "GETKEYSINSLOT", slot, "10"});
    CHECK(std::any_of(imported.elements.begin(), imported.elements.end(),
                      [](const auto& k) { return k.text == "{ask}:new"; }));
    // get_many over both: each key from where it is.
    const auto both = backend.get_many(std::vector<std::string>{stay, go, "{ask}:new"});
    CHECK(both[0]->bytes == "s");
    CHECK(both[1]->bytes == "g");
    CHECK(both[2]->bytes == "n");

    // A script over both keys cannot run while they are apart: TRYAGAIN, retried, then
    // an error that says so rather than a wrong answer.
    static larder::RedisScript both_keys{
        "both_keys", "return redis.call('GET', KEYS[1]) .. redis.call('GET', KEYS[2])", false};
    const auto before = backend.stats().try_agains;
    const auto started = std::chrono::steady_clock::now();
    CHECK_THROWS_AS(backend.eval(both_keys, {stay, go}, {}), ClusterRedirectError);
    // Retried (1, 2, 4 ... ms) until try_again_timeout, then given up.
    CHECK(backend.stats().try_agains - before >= 3);
    CHECK(std::chrono::steady_clock::now() - started >= 100ms);

    // The migration completes: the script runs on the new owner.
    REQUIRE_FALSE(source
                      .query({"MIGRATE", target.host(), std::to_string(target.port()), "", "0",
                              "5000", "KEYS", "{ask}:stays"})
                      .is_error());
    for (std::size_t i = 0; i < cluster.size(); ++i) {
        (void)cluster.node(i).query(
            {"CLUSTER", "SETSLOT", slot, "NODE", RedisCluster::id_of(target)});
    }
    CHECK(backend.eval(both_keys, {stay, go}, {}).str == "sg");
}

TEST_CASE("A cluster node that dies opens its own breaker only; the others keep serving",
          "[redis][cluster]") {
    RedisCluster cluster(3);
    RedisClusterOptions o;
    o.node.breaker.failure_threshold = 2;
    o.node.breaker.cool_down = 10s;
    RedisClusterBackend backend = make_cluster_backend(cluster, o);
    std::vector<std::string> keys;
    for (std::size_t i = 0; i < cluster.size(); ++i) keys.push_back(cluster.key_on(i, "dies"));
    for (const auto& k : keys) backend.set(k, "v", 10s);

    cluster.node(1).kill();
    for (int i = 0; i < 4; ++i) CHECK_THROWS_AS(backend.get(keys[1]), larder::BackendError);
    CHECK_THROWS_AS(backend.get(keys[1]), larder::CircuitOpenError);
    // Multi-key: the dead node's failure is the call's, and no other node's breaker counts it.
    CHECK_THROWS_AS(backend.get_many(keys), larder::BackendError);
    for (int i = 0; i < 10; ++i) {
        CHECK(backend.get(keys[0])->bytes == "v");
        CHECK(backend.get(keys[2])->bytes == "v");
    }
    for (const auto& [name, stats] : backend.node_stats()) {
        INFO(name);
        CHECK(stats.breaker_opens == (name == address_of(cluster.node(1)) ? 1u : 0u));
    }
    CHECK(backend.stats().errors >= 6);
}

TEST_CASE("RedisClusterBackend starts from any seed that answers, and says when none does",
          "[redis][cluster]") {
    RedisCluster& cluster = shared_cluster();
    RedisClusterOptions o = patient();
    o.seeds = {{.host = "127.0.0.1", .port = larder::test::detail::pick_free_loopback_port()},
               {.host = cluster.node(2).host(), .port = cluster.node(2).port()}};
    RedisClusterBackend backend(o);
    const std::string key = cluster.key_on(0, "seeded");
    backend.set(key, "v", 10s);
    CHECK(backend.get(key)->bytes == "v");
    CHECK(backend.stats().moved == 0);  // the whole map came from the one seed that answered

    RedisClusterOptions dead = patient();
    dead.seeds = {{.host = "127.0.0.1", .port = larder::test::detail::pick_free_loopback_port()}};
    try {
        RedisClusterBackend none(dead);
        FAIL("a backend without a reachable seed was built");
    } catch (const larder::ConnectionError& e) {
        CHECK(contains(e.what(), "CLUSTER SLOTS"));
    }
}

TEST_CASE("RedisClusterOptions are checked, and read from a list of URLs", "[redis][cluster]") {
    auto refused = [](RedisClusterOptions o) {
        try {
            RedisClusterBackend b(std::move(o));
        } catch (const larder::ConfigError& e) {
            return std::string(e.what());
        }
        return std::string("accepted");
    };
    CHECK(contains(refused({}), "seeds"));
    RedisClusterOptions o;
    o.seeds = {{.host = "127.0.0.1", .port = 0}};
    CHECK(contains(refused(o), "port"));
    o.seeds = {{.host = "127.0.0.1", .port = 7000}};
    o.node.db = 2;
    CHECK(contains(refused(o), "db"));
    o.node.db = 0;
    o.node.key_prefix = "no-separator";
    CHECK(contains(refused(o), "key_prefix"));

    o.try_again_backoff = 0ms;
    CHECK(contains(refused(o), "try_again_backoff"));
    o.try_again_backoff = 2ms;
    o.try_again_timeout = std::chrono::hours(1);
    CHECK(contains(refused(o), "try_again_timeout"));
    o.try_again_timeout = 2s;
    o.min_refresh_interval = 10s;
    CHECK(contains(refused(o), "min_refresh_interval"));

    const auto parsed = RedisClusterOptions::from_urls(
        "redis://app:s3cret@10.0.0.1:7000,redis://app:s3cret@10.0.0.2:7001");
    REQUIRE(parsed.seeds.size() == 2);
    CHECK(parsed.seeds[0].host == "10.0.0.1");
    CHECK(parsed.seeds[0].port == 7000);
    CHECK(parsed.seeds[1].port == 7001);
    CHECK(parsed.node.user == "app");
    CHECK(parsed.node.password == "s3cret");
    for (const char* bad : {"", "redis://a:1,,redis://b:2", "redis://a:1,", ",redis://a:1",
                            "unix:///tmp/redis.sock", "redis://a:1/5", "redis://a:1?db=3",
                            "redis://u:p@a:1,redis://b:2", "redis://u:p@a:1,redis://u:q@b:2"}) {
        INFO(bad);
        CHECK_THROWS_AS(RedisClusterOptions::from_urls(bad), larder::ConfigError);
    }
}

TEST_CASE("read_from_replicas sends reads to a replica and writes to the primary",
          "[redis][cluster]") {
    RedisCluster& cluster = shared_cluster();
    cluster.flush_all();
    RedisClusterOptions o = patient();
    o.read_from_replicas = true;
    RedisClusterBackend backend = make_cluster_backend(cluster, o);
    const std::string key = cluster.key_on(0, "replicated");
    backend.set(key, "v", 10s);
    // Replication is asynchronous: wait until the replica has it.
    (void)cluster.node(0).query({"WAIT", "1", "2000"});
    const auto read = backend.get(key);
    REQUIRE(read);
    CHECK(read->bytes == "v");
    CHECK(backend.stats().replica_reads >= 1);
    const auto many = backend.get_many(std::vector<std::string>{key});
    CHECK(many[0]->bytes == "v");
    // A compare-and-set reads and writes: it goes to the primary.
    CHECK(backend.compare_and_set(key, "v", "w", 10s));
    bool replica_served = false;
    for (const auto& [name, stats] : backend.node_stats()) {
        if (name == address_of(cluster.replica_of(0)) + " (replica reads)") {
            replica_served = stats.round_trips >= 2;
        }
    }
    CHECK(replica_served);
}

TEST_CASE("A cluster write-behind store asks the node that holds its queue about durability",
          "[redis][cluster]") {
    RedisCluster cluster(3);
    RedisClusterOptions o = patient();
    o.node.key_prefix = "{durable}:";
    RedisClusterBackend backend = make_cluster_backend(cluster, o);
    const std::size_t queue_node = cluster.owner_of("{durable}:");
    auto appendonly_only_on = [&](std::optional<std::size_t> which) {
        for (std::size_t i = 0; i < cluster.size(); ++i) {
            REQUIRE_FALSE(cluster.node(i)
                              .query({"CONFIG", "SET", "appendonly", which == i ? "yes" : "no"})
                              .is_error());
        }
    };
    larder::RedisClusterWriteBehindStore store(backend);
    appendonly_only_on(queue_node);
    CHECK(store.persistence().survives_restart);
    appendonly_only_on((queue_node + 1) % cluster.size());  // every node but the queue's
    CHECK_FALSE(store.persistence().survives_restart);
}

TEST_CASE("On a cluster, a write-behind store needs a key prefix with a hash tag",
          "[redis][cluster]") {
    RedisCluster& cluster = shared_cluster();
    RedisClusterOptions o = patient();
    o.node.key_prefix = "app:";
    RedisClusterBackend untagged = make_cluster_backend(cluster, o);
    try {
        larder::RedisClusterWriteBehindStore store(untagged);
        FAIL("a store whose queue and entries can live in different slots was built");
    } catch (const larder::ConfigError& e) {
        CHECK(contains(e.what(), "hash tag"));
    }
    o.node.key_prefix = "{app}:";
    RedisClusterBackend tagged = make_cluster_backend(cluster, o);
    CHECK_NOTHROW(larder::RedisClusterWriteBehindStore(tagged));
}

// ---- RedisClusterBus ------------------------------------------------------------------

namespace {}  // namespace

TEST_CASE("RedisClusterBus carries invalidations between two Near caches on a cluster",
          "[redis][cluster][l1]") {
    RedisCluster& cluster = shared_cluster();
    cluster.flush_all();
    RedisClusterOptions o = patient();
    for (const auto& [host, port] : cluster.addresses()) o.seeds.push_back({host, port, ""});
    RedisClusterBackend backend(o);
    larder::RedisClusterBus bus_a(o);
    larder::RedisClusterBus bus_b(o);
    larder::CacheAside<std::string, RedisClusterBackend> cache_a(backend), cache_b(backend);
    larder::Near a(cache_a, bus_a), b(cache_b, bus_b, {.ttl = 1h});
    REQUIRE(bus_a.wait_connected(5s));
    REQUIRE(bus_b.wait_connected(5s));
    int version = 1;
    auto load = [&] { return std::optional<std::string>("v" + std::to_string(version)); };
    REQUIRE(b.get("k", load) == "v1");
    REQUIRE(b.get("k", load) == "v1");  // b's L1 holds it now
    version = 2;
    a.invalidate("k");
    // b's L1 copy goes, through the sharded channel: b reads the new row.
    CHECK(eventually([&] { return b.get("k", load) == "v2"; }, 20s));
}

TEST_CASE("RedisClusterBus follows its channel's slot to a new node", "[redis][cluster][l1]") {
    RedisCluster cluster(3);
    RedisClusterOptions o = patient();
    for (const auto& [host, port] : cluster.addresses()) o.seeds.push_back({host, port, ""});
    larder::RedisClusterBus publisher(o);
    larder::RedisClusterBus listener(o, {.first_backoff = 50ms, .max_backoff = 200ms});
    std::mutex heard_mutex;
    std::vector<std::string> heard;
    std::atomic<int> lost{0};
    std::atomic<int> back{0};
    auto recorder =
        listener.subscribe(larder::BusHandlers{.on_message =
                                                   [&](std::string_view m) {
                                                       std::lock_guard lock(heard_mutex);
                                                       heard.emplace_back(m);
                                                   },
                                               .on_lost = [&] { ++lost; },
                                               .on_restored = [&] { ++back; },
                                               .on_resumed = [&] { ++back; }});
    REQUIRE(listener.wait_connected(5s));
    const int back_at_start = back.load();
    auto count = [&] {
        std::lock_guard lock(heard_mutex);
        return heard.size();
    };
    publisher.publish("kbefore");
    REQUIRE(eventually([&] { return count() == 1; }, 20s));

    // The channel's slot (and with it the counter and the log) moves to another primary:
    // the old owner ends the subscription, the listener says its L1 may have missed
    // messages, and subscribes at the new owner.
    const std::string channel = listener.channel();
    const std::size_t from = cluster.owner_of(channel);
    cluster.move_slot(cluster.slot_of(channel), from, (from + 1) % cluster.size());
    REQUIRE(eventually([&] { return lost.load() >= 1; }, 20s));
    REQUIRE(eventually([&] { return back.load() > back_at_start && listener.connected(); }, 20s));
    CHECK(listener.subscriptions() >= 2);
    for (int i = 0; i < 5; ++i) publisher.publish("kafter" + std::to_string(i));
    // Every message after the move is heard, at the new owner.
    CHECK(eventually([&] { return count() == 6; }, 20s));
    std::lock_guard lock(heard_mutex);
    for (int i = 0; i < 5; ++i) {
        INFO("kafter" << i);
        CHECK(std::find(heard.begin(), heard.end(), "kafter" + std::to_string(i)) != heard.end());
    }
}

// Before: while the channel's slot migrated, the publish script followed its keys (ASK) to
// the importing node and published there, where no one listens: another process's L1 kept
// the old value until the slot was handed over.
TEST_CASE("An invalidation published while its channel's slot migrates reaches every L1",
          "[redis][cluster][l1][regression]") {
    RedisCluster cluster(3);
    RedisClusterOptions o = patient();
    for (const auto& [host, port] : cluster.addresses()) o.seeds.push_back({host, port, ""});
    RedisClusterBackend backend(o);
    larder::RedisClusterBus bus_a(o);
    larder::RedisClusterBus bus_b(o);
    larder::CacheAside<std::string, RedisClusterBackend> cache_a(backend), cache_b(backend);
    larder::Near a(cache_a, bus_a), b(cache_b, bus_b, {.ttl = 1h});
    REQUIRE(bus_a.wait_connected(5s));
    REQUIRE(bus_b.wait_connected(5s));
    a.invalidate("warm-up");  // the counter and the log exist, so they migrate
    int version = 1;
    auto load = [&] { return std::optional<std::string>("v" + std::to_string(version)); };
    REQUIRE(b.get("k", load) == "v1");
    REQUIRE(b.get("k", load) == "v1");

    const std::string channel = bus_b.channel();
    const std::size_t from = cluster.owner_of(channel);
    bool checked = false;
    cluster.move_slot(cluster.slot_of(channel), from, (from + 1) % cluster.size(), [&] {
        if (checked) return;
        checked = true;
        // The counter and the log have moved; the slot still belongs to the old owner.
        version = 2;
        a.invalidate("k");
        CHECK(eventually([&] { return b.get("k", load) == "v2"; }, 5s));
    });
    CHECK(checked);
}

TEST_CASE("A RedisClusterBus channel with braces of its own keeps its counter in its slot",
          "[redis][cluster][l1]") {
    RedisCluster& cluster = shared_cluster();
    RedisClusterOptions o = patient();
    for (const auto& [host, port] : cluster.addresses()) o.seeds.push_back({host, port, ""});
    for (const char* channel : {"inv{}2", "inv}1{", "{a}b", "x{"}) {
        INFO(channel);
        larder::RedisClusterBus publisher(o, {.channel = channel});
        larder::RedisClusterBus listener(o, {.channel = channel});
        std::atomic<int> heard{0};
        auto recorder =
            listener.subscribe(larder::BusHandlers{.on_message = [&](std::string_view) { ++heard; },
                                                   .on_lost = [] {},
                                                   .on_restored = [] {}});
        REQUIRE(listener.wait_connected(5s));
        CHECK_NOTHROW(publisher.publish("kmessage"));
        CHECK(eventually([&] { return heard.load() == 1; }, 20s));
    }
}

#endif
