// Loopback TCP proxy for network fault injection in tests.
//
// Clients connect to 127.0.0.1:port() and every accepted connection gets its own upstream
// connection; bytes are forwarded both ways by a single background thread driven by poll().
// Controls:
//   * blackhole(true) models a network partition: connections stay open and new ones are still
//     accepted (and connected upstream), but nothing moves in either direction, so peers see a
//     silent server and run into their timeouts. Bytes are *buffered*, not discarded - the proxy
//     simply stops reading and the kernel socket buffers fill up, as with TCP retransmission
//     during a real partition. blackhole(false) resumes forwarding on new and existing
//     connections, delivering whatever was sent in the meantime. Connection closes are not
//     noticed while blackholed either (only resets are).
//   * drop_all_connections() resets every current connection on both sides (RST via
//     SO_LINGER 0); the proxy keeps accepting new connections afterwards.
//   * set_delay(d) holds every chunk read after the call for d before writing it on, in both
//     directions (added latency, not a bandwidth limit; order is always preserved).
//   * hold_replies(true) models a reply lost after its request arrived: requests still reach
//     the server, nothing comes back on any connection. hold_replies_after(n) does that per
//     connection once more than n bytes of replies came through it since the call (a large
//     reply is held, small ones pass). A held connection stays held until it closes.
// All controls are thread-safe and synchronous: when they return, the forwarding thread has
// applied them, so e.g. nothing sent after blackhole(true) returns is forwarded.
//
// Half-closes are propagated (EOF from one side becomes shutdown(SHUT_WR) on the other), and a
// reset or failed connect upstream resets the client connection. The destructor stops the
// thread and closes everything promptly.
#pragma once

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <chrono>
#include <climits>
#include <condition_variable>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <deque>
#include <memory>
#include <mutex>
#include <stdexcept>
#include <string>
#include <system_error>
#include <thread>
#include <utility>
#include <vector>

#include <arpa/inet.h>
#include <fcntl.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

namespace larder::test {

namespace detail::proxy {

using Clock = std::chrono::steady_clock;

// Per-direction cap on bytes held by the proxy; beyond it the proxy stops reading, so a fast
// sender is slowed down by TCP flow control instead of growing memory.
inline constexpr std::size_t max_buffered_bytes = 1 << 20;
inline constexpr std::size_t read_chunk_bytes = std::size_t{64} * 1024;

struct Chunk {
    Clock::time_point due;
    std::string data;
    std::size_t offset = 0;
};

struct Direction {
    std::deque<Chunk> queue;
    std::size_t queued_bytes = 0;
    bool source_eof = false;
    bool sink_shut = false;
    bool write_blocked = false;
};

struct Connection {
    int client = -1;
    int upstream = -1;
    bool connecting = true;
    bool failed = false;
    bool held = false;             // replies are no longer forwarded (hold_replies_after)
    std::size_t reply_bytes = 0;   // read from upstream since the last hold_replies_after()
    std::uint64_t hold_epoch = 0;  // the hold_replies_after() call reply_bytes counts from
    Direction to_upstream;
    Direction to_client;
};

inline std::string errno_message(int err) {
    return std::system_category().message(err);
}

inline void set_reset_on_close(int fd) noexcept {
    const linger lin{1, 0};
    ::setsockopt(fd, SOL_SOCKET, SO_LINGER, &lin, sizeof lin);
}

inline void close_connection(Connection& conn, bool reset) noexcept {
    for (int* fd : {&conn.client, &conn.upstream}) {
        if (*fd >= 0) {
            if (reset) {
                set_reset_on_close(*fd);
            }
            ::close(*fd);
            *fd = -1;
        }
    }
}

}  // namespace detail::proxy

class TcpProxy {
public:
    TcpProxy(std::string upstream_host, int upstream_port)
        : upstream_host_(std::move(upstream_host)), upstream_port_(upstream_port) {
        resolve_upstream();
        open_listener();
        int pipe_fds[2];
        if (::pipe2(pipe_fds, O_CLOEXEC | O_NONBLOCK) != 0) {
            const int err = errno;
            ::close(listen_fd_);
            throw std::runtime_error("TcpProxy: pipe2 failed: " +
                                     detail::proxy::errno_message(err));
        }
        wake_read_ = pipe_fds[0];
        wake_write_ = pipe_fds[1];
        try {
            thread_ = std::thread([this] { run(); });
        } catch (...) {
            ::close(listen_fd_);
            ::close(wake_read_);
            ::close(wake_write_);
            throw;
        }
    }

