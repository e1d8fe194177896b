// ConnectionPool: up to N connections shared by any number of threads, because a
// redisContext must only be used by one thread at a time.
//
//  - Lazy: a connection is opened when a caller needs one and none is idle.
//  - No lock on the way of a call: an idle connection is taken and given back with one
//    atomic exchange each, and a thread gets back the connection it had last, so 8
//    threads over a pool of 8 run like 8 threads with a connection each.
//  - Bounded, fair wait: with all N borrowed, callers queue, and a connection given back
//    goes to the longest waiter, not to whoever asks next; a caller waits at most
//    wait_timeout.
//  - Only healthy connections come back: one that saw an I/O error or a timeout is closed
//    when its lease ends (its reply stream no longer matches its requests). A lost peer
//    also closes the idle connections, which are most likely dead as well, so a Redis
//    restart costs the calls in flight, not one failure per pooled connection.
//  - While connecting fails, at most one attempt per backoff interval; other callers fail
//    at once instead of hammering a server that is down.
#pragma once

#include <algorithm>
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstddef>
#include <deque>
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
#include "larder/core/stats.hpp"

namespace larder::redis_detail {

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
            : pool_(std::exchange(other.pool_, nullptr)),
              conn_(std::move(other.conn_)),
              slot_(other.slot_) {}
        Lease(const Lease&) = delete;
        Lease& operator=(const Lease&) = delete;
        Lease& operator=(Lease&&) = delete;
        ~Lease() {
            if (pool_ != nullptr && conn_) pool_->give_back(std::move(conn_), slot_);
        }

        Connection& operator*() const noexcept { return *conn_; }
        Connection* operator->() const noexcept { return conn_.get(); }

        /// Closes the connection now instead of returning it.
        void discard() noexcept {
            if (pool_ != nullptr && conn_) pool_->drop(std::move(conn_));
        }

    private:
        friend class ConnectionPool;
        Lease(ConnectionPool* pool, std::unique_ptr<Connection> conn, std::size_t slot) noexcept
            : pool_(pool), conn_(std::move(conn)), slot_(slot) {}

