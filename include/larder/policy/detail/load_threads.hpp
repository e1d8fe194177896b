// Threads for loads a caller may stop waiting for (loader timeouts). Each load runs on a
// thread of its own, which finishes the load's work (its fill, its lease's release)
// whether or not its caller still waits; destruction waits for every one still running.
#pragma once

#include <chrono>
#include <condition_variable>
#include <exception>
#include <memory>
#include <mutex>
#include <optional>
#include <thread>
#include <utility>

namespace larder::detail {

/// The result of one load, handed from its thread to the caller waiting for it.
template <class R>
class LoadOutcome {
public:
    void set(std::optional<R> value, std::exception_ptr error) {
        {
            std::lock_guard lock(mutex_);
            value_ = std::move(value);
            error_ = std::move(error);
            done_ = true;
        }
        done_cv_.notify_all();
    }

    /// true when the load ended by `until`.
    bool wait_until(std::chrono::steady_clock::time_point until) {
        std::unique_lock lock(mutex_);
        return done_cv_.wait_until(lock, until, [&] { return done_; });
    }

    /// The value, or the loader's exception. Only after wait_until returned true.
    R take() {
        std::lock_guard lock(mutex_);
        if (error_) std::rethrow_exception(error_);
        return std::move(*value_);
    }

private:
    std::mutex mutex_;
    std::condition_variable done_cv_;
    bool done_ = false;
    std::optional<R> value_;
    std::exception_ptr error_;
};

class LoadThreads {
public:
    LoadThreads() = default;
    LoadThreads(const LoadThreads&) = delete;
    LoadThreads& operator=(const LoadThreads&) = delete;
    ~LoadThreads() { wait_idle(); }

    /// Runs `job` on a new thread. Throws std::system_error when no thread can be made.
    template <class Job>
    void start(Job job) {
        {
            std::lock_guard lock(mutex_);
            ++running_;
        }
        try {
            std::thread([this, job = std::move(job)]() mutable {
                {
                    // Everything the job holds (a lease's hold, the loader) goes before
                    // the count does: destruction may follow at once.
                    Job run = std::move(job);
                    try {
                        run();
                    } catch (...) {
                        // A job reports through what it shares with its caller; whatever
                        // else escapes it must not end the process.
                    }
                }
                std::lock_guard lock(mutex_);
                if (--running_ == 0) idle_.notify_all();
            }).detach();
        } catch (...) {
            std::lock_guard lock(mutex_);
            if (--running_ == 0) idle_.notify_all();
            throw;
        }
    }

    /// Blocks until no load started here is running.
    void wait_idle() {
        std::unique_lock lock(mutex_);
        idle_.wait(lock, [&] { return running_ == 0; });
    }

private:
    std::mutex mutex_;
    std::condition_variable idle_;
    std::size_t running_ = 0;
};

}  // namespace larder::detail
