// The Invalidator concept and the shipped invalidators (Tags, Ttl, EntityVersions,
// Events), composed with Invalidators<...>, and one written here the way a user would
// write it from docs/invalidation.md.
#include <larder/larder.hpp>
#include <larder/policy/write_through.hpp>

#include <atomic>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "support/backends.hpp"
#include "support/eventually.hpp"
#include "support/fake_db.hpp"

using namespace std::chrono_literals;
using larder::Millis;
using larder::test::FakeDb;
using larder::test::Gate;
using larder::test::options_for;

namespace {

// A loader that counts its calls and returns "<key>#<call>".
struct CountingLoader {
    std::atomic<int> calls{0};
    auto operator()(const std::string& key) {
        return
            [this, key] { return std::optional<std::string>(key + "#" + std::to_string(++calls)); };
    }
};

// Written against docs/invalidation.md: every key "<tenant>/<rest>" depends on its
// tenant's version, so one bump drops a whole tenant's entries.
struct TenantVersions {
    static std::string version_name(std::string_view tenant) {
        return "tenant\x1f" + std::string(tenant);
    }
    void versions_of(std::string_view key, std::span<const std::string>,
                     std::vector<std::string>& names) {
        if (const auto slash = key.find('/'); slash != std::string_view::npos) {
            names.push_back(version_name(key.substr(0, slash)));
        }
    }
    void invalidated(std::string_view) {}
    void bumped(std::string_view) {}
};
static_assert(larder::Invalidator<TenantVersions>);

// Records what an Events invalidator published.
struct RecordingBus {
    std::mutex mutex;
    std::vector<std::string> messages;
    bool fail = false;
    void publish(std::string_view m) {
        if (fail) throw larder::BackendError("bus down");
        std::lock_guard lock(mutex);
        messages.emplace_back(m);
    }
    larder::BusSubscription subscribe(larder::BusHandlers) { return {}; }
    [[nodiscard]] bool connected() const { return true; }
};
static_assert(larder::InvalidationBus<RecordingBus>);

}  // namespace

BACKEND_TEST_CASE("A user-written invalidator drops every entry of a tenant with one bump",
                  "[invalidator]") {
    TestType fx;
    larder::CacheAside<std::string, decltype(fx.backend), TenantVersions> cache(fx.backend,
                                                                                options_for(fx));
    CountingLoader load;
    REQUIRE(cache.get("acme/users/1", load("acme/users/1")) == "acme/users/1#1");
    REQUIRE(cache.get("acme/orders/9", load("acme/orders/9")) == "acme/orders/9#2");
    REQUIRE(cache.get("initech/users/1", load("initech/users/1")) == "initech/users/1#3");
    REQUIRE(cache.get("acme/users/1", load("acme/users/1")) == "acme/users/1#1");  // a hit

    cache.invalidate_version(TenantVersions::version_name("acme"));
    REQUIRE(cache.get("acme/users/1", load("acme/users/1")) == "acme/users/1#4");
    REQUIRE(cache.get("acme/orders/9", load("acme/orders/9")) == "acme/orders/9#5");
    REQUIRE(cache.get("initech/users/1", load("initech/users/1")) == "initech/users/1#3");
    REQUIRE(load.calls == 5);
}

BACKEND_TEST_CASE("A Lock waiter's poll admits by the invalidator's versions too",
                  "[invalidator][stampede][lock]") {
    TestType fx;
    FakeDb db;
    db.write("acme/k", "v1");
    // Two objects on one store: two processes.
    larder::CacheAside<std::string, decltype(fx.backend), TenantVersions> holder(fx.backend,
                                                                                 options_for(fx));
    larder::CacheAside<std::string, decltype(fx.backend), TenantVersions, larder::Lock> waiter(
        fx.backend, options_for(fx), larder::Lock({.max_wait = 30s}));
    Gate loading, release;
    std::thread h([&] {
        (void)holder.get("acme/k", [&] {
            auto row = db.read("acme/k");  // v1, read before the write below
            loading.open();
            release.wait();
            return row;
        });
    });
    loading.wait();
    db.write("acme/k", "v2");
    holder.invalidate_version(TenantVersions::version_name("acme"));
    std::optional<std::string> got;
    std::thread w([&] { got = waiter.get("acme/k", [&] { return db.read("acme/k"); }); });
    // The waiter is polling the holder's lease; the holder fills v1, stamped with the
    // version from before the bump.
    REQUIRE(larder::test::eventually([&] { return waiter.stats().lease_waits == 1; }, 10s));
    release.open();
    h.join();
    w.join();
    REQUIRE(got == "v2");
}

