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

std::map<std::string, Account> accounts_table;  // stands for the database
int db_reads = 0;
int db_writes = 0;

int main(int argc, char** argv) {
    const char* url = argc > 1 ? argv[1] : "redis://127.0.0.1:6379";
    larder::RedisBackend redis(larder::RedisOptions::from_url(url));
    larder::WriteThrough<Account, larder::RedisBackend> accounts(
        redis, {.cache = {.key_prefix = "example-account:"}});
    auto load = [](const std::string& id) {
        return [id]() -> std::optional<Account> {
            ++db_reads;
            auto row = accounts_table.find(id);
            if (row == accounts_table.end()) return std::nullopt;
            return row->second;
        };
    };
    accounts.invalidate("A-1");  // start cold on every run

    const Account opened{"Ada", 100};
    auto outcome = accounts.put("A-1", opened, [&] {
        ++db_writes;  // runs inside put, before the cache is updated
        accounts_table["A-1"] = opened;
    });
    std::printf("put: %s, database writes: %d\n",
                outcome == larder::WriteOutcome::cached ? "cached" : "not cached", db_writes);

    auto a = accounts.get("A-1", load("A-1"));  // a hit: the value put is cached
    std::printf("read: %s %ld, database reads: %d\n", a->owner.c_str(), a->balance, db_reads);

    const Account after_deposit{"Ada", 150};
    accounts.put("A-1", after_deposit, [&] {
        ++db_writes;
        accounts_table["A-1"] = after_deposit;
    });
    a = accounts.get("A-1", load("A-1"));
    std::printf("read: %s %ld, database reads: %d, database writes: %d\n", a->owner.c_str(),
                a->balance, db_reads, db_writes);
}
