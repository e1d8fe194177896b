// memory_bench: in-process hits. MemoryBackend and CacheAside<T, MemoryBackend> against
// the LRU a user writes by hand (std::unordered_map + std::list, under one std::mutex, or
// under a std::shared_mutex with a shared lookup and a unique move-to-front), on 1 and 2
// threads, over 10,000 keys of 200-byte values read in a uniform random order.
//
//   ops/s    aggregate hits per second (all threads)
//   s/hit    wall time of one hit on one thread ("85n" = 85 ns)
//
// CacheAside stores bytes (envelope + codec), so a hit decodes; the peer LRU of a struct
// hands out a copy of the struct. The User rows show what that costs with MessagePack.
//
// After the table, an interleaved A/B pass (support/report.hpp) gives the ratios to quote:
// on a shared 2-core machine, separate runs see different amounts of interference.
// Extra flag: --paired_rounds=N (default 10; 0 skips it).
#include <benchmark/benchmark.h>

#include <algorithm>
#include <array>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <memory>
#include <optional>
#include <random>
#include <stdexcept>
#include <string>
#include <vector>

// json.hpp although only MsgPackCodec is used: CacheAside<User, B, MsgPackCodec> does not
// compile without it (the default codec of User is looked up even when a codec is named).
#include "larder/codec/json.hpp"
#include "larder/codec/msgpack.hpp"
#include "larder/larder.hpp"
#include "support/lru.hpp"
#include "support/report.hpp"

