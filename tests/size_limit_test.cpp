// max_value_bytes: a value too large for the store is served to its caller but never
// cached, whether it comes from a load, a refresh or a write-through put.
#include <larder/larder.hpp>

#include <string>

#include "support/backends.hpp"
#include "support/fake_db.hpp"

using namespace std::chrono_literals;

namespace {
using Str = std::optional<std::string>;
}  // namespace

BACKEND_TEST_CASE("A loaded value over max_value_bytes is served but not cached",
                  "[security][size]") {
    TestType fx;
    larder::CacheAside<std::string, decltype(fx.backend)> cache(
        fx.backend, options_for(fx, {.max_value_bytes = 1024}));
    int loads = 0;
    auto big = [&] {
        ++loads;
        return Str(std::string(4096, 'x'));
    };
    REQUIRE(cache.get("k", big)->size() == 4096);
    REQUIRE(cache.stats().too_large == 1);
    REQUIRE(cache.stats().fills == 0);
    REQUIRE_FALSE(fx.backend.get(cache.full_key("k")));  // the lease went too
    REQUIRE(cache.get("k", big)->size() == 4096);
    REQUIRE(loads == 2);
    // A small value under the same cache is cached as usual.
    REQUIRE(cache.get("small", [] { return Str("s"); }) == "s");
    REQUIRE(cache.stats().fills == 1);
}

TEST_CASE("A refresh that loads a value over max_value_bytes removes the stale one",
          "[security][size][memory]") {
    larder::test::MemoryFixture fx;
    larder::CacheAside<std::string, larder::MemoryBackend> cache(
        fx.backend, options_for(fx, {.ttl = 1s, .grace = 1h, .max_value_bytes = 1024}));
    REQUIRE(cache.get("k", [] { return Str("small"); }) == "small");
    fx.advance(2s);  // stale, within grace: the next read refreshes
    REQUIRE(cache.get("k", [] { return Str(std::string(4096, 'x')); })->size() == 4096);
    REQUIRE(cache.stats().too_large == 1);
    // Left in place, "small" would be served stale in the big value's stead.
    int loads = 0;
    REQUIRE(cache.get("k", [&] {
        ++loads;
        return Str("next");
    }) == "next");
    REQUIRE(loads == 1);
}

BACKEND_TEST_CASE("A write-through put over max_value_bytes reaches the database, not the cache",
                  "[security][size][write_through]") {
    TestType fx;
    larder::WriteThrough<std::string, decltype(fx.backend)> wt(
        fx.backend, {.cache = options_for(fx, {.max_value_bytes = 1024})});
    REQUIRE(wt.put("k", "small", [] {}) == larder::WriteOutcome::cached);
    std::string db;
    const std::string big(4096, 'x');
    REQUIRE(wt.put("k", big, [&] { db = big; }) == larder::WriteOutcome::invalidated);
    REQUIRE(db == big);
    REQUIRE_FALSE(fx.backend.get(wt.full_key("k")));  // neither the old value nor a marker
    REQUIRE(wt.get("k", [&] { return Str(db); }) == big);
}
