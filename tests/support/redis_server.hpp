// Throwaway redis-server instances for integration tests.
//
// Each RedisServer is a real redis-server child process listening on 127.0.0.1 only, on a port
// nobody else was using, with its own temporary directory for the log, the unix socket and (when
// persistence is on) the AOF files. The header deliberately has no dependency besides POSIX and
// the standard library (no hiredis), so it can be used by every test target, including the ones
// that exercise larder's own Redis clients.
//
// Lifetime and cleanup:
//   * The destructor SIGKILLs the server and deletes the temporary directory.
//   * Every child pid is also kept in a process-wide, async-signal-safe registry that an atexit
//     handler and a SIGTERM/SIGINT/SIGABRT handler (chaining to whatever handler was there
//     before) use to kill leftover servers. Test frameworks such as Catch2 swap their own
//     handlers in and out around each test case, so the handlers are re-installed whenever a
//     server is started. After the first such signal the handler passes later ones to the
//     default action, because chained handlers that restore each other could loop forever.
//     Signals that are ignored (SIG_IGN) when a server starts are left alone.
//   * The atexit handler also deletes the temporary directories, since std::exit() skips the
//     destructors of locals. After a fatal signal or a crash they stay behind in $TMPDIR (or
//     /tmp) as larder-redis-*, which is harmless.
//   * The child runs with PR_SET_PDEATHSIG=SIGKILL, so servers die even when the test process is
//     SIGKILLed or crashes. Linux delivers that signal when the *thread* that forked the child
//     exits, not the process: create servers from a long-lived thread (normally the test's main
//     thread), never from a short-lived worker thread, or the server dies with that thread.
//
// Threading: query()/command()/ping()/info_commandstats() may be called concurrently from any
// number of threads (each call uses its own connection). Lifecycle calls (kill, stop, restart,
// pause, resume, set_auth) must not run concurrently with anything else on the same object.
//
// Timeouts: start-up and restart wait at most RedisServerOptions::startup_timeout (10 s by
// default) for the server to answer PING and throw std::runtime_error with the tail of the
// server log otherwise. Each helper command is bounded by command_timeout (10 s by default),
// which must be raised (or the overload taking a timeout used) for e.g. DEBUG SLEEP 15.
#pragma once

#include <charconv>
#include <chrono>
#include <map>
#include <mutex>
#include <stdexcept>
#include <string>
#include <string_view>
#include <thread>
#include <vector>

#include "child_registry.hpp"  // beside this file: the lab and benchmarks include it by path
#include "posix_io.hpp"
#include "resp.hpp"