    ~TcpProxy() {
        {
            const std::lock_guard<std::mutex> lock(mutex_);
            stopping_ = true;
        }
        wake();
        if (thread_.joinable()) {
            thread_.join();
        }
        ::close(listen_fd_);
        ::close(wake_read_);
        ::close(wake_write_);
    }

    TcpProxy(const TcpProxy&) = delete;
    TcpProxy& operator=(const TcpProxy&) = delete;
    TcpProxy(TcpProxy&&) = delete;
    TcpProxy& operator=(TcpProxy&&) = delete;

    int port() const noexcept { return port_; }
    const std::string& host() const noexcept { return host_; }
    const std::string& upstream_host() const noexcept { return upstream_host_; }
    int upstream_port() const noexcept { return upstream_port_; }

    void blackhole(bool on) {
        apply([&] { blackholed_ = on; });
    }

    void hold_replies(bool on) {
        apply([&] { hold_all_ = on; });
    }

    // 0: off.
    void hold_replies_after(std::size_t bytes) {
        apply([&] {
            hold_after_ = bytes;
            ++hold_epoch_;
        });
    }

    bool blackholed() const {
        const std::lock_guard<std::mutex> lock(mutex_);
        return blackholed_;
    }

    // Resets all current connections; returns once they are closed.
    void drop_all_connections() {
        apply([&] { ++drops_requested_; });
    }

    // Applies to chunks read after the call; already buffered chunks keep their schedule.
    void set_delay(std::chrono::milliseconds delay) {
        apply([&] {
            delay_ = delay < std::chrono::milliseconds::zero() ? std::chrono::milliseconds::zero()
                                                               : delay;
        });
    }

    // Connections currently proxied (both sockets open).
    std::size_t connection_count() const noexcept { return open_connections_.load(); }
    // Connections accepted since construction.
    std::size_t accepted_count() const noexcept { return accepted_connections_.load(); }

private:
    using Clock = detail::proxy::Clock;
    using Connection = detail::proxy::Connection;
    using Direction = detail::proxy::Direction;

    struct Settings {
        bool blackholed = false;
        std::chrono::milliseconds delay{0};
        bool drop = false;
        bool hold_all = false;
        std::size_t hold_after = 0;
        std::uint64_t hold_epoch = 0;
    };

    void resolve_upstream() {
        addrinfo hints{};
        hints.ai_family = AF_UNSPEC;
        hints.ai_socktype = SOCK_STREAM;
        hints.ai_flags = AI_NUMERICSERV;
        addrinfo* found = nullptr;
        const std::string service = std::to_string(upstream_port_);
        const int rc = ::getaddrinfo(upstream_host_.c_str(), service.c_str(), &hints, &found);
        if (rc != 0 || found == nullptr) {
            throw std::runtime_error("TcpProxy: cannot resolve " + upstream_host_ + ": " +
                                     ::gai_strerror(rc));
        }
        std::memcpy(&upstream_addr_, found->ai_addr, found->ai_addrlen);
        upstream_addr_len_ = found->ai_addrlen;
        ::freeaddrinfo(found);
    }

    void open_listener() {
        listen_fd_ = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
        if (listen_fd_ < 0) {
            throw std::runtime_error("TcpProxy: socket failed: " +
                                     detail::proxy::errno_message(errno));
        }
        sockaddr_in addr{};
        addr.sin_family = AF_INET;
        addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
        socklen_t len = sizeof addr;
        if (::bind(listen_fd_, reinterpret_cast<const sockaddr*>(&addr), sizeof addr) != 0 ||
            ::listen(listen_fd_, SOMAXCONN) != 0 ||
            ::getsockname(listen_fd_, reinterpret_cast<sockaddr*>(&addr), &len) != 0) {
            const int err = errno;
            ::close(listen_fd_);
            throw std::runtime_error("TcpProxy: cannot listen on 127.0.0.1: " +
                                     detail::proxy::errno_message(err));
        }
        port_ = ntohs(addr.sin_port);
    }

