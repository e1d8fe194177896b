// In-process single-flight: concurrent calls for one key share one execution. The first
// caller runs the function; the others wait and receive a copy of its result, or its
// exception. forget() detaches a key so that callers arriving after an invalidation start
// a fresh load instead of joining one that may have read the old data.
//
// Sharing a result is safe only if it was observed after the joiner's own read began: a
// caller that starts after an invalidation returned must never receive a value read
// before it. So a leader marks every observation that can produce its result (a load
// starting, a poll of the store) with a number from a counter, and a caller takes the
// counter before its read. A caller shares a result observed after that, or one fenced by
// a lease the caller itself saw (the leader's own lease, still there when the caller
// read: no invalidation came between); any other result it discards, and loads itself.
#pragma once

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <exception>
#include <functional>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <string_view>
#include <unordered_map>
#include <utility>

#include "larder/core/error.hpp"

namespace larder {

template <class V>
class SingleFlight {
    class Call;

public:
    struct Result {
        V value;
        bool shared;  ///< true when another caller's execution produced it
    };

    /// What the leader's function receives: a way to publish its fence and to mark the
    /// observations its result may come from.
    class Leader {
    public:
        /// The leader now holds this lease; its load is fenced by it.
        void set_fence(std::string fence) { call_.set_fence(std::move(fence)); }
        /// Call right before each store read or load whose result the leader may return.
        void observe() { call_.observe(flight_.counter_.fetch_add(1) + 1); }

    private:
        friend class SingleFlight;
        Leader(SingleFlight& flight, Call& call) : flight_(flight), call_(call) {}
        SingleFlight& flight_;
        Call& call_;
    };

    /// The observation counter. A caller takes it before it reads the store; a result
    /// observed at a higher number was observed after that read began.
    [[nodiscard]] std::uint64_t now() const noexcept { return counter_.load(); }

    template <class Fn>
    Result run(std::string_view key, Fn&& fn) {
        return run(
            key, [&](Leader&) { return std::invoke(fn); },
            [](std::string_view, std::uint64_t) { return true; });
    }

    /// fn(Leader&) runs when this caller leads. A caller that finds a load in flight
    /// shares its result if accept(fence, observation) holds for it, with the leader's
    /// fence (empty if none) and the number of the observation that produced the result
    /// (0 before the leader observed anything). A result it does not accept it discards,
    /// and leads a load of its own. A leader that already published a fence the caller
    /// would not accept is not joined at all. A caller that waits for another's load past
    /// `deadline` throws LoadTimeoutError.
    template <class Fn, class Accept>
    Result run(std::string_view key, Fn&& fn, Accept&& accept,
               std::chrono::steady_clock::time_point deadline =
                   std::chrono::steady_clock::time_point::max()) {
        std::unique_lock lock(mutex_);
        if (auto it = calls_.find(key); it != calls_.end()) {
            std::shared_ptr<Call> call = it->second;
            lock.unlock();
            auto [fence, observed] = call->fence();
            // Skip the wait only for a leader that is surely of no use: it has observed
            // and published a fence this caller does not accept. One that has not yet
            // published its fence may still publish an acceptable one.
            if (observed == 0 || fence.empty() || accept(std::string_view(fence), observed)) {
                auto outcome = call->wait_until(deadline);
                if (accept(std::string_view(outcome.fence), outcome.observed)) {
                    if (outcome.error) std::rethrow_exception(outcome.error);
                    return Result{std::move(*outcome.value), true};
                }
            }
            lock.lock();
        }
        auto call = std::make_shared<Call>();
        calls_.insert_or_assign(std::string(key), call);
        lock.unlock();

        std::optional<V> value;
        std::exception_ptr error;
        try {
            Leader leader(*this, *call);
            value.emplace(std::invoke(std::forward<Fn>(fn), leader));
        } catch (...) {
            error = std::current_exception();
        }

        lock.lock();
        if (auto it = calls_.find(key); it != calls_.end() && it->second == call) calls_.erase(it);
        lock.unlock();
        call->finish(value, error);
        if (error) std::rethrow_exception(error);
        return Result{std::move(*value), false};
    }

    /// New callers for `key` start a new execution; current waiters keep the old one.
    void forget(std::string_view key) {
        std::lock_guard lock(mutex_);
        if (auto it = calls_.find(key); it != calls_.end()) calls_.erase(it);
    }

    [[nodiscard]] std::size_t in_flight() const {
        std::lock_guard lock(mutex_);
        return calls_.size();
    }

private:
    class Call {
    public:
        struct Outcome {
            std::optional<V> value;
            std::exception_ptr error;
            std::string fence;
            std::uint64_t observed = 0;
        };

        void set_fence(std::string fence) {
            std::lock_guard lock(mutex_);
            fence_ = std::move(fence);
        }
        void observe(std::uint64_t number) {
            std::lock_guard lock(mutex_);
            observed_ = number;
        }
        std::pair<std::string, std::uint64_t> fence() {
            std::lock_guard lock(mutex_);
            return {fence_, observed_};
        }

        Outcome wait_until(std::chrono::steady_clock::time_point deadline) {
            std::unique_lock lock(mutex_);
            if (deadline == std::chrono::steady_clock::time_point::max()) {
                done_cv_.wait(lock, [&] { return done_; });
            } else if (!done_cv_.wait_until(lock, deadline, [&] { return done_; })) {
                throw LoadTimeoutError("larder: the shared load took longer than hard_timeout");
            }
            return Outcome{value_, error_, fence_, observed_};
        }

        void finish(const std::optional<V>& value, std::exception_ptr error) {
            {
                std::lock_guard lock(mutex_);
                value_ = value;
                error_ = std::move(error);
                done_ = true;
            }
            done_cv_.notify_all();
        }

    private:
        std::mutex mutex_;
        std::condition_variable done_cv_;
        bool done_ = false;
        std::optional<V> value_;
        std::exception_ptr error_;
        std::string fence_;
        std::uint64_t observed_ = 0;
    };

    struct Hash {
        using is_transparent = void;
        std::size_t operator()(std::string_view s) const noexcept {
            return std::hash<std::string_view>{}(s);
        }
    };

    std::atomic<std::uint64_t> counter_{0};
    mutable std::mutex mutex_;
    std::unordered_map<std::string, std::shared_ptr<Call>, Hash, std::equal_to<>> calls_;
};

}  // namespace larder
