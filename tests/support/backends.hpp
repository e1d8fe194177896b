// Backend fixtures for tests that run on every backend. A fixture owns a backend and
// knows how to write raw bytes behind a cache's back and how to let time pass: a
// ManualClock in memory, real time on Redis (so keep TTLs in those tests short).
//
// BACKEND_TEST_CASE(name, tags) defines one test body and instantiates it once per
// backend, each with its own tags ([memory]; [redis]; [redis][cluster]) so ctest can label
// the Redis runs and run the cluster's in one process, on one cluster.
#pragma once

#include <chrono>
#include <optional>
#include <string>
#include <string_view>
#include <thread>

#include "larder/backend/memory.hpp"
#include "larder/core/clock.hpp"
#include "larder/policy/cache_aside.hpp"
#include "support/catch.hpp"

#if defined(LARDER_TEST_HAVE_REDIS) && defined(LARDER_TEST_HAVE_REDIS_SERVER)
#include "support/redis_cluster_fixture.hpp"
#include "support/redis_fixture.hpp"
#define LARDER_TEST_REDIS_BACKEND 1
#endif

namespace larder::test {

struct MemoryFixture {
    static constexpr bool manual_time = true;

    ManualClock clock;
    MemoryBackend backend{MemoryBackendOptions{.clock = &clock}};

    void raw_set(std::string_view key, std::string_view bytes) {
        backend.set(key, bytes, no_expiry);
    }
    void advance(Millis by) { clock.advance(by); }
    [[nodiscard]] const Clock* time_source() const { return &clock; }
};

/// CacheAside options that run on the fixture's clock.
template <class Fixture>
CacheAsideOptions options_for(Fixture& fx, CacheAsideOptions o = {}) {
    o.clock = fx.time_source();
    return o;
}

}  // namespace larder::test

#define LARDER_TEST_CAT2(a, b) a##b
#define LARDER_TEST_CAT(a, b) LARDER_TEST_CAT2(a, b)

#if defined(LARDER_TEST_REDIS_BACKEND)
#define LARDER_TEST_REDIS_INSTANCE(name, tags, fn, cluster_fixture)        \
    TEMPLATE_TEST_CASE(name, tags "[redis]", larder::test::RedisFixture) { \
        fn<TestType>();                                                    \
    }                                                                      \
    TEMPLATE_TEST_CASE(name, tags "[redis][cluster]", cluster_fixture) {   \
        fn<TestType>();                                                    \
    }
#else
#define LARDER_TEST_REDIS_INSTANCE(name, tags, fn, cluster_fixture)
#endif

#define LARDER_BACKEND_TEST_CASE_IMPL(name, tags, fn, cluster_fixture)       \
    template <class TestType>                                                \
    static void fn();                                                        \
    TEMPLATE_TEST_CASE(name, tags "[memory]", larder::test::MemoryFixture) { \
        fn<TestType>();                                                      \
    }                                                                        \
    LARDER_TEST_REDIS_INSTANCE(name, tags, fn, cluster_fixture)              \
    template <class TestType>                                                \
    static void fn()

#define BACKEND_TEST_CASE(name, tags)                                                          \
    LARDER_BACKEND_TEST_CASE_IMPL(name, tags, LARDER_TEST_CAT(larder_backend_test_, __LINE__), \
                                  larder::test::RedisClusterFixture)

/// As BACKEND_TEST_CASE, for tests of WriteBehind: on the cluster, every key of the cache
/// and its queue share one slot (the write-behind store needs them together).
#define WRITE_BEHIND_TEST_CASE(name, tags)                                                     \
    LARDER_BACKEND_TEST_CASE_IMPL(name, tags, LARDER_TEST_CAT(larder_backend_test_, __LINE__), \
                                  larder::test::OneSlotRedisClusterFixture)
