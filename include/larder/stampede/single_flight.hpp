// In-process single-flight: concurrent calls for one key share one execution. The first
// caller runs the function; the others wait and receive a copy of its result, or its
// exception. forget() detaches a key so that callers arriving after an invalidation start
// a fresh load instead of joining one that may have read the old data.
//
// A leader can also publish a *fence* (CacheAside: its lease bytes), and a caller joins
// only if what it saw agrees with it (may_join). A caller that finds the leader's lease
// gone knows an invalidation, maybe in another process, fenced that load off, and starts
// its own instead of sharing a value read before the write.
#pragma once

#include <atomic>
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

namespace larder {

template <class V>
class SingleFlight {
    class Call;

public:
    struct Result {
        V value;
        bool shared;  ///< true when another caller's execution produced it
    };

    /// What the leader's function receives: a way to publish its fence.
    class Leader {
    public:
        void set_fence(std::string fence) {
            call_.set_fence(std::move(fence), flight_.fences_.fetch_add(1) + 1);
        }

    private:
        friend class SingleFlight;
        Leader(SingleFlight& flight, Call& call) : flight_(flight), call_(call) {}
        SingleFlight& flight_;
        Call& call_;
    };

    /// A counter of fences set so far. A caller takes it before it reads, so that
    /// may_join can tell a fence set after its read (it could not have seen it) from one
    /// it should have seen.
    [[nodiscard]] std::uint64_t fences_set() const noexcept { return fences_.load(); }

    template <class Fn>
    Result run(std::string_view key, Fn&& fn) {
        return run(
            key, [&](Leader&) { return std::invoke(fn); },
            [](std::string_view, std::uint64_t) { return true; });
    }

    /// fn(Leader&) runs when this caller leads; may_join(fence, fence_number) decides, for
    /// a caller that finds a load in flight, whether to share it (the fence is empty until
    /// the leader sets one; fence_number is fences_set() just after it was set). A caller
    /// that may not join replaces it as the key's load.
    template <class Fn, class MayJoin>
    Result run(std::string_view key, Fn&& fn, MayJoin&& may_join) {
        std::unique_lock lock(mutex_);
        auto it = calls_.find(key);
        if (it != calls_.end()) {
            auto [fence, number] = it->second->fence();
            if (!may_join(std::string_view(fence), number)) it = calls_.end();
        }
        if (it != calls_.end()) {
            std::shared_ptr<Call> call = it->second;
            lock.unlock();
            return Result{call->wait(), true};
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
        void set_fence(std::string fence, std::uint64_t number) {
            std::lock_guard lock(mutex_);
            fence_ = std::move(fence);
            fence_number_ = number;
        }
        std::pair<std::string, std::uint64_t> fence() {
            std::lock_guard lock(mutex_);
            return {fence_, fence_number_};
        }

        V wait() {
            std::unique_lock lock(mutex_);
            done_cv_.wait(lock, [&] { return done_; });
            if (error_) std::rethrow_exception(error_);
            return *value_;
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
        std::uint64_t fence_number_ = 0;
    };

    struct Hash {
        using is_transparent = void;
        std::size_t operator()(std::string_view s) const noexcept {
            return std::hash<std::string_view>{}(s);
        }
    };

    std::atomic<std::uint64_t> fences_{0};
    mutable std::mutex mutex_;
    std::unordered_map<std::string, std::shared_ptr<Call>, Hash, std::equal_to<>> calls_;
};

}  // namespace larder
