// Production hooks: PrometheusMetrics (latency histograms from the MetricsListener hook,
// counters pulled from stats()), its output read back by a strict parser of the text
// format, and the Logger every policy and Redis backend takes.
#include <larder/larder.hpp>
#include <larder/metrics/prometheus.hpp>

#include <atomic>
#include <chrono>
#include <mutex>
#include <stdexcept>
#include <string>
#include <vector>

#include "support/catch.hpp"
#include "support/eventually.hpp"
#include "support/prometheus_text.hpp"

#if defined(LARDER_TEST_HAVE_REDIS) && defined(LARDER_TEST_HAVE_REDIS_SERVER)
#include "support/redis_fixture.hpp"
#endif

using namespace std::chrono_literals;
using larder::test::parse_prometheus;

namespace {

using Labels = std::map<std::string, std::string>;

std::optional<std::string> row() {
    return "row";
}

// What a Logger's sink heard, from any thread.
class Heard {
public:
    larder::Logger logger(larder::LogLevel level = larder::LogLevel::debug) {
        return {.level = level, .sink = [this](larder::LogLevel at, std::string_view m) {
                    std::lock_guard lock(mutex_);
                    lines_.emplace_back(at, std::string(m));
                }};
    }
    /// The level of the first line containing `text`, or nullopt.
    std::optional<larder::LogLevel> level_of(std::string_view text) const {
        std::lock_guard lock(mutex_);
        for (const auto& [at, line] : lines_) {
            if (line.find(text) != std::string::npos) return at;
        }
        return std::nullopt;
    }

private:
    mutable std::mutex mutex_;
    std::vector<std::pair<larder::LogLevel, std::string>> lines_;
};

}  // namespace

TEST_CASE("PrometheusMetrics exports a cache's counters and its loads' latencies", "[metrics]") {
    larder::PrometheusMetrics metrics;
    larder::MemoryBackend store;
    larder::CacheAside<std::string, larder::MemoryBackend> users(
        store, {.name = "users", .metrics = &metrics});
    metrics.add("users", users);

    for (int i = 0; i < 5; ++i) REQUIRE(users.get("k", row) == "row");
    REQUIRE_THROWS(users.get("broken", []() -> std::optional<std::string> {
        throw std::runtime_error("database down");
    }));

    const auto text = parse_prometheus(metrics.text());
    const Labels users_label{{"cache", "users"}};
    CHECK(text.type.at("larder_cache_hits_total") == "counter");
    CHECK(text.value("larder_cache_hits_total", users_label) == 4);
    CHECK(text.value("larder_cache_loads_total", users_label) == 2);
    CHECK(text.value("larder_cache_load_errors_total", users_label) == 1);
    CHECK(text.type.at("larder_load_duration_seconds") == "histogram");
    CHECK(text.value("larder_load_duration_seconds_count", users_label) == 2);
    CHECK(text.value("larder_load_failures_total", users_label) == 1);
    CHECK(text.value("larder_load_duration_seconds_sum", users_label) >= 0);
    // Every counter of the stats struct is there, under its documented name.
    for (const auto& f : larder::counter_set<larder::StatsSnapshot>::fields) {
        CHECK(text.has("larder_cache_" + std::string(f.name) + "_total", users_label));
    }
}

TEST_CASE("Several caches share one metric per counter; a policy's reads are cache counters",
          "[metrics]") {
    larder::PrometheusMetrics metrics;
    larder::MemoryBackend store;
    larder::CacheAside<std::string, larder::MemoryBackend> a(store, {.key_prefix = "a:"});
    larder::CacheAside<std::string, larder::MemoryBackend> b(store, {.key_prefix = "b:"});
    using Behind = larder::WriteBehind<std::string, larder::MemoryBackend>;
    Behind c(store, [](std::span<const Behind::Entry>) { return larder::BatchResult{}; },
             {.start_flusher = false, .cache = {.key_prefix = "c:"}});
    metrics.add("a", a);
    metrics.add("b", b);
    metrics.add("c", c);
    (void)a.get("k", row);
    (void)b.get("k", row);
    (void)b.get("k", row);
    c.put("k", "v");
    (void)c.get("k", row);

    const auto text = parse_prometheus(metrics.text());  // throws if a metric is split
    CHECK(text.value("larder_cache_hits_total", {{"cache", "a"}}) == 0);
    CHECK(text.value("larder_cache_hits_total", {{"cache", "b"}}) == 1);
    CHECK(text.value("larder_cache_hits_total", {{"cache", "c"}}) == 1);
    CHECK(text.value("larder_write_behind_puts_total", {{"cache", "c"}}) == 1);

    metrics.remove("b");
    CHECK_FALSE(parse_prometheus(metrics.text()).has("larder_cache_hits_total", {{"cache", "b"}}));
}

