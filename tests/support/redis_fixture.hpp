// RedisBackend wired to throwaway redis-servers, for tests.
//
// make_test_backend() points a backend at a RedisServer; RedisFixture is the Redis entry of
// the backend conformance suite (support/backends.hpp): one redis-server shared by the
// whole test process, flushed for every fixture, real time instead of a ManualClock.
#pragma once

#include <chrono>
#include <string>
#include <string_view>
#include <thread>
#include <utility>

#include "larder/backend/redis.hpp"
#include "larder/core/clock.hpp"
#include "support/redis_server.hpp"

namespace larder::test {

/// A RedisBackend for `server`. `extra` gives every option except the address; when it
/// names no credentials, the server's own (requirepass or ACL user) are used.
inline RedisBackend make_test_backend(const RedisServer& server, RedisOptions extra = {}) {
    extra.host = server.host();
    extra.port = server.port();
    if (extra.user.empty() && extra.password.empty()) {
        const RedisServerOptions& so = server.options();
        extra.user = so.auth_user;
        extra.password =
            so.auth_password.empty() && so.auth_user.empty() ? so.requirepass : so.auth_password;
    }
    return RedisBackend(std::move(extra));
}

/// The redis-server behind RedisFixture. Created on first use, from the test's main thread
/// (the server dies with the thread that started it), and killed at exit.
inline RedisServer& shared_redis_server() {
    static RedisServer server;
    return server;
}

struct RedisFixture {
    static constexpr bool manual_time = false;

    RedisFixture() : backend(make_test_backend(flushed(shared_redis_server()), options())) {}

    RedisBackend backend;

    /// Bytes written behind the backend's back, under the key the backend would use.
    void raw_set(std::string_view key, std::string_view bytes) {
        server().command({"SET", backend.stored_key(key), std::string(bytes)});
    }
    void advance(Millis by) { std::this_thread::sleep_for(by); }
    [[nodiscard]] const Clock* time_source() const { return &SystemClock::instance(); }
    [[nodiscard]] const RedisServer& server() const { return shared_redis_server(); }

private:
    static const RedisServer& flushed(const RedisServer& server) {
        server.command({"FLUSHALL"});
        return server;
    }

    // The conformance suite is about semantics, not deadlines: generous timeouts keep it
    // steady under sanitizers. A prefix, so that every test also exercises prefixing.
    static RedisOptions options() {
        RedisOptions o;
        o.connect_timeout = std::chrono::seconds(2);
        o.command_timeout = std::chrono::seconds(2);
        o.pool_wait_timeout = std::chrono::seconds(2);
        o.key_prefix = "conformance:";
        return o;
    }
};

}  // namespace larder::test
