// The redis-servers' child processes: spawn with a clean descriptor table, reap, and a
// process-wide, async-signal-safe registry that kills leftover children at exit and on
// SIGTERM/SIGINT/SIGABRT; temporary directories removed at exit; file helpers.
#pragma once

#include <atomic>
#include <cerrno>
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
#include <vector>

#include <fcntl.h>
#include <sys/prctl.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <unistd.h>

#include "posix_io.hpp"

// Read before fork(): the child may only call async-signal-safe functions, which rules out
// execvp()/execv() and their hidden environment lookups.
extern "C" char** environ;

namespace larder::test {

namespace detail {

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

}  // namespace detail

}  // namespace larder::test
