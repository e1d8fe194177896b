// Keeps a flusher's claims alive while its batch writer runs. A claim has a deadline so that
// the entries of a flusher that died are re-queued by any other; a live flusher whose
// writer is merely slow must not lose its claims that way, or a second flusher would write
// the same keys at the same time. One thread per WriteBehind, started on first use,
// extends every held claim every claim_ttl / 3. The store extends only claims still held
// under their token and not yet expired: a claim that ran out (the process stalled, or
// Redis paused, for longer than claim_ttl) is forfeit, and its settle will be refused.
#pragma once

#include <algorithm>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <map>
#include <mutex>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "larder/core/clock.hpp"
#include "larder/core/error.hpp"
#include "larder/core/random.hpp"

namespace larder::detail {

template <class Store>
class ClaimKeeper {
public:
    ClaimKeeper(Store& store, Millis claim_ttl) : store_(store), claim_ttl_(claim_ttl) {}

    ClaimKeeper(const ClaimKeeper&) = delete;
    ClaimKeeper& operator=(const ClaimKeeper&) = delete;

    ~ClaimKeeper() {
        {
            std::lock_guard lock(mutex_);
            stopping_ = true;
        }
        wake_.notify_all();
        if (thread_.joinable()) thread_.join();
    }

    class Hold {
    public:
        Hold(ClaimKeeper* keeper, std::uint64_t id) : keeper_(keeper), id_(id) {}
        Hold(Hold&& other) noexcept
            : keeper_(std::exchange(other.keeper_, nullptr)), id_(other.id_) {}
        Hold(const Hold&) = delete;
        Hold& operator=(const Hold&) = delete;
        Hold& operator=(Hold&&) = delete;
        ~Hold() {
            if (keeper_) keeper_->release(id_);
        }

    private:
        ClaimKeeper* keeper_;
        std::uint64_t id_;
    };

    [[nodiscard]] Hold hold(std::vector<std::string> keys, std::uint64_t token) {
        std::lock_guard lock(mutex_);
        const std::uint64_t id = next_id_++;
        held_.emplace(id, Claim{std::move(keys), token});
        if (!thread_.joinable()) thread_ = std::thread([this] { run(); });
        return Hold(this, id);
    }

    /// Extension rounds that reached the store (for tests and monitoring).
    [[nodiscard]] std::uint64_t extensions() const {
        std::lock_guard lock(mutex_);
        return extensions_;
    }

    /// Keys whose claim the store would not extend: it had expired, or another flusher
    /// held the key.
    [[nodiscard]] std::uint64_t forfeited() const {
        std::lock_guard lock(mutex_);
        return forfeited_;
    }

private:
    void release(std::uint64_t id) {
        std::lock_guard lock(mutex_);
        held_.erase(id);
    }

    void run() {
        const auto period = std::max(claim_ttl_ / 3, Millis{1});
        std::unique_lock lock(mutex_);
        while (!stopping_) {
            wake_.wait_for(lock, period, [&] { return stopping_; });
            if (stopping_) break;
            std::vector<Claim> claims;
            for (const auto& [id, claim] : held_) claims.push_back(claim);
            if (claims.empty()) continue;
            lock.unlock();
            bool reached = false;
            std::uint64_t forfeited = 0;
            for (const Claim& claim : claims) {
                try {
                    const std::size_t n = store_.extend(claim.keys, claim_ttl_, claim.token);
                    forfeited += claim.keys.size() - std::min(n, claim.keys.size());
                    reached = true;
                } catch (const std::exception&) {
                    // Whatever the store threw: this thread must not end the process.
                    // The claims may run out: the entries are then flushed again by
                    // someone else, which a version-fenced database write makes harmless.
                }
            }
            lock.lock();
            if (reached) ++extensions_;
            forfeited_ += forfeited;
        }
    }

    Store& store_;
    const Millis claim_ttl_;
    mutable std::mutex mutex_;
    std::condition_variable wake_;
    struct Claim {
        std::vector<std::string> keys;
        std::uint64_t token = 0;
    };
    std::map<std::uint64_t, Claim> held_;
    std::uint64_t next_id_ = 0;
    std::uint64_t extensions_ = 0;
    std::uint64_t forfeited_ = 0;
    bool stopping_ = false;
    std::thread thread_;
};

/// Exponential backoff with "equal jitter": half the delay is fixed, half random, so
/// retries of a batch that failed together spread out but never come back at once.
/// `attempt` is 1 for the first retry.
inline Millis retry_delay(std::uint32_t attempt, Millis first, Millis max) {
    const std::int64_t cap = std::max<std::int64_t>(max.count(), 0);
    std::int64_t d = std::max<std::int64_t>(first.count(), 0);
    for (std::uint32_t i = 1; i < attempt && d < cap; ++i) d *= 2;
    d = std::min(d, cap);
    if (d <= 1) return Millis{d};
    return Millis{d / 2 + random_between(0, d - d / 2)};
}

}  // namespace larder::detail
