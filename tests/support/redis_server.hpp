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

#include <atomic>
#include <cerrno>
#include <charconv>
#include <chrono>
#include <climits>
#include <csignal>
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <map>
#include <mutex>
#include <stdexcept>
#include <string>
#include <string_view>
#include <system_error>
#include <thread>
#include <utility>
#include <vector>

#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <poll.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <unistd.h>

// Read before fork(): the child may only call async-signal-safe functions, which rules out
// execvp()/execv() and their hidden environment lookups.
extern "C" char** environ;

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

// A decoded RESP2/RESP3 reply. RESP3 maps keep keys and values interleaved in `elements`; sets
// and pushes become arrays, verbatim strings become bulk strings without their format prefix.
struct RespReply {
    enum class Type {
        status,
        error,
        integer,
        bulk,
        nil,
        array,
        map,
        boolean,
        double_value,
        big_number
    };

    Type type = Type::nil;
    std::string text{};
    long long integer = 0;
    std::vector<RespReply> elements{};

    bool is_error() const noexcept { return type == Type::error; }

    // Rendering close to redis-cli's raw mode so tests can compare against plain strings.
    std::string render() const {
        switch (type) {
            case Type::status:
            case Type::bulk:
            case Type::double_value:
            case Type::big_number:
                return text;
            case Type::error:
                return "-" + text;
            case Type::integer:
                return std::to_string(integer);
            case Type::boolean:
                return integer != 0 ? "true" : "false";
            case Type::nil:
                return "(nil)";
            case Type::array:
            case Type::map:
                break;
        }
        std::string out;
        for (std::size_t i = 0; i < elements.size(); ++i) {
            if (i != 0) {
                out += '\n';
            }
            out += elements[i].render();
        }
        return out;
    }
};

namespace detail {

using Clock = std::chrono::steady_clock;

inline std::string errno_message(int err) {
    // std::strerror is not thread-safe; the system category is.
    return std::system_category().message(err);
}

class UniqueFd {
public:
    UniqueFd() noexcept = default;
    explicit UniqueFd(int fd) noexcept : fd_(fd) {}
    UniqueFd(UniqueFd&& other) noexcept : fd_(std::exchange(other.fd_, -1)) {}
    UniqueFd& operator=(UniqueFd&& other) noexcept {
        if (this != &other) {
            reset(std::exchange(other.fd_, -1));
        }
        return *this;
    }
    UniqueFd(const UniqueFd&) = delete;
    UniqueFd& operator=(const UniqueFd&) = delete;
    ~UniqueFd() { reset(); }

    int get() const noexcept { return fd_; }
    explicit operator bool() const noexcept { return fd_ >= 0; }
    int release() noexcept { return std::exchange(fd_, -1); }
    void reset(int fd = -1) noexcept {
        if (fd_ >= 0) {
            ::close(fd_);
        }
        fd_ = fd;
    }

private:
    int fd_ = -1;
};

inline int remaining_ms(Clock::time_point deadline) {
    const auto left = std::chrono::ceil<std::chrono::milliseconds>(deadline - Clock::now()).count();
    if (left <= 0) {
        return 0;
    }
    return left > INT_MAX ? INT_MAX : static_cast<int>(left);
}

// True when `fd` reported any of `events` (or an error/hang-up) before the deadline.
inline bool wait_for_fd(int fd, short events, Clock::time_point deadline) {
    for (;;) {
        pollfd pfd{fd, events, 0};
        const int rc = ::poll(&pfd, 1, remaining_ms(deadline));
        if (rc > 0) {
            return true;
        }
        if (rc == 0) {
            return false;
        }
        if (errno != EINTR) {
            throw std::runtime_error("poll failed: " + errno_message(errno));
        }
    }
}

inline sockaddr_in loopback_address(int port) {
    sockaddr_in addr{};
    addr.sin_family = AF_INET;
    addr.sin_port = htons(static_cast<std::uint16_t>(port));
    addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    return addr;
}

inline UniqueFd connect_loopback(int port, Clock::time_point deadline) {
    UniqueFd fd(::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0));
    if (!fd) {
        throw std::runtime_error("socket failed: " + errno_message(errno));
    }
    const sockaddr_in addr = loopback_address(port);
    const std::string where = "127.0.0.1:" + std::to_string(port);
    if (::connect(fd.get(), reinterpret_cast<const sockaddr*>(&addr), sizeof addr) != 0) {
        if (errno != EINPROGRESS) {
            throw std::runtime_error("connect " + where + ": " + errno_message(errno));
        }
        if (!wait_for_fd(fd.get(), POLLOUT, deadline)) {
            throw std::runtime_error("connect " + where + ": timed out");
        }
        int err = 0;
        socklen_t len = sizeof err;
        if (::getsockopt(fd.get(), SOL_SOCKET, SO_ERROR, &err, &len) != 0) {
            err = errno;
        }
        if (err != 0) {
            throw std::runtime_error("connect " + where + ": " + errno_message(err));
        }
    }
    return fd;
}

