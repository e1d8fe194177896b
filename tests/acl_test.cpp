// A tenant on a shared Redis, limited by an ACL to its prefix and to the commands an
// application needs: every policy, guard, invalidator and the L1 work with nothing
// refused, a subscription the ACL refuses is reported instead of retried silently, and a
// write through Near whose message cannot be published does not report a failure.
#include <larder/backend/redis/write_behind_store.hpp>
#include <larder/larder.hpp>
#include <larder/near/near.hpp>
#include <larder/near/redis_bus.hpp>

#include <atomic>
#include <map>
#include <mutex>
#include <string>
#include <vector>

#include "support/catch.hpp"
#include "support/eventually.hpp"
#include "support/redis_fixture.hpp"

using namespace std::chrono_literals;
using larder::test::eventually;
using larder::test::RedisServer;

namespace {

using Str = std::optional<std::string>;

RedisServer tenant_server() {
    return RedisServer({
        .acl_file_contents = "user default on nopass ~* &* +@all\n"
                             "user app on >app-pw ~p:* &p:* +@all -@admin -@dangerous +info\n",
    });
}

larder::RedisOptions as_app(const RedisServer& server, std::string prefix = "p:") {
    larder::RedisOptions o;
    o.host = server.host();
    o.port = server.port();
    o.user = "app";
    o.password = "app-pw";
    o.command_timeout = 2s;
    o.key_prefix = std::move(prefix);
    return o;
}

// What the ACL refused since the server started, one line per entry.
std::string acl_log(const RedisServer& server) {
    return server.command({"ACL", "LOG"});
}

}  // namespace

TEST_CASE("Under a tenant ACL every policy, guard, invalidator and the L1 run unrefused",
          "[security][acl][redis]") {
    RedisServer server = tenant_server();
    larder::RedisBackend redis(as_app(server));
    larder::RedisBus bus(as_app(server));
    REQUIRE(bus.wait_connected(5s));
    REQUIRE(bus.refusals() == 0);

    auto row = [] { return Str("row"); };
    {
        using Inv = larder::Invalidators<larder::Tags, larder::EntityVersions,
                                         larder::Events<larder::RedisBus>>;
        larder::CacheAside<std::string, larder::RedisBackend,
                           larder::Guards<larder::XFetch, larder::Lock>, Inv>
            cache(redis, {.key_prefix = "c:", .grace = 1h}, {}, {},
                  Inv(larder::Tags{}, larder::EntityVersions{},
                      larder::Events<larder::RedisBus>(bus)));
        larder::Near near(cache, bus);
        REQUIRE(near.get("a", {"t"}, row) == "row");
        REQUIRE(near.get("a", {"t"}, row) == "row");
        REQUIRE(cache
                    .get_many(std::vector<std::string>{"a", "b"},
                              [](auto keys) { return std::vector<Str>(keys.size(), Str("row")); })
                    .size() == 2);
        near.invalidate_tag("t");
        near.invalidate("a");
        near.invalidate_after("b", [] {});
        cache.invalidate_version(larder::EntityVersions::version_name("a"));
        REQUIRE(cache.stats().backend_errors == 0);
        REQUIRE(near.bus_errors() == 0);
    }
    {
        larder::WriteThrough<std::string, larder::RedisBackend> wt(redis,
                                                                   {.cache = {.key_prefix = "w:"}});
        REQUIRE(wt.put("k", "v", [] {}) == larder::WriteOutcome::cached);
        REQUIRE(wt.get("k", row) == "v");
        REQUIRE(wt.stats().backend_errors == 0);
    }
    {
        std::map<std::string, std::string> db;
        std::mutex db_mutex;
        larder::WriteBehind<std::string, larder::RedisBackend> wb(
            redis,
            [&](std::span<const larder::DirtyEntry<std::string>> batch) {
                std::lock_guard lock(db_mutex);
                for (const auto& e : batch) db[e.key] = e.value;
                return larder::BatchResult{};
            },
            {.start_flusher = false, .cache = {.key_prefix = "b:"}});
        REQUIRE(wb.put("k", "queued") > 0);
        REQUIRE(wb.flush().flushed == 1);
        REQUIRE(wb.get("k", row) == "queued");
        std::lock_guard lock(db_mutex);
        REQUIRE(db.at("k") == "queued");
    }
    {
        larder::VersionKeys<larder::RedisBackend> versions(redis, {.prefix = "v:"});
        const auto first = versions.current("user");
        REQUIRE(versions.bump("user") != first);
    }
    INFO("ACL LOG:\n" << acl_log(server));
    REQUIRE(acl_log(server).empty());
}

TEST_CASE("A subscription the ACL refuses is reported, not retried in silence",
          "[security][acl][l1][redis]") {
    RedisServer server = tenant_server();
    std::mutex errors_mutex;
    std::vector<std::string> errors;
    // Prefix q: is outside the tenant's channels (&p:*).
    larder::RedisBus bus(as_app(server, "q:"), {.on_error = [&](std::string_view why) {
                             std::lock_guard lock(errors_mutex);
                             errors.emplace_back(why);
                         }});
    REQUIRE(eventually([&] { return bus.refusals() >= 1; }));
    REQUIRE_FALSE(bus.connected());
    REQUIRE(bus.last_error().find("NOPERM") != std::string::npos);
    std::lock_guard lock(errors_mutex);
    REQUIRE_FALSE(errors.empty());
    REQUIRE(errors.front().find("q:larder:invalidate") != std::string::npos);
}

TEST_CASE("A write through Near succeeds when only its message cannot be published",
          "[security][acl][l1][redis]") {
    RedisServer server = tenant_server();
    larder::RedisBackend redis(as_app(server));
    larder::RedisBus refused(as_app(server, "q:"), {.on_error = [](std::string_view) {}});
    larder::CacheAside<std::string, larder::RedisBackend> cache(redis);
    larder::Near near(cache, refused);
    REQUIRE(cache.get("k", [] { return Str("v1"); }) == "v1");
    REQUIRE(redis.get(cache.full_key("k")));

    REQUIRE_NOTHROW(near.invalidate("k"));  // the store's part happened...
    REQUIRE_FALSE(redis.get(cache.full_key("k")));
    REQUIRE(near.bus_errors() == 1);  // ...and the message that could not go is counted
    REQUIRE_NOTHROW(near.invalidate_tag("t"));
    REQUIRE(near.bus_errors() == 2);
}
