// Write-through: put writes the database, then the cache, before it returns, so a read
// right after a write hits with the new value. Concurrent writers of one key take turns
// (a write lease), so the cache ends with the last committed value, never an older one.
//
//   write_through [redis://127.0.0.1:6379]
#include <larder/backend/redis.hpp>
#include <larder/codec/json.hpp>
#include <larder/larder.hpp>

#include <cstdio>
#include <map>
#include <optional>
#include <string>

struct Account {
    std::string owner;
    long balance = 0;
};
NLOHMANN_DEFINE_TYPE_NON_INTRUSIVE(Account, owner, balance)

// Stands for the database, with counters of the queries it answered.
struct Database {
    std::map<std::string, Account> rows;
    int reads = 0;
    int writes = 0;
} db;

int main(int argc, char** argv) {
    const char* url = argc > 1 ? argv[1] : "redis://127.0.0.1:6379";
    larder::RedisBackend redis(larder::RedisOptions::from_url(url));
    larder::WriteThrough<Account, larder::RedisBackend> accounts(
        redis, {.cache = {.key_prefix = "example-account:"}});
    auto get_account = [&](const std::string& id) {
        return accounts.get(id, [&id]() -> std::optional<Account> {
            ++db.reads;
            auto row = db.rows.find(id);
            if (row == db.rows.end()) return std::nullopt;
            return row->second;
        });
    };
    // The database write runs inside put, before the cache is updated.
    auto update_account = [&](const std::string& id, const Account& account) {
        return accounts.put(id, account, [&] {
            ++db.writes;
            db.rows[id] = account;
        });
    };
    accounts.invalidate("A-1");  // start cold on every run

    const auto outcome = update_account("A-1", {"Ada", 100});
    std::printf("put: %s, database writes: %d\n",
                outcome == larder::WriteOutcome::cached ? "cached" : "not cached", db.writes);

    auto a = get_account("A-1");  // a hit: the value put is cached
    std::printf("read: %s %ld, database reads: %d\n", a->owner.c_str(), a->balance, db.reads);

    update_account("A-1", {"Ada", 150});
    a = get_account("A-1");
    std::printf("read: %s %ld, database reads: %d, database writes: %d\n", a->owner.c_str(),
                a->balance, db.reads, db.writes);
}