    void wake() noexcept {
        const char byte = 1;
        // EAGAIN means a wake-up is already pending, which is just as good.
        [[maybe_unused]] const ssize_t n = ::write(wake_write_, &byte, 1);
    }

    template <typename Mutate>
    void apply(Mutate mutate) {
        std::unique_lock<std::mutex> lock(mutex_);
        mutate();
        const std::uint64_t ticket = ++generation_requested_;
        wake();
        applied_cv_.wait(lock, [&] { return generation_applied_ >= ticket || loop_exited_; });
    }

    void run() noexcept {
        try {
            loop();
        } catch (...) {
            // Only allocation failure can get here; closing everything makes peers see resets
            // instead of hangs, and controls stop waiting for a thread that is gone.
        }
        for (auto& conn : connections_) {
            detail::proxy::close_connection(*conn, false);
        }
        connections_.clear();
        open_connections_.store(0);
        {
            const std::lock_guard<std::mutex> lock(mutex_);
            loop_exited_ = true;
        }
        applied_cv_.notify_all();
    }

    void loop() {
        std::vector<pollfd> fds;
        std::uint64_t drops_done = 0;
        while (true) {
            Settings settings;
            {
                const std::lock_guard<std::mutex> lock(mutex_);
                if (stopping_) {
                    return;
                }
                settings.blackholed = blackholed_;
                settings.delay = delay_;
                settings.hold_all = hold_all_;
                settings.hold_after = hold_after_;
                settings.hold_epoch = hold_epoch_;
                settings.drop = drops_requested_ != drops_done;
                drops_done = drops_requested_;
                if (settings.drop) {
                    for (auto& conn : connections_) {
                        conn->failed = true;
                    }
                    remove_finished();
                }
                generation_applied_ = generation_requested_;
            }
            applied_cv_.notify_all();

            const Clock::time_point now = Clock::now();
            if (!settings.blackholed) {
                for (auto& conn : connections_) {
                    if (!conn->connecting && !conn->failed) {
                        flush(*conn, conn->to_upstream, conn->upstream, now);
                        if (!settings.hold_all && !conn->held) {
                            flush(*conn, conn->to_client, conn->client, now);
                        }
                    }
                }
            }
            remove_finished();

            fds.clear();
            fds.push_back({wake_read_, POLLIN, 0});
            int timeout = -1;
            if (accept_resume_ > now) {
                fds.push_back({-1, 0, 0});
                timeout = min_timeout(timeout, accept_resume_ - now);
            } else {
                fds.push_back({listen_fd_, POLLIN, 0});
            }
            for (auto& conn : connections_) {
                fds.push_back(watch(conn->client, conn->to_upstream, conn->to_client, false,
                                    settings.blackholed));
                fds.push_back(watch(conn->upstream, conn->to_client, conn->to_upstream,
                                    conn->connecting, settings.blackholed,
                                    settings.hold_all || conn->held));
                if (!settings.blackholed) {
                    for (const Direction* dir : {&conn->to_upstream, &conn->to_client}) {
                        if (!dir->queue.empty() && dir->queue.front().due > now) {
                            timeout = min_timeout(timeout, dir->queue.front().due - now);
                        }
                    }
                }
            }

            const int rc = ::poll(fds.data(), fds.size(), timeout);
            if (rc < 0) {
                if (errno == EINTR) {
                    continue;
                }
                throw std::runtime_error("poll failed");
            }
            if (fds[0].revents != 0) {
                drain_wake_pipe();
            }
            if (fds[1].revents != 0) {
                accept_all();
            }
            // accept_all() may have appended connections that were not part of this poll.
            const std::size_t polled = (fds.size() - 2) / 2;
            const Clock::time_point read_time = Clock::now();
            for (std::size_t i = 0; i < polled; ++i) {
                Connection& conn = *connections_[i];
                handle(conn, fds[2 + 2 * i].revents, fds[3 + 2 * i].revents, settings, read_time);
            }
            remove_finished();
        }
    }