inline void send_all(int fd, std::string_view data, Clock::time_point deadline) {
    while (!data.empty()) {
        // MSG_NOSIGNAL: a server killed mid-test must surface as an exception, not SIGPIPE.
        const ssize_t n = ::send(fd, data.data(), data.size(), MSG_NOSIGNAL);
        if (n > 0) {
            data.remove_prefix(static_cast<std::size_t>(n));
            continue;
        }
        if (n < 0 && errno == EINTR) {
            continue;
        }
        if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
            if (!wait_for_fd(fd, POLLOUT, deadline)) {
                throw std::runtime_error("send timed out");
            }
            continue;
        }
        throw std::runtime_error("send failed: " + errno_message(errno));
    }
}

inline void append_command(std::string& out, const std::vector<std::string>& args) {
    // Always an array of bulk strings: inline commands would mangle binary payloads.
    out += '*';
    out += std::to_string(args.size());
    out += "\r\n";
    for (const std::string& arg : args) {
        out += '$';
        out += std::to_string(arg.size());
        out += "\r\n";
        out += arg;
        out += "\r\n";
    }
}

class RespReader {
public:
    RespReader(int fd, Clock::time_point deadline) : fd_(fd), deadline_(deadline) {}

    RespReply read() { return read_value(0); }

private:
    static constexpr int max_depth = 64;

    void fill() {
        char chunk[16384];
        for (;;) {
            const ssize_t n = ::recv(fd_, chunk, sizeof chunk, 0);
            if (n > 0) {
                buffer_.append(chunk, static_cast<std::size_t>(n));
                return;
            }
            if (n == 0) {
                throw std::runtime_error("connection closed by server");
            }
            if (errno == EINTR) {
                continue;
            }
            if (errno != EAGAIN && errno != EWOULDBLOCK) {
                throw std::runtime_error("recv failed: " + errno_message(errno));
            }
            if (!wait_for_fd(fd_, POLLIN, deadline_)) {
                throw std::runtime_error("timed out waiting for reply");
            }
        }
    }

    std::string line() {
        for (;;) {
            const std::size_t end = buffer_.find("\r\n", pos_);
            if (end != std::string::npos) {
                std::string out = buffer_.substr(pos_, end - pos_);
                pos_ = end + 2;
                return out;
            }
            compact();
            fill();
        }
    }

    std::string exact(std::size_t n) {
        while (buffer_.size() - pos_ < n + 2) {
            compact();
            fill();
        }
        std::string out = buffer_.substr(pos_, n);
        if (buffer_.compare(pos_ + n, 2, "\r\n") != 0) {
            throw std::runtime_error("malformed RESP bulk terminator");
        }
        pos_ += n + 2;
        return out;
    }

    void compact() {
        buffer_.erase(0, pos_);
        pos_ = 0;
    }

    static long long parse_integer(const std::string& s) {
        long long value = 0;
        const auto [end, ec] = std::from_chars(s.data(), s.data() + s.size(), value);
        if (ec != std::errc{} || end != s.data() + s.size()) {
            throw std::runtime_error("malformed RESP integer: " + s);
        }
        return value;
    }

