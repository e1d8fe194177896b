// reconnect_bench: what a reconnect of every L1's bus costs Redis. Prints a table.
//
// N OS processes (default 4), each a CacheAside on Redis behind an L1 (Near) whose hot set
// (default 2,000 keys) is warm, read it round-robin at a fixed pace. Then every bus
// subscription is killed at once (CLIENT KILL TYPE pubsub: what a Redis blip, a proxy
// restart or a failover does to every process together), and while the buses are away the
// parent changes some hot keys (default 50). The table counts the GETs Redis served in the
// seconds after the kill, against the same window before it: the reads the reconnect cost.
//
// Rows, one bus each:
//  - "RedisBus, replay_log 10000" (the default): the bus replays what it missed from the
//    log beside the channel, and each L1 keeps the rest of its hot set;
//  - "RedisBus, replay_log 0": the subscriber cannot know what it missed, so every L1
//    starts over and each process reloads its hot set from Redis;
//  - "RedisTrackingBus": Redis keeps no log of its invalidations, so it starts over too.
//
// While a bus is away its L1 serves nothing (that bound is what makes it safe), so every
// row pays for the reads made during the outage; only the rows that start over pay again
// for the hot set after it.
//
// Flags: --processes=4 --keys=2000 --interval-us=100 --changed=50 --window-ms=2000
#include <fcntl.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <optional>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

#include "larder/backend/redis.hpp"
#include "larder/larder.hpp"
#include "larder/near/near.hpp"
#include "larder/near/redis_bus.hpp"
#include "larder/near/redis_tracking_bus.hpp"
#include "support/machine.hpp"
#include "support/redis.hpp"

