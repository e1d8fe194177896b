// leaderboard: an update_user_score / flush_dirty_users service over a real SQLite
// database, first without a cache (one UPDATE per score change) and then
// with larder::WriteBehind (scores change in the cache at once; a flusher writes each
// user's latest score in batches).
//
//   leaderboard [--users N] [--updates N] [--threads N] [--skew S] [--interval-ms N]
//               [--db-latency-us N] [--redis URL]
//
// Prints the database writes that coalescing saved, and checks that every score in the
// database is exactly the sum of its updates (exit status: 0 it is, 1 a run failed or a
// score is wrong, 2 a bad flag). With --redis the dirty queue lives in Redis and survives
// this process; without it, in process memory. On Redis the run uses keys of its own only
// (a prefix new for each run) and deletes them when it ends.
//
// The textbook write-behind, and what replaces it (docs/pitfalls.md):
//
//   def update_user_score(user_id, delta):          scores.increment(id, &User::score,
//       redis.hincrby(f'user:{user_id}', ...)                        delta, load_user);
//       redis.sadd('dirty_users', user_id)
//
//   def flush_dirty_users():  # every 5 s by cron   the flusher thread (every --interval-ms)
//       dirty_ids = redis.smembers('dirty_users')   claims a batch atomically,
//       redis.delete('dirty_users')                 writes it in one transaction,
//       for uid in dirty_ids: db.execute(UPDATE)    acknowledges what did not change since
#include <larder/codec/json.hpp>
#include <larder/larder.hpp>
#include <larder/policy/write_behind.hpp>
#if defined(LARDER_EXAMPLE_HAVE_REDIS)
#include <larder/backend/redis.hpp>
#include <larder/backend/redis/write_behind_store.hpp>
#endif

#include <sqlite3.h>
#include <unistd.h>
#include <CLI/CLI.hpp>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <iostream>
#include <limits>
#include <map>
#include <mutex>
#include <optional>
#include <random>
#include <set>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

namespace {

struct User {
    std::int64_t id = 0;
    std::string name;
    std::int64_t score = 0;
};
NLOHMANN_DEFINE_TYPE_NON_INTRUSIVE(User, id, name, score)

// --- the database ------------------------------------------------------------------

class Database {
public:
    explicit Database(const std::string& path) {
        if (sqlite3_open(path.c_str(), &db_) != SQLITE_OK) fail("open");
        exec("PRAGMA journal_mode=WAL");
        exec("PRAGMA synchronous=NORMAL");
        // `version` is the write-behind version of the last flushed value: a flusher that
        // stalled past its claim cannot write an older score over a newer one.
        exec(
            "CREATE TABLE IF NOT EXISTS user (id INTEGER PRIMARY KEY, name TEXT NOT NULL, "
            "score INTEGER NOT NULL, version INTEGER NOT NULL DEFAULT 0)");
        select_ = prepare("SELECT id, name, score FROM user WHERE id = ?1");
        add_ = prepare("UPDATE user SET score = score + ?2 WHERE id = ?1");
        // The batch writer's write: an upsert fenced on the version. A fence must also work
        // for a row that does not exist yet (a player the database has not seen): the
        // INSERT creates it, and an existing row changes only for a newer version (a plain
        // UPDATE ... WHERE version < ?3 would silently skip the missing row).
        set_ = prepare(
            "INSERT INTO user (id, name, score, version) VALUES (?1, ?4, ?2, ?3) "
            "ON CONFLICT(id) DO UPDATE SET score = excluded.score, version = excluded.version "
            "WHERE excluded.version > user.version");
        top_ = prepare("SELECT id, name, score FROM user ORDER BY score DESC, id LIMIT ?1");
    }
    ~Database() {
        for (auto* s : {select_, add_, set_, top_}) sqlite3_finalize(s);
        sqlite3_close(db_);
    }
    Database(const Database&) = delete;
    Database& operator=(const Database&) = delete;

