// What a WriteBehind acknowledgement means on Redis, level by level: what the store
// persists (reported at construction, and in the drain's `durable`), and acknowledgement
// after n replicas have the put (WAIT), checked against a real failover: a replica promoted
// with REPLICAOF NO ONE while puts run and the old primary is killed.
#include <larder/backend/redis/write_behind_store.hpp>
#include <larder/policy/write_behind.hpp>

#include <atomic>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include "support/backends.hpp"
#include "support/eventually.hpp"
#include "support/write_behind.hpp"

#if defined(LARDER_TEST_REDIS_BACKEND)

using namespace std::chrono_literals;
using larder::test::Log;
using larder::test::RedisServer;
using larder::test::RedisServerOptions;
using larder::test::Table;
using larder::test::writer_for;

namespace {

larder::WriteBehindOptions quiet(Log& log, std::string name) {
    larder::WriteBehindOptions o;
    o.name = std::move(name);
    o.cache.key_prefix = "wbd:";
    o.start_flusher = false;
    o.cache.log.sink = [&log](larder::LogLevel, std::string_view line) { log.add(line); };
    return o;
}

void wait_for_replication(const RedisServer& replica) {
    REQUIRE(larder::test::eventually(
        [&] {
            return replica.command({"INFO", "replication"}).find("master_link_status:up") !=
                   std::string::npos;
        },
        10s));
}

struct FailoverResult {
    std::size_t acknowledged = 0;
    std::size_t lost = 0;
    std::size_t refused = 0;  // puts that threw: not acknowledged
};

// Puts run on one thread against the primary while the replica stops taking the
// replication stream (SIGSTOP), the primary is killed, and the replica is promoted. Then:
// which acknowledged puts does the new primary's queue hold?
FailoverResult failover(int replicas) {
    RedisServer primary;
    RedisServer replica(RedisServerOptions{
        .extra_args = {"--replicaof", primary.host(), std::to_string(primary.port())}});
    wait_for_replication(replica);
    larder::RedisBackend backend =
        larder::test::make_test_backend(primary, {.command_timeout = 500ms, .pool_size = 2});
    Log log;
    Table<std::string> table;
    auto o = quiet(log, "failover");
    o.replicas = replicas;
    o.replica_timeout = 100ms;
    auto wb = std::make_unique<larder::WriteBehind<std::string, larder::RedisBackend>>(
        backend, writer_for(table), o);

    std::mutex acked_mutex;
    std::vector<std::string> acked;
    std::atomic<bool> stop{false};
    std::atomic<std::size_t> refused{0};
    std::thread writer([&] {
        for (int i = 0; i < 100'000 && !stop; ++i) {
            const std::string k = "k" + std::to_string(i);
            try {
                wb->put(k, "v");
            } catch (const larder::BackendError&) {
                ++refused;
                std::this_thread::sleep_for(1ms);
                continue;
            }
            std::lock_guard lock(acked_mutex);
            acked.push_back(k);
        }
    });
    std::this_thread::sleep_for(200ms);
    replica.pause();  // the replica falls behind: it takes nothing more
    std::this_thread::sleep_for(300ms);
    primary.kill();
    stop = true;
    writer.join();
    replica.resume();
    REQUIRE(replica.command({"REPLICAOF", "NO", "ONE"}) == "OK");

    larder::RedisBackend promoted = larder::test::make_test_backend(replica);
    const std::string values = promoted.stored_key(wb->store().queue_key("values"));
    FailoverResult out{.acknowledged = acked.size(), .refused = refused};
    for (const auto& k : acked) {
        if (replica.command({"HEXISTS", values, wb->full_key(k)}) != "1") ++out.lost;
    }
    wb->close(0ms);  // the old primary is gone: nothing to drain
    return out;
}

}  // namespace

