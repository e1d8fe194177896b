// Write-behind across real processes on a real redis-server (helpers/write_behind_child):
//  - a flusher SIGKILLed at random points (mid-claim, mid-batch, between the database write
//    and the acknowledgement), then a new flusher: every acknowledged put is in the
//    database, at its latest value;
//  - two flusher processes at once: no older value is ever written over a newer one;
//  - a flusher stalled past its claim (SIGSTOP): a version-fenced database write keeps the
//    newer value, an unfenced one does not - which is why entries carry their version;
//  - a flusher SIGKILLed while the server holds its settle (a WRITE pause): it wrote the
//    batch, the acknowledgement never ran, the next flusher writes the batch again;
//  - a producer SIGKILLed while its put waits for a stopped replica (WAIT): every put it
//    saw acknowledged reaches the database, nothing older overwrites it.
#include <larder/policy/write_behind.hpp>

#include <algorithm>
#include <atomic>
#include <csignal>
#include <filesystem>
#include <fstream>
#include <map>
#include <optional>
#include <random>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "support/backends.hpp"

#if defined(LARDER_TEST_REDIS_BACKEND) && defined(LARDER_TEST_HELPER_WRITE_BEHIND_CHILD)
#include <larder/backend/redis/write_behind_store.hpp>

#include "support/child_process.hpp"
#include "support/eventually.hpp"

using namespace std::chrono_literals;
using larder::test::ChildProcess;
using larder::test::RedisServer;
using larder::test::RedisServerOptions;

namespace {

namespace fs = std::filesystem;

constexpr const char* helper = LARDER_TEST_HELPER_WRITE_BEHIND_CHILD;

class TempDir {
public:
    TempDir() {
        static std::atomic<int> counter{0};
        path_ = fs::temp_directory_path() / ("larder-wb-" + std::to_string(::getpid()) + "-" +
                                             std::to_string(counter.fetch_add(1)));
        fs::create_directories(path_);
    }
    ~TempDir() {
        std::error_code ec;
        fs::remove_all(path_, ec);
    }
    TempDir(const TempDir&) = delete;
    TempDir& operator=(const TempDir&) = delete;
    [[nodiscard]] const fs::path& path() const { return path_; }
    [[nodiscard]] std::string str() const { return path_.string(); }

private:
    fs::path path_;
};

std::string hex(std::string_view bytes) {
    static constexpr char digits[] = "0123456789abcdef";
    std::string out;
    for (unsigned char c : bytes) {
        out.push_back(digits[c >> 4]);
        out.push_back(digits[c & 15]);
    }
    return out.empty() ? "-" : out;
}

int lines_in(const fs::path& file) {
    std::ifstream in(file);
    int n = 0;
    for (std::string line; std::getline(in, line);) ++n;
    return n;
}

struct DbRow {
    std::uint64_t version = 0;
    std::string value_hex;
};

// The child's database, by hex key.
std::map<std::string, DbRow> dump(const TempDir& dir) {
    ChildProcess child(helper, {"dump", dir.str()});
    std::map<std::string, DbRow> rows;
    while (auto line = child.read_line(10s)) {
        std::istringstream in(*line);
        std::string key;
        DbRow row;
        in >> key >> row.version >> row.value_hex;
        rows[key] = row;
    }
    REQUIRE(child.wait() == 0);
    return rows;
}

struct Drained {
    std::size_t flushed = 0;
    std::size_t requeued = 0;
};

// A new flusher process that flushes until the queue is empty.
Drained drain(int port, const std::string& queue, const TempDir& dir, bool fenced) {
    ChildProcess child(
        helper, {"drain", std::to_string(port), queue, dir.str(), "20000", fenced ? "1" : "0"});
    const auto line = child.read_line(30s);
    REQUIRE(child.wait() == 0);
    REQUIRE(line);
    std::istringstream in(*line);
    std::string word;
    Drained d;
    in >> word >> d.flushed >> d.requeued;
    REQUIRE(word == "drained");
    return d;
}

// This process only produces: puts are acknowledged here, flushed by the children.
larder::WriteBehind<std::string, larder::RedisBackend> producer(larder::RedisBackend& redis,
                                                                const std::string& queue) {
    larder::WriteBehindOptions o;
    o.name = queue;
    o.cache.key_prefix = "k:";
    o.start_flusher = false;
    o.drain_timeout = 0ms;
    o.eviction_check = larder::EvictionCheck::ignore;
    o.cache.log.level = larder::LogLevel::off;
    return larder::WriteBehind<std::string, larder::RedisBackend>(
        redis,
        [](std::span<const larder::DirtyEntry<std::string>>) -> larder::BatchResult {
            throw std::logic_error("the parent never flushes");
        },
        o);
}

void require_all_acknowledged(const std::map<std::string, DbRow>& rows,
                              const std::map<std::string, std::string>& acknowledged) {
    for (const auto& [key, value] : acknowledged) {
        INFO("key " << key << ", last acknowledged value " << value);
        const auto it = rows.find(hex(key));
        REQUIRE(it != rows.end());
        REQUIRE(it->second.value_hex == hex(value));
    }
}

// Puts from a thread of this process until stop(), for trials in which the server holds
// write commands for a while (a WRITE pause): a put it holds is late, not failed - the
// backend's command_timeout must outlast the pause.
class BackgroundProducer {
public:
    BackgroundProducer(larder::RedisBackend& redis, const std::string& queue, std::string tag,
                       unsigned seed)
        : wb_(producer(redis, queue)),
          thread_([this, tag = std::move(tag), seed] { run(tag, seed); }) {}
    ~BackgroundProducer() { stop(); }
    BackgroundProducer(const BackgroundProducer&) = delete;
    BackgroundProducer& operator=(const BackgroundProducer&) = delete;

