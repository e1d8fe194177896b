// Redis Cluster: what larder does when the cache lives on a cluster, against a real one
// (support/redis_cluster.hpp: redis-servers in cluster mode on loopback).

// Under CMake only when larder::redis was found; compiled by hand, whenever hiredis is there.
#if __has_include(<hiredis/hiredis.h>) &&                                     \
    (defined(LARDER_TEST_HAVE_REDIS) || !defined(LARDER_TEST_SOURCE_DIR)) && \
    (defined(LARDER_TEST_HAVE_REDIS_SERVER) || defined(LARDER_TEST_REDIS_SERVER))

#include <larder/backend/redis.hpp>
#include <larder/core/error.hpp>
#include <larder/policy/cache_aside.hpp>

#include <atomic>
#include <optional>
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

}  // namespace

TEST_CASE("A RedisBackend pointed at a cluster node fails loudly, and a cache does not load",
          "[redis][cluster]") {
    RedisCluster cluster(3);
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
    // A ConfigError, not a BackendError: nothing that falls back on a store failure takes it.
    CHECK_THROWS_AS(backend.get(elsewhere), larder::ConfigError);
    try {
        (void)backend.get(elsewhere);
    } catch (const larder::BackendError&) {
        FAIL("a redirect was thrown as a store failure");
    } catch (const ClusterRedirectError&) {
    }

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

#endif
