// In-process single-flight: concurrent calls for one key share one execution. The first
// caller runs the function; the others wait and receive a copy of its result, or its
// exception. forget() detaches a key so that callers arriving after an invalidation start
// a fresh load instead of joining one that may have read the old data.
#pragma once

#include <condition_variable>
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
public:
    struct Result {
        V value;
        bool shared;  ///< true when another caller's execution produced it
    };

    template <class Fn>
    Result run(std::string_view key, Fn&& fn) {
        std::unique_lock lock(mutex_);
        if (auto it = calls_.find(key); it != calls_.end()) {
            std::shared_ptr<Call> call = it->second;
            lock.unlock();
            return Result{call->wait(), true};
        }
        auto call = std::make_shared<Call>();
        calls_.emplace(std::string(key), call);
        lock.unlock();

        std::optional<V> value;
        std::exception_ptr error;
        try {
            value.emplace(std::invoke(std::forward<Fn>(fn)));
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
    };

    struct Hash {
        using is_transparent = void;
        std::size_t operator()(std::string_view s) const noexcept {
            return std::hash<std::string_view>{}(s);
        }
    };

    mutable std::mutex mutex_;
    std::unordered_map<std::string, std::shared_ptr<Call>, Hash, std::equal_to<>> calls_;
};

}  // namespace larder
