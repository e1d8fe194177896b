// user_service: a get_user / update_user service over a real SQLite database, first
// without a cache and then with larder::CacheAside, on the same skewed workload.
//
//   user_service [--users N] [--ops N] [--write-ratio R] [--skew S] [--db-latency-us N]
//                [--redis URL]
//
// SQLite runs in this process, so a query costs microseconds; a database server across a
// network costs a round trip or more. --db-latency-us adds that cost to every query
// (default 300 us; 0 for SQLite alone, where a cache has little to save).
//
// Prints what a cache is for: how many queries reach the database, the hit ratio, and the
// latency of get_user with and without the cache. Exit status: 0 done, 1 a run failed,
// 2 a bad flag.
#include <larder/codec/json.hpp>
#include <larder/larder.hpp>
#if defined(LARDER_EXAMPLE_HAVE_REDIS)
#include <larder/backend/redis.hpp>
#endif

#include <sqlite3.h>
#include <unistd.h>
#include <CLI/CLI.hpp>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <iostream>
#include <limits>
#include <optional>
#include <random>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

namespace {

struct User {
    std::int64_t id = 0;
    std::string name;
    std::string email;
    std::int64_t score = 0;
};
NLOHMANN_DEFINE_TYPE_NON_INTRUSIVE(User, id, name, email, score)

// --- the database ------------------------------------------------------------------

class Database {
public:
    explicit Database(const std::string& path) {
        if (sqlite3_open(path.c_str(), &db_) != SQLITE_OK) fail("open");
        exec("PRAGMA journal_mode=WAL");
        exec("PRAGMA synchronous=NORMAL");
        exec(
            "CREATE TABLE IF NOT EXISTS user (id INTEGER PRIMARY KEY, name TEXT NOT NULL, "
            "email TEXT NOT NULL, score INTEGER NOT NULL)");
        select_ = prepare("SELECT id, name, email, score FROM user WHERE id = ?1");
        update_ = prepare("UPDATE user SET score = ?2 WHERE id = ?1");
    }
    ~Database() {
        sqlite3_finalize(select_);
        sqlite3_finalize(update_);
        sqlite3_close(db_);
    }
    Database(const Database&) = delete;
    Database& operator=(const Database&) = delete;

    void seed(int users) {
        exec("DELETE FROM user");
        exec("BEGIN");
        sqlite3_stmt* insert = prepare("INSERT INTO user VALUES (?1, ?2, ?3, 0)");
        for (int id = 1; id <= users; ++id) {
            const std::string name = "user" + std::to_string(id);
            sqlite3_bind_int64(insert, 1, id);
            sqlite3_bind_text(insert, 2, name.c_str(), -1, SQLITE_TRANSIENT);
            sqlite3_bind_text(insert, 3, (name + "@example.com").c_str(), -1, SQLITE_TRANSIENT);
            if (sqlite3_step(insert) != SQLITE_DONE) fail("insert");
            sqlite3_reset(insert);
        }
        sqlite3_finalize(insert);
        exec("COMMIT");
    }

    // SELECT * FROM User WHERE id = ?
    std::optional<User> select_user(std::int64_t id) {
        ++queries;
        network_round_trip();
        sqlite3_bind_int64(select_, 1, id);
        std::optional<User> user;
        if (sqlite3_step(select_) == SQLITE_ROW) {
            user = User{sqlite3_column_int64(select_, 0),
                        reinterpret_cast<const char*>(sqlite3_column_text(select_, 1)),
                        reinterpret_cast<const char*>(sqlite3_column_text(select_, 2)),
                        sqlite3_column_int64(select_, 3)};
        }
        sqlite3_reset(select_);
        return user;
    }

    // UPDATE User SET ... WHERE id = ?
    void update_score(std::int64_t id, std::int64_t score) {
        ++queries;
        network_round_trip();
        sqlite3_bind_int64(update_, 1, id);
        sqlite3_bind_int64(update_, 2, score);
        if (sqlite3_step(update_) != SQLITE_DONE) fail("update");
        sqlite3_reset(update_);
    }

