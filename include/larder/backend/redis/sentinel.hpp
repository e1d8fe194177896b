// Redis Sentinel for RedisBackend: where the primary is, and when it moves.
//
// The primary's address is asked of the sentinels (SENTINEL get-master-addr-by-name) when a
// connection is opened and none is known, and every new connection checks with ROLE that
// it reached a primary: a sentinel's answer can be stale, and a demoted primary takes
// connections as a replica. The address is forgotten when a connection fails or a write is
// refused with READONLY (RedisBackend then closes its idle connections), and replaced as
// soon as a sentinel announces +switch-master, which a thread of this object listens for.
#pragma once

#include <poll.h>
#include <sys/socket.h>

#include <array>
#include <atomic>
#include <charconv>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <functional>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <string_view>
#include <thread>
#include <utility>

#include "larder/backend/redis/connection.hpp"
#include "larder/backend/redis/options.hpp"
#include "larder/core/error.hpp"

namespace larder::redis_detail {

class Sentinel {
public:
    /// `data`: how to reach the data nodes (credentials, timeouts); its host and port are
    /// replaced by the primary's. `moved` is called (from any thread) when the primary
    /// changed.
    Sentinel(SentinelOptions options, Endpoint data, Counters& counters,
             std::function<void()> moved)
        : options_(std::move(options)),
          data_(std::move(data)),
          counters_(counters),
          moved_(std::move(moved)) {
        if (options_.follow_switch_master) watcher_ = std::thread([this] { watch(); });
    }

    Sentinel(const Sentinel&) = delete;
    Sentinel& operator=(const Sentinel&) = delete;

    ~Sentinel() {
        {
            std::lock_guard lock(mutex_);
            stopping_ = true;
            // A sentinel that answers slowly (or a byte at a time) must not hold up the
            // backend's destruction: its socket is shut, which ends any wait on it.
            if (listening_fd_ >= 0) ::shutdown(listening_fd_, SHUT_RDWR);
        }
        wake_.notify_all();
        if (watcher_.joinable()) watcher_.join();
    }

    /// A connection to the primary, checked with ROLE. Throws ConnectionError when no
    /// sentinel answers, or the node it names is not a primary (yet).
    std::unique_ptr<Connection> connect_to_primary() {
        try {
            return connect_to(primary());
        } catch (const ConnectionError&) {
            // The address known may be stale (a failover since): once more, asking first.
            return connect_to(primary());
        }
    }

    /// The primary's address: the one known, or a sentinel's answer.
    RedisAddress primary() {
        {
            std::lock_guard lock(mutex_);
            if (known_) return *known_;
        }
        const RedisAddress found = ask();
        std::lock_guard lock(mutex_);
        if (!known_) known_ = found;
        return *known_;
    }

    /// The address `seen` is not the primary (a connection failed, a write was refused):
    /// ask again on the next connect, unless it has been replaced already.
    void forget(const RedisAddress& seen) {
        std::lock_guard lock(mutex_);
        if (known_ && *known_ == seen) known_.reset();
    }

    /// The address in use, if any.
    [[nodiscard]] std::optional<RedisAddress> known() const {
        std::lock_guard lock(mutex_);
        return known_;
    }

    /// +switch-master announcements followed.
    [[nodiscard]] std::uint64_t switches() const noexcept {
        return switches_.load(std::memory_order_relaxed);
    }

private:
    std::unique_ptr<Connection> connect_to(const RedisAddress& at) {
        Endpoint e = data_;
        e.host = at.host;
        e.port = at.port;
        std::unique_ptr<Connection> conn;
        ReplyPtr role;
        try {
            conn = std::make_unique<Connection>(e, counters_);
            role = conn->command(Args{"ROLE"});
        } catch (const BackendError&) {
            forget(at);  // gone: the next connect asks the sentinels again
            throw;
        }
        check(*role, "ROLE");
        const bool primary = role->type == REDIS_REPLY_ARRAY && role->elements > 0 &&
                             text_of(*role->element[0]) == "master";
        if (!primary) {
            forget(at);
            throw ConnectionError("redis: " + e.describe() + ", named primary of '" +
                                  options_.master_name +
                                  "' by a sentinel, is not a primary (a failover in progress)");
        }
        return conn;
    }

    Endpoint sentinel_endpoint(const RedisAddress& s) const {
        Endpoint e;
        e.host = s.host;
        e.port = s.port;
        e.user = options_.user;
        e.password = options_.password;
        e.connect_timeout = data_.connect_timeout;
        e.command_timeout = data_.command_timeout;
        return e;
    }

