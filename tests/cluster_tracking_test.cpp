// RedisClusterTrackingBus: L1 invalidation produced by the nodes of a Redis Cluster, one
// tracking subscriber per node. Every write that must reach the L1 is made by a writer that
// knows nothing of the bus (a second backend, without one), on whichever node owns the key.

#if defined(LARDER_TEST_HAVE_REDIS) && defined(LARDER_TEST_HAVE_REDIS_SERVER)

#include <larder/backend/redis_cluster.hpp>
#include <larder/near/near.hpp>
#include <larder/near/redis_cluster_tracking_bus.hpp>
#include <larder/policy/cache_aside.hpp>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <mutex>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "support/catch.hpp"
#include "support/eventually.hpp"
#include "support/redis_cluster.hpp"
#include "support/redis_cluster_fixture.hpp"

using namespace std::chrono_literals;
using larder::RedisClusterBackend;
using larder::RedisClusterTrackingBus;
using larder::test::eventually;
using larder::test::make_cluster_backend;
using larder::test::RedisCluster;

namespace {

using Cache = larder::CacheAside<std::string, RedisClusterBackend>;
using Str = std::optional<std::string>;

larder::RedisClusterOptions patient(bool replica_reads = false) {
    larder::RedisClusterOptions o;
    o.node.connect_timeout = 2s;
    o.node.command_timeout = 2s;
    o.node.pool_wait_timeout = 2s;
    o.node.key_prefix = "app:";
    o.node.breaker.cool_down = 200ms;
    o.read_from_replicas = replica_reads;
    return o;
}

const larder::RedisTrackingOptions quick{.first_backoff = 20ms, .max_backoff = 200ms};

// One process's view of a cluster: a backend whose reads fill an L1 kept coherent by a
// RedisClusterTrackingBus, and beside it a backend with no bus and a cache on it: the
// foreign writer.
struct Rig {
    Rig(RedisCluster& cluster, larder::RedisTrackingOptions bus_options, bool replica_reads = false)
        : cluster(cluster),
          backend(make_cluster_backend(cluster, patient(replica_reads))),
          bus(backend, std::move(bus_options)),
          cache(backend, {.key_prefix = "users:"}),
          near(cache, bus, {.ttl = 60s}),
          plain(make_cluster_backend(cluster, patient())),
          writer(plain, {.key_prefix = "users:"}) {
        if (!bus.wait_connected(10s)) throw std::runtime_error("bus not connected");
        if (!eventually([&] { return near.l1().enabled(); })) {
            throw std::runtime_error("L1 not enabled");
        }
    }

    // A key of this cache whose stored form primary `i` serves.
    std::string key_on(std::size_t i, const std::string& stem) const {
        for (int n = 0;; ++n) {
            std::string key = stem + std::to_string(n);
            if (cluster.owner_of(stored(key)) == i) return key;
        }
    }

    std::string stored(const std::string& key) const {
        return backend.stored_key(cache.full_key(key));
    }

    bool in_l1(const std::string& key) { return near.l1().contains(cache.full_key(key)); }

    // Reads `key` through Near until the read is an L1 hit (broadcast mode may still be
    // delivering the write that stored it, which drops the first copy).
    void fill_l1(const std::string& key, const std::string& expected) {
        REQUIRE(eventually([&] {
            const auto hits = near.l1().stats().hits;
            REQUIRE(near.get(key, [] { return Str("loader"); }) == expected);
            return near.l1().stats().hits == hits + 1;
        }));
    }

    RedisCluster& cluster;
    RedisClusterBackend backend;
    RedisClusterTrackingBus bus;
    Cache cache;
    larder::Near<Cache, RedisClusterTrackingBus> near;
    RedisClusterBackend plain;
    Cache writer;
};

std::string address(const larder::test::RedisServer& server) {
    return server.host() + ":" + std::to_string(server.port());
}

bool tracks(const RedisClusterTrackingBus& bus, const std::string& node) {
    const auto nodes = bus.nodes();
    return std::find(nodes.begin(), nodes.end(), node) != nodes.end();
}

}  // namespace