TEST_CASE("A failover loses acknowledged puts only below the replica-wait level",
          "[write_behind][durability][failover][redis]") {
    const FailoverResult primary_only = failover(0);
    const FailoverResult replicated = failover(1);
    WARN("acknowledged by the primary alone: " << primary_only.acknowledged << " acknowledged, "
                                               << primary_only.lost << " lost in the failover");
    WARN("acknowledged after WAIT 1: " << replicated.acknowledged << " acknowledged, "
                                       << replicated.lost << " lost, " << replicated.refused
                                       << " puts refused with DurabilityError or no server");
    REQUIRE(primary_only.acknowledged > 0);
    REQUIRE(replicated.acknowledged > 0);
    REQUIRE(replicated.refused > 0);  // the puts made while the replica was stopped
    REQUIRE(replicated.lost == 0);
}

TEST_CASE("A put waiting for a replica that does not answer throws DurabilityError",
          "[write_behind][durability][redis]") {
    RedisServer primary;
    larder::RedisBackend backend =
        larder::test::make_test_backend(primary, {.command_timeout = 2s});
    Log log;
    Table<std::string> table;
    auto o = quiet(log, "lonely");
    o.replicas = 1;
    o.replica_timeout = 300ms;  // generous: a loaded machine (sanitizers) must still make it
    larder::WriteBehind<std::string, larder::RedisBackend> wb(backend, writer_for(table), o);
    REQUIRE(wb.persistence().replicas == 0);
    REQUIRE_THROWS_AS(wb.put("k", "v"), larder::DurabilityError);
    // Not an OutcomeUnknownError: a read-modify-write must not read it back as done.
    REQUIRE_THROWS_AS(
        wb.modify(
            "n", [](std::string& v) { v += "x"; }, [] { return std::optional<std::string>(""); }),
        larder::DurabilityError);

    // With a replica it is acknowledged.
    RedisServer replica(RedisServerOptions{
        .extra_args = {"--replicaof", primary.host(), std::to_string(primary.port())}});
    wait_for_replication(replica);
    // (On a loaded machine one wait may still run out: that put is refused, not lost.)
    REQUIRE(larder::test::eventually(
        [&] {
            try {
                return wb.put("k", "v2") > 0;
            } catch (const larder::DurabilityError&) {
                return false;
            }
        },
        10s));

    // A wait longer than the connection's own deadline would look like a lost reply.
    o.name = "too_long";
    o.replica_timeout = 2s;
    REQUIRE_THROWS_AS(
        (larder::WriteBehind<std::string, larder::RedisBackend>(backend, writer_for(table), o)),
        larder::ConfigError);
}

TEST_CASE("The drain calls what it leaves durable only when Redis persists it",
          "[write_behind][durability][redis]") {
    for (const bool aof : {false, true}) {
        CAPTURE(aof);
        RedisServer server(RedisServerOptions{.persistence = aof});
        larder::RedisBackend backend = larder::test::make_test_backend(server);
        Log log;
        auto o = quiet(log, "drain");
        larder::WriteBehind<std::string, larder::RedisBackend> wb(
            backend,
            [](std::span<const larder::DirtyEntry<std::string>>) -> larder::BatchResult {
                throw std::runtime_error("database down");
            },
            o);
        const larder::Persistence p = wb.persistence();
        REQUIRE(p.known);
        REQUIRE(p.outlives_process);
        REQUIRE(p.survives_restart == aof);
        REQUIRE(log.contains("warning: appendonly no") == !aof);
        wb.put("k", "v");
        const larder::DrainReport report = wb.close(50ms);
        REQUIRE_FALSE(report.complete);
        REQUIRE(report.kept_in_store);
        REQUIRE(report.durable == aof);
        REQUIRE((report.describe().find("restart of the store would lose them") !=
                 std::string::npos) == !aof);
    }
    // Memory: neither.
    larder::test::MemoryFixture fx;
    Log log;
    auto o = quiet(log, "memory");
    o.cache.clock = fx.time_source();
    Table<std::string> table;
    larder::WriteBehind<std::string, larder::MemoryBackend> wb(fx.backend, writer_for(table), o);
    REQUIRE_FALSE(wb.persistence().outlives_process);
    REQUIRE_FALSE(wb.close(0ms).kept_in_store);
    o.replicas = 1;
    REQUIRE_THROWS_AS(
        (larder::WriteBehind<std::string, larder::MemoryBackend>(fx.backend, writer_for(table), o)),
        larder::ConfigError);
}

#endif
