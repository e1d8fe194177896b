// The in-process caches a user writes instead of larder: an LRU over std::unordered_map and
// std::list, written the two common ways. Values are copied out under the lock, as they
// must be (another thread may evict the entry the moment the lock is released).
#pragma once

#include <cstddef>
#include <list>
#include <mutex>
#include <optional>
#include <shared_mutex>
#include <string>
#include <unordered_map>
#include <utility>

namespace larder::bench {

/// One std::mutex for everything: find, move to front, copy.
template <class V>
class MutexLru {
public:
    explicit MutexLru(std::size_t capacity) : capacity_(capacity) {}

    std::optional<V> get(const std::string& key) {
        std::lock_guard lock(mutex_);
        auto it = map_.find(key);
        if (it == map_.end()) return std::nullopt;
        order_.splice(order_.begin(), order_, it->second);
        return it->second->second;
    }

    void put(const std::string& key, V value) {
        std::lock_guard lock(mutex_);
        if (auto it = map_.find(key); it != map_.end()) {
            it->second->second = std::move(value);
            order_.splice(order_.begin(), order_, it->second);
            return;
        }
        order_.emplace_front(key, std::move(value));
        map_.emplace(key, order_.begin());
        if (map_.size() > capacity_) {
            map_.erase(order_.back().first);
            order_.pop_back();
        }
    }

private:
    using Order = std::list<std::pair<std::string, V>>;
    std::size_t capacity_;
    std::mutex mutex_;
    Order order_;
    std::unordered_map<std::string, typename Order::iterator> map_;
};

/// std::shared_mutex: the lookup and copy under a shared lock, then a unique lock to move
/// the entry to the front (looked up again: it may have gone in between).
template <class V>
class SharedMutexLru {
public:
    explicit SharedMutexLru(std::size_t capacity) : capacity_(capacity) {}

    std::optional<V> get(const std::string& key) {
        std::optional<V> value;
        {
            std::shared_lock lock(mutex_);
            auto it = map_.find(key);
            if (it == map_.end()) return std::nullopt;
            value = it->second->second;
        }
        std::unique_lock lock(mutex_);
        if (auto it = map_.find(key); it != map_.end()) {
            order_.splice(order_.begin(), order_, it->second);
        }
        return value;
    }

    void put(const std::string& key, V value) {
        std::unique_lock lock(mutex_);
        if (auto it = map_.find(key); it != map_.end()) {
            it->second->second = std::move(value);
            order_.splice(order_.begin(), order_, it->second);
            return;
        }
        order_.emplace_front(key, std::move(value));
        map_.emplace(key, order_.begin());
        if (map_.size() > capacity_) {
            map_.erase(order_.back().first);
            order_.pop_back();
        }
    }

private:
    using Order = std::list<std::pair<std::string, V>>;
    std::size_t capacity_;
    std::shared_mutex mutex_;
    Order order_;
    std::unordered_map<std::string, typename Order::iterator> map_;
};

}  // namespace larder::bench