BACKEND_TEST_CASE("EntityVersions: one bump drops every key of an entity, others stay",
                  "[invalidator][version_keys]") {
    TestType fx;
    using larder::EntityVersions;
    larder::CacheAside<std::string, decltype(fx.backend), EntityVersions> cache(
        fx.backend, options_for(fx), EntityVersions([](std::string_view key) {
            return std::string(key.substr(0, key.find('/')));
        }));
    CountingLoader load;
    REQUIRE(cache.get("user:1/profile", load("p1")) == "p1#1");
    REQUIRE(cache.get("user:1/posts", load("q1")) == "q1#2");
    REQUIRE(cache.get("user:2/profile", load("p2")) == "p2#3");
    cache.invalidate_version(EntityVersions::version_name("user:1"));
    REQUIRE(cache.get("user:1/profile", load("p1")) == "p1#4");
    REQUIRE(cache.get("user:1/posts", load("q1")) == "q1#5");
    REQUIRE(cache.get("user:2/profile", load("p2")) == "p2#3");
    // The version vanishing (eviction, FLUSHALL) makes its entries miss, never resurrect.
    fx.backend.del(cache.version_key(EntityVersions::version_name("user:2")));
    REQUIRE(cache.get("user:2/profile", load("p2")) == "p2#6");
}

BACKEND_TEST_CASE("Ttl gives keys their own TTL; others keep the policy's", "[invalidator][ttl]") {
    TestType fx;
    larder::CacheAside<std::string, decltype(fx.backend), larder::Ttl> cache(
        fx.backend, options_for(fx, {.ttl = 60s}),
        larder::Ttl([](std::string_view key) -> std::optional<Millis> {
            if (key.starts_with("session:")) return 150ms;
            return std::nullopt;
        }));
    CountingLoader load;
    REQUIRE(cache.get("session:1", load("s")) == "s#1");
    REQUIRE(cache.get("user:1", load("u")) == "u#2");
    // Past the session TTL (on Redis real time passes; wait for the reload itself).
    if constexpr (TestType::manual_time) {
        fx.advance(200ms);
        REQUIRE(cache.get("session:1", load("s")) == "s#3");
    } else {
        REQUIRE(larder::test::eventually([&] { return cache.get("session:1", load("s")) != "s#1"; },
                                         10s));
    }
    REQUIRE(cache.get("user:1", load("u")) == "u#2");
}

TEST_CASE("Events publishes every invalidation and bump; a failing bus fails no write",
          "[invalidator][events][memory]") {
    larder::test::MemoryFixture fx;
    RecordingBus bus;
    using Inv = larder::Invalidators<larder::Tags, larder::Events<RecordingBus>>;
    larder::CacheAside<std::string, larder::MemoryBackend, Inv> cache(
        fx.backend, options_for(fx, {.key_prefix = "app:"}),
        Inv(larder::Tags{}, larder::Events<RecordingBus>(bus)));
    const std::vector<std::string> tags{"team:7"};
    REQUIRE(cache.get("k", tags, [] { return std::optional<std::string>("v"); }) == "v");
    cache.invalidate("k");
    cache.invalidate_tag("team:7");
    REQUIRE(bus.messages == std::vector<std::string>{"kapp:k:k", "vapp:m:v\x1ftag\x1fteam:7"});

    bus.fail = true;
    REQUIRE_NOTHROW(cache.invalidate("k"));
    REQUIRE(cache.invalidator().get<larder::Events<RecordingBus>>().failed() == 1);
    // Tags still work inside the composition.
    REQUIRE(cache.get("k", tags, [] { return std::optional<std::string>("w"); }) == "w");
    REQUIRE(cache.get("k", tags, [] { return std::optional<std::string>("x"); }) == "w");
    cache.invalidate_tag("team:7");
    REQUIRE(cache.get("k", tags, [] { return std::optional<std::string>("y"); }) == "y");
}