namespace {

using namespace std::chrono_literals;
using Clock = std::chrono::steady_clock;
using Cache = larder::CacheAside<std::string, larder::RedisBackend>;

struct Settings {
    int processes = 4;
    int keys = 2000;
    int interval_us = 100;
    int changed = 50;
    int window_ms = 2000;
};

enum class Mode { replay, no_log, tracking };

const char* name(Mode mode) {
    switch (mode) {
        case Mode::replay:
            return "RedisBus, replay_log 10000";
        case Mode::no_log:
            return "RedisBus, replay_log 0";
        case Mode::tracking:
            return "RedisTrackingBus";
    }
    return "?";
}

std::string key_name(int i) {
    return "hot:" + std::to_string(i);
}

/// A pipe the parent and one child talk over, one byte per message.
struct Channel {
    int to_child[2]{-1, -1};
    int to_parent[2]{-1, -1};
};

void send(int fd, char c) {
    if (::write(fd, &c, 1) != 1) throw std::runtime_error("reconnect_bench: pipe write failed");
}
char receive(int fd) {
    char c = 0;
    if (::read(fd, &c, 1) != 1) throw std::runtime_error("reconnect_bench: pipe read failed");
    return c;
}

/// The child: warms its hot set, says 'r', waits for 'g', reads round-robin until 's' (or
/// 60 s).
template <class Bus>
int run_child(larder::RedisBackend& redis, Bus& bus, const Settings& s, const Channel& ch) {
    Cache cache(redis);
    larder::Near near(cache, bus, {.ttl = 60s});
    if (!bus.wait_connected(10s)) return 3;
    auto loader = [](std::string_view key) {
        return [k = std::string(key)]() -> std::optional<std::string> { return "v:" + k; };
    };
    for (int i = 0; i < s.keys; ++i) near.get(key_name(i), loader(key_name(i)));
    send(ch.to_parent[1], 'r');
    if (receive(ch.to_child[0]) != 'g') return 4;
    ::fcntl(ch.to_child[0], F_SETFL, O_NONBLOCK);  // 's' is polled between reads

    const auto deadline = Clock::now() + 60s;
    auto next = Clock::now();
    for (int i = 0; Clock::now() < deadline; i = (i + 1) % s.keys) {
        near.get(key_name(i), loader(key_name(i)));
        if (i % 64 == 0) {
            char c = 0;
            if (::read(ch.to_child[0], &c, 1) == 1 && c == 's') break;
        }
        next += std::chrono::microseconds(s.interval_us);
        std::this_thread::sleep_until(next);
    }
    return 0;
}

larder::RedisBusOptions bus_options(Mode mode) {
    return {.replay_log = mode == Mode::replay ? 10'000U : 0U};
}

int child_main(Mode mode, int port, const Settings& s, const Channel& ch) {
    try {
        larder::RedisOptions options{.port = port, .command_timeout = 2s};
        larder::RedisBackend redis(options);
        if (mode == Mode::tracking) {
            larder::RedisTrackingBus bus(redis);
            return run_child(redis, bus, s, ch);
        }
        larder::RedisBus bus(options, bus_options(mode));
        return run_child(redis, bus, s, ch);
    } catch (const std::exception& e) {
        std::fprintf(stderr, "reconnect_bench child: %s\n", e.what());
        return 2;
    }
}

long long gets(const larder::test::RedisServer& server) {
    const auto stats = server.info_commandstats();
    const auto it = stats.find("get");
    return it == stats.end() ? 0 : it->second;
}

struct Row {
    long long before = 0;  // GETs in the window before the kill
    long long after = 0;   // GETs in the window after it
    long long peak = 0;    // GETs in the busiest 100 ms after it
};

Row run(Mode mode, const Settings& s) {
    larder::test::RedisServer server;
    std::vector<Channel> channels(s.processes);
    std::vector<pid_t> children;
    for (auto& ch : channels) {
        if (::pipe(ch.to_child) != 0 || ::pipe(ch.to_parent) != 0) {
            throw std::runtime_error("reconnect_bench: pipe failed");
        }
        const pid_t pid = ::fork();
        if (pid < 0) throw std::runtime_error("reconnect_bench: fork failed");
        if (pid == 0) {
            std::_Exit(child_main(mode, server.port(), s, ch));
        }
        children.push_back(pid);
    }
    for (auto& ch : channels) {
        if (receive(ch.to_parent[0]) != 'r') throw std::runtime_error("a child failed to warm");
    }
    // The parent writes as another service would: straight to Redis, then announces it on
    // the channel the RedisBus rows listen to (tracking hears the SET itself).
    larder::RedisOptions options{.port = server.port(), .command_timeout = 2s};
    larder::RedisBackend redis(options);
    Cache writer(redis);
    larder::RedisBus bus(options, bus_options(mode));
    larder::Near announcer(writer, bus);
    if (!bus.wait_connected(10s)) throw std::runtime_error("the parent's bus did not connect");

    for (auto& ch : channels) send(ch.to_child[1], 'g');
    std::this_thread::sleep_for(500ms);  // every child reads at its pace
    const auto window = std::chrono::milliseconds(s.window_ms);
    const long long start = gets(server);
    std::this_thread::sleep_for(window);
    Row row;
    row.before = gets(server) - start;

    const long long at_kill = gets(server);
    server.query({"CLIENT", "KILL", "TYPE", "pubsub"});
    for (int i = 0; i < s.changed; ++i) {
        announcer.set(key_name(i * (s.keys / s.changed)), std::string("changed"));
    }
    const auto end = Clock::now() + window;
    long long last = at_kill;
    while (Clock::now() < end) {
        std::this_thread::sleep_for(100ms);
        const long long now = gets(server);
        row.peak = std::max(row.peak, now - last);
        last = now;
    }
    row.after = last - at_kill;

    for (auto& ch : channels) send(ch.to_child[1], 's');
    for (pid_t pid : children) {
        int status = 0;
        ::waitpid(pid, &status, 0);
        if (!WIFEXITED(status) || WEXITSTATUS(status) != 0) {
            std::fprintf(stderr, "reconnect_bench: a child failed (status %d)\n", status);
        }
    }
    return row;
}

bool flag(const char* arg, const char* name, int& value) {
    const std::size_t n = std::strlen(name);
    if (std::strncmp(arg, name, n) != 0 || arg[n] != '=') return false;
    value = std::atoi(arg + n + 1);
    return true;
}

}  // namespace

int main(int argc, char** argv) {
    Settings s;
    for (int i = 1; i < argc; ++i) {
        if (!flag(argv[i], "--processes", s.processes) && !flag(argv[i], "--keys", s.keys) &&
            !flag(argv[i], "--interval-us", s.interval_us) &&
            !flag(argv[i], "--changed", s.changed) && !flag(argv[i], "--window-ms", s.window_ms)) {
            std::fprintf(stderr, "reconnect_bench: unknown flag %s\n", argv[i]);
            return 2;
        }
    }
    if (s.processes < 1 || s.keys < 1 || s.interval_us < 1 || s.changed < 1 || s.changed > s.keys ||
        s.window_ms < 100) {
        std::fprintf(stderr, "reconnect_bench: flags out of range\n");
        return 2;
    }
    std::printf(
        "reconnect_bench on %s: %d processes x %d hot keys, a read every %d us each, "
        "%d keys changed while the buses are away, %d ms windows\n",
        larder::bench::machine_description().c_str(), s.processes, s.keys, s.interval_us, s.changed,
        s.window_ms);
    std::printf("%-28s %14s %14s %18s\n", "bus", "GETs before", "GETs after", "peak GETs/100ms");
    for (Mode mode : {Mode::replay, Mode::no_log, Mode::tracking}) {
        const Row row = run(mode, s);
        std::printf("%-28s %14lld %14lld %18lld\n", name(mode), row.before, row.after, row.peak);
    }
    return 0;
}
