// Probes of the guarantees of the logging and metrics hooks and of the Backend concept:
// stats() exact and local, a Logger's sink free to call back into what logs, every call
// reported once to a MetricsListener, PrometheusMetrics text always valid, WriteBehind over
// any backend losing no acknowledged write. Each case here failed when it was written.
#include <larder/larder.hpp>
#include <larder/metrics/prometheus.hpp>

#include <atomic>
#include <chrono>
#include <cstdlib>
#include <functional>
#include <future>
#include <memory>
#include <mutex>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

#include "support/catch.hpp"
#include "support/prometheus_text.hpp"

#if defined(LARDER_TEST_HAVE_REDIS) && defined(LARDER_TEST_HAVE_REDIS_SERVER)
#include <larder/backend/redis_cluster.hpp>

#include "support/redis_fixture.hpp"
#include "support/redis_server.hpp"
#endif

using namespace std::chrono_literals;
using larder::test::parse_prometheus;

namespace {

using Labels = std::map<std::string, std::string>;

// Runs `call` on a thread of its own and waits for it at most `limit`: false when it has
// not returned by then (a deadlock). The thread is then left behind, detached, holding
// what `call` captured (capture shared_ptrs), so that the suite reports the hang as a
// failure instead of hanging.
bool finishes_within(std::function<void()> call, std::chrono::seconds limit = 10s) {
    auto done = std::make_shared<std::promise<void>>();
    auto finished = done->get_future();
    std::thread([call = std::move(call), done] {
        try {
            call();
        } catch (...) {
        }
        done->set_value();
    }).detach();
    return finished.wait_for(limit) == std::future_status::ready;
}

}  // namespace

// docs/logging.md: the sink runs "with no larder lock held". WriteBehind::close() holds
// drain_mutex_ for its whole drain and logs an incomplete drain (error) before releasing
// it. close() is documented as idempotent ("a later or concurrent call waits for the one
// drain and returns its report"), yet a sink that calls it - from that very log line -
// locks drain_mutex_ again on the same thread, and close() never returns.
TEST_CASE("Review: a sink that calls WriteBehind::close() from the drain's log returns",
          "[log][review]") {
    using Behind = larder::WriteBehind<std::string, larder::MemoryBackend>;
    struct World {
        larder::MemoryBackend store;
        std::unique_ptr<Behind> wb;
        std::atomic<int> heard{0};
    };
    auto world = std::make_shared<World>();
    World* w = world.get();
    world->wb = std::make_unique<Behind>(
        world->store,
        [](std::span<const Behind::Entry>) -> larder::BatchResult {
            throw std::runtime_error("database down");
        },
        larder::WriteBehindOptions{
            .start_flusher = false,
            .cache = {.log = {.level = larder::LogLevel::error,
                              .sink = [w](larder::LogLevel, std::string_view) {
                                  thread_local bool inside = false;
                                  ++w->heard;
                                  if (inside) return;
                                  inside = true;
                                  (void)w->wb->close(larder::Millis{0});
                                  inside = false;
                              }}}});
    world->wb->put("k", "v");
    const bool returned = finishes_within([world] { (void)world->wb->close(larder::Millis{50}); });
    CHECK(world->heard.load() > 0);
    REQUIRE(returned);
}

#if defined(LARDER_TEST_HAVE_REDIS) && defined(LARDER_TEST_HAVE_REDIS_SERVER)