TEST_CASE("WriteThrough's put tells its invalidator",
          "[invalidator][events][write_through][memory]") {
    larder::test::MemoryFixture fx;
    RecordingBus bus;
    using Inv = larder::Events<RecordingBus>;
    larder::WriteThrough<std::string, larder::MemoryBackend, Inv> cache(
        fx.backend, {.cache = {.key_prefix = "app:", .clock = &fx.clock}}, {}, {}, Inv(bus));
    (void)cache.put("k", "v", [] {});
    REQUIRE(bus.messages == std::vector<std::string>{"kapp:k:k"});
}

TEST_CASE("WriteBehind's puts tell its invalidator, and a bump reaches their flushed copies",
          "[invalidator][events][write_behind][memory]") {
    larder::test::MemoryFixture fx;
    RecordingBus bus;
    using Inv = larder::Invalidators<larder::EntityVersions, larder::Events<RecordingBus>>;
    std::vector<std::string> flushed;
    larder::WriteBehind<std::string, larder::MemoryBackend, Inv> cache(
        fx.backend,
        [&](std::span<const larder::DirtyEntry<std::string>> batch) {
            for (const auto& e : batch) flushed.push_back(e.key);
            return larder::BatchResult{};
        },
        {.start_flusher = false, .cache = {.key_prefix = "app:", .clock = &fx.clock}}, {}, {},
        Inv(larder::EntityVersions(
                [](std::string_view key) { return std::string(key.substr(0, key.find('/'))); }),
            larder::Events<RecordingBus>(bus)));
    (void)cache.put("acme/k", "v1");
    (void)cache.modify(
        "acme/k", [](std::string& v) { v += "+"; },
        [] { return std::optional<std::string>("db"); });
    REQUIRE(bus.messages == std::vector<std::string>{"kapp:k:acme/k", "kapp:k:acme/k"});
    REQUIRE(cache.flush().claimed == 1);
    int loads = 0;
    auto load = [&] {
        ++loads;
        return std::optional<std::string>("from db");
    };
    REQUIRE(cache.get("acme/k", load) == "v1+");
    REQUIRE(loads == 0);
    // The flushed copy carries acme's version: bumping it retires the copy.
    cache.invalidate_version(larder::EntityVersions::version_name("acme"));
    REQUIRE(cache.get("acme/k", load) == "from db");
    REQUIRE(loads == 1);
}

TEST_CASE("Near drops the keys of a tag bumped through another process's Events",
          "[invalidator][events][near][memory]") {
    larder::test::MemoryFixture fx;
    larder::MemoryBus bus;
    using Inv = larder::Invalidators<larder::Tags, larder::Events<larder::MemoryBus>>;
    using Policy = larder::CacheAside<std::string, larder::MemoryBackend, Inv>;
    Policy reader_policy(fx.backend, options_for(fx),
                         Inv(larder::Tags{}, larder::Events<larder::MemoryBus>(bus)));
    Policy writer(fx.backend, options_for(fx),
                  Inv(larder::Tags{}, larder::Events<larder::MemoryBus>(bus)));
    larder::Near<Policy, larder::MemoryBus> near(reader_policy, bus);
    const std::vector<std::string> tags{"team:7"};
    CountingLoader load;
    REQUIRE(near.get("k", tags, load("k")) == "k#1");
    REQUIRE(near.get("k", tags, load("k")) == "k#1");  // from L1
    writer.invalidate_tag("team:7");                   // another process, through Events
    REQUIRE(near.get("k", tags, load("k")) == "k#2");
}

namespace {
struct ValueLoader {
    std::optional<std::string> operator()() const { return "v"; }
};
template <class C>
constexpr bool takes_tags = requires(C& c, std::span<const std::string> tags) {
    c.get(std::string_view("k"), tags, ValueLoader{});
};
}  // namespace

TEST_CASE("A policy without a tag-stamping invalidator does not take tags", "[invalidator][tags]") {
    using Plain = larder::CacheAside<std::string, larder::MemoryBackend, larder::NoInvalidator>;
    using Tagged = larder::CacheAside<std::string, larder::MemoryBackend>;
    STATIC_REQUIRE_FALSE(takes_tags<Plain>);
    STATIC_REQUIRE(takes_tags<Tagged>);
    STATIC_REQUIRE(std::same_as<Tagged::invalidator_type, larder::Tags>);
}
