// write_behind_bench: sustained write-behind into Redis while the database keeps up with
// only 2,000 rows/s - the situation write-behind exists for. On a private redis-server
// (loopback, started here), 4 or 16 producer threads (threads:) put (or increment) for 3 s
// each run; the flusher writes every 100 ms in batches of up to 500 to a "database" that
// lets through at most 2,000 row writes per second.
//
// The peer, in the same run: the seed's hand-written write-behind (SET key value and
// SADD dirty key, pipelined in one round trip per write, a raw hiredis connection per
// thread) - no versions, no coalescing, no claim, so it is the machine's ceiling for one
// acknowledged write per round trip, not a rival with the same guarantees.
//
// Per run (Google Benchmark counters, all per second or per flush interval):
//   ops_per_s                  acknowledged puts or increments
//   db_rows_per_s              rows the database wrote (held to 2,000)
//   puts_per_key_per_interval  what each key received per 100 ms flush interval...
//   db_writes_per_key_per_interval  ...and how often the database wrote it: coalescing
//   coalesced_pct              puts that replaced a value still waiting (a DB write saved)
//   pending_end, pending_growth_per_s, oldest_pending_ms   the queue at the end
//   client_cpu_us_per_op, redis_cpu_us_per_op   CPU per operation in this process and in
//                              the redis-server (steadier than ops_per_s on a shared machine)
// and, before each row, a timeline of the queue sampled every 250 ms.
//
// keys:1000 and keys:100000 draw keys uniformly from that many; keys:0 writes a new key
// every time, with max_pending 20,000 and WhenFull::block, so the queue grows to the bound
// and backpressure then holds producers to what the database can take.
#include <benchmark/benchmark.h>

#if __has_include(<hiredis/hiredis.h>) && __has_include(<nlohmann/json.hpp>)

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdio>
#include <mutex>
#include <random>
#include <string>
#include <thread>
#include <unordered_set>
#include <vector>

#include "larder/backend/redis.hpp"
#include "larder/backend/redis/write_behind_store.hpp"
#include "larder/codec/json.hpp"
#include "larder/policy/write_behind.hpp"
#include "support/redis.hpp"

namespace {

using namespace std::chrono_literals;
using Clock = std::chrono::steady_clock;

constexpr double db_rows_per_second = 2000;
constexpr auto run_for = 3s;
constexpr auto flush_interval = 100ms;

larder::test::RedisServer& server() {
    static larder::test::RedisServer instance;  // started by the main thread
    return instance;
}

larder::RedisOptions redis_options(int producers) {
    larder::RedisOptions o;
    o.host = server().host();
    o.port = server().port();
    o.pool_size = static_cast<std::size_t>(producers) + 4;
    o.command_timeout = 2s;
    o.pool_wait_timeout = 2s;
    return o;
}

// A database that writes at most db_rows_per_second rows: each batch waits for its turn.
class ThrottledDb {
public:
    template <class V>
    larder::BatchResult write(std::span<const larder::DirtyEntry<V>> batch) {
        Clock::time_point until;
        {
            std::lock_guard lock(mutex_);
            const auto cost =
                std::chrono::duration_cast<Clock::duration>(std::chrono::duration<double>(
                    static_cast<double>(batch.size()) / db_rows_per_second));
            next_ = std::max(next_, Clock::now()) + cost;
            until = next_;
            for (const auto& e : batch) keys_.insert(e.key);
        }
        std::this_thread::sleep_until(until);
        rows_.fetch_add(static_cast<long>(batch.size()));
        return {};
    }