    long queries = 0;
    std::chrono::microseconds latency{0};

private:
    void network_round_trip() const {
        if (latency.count() > 0) std::this_thread::sleep_for(latency);
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

    sqlite3* db_ = nullptr;
    sqlite3_stmt* select_ = nullptr;
    sqlite3_stmt* update_ = nullptr;
};

// --- the workload ------------------------------------------------------------------

struct Config {
    int users = 5000;
    int ops = 20'000;
    double write_ratio = 0.05;
    double skew = 1.0;
    // A database across a network: a query costs a round trip or more. 0: SQLite alone,
    // in process, where a query costs microseconds and a cache has little to save.
    int db_latency_us = 300;
    std::string redis_url;
};

struct Op {
    bool write;
    std::int64_t id;
};

std::vector<Op> make_workload(const Config& c) {
    std::mt19937_64 rng(42);  // the same sequence for both runs
    // Zipf-distributed ids: user k (from 1) is read with weight 1 / k^skew, so a few users
    // are read far more than the rest.
    std::vector<double> weights(static_cast<std::size_t>(c.users));
    for (std::size_t k = 0; k < weights.size(); ++k) {
        weights[k] = 1.0 / std::pow(static_cast<double>(k + 1), c.skew);
    }
    std::discrete_distribution<std::int64_t> zipf(weights.begin(), weights.end());
    std::bernoulli_distribution is_write(c.write_ratio);
    std::vector<Op> ops;
    ops.reserve(static_cast<std::size_t>(c.ops));
    for (int i = 0; i < c.ops; ++i) ops.push_back(Op{is_write(rng), zipf(rng) + 1});
    return ops;
}

struct Result {
    std::string name;
    long db_queries = 0;
    double hit_ratio = -1;
    std::vector<double> read_us;
    double seconds = 0;