    RespReply read_value(int depth) {
        if (depth > max_depth) {
            throw std::runtime_error("RESP reply nested too deeply");
        }
        const std::string header = line();
        if (header.empty()) {
            throw std::runtime_error("empty RESP header");
        }
        const char kind = header[0];
        const std::string body = header.substr(1);
        RespReply reply;
        switch (kind) {
            case '+':
                reply.type = RespReply::Type::status;
                reply.text = body;
                return reply;
            case '-':
                reply.type = RespReply::Type::error;
                reply.text = body;
                return reply;
            case ':':
                reply.type = RespReply::Type::integer;
                reply.integer = parse_integer(body);
                return reply;
            case '_':
                return reply;
            case '#':
                reply.type = RespReply::Type::boolean;
                reply.integer = body == "t" ? 1 : 0;
                return reply;
            case ',':
                reply.type = RespReply::Type::double_value;
                reply.text = body;
                return reply;
            case '(':
                reply.type = RespReply::Type::big_number;
                reply.text = body;
                return reply;
            case '$':
            case '=':
            case '!': {
                const long long len = parse_integer(body);
                if (len < 0) {
                    return reply;
                }
                reply.text = exact(static_cast<std::size_t>(len));
                reply.type = kind == '!' ? RespReply::Type::error : RespReply::Type::bulk;
                if (kind == '=' && reply.text.size() >= 4) {
                    reply.text.erase(0, 4);
                }
                return reply;
            }
            case '*':
            case '~':
            case '>':
            case '%': {
                const long long count = parse_integer(body);
                if (count < 0) {
                    return reply;
                }
                const long long items = kind == '%' ? count * 2 : count;
                reply.type = kind == '%' ? RespReply::Type::map : RespReply::Type::array;
                for (long long i = 0; i < items; ++i) {
                    reply.elements.push_back(read_value(depth + 1));
                }
                return reply;
            }
            case '|': {
                // Attributes are out-of-band metadata; the actual reply follows them.
                const long long count = parse_integer(body);
                for (long long i = 0; i < count * 2; ++i) {
                    read_value(depth + 1);
                }
                return read_value(depth + 1);
            }
            default:
                throw std::runtime_error("unknown RESP type byte in: " + header);
        }
    }

    int fd_;
    Clock::time_point deadline_;
    std::string buffer_;
    std::size_t pos_ = 0;
};

// Runs the commands pipelined on one fresh connection and returns one reply per command.
inline std::vector<RespReply> execute_pipeline(int port,
                                               const std::vector<std::vector<std::string>>& cmds,
                                               std::chrono::milliseconds timeout) {
    const Clock::time_point deadline = Clock::now() + timeout;
    UniqueFd fd = connect_loopback(port, deadline);
    std::string request;
    for (const auto& cmd : cmds) {
        append_command(request, cmd);
    }
    send_all(fd.get(), request, deadline);
    RespReader reader(fd.get(), deadline);
    std::vector<RespReply> replies;
    replies.reserve(cmds.size());
    for (std::size_t i = 0; i < cmds.size(); ++i) {
        replies.push_back(reader.read());
    }
    return replies;
}

inline int pick_free_loopback_port() {
    UniqueFd fd(::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0));
    if (!fd) {
        throw std::runtime_error("socket failed: " + errno_message(errno));
    }
    sockaddr_in addr = loopback_address(0);
    if (::bind(fd.get(), reinterpret_cast<const sockaddr*>(&addr), sizeof addr) != 0) {
        throw std::runtime_error("bind 127.0.0.1:0 failed: " + errno_message(errno));
    }
    socklen_t len = sizeof addr;
    if (::getsockname(fd.get(), reinterpret_cast<sockaddr*>(&addr), &len) != 0) {
        throw std::runtime_error("getsockname failed: " + errno_message(errno));
    }
    return ntohs(addr.sin_port);
}

// SO_REUSEADDR mirrors what redis-server does, so TIME_WAIT leftovers of a previous instance
// on the same port do not count as busy.
inline bool loopback_port_bindable(int port) {
    UniqueFd fd(::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0));
    if (!fd) {
        return false;
    }
    const int one = 1;
    ::setsockopt(fd.get(), SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    const sockaddr_in addr = loopback_address(port);
    return ::bind(fd.get(), reinterpret_cast<const sockaddr*>(&addr), sizeof addr) == 0;
}

inline std::string read_file_from(const std::string& path, std::uintmax_t offset = 0) {
    std::ifstream in(path, std::ios::binary);
    if (!in) {
        return {};
    }
    in.seekg(static_cast<std::streamoff>(offset));
    return {std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>()};
}

inline std::uintmax_t file_size_or_zero(const std::string& path) {
    std::error_code ec;
    const std::uintmax_t size = std::filesystem::file_size(path, ec);
    return ec ? 0 : size;
}