    void stop() {
        stop_ = true;
        if (thread_.joinable()) thread_.join();
    }
    // After stop():
    [[nodiscard]] const std::map<std::string, std::string>& acknowledged() const {
        return acknowledged_;
    }
    [[nodiscard]] std::size_t puts() const { return puts_; }
    [[nodiscard]] const std::string& error() const { return error_; }

private:
    void run(const std::string& tag, unsigned seed) {
        std::mt19937 rng(seed);
        try {
            for (int i = 0; !stop_ && i < 1'000'000; ++i) {
                const std::string key = "key" + std::to_string(rng() % 30);
                const std::string value = tag + "-" + std::to_string(i);
                wb_.put(key, value);  // returned: acknowledged
                acknowledged_[key] = value;
                ++puts_;
                if (i % 4 == 0) std::this_thread::sleep_for(1ms);
            }
        } catch (const std::exception& e) {
            error_ = e.what();
        }
    }

    larder::WriteBehind<std::string, larder::RedisBackend> wb_;
    std::atomic<bool> stop_{false};
    std::map<std::string, std::string> acknowledged_;
    std::size_t puts_ = 0;
    std::string error_;
    std::thread thread_;  // last: starts once the rest is built
};

// One field of a CLIENT LIST line ("flags", "cmd", ...).
std::string client_field(const std::string& line, const std::string& name) {
    const auto at = line.find(" " + name + "=");
    if (at == std::string::npos) return {};
    const auto from = at + name.size() + 2;
    return line.substr(from, line.find(' ', from) - from);
}

bool has_client(const RedisServer& server, const std::string& id) {
    std::istringstream lines(server.command({"CLIENT", "LIST"}));
    for (std::string line; std::getline(lines, line);) {
        if (line.starts_with("id=" + id + " ")) return true;
    }
    return false;
}

// Ids of the clients blocked in WAIT: the server holds their reply until replicas
// acknowledge.
std::vector<std::string> clients_in_wait(const RedisServer& server) {
    std::vector<std::string> ids;
    std::istringstream lines(server.command({"CLIENT", "LIST", "TYPE", "normal"}));
    for (std::string line; std::getline(lines, line);) {
        if (client_field(line, "cmd") == "wait" &&
            client_field(line, "flags").find('b') != std::string::npos) {
            ids.push_back(client_field(" " + line, "id"));
        }
    }
    return ids;
}

// Until a write on the primary now is acknowledged by the replica at once (WAIT 1 with a
// short timeout), as a put with replicas = 1 needs. After a full sync the primary starts the
// replica's command stream only at the replica's first acknowledgement, up to a second after
// both call the link up; after a SIGSTOP the replica has a backlog to catch up on. Two probes
// in a row: a write made before the primary had a replication backlog leaves its client at
// offset 0, which any online replica "acknowledges" at once, streaming or not.
void wait_for_replica_acks(const RedisServer& primary) {
    auto probe = [&] {
        const auto replies = larder::test::detail::execute_pipeline(
            primary.port(), {{"INCR", "crash-test:probe"}, {"WAIT", "1", "100"}}, 5s);
        return replies.back().type == larder::test::RespReply::Type::integer &&
               replies.back().integer == 1;
    };
    REQUIRE(larder::test::eventually([&] { return probe() && probe(); }, 15s));
}

}  // namespace

