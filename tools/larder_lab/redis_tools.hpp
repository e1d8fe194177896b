// larder-lab's Redis helpers: a private redis-server for --backend redis, and removing a
// run's keys from a server given by URL. Built only with hiredis (LARDER_LAB_HAVE_REDIS).
#pragma once

#include <larder/backend/redis/connection.hpp>
#include <larder/backend/redis/options.hpp>

#include <arpa/inet.h>
#include <fcntl.h>
#include <hiredis/hiredis.h>
#include <netinet/in.h>
#include <signal.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <memory>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "lab.hpp"

namespace lab {

namespace redis_detail {

struct ContextDeleter {
    void operator()(redisContext* c) const { redisFree(c); }
};
using Context = std::unique_ptr<redisContext, ContextDeleter>;
struct ReplyDeleter {
    void operator()(redisReply* r) const { freeReplyObject(r); }
};
using Reply = std::unique_ptr<redisReply, ReplyDeleter>;

inline Reply command(redisContext* c, const std::vector<std::string>& args) {
    std::vector<const char*> argv;
    std::vector<std::size_t> lens;
    for (const auto& a : args) {
        argv.push_back(a.data());
        lens.push_back(a.size());
    }
    return Reply(static_cast<redisReply*>(
        redisCommandArgv(c, static_cast<int>(argv.size()), argv.data(), lens.data())));
}

/// A connection as RedisOptions describes it (address, AUTH, SELECT); nullptr on failure,
/// with the reason in *error.
inline Context connect(const larder::RedisOptions& o, Millis timeout,
                       std::string* error = nullptr) {
    auto fail = [&](std::string why) -> Context {
        if (error) *error = std::move(why);
        return nullptr;
    };
    const timeval tv{static_cast<time_t>(timeout.count() / 1000),
                     static_cast<suseconds_t>((timeout.count() % 1000) * 1000)};
    Context c(o.unix_socket.empty() ? redisConnectWithTimeout(o.host.c_str(), o.port, tv)
                                    : redisConnectUnixWithTimeout(o.unix_socket.c_str(), tv));
    if (!c) return fail("out of memory");
    if (c->err) return fail(c->errstr);
    redisSetTimeout(c.get(), tv);
    auto answer = [&](const Reply& r) -> std::string {
        if (!r) return c->errstr[0] ? c->errstr : "no reply";
        if (r->type == REDIS_REPLY_ERROR) {
            return larder::redis_detail::without({r->str, r->len}, o.password);
        }
        return {};
    };
    // As RedisBackend does: a user without a password still authenticates (a nopass user).
    if (!o.user.empty() || !o.password.empty()) {
        auto r = o.user.empty() ? command(c.get(), {"AUTH", o.password})
                                : command(c.get(), {"AUTH", o.user, o.password});
        if (auto why = answer(r); !why.empty()) return fail("AUTH: " + why);
    }
    if (o.db != 0) {
        auto r = command(c.get(), {"SELECT", std::to_string(o.db)});
        if (auto why = answer(r); !why.empty()) return fail("SELECT: " + why);
    }
    auto r = command(c.get(), {"PING"});
    if (auto why = answer(r); !why.empty()) return fail("PING: " + why);
    return c;
}

inline int free_loopback_port() {
    const int fd = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0) return 0;
    sockaddr_in a{};
    a.sin_family = AF_INET;
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    socklen_t len = sizeof a;
    int port = 0;
    if (::bind(fd, reinterpret_cast<sockaddr*>(&a), sizeof a) == 0 &&
        ::getsockname(fd, reinterpret_cast<sockaddr*>(&a), &len) == 0) {
        port = ntohs(a.sin_port);
    }
    ::close(fd);
    return port;
}

inline std::string find_in_path(const std::string& name) {
    if (name.find('/') != std::string::npos) return name;
    const char* path = std::getenv("PATH");
    std::stringstream dirs(path ? path : "/usr/local/bin:/usr/bin:/bin");
    for (std::string dir; std::getline(dirs, dir, ':');) {
        const std::string candidate = (dir.empty() ? "." : dir) + "/" + name;
        if (::access(candidate.c_str(), X_OK) == 0) return candidate;
    }
    return {};
}

}  // namespace redis_detail

/// A redis-server of our own on a free loopback port, in a temporary directory, without
/// persistence. It runs in its own process group (so a Ctrl-C reaches only the lab, which
/// then stops it) and dies with the lab even if the lab is killed (PR_SET_PDEATHSIG).
class PrivateRedis {
public:
    PrivateRedis() {
        const std::string exe = redis_detail::find_in_path("redis-server");
        if (exe.empty()) {
            throw UsageError(
                "--backend redis: redis-server is not on PATH (install it, e.g. "
                "apt-get install redis-server, or pass --backend redis://HOST:PORT)");
        }
        char pattern[] = "/tmp/larder-lab-redis-XXXXXX";
        if (!::mkdtemp(pattern)) throw UsageError("--backend redis: cannot create a temp dir");
        dir_ = pattern;
        std::string last_log;
        for (int attempt = 0; attempt < 3; ++attempt) {
            port_ = redis_detail::free_loopback_port();
            if (port_ == 0) continue;
            if (start(exe)) return;
            last_log = log_tail();
        }
        std::filesystem::remove_all(dir_);
        throw UsageError("--backend redis: redis-server did not start:\n" + last_log);
    }

