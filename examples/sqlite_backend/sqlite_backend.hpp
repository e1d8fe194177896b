// A larder Backend over SQLite: one table, each operation one statement (get_many: one
// transaction), all under one mutex on one connection. docs/backends.md walks through it;
// tests/sqlite_backend_test.cpp runs the conformance suite on it. Copy it and adapt.
#pragma once

#include <larder/backend/backend.hpp>
#include <larder/backend/write_behind_store.hpp>
#include <larder/core/clock.hpp>
#include <larder/core/error.hpp>

#include <sqlite3.h>

#include <cstdint>
#include <mutex>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <type_traits>
#include <vector>

class SqliteBackend {
public:
    /// `path`: a database file, or ":memory:". TTLs run on `clock` (wall time by default:
    /// the only time that processes sharing the file agree on).
    explicit SqliteBackend(const std::string& path,
                           const larder::Clock& clock = larder::SystemClock::instance())
        : clock_(clock) {
        if (sqlite3_open(path.c_str(), &db_) != SQLITE_OK) {
            const std::string why = db_ ? sqlite3_errmsg(db_) : "out of memory";
            sqlite3_close(db_);
            throw larder::BackendError("sqlite: " + why);
        }
        sqlite3_busy_timeout(db_, 1000);  // another process holds the lock: wait, then fail
        run("CREATE TABLE IF NOT EXISTS cache (key BLOB PRIMARY KEY, value BLOB NOT NULL, "
            "expires_at INTEGER)");  // expires_at: ms on the clock; NULL: no expiry
    }
    ~SqliteBackend() { sqlite3_close(db_); }
    SqliteBackend(const SqliteBackend&) = delete;
    SqliteBackend& operator=(const SqliteBackend&) = delete;

    std::optional<larder::StoredValue> get(std::string_view key) {
        std::lock_guard lock(mutex_);
        return get_locked(key);
    }

    std::vector<std::optional<larder::StoredValue>> get_many(std::span<const std::string> keys) {
        std::lock_guard lock(mutex_);
        run("BEGIN");  // one snapshot for all keys
        std::vector<std::optional<larder::StoredValue>> out;
        try {
            for (const auto& key : keys) out.push_back(get_locked(key));
        } catch (...) {
            sqlite3_exec(db_, "ROLLBACK", nullptr, nullptr, nullptr);
            throw;
        }
        run("COMMIT");
        return out;
    }

    void set(std::string_view key, std::string_view value, larder::Millis ttl) {
        change("INSERT OR REPLACE INTO cache VALUES (?1, ?2, ?3)", key, value, ttl);
    }

    bool set_if_absent(std::string_view key, std::string_view value, larder::Millis ttl) {
        // A row that expired counts as absent: the upsert replaces only such a row.
        return change(
                   "INSERT INTO cache VALUES (?1, ?2, ?3) ON CONFLICT (key) "
                   "DO UPDATE SET value = ?2, expires_at = ?3 WHERE expires_at <= ?4",
                   key, value, ttl) == 1;
    }

    bool compare_and_set(std::string_view key, std::string_view expected, std::string_view value,
                         larder::Millis ttl) {
        return change(
                   "UPDATE cache SET value = ?2, expires_at = ?3 "
                   "WHERE key = ?1 AND value = ?5 AND (expires_at IS NULL OR expires_at > ?4)",
                   key, value, ttl, expected) == 1;
    }

    bool compare_and_delete(std::string_view key, std::string_view expected) {
        return change(
                   "DELETE FROM cache "
                   "WHERE key = ?1 AND value = ?5 AND (expires_at IS NULL OR expires_at > ?4)",
                   key, {}, larder::no_expiry, expected) == 1;
    }

    bool compare_and_expire(std::string_view key, std::string_view expected, larder::Millis ttl) {
        return change(
                   "UPDATE cache SET expires_at = ?3 "
                   "WHERE key = ?1 AND value = ?5 AND (expires_at IS NULL OR expires_at > ?4)",
                   key, {}, ttl, expected) == 1;
    }

    bool del(std::string_view key) {
        return change(
                   "DELETE FROM cache "
                   "WHERE key = ?1 AND (expires_at IS NULL OR expires_at > ?4)",
                   key, {}, larder::no_expiry) == 1;
    }