    RedisAddress ask() {
        std::string failures;
        for (const RedisAddress& s : options_.sentinels) {
            try {
                Connection c(sentinel_endpoint(s), counters_);
                const auto reply =
                    c.command(Args{"SENTINEL", "get-master-addr-by-name", options_.master_name});
                check(*reply, "SENTINEL get-master-addr-by-name");
                if (reply->type == REDIS_REPLY_NIL) {
                    throw ConnectionError("it does not monitor '" + options_.master_name + "'");
                }
                if (reply->type != REDIS_REPLY_ARRAY || reply->elements != 2 ||
                    reply->element[0]->type != REDIS_REPLY_STRING ||
                    reply->element[1]->type != REDIS_REPLY_STRING) {
                    unexpected(*reply, "SENTINEL get-master-addr-by-name");
                }
                const std::string_view host = text_of(*reply->element[0]);
                if (!usable_host(host)) {
                    throw BackendError("redis: a sentinel named a primary without a host");
                }
                return RedisAddress{std::string(host), port_of(text_of(*reply->element[1]))};
            } catch (const BackendError& e) {
                if (!failures.empty()) failures += "; ";
                failures += s.host + ":" + std::to_string(s.port) + ": " + e.what();
            }
        }
        throw ConnectionError("redis: no sentinel named the primary of '" + options_.master_name +
                              "' (" + failures + ")");
    }

    static bool usable_host(std::string_view host) noexcept {
        return !host.empty() && host.find('\0') == std::string_view::npos;
    }

    static int port_of(std::string_view text) {
        int port = 0;
        const auto [end, ec] = std::from_chars(text.data(), text.data() + text.size(), port);
        if (ec != std::errc{} || end != text.data() + text.size() || port < 1 || port > 65535) {
            throw BackendError("redis: a sentinel answered a port that is no port");
        }
        return port;
    }

    // The +switch-master subscription: "<name> <old ip> <old port> <new ip> <new port>".
    void watch() {
        std::size_t next = 0;
        while (!stopping()) {
            const RedisAddress& s = options_.sentinels[next++ % options_.sentinels.size()];
            try {
                listen(s);
            } catch (const BackendError&) {
                // That sentinel is away: the next one, after a pause.
            }
            std::unique_lock lock(mutex_);
            wake_.wait_for(lock, std::chrono::milliseconds(200), [&] { return stopping_; });
        }
    }

    void listen(const RedisAddress& s) {
        Connection c(sentinel_endpoint(s), counters_);
        redisContext* ctx = c.context();
        {
            std::lock_guard lock(mutex_);
            if (stopping_) return;
            listening_fd_ = ctx->fd;
        }
        struct Forget {
            Sentinel& self;
            ~Forget() {
                std::lock_guard lock(self.mutex_);
                self.listening_fd_ = -1;
            }
        } forget_fd{*this};
        // Sent, not awaited: its confirmation comes through the loop below, which never
        // blocks longer than a poll.
        c.append(Args{"SUBSCRIBE", "+switch-master"});
        c.flush();
        while (!stopping()) {
            void* raw = nullptr;
            if (redisGetReplyFromReader(ctx, &raw) != REDIS_OK) {
                throw BackendError("redis: a sentinel subscription broke");
            }
            if (raw != nullptr) {
                const ReplyPtr message(static_cast<redisReply*>(raw));
                if (message->type == REDIS_REPLY_ERROR) {  // SUBSCRIBE refused
                    throw BackendError("redis: a sentinel refused SUBSCRIBE: " +
                                       std::string(text_of(*message)));
                }
                on_message(*message);
                continue;
            }
            pollfd p{ctx->fd, POLLIN, 0};
            if (::poll(&p, 1, 100) <= 0) continue;
            if (redisBufferRead(ctx) != REDIS_OK) {
                throw BackendError("redis: a sentinel subscription was lost");
            }
        }
    }

    void on_message(const redisReply& m) {
        if (m.type != REDIS_REPLY_ARRAY || m.elements != 3 ||
            m.element[2]->type != REDIS_REPLY_STRING) {
            return;
        }
        // Exactly five words, none empty, and a host without a NUL: anything else is not an
        // announcement, and changes nothing.
        const std::string_view text = text_of(*m.element[2]);
        std::array<std::string_view, 5> words{};
        std::size_t n = 0;
        for (std::size_t at = 0;;) {
            const auto space = text.find(' ', at);
            const std::string_view word =
                text.substr(at, space == std::string_view::npos ? space : space - at);
            if (word.empty() || n == words.size()) return;
            words[n++] = word;
            if (space == std::string_view::npos) break;
            at = space + 1;
        }
        if (n != 5 || words[0] != options_.master_name || !usable_host(words[3])) return;
        RedisAddress now;
        try {
            now = RedisAddress{std::string(words[3]), port_of(words[4])};
        } catch (const BackendError&) {
            return;  // a malformed announcement changes nothing
        }
        {
            std::lock_guard lock(mutex_);
            known_ = now;
        }
        switches_.fetch_add(1, std::memory_order_relaxed);
        if (moved_) moved_();
    }

    bool stopping() {
        std::lock_guard lock(mutex_);
        return stopping_;
    }

    const SentinelOptions options_;
    const Endpoint data_;
    Counters& counters_;
    const std::function<void()> moved_;
    mutable std::mutex mutex_;
    std::condition_variable wake_;
    std::optional<RedisAddress> known_;
    bool stopping_ = false;
    int listening_fd_ = -1;  // the subscription's socket, while there is one
    std::atomic<std::uint64_t> switches_{0};
    std::thread watcher_;  // last: it uses everything above
};

}  // namespace larder::redis_detail
