// The exception tree: every error the public API throws is caught as larder::Error and as
// the subtype its documentation names, and every type of the tree is public (one header,
// no detail namespace).
#include <larder/backend/memory.hpp>
#include <larder/codec/json.hpp>
#include <larder/core/error.hpp>
#include <larder/policy/cache_aside.hpp>
#include <larder/policy/write_behind.hpp>
#include <larder/policy/write_through.hpp>

#include <cstdint>
#include <limits>
#include <optional>
#include <span>
#include <string>
#include <type_traits>
#include <typeinfo>
#include <vector>

#include "support/catch.hpp"

using namespace std::chrono_literals;

namespace {

/// Runs `f`, which must throw; the exception must be a larder::Error (caught as such, not
/// as anything narrower first) whose dynamic type is, or derives from, Documented.
template <class Documented, class F>
void throws_as_error(F&& f) {
    static_assert(std::is_base_of_v<larder::Error, Documented>);
    try {
        f();
    } catch (const larder::Error& e) {
        INFO("caught " << typeid(e).name() << ": " << e.what());
        CHECK(dynamic_cast<const Documented*>(&e) != nullptr);
        return;
    } catch (const std::exception& e) {
        FAIL("not a larder::Error: " << typeid(e).name() << ": " << e.what());
    }
    FAIL("nothing was thrown");
}

std::optional<std::string> no_row() {
    return std::nullopt;
}

larder::WriteBehindOptions manual_flush() {
    larder::WriteBehindOptions o;
    o.start_flusher = false;
    o.cache.log.level = larder::LogLevel::off;
    return o;
}

auto accept_all = [](auto) { return larder::BatchResult{}; };

}  // namespace

TEST_CASE("Every error type derives from larder::Error, in the documented branches",
          "[core][error]") {
    using namespace larder;
    STATIC_REQUIRE(std::is_base_of_v<std::runtime_error, Error>);
    STATIC_REQUIRE(std::is_base_of_v<Error, BackendError>);
    STATIC_REQUIRE(std::is_base_of_v<BackendError, ClusterRedirectError>);
    STATIC_REQUIRE(std::is_base_of_v<BackendError, TimeoutError>);
    STATIC_REQUIRE(std::is_base_of_v<TimeoutError, OutcomeUnknownError>);
    STATIC_REQUIRE(std::is_base_of_v<TimeoutError, PoolExhaustedError>);
    STATIC_REQUIRE(std::is_base_of_v<BackendError, DurabilityError>);
    STATIC_REQUIRE(std::is_base_of_v<BackendError, ConnectionError>);
    STATIC_REQUIRE(std::is_base_of_v<BackendError, CircuitOpenError>);
    STATIC_REQUIRE(std::is_base_of_v<BackendError, ReplyError>);
    STATIC_REQUIRE(std::is_base_of_v<Error, CodecError>);
    STATIC_REQUIRE(std::is_base_of_v<Error, ValueTooLargeError>);
    STATIC_REQUIRE(std::is_base_of_v<Error, LoaderError>);
    STATIC_REQUIRE(std::is_base_of_v<Error, LoadTimeoutError>);
    STATIC_REQUIRE(std::is_base_of_v<Error, BackpressureError>);
    STATIC_REQUIRE(std::is_base_of_v<Error, WriteConflictError>);
    STATIC_REQUIRE(std::is_base_of_v<Error, ClosedError>);
    STATIC_REQUIRE(std::is_base_of_v<Error, ConfigError>);
    STATIC_REQUIRE(std::is_base_of_v<Error, InvalidArgumentError>);
    // Not a store failure: a breaker or a retry loop that handles BackendError must not
    // take a caller's mistake or a full queue for a sick server.
    STATIC_REQUIRE_FALSE(std::is_base_of_v<BackendError, InvalidArgumentError>);
    STATIC_REQUIRE_FALSE(std::is_base_of_v<BackendError, BackpressureError>);
    STATIC_REQUIRE_FALSE(std::is_base_of_v<BackendError, CodecError>);
    try {
        throw TimeoutError("slow");
    } catch (const Error& e) {
        REQUIRE(std::string(e.what()) == "slow");
    }
}

