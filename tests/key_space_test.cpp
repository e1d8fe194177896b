// The store is shared: other caches, other tenants, and callers whose keys come from
// outside. These tests feed larder's own key spellings back in as caller keys and check
// that nothing larder keeps for itself changes, that tenants on one Redis (keys, bus
// channels and messages) stay apart, that an ACL limited to a tenant's prefix refuses
// nothing larder does, and that oversized values are served without being cached.
#include <larder/backend/redis/write_behind_store.hpp>
#include <larder/larder.hpp>
#include <larder/near/near.hpp>
#include <larder/near/redis_bus.hpp>

#include <map>
#include <mutex>
#include <set>
#include <string>
#include <vector>

#include "support/backends.hpp"
#include "support/eventually.hpp"
#include "support/fake_db.hpp"
#include "support/redis_fixture.hpp"

using namespace std::chrono_literals;
using larder::Millis;
using larder::test::eventually;
using larder::test::RedisServer;

namespace {

using Str = std::optional<std::string>;

larder::RedisOptions tenant(const RedisServer& server, std::string prefix) {
    larder::RedisOptions o;
    o.host = server.host();
    o.port = server.port();
    o.command_timeout = 2s;
    o.key_prefix = std::move(prefix);
    return o;
}

// Every key in the server with its DUMP (value and type, not TTL).
std::map<std::string, std::string> snapshot(const RedisServer& server) {
    std::map<std::string, std::string> out;
    const auto keys = server.query({"KEYS", "*"});
    for (const auto& k : keys.elements) out[k.text] = server.query({"DUMP", k.text}).text;
    return out;
}

// A key and every tail of it that starts at, or right after, a separator: the spellings
// a caller would use to aim at it through a prefix.
std::set<std::string> spellings_of(const std::string& key) {
    std::set<std::string> out{key};
    for (std::size_t i = 0; i < key.size(); ++i) {
        if (key[i] == ':' || key[i] == '}' || key[i] == '{' || key[i] == '\x1f') {
            out.insert(key.substr(i));
            out.insert(key.substr(i + 1));
        }
    }
    return out;
}

std::string printable(std::string_view s) {
    std::string out;
    for (const char c : s) {
        if (c == '\x1f') {
            out += "\\x1f";
        } else if (c == '\x1e') {
            out += "\\x1e";
        } else {
            out += c;
        }
    }
    return out;
}

class Rows {
public:
    larder::BatchResult write(std::span<const larder::DirtyEntry<std::string>> batch) {
        std::lock_guard lock(mutex_);
        for (const auto& e : batch) rows_[e.key] = e.value;
        return {};
    }
    std::map<std::string, std::string> rows() const {
        std::lock_guard lock(mutex_);
        return rows_;
    }

private:
    mutable std::mutex mutex_;
    std::map<std::string, std::string> rows_;
};

}  // namespace

