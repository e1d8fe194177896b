// Redis Cluster while its topology changes under load: slots that hold live keys move
// between primaries, and a primary dies and its replica takes over. Each test starts a
// cluster of its own (support/redis_cluster.hpp), runs a few threads for a few seconds,
// and checks what callers saw: errors, stale reads, lost writes.

#if defined(LARDER_TEST_HAVE_REDIS) && defined(LARDER_TEST_HAVE_REDIS_SERVER)

#include <larder/backend/redis/write_behind_store.hpp>
#include <larder/backend/redis_cluster.hpp>
#include <larder/policy/cache_aside.hpp>
#include <larder/policy/write_behind.hpp>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdint>
#include <map>
#include <mutex>
#include <optional>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "support/catch.hpp"
#include "support/redis_cluster.hpp"
#include "support/redis_cluster_fixture.hpp"
#include "support/write_behind.hpp"

using namespace std::chrono_literals;
using larder::RedisClusterBackend;
using larder::test::make_cluster_backend;
using larder::test::RedisCluster;

namespace {

using Clock = std::chrono::steady_clock;

larder::RedisClusterOptions patient() {
    larder::RedisClusterOptions o;
    o.node.connect_timeout = 2s;
    o.node.command_timeout = 2s;
    o.node.pool_wait_timeout = 2s;
    return o;
}

/// Rows with a version each; a write bumps the version, then invalidates the cache, then
/// records the version as acknowledged: a read that starts after that must not see older.
class VersionedRows {
public:
    explicit VersionedRows(std::vector<std::string> keys) : keys_(std::move(keys)) {
        for (const auto& k : keys_) rows_[k] = 1;
        acked_ = rows_;
    }
    std::int64_t current(const std::string& k) {
        std::lock_guard lock(mutex_);
        return rows_[k];
    }
    std::int64_t bump(const std::string& k) {
        std::lock_guard lock(mutex_);
        return ++rows_[k];
    }
    void acknowledge(const std::string& k, std::int64_t v) {
        std::lock_guard lock(mutex_);
        acked_[k] = std::max(acked_[k], v);
    }
    std::int64_t acknowledged(const std::string& k) {
        std::lock_guard lock(mutex_);
        return acked_[k];
    }
    [[nodiscard]] const std::vector<std::string>& keys() const { return keys_; }

private:
    std::vector<std::string> keys_;
    std::mutex mutex_;
    std::map<std::string, std::int64_t> rows_;
    std::map<std::string, std::int64_t> acked_;
};

std::vector<std::string> keys_in_slot_of(std::string_view tag, int count) {
    std::vector<std::string> out;
    for (int i = 0; i < count; ++i)
        out.push_back("{" + std::string(tag) + "}:" + std::to_string(i));
    return out;
}

}  // namespace