TEST_CASE("Label values and help text are escaped", "[metrics]") {
    larder::PrometheusMetrics metrics;
    const std::string name = "we\"ird\\name\nwith a line break";
    metrics.on_load({.cache = name, .took = 2ms, .failed = false});
    metrics.on_backend_call(
        {.backend = "r", .operation = "eval \"x\"", .took = 20s, .failed = true});
    const auto text = parse_prometheus(metrics.text());
    CHECK(text.value("larder_load_duration_seconds_count", {{"cache", name}}) == 1);
    // 2 ms lies in the 0.0025 bucket and not in the 0.001 one.
    CHECK(text.value("larder_load_duration_seconds_bucket", {{"cache", name}, {"le", "0.001"}}) ==
          0);
    CHECK(text.value("larder_load_duration_seconds_bucket", {{"cache", name}, {"le", "0.0025"}}) ==
          1);
    // 20 s is above every bound: only +Inf has it.
    const Labels call{{"backend", "r"}, {"operation", "eval \"x\""}};
    auto with_le = [&](std::string le) {
        Labels l = call;
        l["le"] = std::move(le);
        return l;
    };
    CHECK(text.value("larder_backend_call_duration_seconds_bucket", with_le("10")) == 0);
    CHECK(text.value("larder_backend_call_duration_seconds_bucket", with_le("+Inf")) == 1);
    CHECK(text.value("larder_backend_call_failures_total", call) == 1);
    CHECK(text.value("larder_backend_call_duration_seconds_sum", call) == 20);
}

TEST_CASE("PrometheusMetrics refuses a bad prefix or bad buckets", "[metrics]") {
    CHECK_THROWS_AS(larder::PrometheusMetrics({.prefix = "9lives"}), larder::ConfigError);
    CHECK_THROWS_AS(larder::PrometheusMetrics({.prefix = "my-app"}), larder::ConfigError);
    CHECK_THROWS_AS(larder::PrometheusMetrics({.buckets = {}}), larder::ConfigError);
    CHECK_THROWS_AS(larder::PrometheusMetrics({.buckets = {0.1, 0.01}}), larder::ConfigError);
    CHECK_THROWS_AS(larder::PrometheusMetrics({.buckets = {0.1, 0.1}}), larder::ConfigError);
    CHECK_THROWS_AS(larder::PrometheusMetrics({.buckets = {-1, 1}}), larder::ConfigError);
    larder::PrometheusMetrics custom({.prefix = "app_cache", .buckets = {0.5, 1}});
    custom.on_load({.cache = "x", .took = 700ms});
    const auto text = parse_prometheus(custom.text());
    CHECK(text.value("app_cache_load_duration_seconds_bucket", {{"cache", "x"}, {"le", "1"}}) == 1);
}