namespace larder::test {

// Every member has a default member initializer so that designated initializers such as
// RedisServer({.persistence = true}) compile without -Wmissing-field-initializers noise.
struct RedisServerOptions {
    // AOF with fsync on every write, so data survives kill() + restart().
    bool persistence = false;
    // Password of the default user; the helper's own client authenticates with it.
    std::string requirepass{};
    // Appended after the built-in arguments, so they can override them,
    // e.g. {"--maxmemory", "1mb", "--maxmemory-policy", "allkeys-lru"}.
    std::vector<std::string> extra_args{};
    // Written to <dir>/users.acl and passed as --aclfile when non-empty. Set auth_user and
    // auth_password to a user allowed to run the commands the tests send through command().
    std::string acl_file_contents{};
    // Written to <dir>/redis.conf and passed as the configuration file when non-empty
    // (a sentinel needs one it can rewrite: extra_args {"--sentinel"}).
    std::string config_file_contents{};
    // Also listen on <dir>/redis.sock (mode 700); see RedisServer::unix_socket_path().
    bool unix_socket = false;
    // Credentials of the helper's own client when an ACL user is needed (AUTH user password).
    std::string auth_user{};
    std::string auth_password{};
    // 0 picks a free port; a fixed port is retried until startup_timeout while it is busy.
    int port = 0;
    // Empty uses LARDER_TEST_REDIS_SERVER when defined, else "redis-server" from PATH.
    std::string executable{};
    std::chrono::milliseconds startup_timeout{10000};
    std::chrono::milliseconds command_timeout{10000};
};

namespace detail {

inline std::string default_redis_executable() {
#if defined(LARDER_TEST_REDIS_SERVER)
    return LARDER_TEST_REDIS_SERVER;
#else
    return "redis-server";
#endif
}

// Major version of a redis-server binary (0 if unknown); some arguments only exist in 7+.
inline int redis_major_version(const std::string& exe) {
    static std::mutex mutex;
    static std::map<std::string, int> cache;
    const std::lock_guard<std::mutex> lock(mutex);
    if (const auto it = cache.find(exe); it != cache.end()) {
        return it->second;
    }
    int pipe_fds[2];
    if (::pipe2(pipe_fds, O_CLOEXEC) != 0) {
        return 0;
    }
    UniqueFd read_end(pipe_fds[0]);
    pid_t pid = -1;
    {
        UniqueFd write_end(pipe_fds[1]);
        pid = spawn({exe, "--version"}, write_end.get(), "");
    }
    std::string output;
    char chunk[512];
    const Clock::time_point deadline = Clock::now() + std::chrono::seconds(5);
    while (wait_for_fd(read_end.get(), POLLIN, deadline)) {
        const ssize_t n = ::read(read_end.get(), chunk, sizeof chunk);
        if (n > 0) {
            output.append(chunk, static_cast<std::size_t>(n));
        } else if (n == 0 || errno != EINTR) {
            break;
        }
    }
    ::kill(pid, SIGKILL);
    reap(pid);
    int major = 0;
    if (const std::size_t at = output.find("v="); at != std::string::npos) {
        const char* begin = output.data() + at + 2;
        std::from_chars(begin, output.data() + output.size(), major);
    }
    cache[exe] = major;
    return major;
}

}  // namespace detail

class RedisServer {
public:
    explicit RedisServer(RedisServerOptions options = {})
        : options_(std::move(options)),
          auth_user_(options_.auth_user),
          auth_password_(options_.auth_password.empty() && options_.auth_user.empty()
                             ? options_.requirepass
                             : options_.auth_password) {
        executable_ = detail::find_executable(
            options_.executable.empty() ? detail::default_redis_executable() : options_.executable);
        major_version_ = detail::redis_major_version(executable_);
        detail::ensure_cleanup_installed();
        dir_ = detail::make_temp_dir();
        try {
            detail::track_temp_dir(this, dir_);
            if (options_.unix_socket) {
                unix_socket_path_ = dir_ + "/redis.sock";
            }
            if (!options_.acl_file_contents.empty()) {
                std::ofstream acl(dir_ + "/users.acl", std::ios::binary);
                acl << options_.acl_file_contents;
                if (!acl.flush()) {
                    throw std::runtime_error("cannot write " + dir_ + "/users.acl");
                }
            }
            if (!options_.config_file_contents.empty()) {
                std::ofstream conf(dir_ + "/redis.conf", std::ios::binary);
                conf << options_.config_file_contents;
                if (!conf.flush()) {
                    throw std::runtime_error("cannot write " + dir_ + "/redis.conf");
                }
            }
            start_with_retries(options_.port);
        } catch (...) {
            detail::untrack_temp_dir(this);
            std::error_code ec;
            std::filesystem::remove_all(dir_, ec);
            throw;
        }
    }

    ~RedisServer() {
        kill();
        detail::untrack_temp_dir(this);
        std::error_code ec;
        std::filesystem::remove_all(dir_, ec);
    }

    RedisServer(const RedisServer&) = delete;
    RedisServer& operator=(const RedisServer&) = delete;
    RedisServer(RedisServer&&) = delete;
    RedisServer& operator=(RedisServer&&) = delete;