TEST_CASE("Resharding under load: no error reaches a caller, no read is stale after it",
          "[redis][cluster][topology]") {
    RedisCluster cluster(3);
    RedisClusterBackend backend = make_cluster_backend(cluster, patient());
    std::vector<std::string> keys = keys_in_slot_of("moves", 40);
    for (const auto& k : keys_in_slot_of("also", 40)) keys.push_back(k);
    for (int i = 0; i < 40; ++i) keys.push_back("stays:" + std::to_string(i));
    VersionedRows db(keys);
    larder::CacheAside<std::string, RedisClusterBackend> cache(backend, {.ttl = 60s});

    std::atomic<bool> stop{false};
    std::atomic<int> errors{0};
    std::atomic<int> stale{0};
    std::atomic<long> reads{0};
    std::atomic<long> writes{0};
    std::mutex first_error_mutex;
    std::string first_error;
    auto note_error = [&](const std::exception& e) {
        ++errors;
        std::lock_guard lock(first_error_mutex);
        if (first_error.empty()) first_error = e.what();
    };
    auto read_one = [&](const std::string& k) {
        const std::int64_t floor = db.acknowledged(k);
        const auto v = cache.get(k, [&] { return std::optional(std::to_string(db.current(k))); });
        ++reads;
        if (!v || std::stoll(*v) < floor) ++stale;
    };

    std::vector<std::thread> threads;
    for (int t = 0; t < 3; ++t) {
        threads.emplace_back([&, t] {
            std::mt19937 rng(static_cast<unsigned>(t));
            std::uniform_int_distribution<std::size_t> pick(0, keys.size() - 1);
            for (int i = 0; i < 200'000 && !stop.load(); ++i) {
                try {
                    read_one(keys[pick(rng)]);
                } catch (const std::exception& e) {
                    note_error(e);
                }
            }
        });
    }
    // One reader of batches: get_many splits them by node, and a key of a slot half moved
    // takes the single-key path.
    threads.emplace_back([&] {
        std::mt19937 rng(7);
        std::uniform_int_distribution<std::size_t> pick(0, keys.size() - 1);
        for (int i = 0; i < 50'000 && !stop.load(); ++i) {
            std::vector<std::string> batch;
            for (int j = 0; j < 10; ++j) batch.push_back(keys[pick(rng)]);
            std::vector<std::int64_t> floors;
            for (const auto& k : batch) floors.push_back(db.acknowledged(k));
            try {
                const auto got = cache.get_many(batch, [&](std::span<const std::string> missed) {
                    std::vector<std::optional<std::string>> rows;
                    for (const auto& k : missed) rows.emplace_back(std::to_string(db.current(k)));
                    return rows;
                });
                reads += static_cast<long>(batch.size());
                for (std::size_t j = 0; j < batch.size(); ++j) {
                    if (!got[j] || std::stoll(*got[j]) < floors[j]) ++stale;
                }
            } catch (const std::exception& e) {
                note_error(e);
            }
        }
    });
    threads.emplace_back([&] {
        std::mt19937 rng(99);
        std::uniform_int_distribution<std::size_t> pick(0, keys.size() - 1);
        for (int i = 0; i < 50'000 && !stop.load(); ++i) {
            const std::string& k = keys[pick(rng)];
            try {
                const std::int64_t v = db.bump(k);
                cache.invalidate(k);
                db.acknowledge(k, v);
                ++writes;
            } catch (const std::exception& e) {
                note_error(e);
            }
            std::this_thread::sleep_for(1ms);
        }
    });

    // Two slots move while the threads run, each in batches of ten keys with a pause
    // between them, so that reads and writes meet each slot half moved (ASK, TRYAGAIN).
    std::this_thread::sleep_for(200ms);
    for (const std::string tag : {"moves", "also"}) {
        const int slot = cluster.slot_of(tag);
        const std::size_t from = cluster.owner_of(tag);
        cluster.move_slot(slot, from, (from + 1) % cluster.size(),
                          [] { std::this_thread::sleep_for(30ms); });
    }
    std::this_thread::sleep_for(200ms);
    stop = true;
    for (auto& t : threads) t.join();

    const auto s = backend.stats();
    WARN(reads.load() << " reads and " << writes.load()
                      << " writes during two slot moves: " << s.moved << " MOVED, " << s.asked
                      << " ASK, " << s.try_agains << " TRYAGAIN followed");
    INFO("first error: " << first_error);
    CHECK(errors.load() == 0);
    CHECK(stale.load() == 0);
    CHECK(s.moved + s.asked > 0);  // the moves were seen, and followed
    // Settled: every key reads its row's latest version.
    for (const auto& k : keys) {
        INFO(k);
        CHECK(cache.get(k, [&] { return std::optional(std::to_string(db.current(k))); }) ==
              std::to_string(db.current(k)));
    }
}

TEST_CASE("Resharding a write-behind queue's slot under load loses no acknowledged put",
          "[redis][cluster][topology]") {
    RedisCluster cluster(3);
    larder::RedisClusterOptions o = patient();
    o.node.key_prefix = "{wb}:";  // the queue and every entry in one slot
    RedisClusterBackend backend = make_cluster_backend(cluster, o);
    larder::test::Table<std::string> table;
    std::optional<larder::WriteBehind<std::string, RedisClusterBackend>> wb;
    wb.emplace(backend, larder::test::writer_for(table),
               larder::WriteBehindOptions{.interval = 20ms});

    std::atomic<bool> stop{false};
    std::atomic<int> errors{0};
    std::mutex acked_mutex;
    std::map<std::string, std::string> acked;  // the last acknowledged value of each key
    std::string first_error;
    std::vector<std::thread> writers;
    for (int t = 0; t < 2; ++t) {
        writers.emplace_back([&, t] {
            for (int i = 0; i < 20'000 && !stop.load(); ++i) {
                // Each thread its own keys, so "last acknowledged" is well defined.
                const std::string key = "t" + std::to_string(t) + ":" + std::to_string(i % 25);
                const std::string value = std::to_string(i);
                try {
                    wb->put(key, value);
                    std::lock_guard lock(acked_mutex);
                    acked[key] = value;
                } catch (const std::exception& e) {
                    ++errors;
                    std::lock_guard lock(acked_mutex);
                    if (first_error.empty()) first_error = e.what();
                }
                std::this_thread::sleep_for(500us);
            }
        });
    }
    std::this_thread::sleep_for(200ms);
    const int slot = cluster.slot_of("wb");
    const std::size_t from = cluster.owner_of("wb");
    cluster.move_slot(slot, from, (from + 1) % cluster.size());
    std::this_thread::sleep_for(300ms);
    stop = true;
    for (auto& t : writers) t.join();
    const auto report = wb->close(30s);
    wb.reset();

    INFO("first error: " << first_error);
    CHECK(errors.load() == 0);
    CHECK(report.complete);
    const auto rows = table.rows();
    std::size_t lost = 0;
    for (const auto& [key, value] : acked) {
        const auto it = rows.find(key);
        if (it == rows.end() || it->second != value) ++lost;
    }
    const auto s = backend.stats();
    WARN(acked.size() << " keys written through a move of the queue's slot: " << s.moved
                      << " MOVED, " << s.asked << " ASK, " << s.try_agains << " TRYAGAIN");
    CHECK(lost == 0);
    CHECK(s.moved + s.asked + s.try_agains > 0);
}

