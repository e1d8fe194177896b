// The subscriber that feeds a RedisBackend's LeaseNotices: one connection and one thread
// per backend, subscribed to the tenant's lease channel, started by the first Lock waiter
// (RedisBackend::lease_notices). Reconnects with backoff; a quiet subscription is PINGed so
// that a dead one is noticed. While it is not subscribed, waiters poll.
#pragma once

#include <fcntl.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <chrono>
#include <functional>
#include <iostream>
#include <memory>
#include <mutex>
#include <string>
#include <thread>

#include "larder/backend/lease_notices.hpp"
#include "larder/backend/redis/connection.hpp"
#include "larder/backend/redis/pubsub.hpp"
#include "larder/core/error.hpp"

namespace larder::redis_detail {

class LeaseListener {
public:
    /// `connect` opens a connection to the primary (through Sentinel, where there is one).
    using Connect = std::function<std::unique_ptr<Connection>(Counters&)>;

    LeaseListener(Connect connect, std::string channel, LeaseNotices& notices)
        : connect_(std::move(connect)), channel_(std::move(channel)), notices_(notices) {
        if (pipe2(wake_, O_CLOEXEC | O_NONBLOCK) != 0) {
            throw BackendError("RedisBackend: cannot create the lease listener's wake-up pipe");
        }
        thread_ = std::thread([this] { run(); });
    }

    LeaseListener(const LeaseListener&) = delete;
    LeaseListener& operator=(const LeaseListener&) = delete;

    ~LeaseListener() {
        stopping_.store(true);
        const char byte = 1;
        [[maybe_unused]] const auto n = ::write(wake_[1], &byte, 1);
        {
            // A SUBSCRIBE a silent server never answers would hold the join for the whole
            // command_timeout: its socket is shut instead.
            std::lock_guard lock(fd_mutex_);
            if (fd_ >= 0) ::shutdown(fd_, SHUT_RDWR);
        }
        thread_.join();
        close(wake_[0]);
        close(wake_[1]);
    }

private:
    static constexpr Millis first_backoff{20};
    static constexpr Millis max_backoff{1000};
    static constexpr Millis ping_interval{1000};
    static constexpr Millis ping_timeout{2000};

    void run() {
        Millis backoff = first_backoff;
        bool reported = false;
        while (!stopping_.load()) {
            try {
                listen();
                backoff = first_backoff;
            } catch (const Refused& e) {
                // An ACL without the channel: it lasts until someone changes the ACL. Said
                // once; retried slowly; waiters poll meanwhile.
                if (!reported) std::cerr << "larder: " << e.what() << '\n';
                reported = true;
                backoff = max_backoff;
            } catch (const std::exception&) {
                // Lost or silent: waiters poll until the next subscription.
            }
            notices_.set_listening(false);
            if (stopping_.load()) break;
            pollfd p{wake_[0], POLLIN, 0};
            ::poll(&p, 1, static_cast<int>(backoff.count()));
            backoff = std::min(backoff * 2, max_backoff);
        }
    }

    void listen() {
        const auto owned = connect_(counters_);
        Connection& conn = *owned;
        const Published published(*this, conn.context()->fd);
        if (stopping_.load()) return;
        const auto reply = conn.command(Args{"SUBSCRIBE", channel_});
        if (reply->type != REDIS_REPLY_ARRAY) {
            throw Refused("RedisBackend: SUBSCRIBE " + channel_ +
                          " refused; Lock waiters poll instead of being woken: " +
                          (reply->type == REDIS_REPLY_ERROR ? std::string(text_of(*reply))
                                                            : std::string("unexpected reply")));
        }
        notices_.set_listening(true);

        const auto on_reply = [this](const redisReply& message) {
            const redisReply* payload = message_payload(message);
            if (payload != nullptr && payload->type == REDIS_REPLY_STRING) {
                notices_.heard(text_of(*payload));
            }
        };
        SubscriptionLiveness liveness(ping_interval, ping_timeout, "lease listener");
        while (!stopping_.load()) {
            if (subscription_turn(conn.context(), wake_[0], liveness, on_reply))
                return;  // stopping
        }
    }

    class Refused : public BackendError {
    public:
        using BackendError::BackendError;
    };

    // The socket of the connection in use, for the destructor to shut; unpublished before
    // the connection closes it (declared after the connection).
    class Published {
    public:
        Published(LeaseListener& owner, int fd) : owner_(owner) {
            std::lock_guard lock(owner_.fd_mutex_);
            owner_.fd_ = fd;
        }
        Published(const Published&) = delete;
        Published& operator=(const Published&) = delete;
        ~Published() {
            std::lock_guard lock(owner_.fd_mutex_);
            owner_.fd_ = -1;
        }

    private:
        LeaseListener& owner_;
    };

    const Connect connect_;
    const std::string channel_;
    Counters counters_;  // its own: the backend's stats count the callers' round trips
    LeaseNotices& notices_;
    std::atomic<bool> stopping_{false};
    std::mutex fd_mutex_;
    int fd_ = -1;  // under fd_mutex_
    int wake_[2] = {-1, -1};
    std::thread thread_;  // last: starts after everything it uses exists
};

}  // namespace larder::redis_detail
