// redis_bench: a CacheAside hit on Redis against the hiredis code a user would otherwise
// write, in the same run, on a private redis-server (loopback, started and stopped here).
//
//   peer (hand-written)                         larder
//   GET, 1 connection, 1 thread                 CacheAside<std::string, RedisBackend> hit
//   GET, 8 threads, a connection each           the same, 8 threads over the pool (8)
//   GET, 1 connection                           CacheAside hit with Guards<XFetch, Lock>
//                                               and one tag (one MGET of value and version)
//   MGET of 100 keys (one command)              get_many of 100 keys
//
// Values are 200 bytes (larder stores them behind its 56-byte envelope). The diagnostic
// rows (Diag_*) split the difference: what the library sends on the wire, done by hand
// (GET + PTTL in one pipeline; GET + PTTL per key for a batch), RedisBackend alone, and
// two other ways to read a batch with its TTLs (MGET + a PTTL per key; one EVALSHA).
//
// After the table: ratios from the table, then an interleaved A/B pass (see
// support/report.hpp) whose ratios are the ones to compare with the targets.
// Extra flags: --paired_rounds=N (default 20; 0 skips the A/B pass); --server_cpu=N pins
// redis-server to CPU N (with `taskset -c M redis_bench` for this program: see
// docs/performance.md on why that matters on a 2-core machine); --profile_ops=N runs
// every path N times (batches N/10) for an instruction profiler, and nothing else.
#include <benchmark/benchmark.h>
#include <sched.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <thread>
#include <vector>

#include "larder/backend/redis.hpp"
#include "larder/larder.hpp"
#include "support/redis.hpp"
#include "support/report.hpp"