TEST_CASE(
    "A primary dies under load: reads load from the database, without errors, until its "
    "replica serves hits again",
    "[redis][cluster][topology]") {
    RedisCluster cluster(3, 1);
    larder::RedisClusterOptions o;
    o.node.breaker.cool_down = 200ms;
    RedisClusterBackend backend = make_cluster_backend(cluster, o);
    auto row = [](const std::string& k) { return std::optional<std::string>("row of " + k); };
    larder::CacheAside<std::string, RedisClusterBackend> cache(backend, {.ttl = 120s});
    // Ten keys on each primary, by the slot of the key the cache stores them under; the
    // dying primary's first.
    std::vector<std::string> keys;
    std::vector<int> on_node(cluster.size(), 0);
    for (int i = 0; keys.size() < 10 * cluster.size(); ++i) {
        const std::string k = "k" + std::to_string(i);
        const std::size_t n = cluster.owner_of(cache.full_key(k));
        if (on_node[n] == 10) continue;
        ++on_node[n];
        keys.push_back(k);
    }
    std::stable_partition(keys.begin(), keys.end(), [&](const std::string& k) {
        return cluster.owner_of(cache.full_key(k)) == 0;
    });
    for (const auto& k : keys) REQUIRE(cache.get(k, [&] { return row(k); }) == row(k));
    // Every copy on the doomed primary has reached its replica.
    REQUIRE(cluster.node(0).query({"WAIT", "1", "5000"}).integer == 1);

    // One key of the dying primary, read by a cache of its own: its stats tell hits from
    // loads.
    larder::CacheAside<std::string, RedisClusterBackend> probe(backend, {.ttl = 120s});
    const std::string watched = keys.front();

    std::atomic<bool> stop{false};
    std::atomic<int> errors{0};
    std::atomic<int> wrong{0};
    std::vector<std::thread> readers;
    for (int t = 0; t < 3; ++t) {
        readers.emplace_back([&, t] {
            std::mt19937 rng(static_cast<unsigned>(t));
            std::uniform_int_distribution<std::size_t> pick(0, keys.size() - 1);
            for (int i = 0; i < 200'000 && !stop.load(); ++i) {
                const std::string& k = keys[pick(rng)];
                try {
                    if (cache.get(k, [&] { return row(k); }) != row(k)) ++wrong;
                } catch (const std::exception&) {
                    ++errors;
                }
                std::this_thread::sleep_for(200us);
            }
        });
    }

    std::this_thread::sleep_for(200ms);
    const auto killed = Clock::now();
    cluster.node(0).kill();
    std::optional<Clock::time_point> first_degraded;
    std::optional<Clock::time_point> hits_again;
    const auto give_up = killed + 60s;  // a liveness bound, not a measurement
    while (!hits_again && Clock::now() < give_up) {
        const auto before = probe.stats();
        try {
            if (probe.get(watched, [&] { return row(watched); }) != row(watched)) ++wrong;
        } catch (const std::exception&) {
            ++errors;
        }
        const auto after = probe.stats();
        if (after.hits > before.hits) {
            if (first_degraded) hits_again = Clock::now();
        } else if (!first_degraded) {
            first_degraded = Clock::now();
        }
        std::this_thread::sleep_for(5ms);
    }
    stop = true;
    for (auto& t : readers) t.join();

    REQUIRE(first_degraded);
    REQUIRE(hits_again);
    const auto ms = [](auto d) {
        return std::chrono::duration_cast<std::chrono::milliseconds>(d).count();
    };
    WARN("primary killed: degraded reads (from the database) for "
         << ms(*hits_again - *first_degraded) << " ms, hits again " << ms(*hits_again - killed)
         << " ms after the kill (cluster-node-timeout 2000 ms); " << backend.stats().refreshes
         << " slot map refreshes");
    CHECK(errors.load() == 0);
    CHECK(wrong.load() == 0);
    // While one primary was missing every node answered CLUSTERDOWN, which says nothing
    // about their own health: only the dead node's breaker opened.
    for (const auto& [name, stats] : backend.node_stats()) {
        INFO(name);
        const bool dead =
            name == cluster.node(0).host() + ":" + std::to_string(cluster.node(0).port());
        if (!dead) CHECK(stats.breaker_opens == 0);
    }
    // The replica holds what the primary held: once the cluster is up again (while one
    // primary is missing, every node answers CLUSTERDOWN, and each breaker opens on its
    // own) every copy is a hit, none reloaded.
    const auto before = cache.stats();
    bool all_hits = false;
    for (const auto deadline = Clock::now() + 30s; !all_hits && Clock::now() < deadline;) {
        std::this_thread::sleep_for(50ms);
        const auto pass = cache.stats();
        for (const auto& k : keys) CHECK(cache.get(k, [&] { return row(k); }) == row(k));
        all_hits = cache.stats().hits - pass.hits == keys.size();
    }
    CHECK(all_hits);
    CHECK(cache.stats().loads - before.loads <= keys.size());
}

#endif