TEST_CASE("No caller key reaches a key larder keeps for itself", "[security][keys][redis]") {
    RedisServer server;
    larder::RedisBackend redis(tenant(server, "t:"));
    using Plain = larder::CacheAside<std::string, larder::RedisBackend>;
    Plain plain(redis);  // no prefix: the case where the caller's key is the whole key
    Plain tagged(redis, {.key_prefix = "c:", .grace = 1h});
    larder::CacheAside<std::string, larder::RedisBackend, larder::EntityVersions> entities(
        redis, {.key_prefix = "e:"});
    larder::WriteThrough<std::string, larder::RedisBackend> wt(
        redis, {.cache = {.key_prefix = "wt:"}, .max_lock_wait = 20ms});
    Rows db;
    larder::WriteBehind<std::string, larder::RedisBackend> wb(
        redis, [&](auto batch) { return db.write(batch); },
        {.start_flusher = false, .cache = {.key_prefix = "wb:"}});
    larder::VersionKeys<larder::RedisBackend> versions(redis, {.prefix = "c:"});

    // larder's own keys, of every kind: tag versions and the bump counter, an entity
    // version, a version key, a write-behind queue, and refresh and write leases.
    auto row = [] { return Str("row"); };
    REQUIRE(tagged.get("a", {"t1"}, row) == "row");
    tagged.invalidate_tag("t0");
    REQUIRE(entities.get("u/1", row) == "row");
    (void)versions.current("u");
    REQUIRE(wb.put("x", "queued") > 0);
    REQUIRE(wt.put("y", "v", [] {}) == larder::WriteOutcome::cached);
    const std::string lease = larder::envelope::make_lease(larder::random_token(), {}, 0);
    for (const auto& sibling :
         {tagged.keys().sibling("a", "refresh"), wt.keys().sibling("y", "write")}) {
        server.query({"SET", redis.stored_key(sibling), lease});
    }

    const auto before = snapshot(server);
    std::vector<std::string> internal;
    std::set<std::string> hostile;
    for (const auto& [key, dump] : before) {
        const std::string_view in_tenant = std::string_view(key).substr(2);  // after "t:"
        const bool entry = plain.keys().key_of(in_tenant) || tagged.keys().key_of(in_tenant) ||
                           entities.keys().key_of(in_tenant) || wt.keys().key_of(in_tenant) ||
                           wb.keys().key_of(in_tenant);
        if (entry) continue;
        internal.push_back(key);
        for (auto& s : spellings_of(key)) hostile.insert(std::move(s));
    }
    // Versions, the bump counter, an entity version, a version key, two siblings and the
    // queue's keys at least.
    REQUIRE(internal.size() >= 10);

    for (const auto& key : hostile) {
        INFO("caller key '" << printable(key) << "'");
        auto hostile_row = [] { return Str("hostile"); };
        for (Plain* cache : {&plain, &tagged}) {
            (void)cache->get(key, hostile_row);
            (void)cache->get(key, {"t1"}, hostile_row);
            (void)cache->get_many(std::vector<std::string>{key}, [](auto keys) {
                return std::vector<Str>(keys.size(), Str("hostile"));
            });
            cache->set(key, "hostile");
            cache->invalidate(key);
            cache->invalidate_after(key, [] {});
        }
        (void)entities.get(key, hostile_row);
        entities.invalidate(key);
        try {
            (void)wt.put(key, "hostile", [] {});
        } catch (const larder::WriteConflictError&) {
            // The write lease planted above, honoured: the key spells the one it guards.
        }
        wt.invalidate(key);
        (void)wb.get(key, hostile_row);
    }

    const auto after = snapshot(server);
    for (const auto& key : internal) {
        INFO("larder's key '" << printable(key) << "'");
        REQUIRE(after.count(key) == 1);
        CHECK(after.at(key) == before.at(key));
    }

    // Write-behind puts under the same spellings reach the writer under the caller's keys,
    // and the put queued before them is flushed as it was.
    for (const auto& key : hostile) (void)wb.put(key, "h:" + key);
    while (wb.flush().claimed > 0) {
    }
    const auto rows = db.rows();
    REQUIRE(rows.at("x") == "queued");
    REQUIRE(rows.size() == hostile.size() + (hostile.count("x") ? 0 : 1));
    for (const auto& key : hostile) {
        INFO("caller key '" << printable(key) << "'");
        REQUIRE(rows.at(key) == "h:" + key);
    }
}

BACKEND_TEST_CASE("A prefix must end in ':', and one cache's keys cannot spell another's",
                  "[security][keys]") {
    TestType fx;
    using Cache = larder::CacheAside<std::string, decltype(fx.backend)>;
    // "tB" and "tB:" would otherwise be one namespace, or reach each other's keys.
    REQUIRE_THROWS_AS(Cache(fx.backend, options_for(fx, {.key_prefix = "tB"})),
                      larder::ConfigError);
    Cache outer(fx.backend, options_for(fx, {.key_prefix = "tB:"}));
    Cache inner(fx.backend, options_for(fx, {.key_prefix = "tB:x:"}));
    int loads = 0;
    auto load = [&] {
        ++loads;
        return Str("inner's row");
    };
    REQUIRE(inner.get("k", load) == "inner's row");
    for (const std::string key : {"x:k", "x:k:k", ":x:k:k", "k:k", "x:m:v\x1f", "k"}) {
        outer.invalidate(key);
        outer.set(key, "planted");
    }
    REQUIRE(inner.get("k", load) == "inner's row");
    REQUIRE(loads == 1);
}