    int port() const noexcept { return port_; }
    const std::string& host() const noexcept { return host_; }
    std::string url() const { return "redis://" + host_ + ":" + std::to_string(port_); }
    // Empty unless RedisServerOptions::unix_socket was set.
    const std::string& unix_socket_path() const noexcept { return unix_socket_path_; }
    const std::string& dir() const noexcept { return dir_; }
    // pid of the current server process, -1 after kill()/stop().
    pid_t pid() const noexcept { return pid_; }
    const RedisServerOptions& options() const noexcept { return options_; }
    std::string log_path() const { return dir_ + "/redis.log"; }

    std::string log_tail(std::size_t max_bytes = 4096) const {
        std::string text = detail::read_file_from(log_path());
        const std::string err = detail::read_file_from(stderr_path());
        if (!err.empty()) {
            text += "\n[stderr]\n" + err;
        }
        return detail::tail(text, max_bytes);
    }

    // False once the process has exited for any reason (kill(), SHUTDOWN sent by a test, crash).
    bool is_running() const noexcept { return pid_ > 0 && !detail::child_exited(pid_); }

    // SIGKILL: no shutdown work at all, like a crash or an OOM kill.
    void kill() noexcept {
        if (pid_ <= 0) {
            return;
        }
        ::kill(pid_, SIGKILL);
        detail::wait_until_exited(pid_);
        detail::reap(pid_);
        pid_ = -1;
        paused_ = false;
    }

    // SIGTERM, which redis handles as a graceful SHUTDOWN; escalates to SIGKILL after 10 s.
    void stop() noexcept {
        if (pid_ <= 0) {
            return;
        }
        if (paused_) {
            resume();
        }
        ::kill(pid_, SIGTERM);
        const auto deadline = detail::Clock::now() + std::chrono::seconds(10);
        while (!detail::child_exited(pid_) && detail::Clock::now() < deadline) {
            std::this_thread::sleep_for(std::chrono::milliseconds(2));
        }
        kill();
    }

    // Starts a new process on the same port and directory (so AOF data survives with
    // persistence on). Stops the current process first if it is still running, and waits up to
    // startup_timeout for the port to become free.
    void restart() {
        stop();
        start_with_retries(port_);
    }

    // SIGSTOP/SIGCONT: the kernel still accepts connections, but nothing is answered - a hung
    // server rather than a dead one.
    void pause() {
        if (pid_ > 0 && !paused_) {
            ::kill(pid_, SIGSTOP);
            paused_ = true;
        }
    }

    void resume() {
        if (pid_ > 0 && paused_) {
            ::kill(pid_, SIGCONT);
            paused_ = false;
        }
    }

    // Changes the credentials of the helper's own client, e.g. after CONFIG SET requirepass.
    // An empty user means AUTH <password>; an empty password disables AUTH.
    void set_auth(std::string user, std::string password) {
        auth_user_ = std::move(user);
        auth_password_ = std::move(password);
    }

    // Sends one command on a fresh connection. Throws std::runtime_error on connection
    // problems, timeouts or a rejected AUTH; Redis error replies are returned, not thrown.
    RespReply query(const std::vector<std::string>& args) const {
        return query(args, options_.command_timeout);
    }

    RespReply query(const std::vector<std::string>& args, std::chrono::milliseconds timeout) const {
        if (args.empty()) {
            throw std::invalid_argument("RedisServer::query needs a command");
        }
        std::vector<std::vector<std::string>> commands;
        const bool authenticate = !auth_password_.empty();
        if (authenticate) {
            if (auth_user_.empty()) {
                commands.push_back({"AUTH", auth_password_});
            } else {
                commands.push_back({"AUTH", auth_user_, auth_password_});
            }
        }
        commands.push_back(args);
        std::vector<RespReply> replies;
        try {
            replies = detail::execute_pipeline(port_, commands, timeout);
        } catch (const std::exception& e) {
            throw std::runtime_error("redis " + url() + " " + args.front() + ": " + e.what());
        }
        if (authenticate && replies.front().is_error()) {
            throw std::runtime_error("redis " + url() + " AUTH rejected: " + replies.front().text);
        }
        return std::move(replies.back());
    }

