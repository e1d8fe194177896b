// XFetch: the decision against the paper's formula, its statistics, the seed's formula
// as a regression, and a steady-load simulation on a ManualClock.
#include <larder/larder.hpp>

#include <cmath>
#include <random>
#include <vector>

#include "support/catch.hpp"

using namespace std::chrono_literals;
using larder::Millis;
using std::chrono::microseconds;

namespace {

// The seed's get_xfetch, transcribed: when its condition holds it falls through (`pass`)
// to "fetch from DB", otherwise it returns the cached value. So it refreshes when:
bool seed_xfetch_refreshes(double remaining_ttl, double beta, double random) {
    return remaining_ttl - beta * std::log(random) < 0;
}

}  // namespace

TEST_CASE("XFetch decides as the formula says", "[xfetch][stampede]") {
    using larder::xfetch_should_refresh;
    // now - delta*beta*ln(U) >= expiry   <=>   -delta*beta*ln(U) >= remaining
    struct Row {
        Millis remaining;
        microseconds delta;
        double beta;
        double u;
        bool refresh;
    };
    const double u_half = 0.5;  // -ln(0.5) = 0.693
    const std::vector<Row> table{
        // beta = 0 never refreshes early, whatever the draw
        {1ms, 1'000'000us, 0.0, 1e-300, false},
        {100ms, 1'000'000us, 0.0, 1e-12, false},
        // U = 1 refreshes only at expiry
        {1ms, 1'000'000us, 1.0, 1.0, false},
        {0ms, 1'000'000us, 1.0, 1.0, true},
        {-5ms, 1'000'000us, 1.0, 1.0, true},
        // delta 1 s, beta 1, U 0.5: the threshold is 693 ms
        {692ms, 1'000'000us, 1.0, u_half, true},
        {694ms, 1'000'000us, 1.0, u_half, false},
        // larger delta refreshes earlier (further from expiry)
        {2000ms, 1'000'000us, 1.0, u_half, false},
        {2000ms, 3'000'000us, 1.0, u_half, true},
        // larger beta refreshes earlier
        {2000ms, 1'000'000us, 3.0, u_half, true},
        // no delta measured: never early
        {1ms, 0us, 1.0, 1e-12, false},
    };
    for (const auto& r : table) {
        INFO("remaining " << r.remaining.count() << " ms, delta " << r.delta.count() << " us, beta "
                          << r.beta << ", U " << r.u);
        REQUIRE(xfetch_should_refresh(r.remaining, r.delta, r.beta, r.u) == r.refresh);
    }
}

TEST_CASE("XFetch's early-refresh frequency is exp(-t / (beta * delta))", "[xfetch][stampede]") {
    std::mt19937_64 rng(12345);
    std::uniform_real_distribution<double> uniform(0.0, 1.0);
    auto draw = [&] { return 1.0 - uniform(rng); };  // (0, 1]
    struct Point {
        Millis t;
        microseconds delta;
        double beta;
    };
    const std::vector<Point> points{
        {100ms, 100'000us, 1.0},  {500ms, 100'000us, 1.0}, {50ms, 100'000us, 2.0},
        {1000ms, 250'000us, 1.5}, {20ms, 50'000us, 0.5},   {3000ms, 1'000'000us, 1.0},
    };
    const int n = 100'000;
    for (const auto& p : points) {
        int refreshed = 0;
        for (int i = 0; i < n; ++i) {
            refreshed += larder::xfetch_should_refresh(p.t, p.delta, p.beta, draw()) ? 1 : 0;
        }
        const double expected = std::exp(-static_cast<double>(p.t.count()) /
                                         (p.beta * static_cast<double>(p.delta.count()) / 1000.0));
        const double sigma = std::sqrt(expected * (1 - expected) / n);
        const double observed = static_cast<double>(refreshed) / n;
        INFO("t " << p.t.count() << " ms, delta " << p.delta.count() << " us, beta " << p.beta
                  << ": observed " << observed << ", expected " << expected);
        REQUIRE(std::abs(observed - expected) <= 4 * sigma + 1e-9);
    }
}

TEST_CASE("The textbook XFetch formula never refreshes a live key", "[xfetch][stampede]") {
    std::mt19937_64 rng(7);
    std::uniform_real_distribution<double> uniform(0.0, 1.0);
    int seed_refreshes = 0, larder_refreshes = 0;
    for (int i = 0; i < 100'000; ++i) {
        const double u = 1.0 - uniform(rng);
        const double remaining_s = 0.001 + 0.05 * uniform(rng);  // close to expiry
        // -log(u) >= 0 and remaining > 0: the seed's condition is never true.
        seed_refreshes += seed_xfetch_refreshes(remaining_s, 1.0, u) ? 1 : 0;
        larder_refreshes += larder::xfetch_should_refresh(
                                Millis{static_cast<long>(remaining_s * 1000)}, 100'000us, 1.0, u)
                                ? 1
                                : 0;
    }
    REQUIRE(seed_refreshes == 0);
    REQUIRE(larder_refreshes > 50'000);  // with delta = 100 ms, most near-expiry reads refresh
}

TEST_CASE("XFetch under steady load recomputes about once per TTL and no reader misses",
          "[xfetch][stampede]") {
    larder::ManualClock clock;
    larder::MemoryBackend backend({.clock = &clock});
    std::mt19937_64 rng(2024);
    std::uniform_real_distribution<double> uniform(0.0, 1.0);
    larder::CacheAside<std::string, larder::MemoryBackend, larder::XFetch> cache(
        backend, {.ttl = 60s, .clock = &clock},
        larder::XFetch(
            {.beta = 1.0, .background = true, .random = [&] { return 1.0 - uniform(rng); }}));
    int recomputes = 0;
    // The recompute takes 2 s of (manual) time; it runs on the background thread.
    auto loader = [&clock, &recomputes] {
        ++recomputes;
        clock.advance(2s);
        return std::optional<std::string>("v" + std::to_string(recomputes));
    };
    (void)cache.get("hot", loader);  // the cold load
    const auto start = clock.now();
    const int reads = 100'000;  // one read every 50 ms: 5000 s, ~83 TTL periods
    for (int i = 0; i < reads; ++i) {
        clock.advance(50ms);
        const auto before = cache.stats().misses;
        REQUIRE(cache.get("hot", loader));
        REQUIRE(cache.stats().misses == before);  // never waits on a load
        cache.wait_for_background_refreshes();
    }
    const double periods = static_cast<double>((clock.now() - start) / 1ms) / 60'000.0;
    const double per_period = (recomputes - 1) / periods;
    INFO("recomputes per TTL period: " << per_period);
    REQUIRE(per_period >= 0.9);
    REQUIRE(per_period <= 1.3);
    REQUIRE(cache.stats().early_refreshes == static_cast<std::uint64_t>(recomputes - 1));
}
