// A child process for the write-behind crash tests: a flusher on a real redis-server whose
// batch writer writes a "database" shared with the parent: a directory with one file per
// row ("<version>\n<value>", replaced atomically by rename, so a row is never half
// written), a lock file held for the whole batch like a transaction, and an audit of every
// write that would take a row back to an older version.
//
//   write_behind_child flush <port> <queue> <db_dir> <mode> <claim_ttl_ms> <fenced>
//       Flushes every millisecond, forever; prints "ready" first. <mode>:
//         never            just flush (the parent SIGKILLs it when it likes)
//         before:<n>       SIGKILL itself at batch n, having claimed it, before writing
//         middle:<n>       ... after writing half of batch n's rows
//         after:<n>        ... after writing all of batch n's rows, before acknowledging
//         stall            at every batch print "writing <hex key> <version>" and wait
//                          for a line on stdin before writing; print "wrote" after
//         settle:<n>       at batch n, having written all its rows, make the server hold
//                          every write command (CLIENT PAUSE 5000 WRITE, on a connection
//                          of its own) and return, so that the settle script goes out and
//                          waits at the server; a thread watches CLIENT LIST until it sees
//                          it there, unanswered, and SIGKILLs the process some tens of ms
//                          later, having printed
//                            "held <blocked> <blocked before> <rows> <client ids|->"
//                          <blocked>: this process's scripts the server holds at the kill
//                          (the settle: <blocked before> counted those held before the
//                          batch writer returned, normally 0); <client ids>: theirs,
//                          comma separated, for the parent to see the server drop them.
//                          Should that batch's flush return first (its settle answered,
//                          or failed), it prints "settle returned".
//       Before a SIGKILL of its own it prints "dying".
//   write_behind_child produce <port> <queue> <tag> <replica_timeout_ms>
//       A producer: puts to key0..key9 (values "<tag>-<i>") with replicas = 1, one by one,
//       forever (at most 100000); prints "ready" first, "putting <key> <value>" before
//       each put and, when the put returns, "acked <key> <value>" - or "refused <key>
//       <value> <error>" when it throws (not acknowledged; it may still be applied).
//   write_behind_child drain <port> <queue> <db_dir> <timeout_ms> <fenced>
//       Flushes until the queue is empty; prints "drained <flushed> <requeued>", exit 0;
//       exit 1 when the queue is still not empty after the timeout.
//   write_behind_child dump <db_dir>
//       Prints "<hex key> <version> <hex value>" for every row.
//
// <fenced> 1: a write with a version older than the row's is skipped (and noted in
// <db_dir>/fenced), as UPDATE ... WHERE version < ? would; 0: it is written, and noted in
// <db_dir>/regressions. Either way <db_dir>/regressions lists every time the database went
// back to an older value.
#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <sys/file.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <csignal>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <random>
#include <set>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#if defined(LARDER_TEST_HAVE_REDIS)
#include <larder/backend/redis.hpp>
#include <larder/backend/redis/write_behind_store.hpp>
#include <larder/policy/write_behind.hpp>

#include "support/redis_server.hpp"

namespace {

using namespace std::chrono_literals;
using Entry = larder::DirtyEntry<std::string>;

std::string hex(std::string_view bytes) {
    static constexpr char digits[] = "0123456789abcdef";
    std::string out;
    for (unsigned char c : bytes) {
        out.push_back(digits[c >> 4]);
        out.push_back(digits[c & 15]);
    }
    return out.empty() ? "-" : out;  // an empty key still needs a file name
}

std::string read_file(const std::filesystem::path& path) {
    std::ifstream in(path, std::ios::binary);
    return std::string(std::istreambuf_iterator<char>(in), {});
}

void append_line(const std::filesystem::path& path, const std::string& line) {
    const int fd = ::open(path.c_str(), O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0644);
    if (fd < 0) throw std::runtime_error("cannot open " + path.string());
    const std::string data = line + "\n";
    const bool ok = ::write(fd, data.data(), data.size()) == static_cast<ssize_t>(data.size());
    ::close(fd);
    if (!ok) throw std::runtime_error("cannot write " + path.string());
}

class FileDb {
public:
    FileDb(std::filesystem::path dir, bool fenced) : dir_(std::move(dir)), fenced_(fenced) {
        std::filesystem::create_directories(dir_);
    }