inline std::string tail(const std::string& text, std::size_t max_bytes) {
    return text.size() <= max_bytes ? text : text.substr(text.size() - max_bytes);
}

inline std::string make_temp_dir() {
    // Short base paths keep <dir>/redis.sock under the 108-byte sun_path limit.
    std::string base = "/tmp";
    if (const char* tmp = std::getenv("TMPDIR");
        tmp != nullptr && tmp[0] == '/' && std::strlen(tmp) < 60) {
        base = tmp;
    }
    std::string pattern = base + "/larder-redis-XXXXXX";
    std::vector<char> buffer(pattern.begin(), pattern.end());
    buffer.push_back('\0');
    if (::mkdtemp(buffer.data()) == nullptr) {
        throw std::runtime_error("mkdtemp " + pattern + " failed: " + errno_message(errno));
    }
    return {buffer.data()};
}

inline std::string find_executable(const std::string& name) {
    if (name.find('/') != std::string::npos) {
        return name;
    }
    const char* path = std::getenv("PATH");
    std::string_view dirs = path != nullptr ? path : "/usr/local/bin:/usr/bin:/bin";
    while (true) {
        const std::size_t colon = dirs.find(':');
        std::string candidate(dirs.substr(0, colon));
        if (candidate.empty()) {
            candidate = ".";
        }
        candidate += '/';
        candidate += name;
        if (::access(candidate.c_str(), X_OK) == 0) {
            return candidate;
        }
        if (colon == std::string_view::npos) {
            break;
        }
        dirs.remove_prefix(colon + 1);
    }
    throw std::runtime_error("cannot find " + name +
                             " on PATH (define LARDER_TEST_REDIS_SERVER "
                             "or set RedisServerOptions::executable)");
}

inline std::string default_redis_executable() {
#if defined(LARDER_TEST_REDIS_SERVER)
    return LARDER_TEST_REDIS_SERVER;
#else
    return "redis-server";
#endif
}

// ---- process-wide registry of live children -------------------------------------------------
// Fixed-size lock-free slots because the registry is read from signal handlers, where neither
// locks nor allocation are allowed.

inline constexpr std::size_t child_slot_count = 512;
static_assert(std::atomic<pid_t>::is_always_lock_free);
inline std::atomic<pid_t> child_slots[child_slot_count]{};

inline void register_child(pid_t pid) noexcept {
    for (auto& slot : child_slots) {
        pid_t expected = 0;
        if (slot.compare_exchange_strong(expected, pid)) {
            return;
        }
    }
    // Full registry: the destructor and PDEATHSIG still clean up, only the handlers miss it.
}

inline void unregister_child(pid_t pid) noexcept {
    for (auto& slot : child_slots) {
        pid_t expected = pid;
        if (slot.compare_exchange_strong(expected, 0)) {
            return;
        }
    }
}

inline void kill_registered_children() noexcept {
    for (auto& slot : child_slots) {
        const pid_t pid = slot.load();
        if (pid > 0) {
            ::kill(pid, SIGKILL);
        }
    }
}

inline void kill_and_reap_registered_children() noexcept {
    for (auto& slot : child_slots) {
        const pid_t pid = slot.exchange(0);
        if (pid > 0) {
            ::kill(pid, SIGKILL);
            while (::waitpid(pid, nullptr, 0) < 0 && errno == EINTR) {
            }
        }
    }
}

// Temporary directories of live RedisServer objects, so that std::exit() (which skips the
// destructors of locals) does not leave them behind. Only the atexit handler reads this, never a
// signal handler. Allocated once and never freed so it outlives static destruction.
inline std::mutex& temp_dir_mutex() {
    static auto* mutex = new std::mutex;
    return *mutex;
}

inline std::map<const void*, std::string>& temp_dirs() {
    static auto* dirs = new std::map<const void*, std::string>;
    return *dirs;
}

inline void track_temp_dir(const void* owner, const std::string& dir) {
    const std::lock_guard<std::mutex> lock(temp_dir_mutex());
    temp_dirs()[owner] = dir;
}

inline void untrack_temp_dir(const void* owner) noexcept {
    const std::lock_guard<std::mutex> lock(temp_dir_mutex());
    temp_dirs().erase(owner);
}