    /// Deletes the rows that expired (reads skip them, writes replace them).
    void purge_expired() {
        change("DELETE FROM cache WHERE expires_at <= ?4", {}, {}, larder::no_expiry);
    }

private:
    // A prepared statement, finalized however the call ends.
    struct Statement {
        sqlite3_stmt* s = nullptr;
        ~Statement() { sqlite3_finalize(s); }
    };

    [[noreturn]] void fail() const {
        const int code = sqlite3_errcode(db_);
        const std::string what = std::string("sqlite: ") + sqlite3_errmsg(db_);
        if (code == SQLITE_BUSY || code == SQLITE_LOCKED) throw larder::TimeoutError(what);
        throw larder::BackendError(what);
    }

    void run(const char* sql) {
        if (sqlite3_exec(db_, sql, nullptr, nullptr, nullptr) != SQLITE_OK) fail();
    }

    std::int64_t now() const { return clock_.now().time_since_epoch().count(); }

    // Prepares `sql`, binding what it uses of ?1 key, ?2 value, ?3 expiry (NULL: none),
    // ?4 now, ?5 expected (all as BLOBs but the times).
    void prepare(Statement& st, const char* sql, std::string_view key, std::string_view value,
                 larder::Millis ttl, std::string_view expected) {
        if (sqlite3_prepare_v2(db_, sql, -1, &st.s, nullptr) != SQLITE_OK) fail();
        const int used = sqlite3_bind_parameter_count(st.s);  // the highest ?N in `sql`
        const auto bind = [&](int i, auto v) {
            int rc = SQLITE_OK;
            if (i > used) return;
            if constexpr (std::is_same_v<decltype(v), std::string_view>) {
                // Never a null pointer: that would bind NULL, not an empty BLOB.
                rc = sqlite3_bind_blob64(st.s, i, v.empty() ? "" : v.data(), v.size(),
                                         SQLITE_STATIC);
            } else {
                rc = sqlite3_bind_int64(st.s, i, v);
            }
            if (rc != SQLITE_OK) fail();
        };
        const std::int64_t t = now();
        bind(1, key);
        bind(2, value);
        if (ttl.count() > 0) bind(3, t + larder::saturated(ttl).count());
        bind(4, t);
        bind(5, expected);
    }

    // Runs a write; returns the rows it changed.
    int change(const char* sql, std::string_view key, std::string_view value, larder::Millis ttl,
               std::string_view expected = {}) {
        std::lock_guard lock(mutex_);
        Statement st;
        prepare(st, sql, key, value, ttl, expected);
        if (sqlite3_step(st.s) != SQLITE_DONE) fail();
        return sqlite3_changes(db_);
    }

    std::optional<larder::StoredValue> get_locked(std::string_view key) {
        Statement st;
        prepare(st,
                "SELECT value, expires_at - ?4 FROM cache "
                "WHERE key = ?1 AND (expires_at IS NULL OR expires_at > ?4)",
                key, {}, larder::no_expiry, {});
        const int rc = sqlite3_step(st.s);
        if (rc == SQLITE_DONE) return std::nullopt;
        if (rc != SQLITE_ROW) fail();
        larder::StoredValue out;
        const auto* bytes = static_cast<const char*>(sqlite3_column_blob(st.s, 0));
        out.bytes.assign(bytes ? bytes : "",
                         static_cast<std::size_t>(sqlite3_column_bytes(st.s, 0)));
        if (sqlite3_column_type(st.s, 1) != SQLITE_NULL) {
            out.ttl = larder::Millis{sqlite3_column_int64(st.s, 1)};
        }
        return out;
    }

    const larder::Clock& clock_;
    sqlite3* db_ = nullptr;
    std::mutex mutex_;
};

static_assert(larder::Backend<SqliteBackend>);

// WriteBehind<T, SqliteBackend>: the cached copies are rows of the table, the queue of
// unflushed writes stays in process memory (not durable: what is unflushed when the process
// ends is lost).
template <>
struct larder::write_behind_store_for<SqliteBackend> {
    using type = larder::MemoryWriteBehindStore<SqliteBackend>;
};
