// A single worker thread for refreshes that readers elected but do not wait for (XFetch
// with background = true). Started on first use; a key already queued or running is not
// queued twice; destruction drops what has not started and waits for what has.
#pragma once

#include <condition_variable>
#include <deque>
#include <functional>
#include <mutex>
#include <set>
#include <string>
#include <thread>
#include <utility>

namespace larder::detail {

class BackgroundWorker {
public:
    BackgroundWorker() = default;
    BackgroundWorker(const BackgroundWorker&) = delete;
    BackgroundWorker& operator=(const BackgroundWorker&) = delete;

    ~BackgroundWorker() {
        {
            std::lock_guard lock(mutex_);
            stopping_ = true;
            queue_.clear();
        }
        wake_.notify_all();
        if (thread_.joinable()) thread_.join();
    }

    /// false when `key` is already queued or running.
    bool submit(std::string key, std::function<void()> job) {
        std::lock_guard lock(mutex_);
        if (stopping_ || !keys_.insert(key).second) return false;
        queue_.emplace_back(std::move(key), std::move(job));
        if (!thread_.joinable()) thread_ = std::thread([this] { run(); });
        wake_.notify_one();
        return true;
    }

    /// Blocks until nothing is queued or running (tests use it to observe a refresh).
    void drain() {
        std::unique_lock lock(mutex_);
        idle_.wait(lock, [&] { return keys_.empty(); });
    }

private:
    void run() {
        std::unique_lock lock(mutex_);
        for (;;) {
            wake_.wait(lock, [&] { return stopping_ || !queue_.empty(); });
            if (stopping_) break;
            auto [key, job] = std::move(queue_.front());
            queue_.pop_front();
            lock.unlock();
            try {
                job();
            } catch (...) {
                // A background refresh has no caller to report to; the job counts its errors.
            }
            lock.lock();
            keys_.erase(key);
            if (keys_.empty()) idle_.notify_all();
        }
        keys_.clear();
        idle_.notify_all();
    }

    std::mutex mutex_;
    std::condition_variable wake_;
    std::condition_variable idle_;
    std::deque<std::pair<std::string, std::function<void()>>> queue_;
    std::set<std::string> keys_;
    bool stopping_ = false;
    std::thread thread_;
};

}  // namespace larder::detail
