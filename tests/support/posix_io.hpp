// Loopback sockets for the test support: descriptors that close themselves, connects and
// writes bounded by a deadline, free-port discovery. POSIX and the standard library only.
#pragma once

#include <cerrno>
#include <chrono>
#include <climits>
#include <string>
#include <string_view>
#include <system_error>
#include <utility>

#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

namespace larder::test {

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

}  // namespace detail

}  // namespace larder::test
