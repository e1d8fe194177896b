// A consumer that takes larder's headers at full warning level: every public header, and
// the compositions a user builds from them instantiated, compiled with -Wall -Wextra
// -Wpedantic -Wshadow -Wconversion -Werror. Through add_subdirectory() larder's include
// directory is not a system directory, so any warning in a header fails this build.
// Built, not run: it proves the headers compile cleanly, not what they do (the functions
// have external linkage, so each is compiled although nothing calls it).
#include <larder/backend/backend.hpp>
#include <larder/backend/chaos.hpp>
#include <larder/backend/memory.hpp>
#include <larder/codec/json.hpp>
#include <larder/codec/msgpack.hpp>
#include <larder/codec/raw.hpp>
#include <larder/core/log.hpp>
#include <larder/core/metrics.hpp>
#include <larder/core/stats.hpp>
#include <larder/invalidate/entity_versions.hpp>
#include <larder/invalidate/events.hpp>
#include <larder/invalidate/tags.hpp>
#include <larder/invalidate/ttl.hpp>
#include <larder/invalidate/version_keys.hpp>
#include <larder/larder.hpp>
#include <larder/metrics/prometheus.hpp>
#include <larder/near/near.hpp>
#include <larder/near/near_cache.hpp>
#include <larder/policy/cache_aside.hpp>
#include <larder/policy/write_behind.hpp>
#include <larder/policy/write_behind_types.hpp>
#include <larder/policy/write_through.hpp>
#include <larder/stampede/jitter.hpp>
#include <larder/stampede/lock.hpp>
#include <larder/stampede/single_flight.hpp>
#include <larder/stampede/xfetch.hpp>
#include <larder/version.hpp>

#if defined(LARDER_CONSUMER_WITH_REDIS)
#include <larder/backend/redis.hpp>
#include <larder/backend/redis/write_behind_store.hpp>
#include <larder/backend/redis_cluster.hpp>
#include <larder/near/redis_bus.hpp>
#include <larder/near/redis_cluster_tracking_bus.hpp>
#include <larder/near/redis_tracking_bus.hpp>
#endif

// The conformance suite is for a consumer's own Catch2 tests; this consumer does not link
// Catch2, so the header (and one instantiation of the suite) is compiled only where Catch2's
// headers are on the default include path. Compiled, never run.
#if __has_include(<catch2/catch.hpp>) || __has_include(<catch2/catch_test_macros.hpp>)
#include <larder/testing/backend_conformance.hpp>
#define STRICT_HAVE_CATCH2 1
#endif

#if defined(LARDER_CONSUMER_WITH_CRYPTO)
#include <larder/backend/authenticated.hpp>
#include <larder/crypto/hmac.hpp>
#endif

#include <cstdint>
#include <optional>
#include <span>
#include <string>
#include <vector>