        ConnectionPool* pool_;
        std::unique_ptr<Connection> conn_;
        std::size_t slot_;  // where it was idle, and goes back to first
    };

    ConnectionPool(Options options, Factory factory, std::string where)
        : options_(sanitized(options)),
          factory_(std::move(factory)),
          where_(std::move(where)),
          slots_(new std::atomic<Connection*>[options_.size]) {
        for (std::size_t i = 0; i < options_.size; ++i) slots_[i].store(nullptr);
    }

    ConnectionPool(const ConnectionPool&) = delete;
    ConnectionPool& operator=(const ConnectionPool&) = delete;

    ~ConnectionPool() {
        for (std::size_t i = 0; i < options_.size; ++i) delete slots_[i].exchange(nullptr);
    }

    /// An idle connection, or a new one. Throws PoolExhaustedError after wait_timeout, or what
    /// the factory throws (ConnectionError, TimeoutError) when connecting fails.
    [[nodiscard]] Lease borrow() {
        std::size_t slot = home_slot();
        // With callers queued, a newcomer queues behind them instead of taking the next
        // connection given back.
        if (waiting_.load() == 0) {
            if (Connection* idle = take_idle(slot)) return lease(idle, slot);
        }

        std::unique_lock lock(mutex_);
        const auto deadline = SteadyClock::now() + options_.wait_timeout;
        Waiter me;
        bool first = false;  // woken to open a connection: keep its place at the front
        while (open_ >= options_.size) {
            // Queued before the last look, so that a connection given back after that
            // look finds this caller in the queue and is handed to it (put_idle reads
            // waiting_ after it filled the slot; both sequentially consistent).
            enqueue(me, first);
            Connection* idle = take_idle(slot);
            if (idle == nullptr) {
                me.cv.wait_until(lock, deadline, [&] { return me.handed || me.woken; });
            }
            if (!me.handed && !me.woken) dequeue(me);  // found one, or timed out
            if (me.handed) {
                idle = me.conn;
                slot = me.slot;
            }
            if (idle != nullptr) return lease(idle, slot);
            if (!me.woken) {
                throw PoolExhaustedError("redis: all " + std::to_string(options_.size) +
                                         " connections to " + where_ + " stayed busy for " +
                                         std::to_string(options_.wait_timeout.count()) +
                                         " ms (pool_wait_timeout)");
            }
            me.woken = false;  // a connection closed: its place may be this caller's
            first = true;
        }

        const auto now = SteadyClock::now();
        if (failing_ && (attempt_in_flight_ || now < next_attempt_)) {
            // The place to open a connection is free but may not be used yet: the next
            // waiter learns the same at once, rather than sleeping out its wait_timeout
            // (or for ever) with nobody left to wake it.
            wake_to_open(1);
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
        return Lease(this, std::move(conn), slot);
    }

    /// Closes the idle connections whose server hung up (killed by CLIENT KILL, an idle
    /// `timeout`, a restart): a tracking connection that closes must be noticed before it
    /// is next used, since Redis forgot what it tracked. Never blocks. Returns how many.
    std::size_t close_hung_up_idle() noexcept {
        return close_idle_if([](const Connection& c) { return c.hung_up(); });
    }

    /// Closes every idle connection (the primary moved: new ones go to the new one).
    std::size_t close_idle() noexcept {
        return close_idle_if([](const Connection&) { return true; });
    }

    /// Connections open now, borrowed or idle.
    [[nodiscard]] std::size_t open_count() const {
        std::lock_guard lock(mutex_);
        return open_;
    }

    /// Callers queued for a connection now (a moment's view).
    [[nodiscard]] std::size_t waiting_count() const noexcept { return waiting_.load(); }

    /// Connections idle now (a moment's view: callers take and return them meanwhile).
    [[nodiscard]] std::size_t idle_count() const noexcept {
        std::size_t n = 0;
        for (std::size_t i = 0; i < options_.size; ++i) n += slots_[i].load() != nullptr ? 1 : 0;
        return n;
    }

private:
    using SteadyClock = std::chrono::steady_clock;

    // A caller queued for a connection. On the caller's stack; in waiters_ until it is
    // handed a connection, woken, or gives up.
    struct Waiter {
        std::condition_variable cv;
        Connection* conn = nullptr;  // handed over by a give-back
        std::size_t slot = 0;
        bool handed = false;
        bool woken = false;  // a connection closed: this caller may open one
    };

    static Options sanitized(Options o) noexcept {
        o.size = std::max<std::size_t>(o.size, 1);
        // "Wait for ever" (Millis::max()) must not overflow now() + timeout.
        o.wait_timeout = saturated(o.wait_timeout);
        o.reconnect_backoff = saturated(o.reconnect_backoff);
        return o;
    }

    // Under mutex_.
    void enqueue(Waiter& w, bool first) {
        if (first) {
            waiters_.push_front(&w);
        } else {
            waiters_.push_back(&w);
        }
        waiting_.fetch_add(1);
    }

    // Under mutex_.
    void dequeue(Waiter& w) noexcept {
        const auto it = std::find(waiters_.begin(), waiters_.end(), &w);
        if (it == waiters_.end()) return;
        waiters_.erase(it);
        waiting_.fetch_sub(1);
    }

    // Under mutex_: the longest waiter, taken off the queue; nullptr if none.
    Waiter* next_waiter() noexcept {
        if (waiters_.empty()) return nullptr;
        Waiter* w = waiters_.front();
        waiters_.pop_front();
        waiting_.fetch_sub(1);
        return w;
    }

    // Under mutex_: hands `conn` to the longest waiter; false if none waits. Notified
    // under the lock: the waiter cannot leave (and take its Waiter off its stack) before
    // the lock is released.
    bool hand_over(Connection* conn, std::size_t slot) noexcept {
        Waiter* w = next_waiter();
        if (w == nullptr) return false;
        w->conn = conn;
        w->slot = slot;
        w->handed = true;
        w->cv.notify_one();
        return true;
    }

    // Under mutex_: `n` connections closed; as many waiters may open new ones.
    void wake_to_open(std::size_t n) noexcept {
        for (; n > 0; --n) {
            Waiter* w = next_waiter();
            if (w == nullptr) return;
            w->woken = true;
            w->cv.notify_one();
        }
    }

    Lease lease(Connection* idle, std::size_t slot) noexcept {
        return Lease(this, std::unique_ptr<Connection>(idle), slot);
    }

    // Where this thread looks first: the slot of the connection it had last, so that each
    // thread tends to get its own connection back (no two threads contend for one slot,
    // and the connection's buffers are warm in this core's cache). One hint per thread,
    // shared by every pool.
    [[nodiscard]] std::size_t home_slot() const noexcept { return home_hint() % options_.size; }

    static std::size_t& home_hint() noexcept {
        thread_local std::size_t last = detail::thread_ordinal();
        return last;
    }

    // An idle connection, looking from `slot` on; sets `slot` to where it was found.
    Connection* take_idle(std::size_t& slot) noexcept {
        const std::size_t n = options_.size;
        for (std::size_t i = 0; i < n; ++i) {
            const std::size_t at = (slot + i) % n;
            // Sequentially consistent: a waiter's look must not miss a connection put
            // there before the giver read waiting_ (see put_idle).
            if (slots_[at].load() == nullptr) continue;
            if (Connection* c = slots_[at].exchange(nullptr)) {
                slot = at;
                home_hint() = at;
                return c;
            }
        }
        return nullptr;
    }

    // Makes `conn` idle, in `slot` if that is free. There is always a free slot: every
    // open connection has one, and open_ never exceeds their number.
    void put_idle(std::unique_ptr<Connection> conn, std::size_t slot) noexcept {
        if (waiting_.load() > 0) {
            std::lock_guard lock(mutex_);
            if (hand_over(conn.get(), slot)) {
                (void)conn.release();  // the waiter's now
                return;
            }
        }
        const std::size_t n = options_.size;
        bool placed = false;
        for (std::size_t i = 0; i < n && !placed; ++i) {
            Connection* empty = nullptr;
            placed = slots_[(slot + i) % n].compare_exchange_strong(empty, conn.get());
        }
        if (!placed) {  // cannot happen while open_ is right; closing beats losing track
            drop(std::move(conn));
            return;
        }
        (void)conn.release();  // owned by its slot now
        if (waiting_.load() > 0) {
            // A caller queued after the check above and may have looked before the slot
            // was filled: hand what is idle to the queue. Under the lock, which a waiter
            // holds from its last look until it sleeps.
            std::lock_guard lock(mutex_);
            while (!waiters_.empty()) {
                std::size_t at = slot;
                Connection* idle = take_idle(at);
                if (idle == nullptr) break;
                (void)hand_over(idle, at);
            }
        }
    }

    template <class Predicate>
    std::size_t close_idle_if(Predicate close) noexcept {
        std::vector<std::unique_ptr<Connection>> closing;
        try {
            closing.reserve(options_.size);
        } catch (...) {
            return 0;
        }
        for (std::size_t i = 0; i < options_.size; ++i) {
            std::unique_ptr<Connection> c(slots_[i].exchange(nullptr));
            if (!c) continue;
            if (close(*c)) {
                closing.push_back(std::move(c));
            } else {
                put_idle(std::move(c), i);
            }
        }
        if (!closing.empty()) {
            std::lock_guard lock(mutex_);
            open_ -= closing.size();
            wake_to_open(closing.size());
        }
        return closing.size();  // closed here, outside the lock
    }

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
            wake_to_open(1);  // to fail at once with this error rather than time out
        }
    }

    void drop(std::unique_ptr<Connection> conn) noexcept {
        {
            std::lock_guard lock(mutex_);
            --open_;
            wake_to_open(1);
        }
        conn.reset();  // closed outside the lock
    }

    void give_back(std::unique_ptr<Connection> conn, std::size_t slot) noexcept {
        if (conn->reusable()) {
            put_idle(std::move(conn), slot);
            return;
        }
        // A lost peer: the idle connections to it are most likely dead as well.
        if (conn->lost()) close_idle();
        drop(std::move(conn));
    }

    const Options options_;
    const Factory factory_;
    const std::string where_;

    // Idle connections, one slot per connection the pool may open: taken and given back
    // with one atomic exchange each, without the mutex. The mutex serializes what is rare:
    // opening a connection, waiting while every one is borrowed, closing idle ones.
    const std::unique_ptr<std::atomic<Connection*>[]> slots_;
    std::atomic<std::size_t> waiting_{0};  // waiters_.size(), read without the lock

    mutable std::mutex mutex_;
    std::deque<Waiter*> waiters_;     // oldest first
    std::size_t open_ = 0;            // borrowed, idle, or being opened
    bool failing_ = false;            // the last connect attempt failed
    bool attempt_in_flight_ = false;  // a connect is in progress while failing
    SteadyClock::time_point next_attempt_{};
    std::string last_error_;
};

}  // namespace larder::redis_detail
