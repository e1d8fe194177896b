// Keeps leases alive while their loaders run. A loader slower than the lease TTL would
// otherwise lose its lease mid-load, letting a second process take it and load too. One
// thread per cache, started on first use, extends every held lease every lease_ttl / 3 by
// compare-and-expire (only the holder's own bytes are extended, never someone else's),
// for at most max_hold: a loader that hangs must not hold its key for ever.
#pragma once

#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <map>
#include <mutex>
#include <string>
#include <thread>
#include <utility>

#include "larder/backend/backend.hpp"
#include "larder/core/error.hpp"

namespace larder::detail {

template <Backend B>
class LeaseKeeper {
public:
    LeaseKeeper(B& backend, Millis lease_ttl, Millis max_hold)
        : backend_(backend), lease_ttl_(lease_ttl), max_hold_(max_hold) {}

    LeaseKeeper(const LeaseKeeper&) = delete;
    LeaseKeeper& operator=(const LeaseKeeper&) = delete;

    ~LeaseKeeper() {
        {
            std::lock_guard lock(mutex_);
            stopping_ = true;
        }
        wake_.notify_all();
        if (thread_.joinable()) thread_.join();
    }

    /// Extends the lease until the returned object is destroyed.
    class Hold {
    public:
        Hold(LeaseKeeper* keeper, std::uint64_t id) : keeper_(keeper), id_(id) {}
        Hold(Hold&& other) noexcept
            : keeper_(std::exchange(other.keeper_, nullptr)), id_(other.id_) {}
        Hold(const Hold&) = delete;
        Hold& operator=(const Hold&) = delete;
        Hold& operator=(Hold&&) = delete;
        ~Hold() {
            if (keeper_) keeper_->release(id_);
        }

    private:
        LeaseKeeper* keeper_;
        std::uint64_t id_;
    };

    [[nodiscard]] Hold hold(const std::string& key, const std::string& lease) {
        std::lock_guard lock(mutex_);
        const std::uint64_t id = next_id_++;
        const auto now = std::chrono::steady_clock::now();
        const auto until = max_hold_ >= std::chrono::duration_cast<Millis>(
                                            std::chrono::steady_clock::time_point::max() - now)
                               ? std::chrono::steady_clock::time_point::max()
                               : now + max_hold_;
        held_.emplace(id, Held{key, lease, until});
        if (!thread_.joinable()) thread_ = std::thread([this] { run(); });
        return Hold(this, id);
    }

    /// Leases extended so far (for tests and monitoring).
    [[nodiscard]] std::uint64_t extensions() const {
        std::lock_guard lock(mutex_);
        return extensions_;
    }

private:
    void release(std::uint64_t id) {
        std::lock_guard lock(mutex_);
        held_.erase(id);
    }

    void run() {
        const auto period = std::max(lease_ttl_ / 3, Millis{1});
        std::unique_lock lock(mutex_);
        while (!stopping_) {
            wake_.wait_for(lock, period, [&] { return stopping_; });
            if (stopping_) break;
            // Copy, so the store is not called under the lock that hold()/release() take.
            auto snapshot = held_;
            lock.unlock();
            std::uint64_t extended = 0;
            const auto now = std::chrono::steady_clock::now();
            for (const auto& [id, held] : snapshot) {
                if (now >= held.until) continue;  // left to run out
                try {
                    if (backend_.compare_and_expire(held.key, held.lease, lease_ttl_)) {
                        ++extended;
                    }
                } catch (const std::exception&) {
                    // Whatever the store threw: this thread must not end the process.
                    // The lease runs out; the fill is fenced anyway.
                }
            }
            lock.lock();
            extensions_ += extended;
        }
    }

    struct Held {
        std::string key;
        std::string lease;
        std::chrono::steady_clock::time_point until;  // extended until then
    };

    B& backend_;
    const Millis lease_ttl_;
    const Millis max_hold_;
    mutable std::mutex mutex_;
    std::condition_variable wake_;
    std::map<std::uint64_t, Held> held_;
    std::uint64_t next_id_ = 0;
    std::uint64_t extensions_ = 0;
    bool stopping_ = false;
    std::thread thread_;
};

}  // namespace larder::detail