TEST_CASE("A Redis tenant's prefix must end in ':'", "[security][keys][redis]") {
    larder::RedisOptions o;
    o.key_prefix = "tB";
    REQUIRE_THROWS_AS(larder::RedisBackend(o), larder::ConfigError);
    REQUIRE_THROWS_AS(larder::RedisBus(o), larder::ConfigError);
}

TEST_CASE("A prefix with a '{' that opens no hash tag is refused", "[security][keys][memory]") {
    larder::MemoryBackend store;
    using Cache = larder::CacheAside<std::string, larder::MemoryBackend>;
    REQUIRE_THROWS_AS(Cache(store, {.key_prefix = "app{"}), larder::ConfigError);
    REQUIRE_THROWS_AS(Cache(store, {.key_prefix = "a{}b:"}), larder::ConfigError);
    REQUIRE_NOTHROW(Cache(store, {.key_prefix = "{app}:"}));
}

TEST_CASE("Tenants on one Redis do not evict each other's L1", "[security][l1][redis]") {
    RedisServer server;
    larder::RedisBackend store_a(tenant(server, "a:")), store_b(tenant(server, "b:"));
    larder::RedisBus bus_a(tenant(server, "a:")), bus_b(tenant(server, "b:"));
    REQUIRE(bus_a.channel() != bus_b.channel());
    REQUIRE(bus_a.channel().starts_with("a:"));
    larder::CacheAside<std::string, larder::RedisBackend> cache_a(store_a), cache_b(store_b),
        watcher_cache(store_b);
    larder::Near a(cache_a, bus_a), b(cache_b, bus_b), watcher(watcher_cache, bus_b);
    REQUIRE(bus_a.wait_connected(5s));
    REQUIRE(bus_b.wait_connected(5s));

    auto row = [] { return Str("row"); };
    for (int i = 0; i < 20; ++i) REQUIRE(b.get("k" + std::to_string(i), row) == "row");
    REQUIRE(watcher.get("sentinel", row) == "row");
    for (int i = 0; i < 20; ++i) a.invalidate("k" + std::to_string(i));
    // Tenant b's own message, published after a's: once the watcher has it, anything a
    // published that could reach b's channel has been delivered too.
    b.invalidate("sentinel");
    REQUIRE(eventually([&] { return !watcher.l1().get(cache_b.full_key("sentinel")); }));

    const auto hits = b.l1().stats().hits;
    for (int i = 0; i < 20; ++i) REQUIRE(b.get("k" + std::to_string(i), row) == "row");
    REQUIRE(b.l1().stats().hits == hits + 20);  // all 20 still in b's L1
}

TEST_CASE("A bus message carries the entry's full stored key, tenant prefix included",
          "[security][l1][redis]") {
    RedisServer server;
    larder::RedisBackend store(tenant(server, "app:"));
    larder::RedisBus bus(tenant(server, "app:"));
    // A listener without a prefix on the tenant's channel hears the wire as it is.
    larder::RedisBus wire(tenant(server, ""), {.channel = "app:larder:invalidate"});
    larder::CacheAside<std::string, larder::RedisBackend> cache(store, {.key_prefix = "users:"});
    std::vector<std::string> heard, raw;
    std::mutex heard_mutex;
    auto record = [&](std::vector<std::string>& into) {
        return larder::BusHandlers{.on_message = [&](std::string_view m) {
            std::lock_guard lock(heard_mutex);
            into.emplace_back(m);
        }};
    };
    auto s1 = bus.subscribe(record(heard));
    auto s2 = wire.subscribe(record(raw));
    REQUIRE(bus.wait_connected(5s));
    REQUIRE(wire.wait_connected(5s));
    larder::Near near(cache, bus);

    near.invalidate("42");
    near.invalidate_tag("team");
    REQUIRE(eventually([&] {
        std::lock_guard lock(heard_mutex);
        return heard.size() == 2 && raw.size() == 2;
    }));
    std::lock_guard lock(heard_mutex);
    REQUIRE(raw[0] == "kapp:users:k:42");
    REQUIRE(raw[1] == "vapp:users:m:v\x1ftag\x1fteam");
    // The tenant's subscribers hear the key as the cache stores it.
    REQUIRE(heard[0] == "kusers:k:42");
    REQUIRE(heard[1] == "vusers:m:v\x1ftag\x1fteam");
}