namespace {

using larder::CacheAside;
using larder::RedisBackend;
using Guarded = larder::Guards<larder::XFetch, larder::Lock>;
using PlainCache = CacheAside<std::string, RedisBackend>;
using GuardedCache = CacheAside<std::string, RedisBackend, Guarded>;

constexpr std::size_t value_size = 200;
constexpr std::size_t batch_size = 100;
constexpr int pool_threads = 8;

struct World {
    std::unique_ptr<larder::test::RedisServer> server;
    std::unique_ptr<RedisBackend> backend;
    std::unique_ptr<PlainCache> plain;
    std::unique_ptr<GuardedCache> guarded;
    std::string value;
    // Keys of equal length on both sides.
    std::string raw_key = "user:raw:000042";
    std::string plain_key = "user:lar:000042";
    std::string guarded_key = "user:grd:000042";
    std::vector<std::string> raw_batch;
    std::vector<std::string> larder_batch;
    std::atomic<std::uint64_t> loader_calls{0};
    std::uint64_t misses_before = 0;  // the set-up's own misses (the first fills)
};

World* world = nullptr;

std::optional<std::string> load_value() {
    world->loader_calls.fetch_add(1, std::memory_order_relaxed);
    return world->value;
}

std::vector<std::optional<std::string>> load_batch(std::span<const std::string> keys) {
    world->loader_calls.fetch_add(keys.size(), std::memory_order_relaxed);
    return std::vector<std::optional<std::string>>(keys.size(), world->value);
}

// ---- one operation of each kind (shared by the benchmarks and the A/B pass) -----------

void raw_get_once(redisContext* c) {
    benchmark::DoNotOptimize(larder::bench::raw_get(c, world->raw_key));
}

void plain_hit_once() {
    auto v = world->plain->get(world->plain_key, load_value);
    benchmark::DoNotOptimize(v);
}

const std::vector<std::string> one_tag{"team:7"};

void guarded_hit_once() {
    auto v = world->guarded->get(world->guarded_key, one_tag, load_value);
    benchmark::DoNotOptimize(v);
}

void get_many_once() {
    auto v = world->plain->get_many(world->larder_batch, load_batch);
    benchmark::DoNotOptimize(v);
}

// What RedisBackend::get sends, by hand: GET and PTTL appended, then both replies read.
void raw_get_pttl_once(redisContext* c, const std::string& key) {
    const char* get_argv[2] = {"GET", key.data()};
    const char* pttl_argv[2] = {"PTTL", key.data()};
    const std::size_t get_lens[2] = {3, key.size()};
    const std::size_t pttl_lens[2] = {4, key.size()};
    redisAppendCommandArgv(c, 2, get_argv, get_lens);
    redisAppendCommandArgv(c, 2, pttl_argv, pttl_lens);
    void* value = nullptr;
    void* ttl = nullptr;
    if (redisGetReply(c, &value) != REDIS_OK || redisGetReply(c, &ttl) != REDIS_OK) {
        throw std::runtime_error(std::string("hiredis: ") + c->errstr);
    }
    auto* v = static_cast<redisReply*>(value);
    std::string copy(v->str, v->len);
    benchmark::DoNotOptimize(copy);
    benchmark::DoNotOptimize(static_cast<redisReply*>(ttl)->integer);
    freeReplyObject(value);
    freeReplyObject(ttl);
}

// What RedisBackend::get_many sends, by hand: GET + PTTL per key, one pipeline.
void raw_get_pttl_batch_once(redisContext* c, const std::vector<std::string>& keys) {
    for (const auto& k : keys) {
        const char* get_argv[2] = {"GET", k.data()};
        const char* pttl_argv[2] = {"PTTL", k.data()};
        const std::size_t get_lens[2] = {3, k.size()};
        const std::size_t pttl_lens[2] = {4, k.size()};
        redisAppendCommandArgv(c, 2, get_argv, get_lens);
        redisAppendCommandArgv(c, 2, pttl_argv, pttl_lens);
    }
    std::vector<std::string> out;
    out.reserve(keys.size());
    for (std::size_t i = 0; i < keys.size(); ++i) {
        void* value = nullptr;
        void* ttl = nullptr;
        if (redisGetReply(c, &value) != REDIS_OK || redisGetReply(c, &ttl) != REDIS_OK) {
            throw std::runtime_error(std::string("hiredis: ") + c->errstr);
        }
        auto* v = static_cast<redisReply*>(value);
        out.emplace_back(v->str, v->len);
        freeReplyObject(value);
        freeReplyObject(ttl);
    }
    benchmark::DoNotOptimize(out);
}

// MGET for the values, then PTTL per key, one pipeline: N + 1 commands instead of 2N.
void raw_mget_plus_pttl_once(redisContext* c, const std::vector<std::string>& keys) {
    // All appended before the first reply is read: one round trip.
    std::vector<const char*> argv{"MGET"};
    std::vector<std::size_t> lens{4};
    for (const auto& k : keys) {
        argv.push_back(k.data());
        lens.push_back(k.size());
    }
    redisAppendCommandArgv(c, static_cast<int>(argv.size()), argv.data(), lens.data());
    for (const auto& k : keys) {
        const char* pttl_argv[2] = {"PTTL", k.data()};
        const std::size_t pttl_lens[2] = {4, k.size()};
        redisAppendCommandArgv(c, 2, pttl_argv, pttl_lens);
    }
    void* values = nullptr;
    if (redisGetReply(c, &values) != REDIS_OK) throw std::runtime_error(c->errstr);
    std::vector<std::string> out;
    auto* arr = static_cast<redisReply*>(values);
    for (std::size_t i = 0; i < arr->elements; ++i) {
        out.emplace_back(arr->element[i]->str, arr->element[i]->len);
    }
    freeReplyObject(values);
    for (std::size_t i = 0; i < keys.size(); ++i) {
        void* ttl = nullptr;
        if (redisGetReply(c, &ttl) != REDIS_OK) throw std::runtime_error(c->errstr);
        benchmark::DoNotOptimize(static_cast<redisReply*>(ttl)->integer);
        freeReplyObject(ttl);
    }
    benchmark::DoNotOptimize(out);
}

// One EVALSHA that returns {MGET values, PTTL per key}: one command on the wire.
constexpr const char* mget_pttl_lua = R"lua(
local v = redis.call('MGET', unpack(KEYS))
local t = {}
for i = 1, #KEYS do t[i] = redis.call('PTTL', KEYS[i]) end
return {v, t}
)lua";