    void seed(int users) {
        std::lock_guard lock(mutex_);
        exec("DELETE FROM user");
        exec("BEGIN");
        sqlite3_stmt* insert = prepare("INSERT INTO user (id, name, score) VALUES (?1, ?2, 0)");
        for (int id = 1; id <= users; ++id) {
            const std::string name = "player" + std::to_string(id);
            sqlite3_bind_int64(insert, 1, id);
            sqlite3_bind_text(insert, 2, name.c_str(), -1, SQLITE_TRANSIENT);
            if (sqlite3_step(insert) != SQLITE_DONE) fail("insert");
            sqlite3_reset(insert);
        }
        sqlite3_finalize(insert);
        exec("COMMIT");
        writes = 0;
    }

    std::optional<User> select_user(std::int64_t id) {
        round_trip();
        std::lock_guard lock(mutex_);
        ++reads;
        sqlite3_bind_int64(select_, 1, id);
        std::optional<User> user;
        if (sqlite3_step(select_) == SQLITE_ROW) user = row(select_);
        sqlite3_reset(select_);
        return user;
    }

    // Without a cache: UPDATE User SET score = score + delta.
    void add_score(std::int64_t id, std::int64_t delta) {
        round_trip();
        std::lock_guard lock(mutex_);
        run(add_, id, delta);
        ++writes;
    }

    // The batch writer: one transaction per batch, one fenced upsert per user.
    larder::BatchResult write_scores(std::span<const larder::DirtyEntry<User>> batch) {
        round_trip();  // the batch goes as one transaction: one round trip
        std::lock_guard lock(mutex_);
        exec("BEGIN");
        larder::BatchResult result;
        try {
            for (const auto& e : batch) {
                sqlite3_bind_int64(set_, 3, static_cast<sqlite3_int64>(e.version));
                sqlite3_bind_text(set_, 4, e.value.name.c_str(), -1, SQLITE_TRANSIENT);
                run(set_, e.value.id, e.value.score);
                ++writes;
            }
            exec("COMMIT");
        } catch (...) {
            exec("ROLLBACK");
            throw;  // the whole batch is retried
        }
        return result;
    }

    std::vector<User> top(int n) {
        std::lock_guard lock(mutex_);
        sqlite3_bind_int(top_, 1, n);
        std::vector<User> out;
        while (sqlite3_step(top_) == SQLITE_ROW) out.push_back(row(top_));
        sqlite3_reset(top_);
        return out;
    }

    std::map<std::int64_t, std::int64_t> scores() {
        std::lock_guard lock(mutex_);
        sqlite3_stmt* all = prepare("SELECT id, score FROM user");
        std::map<std::int64_t, std::int64_t> out;
        while (sqlite3_step(all) == SQLITE_ROW) {
            out[sqlite3_column_int64(all, 0)] = sqlite3_column_int64(all, 1);
        }
        sqlite3_finalize(all);
        return out;
    }

    long writes = 0;  // row writes (guarded by the mutex)
    long reads = 0;
    /// A database across a network: each statement (or batch) waits this long first.
    std::chrono::microseconds latency{0};

private:
    void round_trip() const {
        if (latency.count() > 0) std::this_thread::sleep_for(latency);
    }
    static User row(sqlite3_stmt* s) {
        return User{sqlite3_column_int64(s, 0),
                    reinterpret_cast<const char*>(sqlite3_column_text(s, 1)),
                    sqlite3_column_int64(s, 2)};
    }
    void run(sqlite3_stmt* s, std::int64_t id, std::int64_t value) {
        sqlite3_bind_int64(s, 1, id);
        sqlite3_bind_int64(s, 2, value);
        const int rc = sqlite3_step(s);
        sqlite3_reset(s);
        if (rc != SQLITE_DONE) fail("update");
    }
    void exec(const char* sql) {
        if (sqlite3_exec(db_, sql, nullptr, nullptr, nullptr) != SQLITE_OK) fail(sql);
    }
    sqlite3_stmt* prepare(const char* sql) {
        sqlite3_stmt* stmt = nullptr;
        if (sqlite3_prepare_v2(db_, sql, -1, &stmt, nullptr) != SQLITE_OK) fail(sql);
        return stmt;
    }
    [[noreturn]] void fail(const std::string& what) {
        throw std::runtime_error("sqlite: " + what + ": " + sqlite3_errmsg(db_));
    }