TEST_CASE("RedisClusterTrackingBus: a write on any node drops the L1 copy read from it",
          "[redis][cluster][tracking][l1]") {
    const auto mode = GENERATE(larder::TrackingMode::keys_read, larder::TrackingMode::broadcast);
    INFO((mode == larder::TrackingMode::keys_read ? "keys_read" : "broadcast"));
    RedisCluster& cluster = larder::test::shared_redis_cluster();
    cluster.flush_all();
    larder::RedisTrackingOptions options = quick;
    options.mode = mode;
    Rig rig(cluster, options);
    // One subscriber per primary: the nodes the backend calls.
    CHECK(rig.bus.nodes().size() == cluster.size());
    for (std::size_t i = 0; i < cluster.size(); ++i) {
        INFO("primary " << i);
        const std::string key = rig.key_on(i, "user");
        rig.writer.set(key, "v1");
        rig.fill_l1(key, "v1");
        rig.writer.set(key, "v2");  // on primary i, by a backend without a bus
        CHECK(eventually([&] { return !rig.in_l1(key); }));
        CHECK(rig.near.get(key, [] { return Str("loader"); }) == "v2");
    }
    CHECK(rig.bus.keys_invalidated() >= cluster.size());
}

TEST_CASE("RedisClusterTrackingBus with replica reads tracks the replicas' reads",
          "[redis][cluster][tracking][l1]") {
    RedisCluster& cluster = larder::test::shared_redis_cluster();
    cluster.flush_all();
    Rig rig(cluster, quick, /*replica_reads=*/true);
    const std::string key = rig.key_on(1, "user");
    rig.writer.set(key, "v1");
    REQUIRE(cluster.node(1).query({"WAIT", "1", "5000"}).integer == 1);  // the replica has it
    rig.fill_l1(key, "v1");
    CHECK(rig.backend.stats().replica_reads > 0);
    // Each primary and its replica: the replica serves the reads, the primary the scripts.
    CHECK(rig.bus.nodes().size() == 2 * cluster.size());
    rig.writer.set(key, "v2");  // on the primary; the replica applies it and reports it
    CHECK(eventually([&] { return !rig.in_l1(key); }));
    CHECK(eventually([&] { return rig.near.get(key, [] { return Str("loader"); }) == "v2"; }));
}

TEST_CASE("One RedisClusterTrackingBus per backend; options are checked",
          "[redis][cluster][tracking]") {
    RedisCluster& cluster = larder::test::shared_redis_cluster();
    RedisClusterBackend backend = make_cluster_backend(cluster, patient());
    {
        RedisClusterTrackingBus bus(backend, quick);
        CHECK_THROWS_AS(RedisClusterTrackingBus(backend, quick), larder::ConfigError);
        CHECK(bus.wait_connected(10s));
    }
    // The first one gone, another may take its place.
    RedisClusterTrackingBus again(backend, quick);
    CHECK(again.wait_connected(10s));
    RedisClusterBackend other = make_cluster_backend(cluster, patient());
    CHECK_THROWS_AS(RedisClusterTrackingBus(
                        other, {.mode = larder::TrackingMode::keys_read, .prefixes = {"a:"}}),
                    larder::ConfigError);
    // The refused bus left no watcher behind.
    CHECK_NOTHROW(RedisClusterTrackingBus(other, quick));
}

namespace {

// The "host:port" of the replica that serves reads, from the backend's own node names.
std::string read_replica(const RedisClusterBackend& backend) {
    const std::string mark = " (replica reads)";
    std::string found;
    for (const auto& [name, stats] : backend.node_stats()) {
        if (name.ends_with(mark)) found = name.substr(0, name.size() - mark.size());
    }
    return found;
}

}  // namespace

// Before: every refresh picked the next replica of each range, so a tracking bus dropped
// one node and started another at every refresh, and each time every L1 started over.
TEST_CASE(
    "With replica reads, a refresh keeps each range's replica, and the tracking bus its nodes",
    "[redis][cluster][tracking][l1][regression]") {
    RedisCluster cluster(1, 2);
    larder::RedisClusterOptions o = patient(/*replica_reads=*/true);
    RedisClusterBackend backend = make_cluster_backend(cluster, o);
    RedisClusterTrackingBus bus(backend, quick);
    REQUIRE(bus.wait_connected(10s));
    const std::string replica = read_replica(backend);
    REQUIRE_FALSE(replica.empty());
    const auto subscriptions = bus.subscriptions();
    for (int i = 0; i < 4; ++i) backend.refresh_slots();
    CHECK(read_replica(backend) == replica);
    CHECK(bus.nodes_dropped() == 0);
    CHECK(bus.subscriptions() == subscriptions);
    CHECK(bus.connected());
}