    // The reply rendered as text: status as is, errors as "-ERR ...", integers in decimal, bulk
    // strings as raw bytes, nil as "(nil)", arrays newline-joined.
    std::string command(const std::vector<std::string>& args) const { return query(args).render(); }

    std::string command(const std::vector<std::string>& args,
                        std::chrono::milliseconds timeout) const {
        return query(args, timeout).render();
    }

    bool ping() const noexcept {
        try {
            const RespReply reply = query({"PING"}, std::chrono::milliseconds(1000));
            return reply.type == RespReply::Type::status && reply.text == "PONG";
        } catch (...) {
            return false;
        }
    }

    // Command name -> number of calls since start (or the last reset_stats()). Subcommands are
    // reported by Redis 7 as e.g. "config|set". The helper's own AUTH and PING show up too.
    std::map<std::string, long long> info_commandstats() const {
        const RespReply reply = query({"INFO", "commandstats"});
        if (reply.is_error()) {
            throw std::runtime_error("INFO commandstats failed: " + reply.text);
        }
        std::map<std::string, long long> stats;
        const std::string_view prefix = "cmdstat_";
        std::size_t start = 0;
        const std::string& text = reply.text;
        while (start < text.size()) {
            std::size_t end = text.find('\n', start);
            if (end == std::string::npos) {
                end = text.size();
            }
            std::string_view line(text.data() + start, end - start);
            start = end + 1;
            if (!line.empty() && line.back() == '\r') {
                line.remove_suffix(1);
            }
            if (line.substr(0, prefix.size()) != prefix) {
                continue;
            }
            const std::size_t colon = line.find(':');
            const std::size_t calls = line.find("calls=");
            if (colon == std::string_view::npos || calls == std::string_view::npos) {
                continue;
            }
            long long count = 0;
            const char* first = line.data() + calls + 6;
            std::from_chars(first, line.data() + line.size(), count);
            stats[std::string(line.substr(prefix.size(), colon - prefix.size()))] = count;
        }
        return stats;
    }

    void reset_stats() const {
        const RespReply reply = query({"CONFIG", "RESETSTAT"});
        if (reply.is_error()) {
            throw std::runtime_error("CONFIG RESETSTAT failed: " + reply.text);
        }
    }

private:
    enum class StartResult { ready, port_busy };

    std::string stderr_path() const { return dir_ + "/redis.stderr"; }

    std::string describe(const std::string& what) const {
        return "RedisServer (" + executable_ + ", dir " + dir_ + "): " + what +
               "\n--- log tail ---\n" + log_tail();
    }

    std::vector<std::string> build_argv(int port) const {
        // clang-format off
        std::vector<std::string> argv = {
            executable_,
            "--bind", host_,
            "--port", std::to_string(port),
            "--dir", dir_,
            "--save", "",
            "--daemonize", "no",
            "--protected-mode", "no",
            "--logfile", log_path(),
        };
        // clang-format on
        if (!options_.config_file_contents.empty()) {
            argv.insert(argv.begin() + 1, dir_ + "/redis.conf");
        }
        if (options_.persistence) {
            argv.insert(argv.end(), {"--appendonly", "yes", "--appendfsync", "always"});
        } else {
            argv.insert(argv.end(), {"--appendonly", "no"});
        }
        if (major_version_ >= 7) {
            // Redis 7 refuses DEBUG by default; tests use DEBUG SLEEP and friends.
            argv.insert(argv.end(), {"--enable-debug-command", "local"});
        }
        if (!unix_socket_path_.empty()) {
            argv.insert(argv.end(), {"--unixsocket", unix_socket_path_, "--unixsocketperm", "700"});
        }
        if (!options_.requirepass.empty()) {
            argv.insert(argv.end(), {"--requirepass", options_.requirepass});
        }
        if (!options_.acl_file_contents.empty()) {
            argv.insert(argv.end(), {"--aclfile", dir_ + "/users.acl"});
        }
        argv.insert(argv.end(), options_.extra_args.begin(), options_.extra_args.end());
        return argv;
    }