TEST_CASE("A flusher SIGKILLed at random points loses no acknowledged put",
          "[write_behind][crash][redis][multiprocess]") {
    larder::test::RedisServer server;
    auto redis = larder::test::make_test_backend(server, {.command_timeout = 2s});
    const auto seed = std::random_device{}();
    INFO("seed " << seed);
    std::mt19937 rng(seed);
    auto uniform = [&](int lo, int hi) { return std::uniform_int_distribution<int>(lo, hi)(rng); };

    const std::vector<std::string> points{"never", "before", "middle", "after"};
    std::map<std::string, int> deaths;
    std::size_t requeued = 0, rows_written = 0, puts = 0;
    constexpr int trials = 24;
    for (int trial = 0; trial < trials; ++trial) {
        TempDir dir;
        const std::string queue = "crash" + std::to_string(trial);
        std::string mode = points[trial % points.size()];
        if (mode != "never") mode += ":" + std::to_string(uniform(1, 6));
        INFO("trial " << trial << ", mode " << mode);

        ChildProcess flusher(
            helper, {"flush", std::to_string(server.port()), queue, dir.str(), mode, "300", "0"});
        REQUIRE(flusher.read_line(10s) == "ready");
        bool alive = true;
        auto wb = producer(redis, queue);
        std::map<std::string, std::string> acknowledged;
        int i = 0;
        auto put_one = [&] {
            const std::string key = "key" + std::to_string(uniform(0, 29));
            const std::string value = "t" + std::to_string(trial) + "-" + std::to_string(i++);
            wb.put(key, value);  // returned: acknowledged
            acknowledged[key] = value;
            ++puts;
        };

        const int kill_at = uniform(0, 399);
        for (int n = 0; n < 400; ++n) {
            put_one();
            if (mode == "never" && n == kill_at) {
                flusher.kill();  // wherever it is: claiming, writing, acknowledging, idle
                alive = false;
                ++deaths["SIGKILL from the parent"];
            }
            if (n % 50 == 0) std::this_thread::sleep_for(1ms);
        }
        // A flusher set to die at batch n: keep it busy until it gets there (bounded).
        const auto deadline = std::chrono::steady_clock::now() + 5s;
        while (alive && std::chrono::steady_clock::now() < deadline) {
            put_one();
            if (flusher.read_line(2ms) == "dying") {
                REQUIRE(flusher.wait() == 128 + SIGKILL);
                alive = false;
                ++deaths["SIGKILL of its own, " + mode.substr(0, mode.find(':'))];
            }
        }
        if (alive) {
            flusher.kill();
            ++deaths["SIGKILL from the parent (never reached its batch)"];
        }

        const Drained d = drain(server.port(), queue, dir, /*fenced=*/false);
        requeued += d.requeued;
        const auto rows = dump(dir);
        rows_written += rows.size();
        require_all_acknowledged(rows, acknowledged);
        REQUIRE_FALSE(fs::exists(dir.path() / "regressions"));
    }
    std::ostringstream how;
    for (const auto& [what, n] : deaths) how << "\n  " << n << " x " << what;
    WARN(trials << " flushers killed, " << puts << " acknowledged puts, all " << rows_written
                << " rows in the database at their latest value; " << requeued
                << " claims of dead flushers re-queued by the next one" << how.str());
    REQUIRE(requeued > 0);
}