    /// Writes rows [first, last) of the batch under the database lock.
    void write(std::span<const Entry> batch, std::size_t first, std::size_t last) {
        const int lock = ::open((dir_ / "lock").c_str(), O_RDWR | O_CREAT | O_CLOEXEC, 0644);
        if (lock < 0 || ::flock(lock, LOCK_EX) != 0) throw std::runtime_error("cannot lock the db");
        try {
            for (std::size_t i = first; i < last; ++i) write_row(batch[i]);
        } catch (...) {
            ::close(lock);
            throw;
        }
        ::close(lock);  // releases the flock
    }

private:
    void write_row(const Entry& e) {
        const auto path = dir_ / ("row-" + hex(e.key));
        std::uint64_t current = 0;
        if (std::filesystem::exists(path)) current = std::stoull(read_file(path));
        if (current > e.version) {
            const std::string note =
                hex(e.key) + " " + std::to_string(current) + " " + std::to_string(e.version);
            if (fenced_) {
                append_line(dir_ / "fenced", note);
                return;
            }
            append_line(dir_ / "regressions", note);
        }
        const auto tmp = dir_ / (".tmp-" + std::to_string(::getpid()));
        {
            std::ofstream out(tmp, std::ios::binary | std::ios::trunc);
            out << e.version << "\n" << e.value;
            if (!out.flush()) throw std::runtime_error("cannot write a row");
        }
        std::filesystem::rename(tmp, path);
    }