namespace {

constexpr std::size_t key_count = 10'000;
constexpr std::size_t value_size = 200;
constexpr std::size_t order_size = 1 << 16;  // per-thread access sequence, reused cyclically

struct User {
    std::int64_t id = 0;
    std::string name;
    std::string email;
    std::string city;
    std::int64_t created_at = 0;
    bool active = true;
    std::vector<std::string> roles;
};
NLOHMANN_DEFINE_TYPE_NON_INTRUSIVE(User, id, name, email, city, created_at, active, roles)

User make_user(std::size_t i) {
    return User{
        .id = static_cast<std::int64_t>(i),
        .name = "Ada Lovelace-Byron the " + std::to_string(i) + "th",
        .email = "ada.lovelace." + std::to_string(i) + "@analytical-engine.example.org",
        .city = "London, Marylebone",
        .created_at = 1'700'000'000'000 + static_cast<std::int64_t>(i),
        .active = true,
        .roles = {"reader", "writer", "reviewer"},
    };
}

using larder::CacheAside;
using larder::MemoryBackend;
using StringCache = CacheAside<std::string, MemoryBackend>;
using GuardedStringCache =
    CacheAside<std::string, MemoryBackend, larder::Guards<larder::XFetch, larder::Lock>>;
using UserCache = CacheAside<User, MemoryBackend, larder::MsgPackCodec>;

struct World {
    std::vector<std::string> keys;
    std::string value;
    std::unique_ptr<MemoryBackend> raw_backend;  // plain values, read with get()
    // One store per cache, so that each holds 10,000 entries like the peers: a shared store
    // would make every cache's working set three times larger than the LRU's.
    std::unique_ptr<MemoryBackend> strings_backend;
    std::unique_ptr<MemoryBackend> guarded_backend;
    std::unique_ptr<MemoryBackend> users_backend;
    std::unique_ptr<StringCache> strings;
    std::unique_ptr<GuardedStringCache> guarded;
    std::unique_ptr<UserCache> users;
    std::unique_ptr<larder::bench::MutexLru<std::string>> mutex_lru;
    std::unique_ptr<larder::bench::SharedMutexLru<std::string>> shared_lru;
    std::unique_ptr<larder::bench::MutexLru<User>> mutex_user_lru;
    std::vector<std::vector<std::uint32_t>> orders;  // one access sequence per thread
    std::uint64_t misses_before = 0;
};

World* world = nullptr;

const std::vector<std::uint32_t>& order_for(const benchmark::State& state) {
    return world->orders[static_cast<std::size_t>(state.thread_index()) % world->orders.size()];
}

// Runs `hit(key)` over this thread's key sequence; fails the benchmark on a miss.
template <class Hit>
void run_hits(benchmark::State& state, Hit&& hit) {
    const auto& order = order_for(state);
    std::size_t i = 0;
    for (auto _ : state) {
        const std::string& key = world->keys[order[i]];
        i = (i + 1) & (order_size - 1);
        if (!hit(key)) {
            state.SkipWithError("miss");
            break;
        }
    }
    larder::bench::report_ops(state);
    state.counters["s/hit"] =
        benchmark::Counter(static_cast<double>(state.iterations()),
                           benchmark::Counter::kIsRate | benchmark::Counter::kAvgThreads |
                               benchmark::Counter::kInvert);
}

std::optional<std::string> no_string() {
    return std::nullopt;
}
std::optional<User> no_user() {
    return std::nullopt;
}

void BM_Peer_MutexLru(benchmark::State& state) {
    run_hits(state, [](const std::string& k) {
        auto v = world->mutex_lru->get(k);
        benchmark::DoNotOptimize(v);
        return v.has_value();
    });
}

void BM_Peer_SharedMutexLru(benchmark::State& state) {
    run_hits(state, [](const std::string& k) {
        auto v = world->shared_lru->get(k);
        benchmark::DoNotOptimize(v);
        return v.has_value();
    });
}

void BM_Larder_MemoryBackendGet(benchmark::State& state) {
    run_hits(state, [](const std::string& k) {
        auto v = world->raw_backend->get(k);
        benchmark::DoNotOptimize(v);
        return v.has_value();
    });
}

void BM_Larder_CacheAsideHit(benchmark::State& state) {
    run_hits(state, [](const std::string& k) {
        auto v = world->strings->get(k, no_string);
        benchmark::DoNotOptimize(v);
        return v.has_value();
    });
}

void BM_Larder_CacheAsideHit_XFetchLock(benchmark::State& state) {
    run_hits(state, [](const std::string& k) {
        auto v = world->guarded->get(k, no_string);
        benchmark::DoNotOptimize(v);
        return v.has_value();
    });
}

void BM_Peer_MutexLru_User(benchmark::State& state) {
    run_hits(state, [](const std::string& k) {
        auto v = world->mutex_user_lru->get(k);
        benchmark::DoNotOptimize(v);
        return v.has_value();
    });
}

void BM_Larder_CacheAsideHit_User_MsgPack(benchmark::State& state) {
    run_hits(state, [](const std::string& k) {
        auto v = world->users->get(k, no_user);
        benchmark::DoNotOptimize(v);
        return v.has_value();
    });
}

#define LARDER_THREADS(b) BENCHMARK(b)->UseRealTime()->Threads(1)->Threads(2)
LARDER_THREADS(BM_Peer_MutexLru);
LARDER_THREADS(BM_Peer_SharedMutexLru);
LARDER_THREADS(BM_Larder_MemoryBackendGet);
LARDER_THREADS(BM_Larder_CacheAsideHit);
LARDER_THREADS(BM_Larder_CacheAsideHit_XFetchLock);
LARDER_THREADS(BM_Peer_MutexLru_User);
LARDER_THREADS(BM_Larder_CacheAsideHit_User_MsgPack);
#undef LARDER_THREADS

void fill_world(World& w) {
    w.value.resize(value_size);
    for (std::size_t i = 0; i < value_size; ++i) w.value[i] = static_cast<char>('a' + i % 26);
    for (std::size_t i = 0; i < key_count; ++i) w.keys.push_back("user:" + std::to_string(i));

    w.raw_backend = std::make_unique<MemoryBackend>();
    w.strings_backend = std::make_unique<MemoryBackend>();
    w.guarded_backend = std::make_unique<MemoryBackend>();
    w.users_backend = std::make_unique<MemoryBackend>();
    const larder::CacheAsideOptions opts{.ttl = std::chrono::hours(1)};
    w.strings = std::make_unique<StringCache>(*w.strings_backend, opts);
    w.guarded = std::make_unique<GuardedStringCache>(*w.guarded_backend, opts);
    w.users = std::make_unique<UserCache>(*w.users_backend, opts);
    w.mutex_lru = std::make_unique<larder::bench::MutexLru<std::string>>(2 * key_count);
    w.shared_lru = std::make_unique<larder::bench::SharedMutexLru<std::string>>(2 * key_count);
    w.mutex_user_lru = std::make_unique<larder::bench::MutexLru<User>>(2 * key_count);

    for (std::size_t i = 0; i < key_count; ++i) {
        const std::string& k = w.keys[i];
        const User u = make_user(i);
        w.raw_backend->set(k, w.value, std::chrono::hours(1));
        (void)w.strings->get(k, [&] { return std::optional<std::string>(w.value); });
        (void)w.guarded->get(k, [&] { return std::optional<std::string>(w.value); });
        (void)w.users->get(k, [&] { return std::optional<User>(u); });
        w.mutex_lru->put(k, w.value);
        w.shared_lru->put(k, w.value);
        w.mutex_user_lru->put(k, u);
    }
    std::mt19937 rng(12345);
    std::uniform_int_distribution<std::uint32_t> pick(0, key_count - 1);
    for (int t = 0; t < 4; ++t) {
        std::vector<std::uint32_t> order(order_size);
        for (auto& o : order) o = pick(rng);
        w.orders.push_back(std::move(order));
    }
    w.misses_before =
        w.strings->stats().misses + w.guarded->stats().misses + w.users->stats().misses;
}

// --paired_rounds=N (default 10; 0 skips the interleaved pass), removed before Google
// Benchmark parses the rest.
int take_paired_rounds(int& argc, char** argv) {
    int rounds = 10;
    int out = 1;
    for (int i = 1; i < argc; ++i) {
        if (std::strncmp(argv[i], "--paired_rounds=", 16) == 0) {
            rounds = std::max(0, std::atoi(argv[i] + 16));
        } else {
            argv[out++] = argv[i];
        }
    }
    argc = out;
    return rounds;
}

}  // namespace

