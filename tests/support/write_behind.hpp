// What the write-behind tests share: a database table that records every row write, a
// captured log, options for a test driven by flush() on the fixture's clock, and a loop
// that flushes until the queue is empty.
#pragma once

#include <map>
#include <mutex>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "larder/policy/write_behind.hpp"
#include "support/catch.hpp"

namespace larder::test {

using namespace std::chrono_literals;

// A database table: one row per key, the version of the write that produced it, and every
// row write counted. One mutex, like one connection.
template <class V>
class Table {
public:
    BatchResult write(std::span<const DirtyEntry<V>> batch) {
        std::lock_guard lock(mutex_);
        for (const auto& e : batch) store(e);
        return {};
    }

    // The recommended database write: a row is replaced only by a newer version
    // (UPDATE ... WHERE version < ?, or the fenced upsert); an older one is refused as stale.
    BatchResult write_fenced(std::span<const DirtyEntry<V>> batch) {
        std::lock_guard lock(mutex_);
        BatchResult result;
        for (std::size_t i = 0; i < batch.size(); ++i) {
            auto it = versions_.find(batch[i].key);
            if (it != versions_.end() && it->second >= batch[i].version) {
                result.stale(i, "row version " + std::to_string(it->second) +
                                    " >= " + std::to_string(batch[i].version));
                continue;
            }
            store(batch[i]);
        }
        return result;
    }

    void seed(const std::string& key, V value, std::uint64_t version) {
        std::lock_guard lock(mutex_);
        rows_[key] = std::move(value);
        versions_[key] = version;
    }

    std::uint64_t version_of(const std::string& key) const {
        std::lock_guard lock(mutex_);
        auto it = versions_.find(key);
        return it == versions_.end() ? 0 : it->second;
    }

    void seed(const std::string& key, V value) {
        std::lock_guard lock(mutex_);
        rows_[key] = std::move(value);
    }

    std::optional<V> read(const std::string& key) const {
        std::lock_guard lock(mutex_);
        auto it = rows_.find(key);
        if (it == rows_.end()) return std::nullopt;
        return it->second;
    }

    std::map<std::string, V> rows() const {
        std::lock_guard lock(mutex_);
        return rows_;
    }

    int writes() const {
        std::lock_guard lock(mutex_);
        return writes_;
    }

    int writes_of(const std::string& key) const {
        std::lock_guard lock(mutex_);
        auto it = writes_of_.find(key);
        return it == writes_of_.end() ? 0 : it->second;
    }

private:
    void store(const DirtyEntry<V>& e) {
        rows_[e.key] = e.value;
        versions_[e.key] = e.version;
        ++writes_;
        ++writes_of_[e.key];
    }

    mutable std::mutex mutex_;
    std::map<std::string, V> rows_;
    std::map<std::string, std::uint64_t> versions_;
    std::map<std::string, int> writes_of_;
    int writes_ = 0;
};

// What the cache logged (warnings, dead letters, drains).
class Log {
public:
    void add(std::string_view line) {
        std::lock_guard lock(mutex_);
        lines_.emplace_back(line);
    }
    bool contains(std::string_view text) const {
        std::lock_guard lock(mutex_);
        for (const auto& l : lines_) {
            if (l.find(text) != std::string::npos) return true;
        }
        return false;
    }
    std::string all() const {
        std::lock_guard lock(mutex_);
        std::string out;
        for (const auto& l : lines_) out += l + "\n";
        return out;
    }

private:
    mutable std::mutex mutex_;
    std::vector<std::string> lines_;
};

// Options for a test: the fixture's clock, no flusher thread (flush() drives it), short
// backoffs, and the log captured. Tests change what they need afterwards.
template <class Fixture>
WriteBehindOptions manual(Fixture& fx, Log& log, std::string name = "test") {
    WriteBehindOptions o;
    o.name = std::move(name);
    o.cache.key_prefix = "wb:";
    o.start_flusher = false;
    o.cache.clock = fx.time_source();
    o.retry = {.max_attempts = 5,
               .budget = 0ms,
               .first_backoff = 1ms,
               .max_backoff = 4ms,
               .max_outage_backoff = 4ms};
    o.drain_timeout = 2s;
    o.cache.log.sink = [&log](larder::LogLevel, std::string_view line) { log.add(line); };
    return o;
}

template <class V>
auto writer_for(Table<V>& table) {
    return [&table](std::span<const DirtyEntry<V>> batch) { return table.write(batch); };
}

// Flushes until nothing is dirty, letting time pass between rounds so that backoffs end.
template <class WB, class Fixture>
FlushReport flush_all(WB& wb, Fixture& fx, int rounds = 400) {
    FlushReport total;
    for (int i = 0; i < rounds; ++i) {
        total += wb.flush();
        if (wb.queue_stats().pending == 0) return total;
        fx.advance(5ms);
    }
    FAIL("the queue did not drain: " << wb.queue_stats().pending << " dirty keys left");
    return total;
}

}  // namespace larder::test
