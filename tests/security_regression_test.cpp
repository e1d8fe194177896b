// Where the key layout, tenants, size limits, the write-behind queue and authenticated
// entries meet: each case was a demonstrated violation of docs/security.md before its fix.
#include <larder/backend/redis/write_behind_store.hpp>
#include <larder/larder.hpp>
#include <larder/near/near.hpp>
#include <larder/near/redis_bus.hpp>
#include <larder/policy/write_behind.hpp>

#include <map>
#include <mutex>
#include <span>
#include <string>
#include <vector>

#include "support/catch.hpp"
#include "support/eventually.hpp"
#include "support/redis_fixture.hpp"
#include "support/redis_server.hpp"

using namespace std::chrono_literals;
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

auto writer_for(Rows& rows) {
    return [&rows](std::span<const larder::DirtyEntry<std::string>> batch) {
        return rows.write(batch);
    };
}

larder::WriteBehindOptions quiet(std::string name) {
    larder::WriteBehindOptions o;
    o.name = std::move(name);
    o.start_flusher = false;
    o.drain_timeout = 0ms;
    o.cache.log.level = larder::LogLevel::off;
    return o;
}

}  // namespace

// Guarantee 1 (tenants): "nor another tenant's keys (distinct RedisOptions::key_prefix)".
// docs/FORMAT.md: "a tenant `tB` cannot reach tenant `tB:`'s keys".
// Guarantee 1 (queue keys): "even a cache prefix spelled like a queue's cannot reach it".
TEST_CASE("No caller key of any cache reaches a write-behind queue key",
          "[security][regression][keys][write_behind][redis]") {
    RedisServer server;
    larder::RedisBackend redis(tenant(server, "app:"));
    Rows rows;
    // A queue name with its own hash tag, as docs/write-paths.md suggests for Cluster.
    using WB = larder::WriteBehind<std::string, larder::RedisBackend>;
    REQUIRE_THROWS_AS(WB(redis, writer_for(rows), quiet("{lb}:k")), larder::ConfigError);
    larder::WriteBehind<std::string, larder::RedisBackend> wb(redis, writer_for(rows),
                                                              quiet("{lb}"));
    wb.put("x", "v");
    const std::string values = wb.store().queue_key("values");
    REQUIRE(server.query({"EXISTS", "app:" + values}).integer == 1);
    // Another cache on the tenant, its prefix spelled like the queue's.
    larder::CacheAside<std::string, larder::RedisBackend> cache(redis,
                                                                {.key_prefix = "larder:wb:{lb}:"});
    for (const std::string key : {"values", "k:values", ":values", "{lb}:values"}) {
        cache.invalidate(key);  // a caller key
    }
    INFO("queue key " << values << ", cache entry key " << cache.full_key("values"));
    CHECK(server.query({"EXISTS", "app:" + values}).integer == 1);
    CHECK(wb.queue_stats().pending == 1);
}

// Guarantee 5 / write-behind: one cache's flusher must not lose another cache's writes.
// Two caches on one tenant, distinct non-nested prefixes, both with the default queue name.
TEST_CASE("A flusher does not dead-letter another cache's writes",
          "[security][regression][write_behind][redis]") {
    RedisServer server;
    larder::RedisBackend redis(tenant(server, "app:"));
    Rows rows_a, rows_b;
    auto oa = quiet("");  // named after the prefix
    oa.cache.key_prefix = "users:";
    auto ob = quiet("");
    ob.cache.key_prefix = "orders:";
    larder::WriteBehind<std::string, larder::RedisBackend> a(redis, writer_for(rows_a), oa);
    larder::WriteBehind<std::string, larder::RedisBackend> b(redis, writer_for(rows_b), ob);
    b.put("o1", "order 1");
    const auto report = a.flush();  // cache a's flusher (thread or call) runs first
    INFO("a's flush: claimed " << report.claimed << ", dead-lettered " << report.dead_lettered);
    (void)b.flush();
    CHECK(rows_b.rows() == std::map<std::string, std::string>{{"o1", "order 1"}});
    CHECK(b.list_dead().empty());
}

// Guarantee 4: modify/increment of a value over max_value_bytes "refused with
// ValueTooLargeError with nothing queued".
TEST_CASE("Modify whose base row is over max_value_bytes", "[security][regression][size][memory]") {
    larder::MemoryBackend backend;
    Rows rows;
    auto o = quiet("big-base");
    o.cache.max_value_bytes = 1024;
    larder::WriteBehind<std::string, larder::MemoryBackend> wb(backend, writer_for(rows), o);
    int loads = 0;
    auto load = [&] {
        ++loads;
        return Str(std::string(4096, 'x'));
    };
    std::string error;
    try {
        (void)wb.modify(
            "k", [](std::string& v) { v += "y"; }, load);
    } catch (const larder::ValueTooLargeError&) {
        error = "ValueTooLargeError";
    } catch (const larder::WriteConflictError& e) {
        error = std::string("WriteConflictError: ") + e.what();
    }
    INFO("loader ran " << loads << " times");
    CHECK(error == "ValueTooLargeError");
    CHECK(loads <= 2);
    CHECK(wb.queue_stats().pending == 0);
}