int main(int argc, char** argv) {
    const int paired_rounds = take_paired_rounds(argc, argv);
    larder::bench::initialize(argc, argv);
    if (benchmark::ReportUnrecognizedArguments(argc, argv)) return 1;

    World w;
    world = &w;
    fill_world(w);
    std::printf("%zu keys, %zu-byte values, uniform random order; %s\n", key_count, value_size,
                larder::bench::machine_description().c_str());
    std::fflush(stdout);

    larder::bench::RecordingReporter reporter;
    benchmark::RunSpecifiedBenchmarks(&reporter);

    const auto& r = reporter;
    for (int threads : {1, 2}) {
        auto ops = [&](const char* name) { return r.spread(name, threads); };
        larder::bench::print_ratio_table(
            "Hits, " + std::to_string(threads) + " thread" + (threads > 1 ? "s" : "") +
                " (ops/s is the aggregate of all threads):",
            {
                {"MemoryBackend::get / mutex LRU", ops("BM_Larder_MemoryBackendGet"),
                 ops("BM_Peer_MutexLru"), 0},
                {"MemoryBackend::get / shared_mutex LRU", ops("BM_Larder_MemoryBackendGet"),
                 ops("BM_Peer_SharedMutexLru"), 0},
                {"CacheAside<string> hit / mutex LRU", ops("BM_Larder_CacheAsideHit"),
                 ops("BM_Peer_MutexLru"), 0},
                {"CacheAside<string> hit / shared_mutex LRU", ops("BM_Larder_CacheAsideHit"),
                 ops("BM_Peer_SharedMutexLru"), 0},
                {"CacheAside<string> XFetch+Lock / plain hit",
                 ops("BM_Larder_CacheAsideHit_XFetchLock"), ops("BM_Larder_CacheAsideHit"), 0},
                {"CacheAside<User,MsgPack> hit / LRU<User>",
                 ops("BM_Larder_CacheAsideHit_User_MsgPack"), ops("BM_Peer_MutexLru_User"), 0},
            });
    }
    if (paired_rounds > 0) {
        using namespace std::chrono_literals;
        std::printf(
            "\nInterleaved A/B pass: %d rounds x (peer window + larder window) of 100 ms, "
            "order A B, B A, ...; the ratio is the median of the per-round ratios; CPU/op "
            "is the calling threads' CPU time per hit.\n",
            paired_rounds);
        // One cursor per thread, on its own cache line.
        struct alignas(64) Cursor {
            std::size_t i = 0;
        };
        std::array<Cursor, 4> cursors{};
        auto next_key = [&](int t) -> const std::string& {
            auto& c = cursors[static_cast<std::size_t>(t)];
            const auto& order = w.orders[static_cast<std::size_t>(t) % w.orders.size()];
            c.i = (c.i + 1) & (order_size - 1);
            return w.keys[order[c.i]];
        };
        auto check = [](bool hit) {
            if (!hit) throw std::runtime_error("miss");
        };
        const std::function<void(int)> mutex_lru = [&](int t) {
            auto v = w.mutex_lru->get(next_key(t));
            benchmark::DoNotOptimize(v);
            check(v.has_value());
        };
        const std::function<void(int)> shared_lru = [&](int t) {
            auto v = w.shared_lru->get(next_key(t));
            benchmark::DoNotOptimize(v);
            check(v.has_value());
        };
        const std::function<void(int)> backend_get = [&](int t) {
            auto v = w.raw_backend->get(next_key(t));
            benchmark::DoNotOptimize(v);
            check(v.has_value());
        };
        const std::function<void(int)> aside_hit = [&](int t) {
            auto v = w.strings->get(next_key(t), no_string);
            benchmark::DoNotOptimize(v);
            check(v.has_value());
        };
        const std::function<void(int)> user_lru = [&](int t) {
            auto v = w.mutex_user_lru->get(next_key(t));
            benchmark::DoNotOptimize(v);
            check(v.has_value());
        };
        const std::function<void(int)> user_hit = [&](int t) {
            auto v = w.users->get(next_key(t), no_user);
            benchmark::DoNotOptimize(v);
            check(v.has_value());
        };
        for (int threads : {1, 2}) {
            auto pair = [&](const std::function<void(int)>& peer,
                            const std::function<void(int)>& lib) {
                return larder::bench::run_paired(threads, paired_rounds, 100ms, peer, lib);
            };
            const std::string t = std::to_string(threads) + (threads > 1 ? " threads" : " thread");
            larder::bench::print_paired_table(
                "Hits, " + t + ", interleaved (ops/s is the aggregate of all threads):",
                {
                    {"MemoryBackend::get / mutex LRU", pair(mutex_lru, backend_get)},
                    {"CacheAside<string> hit / mutex LRU", pair(mutex_lru, aside_hit)},
                    {"CacheAside<string> hit / shared_mutex LRU", pair(shared_lru, aside_hit)},
                    {"CacheAside<User,MsgPack> hit / LRU<User>", pair(user_lru, user_hit)},
                });
        }
    }

    const auto misses = w.strings->stats().misses + w.guarded->stats().misses +
                        w.users->stats().misses - w.misses_before;
    std::printf("\nchecks: CacheAside misses during the runs %llu (0 = every read was a hit)\n",
                static_cast<unsigned long long>(misses));
    benchmark::Shutdown();
    return 0;
}
