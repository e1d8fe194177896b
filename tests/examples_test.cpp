// The feature examples (examples/<name>/main.cpp) are documentation a user copies from:
// each is built with the suite, run against a redis-server this test starts, and what it
// prints is checked line by line, so an example that stops compiling or stops showing
// what its comment says fails here.
#if defined(LARDER_TEST_HAVE_REDIS_SERVER)

#include <chrono>
#include <string>

#include "support/catch.hpp"
#include "support/child_process.hpp"
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

#endif  // a redis-server
