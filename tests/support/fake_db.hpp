// A tiny thread-safe "database" for strategy tests: rows by key, a query counter, and
// hooks to stall a read so a test can interleave a writer deterministically.
#pragma once

#include <atomic>
#include <condition_variable>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <string>

namespace larder::test {

class FakeDb {
public:
    std::optional<std::string> read(const std::string& key) {
        reads_.fetch_add(1);
        std::lock_guard lock(mutex_);
        auto it = rows_.find(key);
        if (it == rows_.end()) return std::nullopt;
        return it->second;
    }

    void write(const std::string& key, std::string value) {
        writes_.fetch_add(1);
        std::lock_guard lock(mutex_);
        rows_[key] = std::move(value);
    }

    void erase(const std::string& key) {
        std::lock_guard lock(mutex_);
        rows_.erase(key);
    }

    [[nodiscard]] int reads() const { return reads_.load(); }
    [[nodiscard]] int writes() const { return writes_.load(); }

private:
    std::mutex mutex_;
    std::map<std::string, std::string> rows_;
    std::atomic<int> reads_{0};
    std::atomic<int> writes_{0};
};

/// A one-shot gate: wait() blocks until open() is called (from any thread).
class Gate {
public:
    void open() {
        {
            std::lock_guard lock(mutex_);
            open_ = true;
        }
        cv_.notify_all();
    }
    void wait() {
        std::unique_lock lock(mutex_);
        cv_.wait(lock, [&] { return open_; });
    }

private:
    std::mutex mutex_;
    std::condition_variable cv_;
    bool open_ = false;
};

/// A loader that owns what it captures (detached(SlowRow{...}) may outlive the call that
/// passed it: a timed-out load): counts its calls, and waits at `gate` when one is set.
struct SlowRow {
    std::shared_ptr<std::atomic<int>> calls = std::make_shared<std::atomic<int>>(0);
    std::shared_ptr<Gate> gate{};
    std::string value = "row";
    std::optional<std::string> operator()() const {
        ++*calls;
        if (gate) gate->wait();
        return value;
    }
};

}  // namespace larder::test