class RawEvalBatch {
public:
    RawEvalBatch(redisContext* c, const std::vector<std::string>& keys) {
        auto loaded = larder::bench::raw_command(c, {"SCRIPT", "LOAD", mget_pttl_lua});
        if (loaded->type != REDIS_REPLY_STRING) throw std::runtime_error("SCRIPT LOAD failed");
        sha_.assign(loaded->str, loaded->len);
        count_ = std::to_string(keys.size());
        argv_ = {"EVALSHA", sha_.c_str(), count_.c_str()};
        lens_ = {7, sha_.size(), count_.size()};
        for (const auto& k : keys) {
            argv_.push_back(k.data());
            lens_.push_back(k.size());
        }
    }

    void operator()(redisContext* c) const {
        auto* reply = static_cast<redisReply*>(
            redisCommandArgv(c, static_cast<int>(argv_.size()),
                             const_cast<const char**>(argv_.data()), lens_.data()));
        if (reply == nullptr) throw std::runtime_error(c->errstr);
        if (reply->type != REDIS_REPLY_ARRAY || reply->elements != 2) {
            freeReplyObject(reply);
            throw std::runtime_error("EVALSHA: unexpected reply");
        }
        std::vector<std::string> out;
        const redisReply* values = reply->element[0];
        for (std::size_t i = 0; i < values->elements; ++i) {
            out.emplace_back(values->element[i]->str, values->element[i]->len);
        }
        benchmark::DoNotOptimize(out);
        freeReplyObject(reply);
    }

private:
    std::string sha_;
    std::string count_;
    std::vector<const char*> argv_;
    std::vector<std::size_t> lens_;
};

// ---- Google Benchmark functions ----------------------------------------------------

// A larder run in which any read went to the loader (a backend error, an open breaker)
// measured the fallback, not the hit path: it is reported as an error, not as a number.
class FallbackCheck {
public:
    explicit FallbackCheck(benchmark::State& state)
        : state_(state), before_(world->loader_calls.load()) {}
    ~FallbackCheck() {
        const auto fell_back = world->loader_calls.load() - before_;
        if (fell_back != 0 && !state_.error_occurred()) {
            state_.SkipWithError((std::to_string(fell_back) +
                                  " reads fell back to the loader: not a hit-path number")
                                     .c_str());
        }
    }
    FallbackCheck(const FallbackCheck&) = delete;
    FallbackCheck& operator=(const FallbackCheck&) = delete;

private:
    benchmark::State& state_;
    std::uint64_t before_;
};

void BM_Raw_GET(benchmark::State& state) {
    larder::bench::RawConnection conn(*world->server);  // one per thread
    for (auto _ : state) raw_get_once(conn.get());
    larder::bench::report_ops(state);
}

void BM_Larder_CacheAsideHit(benchmark::State& state) {
    const FallbackCheck check(state);
    for (auto _ : state) plain_hit_once();
    larder::bench::report_ops(state);
}

void BM_Larder_CacheAsideHit_XFetchLock(benchmark::State& state) {
    const FallbackCheck check(state);
    for (auto _ : state) guarded_hit_once();
    larder::bench::report_ops(state);
}

void BM_Raw_MGET100(benchmark::State& state) {
    larder::bench::RawConnection conn(*world->server);
    const larder::bench::RawMget mget(world->raw_batch);
    std::vector<std::string> out;
    for (auto _ : state) {
        mget(conn.get(), out);
        benchmark::DoNotOptimize(out);
    }
    larder::bench::report_ops(state);
}

void BM_Larder_GetMany100(benchmark::State& state) {
    const FallbackCheck check(state);
    for (auto _ : state) get_many_once();
    larder::bench::report_ops(state);
}