    std::filesystem::path dir_;
    bool fenced_;
};

larder::RedisBackend connect(int port, larder::Millis command_timeout = 2s) {
    return larder::RedisBackend(larder::RedisOptions{.port = port,
                                                     .connect_timeout = 2s,
                                                     .command_timeout = command_timeout,
                                                     .pool_size = 4,
                                                     .pool_wait_timeout = 2s,
                                                     .require_connection = true});
}

larder::WriteBehindOptions options(const std::string& queue, larder::Millis claim_ttl) {
    larder::WriteBehindOptions o;
    o.name = queue;
    o.cache.key_prefix = "k:";
    o.start_flusher = false;
    o.batch_size = 8;
    o.claim_ttl = claim_ttl;
    o.retry = {.max_attempts = 1000, .first_backoff = 1ms, .max_backoff = 10ms};
    o.drain_timeout = 0ms;
    o.eviction_check = larder::EvictionCheck::ignore;
    o.cache.log.level = larder::LogLevel::off;
    return o;
}

[[noreturn]] void die() {
    std::cout << "dying" << std::endl;
    std::raise(SIGKILL);
    std::abort();
}

// One command on a fresh connection of its own, outside the backend's pool.
std::string side_command(int port, const std::vector<std::string>& args) {
    return larder::test::detail::execute_pipeline(port, {args}, 5s).back().render();
}

// Local ports of this process's TCP sockets: its connections, as CLIENT LIST's addr= shows
// them.
std::set<int> own_ports() {
    std::set<int> ports;
    for (const auto& entry : std::filesystem::directory_iterator("/proc/self/fd")) {
        int fd = -1;
        try {
            fd = std::stoi(entry.path().filename().string());
        } catch (const std::exception&) {
            continue;
        }
        sockaddr_storage addr{};
        socklen_t len = sizeof addr;
        if (::getsockname(fd, reinterpret_cast<sockaddr*>(&addr), &len) != 0) continue;
        if (addr.ss_family != AF_INET) continue;
        ports.insert(ntohs(reinterpret_cast<const sockaddr_in*>(&addr)->sin_port));
    }
    return ports;
}

std::string field(const std::string& line, const std::string& name) {
    const auto at = line.find(" " + name + "=");
    if (at == std::string::npos) return {};
    const auto from = at + name.size() + 2;
    return line.substr(from, line.find(' ', from) - from);
}

// Ids of this process's connections whose script the server holds, unanswered: blocked
// (flags b) in EVALSHA - or EVAL, a script's first use by this process (SCRIPT LOAD and EVAL
// pipelined) - never run: CLIENT PAUSE WRITE postpones scripts.
std::vector<std::string> held_scripts(int port) {
    const std::set<int> mine = own_ports();
    std::vector<std::string> ids;
    std::istringstream lines(side_command(port, {"CLIENT", "LIST", "TYPE", "normal"}));
    for (std::string line; std::getline(lines, line);) {
        const std::string addr = field(line, "addr");
        const auto colon = addr.rfind(':');
        if (colon == std::string::npos || !mine.contains(std::stoi(addr.substr(colon + 1)))) {
            continue;
        }
        if (field(line, "flags").find('b') == std::string::npos) continue;
        if (const auto cmd = field(line, "cmd"); cmd != "evalsha" && cmd != "eval") continue;
        ids.push_back(line.substr(3, line.find(' ') - 3));  // "id=<n> ..."
    }
    return ids;
}

// The settle of this batch is next: the server holds it (a WRITE pause; the parent lifts
// it once this process is dead), and a thread kills the process once it is held.
std::atomic<bool> settle_sent{false};

void hold_settle_then_die(int port, std::size_t rows) {
    const std::string paused = side_command(port, {"CLIENT", "PAUSE", "5000", "WRITE"});
    if (paused != "OK") throw std::runtime_error("CLIENT PAUSE: " + paused);
    settle_sent = true;
    // Normally none: only the claim keeper's extension could be held already.
    const std::size_t before = held_scripts(port).size();
    std::thread([port, rows, before] {
        std::vector<std::string> held;
        try {
            const auto deadline = std::chrono::steady_clock::now() + 3s;
            while (std::chrono::steady_clock::now() < deadline) {
                held = held_scripts(port);
                if (held.size() > before) break;
                std::this_thread::sleep_for(1ms);
            }
            std::this_thread::sleep_for(30ms);
            held = held_scripts(port);  // what the kill lands on
        } catch (const std::exception& e) {
            std::cerr << "write_behind_child: CLIENT LIST: " << e.what() << "\n";
            held.clear();  // "held 0 ...": the parent sees nothing was seen held
        }
        std::string ids;
        for (const auto& id : held) ids += (ids.empty() ? "" : ",") + id;
        std::cout << "held " << held.size() << " " << before << " " << rows << " "
                  << (ids.empty() ? "-" : ids) << std::endl;
        die();
    }).detach();
}

int flush_main(int port, const std::string& queue, const std::string& dir, const std::string& mode,
               int claim_ttl_ms, bool fenced) {
    std::string point = mode;
    int at_batch = 0;
    if (const auto colon = mode.find(':'); colon != std::string::npos) {
        point = mode.substr(0, colon);
        at_batch = std::stoi(mode.substr(colon + 1));
    }
    auto redis = connect(port);
    FileDb db(dir, fenced);
    int batch_no = 0;
    larder::WriteBehind<std::string, larder::RedisBackend> wb(
        redis,
        [&](std::span<const Entry> batch) {
            ++batch_no;
            const bool dies_here = batch_no == at_batch;
            if (dies_here && point == "before") die();
            if (point == "stall") {
                std::cout << "writing " << hex(batch[0].key) << " " << batch[0].version
                          << std::endl;
                std::string go;
                std::getline(std::cin, go);
            }
            if (dies_here && point == "middle") {
                db.write(batch, 0, batch.size() / 2);
                die();
            }
            db.write(batch, 0, batch.size());
            if (dies_here && point == "after") die();
            if (dies_here && point == "settle") hold_settle_then_die(port, batch.size());
            if (point == "stall") std::cout << "wrote" << std::endl;
            return larder::BatchResult{};
        },
        options(queue, larder::Millis{claim_ttl_ms}));
    std::cout << "ready" << std::endl;
    for (;;) {
        (void)wb.flush();
        // The held settle came back (answered, or failed): the kill did not land on it.
        if (settle_sent.exchange(false)) std::cout << "settle returned" << std::endl;
        std::this_thread::sleep_for(1ms);
    }
}

int drain_main(int port, const std::string& queue, const std::string& dir, int timeout_ms,
               bool fenced) {
    auto redis = connect(port);
    FileDb db(dir, fenced);
    larder::WriteBehind<std::string, larder::RedisBackend> wb(
        redis,
        [&](std::span<const Entry> batch) {
            db.write(batch, 0, batch.size());
            return larder::BatchResult{};
        },
        options(queue, 30s));
    const auto deadline = std::chrono::steady_clock::now() + std::chrono::milliseconds(timeout_ms);
    larder::FlushReport total;
    for (;;) {
        total += wb.flush();
        if (wb.queue_stats().pending == 0) break;
        if (std::chrono::steady_clock::now() > deadline) {
            std::cerr << "write_behind_child drain: " << wb.queue_stats().pending << " keys left\n";
            return 1;
        }
        std::this_thread::sleep_for(5ms);
    }
    std::cout << "drained " << total.flushed << " " << total.requeued << std::endl;
    return 0;
}

int produce_main(int port, const std::string& queue, const std::string& tag,
                 int replica_timeout_ms) {
    // The WAIT must end before the connection's own deadline.
    auto redis = connect(port, larder::Millis{replica_timeout_ms} + 3s);
    auto o = options(queue, 30s);
    o.replicas = 1;
    o.replica_timeout = larder::Millis{replica_timeout_ms};
    larder::WriteBehind<std::string, larder::RedisBackend> wb(
        redis,
        [](std::span<const Entry>) -> larder::BatchResult {
            throw std::logic_error("the producer never flushes");
        },
        o);
    std::mt19937 rng(std::hash<std::string>{}(tag));
    std::cout << "ready" << std::endl;
    for (int i = 0; i < 100000; ++i) {
        const std::string key = "key" + std::to_string(rng() % 10);
        const std::string value = tag + "-" + std::to_string(i);
        std::cout << "putting " << key << " " << value << std::endl;
        try {
            wb.put(key, value);
            std::cout << "acked " << key << " " << value << std::endl;
        } catch (const std::exception& e) {
            std::string why = e.what();
            std::replace(why.begin(), why.end(), '\n', ' ');
            std::cout << "refused " << key << " " << value << " " << why << std::endl;
        }
        std::this_thread::sleep_for(1ms);
    }
    return 0;
}

int dump_main(const std::string& dir) {
    for (const auto& entry : std::filesystem::directory_iterator(dir)) {
        const std::string name = entry.path().filename().string();
        if (!name.starts_with("row-")) continue;
        const std::string content = read_file(entry.path());
        const auto nl = content.find('\n');
        std::cout << name.substr(4) << " " << content.substr(0, nl) << " "
                  << hex(content.substr(nl + 1)) << "\n";
    }
    std::cout << std::flush;
    return 0;
}

}  // namespace

