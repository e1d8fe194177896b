// The feature examples (examples/<name>/main.cpp) are documentation a user copies from:
// each is built with the suite, run against a redis-server this test starts, and what it
// prints is checked line by line, so an example that stops compiling or stops showing
// what its comment says fails here.
#if defined(LARDER_TEST_HAVE_REDIS_SERVER)

#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <unistd.h>

#include <chrono>
#include <cstdint>
#include <string>
#include <utility>
#include <vector>

#include "support/catch.hpp"
#include "support/child_process.hpp"
#include "support/prometheus_text.hpp"
#include "support/redis_server.hpp"

namespace {

struct ExampleRun {
    int status = -1;
    std::string output;  ///< stdout; stderr is left to the test's own
};

/// Runs an example binary with the server's URL as its only argument.
ExampleRun run_example(const std::string& binary, const larder::test::RedisServer& server) {
    larder::test::ChildProcess child(binary, {server.url()});
    ExampleRun run;
    while (auto line = child.read_line(std::chrono::seconds(60))) run.output += *line + "\n";
    run.status = child.wait();
    return run;
}

/// Runs the example twice (it must start from a cold cache on its own) and checks that
/// both runs print `expected`.
void check_example(const std::string& binary, const std::string& expected) {
    larder::test::RedisServer server;
    for (int round = 1; round <= 2; ++round) {
        INFO(binary << ", run " << round);
        const ExampleRun run = run_example(binary, server);
        CHECK(run.status == 0);
        REQUIRE(run.output == expected);
    }
}

/// One HTTP/1.0 GET to 127.0.0.1:port; the whole response (the server closes it).
[[maybe_unused]] std::string http_get(int port, const std::string& path) {
    const int fd = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    REQUIRE(fd >= 0);
    timeval timeout{.tv_sec = 30, .tv_usec = 0};
    ::setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &timeout, sizeof timeout);
    sockaddr_in addr{};
    addr.sin_family = AF_INET;
    addr.sin_port = htons(static_cast<std::uint16_t>(port));
    addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    REQUIRE(::connect(fd, reinterpret_cast<sockaddr*>(&addr), sizeof addr) == 0);
    const std::string request = "GET " + path + " HTTP/1.0\r\n\r\n";
    REQUIRE(::send(fd, request.data(), request.size(), MSG_NOSIGNAL) ==
            static_cast<ssize_t>(request.size()));
    std::string response;
    char buf[4096];
    for (ssize_t n; (n = ::recv(fd, buf, sizeof buf, 0)) > 0;)
        response.append(buf, static_cast<std::size_t>(n));
    ::close(fd);
    return response;
}

}  // namespace

#if defined(LARDER_TEST_EXAMPLE_CACHE_ASIDE_REDIS)
TEST_CASE("examples: cache_aside_redis loads once, then hits, and reloads after an update",
          "[redis][examples]") {
    check_example(LARDER_TEST_EXAMPLE_CACHE_ASIDE_REDIS,
                  "first read: Ada\n"
                  "second read: Ada\n"
                  "loads: 1\n"
                  "after update: Grace\n"
                  "loads: 2\n"
                  "hits: 1, misses: 2\n");
}
#endif

#if defined(LARDER_TEST_EXAMPLE_TAGS)
TEST_CASE("examples: tags drops every entry tagged, and only those", "[redis][examples]") {
    check_example(LARDER_TEST_EXAMPLE_TAGS,
                  "first pass loads: 3\n"
                  "second pass loads: 0\n"
                  "after invalidate_tag(author:7) loads: 2\n"
                  "post 3 after invalidate_tag: hit\n"
                  "post 2 after invalidate_tag(topic:cpp): miss\n");
}
#endif

#if defined(LARDER_TEST_EXAMPLE_STAMPEDE_GUARDS)
TEST_CASE("examples: stampede_guards serves 16 readers of a cold key with one load",
          "[redis][examples]") {
    check_example(LARDER_TEST_EXAMPLE_STAMPEDE_GUARDS,
                  "readers served: 16\n"
                  "loader calls: 1\n");
}
#endif

#if defined(LARDER_TEST_EXAMPLE_NEAR_CACHE)
TEST_CASE("examples: near_cache drops a's L1 copy when b writes", "[redis][examples]") {
    check_example(LARDER_TEST_EXAMPLE_NEAR_CACHE,
                  "a reads: 1.20\n"
                  "a reads: 1.20\n"
                  "a L1 hits: 1\n"
                  "a L1 after b's write: dropped\n"
                  "a reads: 1.35\n");
}
#endif