TEST_CASE("Two flusher processes at once never write an older value over a newer one",
          "[write_behind][crash][redis][multiprocess]") {
    larder::test::RedisServer server;
    auto redis = larder::test::make_test_backend(server, {.command_timeout = 2s});
    TempDir dir;
    const std::string queue = "two";
    // Unfenced database writes: nothing but the queue's ordering keeps an old value out.
    ChildProcess a(helper,
                   {"flush", std::to_string(server.port()), queue, dir.str(), "never", "500", "0"});
    ChildProcess b(helper,
                   {"flush", std::to_string(server.port()), queue, dir.str(), "never", "500", "0"});
    REQUIRE(a.read_line(10s) == "ready");
    REQUIRE(b.read_line(10s) == "ready");
    auto wb = producer(redis, queue);
    std::map<std::string, std::string> acknowledged;
    for (int i = 0; i < 1500; ++i) {
        const std::string key = "hot" + std::to_string(i % 10);
        const std::string value = "v" + std::to_string(i);
        wb.put(key, value);
        acknowledged[key] = value;
        if (i % 100 == 0) std::this_thread::sleep_for(2ms);
    }
    std::this_thread::sleep_for(50ms);
    a.kill();
    b.kill();
    (void)drain(server.port(), queue, dir, /*fenced=*/false);
    require_all_acknowledged(dump(dir), acknowledged);
    const int regressions = lines_in(dir.path() / "regressions");
    WARN("two flushers, 1500 puts on 10 keys: " << regressions
                                                << " writes of an older value over a newer one");
    REQUIRE(regressions == 0);
}

TEST_CASE("A flusher stalled past its claim cannot make an older value win a fenced database",
          "[write_behind][crash][redis][multiprocess]") {
    larder::test::RedisServer server;
    auto redis = larder::test::make_test_backend(server, {.command_timeout = 2s});
    for (const bool fenced : {true, false}) {
        INFO((fenced ? "fenced" : "unfenced") << " database writes");
        TempDir dir;
        const std::string queue = fenced ? "stall-fenced" : "stall-plain";
        ChildProcess stalled(helper, {"flush", std::to_string(server.port()), queue, dir.str(),
                                      "stall", "200", fenced ? "1" : "0"});
        REQUIRE(stalled.read_line(10s) == "ready");
        auto wb = producer(redis, queue);
        wb.put("k", "v1");
        const auto writing = stalled.read_line(10s);
        REQUIRE(writing);
        REQUIRE(writing->starts_with("writing " + hex("k")));
        // Stopped between claiming v1 and writing it: a GC pause, a swap storm, SIGSTOP.
        REQUIRE(::kill(stalled.pid(), SIGSTOP) == 0);
        wb.put("k", "v2");
        std::this_thread::sleep_for(400ms);  // its claim (200 ms) runs out
        const Drained d = drain(server.port(), queue, dir, fenced);
        REQUIRE(d.requeued == 1);
        REQUIRE(dump(dir)[hex("k")].value_hex == hex("v2"));
        // It wakes up and writes what it claimed long ago.
        REQUIRE(::kill(stalled.pid(), SIGCONT) == 0);
        stalled.write_line("go");
        REQUIRE(stalled.read_line(10s) == "wrote");
        stalled.kill();
        const auto rows = dump(dir);
        if (fenced) {
            REQUIRE(rows.at(hex("k")).value_hex == hex("v2"));
            REQUIRE(lines_in(dir.path() / "fenced") == 1);
            REQUIRE(lines_in(dir.path() / "regressions") == 0);
        } else {
            // The hazard the version exists for: without the check, the old value wins.
            REQUIRE(rows.at(hex("k")).value_hex == hex("v1"));
            REQUIRE(lines_in(dir.path() / "regressions") == 1);
            WARN(
                "unfenced: a flusher stalled past its claim wrote v1 over v2; with "
                "UPDATE ... WHERE version < ? the write is refused");
        }
    }
}