void BM_Diag_RawGetPttlPipeline(benchmark::State& state) {
    larder::bench::RawConnection conn(*world->server);
    for (auto _ : state) raw_get_pttl_once(conn.get(), world->raw_key);
    larder::bench::report_ops(state);
}

void BM_Diag_BackendGet(benchmark::State& state) {
    for (auto _ : state) {
        auto v = world->backend->get(world->plain_key);
        benchmark::DoNotOptimize(v);
    }
    larder::bench::report_ops(state);
}

void BM_Diag_RawGetPttl100Pipeline(benchmark::State& state) {
    larder::bench::RawConnection conn(*world->server);
    for (auto _ : state) raw_get_pttl_batch_once(conn.get(), world->raw_batch);
    larder::bench::report_ops(state);
}

void BM_Diag_BackendGetMany100(benchmark::State& state) {
    for (auto _ : state) {
        auto v = world->backend->get_many(world->larder_batch);
        benchmark::DoNotOptimize(v);
    }
    larder::bench::report_ops(state);
}

void BM_Diag_RawMgetPlusPttl100(benchmark::State& state) {
    larder::bench::RawConnection conn(*world->server);
    for (auto _ : state) raw_mget_plus_pttl_once(conn.get(), world->raw_batch);
    larder::bench::report_ops(state);
}

void BM_Diag_RawEvalMgetPttl100(benchmark::State& state) {
    larder::bench::RawConnection conn(*world->server);
    const RawEvalBatch eval(conn.get(), world->raw_batch);
    for (auto _ : state) eval(conn.get());
    larder::bench::report_ops(state);
}

BENCHMARK(BM_Raw_GET)->UseRealTime()->Threads(1)->Threads(pool_threads);
BENCHMARK(BM_Larder_CacheAsideHit)->UseRealTime()->Threads(1)->Threads(pool_threads);
BENCHMARK(BM_Larder_CacheAsideHit_XFetchLock)->UseRealTime();
BENCHMARK(BM_Raw_MGET100)->UseRealTime();
BENCHMARK(BM_Larder_GetMany100)->UseRealTime();
BENCHMARK(BM_Diag_RawGetPttlPipeline)->UseRealTime();
BENCHMARK(BM_Diag_BackendGet)->UseRealTime();
BENCHMARK(BM_Diag_RawGetPttl100Pipeline)->UseRealTime();
BENCHMARK(BM_Diag_BackendGetMany100)->UseRealTime();
BENCHMARK(BM_Diag_RawMgetPlusPttl100)->UseRealTime();
BENCHMARK(BM_Diag_RawEvalMgetPttl100)->UseRealTime();

// ---- fixed-count loops for an instruction profiler -----------------------------------
//
// `redis_bench --profile_ops=N` runs each path N times in a function of its own and exits,
// so that `valgrind --tool=callgrind` reports instructions per operation exactly (the
// client's user-space work; the kernel and the server are not counted). See
// docs/performance.md.

[[gnu::noinline]] void cost_raw_get(redisContext* c, int n) {
    for (int i = 0; i < n; ++i) raw_get_once(c);
}
[[gnu::noinline]] void cost_raw_get_pttl(redisContext* c, int n) {
    for (int i = 0; i < n; ++i) raw_get_pttl_once(c, world->raw_key);
}
[[gnu::noinline]] void cost_backend_get(int n) {
    for (int i = 0; i < n; ++i) {
        auto v = world->backend->get(world->plain_key);
        benchmark::DoNotOptimize(v);
    }
}
[[gnu::noinline]] void cost_cache_aside_hit(int n) {
    for (int i = 0; i < n; ++i) plain_hit_once();
}
[[gnu::noinline]] void cost_cache_aside_hit_xfetch_lock(int n) {
    for (int i = 0; i < n; ++i) guarded_hit_once();
}
[[gnu::noinline]] void cost_raw_mget100(redisContext* c, const larder::bench::RawMget& mget,
                                        int n) {
    std::vector<std::string> out;
    for (int i = 0; i < n; ++i) mget(c, out);
}
[[gnu::noinline]] void cost_get_many100(int n) {
    for (int i = 0; i < n; ++i) get_many_once();
}

