// authenticated_bench: what Authenticated<B> adds to a cache hit. The same CacheAside hit
// (200-byte string values over 10,000 keys, read in a fixed random order) on the plain
// backend and on Authenticated<backend>, for MemoryBackend and for RedisBackend on a
// private redis-server; and the seal/verify of one value alone.
//
//   build/bench/bench/authenticated_bench --benchmark_repetitions=5
//       [--benchmark_report_aggregates_only=true] [--server_cpu=N]
//
// Compare the medians of the Plain and Authenticated rows of one run; the ratio is what
// one HMAC-SHA256 per hit costs relative to the rest of the hit.
#include <benchmark/benchmark.h>
#include <sched.h>

#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <optional>
#include <random>
#include <string>
#include <vector>

#include "larder/backend/authenticated.hpp"
#include "larder/backend/memory.hpp"
#include "larder/backend/redis.hpp"
#include "larder/codec/raw.hpp"
#include "larder/policy/cache_aside.hpp"
#include "support/redis.hpp"
#include "support/report.hpp"

namespace {

constexpr std::size_t key_count = 10'000;
constexpr std::size_t order_size = 1 << 16;

const larder::AuthenticationOptions auth_options{
    .keys = {{.id = 1, .secret = std::string(32, 's')}}, .write_key_id = 1};

std::vector<std::string> make_keys() {
    std::vector<std::string> keys;
    for (std::size_t i = 0; i < key_count; ++i) keys.push_back("user:" + std::to_string(i));
    return keys;
}

std::vector<std::size_t> make_order() {
    std::mt19937_64 rng(42);
    std::uniform_int_distribution<std::size_t> pick(0, key_count - 1);
    std::vector<std::size_t> order(order_size);
    for (auto& o : order) o = pick(rng);
    return order;
}

const std::vector<std::string>& keys() {
    static const auto k = make_keys();
    return k;
}
const std::vector<std::size_t>& order() {
    static const auto o = make_order();
    return o;
}
const std::string value(200, 'v');

std::unique_ptr<larder::test::RedisServer> server;

// Fills every key once, then reads them as hits; a miss would call the loader, which
// aborts the run (the rows must measure hits only).
template <class Cache>
void run_hits(benchmark::State& state, Cache& cache) {
    for (const auto& k : keys()) cache.set(k, value);
    auto loader = []() -> std::optional<std::string> { std::abort(); };
    std::size_t i = 0;
    for (auto _ : state) {
        auto v = cache.get(keys()[order()[i++ & (order_size - 1)]], loader);
        benchmark::DoNotOptimize(v);
    }
    if (cache.stats().misses != 0) state.SkipWithError("a read missed");
}

const larder::CacheAsideOptions cache_options{.ttl = std::chrono::hours(1)};

void BM_Memory_Hit_Plain(benchmark::State& state) {
    larder::MemoryBackend backend;
    larder::CacheAside<std::string, larder::MemoryBackend> cache(backend, cache_options);
    run_hits(state, cache);
}

void BM_Memory_Hit_Authenticated(benchmark::State& state) {
    larder::MemoryBackend backend;
    larder::Authenticated<larder::MemoryBackend> sealed(backend, auth_options);
    larder::CacheAside<std::string, larder::Authenticated<larder::MemoryBackend>> cache(
        sealed, cache_options);
    run_hits(state, cache);
}

void BM_Redis_Hit_Plain(benchmark::State& state) {
    larder::RedisBackend backend(larder::bench::options_for(*server));
    larder::CacheAside<std::string, larder::RedisBackend> cache(backend, cache_options);
    run_hits(state, cache);
}

void BM_Redis_Hit_Authenticated(benchmark::State& state) {
    larder::RedisBackend backend(larder::bench::options_for(*server));
    larder::Authenticated<larder::RedisBackend> sealed(backend, auth_options);
    larder::CacheAside<std::string, larder::Authenticated<larder::RedisBackend>> cache(
        sealed, cache_options);
    run_hits(state, cache);
}

// The decorator's own work on one 264-byte entry (envelope + 200-byte value), no store.
void BM_Seal(benchmark::State& state) {
    larder::MemoryBackend backend;
    larder::Authenticated<larder::MemoryBackend> sealed(backend, auth_options);
    const std::string entry(264, 'e');
    for (auto _ : state) benchmark::DoNotOptimize(sealed.seal("user:42", entry));
}

void BM_Open(benchmark::State& state) {
    larder::MemoryBackend backend;
    larder::Authenticated<larder::MemoryBackend> sealed(backend, auth_options);
    const std::string stored = sealed.seal("user:42", std::string(264, 'e'));
    for (auto _ : state) benchmark::DoNotOptimize(sealed.open("user:42", stored));
}

// Plain and authenticated rows alternate, so that both see the same machine state.
BENCHMARK(BM_Memory_Hit_Plain);
BENCHMARK(BM_Memory_Hit_Authenticated);
BENCHMARK(BM_Redis_Hit_Plain);
BENCHMARK(BM_Redis_Hit_Authenticated);
BENCHMARK(BM_Seal);
BENCHMARK(BM_Open);

}  // namespace

int main(int argc, char** argv) {
    int server_cpu = -1;
    int out = 1;
    for (int i = 1; i < argc; ++i) {
        if (std::strncmp(argv[i], "--server_cpu=", 13) == 0) {
            server_cpu = std::atoi(argv[i] + 13);
        } else {
            argv[out++] = argv[i];
        }
    }
    argc = out;
    larder::bench::initialize(argc, argv);
    if (benchmark::ReportUnrecognizedArguments(argc, argv)) return 1;
    server = larder::bench::start_redis_server();
    if (server_cpu >= 0) {
        cpu_set_t cpus;
        CPU_ZERO(&cpus);
        CPU_SET(server_cpu, &cpus);
        if (sched_setaffinity(server->pid(), sizeof cpus, &cpus) != 0) {
            std::fprintf(stderr, "cannot pin redis-server to CPU %d\n", server_cpu);
            return 1;
        }
    }
    const std::string redis = larder::bench::redis_version(*server);
    larder::bench::add_context("redis_version", redis);
    std::printf("redis-server %s (private, started by this program); %s\n", redis.c_str(),
                larder::bench::machine_description().c_str());
    benchmark::RunSpecifiedBenchmarks();
    benchmark::Shutdown();
    server.reset();
    return 0;
}