    [[nodiscard]] long rows() const { return rows_.load(); }
    [[nodiscard]] std::size_t distinct_keys() {
        std::lock_guard lock(mutex_);
        return keys_.size();
    }

private:
    std::mutex mutex_;
    Clock::time_point next_{};
    std::unordered_set<std::string> keys_;
    std::atomic<long> rows_{0};
};

// What each operation cost in CPU, in this process (producers, flusher, database) and in
// the redis-server: steadier than ops_per_s when the machine's other tenants come and go.
void count_cpu(benchmark::State& state, const larder::bench::CpuMeter& cpu, long ops) {
    const auto [client_us, redis_us] = cpu.per_op(ops);
    state.counters["client_cpu_us_per_op"] = client_us;
    state.counters["redis_cpu_us_per_op"] = redis_us;
}

struct Sample {
    double seconds;
    long ops;
    long rows;
    std::size_t pending;
    long long oldest_ms;
};

// One sustained run. `op(wb, key)` is a put or an increment; keys == 0: a new key each time.
template <class V, class Op>
void sustained(benchmark::State& state, const char* what, Op op) {
    const long keys = state.range(0);
    const int producers = static_cast<int>(state.range(1));
    static int run_number = 0;
    for (auto _ : state) {
        server().command({"FLUSHALL"});
        larder::RedisBackend redis(redis_options(producers));
        ThrottledDb db;
        larder::WriteBehindOptions o;
        o.name = "bench" + std::to_string(++run_number);
        o.cache.key_prefix = "bench:";
        o.interval = flush_interval;
        o.batch_size = 500;
        o.max_pending = keys == 0 ? 20'000 : 0;
        o.when_full = larder::WhenFull::block;
        o.block_timeout = 10s;
        o.drain_timeout = 0ms;  // what is left stays in Redis; this run does not wait for it
        o.eviction_check = larder::EvictionCheck::ignore;
        o.cache.log.level = larder::LogLevel::off;
        larder::WriteBehind<V, larder::RedisBackend> wb(
            redis, [&db](std::span<const larder::DirtyEntry<V>> batch) { return db.write(batch); },
            o);

        std::atomic<bool> stop{false};
        std::atomic<long> ops{0};
        std::atomic<long> fresh_key{0};
        std::vector<std::thread> threads;
        const larder::bench::CpuMeter cpu(server());
        const auto start = Clock::now();
        for (int t = 0; t < producers; ++t) {
            threads.emplace_back([&, t] {
                std::mt19937_64 rng(static_cast<std::uint64_t>(t) * 7919 + 1);
                std::uniform_int_distribution<long> pick(0, std::max(keys, 1L) - 1);
                while (!stop.load(std::memory_order_relaxed)) {
                    const long k = keys == 0 ? fresh_key.fetch_add(1) : pick(rng);
                    op(wb, std::to_string(k));
                    ops.fetch_add(1, std::memory_order_relaxed);
                }
            });
        }
        std::vector<Sample> timeline;
        while (Clock::now() - start < run_for) {
            std::this_thread::sleep_for(250ms);
            const auto q = wb.queue_stats();
            timeline.push_back(Sample{std::chrono::duration<double>(Clock::now() - start).count(),
                                      ops.load(), db.rows(), q.pending,
                                      static_cast<long long>(q.oldest_pending_age.count())});
        }
        stop = true;
        for (auto& th : threads) th.join();
        const double seconds = std::chrono::duration<double>(Clock::now() - start).count();
        state.SetIterationTime(seconds);
        count_cpu(state, cpu, ops.load());

        const auto s = wb.stats();
        const double intervals = seconds / std::chrono::duration<double>(flush_interval).count();
        const double active = static_cast<double>(keys == 0 ? ops.load() : keys);
        state.counters["ops_per_s"] = static_cast<double>(ops.load()) / seconds;
        state.counters["db_rows_per_s"] = static_cast<double>(db.rows()) / seconds;
        state.counters["puts_per_key_per_interval"] =
            static_cast<double>(ops.load()) / active / intervals;
        state.counters["db_writes_per_key_per_interval"] =
            static_cast<double>(db.rows()) /
            std::max<double>(1, static_cast<double>(db.distinct_keys())) / intervals;
        state.counters["coalesced_pct"] =
            100.0 * static_cast<double>(s.coalesced) / std::max(1.0, static_cast<double>(s.puts));
        state.counters["pending_end"] = static_cast<double>(wb.queue_stats().pending);
        state.counters["cas_retries"] = static_cast<double>(s.conflicts);
        state.counters["oldest_pending_ms"] =
            static_cast<double>(wb.queue_stats().oldest_pending_age.count());
        const auto& first = timeline.front();
        const auto& last = timeline.back();
        state.counters["pending_growth_per_s"] =
            (static_cast<double>(last.pending) - static_cast<double>(first.pending)) /
            std::max(1e-9, last.seconds - first.seconds);

        std::printf(
            "\n%s, keys %s, %d threads: the queue over time (database held to %.0f rows/s)\n", what,
            keys == 0 ? "all new" : std::to_string(keys).c_str(), producers, db_rows_per_second);
        std::printf("  %6s %10s %10s %10s %12s\n", "t (s)", "ops", "db rows", "pending",
                    "oldest (ms)");
        for (const auto& p : timeline) {
            std::printf("  %6.2f %10ld %10ld %10zu %12lld\n", p.seconds, p.ops, p.rows, p.pending,
                        p.oldest_ms);
        }
        std::fflush(stdout);
        (void)wb.close(0ms);
    }
}

void BM_Put(benchmark::State& state) {
    sustained<std::string>(state, "put", [](auto& wb, const std::string& key) {
        wb.put(key, "a value of about forty bytes, like a row");
    });
}

void BM_Increment(benchmark::State& state) {
    sustained<std::int64_t>(state, "increment", [](auto& wb, const std::string& key) {
        (void)wb.increment(key, 1, [] { return std::optional<std::int64_t>(0); });
    });
}

// The peer: SET + SADD in one pipelined round trip per write, a connection per thread.
void BM_PeerSetSadd(benchmark::State& state) {
    const long keys = state.range(0);
    const int producers = static_cast<int>(state.range(1));
    for (auto _ : state) {
        server().command({"FLUSHALL"});
        std::atomic<bool> stop{false};
        std::atomic<long> ops{0};
        std::vector<std::thread> threads;
        const larder::bench::CpuMeter cpu(server());
        const auto start = Clock::now();
        for (int t = 0; t < producers; ++t) {
            threads.emplace_back([&, t] {
                larder::bench::RawConnection c(server());
                std::mt19937_64 rng(static_cast<std::uint64_t>(t) * 7919 + 1);
                std::uniform_int_distribution<long> pick(0, keys - 1);
                const std::string value = "a value of about forty bytes, like a row";
                while (!stop.load(std::memory_order_relaxed)) {
                    const std::string key = "bench:" + std::to_string(pick(rng));
                    const char* set[3] = {"SET", key.data(), value.data()};
                    const std::size_t set_lens[3] = {3, key.size(), value.size()};
                    const char* sadd[3] = {"SADD", "dirty", key.data()};
                    const std::size_t sadd_lens[3] = {4, 5, key.size()};
                    redisAppendCommandArgv(c.get(), 3, set, set_lens);
                    redisAppendCommandArgv(c.get(), 3, sadd, sadd_lens);
                    for (int r = 0; r < 2; ++r) {
                        void* reply = nullptr;
                        if (redisGetReply(c.get(), &reply) != REDIS_OK) return;
                        freeReplyObject(reply);
                    }
                    ops.fetch_add(1, std::memory_order_relaxed);
                }
            });
        }
        std::this_thread::sleep_for(run_for);
        stop = true;
        for (auto& th : threads) th.join();
        const double seconds = std::chrono::duration<double>(Clock::now() - start).count();
        state.SetIterationTime(seconds);
        count_cpu(state, cpu, ops.load());
        state.counters["ops_per_s"] = static_cast<double>(ops.load()) / seconds;
    }
}

}  // namespace

BENCHMARK(BM_Put)
    ->ArgNames({"keys", "threads"})
    ->Args({1000, 4})
    ->Args({1000, 16})
    ->Args({100'000, 4})
    ->Args({100'000, 16})
    ->Args({0, 4})
    ->Iterations(1)
    ->UseManualTime()
    ->Unit(benchmark::kMillisecond);
BENCHMARK(BM_PeerSetSadd)
    ->ArgNames({"keys", "threads"})
    ->Args({1000, 4})
    ->Args({1000, 16})
    ->Iterations(1)
    ->UseManualTime()
    ->Unit(benchmark::kMillisecond);
BENCHMARK(BM_Increment)
    ->ArgNames({"keys", "threads"})
    ->Args({1000, 4})
    ->Args({100'000, 4})
    ->Iterations(1)
    ->UseManualTime()
    ->Unit(benchmark::kMillisecond);

#else

static void BM_WriteBehindSkipped(benchmark::State& state) {
    for (auto _ : state) {
    }
    state.SkipWithError("write_behind_bench needs hiredis and nlohmann_json");
}
BENCHMARK(BM_WriteBehindSkipped);

#endif