    std::mutex mutex_;
    sqlite3* db_ = nullptr;
    sqlite3_stmt* select_ = nullptr;
    sqlite3_stmt* add_ = nullptr;
    sqlite3_stmt* set_ = nullptr;
    sqlite3_stmt* top_ = nullptr;
};

// --- the workload ------------------------------------------------------------------

struct Config {
    int users = 2000;
    int updates = 50'000;
    int threads = 8;
    double skew = 1.1;
    int interval_ms = 200;
    int db_latency_us = 0;
    std::string redis_url;
};

struct Update {
    std::int64_t user;
    std::int64_t delta;
};

// Zipf-distributed players: a few play (and score) far more than the rest. Player k
// (from 1) is drawn with weight 1 / k^skew.
std::vector<Update> make_workload(const Config& c) {
    std::vector<double> weights(static_cast<std::size_t>(c.users));
    for (std::size_t k = 0; k < weights.size(); ++k) {
        weights[k] = 1.0 / std::pow(static_cast<double>(k + 1), c.skew);
    }
    std::discrete_distribution<std::int64_t> player(weights.begin(), weights.end());
    std::mt19937_64 rng(42);
    std::uniform_int_distribution<int> points(1, 100);
    std::vector<Update> out;
    out.reserve(static_cast<std::size_t>(c.updates));
    for (int i = 0; i < c.updates; ++i) out.push_back(Update{player(rng) + 1, points(rng)});
    return out;
}

struct Run {
    std::string name;
    double seconds = 0;
    long db_writes = 0;
    larder::WriteBehindStats stats{};
    bool cached = false;
};

// Splits the updates over threads (each user always on the same thread, so that every
// run applies a user's updates in the same order).
template <class Apply>
double apply_all(const std::vector<Update>& updates, int threads, Apply apply) {
    const auto start = std::chrono::steady_clock::now();
    std::vector<std::thread> pool;
    for (int t = 0; t < threads; ++t) {
        pool.emplace_back([&, t] {
            for (const auto& u : updates) {
                if (u.user % threads == t) apply(u);
            }
        });
    }
    for (auto& th : pool) th.join();
    return std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
}

// A tag new for each run: its cache prefix and queue name, so that it never reads, writes
// or deletes keys it did not create (another run's, or another program's user:1).
std::string run_tag() {
    std::random_device random;
    char hex[9];
    std::snprintf(hex, sizeof hex, "%08x", static_cast<unsigned>(random()));
    return std::to_string(::getpid()) + "-" + hex;
}

// The keys of the write-behind queue `name` (before the backend's key prefix). In memory,
// none: the queue goes with the backend.
template <class B>
std::vector<std::string> queue_keys(B& /*backend*/, const std::string& /*name*/) {
    return {};
}
#if defined(LARDER_EXAMPLE_HAVE_REDIS)
std::vector<std::string> queue_keys(larder::RedisBackend& redis, const std::string& name) {
    const larder::RedisWriteBehindStore store(redis, larder::WriteBehindStoreOptions{name});
    std::vector<std::string> out;
    for (const char* role :
         {"pending", "processing", "values", "versions", "attempts", "errors", "since",
          "since_next", "owners", "seq", "dead", "dead_meta", "dead_errors", "dead_order"}) {
        out.push_back(store.queue_key(role));
    }
    return out;
}
#endif

// Deletes the keys a run wrote when it goes out of scope, whether the run returned or threw.
template <class B>
class Cleanup {
public:
    explicit Cleanup(B& backend) : backend_(backend) {}
    ~Cleanup() {
        std::size_t failed = 0;
        for (const auto& key : keys_) {
            try {
                (void)backend_.del(key);
            } catch (const std::exception&) {
                ++failed;
            }
        }
        if (failed > 0) {
            std::cerr << "leaderboard: could not delete " << failed << " of " << keys_.size()
                      << " keys of this run\n";
        }
    }
    Cleanup(const Cleanup&) = delete;
    Cleanup& operator=(const Cleanup&) = delete;