    static int min_timeout(int current, Clock::duration wait) {
        auto ms = std::chrono::ceil<std::chrono::milliseconds>(wait).count();
        ms = std::clamp<decltype(ms)>(ms, 1, INT_MAX);
        return current < 0 ? static_cast<int>(ms) : std::min(current, static_cast<int>(ms));
    }

    // `source` is the direction this fd feeds, `sink` the one it drains.
    static pollfd watch(int fd, const Direction& source, const Direction& sink, bool connecting,
                        bool blackholed, bool not_reading = false) {
        pollfd pfd{fd, 0, 0};
        if (connecting) {
            pfd.events = POLLOUT;
            return pfd;
        }
        if (!blackholed) {
            if (!not_reading && !source.source_eof &&
                source.queued_bytes < detail::proxy::max_buffered_bytes) {
                pfd.events |= POLLIN;
            }
            if (sink.write_blocked) {
                pfd.events |= POLLOUT;
            }
        }
        // Without any interest and with its read side finished, a socket could only report a
        // persistent POLLHUP that would make poll() spin, so leave it out.
        if (pfd.events == 0 && source.source_eof) {
            pfd.fd = -1;
        }
        return pfd;
    }

    void handle(Connection& conn, short client_events, short upstream_events,
                const Settings& settings, Clock::time_point now) {
        if (conn.failed) {
            return;
        }
        if (conn.connecting && upstream_events != 0) {
            int err = 0;
            socklen_t len = sizeof err;
            if (::getsockopt(conn.upstream, SOL_SOCKET, SO_ERROR, &err, &len) != 0 || err != 0) {
                conn.failed = true;
                return;
            }
            conn.connecting = false;
            upstream_events = 0;
        }
        if (((client_events | upstream_events) & (POLLERR | POLLNVAL)) != 0) {
            conn.failed = true;
            return;
        }
        if (settings.blackholed) {
            if (((client_events | upstream_events) & POLLHUP) != 0) {
                conn.failed = true;
            }
            return;
        }
        if ((client_events & (POLLIN | POLLHUP)) != 0) {
            receive(conn, conn.client, conn.to_upstream, settings.delay, now);
        }
        if (settings.hold_all || conn.held) {
            // Not reading replies: a hang-up upstream would otherwise be reported forever.
            if ((upstream_events & POLLHUP) != 0) conn.failed = true;
            return;
        }
        if (!conn.failed && (upstream_events & (POLLIN | POLLHUP)) != 0) {
            const std::size_t before = conn.to_client.queued_bytes;
            receive(conn, conn.upstream, conn.to_client, settings.delay, now);
            if (settings.hold_after > 0) {
                if (conn.hold_epoch != settings.hold_epoch) {
                    conn.hold_epoch = settings.hold_epoch;
                    conn.reply_bytes = 0;
                }
                conn.reply_bytes += conn.to_client.queued_bytes - before;
                if (conn.reply_bytes > settings.hold_after) conn.held = true;
            }
        }
        // POLLOUT needs no handling here: the next flush() retries blocked writes.
    }

    void receive(Connection& conn, int fd, Direction& dir, std::chrono::milliseconds delay,
                 Clock::time_point now) {
        if (dir.source_eof) {
            return;
        }
        const ssize_t n = ::recv(fd, scratch_.data(), scratch_.size(), 0);
        if (n > 0) {
            // Copied out at its real size: queued chunks must not each pin a full read buffer.
            std::string data(scratch_.data(), static_cast<std::size_t>(n));
            dir.queued_bytes += data.size();
            dir.queue.push_back({now + delay, std::move(data), 0});
        } else if (n == 0) {
            dir.source_eof = true;
        } else if (errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR) {
            conn.failed = true;
        }
    }

