// Write-behind: a put is acknowledged once Redis holds it (the cached copy and a queued
// dirty copy, in one step); a flusher writes the dirty keys to the database later, in
// batches, one row write per key however many puts it had (coalescing). close() drains
// what is left before the process ends.
//
//   write_behind [redis://127.0.0.1:6379]
#include <larder/backend/redis.hpp>
#include <larder/backend/redis/write_behind_store.hpp>
#include <larder/codec/json.hpp>
#include <larder/larder.hpp>

#include <cstdio>
#include <map>
#include <optional>
#include <span>
#include <string>

struct Player {
    std::string name;
    long score = 0;
};
NLOHMANN_DEFINE_TYPE_NON_INTRUSIVE(Player, name, score)

std::map<std::string, Player> players_table;  // stands for the database
int row_writes = 0;

// The batch writer: idempotent row writes (the value, never a delta), since an entry can
// be written twice after a crash. A real one writes the batch in one transaction.
larder::BatchResult write_rows(std::span<const larder::DirtyEntry<Player>> batch) {
    for (const auto& entry : batch) {
        if (entry.erased) {
            players_table.erase(entry.key);
        } else {
            players_table[entry.key] = entry.value;
        }
        ++row_writes;
    }
    return {};  // every row written
}

int main(int argc, char** argv) {
    const char* url = argc > 1 ? argv[1] : "redis://127.0.0.1:6379";
    larder::RedisBackend redis(larder::RedisOptions::from_url(url));
    // No flusher thread here, so the output does not depend on timing: flush() and close()
    // write on demand. A service keeps the thread (start_flusher, every `interval`).
    larder::WriteBehind<Player, larder::RedisBackend> players(
        redis, write_rows, {.start_flusher = false, .cache = {.key_prefix = "example-player:"}});
    auto no_row = [] { return std::optional<Player>(); };

    players.put("ada", Player{"Ada", 10});
    players.put("bob", Player{"Bob", 20});
    for (int i = 0; i < 5; ++i) players.increment("ada", &Player::score, 1, no_row);
    std::printf("acknowledged; database rows: %zu\n", players_table.size());
    std::printf("read before flush: ada %ld\n", players.get("ada", no_row)->score);

    const larder::FlushReport flushed = players.flush();
    std::printf("flush: %zu rows written for 7 writes\n", flushed.flushed);
    std::printf("database: ada %ld, bob %ld\n", players_table["ada"].score,
                players_table["bob"].score);

    players.put("bob", Player{"Bob", 25});  // left dirty: close() drains it
    const larder::DrainReport drained = players.close();
    std::printf("drain: %s, %zu row written\n", drained.complete ? "complete" : "incomplete",
                drained.flushed.flushed);
    std::printf("database: bob %ld, row writes: %d\n", players_table["bob"].score, row_writes);
}
