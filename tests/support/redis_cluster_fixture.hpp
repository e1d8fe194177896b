// RedisClusterBackend wired to a throwaway cluster, for tests.
//
// shared_redis_cluster() is one cluster of three primaries, each with a replica, shared by
// the whole test process (starting one takes seconds); RedisClusterFixture is the cluster
// entry of the backend conformance suite (support/backends.hpp): the cluster flushed for
// every fixture, real time instead of a ManualClock. Tests that fail a node over or move
// slots start a cluster of their own.
#pragma once

#include <chrono>
#include <string>
#include <string_view>
#include <thread>
#include <utility>

#include "larder/backend/redis_cluster.hpp"
#include "larder/core/clock.hpp"
#include "support/redis_cluster.hpp"

namespace larder::test {

/// A RedisClusterBackend seeded with every node of `cluster`; `extra` gives every option
/// except the seeds.
inline RedisClusterBackend make_cluster_backend(const RedisCluster& cluster,
                                                RedisClusterOptions extra = {}) {
    extra.seeds.clear();
    for (const auto& [host, port] : cluster.addresses()) {
        extra.seeds.push_back(ClusterNode{.host = host, .port = port});
    }
    return RedisClusterBackend(std::move(extra));
}

/// Created on first use, from the test's main thread (the servers die with the thread
/// that started them), and stopped at exit.
inline RedisCluster& shared_redis_cluster() {
    static RedisCluster cluster(3, 1);
    return cluster;
}

/// `one_slot`: a key prefix with a hash tag, so that every key lives in one slot (on one
/// node), as a write-behind cache on a cluster must.
template <bool one_slot>
struct BasicRedisClusterFixture {
    static constexpr bool manual_time = false;

    BasicRedisClusterFixture()
        : backend(make_cluster_backend(flushed(shared_redis_cluster()), options())) {}

    RedisClusterBackend backend;

    /// Bytes written behind the backend's back, under the key the backend would use.
    void raw_set(std::string_view key, std::string_view bytes) {
        (void)backend.command({"SET", backend.stored_key(key), bytes});
    }
    void advance(Millis by) { std::this_thread::sleep_for(by); }
    [[nodiscard]] const Clock* time_source() const { return &SystemClock::instance(); }

private:
    static RedisCluster& flushed(RedisCluster& cluster) {
        cluster.flush_all();
        return cluster;
    }

    // As RedisFixture's: generous timeouts, and a prefix.
    static RedisClusterOptions options() {
        RedisClusterOptions o;
        o.node.connect_timeout = std::chrono::seconds(2);
        o.node.command_timeout = std::chrono::seconds(2);
        o.node.pool_wait_timeout = std::chrono::seconds(2);
        o.node.key_prefix = one_slot ? "{conformance}:" : "conformance:";
        return o;
    }
};

using RedisClusterFixture = BasicRedisClusterFixture<false>;
using OneSlotRedisClusterFixture = BasicRedisClusterFixture<true>;

}  // namespace larder::test
