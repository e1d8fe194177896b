// One stats shape: every stats struct is a plain aggregate of counters described by its
// counter_set (names an exporter uses), counted in striped counters, and stats() is
// const and local: it neither fails nor waits when the store is gone.
#include <larder/larder.hpp>
#include <larder/near/near_cache.hpp>

#include <cctype>
#include <chrono>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include "support/catch.hpp"

#if defined(LARDER_TEST_HAVE_REDIS) && defined(LARDER_TEST_HAVE_REDIS_SERVER)
#include <larder/backend/redis/write_behind_store.hpp>
#include <larder/backend/redis_cluster.hpp>

#include "support/redis_fixture.hpp"
#endif

using namespace std::chrono_literals;

namespace {

// Every member of S that counter_set<S> does not list is one of `others` bytes: a struct
// that gains a counter without a name for it fails here.
template <class S>
void check_counter_set(std::size_t others = 0) {
    const auto& fields = larder::counter_set<S>::fields;
    CHECK(fields.size() * sizeof(std::uint64_t) + others == sizeof(S));
    std::set<std::string_view> names;
    for (const auto& f : fields) {
        INFO(f.name);
        CHECK(names.insert(f.name).second);
        CHECK_FALSE(f.help.empty());
        for (char c : f.name) CHECK((std::islower(static_cast<unsigned char>(c)) || c == '_'));
        // Each field names its own member: set it alone and read it back by name.
        S s{};
        s.*f.member = 7;
        std::size_t seven = 0;
        larder::for_each_counter(s, [&](const larder::CounterField<S>& g, std::uint64_t v) {
            if (v == 7) {
                ++seven;
                CHECK(g.name == f.name);
            }
        });
        CHECK(seven == 1);
    }
}

}  // namespace

TEST_CASE("Every stats struct names each of its counters once", "[stats]") {
    check_counter_set<larder::StatsSnapshot>();
    check_counter_set<larder::WriteThroughStats>(sizeof(larder::StatsSnapshot));
    check_counter_set<larder::WriteBehindStats>(sizeof(larder::StatsSnapshot));
    check_counter_set<larder::NearCacheStats>();
#if defined(LARDER_TEST_HAVE_REDIS)
    check_counter_set<larder::RedisBackendStats>();
    check_counter_set<larder::RedisClusterStats>();
#endif
}

TEST_CASE("Striped counters sum increments from many threads", "[stats]") {
    larder::detail::StripedCounters<larder::StatsSnapshot> counters;
    std::vector<std::thread> threads;
    for (int t = 0; t < 8; ++t) {
        threads.emplace_back([&] {
            for (int i = 0; i < 10'000; ++i) counters.add<&larder::StatsSnapshot::hits>();
            counters.add<&larder::StatsSnapshot::loads>(3);
        });
    }
    for (auto& t : threads) t.join();
    const auto s = counters.snapshot();
    REQUIRE(s.hits == 80'000);
    REQUIRE(s.loads == 24);
    REQUIRE(counters.get<&larder::StatsSnapshot::hits>() == 80'000);
    larder::StatsSnapshot expected;
    expected.hits = 80'000;
    expected.loads = 24;
    REQUIRE(s == expected);  // nothing else moved
}

TEST_CASE("stats() is callable on a const policy and counts each side", "[stats]") {
    larder::MemoryBackend store;
    using WriteBehind = larder::WriteBehind<std::string, larder::MemoryBackend>;
    WriteBehind wb(store, [](std::span<const WriteBehind::Entry>) { return larder::BatchResult{}; },
                   {.start_flusher = false});
    wb.put("a", "1");
    wb.put("b", "2");
    (void)wb.get("a", [] { return std::optional<std::string>("db"); });
    const WriteBehind& view = wb;
    const larder::WriteBehindStats s = view.stats();
    REQUIRE(s.puts == 2);
    REQUIRE(s.reads.hits == 1);
    REQUIRE(wb.queue_stats().pending == 2);
    wb.flush();
    REQUIRE(view.stats().flushed == 2);
    REQUIRE(wb.queue_stats().pending == 0);

    larder::NearCache<std::string> l1({.max_entries = 16});
    l1.put("k", "v", 1min);
    (void)l1.get("k");
    (void)l1.get("missing");
    const auto n = std::as_const(l1).stats();
    REQUIRE(n.hits == 1);
    REQUIRE(n.misses == 1);
}

#if defined(LARDER_TEST_HAVE_REDIS) && defined(LARDER_TEST_HAVE_REDIS_SERVER)

TEST_CASE("stats() does no I/O: it answers with Redis gone; queue_stats() says it is gone",
          "[redis][stats]") {
    larder::test::RedisServer server;
    auto redis = larder::test::make_test_backend(server, {.command_timeout = 200ms});
    using WriteBehind = larder::WriteBehind<std::string, larder::RedisBackend>;
    WriteBehind wb(redis, [](std::span<const WriteBehind::Entry>) { return larder::BatchResult{}; },
                   {.start_flusher = false, .eviction_check = larder::EvictionCheck::ignore});
    wb.put("a", "1");
    REQUIRE(wb.queue_stats().pending == 1);
    const auto round_trips = redis.stats().round_trips;

    server.kill();
    const auto s = wb.stats();  // must neither throw nor wait for the dead server
    REQUIRE(s.puts == 1);
    REQUIRE(redis.stats().round_trips == round_trips);  // no call was made
    REQUIRE_THROWS_AS(wb.queue_stats(), larder::BackendError);
}

#endif
