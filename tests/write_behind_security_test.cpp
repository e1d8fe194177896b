// Write-behind under hostile sizes and a hostile network: a value too large to queue, a
// claim whose reply never arrives, a write whose reply is lost, and a tenant's ACL.
#include <larder/backend/memory.hpp>
#include <larder/backend/redis.hpp>
#include <larder/backend/redis/write_behind_store.hpp>
#include <larder/policy/write_behind.hpp>

#include <chrono>
#include <map>
#include <mutex>
#include <span>
#include <string>
#include <vector>

#include "support/catch.hpp"
#include "support/eventually.hpp"
#include "support/redis_fixture.hpp"
#include "support/redis_server.hpp"
#include "support/tcp_proxy.hpp"

using namespace std::chrono_literals;

namespace {

// The database: rows by key, one mutex.
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

TEST_CASE("A write-behind put over max_value_bytes throws ValueTooLargeError and queues nothing",
          "[security][write_behind]") {
    larder::MemoryBackend backend;
    Rows rows;
    auto o = quiet("too-large");
    o.cache.key_prefix = "wb:";
    o.cache.max_value_bytes = 4096;
    larder::WriteBehind<std::string, larder::MemoryBackend> wb(backend, writer_for(rows), o);

    const std::string big(8192, 'x');
    REQUIRE_THROWS_AS(wb.put("big", big), larder::ValueTooLargeError);
    // Nor through a read-modify-write that grows a small value past the bound.
    wb.put("grows", "small");
    REQUIRE_THROWS_AS(wb.modify(
                          "grows", [&](std::string& v) { v = big; },
                          [] { return std::optional<std::string>("small"); }),
                      larder::ValueTooLargeError);

    // Nothing acknowledged, nothing written: only the small put is queued.
    const auto stats = wb.stats();
    const auto stats_queue = wb.queue_stats();
    REQUIRE(stats_queue.pending == 1);
    REQUIRE(stats.puts == 1);
    REQUIRE_FALSE(backend.get(wb.full_key("big")).has_value());
    REQUIRE_FALSE(wb.store().unflushed_value(wb.full_key("big")).has_value());
    REQUIRE(wb.store().unflushed_value(wb.full_key("grows")).has_value());
    wb.flush();
    REQUIRE(rows.rows() == std::map<std::string, std::string>{{"grows", "small"}});
}

TEST_CASE(
    "A poison entry whose claims never reach the flusher is dead-lettered after "
    "max_attempts while the 50 entries behind it reach the database",
    "[security][write_behind][redis]") {
    larder::test::RedisServer server;
    larder::test::TcpProxy proxy(server.host(), server.port());
    // The flusher talks through the proxy; the checks below go straight to the server.
    larder::RedisBackend through_proxy({.host = proxy.host(),
                                        .port = proxy.port(),
                                        .command_timeout = 300ms,
                                        .pool_size = 2,
                                        .key_prefix = "app:"});
    larder::RedisBackend direct =
        larder::test::make_test_backend(server, {.command_timeout = 10s, .key_prefix = "app:"});
    Rows rows;
    auto o = quiet("poison");
    o.claim_ttl = 10min;  // never expires here: a lost claim is released by the next claim
    o.retry.max_attempts = 3;
    o.retry.budget = 0ms;  // attempts alone decide here
    o.batch_bytes = 64 * 1024;
    larder::WriteBehind<std::string, larder::RedisBackend> wb(through_proxy, writer_for(rows), o);

    const std::string poison(1 << 20, 'p');
    wb.put("poison", poison);  // the oldest entry: the first claim takes it
    std::map<std::string, std::string> expected;
    for (int i = 0; i < 50; ++i) {
        const std::string k = "k" + std::to_string(i);
        wb.put(k, "v" + std::to_string(i));
        expected[k] = "v" + std::to_string(i);
    }
    // Any reply over 256 KiB - only a claim carrying the poison - never comes back.
    proxy.hold_replies_after(256 * 1024);

    larder::RedisWriteBehindStore store(direct, {.name = "poison"});
    larder::FlushReport total;
    for (int round = 0; round < 10 && store.stats().dead == 0; ++round) total += wb.flush();

    REQUIRE(rows.rows() == expected);
    const auto q = store.stats();
    REQUIRE(q.dead == 1);
    REQUIRE(q.pending == 0);
    const auto dead = store.list_dead(10);
    REQUIRE(dead.size() == 1);
    REQUIRE(dead[0].key == wb.full_key("poison"));
    REQUIRE(dead[0].attempts == 3);
    REQUIRE(dead[0].value.size() > poison.size());  // the envelope, kept whole
    REQUIRE(total.lost_claims >= 3);
    REQUIRE(total.dead_lettered == 1);
    REQUIRE(total.flushed == 50);
}

TEST_CASE(
    "A write whose reply is lost raises OutcomeUnknownError and is applied; a read's "
    "timeout stays a plain TimeoutError",
    "[security][redis]") {
    larder::test::RedisServer server;
    larder::test::TcpProxy proxy(server.host(), server.port());
    larder::RedisBackend backend({.host = proxy.host(),
                                  .port = proxy.port(),
                                  .command_timeout = 200ms,
                                  .pool_size = 1,
                                  .breaker = {.failure_threshold = 0}});
    backend.ping();
    proxy.hold_replies(true);

    bool unknown = false;
    try {
        backend.set("k", "applied", larder::no_expiry);
    } catch (const larder::OutcomeUnknownError&) {
        unknown = true;
    } catch (const larder::TimeoutError&) {
    }
    REQUIRE(unknown);
    // The request reached the server: the value is there.
    REQUIRE(larder::test::eventually([&] { return server.command({"GET", "k"}) == "applied"; }));

    // Writing scripts and DEL are writes too; GET is not.
    REQUIRE_THROWS_AS(backend.compare_and_set("k", "applied", "swapped", larder::no_expiry),
                      larder::OutcomeUnknownError);
    REQUIRE(larder::test::eventually([&] { return server.command({"GET", "k"}) == "swapped"; }));
    bool read_unknown = false;
    bool read_timeout = false;
    try {
        (void)backend.get("k");
    } catch (const larder::OutcomeUnknownError&) {
        read_unknown = true;
    } catch (const larder::TimeoutError&) {
        read_timeout = true;
    }
    REQUIRE(read_timeout);
    REQUIRE_FALSE(read_unknown);
}

TEST_CASE(
    "WriteBehind under a tenant ACL (~p:* &p:* +@all -@admin -@dangerous +info) runs with no "
    "refused command",
    "[security][write_behind][redis]") {
    larder::test::RedisServer server;
    REQUIRE(server.command({"ACL", "SETUSER", "tenant", "reset", "on", ">tenant-secret", "~p:*",
                            "&p:*", "+@all", "-@admin", "-@dangerous", "+info"}) == "OK");
    REQUIRE(server.command({"ACL", "LOG", "RESET"}) == "OK");
    larder::RedisBackend backend = larder::test::make_test_backend(
        server,
        {.user = "tenant", .password = "tenant-secret", .command_timeout = 5s, .key_prefix = "p:"});
    Rows rows;
    auto o = quiet("tenant");
    {
        larder::WriteBehind<std::string, larder::RedisBackend> wb(backend, writer_for(rows), o);
        wb.put("k", "v");
        REQUIRE(wb.flush().flushed == 1);
        REQUIRE(wb.get("k", [] { return std::optional<std::string>(); }) == "v");
        REQUIRE(rows.rows().at("k") == "v");
        REQUIRE(server.command({"ACL", "LOG"}).empty());

        // The eviction check runs only when asked, and says it could not run.
        const larder::EvictionRisk risk = wb.check_eviction();
        REQUIRE(risk.level == larder::EvictionRisk::could_not_run);
        // (ACL LOG does record a refusal: the empty log above means something.)
        REQUIRE_FALSE(server.command({"ACL", "LOG"}).empty());
    }
}

TEST_CASE(
    "A timeout while a large reply is arriving does not open the shared breaker; a "
    "silent server still does",
    "[security][redis]") {
    larder::test::RedisServer server;
    larder::test::TcpProxy proxy(server.host(), server.port());
    larder::RedisBackend backend({.host = proxy.host(),
                                  .port = proxy.port(),
                                  .command_timeout = 200ms,
                                  .breaker = {.failure_threshold = 1, .cool_down = 10min}});
    REQUIRE(server.command({"SET", "big", std::string(1 << 20, 'b')}) == "OK");
    backend.ping();
    // The first 256 KiB of the reply come through, the rest never does.
    proxy.hold_replies_after(256 * 1024);
    REQUIRE_THROWS_AS(backend.get_value("big"), larder::TimeoutError);
    REQUIRE(backend.stats().payload_timeouts == 1);
    REQUIRE(backend.breaker_state() == larder::BreakerState::closed);
    REQUIRE(backend.get_value("small") == std::nullopt);  // other callers are served

    proxy.hold_replies(true);
    REQUIRE_THROWS_AS(backend.ping(), larder::TimeoutError);
    REQUIRE(backend.stats().payload_timeouts == 1);
    REQUIRE(backend.breaker_state() == larder::BreakerState::open);
}