namespace strict {

struct User {
    std::int64_t id = 0;
    std::string name;
    int score = 0;
};
NLOHMANN_DEFINE_TYPE_NON_INTRUSIVE(User, id, name, score)

std::optional<User> load_user() {
    return User{1, "ada", 3};
}

std::vector<std::optional<User>> load_users(std::span<const std::string> keys) {
    return std::vector<std::optional<User>>(keys.size(), User{});
}

larder::BatchResult write_users(std::span<const larder::DirtyEntry<User>>) {
    return {};
}

// Every read and write verb of each policy over a backend, with guards and invalidators.
template <larder::Backend B>
void policies(B& backend) {
    const std::vector<std::string> keys{"a", "b"};

    larder::CacheAside<User, B> plain(backend);
    (void)plain.get("k", load_user);
    (void)plain.get_many(keys, load_users);
    plain.invalidate("k");
    plain.invalidate_tag("t");
    (void)plain.stats();

    larder::CacheAside<User, B, larder::Guards<larder::XFetch, larder::Lock>,
                       larder::Invalidators<larder::Tags, larder::EntityVersions>>
        guarded(backend);
    (void)guarded.get("k", load_user);
    (void)guarded.get("k", [](larder::LoadContext& ctx) -> std::optional<User> {
        ctx.tags.push_back("t");
        return User{};
    });

    larder::CacheAside<User, B, larder::MsgPackCodec, larder::Ttl> packed(
        backend, {.jitter = larder::TtlJitter{.ratio = 0.1}});
    (void)packed.get("k", load_user);

    larder::VersionKeys<B> versions(backend);
    (void)plain.get(versions.key("user:1"), load_user);

    larder::WriteThrough<User, B> through(backend);
    (void)through.put("k", User{}, [] {});
    (void)through.get("k", load_user);

    larder::WriteBehindOptions options;
    options.start_flusher = false;
    larder::WriteBehind<User, B> behind(backend, write_users, options);
    behind.put("k", User{});
    (void)behind.modify(
        "k", [](User& u) { ++u.score; }, load_user);
    (void)behind.increment("k", &User::score, 1, load_user);
    (void)behind.get("k", load_user);
    (void)behind.flush();
    (void)behind.stats();
    (void)behind.close();

    larder::PrometheusMetrics metrics;
    larder::CacheAside<User, B> observed(
        backend, {.name = "observed",
                  .metrics = &metrics,
                  .log = {.level = larder::LogLevel::info,
                          .sink = [](larder::LogLevel, std::string_view) {}}});
    (void)observed.get("k", load_user);
    metrics.add("observed", observed);
    metrics.add("behind", behind);
    (void)metrics.text();
}

void near() {
    larder::MemoryBackend backend;
    larder::MemoryBus bus;
    using Inv = larder::Invalidators<larder::Tags, larder::Events<larder::MemoryBus>>;
    using Policy = larder::CacheAside<User, larder::MemoryBackend, Inv>;
    Policy policy(backend, {}, Inv(larder::Tags{}, larder::Events<larder::MemoryBus>(bus)));
    larder::Near<Policy, larder::MemoryBus> l1(policy, bus);
    (void)l1.get("k", load_user);
    const std::vector<std::string> keys{"a", "b"};
    (void)l1.get_many(keys, load_users);

    larder::NearCache<User> cache;
    cache.put("k", User{});
    (void)cache.get("k");
    (void)cache.erase("k");

    larder::SingleFlight<std::optional<User>> flight;
    (void)flight.run("k", load_user);
}

void memory() {
    larder::MemoryBackend backend;
    policies(backend);
    larder::ChaosBackend<larder::MemoryBackend> chaos(backend);
    policies(chaos);
    larder::CacheAside<std::string, larder::ChaosBackend<larder::MemoryBackend>> cache(chaos);
    (void)cache.get("k", [] { return std::optional<std::string>("v"); });
}

#if defined(STRICT_HAVE_CATCH2)
struct ConformanceFixture {
    static constexpr bool manual_time = true;
    larder::ManualClock clock;
    larder::MemoryBackend backend{larder::MemoryBackendOptions{.clock = &clock}};
    void raw_set(std::string_view key, std::string_view bytes) {
        backend.set(key, bytes, larder::no_expiry);
    }
    void advance(larder::Millis by) { clock.advance(by); }
};
#endif

#if defined(LARDER_CONSUMER_WITH_REDIS)
void redis() {
    larder::RedisBackend backend(larder::RedisOptions{});
    policies(backend);
    larder::RedisBus bus(larder::RedisOptions{});
    larder::RedisTrackingBus tracking(backend);
    larder::RedisClusterBackend cluster(larder::RedisClusterOptions{});
    larder::CacheAside<User, larder::RedisClusterBackend, larder::Lock> on_cluster(cluster);
    (void)on_cluster.get("k", load_user);
}
#endif

#if defined(LARDER_CONSUMER_WITH_CRYPTO)
void sealed(const larder::AuthenticationOptions& keys) {
    larder::MemoryBackend inner;
    larder::Authenticated<larder::MemoryBackend> backend(inner, keys);
    policies(backend);
}
#endif

}  // namespace strict

#if defined(STRICT_HAVE_CATCH2)
LARDER_BACKEND_CONFORMANCE_TESTS(strict::ConformanceFixture, "[strict]");
#endif