TEST_CASE("A flusher SIGKILLed while its settle is in flight loses no acknowledged put",
          "[write_behind][crash][redis][multiprocess]") {
    // The flusher child, at its batch n, writes every row to the database, pauses the
    // server's writes (CLIENT PAUSE 5000 WRITE) and returns: its settle script goes out and
    // the server holds it. Once CLIENT LIST shows that script held on one of the child's
    // connections, unanswered, the child is SIGKILLed. The rows are in the database, their
    // acknowledgement never ran: the next flusher must find the claim and write them again -
    // and no put acknowledged meanwhile may be lost or overwritten by an older value.
    RedisServer server;
    // Above the pause (5 s at most, lifted here as soon as the child is dead): a put the
    // pause holds is late, never failed.
    auto redis = larder::test::make_test_backend(server, {.command_timeout = 10s});
    const auto seed = std::random_device{}();
    INFO("seed " << seed);
    std::mt19937 rng(seed);
    auto uniform = [&](int lo, int hi) { return std::uniform_int_distribution<int>(lo, hi)(rng); };

    constexpr int trials = 6;
    int held_at_kill = 0;
    std::size_t puts = 0, rows_rewritten = 0;
    const auto started = std::chrono::steady_clock::now();
    for (int trial = 0; trial < trials; ++trial) {
        TempDir dir;
        const std::string queue = "settle" + std::to_string(trial);
        const std::string mode = "settle:" + std::to_string(uniform(1, 4));
        INFO("trial " << trial << ", mode " << mode);

        ChildProcess flusher(
            helper, {"flush", std::to_string(server.port()), queue, dir.str(), mode, "300", "0"});
        REQUIRE(flusher.read_line(10s) == "ready");
        BackgroundProducer producing(redis, queue, "t" + std::to_string(trial), rng());

        // "held <blocked> <blocked before> <rows> <ids>", then "dying" (batch n comes
        // within milliseconds: the producer keeps the queue full) - and no "settle
        // returned" before them: the flush of batch n had not returned at the kill.
        const auto held = flusher.read_line(20s);
        REQUIRE(held);
        INFO("the flusher said: " << *held);
        std::istringstream in(*held);
        std::string word, ids;
        std::size_t blocked = 0, blocked_before = 0, rows = 0;
        in >> word >> blocked >> blocked_before >> rows >> ids;
        REQUIRE(word == "held");
        REQUIRE(flusher.read_line(10s) == "dying");
        REQUIRE(flusher.wait() == 128 + SIGKILL);
        // The settle was at the server, unanswered, when the kill landed: one more of the
        // child's scripts held than before its batch writer returned. (The only other
        // script it could send meanwhile is the claim keeper's extension, which runs only
        // while a batch writer does; the settle goes out as soon as the writer returns.)
        REQUIRE(blocked > blocked_before);
        REQUIRE(rows > 0);
        ++held_at_kill;
        // The server drops the dead child's connections, and with them the held settle: it
        // never runs (the pause is still on, so it cannot have run yet).
        std::istringstream id_list(ids);
        for (std::string id; std::getline(id_list, id, ',');) {
            REQUIRE(larder::test::eventually([&] { return !has_client(server, id); }, 10s));
        }
        REQUIRE(server.command({"CLIENT", "UNPAUSE"}) == "OK");
        std::this_thread::sleep_for(20ms);  // a few more puts, while the claim is still held
        producing.stop();
        REQUIRE(producing.error().empty());
        puts += producing.puts();

        const Drained d = drain(server.port(), queue, dir, /*fenced=*/false);
        // The dead flusher's claim was never settled: the next one re-queues all its rows
        // (had the settle run before the kill, it would have re-queued none).
        REQUIRE(d.requeued >= rows);
        rows_rewritten += rows;
        require_all_acknowledged(dump(dir), producing.acknowledged());
        REQUIRE_FALSE(fs::exists(dir.path() / "regressions"));
    }
    const auto took = std::chrono::duration_cast<std::chrono::milliseconds>(
        std::chrono::steady_clock::now() - started);
    WARN(trials << " flushers SIGKILLed with their settle held at the server (" << held_at_kill
                << " seen held on their own connection at the kill); " << rows_rewritten
                << " rows written but never acknowledged, re-queued and written again; " << puts
                << " acknowledged puts, all in the database at their latest value; " << took.count()
                << " ms");
}