    // A bare PING could be answered by some other server that won the race for the port, so
    // readiness also checks that the answering process is ours.
    bool answers_as(pid_t pid) const {
        try {
            const RespReply pong = query({"PING"}, std::chrono::milliseconds(1000));
            if (pong.type != RespReply::Type::status || pong.text != "PONG") {
                return false;  // e.g. -LOADING while the AOF is replayed.
            }
            const RespReply info = query({"INFO", "server"}, std::chrono::milliseconds(1000));
            if (info.is_error()) {
                return true;  // An ACL user without INFO; PING from a live child will do.
            }
            const std::string key = "process_id:";
            const std::size_t at = info.text.find(key);
            if (at == std::string::npos) {
                return true;
            }
            long long reported = 0;
            std::from_chars(info.text.data() + at + key.size(), info.text.data() + info.text.size(),
                            reported);
            return reported == pid;
        } catch (const std::exception&) {
            return false;
        }
    }

    StartResult start_once(int port, detail::Clock::time_point deadline) {
        detail::ensure_cleanup_installed();
        const std::uintmax_t log_offset = detail::file_size_or_zero(log_path());
        const std::uintmax_t err_offset = detail::file_size_or_zero(stderr_path());
        const pid_t child = detail::spawn(build_argv(port), -1, stderr_path());
        port_ = port;
        auto port_was_busy = [&] {
            const std::string output = detail::read_file_from(log_path(), log_offset) +
                                       detail::read_file_from(stderr_path(), err_offset);
            return output.find("Address already in use") != std::string::npos;
        };
        while (true) {
            if (detail::child_exited(child)) {
                detail::reap(child);
                if (port_was_busy()) {
                    return StartResult::port_busy;
                }
                throw std::runtime_error(describe("redis-server exited during start-up"));
            }
            if (answers_as(child)) {
                pid_ = child;
                return StartResult::ready;
            }
            if (detail::Clock::now() >= deadline) {
                ::kill(child, SIGKILL);
                detail::wait_until_exited(child);
                detail::reap(child);
                if (port_was_busy()) {
                    return StartResult::port_busy;
                }
                throw std::runtime_error(describe(
                    "no PONG within " + std::to_string(options_.startup_timeout.count()) + " ms"));
            }
            std::this_thread::sleep_for(std::chrono::milliseconds(10));
        }
    }

    // A free port can be taken by someone else before redis-server binds it; pick another one
    // (or, for a fixed port, wait for it to be free again) instead of failing the test.
    void start_with_retries(int fixed_port) {
        const auto deadline = detail::Clock::now() + options_.startup_timeout;
        constexpr int max_port_races = 5;
        for (int attempt = 1;; ++attempt) {
            int port = fixed_port;
            if (fixed_port != 0) {
                wait_until_bindable(fixed_port, deadline);
            } else {
                port = detail::pick_free_loopback_port();
            }
            if (start_once(port, deadline) == StartResult::ready) {
                return;
            }
            if (detail::Clock::now() >= deadline ||
                (fixed_port == 0 && attempt >= max_port_races)) {
                throw std::runtime_error(describe("could not bind port " + std::to_string(port)));
            }
        }
    }

    void wait_until_bindable(int port, detail::Clock::time_point deadline) const {
        while (!detail::loopback_port_bindable(port)) {
            if (detail::Clock::now() >= deadline) {
                throw std::runtime_error(
                    describe("could not bind port " + std::to_string(port) + ": still in use"));
            }
            std::this_thread::sleep_for(std::chrono::milliseconds(20));
        }
    }

    RedisServerOptions options_;
    std::string auth_user_;
    std::string auth_password_;
    std::string executable_;
    int major_version_ = 0;
    std::string host_ = "127.0.0.1";
    std::string dir_;
    std::string unix_socket_path_;
    int port_ = 0;
    pid_t pid_ = -1;
    bool paused_ = false;
};

}  // namespace larder::test