    static void flush(Connection& conn, Direction& dir, int sink, Clock::time_point now) {
        dir.write_blocked = false;
        while (!dir.queue.empty() && dir.queue.front().due <= now) {
            detail::proxy::Chunk& chunk = dir.queue.front();
            const ssize_t n = ::send(sink, chunk.data.data() + chunk.offset,
                                     chunk.data.size() - chunk.offset, MSG_NOSIGNAL);
            if (n < 0) {
                if (errno == EAGAIN || errno == EWOULDBLOCK) {
                    dir.write_blocked = true;
                } else if (errno != EINTR) {
                    conn.failed = true;
                }
                return;
            }
            chunk.offset += static_cast<std::size_t>(n);
            dir.queued_bytes -= static_cast<std::size_t>(n);
            if (chunk.offset == chunk.data.size()) {
                dir.queue.pop_front();
            }
        }
        if (dir.queue.empty() && dir.source_eof && !dir.sink_shut) {
            ::shutdown(sink, SHUT_WR);
            dir.sink_shut = true;
        }
    }

    void accept_all() {
        while (true) {
            const int client =
                ::accept4(listen_fd_, nullptr, nullptr, SOCK_NONBLOCK | SOCK_CLOEXEC);
            if (client < 0) {
                if (errno == EMFILE || errno == ENFILE || errno == ENOBUFS || errno == ENOMEM) {
                    // The pending connection keeps the listener readable; without a pause
                    // poll() would spin until descriptors are freed.
                    accept_resume_ = Clock::now() + std::chrono::milliseconds(50);
                }
                return;  // EAGAIN ends the batch; ECONNABORTED and EINTR retry next round.
            }
            accepted_connections_.fetch_add(1);
            auto conn = std::make_unique<Connection>();
            conn->client = client;
            const int one = 1;
            ::setsockopt(client, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
            conn->upstream =
                ::socket(upstream_addr_.ss_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
            if (conn->upstream < 0) {
                conn->failed = true;
            } else {
                ::setsockopt(conn->upstream, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
                const int rc =
                    ::connect(conn->upstream, reinterpret_cast<const sockaddr*>(&upstream_addr_),
                              upstream_addr_len_);
                if (rc == 0) {
                    conn->connecting = false;
                } else if (errno != EINPROGRESS) {
                    conn->failed = true;  // The client sees a reset, like a refused connect.
                }
            }
            open_connections_.fetch_add(1);
            connections_.push_back(std::move(conn));
        }
    }

    void remove_finished() {
        auto done = [](const std::unique_ptr<Connection>& conn) {
            return conn->failed || (conn->to_upstream.sink_shut && conn->to_client.sink_shut);
        };
        for (auto& conn : connections_) {
            if (done(conn)) {
                detail::proxy::close_connection(*conn, conn->failed);
                open_connections_.fetch_sub(1);
            }
        }
        connections_.erase(std::remove_if(connections_.begin(), connections_.end(), done),
                           connections_.end());
    }

    void drain_wake_pipe() noexcept {
        char buffer[64];
        while (::read(wake_read_, buffer, sizeof buffer) > 0) {
        }
    }

    std::string upstream_host_;
    int upstream_port_;
    sockaddr_storage upstream_addr_{};
    socklen_t upstream_addr_len_ = 0;
    std::string host_ = "127.0.0.1";
    int port_ = 0;
    int listen_fd_ = -1;
    int wake_read_ = -1;
    int wake_write_ = -1;

    mutable std::mutex mutex_;
    std::condition_variable applied_cv_;
    bool stopping_ = false;
    bool blackholed_ = false;
    bool hold_all_ = false;
    std::size_t hold_after_ = 0;
    std::uint64_t hold_epoch_ = 0;
    std::chrono::milliseconds delay_{0};
    std::uint64_t drops_requested_ = 0;
    std::uint64_t generation_requested_ = 0;
    std::uint64_t generation_applied_ = 0;
    bool loop_exited_ = false;

    std::atomic<std::size_t> open_connections_{0};
    std::atomic<std::size_t> accepted_connections_{0};

    // Owned by the forwarding thread.
    std::vector<std::unique_ptr<Connection>> connections_;
    std::vector<char> scratch_ = std::vector<char>(detail::proxy::read_chunk_bytes);
    Clock::time_point accept_resume_{};
    std::thread thread_;
};

}  // namespace larder::test