TEST_CASE(
    "A producer SIGKILLed while its put waits for a replica (WAIT) loses no acknowledged put "
    "and reorders nothing",
    "[write_behind][crash][redis][multiprocess][durability]") {
    // A producer child puts with replicas = 1 (EVALSHA, then WAIT 1 2000 on the same
    // connection), printing each put before it and each acknowledgement after it; a flusher
    // child flushes all along. The replica is stopped (SIGSTOP: it no longer acknowledges
    // the replication stream, so WAIT blocks; CLIENT PAUSE on a replica would not, its link
    // to the primary is never paused), and once CLIENT LIST on the primary shows the
    // producer's WAIT blocked, the producer is SIGKILLed there. Then a drain, and the
    // database holds, for every key, its last acknowledged value or a newer one.
    // (No 5 s wait for more replicas before the first full sync.)
    RedisServer primary(RedisServerOptions{.extra_args = {"--repl-diskless-sync-delay", "0"}});
    RedisServer replica(RedisServerOptions{
        .extra_args = {"--replicaof", primary.host(), std::to_string(primary.port())}});
    wait_for_replica_acks(primary);
    const auto seed = std::random_device{}();
    INFO("seed " << seed);
    std::mt19937 rng(seed);
    auto uniform = [&](int lo, int hi) { return std::uniform_int_distribution<int>(lo, hi)(rng); };
    const std::string port = std::to_string(primary.port());

    struct Put {
        std::string key;
        std::string value;
        bool acked = false;
    };
    constexpr int trials = 8;
    std::size_t acked_total = 0, refused_total = 0, in_flight_landed = 0, newer_kept = 0;
    const auto started = std::chrono::steady_clock::now();
    for (int trial = 0; trial < trials; ++trial) {
        INFO("trial " << trial);
        TempDir dir;
        const std::string queue = "wait" + std::to_string(trial);
        ChildProcess flusher(helper, {"flush", port, queue, dir.str(), "never", "300", "0"});
        REQUIRE(flusher.read_line(10s) == "ready");
        ChildProcess producer(helper,
                              {"produce", port, queue, "t" + std::to_string(trial), "2000"});
        REQUIRE(producer.read_line(10s) == "ready");

        std::vector<Put> puts;
        std::map<std::string, std::size_t> by_value;  // hex value -> index in puts
        auto take = [&](const std::string& line) {
            INFO("the producer said: " << line);
            std::istringstream in(line);
            std::string word, key, value;
            in >> word >> key >> value;
            if (word == "putting") {
                by_value[hex(value)] = puts.size();
                puts.push_back(Put{key, value});
                return;
            }
            REQUIRE(by_value.contains(hex(value)));
            REQUIRE(puts.size() == by_value[hex(value)] + 1);  // one put at a time
            if (word == "acked") {
                puts.back().acked = true;
            } else {
                // DurabilityError: the WAIT ran out (2 s) before the kill. Not acknowledged.
                REQUIRE(word == "refused");
                ++refused_total;
            }
        };
        auto read_for = [&](std::chrono::milliseconds how_long) {
            const auto until = std::chrono::steady_clock::now() + how_long;
            while (std::chrono::steady_clock::now() < until) {
                if (auto line = producer.read_line(5ms)) take(*line);
            }
        };

        auto acked = [&] {
            return static_cast<std::size_t>(
                std::count_if(puts.begin(), puts.end(), [](const Put& p) { return p.acked; }));
        };
        // Puts acknowledged by the replica for a while (at least one, on a slow machine).
        read_for(std::chrono::milliseconds(uniform(100, 300)));
        const auto first_ack_by = std::chrono::steady_clock::now() + 10s;
        while (acked() == 0 && std::chrono::steady_clock::now() < first_ack_by) read_for(5ms);
        REQUIRE(acked() > 0);
        replica.pause();
        std::vector<std::string> in_wait;  // the flusher never WAITs: the producer
        const auto deadline = std::chrono::steady_clock::now() + 10s;
        while (in_wait.empty() && std::chrono::steady_clock::now() < deadline) {
            read_for(2ms);
            in_wait = clients_in_wait(primary);
        }
        REQUIRE(in_wait.size() == 1);
        // It stays there, unanswered: nothing more is acknowledged, and the same WAIT is
        // still blocked when the kill lands (its 2 s run out only far later). (A replica
        // that answers keeps WAITs far shorter than this.)
        read_for(100ms);
        const std::size_t acked_before = acked();
        REQUIRE(clients_in_wait(primary) == in_wait);
        REQUIRE(::kill(producer.pid(), SIGKILL) == 0);
        REQUIRE(producer.wait() == 128 + SIGKILL);
        while (auto line = producer.read_line(2s)) take(*line);  // up to its EOF
        // Killed in WAIT: the last put it started was not acknowledged, nor any since the
        // last look.
        REQUIRE_FALSE(puts.back().acked);
        REQUIRE(acked() == acked_before);
        // The server lets go of the dead producer's WAIT.
        REQUIRE(larder::test::eventually([&] { return clients_in_wait(primary).empty(); }, 10s));
        flusher.kill();
        replica.resume();
        wait_for_replica_acks(primary);

        (void)drain(primary.port(), queue, dir, /*fenced=*/false);
        const auto rows = dump(dir);
        std::map<std::string, std::size_t> last_acked;  // key -> index in puts
        for (std::size_t i = 0; i < puts.size(); ++i) {
            if (puts[i].acked) last_acked[puts[i].key] = i;
        }
        for (const auto& [key, acked_at] : last_acked) {
            INFO("key " << key << ", last acknowledged value " << puts[acked_at].value);
            const auto row = rows.find(hex(key));
            REQUIRE(row != rows.end());
            INFO("the database holds " << row->second.value_hex);
            const auto put = by_value.find(row->second.value_hex);
            REQUIRE(put != by_value.end());
            REQUIRE(puts[put->second].key == key);
            // Its last acknowledged value, or a newer one: the put in flight at the kill
            // (or one refused when its WAIT ran out) was applied on the primary before its
            // WAIT, and is flushed like any other. Not acknowledged, so it may be there or
            // not; what must never be there is an older value.
            REQUIRE(put->second >= acked_at);
            if (put->second > acked_at) ++newer_kept;
        }
        for (const auto& [key_hex, row] : rows) {
            // Every row, acknowledged keys or not, holds a value put to its own key.
            const auto put = by_value.find(row.value_hex);
            REQUIRE(put != by_value.end());
            REQUIRE(hex(puts[put->second].key) == key_hex);
        }
        const auto in_flight = rows.find(hex(puts.back().key));
        if (in_flight != rows.end() && in_flight->second.value_hex == hex(puts.back().value)) {
            ++in_flight_landed;
        }
        REQUIRE_FALSE(fs::exists(dir.path() / "regressions"));
        acked_total += acked_before;
    }
    const auto took = std::chrono::duration_cast<std::chrono::milliseconds>(
        std::chrono::steady_clock::now() - started);
    WARN(trials << " producers SIGKILLed in WAIT; " << acked_total
                << " puts acknowledged after WAIT 1, all in the database at their last "
                   "acknowledged value or newer ("
                << newer_kept << " keys at a newer, unacknowledged value; the put in WAIT at "
                << "the kill reached the database " << in_flight_landed << " times); "
                << refused_total << " puts refused (WAIT ran out); " << took.count() << " ms");
}

#endif