TEST_CASE("Modify of a row over max_value_bytes is refused even when the change shrinks it",
          "[security][regression][size][memory]") {
    larder::MemoryBackend backend;
    Rows rows;
    auto o = quiet("shrink");
    o.cache.max_value_bytes = 1024;
    larder::WriteBehind<std::string, larder::MemoryBackend> wb(backend, writer_for(rows), o);
    int loads = 0;
    auto load = [&] {
        ++loads;
        return Str(std::string(4096, 'x'));
    };
    // The row cannot be cached, so nothing fences the change: refused, whatever its size
    // after, rather than retried until it gives up.
    REQUIRE_THROWS_AS(wb.modify(
                          "k", [](std::string& v) { v = "small"; }, load),
                      larder::ValueTooLargeError);
    REQUIRE(loads == 1);
    REQUIRE(wb.queue_stats().pending == 0);
}

TEST_CASE("Bytes that are not a version at a VersionKeys key are replaced",
          "[security][regression][memory]") {
    larder::MemoryBackend store;
    larder::VersionKeys<larder::MemoryBackend> versions(store, {.prefix = "c:"});
    store.set(versions.version_key("user:1"), "planted", larder::no_expiry);
    const auto v = versions.current("user:1");
    REQUIRE(v != 0);
    REQUIRE(store.get(versions.version_key("user:1"))->bytes == std::to_string(v));
}

#if defined(LARDER_TEST_HAVE_CRYPTO)
#include <larder/backend/authenticated.hpp>

namespace {
larder::AuthenticationOptions probe_keys() {
    return {.keys = {larder::MacKey{1, std::string(32, '\x11')}}, .write_key_id = 1};
}
}  // namespace

// Guarantee 6: planted bytes of any kind - siblings (refresh and write leases) included -
// are never trusted under Authenticated<B>.
TEST_CASE("A planted write-lease sibling does not block WriteThrough::put",
          "[security][regression][auth][memory]") {
    larder::MemoryBackend raw;
    larder::Authenticated<larder::MemoryBackend> auth(raw, probe_keys());
    larder::WriteThroughOptions o;
    o.max_lock_wait = 100ms;
    larder::WriteThrough<std::string, larder::Authenticated<larder::MemoryBackend>> wt(auth, o);
    // Bytes no one sealed, without a TTL, where the write lease of "k" lives.
    raw.set(wt.keys().sibling("k", "write"), "planted", larder::no_expiry);
    int db_writes = 0;
    std::string error;
    try {
        (void)wt.put("k", "v", [&] { ++db_writes; });
    } catch (const std::exception& e) {
        error = e.what();
    }
    INFO("put threw: " << error);
    CHECK(error.empty());
    CHECK(db_writes == 1);
}

TEST_CASE("A planted refresh-lease sibling does not stop refreshes",
          "[security][regression][auth][memory]") {
    larder::ManualClock clock;
    larder::MemoryBackend raw(larder::MemoryBackendOptions{.clock = &clock});
    larder::Authenticated<larder::MemoryBackend> auth(raw, probe_keys());
    larder::CacheAside<std::string, larder::Authenticated<larder::MemoryBackend>> cache(
        auth, {.ttl = 1s, .grace = 1h, .clock = &clock});
    int control = 0;
    auto load_control = [&] { return Str("row v" + std::to_string(++control)); };
    int version = 0;
    auto load = [&] { return Str("row v" + std::to_string(++version)); };
    REQUIRE(cache.get("control", load_control) == "row v1");
    REQUIRE(cache.get("k", load) == "row v1");
    raw.set(cache.keys().sibling("k", "refresh"), "planted", larder::no_expiry);
    clock.advance(10s);  // stale, within grace: the next read refreshes
    (void)cache.get("control", load_control);
    cache.wait_for_background_refreshes();
    REQUIRE(control == 2);  // without the planted sibling the refresh happens
    (void)cache.get("k", load);
    cache.wait_for_background_refreshes();
    clock.advance(10s);
    (void)cache.get("k", load);
    cache.wait_for_background_refreshes();
    INFO("loads: " << version);
    CHECK(version >= 2);
    CHECK(cache.get("k", load) != "row v1");
}
TEST_CASE("A planted VersionKeys version is replaced, not fatal",
          "[security][regression][auth][memory]") {
    larder::MemoryBackend raw;
    larder::Authenticated<larder::MemoryBackend> auth(raw, probe_keys());
    larder::VersionKeys<larder::Authenticated<larder::MemoryBackend>> vk(auth, {.prefix = "c:"});
    raw.set(vk.version_key("user:1"), "planted", larder::no_expiry);
    std::string error;
    try {
        (void)vk.key("user:1");
    } catch (const std::exception& e) {
        error = e.what();
    }
    INFO("VersionKeys::key threw: " << error);
    CHECK(error.empty());
}
#endif