inline void cleanup_at_exit() noexcept {
    kill_and_reap_registered_children();
    const std::lock_guard<std::mutex> lock(temp_dir_mutex());
    for (const auto& [owner, dir] : temp_dirs()) {
        std::error_code ec;
        std::filesystem::remove_all(dir, ec);
    }
    temp_dirs().clear();
}

inline constexpr int cleanup_signals[] = {SIGTERM, SIGINT, SIGABRT};
inline constexpr std::size_t cleanup_signal_count = std::size(cleanup_signals);
inline struct sigaction previous_signal_actions[cleanup_signal_count] {};
inline volatile std::sig_atomic_t cleanup_signal_seen = 0;
inline std::mutex cleanup_install_mutex;

inline void reset_to_default_and_raise(int sig) noexcept {
    struct sigaction dfl {};
    dfl.sa_handler = SIG_DFL;
    sigemptyset(&dfl.sa_mask);
    ::sigaction(sig, &dfl, nullptr);
    // The signal is blocked while its handler runs, so this is delivered right after we return.
    ::raise(sig);
}

inline void on_cleanup_signal(int sig, siginfo_t* info, void* context) noexcept {
    const int saved_errno = errno;
    kill_registered_children();
    std::size_t index = cleanup_signal_count;
    for (std::size_t i = 0; i < cleanup_signal_count; ++i) {
        if (cleanup_signals[i] == sig) {
            index = i;
        }
    }
    if (cleanup_signal_seen != 0 || index == cleanup_signal_count) {
        reset_to_default_and_raise(sig);
        errno = saved_errno;
        return;
    }
    cleanup_signal_seen = 1;
    const struct sigaction& previous = previous_signal_actions[index];
    if ((previous.sa_flags & SA_SIGINFO) != 0) {
        if (previous.sa_sigaction != nullptr) {
            previous.sa_sigaction(sig, info, context);
        }
    } else if (previous.sa_handler == SIG_DFL) {
        reset_to_default_and_raise(sig);
    } else if (previous.sa_handler != SIG_IGN && previous.sa_handler != nullptr) {
        previous.sa_handler(sig);
    }
    errno = saved_errno;
}

inline void ensure_cleanup_installed() {
    static std::once_flag atexit_once;
    std::call_once(atexit_once, [] { std::atexit([] { cleanup_at_exit(); }); });

    const std::lock_guard<std::mutex> lock(cleanup_install_mutex);
    for (std::size_t i = 0; i < cleanup_signal_count; ++i) {
        const int sig = cleanup_signals[i];
        struct sigaction current {};
        if (::sigaction(sig, nullptr, &current) != 0) {
            continue;
        }
        const bool ours =
            (current.sa_flags & SA_SIGINFO) != 0 && current.sa_sigaction == &on_cleanup_signal;
        // An ignored signal must stay ignored: it would otherwise kill servers on e.g. a
        // Ctrl-C aimed at the shell of a backgrounded test run.
        const bool ignored = (current.sa_flags & SA_SIGINFO) == 0 && current.sa_handler == SIG_IGN;
        if (ours || ignored) {
            continue;
        }
        previous_signal_actions[i] = current;
        struct sigaction action {};
        action.sa_sigaction = &on_cleanup_signal;
        action.sa_flags = SA_SIGINFO | SA_RESTART;
        sigemptyset(&action.sa_mask);
        ::sigaction(sig, &action, nullptr);
    }
}

// ---- child processes ----------------------------------------------------------------------

inline bool child_exited(pid_t pid) noexcept {
    for (;;) {
        siginfo_t info{};
        // WNOWAIT leaves the zombie in place so the pid cannot be reused while it is still in
        // the registry.
        if (::waitid(P_PID, static_cast<id_t>(pid), &info, WEXITED | WNOHANG | WNOWAIT) == 0) {
            return info.si_pid == pid;
        }
        if (errno != EINTR) {
            return true;  // ECHILD: already reaped by someone else (e.g. SIGCHLD ignored).
        }
    }
}

inline void wait_until_exited(pid_t pid) noexcept {
    siginfo_t info{};
    while (::waitid(P_PID, static_cast<id_t>(pid), &info, WEXITED | WNOWAIT) != 0 &&
           errno == EINTR) {
    }
}

