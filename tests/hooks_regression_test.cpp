// Regressions of the logging and metrics hooks found by probing them: a log sink calling
// back into a WriteBehind, a script retry reported to a MetricsListener, an extreme
// histogram bound. Each case here failed when it was written.
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

// close() is idempotent (a later or concurrent call gets the one drain's report), and it
// logs an incomplete drain only once its drain lock is released: a sink that calls
// close() from that very line gets the report instead of waiting on itself for ever.
TEST_CASE("A log sink may call WriteBehind::close() from the incomplete-drain log", "[log]") {
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

// A listener event is one call of the backend's API: a retry inside it (EVAL after
// EVALSHA found the script flushed, a Sentinel failover) is part of that call, timed with
// it, and does not make it a failure when the retry succeeds.
TEST_CASE("A script call retried after NOSCRIPT is one listener event, not failed",
          "[redis][metrics]") {
    struct Heard final : larder::MetricsListener {
        std::atomic<int> calls{0};
        std::atomic<int> failed{0};
        void on_backend_call(const larder::BackendCallEvent& e) noexcept override {
            ++calls;
            if (e.failed) ++failed;
        }
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
    CHECK(heard.calls.load() == 1);
    CHECK(heard.failed.load() == 0);
}

#endif

// PrometheusMetrics accepts any finite, positive, ascending buckets, and writes each bound
// with std::to_chars(..., chars_format::fixed) into a 64-byte buffer. A bound of 1e70
// needs 71 characters: to_chars fails (value_too_large, ptr == end) and the unset buffer
// is written as the le label - garbage bytes where a number must be.
TEST_CASE("A large histogram bound is written as a number", "[metrics]") {
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