// docs/logging.md: "The sink is called on whichever thread saw the event, with no larder
// lock held". RedisClusterBackend::refresh_locked() runs with refresh_mutex_ held, and
// logs there - its own "no node answered CLUSTER SLOTS" (warn) and, through the node's
// RedisBackend, "connecting failed" (info). A sink that calls the cluster again for a key
// whose slot has no known node (route() -> refresh_slots()) locks refresh_mutex_ a second
// time on the same thread: the call never returns.
TEST_CASE("Review: a sink that calls the cluster backend from a refresh failure log returns",
          "[redis][log][review]") {
    struct World {
        // The bus on a port of its own: by default it is the port + 10000, which a free
        // port above 55535 does not have.
        larder::test::RedisServer server{
            {.extra_args = {"--cluster-enabled", "yes", "--cluster-port",
                            std::to_string(larder::test::detail::pick_free_loopback_port())}}};
        std::unique_ptr<larder::RedisClusterBackend> cluster;
        std::atomic<int> heard{0};
    };
    auto world = std::make_shared<World>();
    // A cluster that knows slots 0..100 only: a key of any other slot has no node.
    REQUIRE(world->server.query({"CLUSTER", "ADDSLOTSRANGE", "0", "100"}).render() == "OK");
    const std::string key = "k5";
    REQUIRE(larder::keys::slot(key) > 100);

    larder::RedisClusterOptions options;
    options.seeds.push_back({.host = world->server.host(), .port = world->server.port()});
    options.node.connect_timeout = 300ms;
    options.node.command_timeout = 300ms;
    World* w = world.get();
    options.node.log = {.level = larder::LogLevel::debug,
                        .sink = [w, key](larder::LogLevel, std::string_view) {
                            thread_local bool inside = false;
                            ++w->heard;
                            if (inside || !w->cluster) return;
                            inside = true;
                            try {
                                (void)w->cluster->get(key);
                            } catch (...) {
                            }
                            inside = false;
                        }};
    world->cluster = std::make_unique<larder::RedisClusterBackend>(options);
    world->server.kill();

    const bool returned = finishes_within([world, key] {
        try {
            (void)world->cluster->get(key);
        } catch (const larder::BackendError&) {
        }
    });
    CHECK(world->heard.load() > 0);
    REQUIRE(returned);
}

// BackendCallEvent is documented as "one call to a backend (on Redis, one round trip or
// one failed attempt)", and PrometheusMetrics helps its histogram as "backend calls (on
// Redis, round trips)". A script call whose EVALSHA answers NOSCRIPT (after SCRIPT FLUSH,
// a restart or a failover) makes two round trips - the refused EVALSHA and the EVAL -
// under one timer in RedisBackend::run(): the listener hears one event, not failed, whose
// duration covers both. (RedisBackend's Sentinel READONLY retry is the same: two attempts,
// the first failed, one event.) Either the event is per round trip as documented, or the
// documentation must say it is per call of the backend's API.
TEST_CASE("Review: a script call retried after NOSCRIPT is reported per round trip",
          "[redis][metrics][review]") {
    struct Heard final : larder::MetricsListener {
        std::atomic<int> calls{0};
        void on_backend_call(const larder::BackendCallEvent&) noexcept override { ++calls; }
    } heard;
    larder::test::RedisServer server;
    auto redis = larder::test::make_test_backend(server, {.name = "main", .metrics = &heard});
    (void)redis.compare_and_delete("k", "v");  // loads the script
    REQUIRE(server.query({"SCRIPT", "FLUSH"}).render() == "OK");

    const auto before = redis.stats().round_trips;
    heard.calls = 0;
    CHECK_FALSE(redis.compare_and_delete("k", "v"));
    const auto round_trips = redis.stats().round_trips - before;
    CHECK(round_trips == 2);  // EVALSHA (NOSCRIPT), then EVAL
    CHECK(static_cast<std::uint64_t>(heard.calls.load()) == round_trips);
}

#endif

// PrometheusMetrics accepts any finite, positive, ascending buckets, and writes each bound
// with std::to_chars(..., chars_format::fixed) into a 64-byte buffer. A bound of 1e70
// needs 71 characters: to_chars fails (value_too_large, ptr == end) and the unset buffer
// is written as the le label - garbage bytes where a number must be.
TEST_CASE("Review: a large histogram bound is written as a number", "[metrics][review]") {
    larder::PrometheusMetrics metrics({.buckets = {0.001, 1e70}});
    metrics.on_load({.cache = "x", .took = 1ms});
    const std::string text = metrics.text();
    INFO(text);
    REQUIRE_NOTHROW(parse_prometheus(text));
    const auto parsed = parse_prometheus(text);
    std::size_t buckets = 0;
    for (const auto& s : parsed.samples) {
        if (s.name != "larder_load_duration_seconds_bucket") continue;
        ++buckets;
        const std::string& le = s.labels.at("le");
        if (le == "+Inf") continue;
        CHECK((std::strtod(le.c_str(), nullptr) == 0.001 ||
               std::strtod(le.c_str(), nullptr) == 1e70));
    }
    CHECK(buckets == 3);
}