    PrivateRedis(const PrivateRedis&) = delete;
    PrivateRedis& operator=(const PrivateRedis&) = delete;

    ~PrivateRedis() {
        stop();
        std::error_code ec;
        std::filesystem::remove_all(dir_, ec);
    }

    [[nodiscard]] std::string url() const { return "redis://127.0.0.1:" + std::to_string(port_); }

private:
    bool start(const std::string& exe) {
        const std::string log = (dir_ / "redis.log").string();
        std::vector<std::string> args{exe,
                                      "--port",
                                      std::to_string(port_),
                                      "--bind",
                                      "127.0.0.1",
                                      "--save",
                                      "",
                                      "--appendonly",
                                      "no",
                                      "--dir",
                                      dir_.string(),
                                      "--daemonize",
                                      "no",
                                      "--logfile",
                                      log,
                                      "--protected-mode",
                                      "yes"};
        std::vector<char*> argv;
        for (auto& a : args) argv.push_back(a.data());
        argv.push_back(nullptr);
        const pid_t parent = ::getpid();
        const pid_t pid = ::fork();
        if (pid < 0) return false;
        if (pid == 0) {
            // Only async-signal-safe calls between fork and exec.
            ::setpgid(0, 0);
            ::prctl(PR_SET_PDEATHSIG, SIGKILL);
            if (::getppid() != parent) ::_exit(1);
            const int devnull = ::open("/dev/null", O_RDWR);
            if (devnull >= 0) {
                ::dup2(devnull, 0);
                ::dup2(devnull, 1);
                ::dup2(devnull, 2);
            }
            ::execv(argv[0], argv.data());
            ::_exit(127);
        }
        pid_ = pid;
        larder::RedisOptions o;
        o.port = port_;
        const auto deadline = Clock::now() + std::chrono::seconds(10);
        while (Clock::now() < deadline) {
            int status = 0;
            if (::waitpid(pid_, &status, WNOHANG) == pid_) {
                pid_ = -1;
                return false;
            }
            if (redis_detail::connect(o, Millis{200})) return true;
            std::this_thread::sleep_for(Millis{20});
        }
        stop();
        return false;
    }

    void stop() {
        if (pid_ <= 0) return;
        ::kill(pid_, SIGTERM);
        const auto deadline = Clock::now() + std::chrono::seconds(3);
        int status = 0;
        while (::waitpid(pid_, &status, WNOHANG) == 0) {
            if (Clock::now() > deadline) {
                ::kill(pid_, SIGKILL);
                ::waitpid(pid_, &status, 0);
                break;
            }
            std::this_thread::sleep_for(Millis{10});
        }
        pid_ = -1;
    }

    std::string log_tail() const {
        std::ifstream in(dir_ / "redis.log");
        std::vector<std::string> lines;
        for (std::string line; std::getline(in, line);) lines.push_back(line);
        std::string out;
        for (std::size_t i = lines.size() > 8 ? lines.size() - 8 : 0; i < lines.size(); ++i) {
            out += "  " + lines[i] + "\n";
        }
        return out.empty() ? "  (no log)\n" : out;
    }

    std::filesystem::path dir_;
    int port_ = 0;
    pid_t pid_ = -1;
};

/// Checks that the server at `url` answers, before any run starts.
inline void check_redis(const std::string& url) {
    const auto o = larder::RedisOptions::from_url(url);
    std::string why;
    if (!redis_detail::connect(o, Millis{1000}, &why)) {
        const std::string where =
            o.unix_socket.empty() ? o.host + ":" + std::to_string(o.port) : o.unix_socket;
        throw UsageError("--backend: no usable Redis at " + where + " (" + why + ")");
    }
}

/// The server's version (INFO server's redis_version), or "unknown".
inline std::string redis_version(const std::string& url) {
    auto c = redis_detail::connect(larder::RedisOptions::from_url(url), Millis{1000});
    if (!c) return "unknown";
    const auto info = redis_detail::command(c.get(), {"INFO", "server"});
    if (!info || info->type != REDIS_REPLY_STRING) return "unknown";
    const std::string_view text(info->str, info->len);
    constexpr std::string_view field = "redis_version:";
    const auto at = text.find(field);
    if (at == std::string_view::npos) return "unknown";
    const auto from = at + field.size();
    return std::string(text.substr(from, text.find_first_of("\r\n", from) - from));
}

/// Removes every key under `prefix` (a run's keys on a shared server). Bounded: at most
/// 10,000 SCAN rounds.
inline void delete_keys(const std::string& url, const std::string& prefix) {
    const auto o = larder::RedisOptions::from_url(url);
    auto c = redis_detail::connect(o, Millis{1000});
    if (!c) return;
    std::string cursor = "0";
    for (int round = 0; round < 10'000; ++round) {
        auto r = redis_detail::command(c.get(),
                                       {"SCAN", cursor, "MATCH", prefix + "*", "COUNT", "1000"});
        if (!r || r->type != REDIS_REPLY_ARRAY || r->elements != 2) return;
        cursor.assign(r->element[0]->str, r->element[0]->len);
        const redisReply* keys = r->element[1];
        if (keys->elements > 0) {
            std::vector<std::string> del{"UNLINK"};
            for (std::size_t i = 0; i < keys->elements; ++i) {
                del.emplace_back(keys->element[i]->str, keys->element[i]->len);
            }
            (void)redis_detail::command(c.get(), del);
        }
        if (cursor == "0") return;
    }
}

}  // namespace lab