    void add(std::string key) { keys_.push_back(std::move(key)); }

private:
    B& backend_;
    std::vector<std::string> keys_;
};

template <class B>
Run run_write_behind(const std::string& name, B& backend, Database& db,
                     const std::vector<Update>& updates, const Config& config) {
    const std::string tag = run_tag();
    larder::WriteBehindOptions options;
    options.name = "leaderboard-" + tag;  // a queue name has no ':'
    options.cache.key_prefix = "leaderboard:" + tag + ":user:";
    options.interval = std::chrono::milliseconds(config.interval_ms);
    options.batch_size = 500;
    options.drain_timeout = std::chrono::seconds(30);
    // Declared before `scores`, so it runs after scores' destructor has drained the queue:
    // then it deletes the queue's keys, the cached copy of every player this run wrote and
    // the cache's bump counter.
    Cleanup<B> cleanup(backend);
    for (auto& key : queue_keys(backend, options.name)) cleanup.add(std::move(key));
    larder::WriteBehind<User, B> scores(
        backend,
        [&db](std::span<const larder::DirtyEntry<User>> batch) { return db.write_scores(batch); },
        options);
    const std::set<std::int64_t> players = [&] {
        std::set<std::int64_t> ids;
        for (const auto& u : updates) ids.insert(u.user);
        return ids;
    }();
    for (const auto id : players) cleanup.add(scores.full_key(std::to_string(id)));
    // And the cache's bump counter, which its first read creates (docs/adaptive.md).
    cleanup.add(scores.version_key(std::string(1, '\x1e') + "bumps"));

    Run r{name};
    r.cached = true;
    r.seconds = apply_all(updates, config.threads, [&](const Update& u) {
        // update_user_score(user_id, delta)
        (void)scores.increment(std::to_string(u.user), &User::score, u.delta,
                               [&db, id = u.user] { return db.select_user(id); });
    });
    // What the flusher still has to do, then the final flush (close() drains).
    const larder::DrainReport drained = scores.close();
    if (!drained.complete) throw std::runtime_error(drained.describe("leaderboard"));
    r.stats = scores.stats();
    return r;
}

void check(Database& db, const std::vector<Update>& updates, const std::string& what) {
    std::map<std::int64_t, std::int64_t> expected;
    for (const auto& u : updates) expected[u.user] += u.delta;
    const auto actual = db.scores();
    for (const auto& [id, score] : actual) {
        const auto it = expected.find(id);
        const std::int64_t want = it == expected.end() ? 0 : it->second;
        if (score != want) {
            throw std::runtime_error(what + ": player" + std::to_string(id) + " has " +
                                     std::to_string(score) + " in the database, expected " +
                                     std::to_string(want));
        }
    }
}

// The flags, with their defaults from Config; --help lists them.
void add_flags(CLI::App& app, Config& c) {
    const auto at_least_one = CLI::Range(1, std::numeric_limits<int>::max());
    app.add_option("--users", c.users, "players")->capture_default_str()->check(at_least_one);
    app.add_option("--updates", c.updates, "score changes per run")
        ->capture_default_str()
        ->check(at_least_one);
    app.add_option("--threads", c.threads, "writer threads")
        ->capture_default_str()
        ->check(at_least_one);
    app.add_option("--skew", c.skew, "Zipf skew of the players updated")
        ->capture_default_str()
        ->check(CLI::Range(0.0, 10.0));
    app.add_option("--interval-ms", c.interval_ms, "how often the flusher runs")
        ->capture_default_str()
        ->check(at_least_one);
    app.add_option("--db-latency-us", c.db_latency_us, "added to every database statement")
        ->capture_default_str()
        ->check(CLI::Range(0, std::numeric_limits<int>::max()));
    app.add_option("--redis", c.redis_url, "keep the dirty queue in Redis at this URL");
}

void print(const std::vector<Run>& runs, Database& db, const Config& c) {
    std::printf(
        "%d score updates from %d threads over %d players (Zipf skew %.2f), "
        "database round trip %d us\n\n",
        c.updates, c.threads, c.users, c.skew, c.db_latency_us);
    std::printf("%-28s %10s %12s %14s\n", "", "seconds", "updates/s", "DB row writes");
    for (const auto& r : runs) {
        std::printf("%-28s %10.3f %12.0f %14ld\n", r.name.c_str(), r.seconds,
                    c.updates / std::max(r.seconds, 1e-9), r.db_writes);
    }
    const auto& uncached = runs.front();
    for (std::size_t i = 1; i < runs.size(); ++i) {
        const auto& r = runs[i];
        std::printf(
            "\n%s: %ld of %ld database writes saved by coalescing (%.1fx fewer), "
            "flushed every %d ms\n",
            r.name.c_str(), uncached.db_writes - r.db_writes, uncached.db_writes,
            static_cast<double>(uncached.db_writes) /
                static_cast<double>(std::max(1L, r.db_writes)),
            c.interval_ms);
        std::printf(
            "  flushed %llu (+%llu written again: changed during their flush), coalesced %llu, "
            "batches %llu, retried %llu, dead-lettered %llu, compare-and-put retries %llu\n",
            static_cast<unsigned long long>(r.stats.flushed),
            static_cast<unsigned long long>(r.stats.superseded),
            static_cast<unsigned long long>(r.stats.coalesced),
            static_cast<unsigned long long>(r.stats.batches),
            static_cast<unsigned long long>(r.stats.retried),
            static_cast<unsigned long long>(r.stats.dead_lettered),
            static_cast<unsigned long long>(r.stats.conflicts));
    }
    std::printf("\nEvery score in the database equals the sum of its updates.\nTop players:\n");
    for (const auto& u : db.top(5)) {
        std::printf("  %-12s %lld\n", u.name.c_str(), static_cast<long long>(u.score));
    }
}

}  // namespace

