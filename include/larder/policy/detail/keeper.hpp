// Keeps leases and claims alive while their holders work: a lease while its loader runs
// (LeaseKeeper), a write-behind claim while its batch writer runs (ClaimKeeper). A holder
// slower than the TTL would otherwise lose what it holds mid-work and let a second process
// do the same work at the same time.
//
// One thread per cache, started on first use, serves every kind: each held task runs every
// `period` (a third of its TTL) until its Hold is destroyed. Destroying a Hold waits for a
// run of its task in progress, so a task may use anything its holder keeps alive.
#pragma once

#include <algorithm>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <thread>
#include <utility>
#include <vector>

#include "larder/core/clock.hpp"

namespace larder::detail {

class Keeper {
public:
    using Task = std::function<void()>;

    Keeper() = default;
    Keeper(const Keeper&) = delete;
    Keeper& operator=(const Keeper&) = delete;

    ~Keeper() {
        {
            std::lock_guard lock(mutex_);
            stopping_ = true;
        }
        wake_.notify_all();
        if (thread_.joinable()) thread_.join();
    }

    /// Runs the task every period until destroyed.
    class Hold {
    public:
        Hold(Keeper* keeper, std::uint64_t id) : keeper_(keeper), id_(id) {}
        Hold(Hold&& other) noexcept
            : keeper_(std::exchange(other.keeper_, nullptr)), id_(other.id_) {}
        Hold(const Hold&) = delete;
        Hold& operator=(const Hold&) = delete;
        Hold& operator=(Hold&&) = delete;
        ~Hold() {
            if (keeper_) keeper_->release(id_);
        }

    private:
        Keeper* keeper_;
        std::uint64_t id_;
    };

    /// `task` must not throw (what it throws is dropped: this thread must not end the
    /// process) and must not destroy a Hold of this keeper.
    [[nodiscard]] Hold hold(Millis period, Task task) {
        // At least hourly: extending more often than needed is harmless, and now + period
        // cannot overflow whatever TTL the caller chose (Millis::max() included).
        period = std::clamp(period, Millis{1}, Millis{std::chrono::hours(1)});
        std::lock_guard lock(mutex_);
        const std::uint64_t id = ++last_id_;
        const auto next = Clock::now() + period;
        tasks_.emplace(id, Entry{period, next, std::make_shared<const Task>(std::move(task))});
        if (!thread_.joinable()) {
            thread_ = std::thread([this] { run(); });
        } else if (next < wakes_at_) {
            // Due before the thread's next look (always, while it has nothing to do); with
            // one period per cache, a new lease is due after every held one and wakes no one.
            wake_.notify_all();
        }
        return Hold(this, id);
    }

private:
    using Clock = std::chrono::steady_clock;

    struct Entry {
        Millis period;
        Clock::time_point next;
        std::shared_ptr<const Task> task;
    };

    void release(std::uint64_t id) {
        std::unique_lock lock(mutex_);
        tasks_.erase(id);
        ran_.wait(lock, [&] { return running_ != id; });
    }

    void run() {
        std::unique_lock lock(mutex_);
        while (!stopping_) {
            auto next = Clock::time_point::max();
            for (const auto& [id, e] : tasks_) next = std::min(next, e.next);
            wakes_at_ = next;
            if (next == Clock::time_point::max()) {
                wake_.wait(lock);
            } else {
                wake_.wait_until(lock, next);
            }
            wakes_at_ = Clock::time_point::min();  // awake: it looks at every task again
            if (stopping_) break;
            const auto now = Clock::now();
            std::vector<std::uint64_t> due;
            for (const auto& [id, e] : tasks_) {
                if (e.next <= now) due.push_back(id);
            }
            for (const std::uint64_t id : due) {
                const auto it = tasks_.find(id);
                if (it == tasks_.end()) continue;  // released while an earlier task ran
                const auto task = it->second.task;
                running_ = id;
                lock.unlock();
                try {
                    (*task)();
                } catch (...) {
                }
                lock.lock();
                running_ = 0;
                ran_.notify_all();
                if (const auto again = tasks_.find(id); again != tasks_.end()) {
                    again->second.next = Clock::now() + again->second.period;
                }
            }
        }
    }

    std::mutex mutex_;
    std::condition_variable wake_;  // the thread: a new task, or stop
    std::condition_variable ran_;   // release(): the task it waits for has run
    std::map<std::uint64_t, Entry> tasks_;
    std::uint64_t last_id_ = 0;
    std::uint64_t running_ = 0;  // the id of the task running now, 0 for none
    Clock::time_point wakes_at_ = Clock::time_point::min();  // when the thread looks next
    bool stopping_ = false;
    std::thread thread_;
};

}  // namespace larder::detail