inline void reap(pid_t pid) noexcept {
    unregister_child(pid);
    while (::waitpid(pid, nullptr, 0) < 0 && errno == EINTR) {
    }
}

inline int raise_above_stdio(int fd) noexcept {
    return fd >= 3 ? fd : ::fcntl(fd, F_DUPFD_CLOEXEC, 3);
}

inline void close_fds_from(int first, int max_fd) noexcept {
#if defined(SYS_close_range)
    if (::syscall(SYS_close_range, static_cast<unsigned>(first), ~0U, 0U) == 0) {
        return;
    }
#endif
    for (int fd = first; fd < max_fd; ++fd) {
        ::close(fd);
    }
}

// fork + execve with stdin on /dev/null, stdout on `stdout_fd` (or /dev/null) and stderr
// appended to `stderr_path` (or /dev/null). Every other descriptor is closed in the child: an
// inherited socket would keep connections of the test process alive after it closes them.
// Throws if the exec itself fails. The returned pid is already in the registry.
inline pid_t spawn(const std::vector<std::string>& argv_strings, int stdout_fd,
                   const std::string& stderr_path) {
    std::vector<char*> argv;
    argv.reserve(argv_strings.size() + 1);
    for (const std::string& arg : argv_strings) {
        argv.push_back(const_cast<char*>(arg.c_str()));
    }
    argv.push_back(nullptr);
    char** const envp = environ;
    const char* const exe = argv_strings.front().c_str();
    const char* const err_path = stderr_path.empty() ? "/dev/null" : stderr_path.c_str();
    const long open_max = ::sysconf(_SC_OPEN_MAX);
    const int max_fd = open_max > 0 && open_max < 65536 ? static_cast<int>(open_max) : 65536;
    const pid_t parent = ::getpid();

    int exec_pipe[2];
    if (::pipe2(exec_pipe, O_CLOEXEC) != 0) {
        throw std::runtime_error("pipe2 failed: " + errno_message(errno));
    }

    const pid_t pid = ::fork();
    if (pid < 0) {
        const int err = errno;
        ::close(exec_pipe[0]);
        ::close(exec_pipe[1]);
        throw std::runtime_error("fork failed: " + errno_message(err));
    }
    if (pid == 0) {
        // Child: async-signal-safe calls only until execve.
        sigset_t none;
        sigemptyset(&none);
        ::sigprocmask(SIG_SETMASK, &none, nullptr);
        for (int sig = 1; sig < NSIG; ++sig) {
            if (sig != SIGKILL && sig != SIGSTOP) {
                ::signal(sig, SIG_DFL);
            }
        }
        ::prctl(PR_SET_PDEATHSIG, SIGKILL);
        if (::getppid() != parent) {
            ::_exit(126);  // The parent died before PDEATHSIG was armed.
        }
        const int report = raise_above_stdio(exec_pipe[1]);
        const int null_fd = raise_above_stdio(::open("/dev/null", O_RDWR | O_CLOEXEC));
        const int out_fd = stdout_fd >= 0 ? raise_above_stdio(stdout_fd) : null_fd;
        const int err_fd =
            raise_above_stdio(::open(err_path, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0600));
        if (report < 0 || null_fd < 0 || out_fd < 0 || err_fd < 0 || ::dup2(null_fd, 0) < 0 ||
            ::dup2(out_fd, 1) < 0 || ::dup2(err_fd, 2) < 0 ||
            (report != 3 && ::dup2(report, 3) < 0) || ::fcntl(3, F_SETFD, FD_CLOEXEC) < 0) {
            ::_exit(125);
        }
        close_fds_from(4, max_fd);
        ::execve(exe, argv.data(), envp);
        const int err = errno;
        [[maybe_unused]] const ssize_t ignored = ::write(3, &err, sizeof err);
        ::_exit(127);
    }

    register_child(pid);
    ::close(exec_pipe[1]);
    int child_errno = 0;
    ssize_t n = 0;
    do {
        n = ::read(exec_pipe[0], &child_errno, sizeof child_errno);
    } while (n < 0 && errno == EINTR);
    ::close(exec_pipe[0]);
    if (n > 0) {
        reap(pid);
        throw std::runtime_error("cannot execute " + argv_strings.front() + ": " +
                                 errno_message(child_errno));
    }
    return pid;
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