#if defined(LARDER_TEST_EXAMPLE_WRITE_THROUGH)
TEST_CASE("examples: write_through writes the database and serves the new value",
          "[redis][examples]") {
    check_example(LARDER_TEST_EXAMPLE_WRITE_THROUGH,
                  "put: cached, database writes: 1\n"
                  "read: Ada 100, database reads: 0\n"
                  "read: Ada 150, database reads: 0, database writes: 2\n");
}
#endif

#if defined(LARDER_TEST_EXAMPLE_WRITE_BEHIND)
TEST_CASE("examples: write_behind acknowledges, then flushes coalesced rows and drains",
          "[redis][examples]") {
    check_example(LARDER_TEST_EXAMPLE_WRITE_BEHIND,
                  "acknowledged; database rows: 0\n"
                  "read before flush: ada 15\n"
                  "flush: 2 rows written for 7 writes\n"
                  "database: ada 15, bob 20\n"
                  "drain: complete, 1 row written\n"
                  "database: bob 25, row writes: 3\n");
}
#endif

#if defined(LARDER_TEST_EXAMPLE_METRICS)
TEST_CASE("examples: metrics serves valid Prometheus text with the cache's counters",
          "[redis][examples]") {
    larder::test::RedisServer server;
    // Any free port, one scrape, then it exits.
    larder::test::ChildProcess child(LARDER_TEST_EXAMPLE_METRICS, {server.url(), "0", "1"});
    REQUIRE(child.read_line(std::chrono::seconds(60)) == "loads: 1, hits: 9");
    const auto serving = child.read_line(std::chrono::seconds(60));
    REQUIRE(serving.has_value());
    const std::string prefix = "serving http://127.0.0.1:";
    REQUIRE(serving->starts_with(prefix));
    const int port = std::stoi(serving->substr(prefix.size()));

    const std::string response = http_get(port, "/metrics");
    const auto body_at = response.find("\r\n\r\n");
    REQUIRE(body_at != std::string::npos);
    const std::string head = response.substr(0, body_at);
    CHECK(head.starts_with("HTTP/1.0 200 OK"));
    CHECK(head.find("Content-Type: text/plain; version=0.0.4") != std::string::npos);
    const auto text = larder::test::parse_prometheus(response.substr(body_at + 4));
    CHECK(text.value("larder_cache_hits_total", {{"cache", "prices"}}) == 9);
    CHECK(text.value("larder_cache_loads_total", {{"cache", "prices"}}) == 1);
    CHECK(text.value("larder_load_duration_seconds_count", {{"cache", "prices"}}) == 1);
    CHECK(text.value("larder_backend_call_duration_seconds_count",
                     {{"backend", "main"}, {"operation", "get_value"}}) >= 10);
    CHECK(text.value("larder_redis_round_trips_total", {{"backend", "main"}}) >= 10);
    CHECK(child.wait() == 0);
}
#endif

#if defined(LARDER_TEST_EXAMPLE_LOGGING_SPDLOG)
TEST_CASE("examples: logging_spdlog logs failed connects and the breaker opening through spdlog",
          "[examples]") {
    larder::test::ChildProcess child(LARDER_TEST_EXAMPLE_LOGGING_SPDLOG, {});
    std::string output;
    while (auto line = child.read_line(std::chrono::seconds(60))) output += *line + "\n";
    CHECK(child.wait() == 0);
    INFO(output);
    CHECK(output.find("info: redis 'main': connecting failed") != std::string::npos);
    CHECK(output.find("warning: redis 'main': circuit breaker open") != std::string::npos);
    CHECK(output.find("info: 8 reads answered, 8 from the loader; the breaker is open\n") !=
          std::string::npos);
}
#endif

#if defined(LARDER_TEST_EXAMPLE_USER_SERVICE) && defined(LARDER_TEST_EXAMPLE_LEADERBOARD)
TEST_CASE("examples: the service examples exit 2 on a bad flag, 0 on --help", "[examples]") {
    auto status_of = [](const char* binary, std::vector<std::string> args) {
        larder::test::ChildProcess child(binary, std::move(args));
        std::string output;
        while (auto line = child.read_line(std::chrono::seconds(60))) output += *line + "\n";
        return std::pair(child.wait(), output);
    };
    for (const char* binary : {LARDER_TEST_EXAMPLE_USER_SERVICE, LARDER_TEST_EXAMPLE_LEADERBOARD}) {
        INFO(binary);
        CHECK(status_of(binary, {"--skew", "11"}).first == 2);
        CHECK(status_of(binary, {"--users", "many"}).first == 2);
        CHECK(status_of(binary, {"--no-such-flag"}).first == 2);
        const auto [status, help] = status_of(binary, {"--help"});
        CHECK(status == 0);
        CHECK(help.find("--db-latency-us") != std::string::npos);
    }
}
#endif

#endif  // a redis-server
