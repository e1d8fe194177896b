// ConnectionPool: up to N connections shared by any number of threads, because a
// redisContext must only be used by one thread at a time.
//
//  - Lazy: a connection is opened when a caller needs one and none is idle.
//  - Bounded wait: with all N borrowed, a caller waits at most wait_timeout.
//  - Only healthy connections come back: one that saw an I/O error or a timeout is closed
//    when its lease ends (its reply stream no longer matches its requests). A lost peer
//    also closes the idle connections, which are most likely dead as well, so a Redis
//    restart costs the calls in flight, not one failure per pooled connection.
//  - While connecting fails, at most one attempt per backoff interval; other callers fail
//    at once instead of hammering a server that is down.
#pragma once

#include <chrono>
#include <condition_variable>
#include <cstddef>
#include <exception>
#include <functional>
#include <memory>
#include <mutex>
#include <string>
#include <utility>
#include <vector>

#include "larder/backend/redis/connection.hpp"
#include "larder/core/clock.hpp"
#include "larder/core/error.hpp"

namespace larder::redis_detail {

/// Every connection stayed borrowed for the whole wait. Not a sign of a sick server (the
/// application may simply run more concurrent calls than pool_size), so the circuit
/// breaker does not count it.
class PoolExhausted : public TimeoutError {
public:
    using TimeoutError::TimeoutError;
};

class ConnectionPool {
public:
    using Factory = std::function<std::unique_ptr<Connection>()>;

    struct Options {
        std::size_t size = 8;
        Millis wait_timeout{100};
        Millis reconnect_backoff{50};
    };

    /// A borrowed connection, returned (or closed) when the lease ends.
    class Lease {
    public:
        Lease(Lease&& other) noexcept
            : pool_(std::exchange(other.pool_, nullptr)), conn_(std::move(other.conn_)) {}
        Lease(const Lease&) = delete;
        Lease& operator=(const Lease&) = delete;
        Lease& operator=(Lease&&) = delete;
        ~Lease() {
            if (pool_ != nullptr && conn_) pool_->give_back(std::move(conn_));
        }

        Connection& operator*() const noexcept { return *conn_; }
        Connection* operator->() const noexcept { return conn_.get(); }

        /// Closes the connection now instead of returning it.
        void discard() noexcept {
            if (pool_ != nullptr && conn_) pool_->drop(std::move(conn_));
        }

    private:
        friend class ConnectionPool;
        Lease(ConnectionPool* pool, std::unique_ptr<Connection> conn) noexcept
            : pool_(pool), conn_(std::move(conn)) {}

        ConnectionPool* pool_;
        std::unique_ptr<Connection> conn_;
    };

    ConnectionPool(Options options, Factory factory, std::string where)
        : options_(options), factory_(std::move(factory)), where_(std::move(where)) {}

    ConnectionPool(const ConnectionPool&) = delete;
    ConnectionPool& operator=(const ConnectionPool&) = delete;

    /// An idle connection, or a new one. Throws PoolExhausted after wait_timeout, or what
    /// the factory throws (ConnectionError, TimeoutError) when connecting fails.
    [[nodiscard]] Lease borrow() {
        std::unique_lock lock(mutex_);
        const auto deadline = SteadyClock::now() + options_.wait_timeout;
        while (idle_.empty() && open_ >= options_.size) {
            if (available_.wait_until(lock, deadline) == std::cv_status::timeout && idle_.empty() &&
                open_ >= options_.size) {
                throw PoolExhausted("redis: all " + std::to_string(options_.size) +
                                    " connections to " + where_ + " stayed busy for " +
                                    std::to_string(options_.wait_timeout.count()) +
                                    " ms (pool_wait_timeout)");
            }
        }
        if (!idle_.empty()) {
            std::unique_ptr<Connection> conn = std::move(idle_.back());
            idle_.pop_back();
            return Lease(this, std::move(conn));
        }

        const auto now = SteadyClock::now();
        if (failing_ && (attempt_in_flight_ || now < next_attempt_)) {
            const auto wait = std::chrono::ceil<Millis>(next_attempt_ - now).count();
            throw ConnectionError("redis: not connected to " + where_ + " (" + last_error_ + "); " +
                                  (attempt_in_flight_
                                       ? std::string("another call is reconnecting")
                                       : "next attempt in " + std::to_string(wait) + " ms"));
        }
        ++open_;  // reserve the slot, then connect without holding the lock
        attempt_in_flight_ = failing_;
        lock.unlock();

        std::unique_ptr<Connection> conn;
        try {
            conn = factory_();
        } catch (const std::exception& e) {
            connect_failed(e.what());
            throw;
        } catch (...) {
            connect_failed("unknown error");
            throw;
        }
        lock.lock();
        failing_ = false;
        attempt_in_flight_ = false;
        return Lease(this, std::move(conn));
    }

