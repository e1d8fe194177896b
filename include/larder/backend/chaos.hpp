// ChaosBackend: wraps any backend and injects failures and latency on demand, so that
// fault tests are deterministic ("the next 3 calls fail", "every call takes 20 ms")
// instead of depending on a real outage. It also counts calls per operation, which lets a
// test prove a read path's round trips.
//
// WriteBehind over ChaosBackend<Inner> keeps its queue in process memory
// (MemoryWriteBehindStore<ChaosBackend<Inner>>, not durable, whatever Inner is) and writes
// its cached copies through the decorator, so injected faults reach them as they reach
// every other operation.
#pragma once

#include <atomic>
#include <chrono>
#include <cstdint>
#include <mutex>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <thread>
#include <vector>

#include "larder/backend/backend.hpp"
#include "larder/backend/write_behind_store.hpp"
#include "larder/core/error.hpp"
#include "larder/core/random.hpp"

namespace larder {

template <Backend Inner>
class ChaosBackend {
public:
    struct Calls {
        std::uint64_t get = 0, get_many = 0, set = 0, set_if_absent = 0, compare_and_set = 0,
                      compare_and_delete = 0, compare_and_expire = 0, del = 0, increment = 0;
        [[nodiscard]] std::uint64_t total() const {
            return get + get_many + set + set_if_absent + compare_and_set + compare_and_delete +
                   compare_and_expire + del + increment;
        }
    };

    explicit ChaosBackend(Inner& inner) : inner_(inner) {}

    /// Every call fails with BackendError (true) or passes through (false).
    void fail_all(bool on) { fail_all_.store(on); }
    /// The next `n` calls fail, then calls pass through again.
    void fail_next(std::uint64_t n) { fail_next_.store(n); }
    /// Each call fails with this probability in [0, 1].
    void fail_probability(double p) { fail_probability_.store(p); }
    /// Each call sleeps this long before it runs (or fails).
    void latency(Millis delay) { latency_ms_.store(delay.count()); }

    [[nodiscard]] Calls calls() const {
        std::lock_guard lock(mutex_);
        return calls_;
    }
    [[nodiscard]] std::uint64_t injected_failures() const { return injected_.load(); }
    Inner& inner() { return inner_; }

    std::optional<StoredValue> get(std::string_view key) {
        before(&Calls::get);
        return inner_.get(key);
    }
    std::vector<std::optional<StoredValue>> get_many(std::span<const std::string> keys) {
        before(&Calls::get_many);
        return inner_.get_many(keys);
    }
    void set(std::string_view key, std::string_view value, Millis ttl) {
        before(&Calls::set);
        inner_.set(key, value, ttl);
    }
    bool set_if_absent(std::string_view key, std::string_view value, Millis ttl) {
        before(&Calls::set_if_absent);
        return inner_.set_if_absent(key, value, ttl);
    }
    bool compare_and_set(std::string_view key, std::string_view expected, std::string_view value,
                         Millis ttl) {
        before(&Calls::compare_and_set);
        return inner_.compare_and_set(key, expected, value, ttl);
    }
    bool compare_and_delete(std::string_view key, std::string_view expected) {
        before(&Calls::compare_and_delete);
        return inner_.compare_and_delete(key, expected);
    }
    bool compare_and_expire(std::string_view key, std::string_view expected, Millis ttl) {
        before(&Calls::compare_and_expire);
        return inner_.compare_and_expire(key, expected, ttl);
    }
    bool del(std::string_view key) {
        before(&Calls::del);
        return inner_.del(key);
    }
    /// Where the inner backend has it.
    std::int64_t increment(std::string_view key, std::int64_t delta) requires Increments<Inner> {
        before(&Calls::increment);
        return inner_.increment(key, delta);
    }

private:
    void before(std::uint64_t Calls::*op) {
        {
            std::lock_guard lock(mutex_);
            ++(calls_.*op);
        }
        if (const auto ms = latency_ms_.load(); ms > 0) {
            std::this_thread::sleep_for(Millis{ms});
        }
        if (should_fail()) {
            injected_.fetch_add(1);
            throw BackendError("chaos: injected failure");
        }
    }

    bool should_fail() {
        if (fail_all_.load()) return true;
        for (auto n = fail_next_.load(); n > 0;) {
            if (fail_next_.compare_exchange_weak(n, n - 1)) return true;
        }
        const double p = fail_probability_.load();
        return p > 0.0 && random_unit_open_closed() <= p;
    }

    Inner& inner_;
    std::atomic<bool> fail_all_{false};
    std::atomic<std::uint64_t> fail_next_{0};
    std::atomic<double> fail_probability_{0.0};
    std::atomic<std::int64_t> latency_ms_{0};
    std::atomic<std::uint64_t> injected_{0};
    mutable std::mutex mutex_;
    Calls calls_;
};

/// WriteBehind<T, ChaosBackend<Inner>>: the queue in process memory, the cached copies
/// through the decorator (MemoryWriteBehindStore uses nothing but Backend operations).
template <class Inner>
struct write_behind_store_for<ChaosBackend<Inner>> {
    using type = MemoryWriteBehindStore<ChaosBackend<Inner>>;
};

static_assert(WriteBehindStore<MemoryWriteBehindStore<ChaosBackend<MemoryBackend>>>);

}  // namespace larder