// Before: a watcher that threw left the node marked serving, so it was never told again
// (a tracking bus that could not start a node's subscriber never tracked it); and one that
// threw while registering stayed registered.
TEST_CASE("A node watcher that throws is told again, and one that fails to register is not kept",
          "[redis][cluster][tracking][regression]") {
    RedisCluster cluster(1, 2);
    RedisClusterBackend backend = make_cluster_backend(cluster, patient(/*replica_reads=*/true));
    CHECK_THROWS_AS(backend.watch_nodes([](larder::RedisBackend&, bool) {
        throw larder::BackendError("cannot start");
    }),
                    larder::BackendError);
    std::mutex mutex;
    std::vector<std::pair<std::string, bool>> told;
    std::atomic<bool> failing{false};
    backend.watch_nodes([&](larder::RedisBackend& node, bool serving) {
        if (serving && failing.load()) throw std::runtime_error("cannot start");
        std::lock_guard lock(mutex);
        told.emplace_back(node.options().host + ":" + std::to_string(node.options().port), serving);
    });
    const std::string first = read_replica(backend);
    REQUIRE_FALSE(first.empty());
    // The replica that serves reads dies; once the cluster marks it failed, the map names
    // the other one. The watcher fails to start it the first time.
    for (std::size_t i = 1; i < cluster.servers(); ++i) {
        auto& server = cluster.node(i);
        if (server.host() + ":" + std::to_string(server.port()) == first) server.kill();
    }
    failing = true;
    bool refused = false;
    REQUIRE(eventually(
        [&] {
            try {
                backend.refresh_slots();
            } catch (const larder::BackendError& e) {
                refused = std::string(e.what()).find("cannot start") != std::string::npos;
            }
            return refused;
        },
        30s));
    failing = false;
    REQUIRE(eventually(
        [&] {
            try {
                backend.refresh_slots();
            } catch (const larder::BackendError&) {
            }
            return !read_replica(backend).empty() && read_replica(backend) != first;
        },
        30s));
    const std::string second = read_replica(backend);
    std::lock_guard lock(mutex);
    CHECK(std::count(told.begin(), told.end(), std::pair{second, true}) == 1);
    CHECK(std::count(told.begin(), told.end(), std::pair{first, false}) == 1);
}

TEST_CASE("RedisClusterTrackingBus follows a key's slot to its new owner",
          "[redis][cluster][tracking][l1]") {
    RedisCluster cluster(3);
    Rig rig(cluster, quick);
    const std::string key = rig.key_on(0, "user");
    rig.writer.set(key, "v1");
    rig.fill_l1(key, "v1");
    // MIGRATE deletes the key at its old owner, which tells the subscriber there.
    cluster.move_slot(cluster.slot_of(rig.stored(key)), 0, 1);
    CHECK(eventually([&] { return !rig.in_l1(key); }));
    // Read again (a MOVED on the way), from the new owner, into L1.
    rig.fill_l1(key, "v1");
    rig.writer.set(key, "v2");  // at the new owner
    CHECK(eventually([&] { return !rig.in_l1(key); }));
    CHECK(rig.near.get(key, [] { return Str("loader"); }) == "v2");
}

TEST_CASE(
    "RedisClusterTrackingBus: a primary dies, L1 is off until its replica serves, then hears "
    "writes there",
    "[redis][cluster][tracking][l1][topology]") {
    RedisCluster cluster(3, 1);
    Rig rig(cluster, quick);
    const std::string key = rig.key_on(0, "user");
    rig.writer.set(key, "v1");
    REQUIRE(cluster.node(0).query({"WAIT", "1", "5000"}).integer == 1);  // the replica has it
    rig.fill_l1(key, "v1");
    const std::string dead = address(cluster.node(0));
    const std::string promoted = address(cluster.replica_of(0));
    CHECK(tracks(rig.bus, dead));
    CHECK_FALSE(tracks(rig.bus, promoted));

    cluster.node(0).kill();
    // The dead node's subscriber is lost: no L1 copy is served meanwhile.
    REQUIRE(eventually([&] { return !rig.bus.connected(); }, 20s));
    CHECK_FALSE(rig.near.l1().enabled());
    // Calls go on (from the database while the slot has no primary); once the replica has
    // taken over and the map no longer names the dead node, L1 is back.
    REQUIRE(eventually(
        [&] {
            try {
                (void)rig.near.get(key, [] { return Str("v1"); });
            } catch (const larder::Error&) {
            }
            return rig.bus.connected() && rig.near.l1().enabled();
        },
        60s));
    CHECK_FALSE(tracks(rig.bus, dead));
    CHECK(tracks(rig.bus, promoted));
    CHECK(rig.bus.nodes_dropped() >= 1);
    // The promoted replica's writes reach the L1.
    rig.fill_l1(key, "v1");
    REQUIRE(eventually([&] {
        try {
            rig.writer.set(key, "v2");
            return true;
        } catch (const larder::Error&) {
            return false;
        }
    }));
    CHECK(eventually([&] { return !rig.in_l1(key); }));
    CHECK(rig.near.get(key, [] { return Str("loader"); }) == "v2");
}

#endif