void profile_ops(int n) {
    larder::bench::RawConnection conn(*world->server);
    const larder::bench::RawMget mget(world->raw_batch);
    cost_raw_get(conn.get(), n);
    cost_raw_get_pttl(conn.get(), n);
    cost_backend_get(n);
    cost_cache_aside_hit(n);
    cost_cache_aside_hit_xfetch_lock(n);
    cost_raw_mget100(conn.get(), mget, n / 10);
    cost_get_many100(n / 10);
    std::printf("ran %d operations of each single-key path and %d of each batch path\n", n, n / 10);
}

// ---- set-up --------------------------------------------------------------------------

void fill_world() {
    world->value.resize(value_size);
    for (std::size_t i = 0; i < value_size; ++i) {
        world->value[i] = static_cast<char>('a' + i % 26);
    }
    larder::bench::RawConnection conn(*world->server);
    larder::bench::raw_command(conn.get(), {"SET", world->raw_key, world->value});
    for (std::size_t i = 0; i < batch_size; ++i) {
        char raw[32];
        char lar[32];
        std::snprintf(raw, sizeof raw, "item:raw:%06zu", i);
        std::snprintf(lar, sizeof lar, "item:lar:%06zu", i);
        world->raw_batch.emplace_back(raw);
        world->larder_batch.emplace_back(lar);
        larder::bench::raw_command(conn.get(), {"SET", raw, world->value});
    }

    world->backend = std::make_unique<RedisBackend>(larder::bench::options_for(*world->server));
    world->plain = std::make_unique<PlainCache>(*world->backend);
    world->guarded = std::make_unique<GuardedCache>(*world->backend);
    // Fill through the library (first read misses and loads), then check every read hits.
    (void)world->plain->get(world->plain_key, load_value);
    (void)world->guarded->get(world->guarded_key, one_tag, load_value);
    (void)world->plain->get_many(world->larder_batch, load_batch);
    // Open all pool connections now, not inside the first timed run.
    std::vector<std::thread> warm;
    for (int t = 0; t < pool_threads; ++t) {
        warm.emplace_back([] {
            for (int i = 0; i < 50; ++i) plain_hit_once();
        });
    }
    for (auto& t : warm) t.join();
    world->loader_calls = 0;
    world->misses_before = world->plain->stats().misses + world->guarded->stats().misses;
}

struct Flags {
    int paired_rounds = 20;
    int profile_ops = 0;
    int server_cpu = -1;
};

// This program's own flags, removed from argv before Google Benchmark sees it.
Flags take_flags(int& argc, char** argv) {
    Flags f;
    int out = 1;
    for (int i = 1; i < argc; ++i) {
        if (std::strncmp(argv[i], "--paired_rounds=", 16) == 0) {
            f.paired_rounds = std::max(0, std::atoi(argv[i] + 16));
        } else if (std::strncmp(argv[i], "--profile_ops=", 14) == 0) {
            f.profile_ops = std::clamp(std::atoi(argv[i] + 14), 0, 10'000'000);
        } else if (std::strncmp(argv[i], "--server_cpu=", 13) == 0) {
            f.server_cpu = std::atoi(argv[i] + 13);
        } else {
            argv[out++] = argv[i];
        }
    }
    argc = out;
    return f;
}

}  // namespace