TEST_CASE("A histogram takes observations from many threads", "[metrics][concurrency]") {
    larder::PrometheusMetrics metrics;
    std::vector<std::thread> threads;
    for (int t = 0; t < 4; ++t) {
        threads.emplace_back([&, t] {
            for (int i = 0; i < 5000; ++i) {
                metrics.on_backend_call({.backend = "b",
                                         .operation = (i % 2) ? "get" : "set",
                                         .took = std::chrono::microseconds(i % 3000),
                                         .failed = (i % 10 == 0)});
                if (t == 0 && i % 500 == 0) (void)parse_prometheus(metrics.text());
            }
        });
    }
    for (auto& th : threads) th.join();
    const auto text = parse_prometheus(metrics.text());
    const Labels get{{"backend", "b"}, {"operation", "get"}};
    const Labels set{{"backend", "b"}, {"operation", "set"}};
    CHECK(text.value("larder_backend_call_duration_seconds_count", get) == 10'000);
    CHECK(text.value("larder_backend_call_duration_seconds_count", set) == 10'000);
    CHECK(text.value("larder_backend_call_failures_total", set) == 2'000);
}

TEST_CASE("Logger filters by level before it formats, and survives a throwing sink", "[log]") {
    int made = 0;
    auto make = [&] {
        ++made;
        return std::string("message");
    };
    std::vector<std::string> got;
    larder::Logger log{.level = larder::LogLevel::warn,
                       .sink = [&](larder::LogLevel, std::string_view m) { got.emplace_back(m); }};
    log(larder::LogLevel::debug, make);
    log(larder::LogLevel::info, make);
    CHECK(made == 0);
    log(larder::LogLevel::warn, make);
    log(larder::LogLevel::error, make);
    CHECK(made == 2);
    CHECK(got == std::vector<std::string>{"message", "message"});

    log.level = larder::LogLevel::off;
    log(larder::LogLevel::error, make);
    CHECK(made == 2);

    larder::Logger throwing{
        .sink = [](larder::LogLevel, std::string_view) { throw std::runtime_error("disk full"); }};
    CHECK_NOTHROW(throwing(larder::LogLevel::error, "x"));
}

TEST_CASE("A refresh that fails behind the caller's back is logged, once per failure", "[log]") {
    Heard heard;
    larder::ManualClock clock;
    larder::MemoryBackend store({.clock = &clock});
    larder::CacheAside<std::string, larder::MemoryBackend> cache(
        store, {.ttl = 1s, .grace = 1min, .clock = &clock, .name = "users", .log = heard.logger()});
    REQUIRE(cache.get("k", row) == "row");
    clock.advance(2s);
    // Stale within grace: the loader's failure is not the caller's - only the log hears it.
    REQUIRE(cache.get("k", []() -> std::optional<std::string> {
        throw std::runtime_error("database down");
    }) == "row");
    const auto level = heard.level_of("refreshing 'k' failed (database down)");
    REQUIRE(level.has_value());
    CHECK(*level == larder::LogLevel::warn);
    CHECK(heard.level_of("cache 'users'").has_value());
}

TEST_CASE("WriteBehind logs dead letters at error through cache.log", "[log]") {
    Heard heard;
    larder::MemoryBackend store;
    using Behind = larder::WriteBehind<std::string, larder::MemoryBackend>;
    Behind wb(store,
              [](std::span<const Behind::Entry> entries) {
                  larder::BatchResult r;
                  for (std::size_t i = 0; i < entries.size(); ++i) r.fail(i, "constraint violated");
                  return r;
              },
              {.start_flusher = false,
               .retry = {.max_attempts = 1, .budget = larder::Millis{0}},
               .cache = {.log = heard.logger()}});
    wb.put("poison", "x");
    wb.flush();
    const auto level = heard.level_of("dead-lettered 'poison'");
    REQUIRE(level.has_value());
    CHECK(*level == larder::LogLevel::error);
}

#if defined(LARDER_TEST_HAVE_REDIS) && defined(LARDER_TEST_HAVE_REDIS_SERVER)

TEST_CASE("RedisBackend reports every call to the listener, failures included",
          "[redis][metrics]") {
    larder::test::RedisServer server;
    larder::PrometheusMetrics metrics;
    auto redis = larder::test::make_test_backend(
        server, {.command_timeout = 300ms, .name = "main", .metrics = &metrics});
    metrics.add("main", redis);
    for (int i = 0; i < 3; ++i) redis.set("k", "v", larder::no_expiry);
    REQUIRE(redis.get("k").has_value());
    REQUIRE(redis.get("k").has_value());
    REQUIRE(redis.compare_and_delete("k", "not v") == false);

    auto text = parse_prometheus(metrics.text());
    auto op = [](std::string o) {
        return Labels{{"backend", "main"}, {"operation", std::move(o)}};
    };
    CHECK(text.value("larder_backend_call_duration_seconds_count", op("set")) == 3);
    CHECK(text.value("larder_backend_call_duration_seconds_count", op("get")) == 2);
    CHECK(text.value("larder_backend_call_duration_seconds_count", op("compare_and_delete")) == 1);
    CHECK(text.value("larder_backend_call_failures_total", op("get")) == 0);
    CHECK(text.value("larder_redis_round_trips_total", {{"backend", "main"}}) >= 6);

    server.kill();
    REQUIRE_THROWS_AS(redis.get("k"), larder::BackendError);
    text = parse_prometheus(metrics.text());
    CHECK(text.value("larder_backend_call_duration_seconds_count", op("get")) == 3);
    CHECK(text.value("larder_backend_call_failures_total", op("get")) == 1);
    CHECK(text.value("larder_redis_errors_total", {{"backend", "main"}}) >= 1);
}

TEST_CASE("RedisBackend logs its circuit breaker opening (warn) and closing (info)",
          "[redis][log]") {
    Heard heard;
    larder::test::RedisServer server;
    auto redis = larder::test::make_test_backend(
        server, {.command_timeout = 200ms,
                 .reconnect_backoff = 10ms,
                 .breaker = {.failure_threshold = 2, .cool_down = 100ms},
                 .log = heard.logger()});
    redis.set("k", "v", larder::no_expiry);
    server.stop();
    for (int i = 0; i < 4; ++i) CHECK_THROWS_AS(redis.get("k"), larder::BackendError);
    REQUIRE(redis.breaker_state() == larder::BreakerState::open);
    const auto opened = heard.level_of("circuit breaker open");
    REQUIRE(opened.has_value());
    CHECK(*opened == larder::LogLevel::warn);
    CHECK(heard.level_of("connecting failed") == larder::LogLevel::info);

    server.restart();
    REQUIRE(larder::test::eventually([&] {
        try {
            (void)redis.get("k");
            return true;
        } catch (const larder::BackendError&) {
            return false;
        }
    }));
    CHECK(heard.level_of("circuit breaker closed") == larder::LogLevel::info);
}

#endif