TEST_CASE("The policies' errors are larder::Errors of their documented type", "[core][error]") {
    larder::MemoryBackend backend;

    SECTION("a codec that cannot read the bytes: CodecError") {
        larder::JsonCodec codec;
        throws_as_error<larder::CodecError>([&] { (void)codec.decode<std::int64_t>("not json"); });
    }
    SECTION("a batch loader that answers the wrong count: LoaderError") {
        larder::CacheAside<std::string, larder::MemoryBackend> cache(backend);
        throws_as_error<larder::LoaderError>([&] {
            (void)cache.get_many(std::vector<std::string>{"x", "y"},
                                 [](std::span<const std::string>) {
                                     return std::vector<std::optional<std::string>>(1);
                                 });
        });
    }
    SECTION("a loader that sets a TTL that is not positive: LoaderError") {
        larder::CacheAside<std::string, larder::MemoryBackend> cache(backend);
        throws_as_error<larder::LoaderError>([&] {
            (void)cache.get("k", [](larder::LoadContext& ctx) -> std::optional<std::string> {
                ctx.ttl = 0ms;
                return "v";
            });
        });
    }
    SECTION("read options that cannot work: ConfigError") {
        larder::CacheAside<std::string, larder::MemoryBackend> cache(backend);
        throws_as_error<larder::ConfigError>([&] { (void)cache.get("k", no_row, {.ttl = 0ms}); });
    }
    SECTION("a key another writer holds past max_lock_wait: WriteConflictError") {
        larder::WriteThrough<std::string, larder::MemoryBackend> cache(
            backend, {.write_lease_ttl = 5s, .max_lock_wait = 20ms});
        backend.set(cache.keys().sibling("k", "write"), "a live writer", 10s);
        throws_as_error<larder::WriteConflictError>([&] { cache.put("k", "v", [] {}); });
    }
    SECTION("write-behind: a full queue, a counter overflow, a closed cache, a value too large") {
        auto o = manual_flush();
        o.max_pending = 1;
        o.when_full = larder::WhenFull::fail;
        o.cache.max_value_bytes = 1024;
        larder::WriteBehind<std::int64_t, larder::MemoryBackend> wb(backend, accept_all, o);
        wb.put("a", std::numeric_limits<std::int64_t>::max());
        throws_as_error<larder::BackpressureError>([&] { wb.put("b", 1); });
        const auto no_count = [] { return std::optional<std::int64_t>(); };
        throws_as_error<larder::InvalidArgumentError>(
            [&] { (void)wb.increment("a", 1, no_count); });
        REQUIRE(wb.get("a", no_count) == std::numeric_limits<std::int64_t>::max());
        (void)wb.close(1s);
        throws_as_error<larder::ClosedError>([&] { wb.put("a", 1); });

        larder::WriteBehind<std::string, larder::MemoryBackend> strings(backend, accept_all, o);
        throws_as_error<larder::ValueTooLargeError>(
            [&] { strings.put("big", std::string(4096, 'x')); });
    }
}

#if __has_include(<hiredis/hiredis.h>) &&                                     \
    (defined(LARDER_TEST_HAVE_REDIS) || !defined(LARDER_TEST_SOURCE_DIR)) && \
    (defined(LARDER_TEST_HAVE_REDIS_SERVER) || defined(LARDER_TEST_REDIS_SERVER))

#include <larder/backend/redis.hpp>

#include <thread>

#include "support/redis_fixture.hpp"
#include "support/redis_server.hpp"

TEST_CASE("RedisBackend's errors are larder::Errors of their documented type", "[redis][error]") {
    larder::test::RedisServer server;

    SECTION("an empty command: InvalidArgumentError, and nothing is sent") {
        auto backend = larder::test::make_test_backend(server);
        throws_as_error<larder::InvalidArgumentError>(
            [&] { (void)backend.command(std::vector<std::string_view>{}); });
    }
    SECTION("an error reply: ReplyError, and the connection serves the next call") {
        auto backend = larder::test::make_test_backend(server);
        throws_as_error<larder::ReplyError>([&] {
            (void)backend.command({"INCR", "not-a-number-key", "extra"});
        });
        backend.set("k", "v", 10s);
        REQUIRE(backend.get("k")->bytes == "v");
    }
    SECTION("every connection borrowed for the whole wait: PoolExhaustedError") {
        auto backend = larder::test::make_test_backend(
            server, {.command_timeout = 3s, .pool_size = 1, .pool_wait_timeout = 30ms});
        std::thread holder([&] { (void)backend.command({"BLPOP", "queue", "1"}); });
        // The BLPOP holds the only connection for up to a second: until the server says
        // it is blocked, the next call may still find the connection idle.
        for (int i = 0; i < 200; ++i) {
            if (server.command({"INFO", "clients"}).find("blocked_clients:1") !=
                std::string::npos) {
                break;
            }
            std::this_thread::sleep_for(5ms);
        }
        throws_as_error<larder::PoolExhaustedError>([&] { (void)backend.get("k"); });
        holder.join();
    }
    SECTION("options that cannot work: ConfigError") {
        throws_as_error<larder::ConfigError>(
            [&] { (void)larder::test::make_test_backend(server, {.pool_size = 0}); });
    }
    SECTION("nobody listening: ConnectionError") {
        const int port = server.port();
        server.stop();
        throws_as_error<larder::ConnectionError>([&] {
            (void)larder::RedisBackend(
                {.host = "127.0.0.1", .port = port, .require_connection = true});
        });
    }
}

#endif