int main(int argc, char** argv) {
    const Flags flags = take_flags(argc, argv);
    const int paired_rounds = flags.paired_rounds;
    larder::bench::initialize(argc, argv);
    if (benchmark::ReportUnrecognizedArguments(argc, argv)) return 1;

    World w;
    world = &w;
    w.server = larder::bench::start_redis_server();
    if (flags.server_cpu >= 0) {
        cpu_set_t cpus;
        CPU_ZERO(&cpus);
        CPU_SET(flags.server_cpu, &cpus);
        if (sched_setaffinity(w.server->pid(), sizeof cpus, &cpus) != 0) {
            std::fprintf(stderr, "cannot pin redis-server to CPU %d\n", flags.server_cpu);
            return 1;
        }
    }
    fill_world();
    if (flags.profile_ops > 0) {
        profile_ops(flags.profile_ops);
        w.guarded.reset();
        w.plain.reset();
        w.backend.reset();
        w.server.reset();
        return 0;
    }
    const std::string redis_version = larder::bench::redis_version(*w.server);
    larder::bench::add_context("redis_version", redis_version);
    std::printf("redis-server %s on 127.0.0.1:%d (private, started by this program)%s; %s\n",
                redis_version.c_str(), w.server->port(),
                flags.server_cpu >= 0
                    ? (", pinned to CPU " + std::to_string(flags.server_cpu)).c_str()
                    : "",
                larder::bench::machine_description().c_str());
    std::fflush(stdout);

    larder::bench::RecordingReporter reporter;
    benchmark::RunSpecifiedBenchmarks(&reporter);

    const auto& r = reporter;
    larder::bench::print_ratio_table(
        "Ratios from the table above: separate runs at different moments, only meaningful on a "
        "quiet machine (the A/B pass below is the one to read):",
        {
            {"cache-aside hit / raw GET (1 thread)", r.spread("BM_Larder_CacheAsideHit"),
             r.spread("BM_Raw_GET"), 0},
            {"cache-aside hit / raw GET (8 threads)",
             r.spread("BM_Larder_CacheAsideHit", pool_threads),
             r.spread("BM_Raw_GET", pool_threads), 0},
            {"cache-aside hit XFetch+Lock, 1 tag / raw GET",
             r.spread("BM_Larder_CacheAsideHit_XFetchLock"), r.spread("BM_Raw_GET"), 0},
            {"get_many(100) / raw MGET(100)", r.spread("BM_Larder_GetMany100"),
             r.spread("BM_Raw_MGET100"), 0},
            {"diag: raw GET+PTTL pipeline / raw GET", r.spread("BM_Diag_RawGetPttlPipeline"),
             r.spread("BM_Raw_GET"), 0},
            {"diag: cache-aside hit / raw GET+PTTL", r.spread("BM_Larder_CacheAsideHit"),
             r.spread("BM_Diag_RawGetPttlPipeline"), 0},
            {"diag: RedisBackend::get / raw GET+PTTL", r.spread("BM_Diag_BackendGet"),
             r.spread("BM_Diag_RawGetPttlPipeline"), 0},
            {"diag: raw 100x(GET+PTTL) / raw MGET(100)", r.spread("BM_Diag_RawGetPttl100Pipeline"),
             r.spread("BM_Raw_MGET100"), 0},
            {"diag: get_many / raw 100x(GET+PTTL)", r.spread("BM_Larder_GetMany100"),
             r.spread("BM_Diag_RawGetPttl100Pipeline"), 0},
            {"diag: raw MGET + 100 PTTL / raw MGET(100)", r.spread("BM_Diag_RawMgetPlusPttl100"),
             r.spread("BM_Raw_MGET100"), 0},
            {"diag: raw EVALSHA(MGET+PTTLs) / raw MGET(100)",
             r.spread("BM_Diag_RawEvalMgetPttl100"), r.spread("BM_Raw_MGET100"), 0},
        });

    if (paired_rounds > 0) {
        using namespace std::chrono_literals;
        std::printf(
            "\nInterleaved A/B pass: %d rounds x (peer window + larder window), "
            "windows of 100 ms, order A B, B A, ...; the ratio is the median of the per-round "
            "ratios.\n",
            paired_rounds);
        std::vector<std::unique_ptr<larder::bench::RawConnection>> conns;
        for (int t = 0; t < pool_threads; ++t) {
            conns.push_back(std::make_unique<larder::bench::RawConnection>(*w.server));
        }
        const auto raw = [&](int t) { raw_get_once(conns[static_cast<std::size_t>(t)]->get()); };
        const larder::bench::RawMget mget(w.raw_batch);
        const auto raw_mget = [&](int t) {
            thread_local std::vector<std::string> out;
            mget(conns[static_cast<std::size_t>(t)]->get(), out);
        };
        const auto raw_pipe = [&](int t) {
            raw_get_pttl_once(conns[static_cast<std::size_t>(t)]->get(), w.raw_key);
        };

        const int pid = static_cast<int>(w.server->pid());
        auto pair = [&](int threads, auto window, const std::function<void(int)>& peer,
                        const std::function<void(int)>& lib) {
            const auto before = w.loader_calls.load();
            auto result = larder::bench::run_paired(threads, paired_rounds, window, peer, lib, pid);
            if (const auto fell_back = w.loader_calls.load() - before; fell_back != 0) {
                result.error = std::to_string(fell_back) + " reads fell back to the loader";
            }
            return result;
        };
        const auto single = pair(1, 100ms, raw, [](int) { plain_hit_once(); });
        const auto multi = pair(pool_threads, 100ms, raw, [](int) { plain_hit_once(); });
        const auto guarded = pair(1, 100ms, raw, [](int) { guarded_hit_once(); });
        const auto batch = pair(1, 100ms, raw_mget, [](int) { get_many_once(); });
        const auto wire = pair(1, 100ms, raw, raw_pipe);
        const auto same = pair(1, 100ms, raw, raw);
        const auto batch_pipe = pair(1, 100ms, raw_mget, [&](int t) {
            raw_get_pttl_batch_once(conns[static_cast<std::size_t>(t)]->get(), w.raw_batch);
        });
        const auto batch_plus = pair(1, 100ms, raw_mget, [&](int t) {
            raw_mget_plus_pttl_once(conns[static_cast<std::size_t>(t)]->get(), w.raw_batch);
        });
        const RawEvalBatch eval(conns[0]->get(), w.raw_batch);
        const auto batch_eval = pair(
            1, 100ms, raw_mget, [&](int t) { eval(conns[static_cast<std::size_t>(t)]->get()); });
        larder::bench::print_paired_table(
            "Ratios from the interleaved A/B pass (compare these with the targets):",
            {
                {"cache-aside hit / raw GET (1 thread)", single, 0.97},
                {"cache-aside hit / raw GET (8 threads, pool 8)", multi, 0.95},
                {"cache-aside hit XFetch+Lock, 1 tag / raw GET", guarded, 0.90},
                {"get_many(100) / raw MGET(100)", batch, 0.90},
                {"diag: raw GET+PTTL pipeline / raw GET", wire, 0},
                {"diag: A/A noise check, raw GET / raw GET", same, 0},
                {"diag: raw 100x(GET+PTTL) / raw MGET(100)", batch_pipe, 0},
                {"diag: raw MGET + 100 PTTL / raw MGET(100)", batch_plus, 0},
                {"diag: raw EVALSHA(MGET+PTTLs) / MGET(100)", batch_eval, 0},
            });
    }

    const auto plain = w.plain->stats();
    const auto guarded = w.guarded->stats();
    const auto redis = w.backend->stats();
    std::printf(
        "\nchecks: loader calls during the runs %llu (0 = every read was a hit); "
        "cache misses %llu; backend errors %llu; redis errors %llu, timeouts %llu\n",
        static_cast<unsigned long long>(w.loader_calls.load()),
        static_cast<unsigned long long>(plain.misses + guarded.misses - w.misses_before),
        static_cast<unsigned long long>(plain.backend_errors + guarded.backend_errors),
        static_cast<unsigned long long>(redis.errors),
        static_cast<unsigned long long>(redis.timeouts));

    // Caches and backend before the server they talk to.
    w.guarded.reset();
    w.plain.reset();
    w.backend.reset();
    w.server.reset();
    benchmark::Shutdown();
    return 0;
}