    /// Closes the idle connections whose server hung up (killed by CLIENT KILL, an idle
    /// `timeout`, a restart): a tracking connection that closes must be noticed before it
    /// is next used, since Redis forgot what it tracked. Never blocks. Returns how many.
    std::size_t close_hung_up_idle() noexcept {
        std::vector<std::unique_ptr<Connection>> closing;
        {
            std::lock_guard lock(mutex_);
            try {
                closing.reserve(idle_.size());
            } catch (...) {
                return 0;
            }
            for (auto it = idle_.begin(); it != idle_.end();) {
                if (!(*it)->hung_up()) {
                    ++it;
                    continue;
                }
                closing.push_back(std::move(*it));
                it = idle_.erase(it);
                --open_;
            }
        }
        if (!closing.empty()) available_.notify_all();
        return closing.size();  // closed here, outside the lock
    }

    /// Closes every idle connection (the primary moved: new ones go to the new one).
    std::size_t close_idle() noexcept {
        std::vector<std::unique_ptr<Connection>> closing;
        {
            std::lock_guard lock(mutex_);
            open_ -= idle_.size();
            closing.swap(idle_);
        }
        if (!closing.empty()) available_.notify_all();
        return closing.size();
    }

    /// Connections open now, borrowed or idle.
    [[nodiscard]] std::size_t open_count() const {
        std::lock_guard lock(mutex_);
        return open_;
    }

    [[nodiscard]] std::size_t idle_count() const {
        std::lock_guard lock(mutex_);
        return idle_.size();
    }

private:
    using SteadyClock = std::chrono::steady_clock;

    void connect_failed(const char* what) {
        {
            std::lock_guard lock(mutex_);
            --open_;
            failing_ = true;
            attempt_in_flight_ = false;
            next_attempt_ = SteadyClock::now() + options_.reconnect_backoff;
            try {
                last_error_ = what;
            } catch (...) {
            }
        }
        available_.notify_one();
    }

    void drop(std::unique_ptr<Connection> conn) noexcept {
        {
            std::lock_guard lock(mutex_);
            --open_;
        }
        available_.notify_one();
        conn.reset();  // closed outside the lock
    }

    void give_back(std::unique_ptr<Connection> conn) noexcept {
        // Closed outside the lock: closing a socket is a syscall.
        std::vector<std::unique_ptr<Connection>> closing;
        {
            std::lock_guard lock(mutex_);
            if (conn->reusable()) {
                try {
                    idle_.push_back(std::move(conn));
                } catch (...) {
                    --open_;
                }
            } else {
                --open_;
                if (conn->lost()) {
                    open_ -= idle_.size();
                    closing.swap(idle_);
                }
            }
        }
        if (closing.empty() && !conn) {
            available_.notify_one();
        } else {
            available_.notify_all();
        }
        conn.reset();
        closing.clear();
    }

    const Options options_;
    const Factory factory_;
    const std::string where_;

    mutable std::mutex mutex_;
    std::condition_variable available_;
    std::vector<std::unique_ptr<Connection>> idle_;  // most recently used at the back
    std::size_t open_ = 0;
    bool failing_ = false;            // the last connect attempt failed
    bool attempt_in_flight_ = false;  // a connect is in progress while failing
    SteadyClock::time_point next_attempt_{};
    std::string last_error_;
};

}  // namespace larder::redis_detail