int main(int argc, char** argv) {
    const std::vector<std::string> args(argv + 1, argv + argc);
    try {
        if (args.size() == 7 && args[0] == "flush") {
            return flush_main(std::stoi(args[1]), args[2], args[3], args[4], std::stoi(args[5]),
                              args[6] == "1");
        }
        if (args.size() == 6 && args[0] == "drain") {
            return drain_main(std::stoi(args[1]), args[2], args[3], std::stoi(args[4]),
                              args[5] == "1");
        }
        if (args.size() == 5 && args[0] == "produce") {
            return produce_main(std::stoi(args[1]), args[2], args[3], std::stoi(args[4]));
        }
        if (args.size() == 2 && args[0] == "dump") return dump_main(args[1]);
    } catch (const std::exception& e) {
        std::cerr << "write_behind_child: " << e.what() << "\n";
        return 3;
    }
    std::cerr << "usage: write_behind_child flush PORT QUEUE DIR MODE CLAIM_TTL_MS FENCED"
                 " | drain PORT QUEUE DIR TIMEOUT_MS FENCED"
                 " | produce PORT QUEUE TAG REPLICA_TIMEOUT_MS | dump DIR\n";
    return 2;
}
#else
int main() {
    std::cerr << "write_behind_child: built without hiredis\n";
    return 2;
}
#endif