    double percentile(double p) {
        if (read_us.empty()) return 0;
        std::sort(read_us.begin(), read_us.end());
        const auto i = static_cast<std::size_t>(p * static_cast<double>(read_us.size() - 1));
        return read_us[i];
    }
};

template <class GetUser, class UpdateUser>
Result run(std::string name, const std::vector<Op>& ops, Database& db, GetUser&& get_user,
           UpdateUser&& update_user) {
    Result r{std::move(name)};
    const long before = db.queries;
    r.read_us.reserve(ops.size());
    const auto start = std::chrono::steady_clock::now();
    for (const auto& op : ops) {
        if (op.write) {
            update_user(op.id, op.id * 10 + static_cast<std::int64_t>(r.read_us.size()));
            continue;
        }
        const auto t0 = std::chrono::steady_clock::now();
        const auto user = get_user(op.id);
        const auto t1 = std::chrono::steady_clock::now();
        if (!user || user->id != op.id) throw std::logic_error("wrong user returned");
        r.read_us.push_back(std::chrono::duration<double, std::micro>(t1 - t0).count());
    }
    r.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
    r.db_queries = db.queries - before;
    return r;
}

template <class Backend>
Result run_cached(const char* name, Backend& backend, const std::vector<Op>& ops, Database& db) {
    // get_user / update_user, with CacheAside doing the cache half.
    larder::CacheAside<User, Backend> users(backend,
                                            {.key_prefix = "user:",
                                             .ttl = std::chrono::minutes(5),
                                             .jitter = {.max_extra = std::chrono::seconds(60)}});
    auto get_user = [&](std::int64_t id) {
        return users.get(std::to_string(id), [&] { return db.select_user(id); });
    };
    auto update_user = [&](std::int64_t id, std::int64_t score) {
        users.invalidate_after(std::to_string(id), [&] { db.update_score(id, score); });
    };
    Result r = run(name, ops, db, get_user, update_user);
    const auto s = users.stats();
    r.hit_ratio = static_cast<double>(s.hits) / static_cast<double>(s.hits + s.misses);
    return r;
}

void print(std::vector<Result>& results, const Config& c) {
    std::printf("\n%d users, %d operations (%.0f%% writes), Zipf skew %.2f, SQLite %s\n\n", c.users,
                c.ops, c.write_ratio * 100, c.skew,
                c.db_latency_us > 0
                    ? ("+ " + std::to_string(c.db_latency_us) + " us per query").c_str()
                    : "in process, no added latency (a cache saves little here)");
    std::printf("%-26s %12s %10s %12s %12s %10s\n", "", "DB queries", "hit ratio", "p50 read us",
                "p99 read us", "ops/s");
    for (auto& r : results) {
        char hit[16] = "-";
        if (r.hit_ratio >= 0) std::snprintf(hit, sizeof hit, "%.1f%%", r.hit_ratio * 100);
        std::printf("%-26s %12ld %10s %12.1f %12.1f %10.0f\n", r.name.c_str(), r.db_queries, hit,
                    r.percentile(0.50), r.percentile(0.99), static_cast<double>(c.ops) / r.seconds);
    }
    auto& base = results.front();
    for (std::size_t i = 1; i < results.size(); ++i) {
        auto& r = results[i];
        std::printf(
            "\n%s: %.1fx fewer database queries than no cache (%ld -> %ld); reads\n"
            "  p50 %.1f -> %.1f us (%.1fx faster), p99 %.1f -> %.1f us; %.1fx the "
            "throughput.\n",
            r.name.c_str(),
            static_cast<double>(base.db_queries) / static_cast<double>(std::max(1L, r.db_queries)),
            base.db_queries, r.db_queries, base.percentile(0.50), r.percentile(0.50),
            base.percentile(0.50) / std::max(0.001, r.percentile(0.50)), base.percentile(0.99),
            r.percentile(0.99), base.seconds / r.seconds);
    }
}

// The flags, with their defaults from Config; --help lists them.
void add_flags(CLI::App& app, Config& c) {
    app.add_option("--users", c.users, "rows in the users table")
        ->capture_default_str()
        ->check(CLI::Range(1, std::numeric_limits<int>::max()));
    app.add_option("--ops", c.ops, "operations per run")
        ->capture_default_str()
        ->check(CLI::Range(1, std::numeric_limits<int>::max()));
    app.add_option("--write-ratio", c.write_ratio, "share of operations that update a user")
        ->capture_default_str()
        ->check(CLI::Range(0.0, 1.0));
    app.add_option("--skew", c.skew, "Zipf skew of the users asked for; 0 is uniform")
        ->capture_default_str()
        ->check(CLI::Range(0.0, 10.0));
    app.add_option("--db-latency-us", c.db_latency_us,
                   "added to every query: a database across a network (0: SQLite alone)")
        ->capture_default_str()
        ->check(CLI::Range(0, std::numeric_limits<int>::max()));
    app.add_option("--redis", c.redis_url, "also run with CacheAside over this Redis URL");
}

}  // namespace

int main(int argc, char** argv) {
    Config config;
    CLI::App app(
        "A get_user / update_user service over SQLite, first without a cache, then "
        "with CacheAside; prints the database queries and read latency of each.",
        "user_service");
    add_flags(app, config);
    try {
        app.parse(argc, argv);
    } catch (const CLI::ParseError& e) {
        // Prints the error or --help; a bad flag exits 2, as usage errors do.
        return app.exit(e) == 0 ? 0 : 2;
    }
    const auto path = std::filesystem::temp_directory_path() /
                      ("larder-user-service-" + std::to_string(::getpid()) + ".db");
    int status = 0;
    try {
        Database db(path.string());
        db.seed(config.users);
        db.latency = std::chrono::microseconds(config.db_latency_us);
        const auto ops = make_workload(config);

        std::vector<Result> results;
        results.push_back(run(
            "no cache (SQLite only)", ops, db, [&](std::int64_t id) { return db.select_user(id); },
            [&](std::int64_t id, std::int64_t score) { db.update_score(id, score); }));

        if (config.redis_url.empty()) {
            larder::MemoryBackend memory;
            results.push_back(run_cached("CacheAside + memory", memory, ops, db));
        } else {
#if defined(LARDER_EXAMPLE_HAVE_REDIS)
            larder::RedisBackend redis(larder::RedisOptions::from_url(config.redis_url));
            results.push_back(run_cached("CacheAside + Redis", redis, ops, db));
#else
            throw std::runtime_error("built without hiredis: --redis is not available");
#endif
        }
        print(results, config);
    } catch (const std::exception& e) {
        std::cerr << "user_service: " << e.what() << "\n";
        status = 1;
    }
    std::filesystem::remove(path);
    std::filesystem::remove(path.string() + "-wal");
    std::filesystem::remove(path.string() + "-shm");
    return status;
}