int main(int argc, char** argv) {
    Config config;
    CLI::App app(
        "update_user_score / flush_dirty_users over SQLite: one UPDATE per score "
        "change, then larder::WriteBehind; prints the row writes coalescing saved.",
        "leaderboard");
    add_flags(app, config);
    try {
        app.parse(argc, argv);
    } catch (const CLI::ParseError& e) {
        // Prints the error or --help; a bad flag exits 2, as usage errors do.
        return app.exit(e) == 0 ? 0 : 2;
    }
    const auto path = std::filesystem::temp_directory_path() /
                      ("larder-leaderboard-" + std::to_string(::getpid()) + ".db");
    int status = 0;
    try {
        Database db(path.string());
        db.latency = std::chrono::microseconds(config.db_latency_us);
        const auto updates = make_workload(config);
        std::vector<Run> runs;

        // Without a cache: every update is an UPDATE.
        db.seed(config.users);
        Run uncached{"no cache (UPDATE per change)"};
        uncached.seconds = apply_all(updates, config.threads,
                                     [&](const Update& u) { db.add_score(u.user, u.delta); });
        uncached.db_writes = db.writes;
        check(db, updates, uncached.name);
        runs.push_back(uncached);

        db.seed(config.users);
        if (config.redis_url.empty()) {
            larder::MemoryBackend memory;
            runs.push_back(run_write_behind("WriteBehind + memory", memory, db, updates, config));
        } else {
#if defined(LARDER_EXAMPLE_HAVE_REDIS)
            larder::RedisBackend redis(larder::RedisOptions::from_url(config.redis_url));
            runs.push_back(run_write_behind("WriteBehind + Redis", redis, db, updates, config));
#else
            throw std::runtime_error("built without hiredis: --redis is not available");
#endif
        }
        runs.back().db_writes = db.writes;
        check(db, updates, runs.back().name);
        print(runs, db, config);
    } catch (const std::exception& e) {
        std::cerr << "leaderboard: " << e.what() << "\n";
        status = 1;
    }
    std::filesystem::remove(path);
    std::filesystem::remove(path.string() + "-wal");
    std::filesystem::remove(path.string() + "-shm");
    return status;
}
