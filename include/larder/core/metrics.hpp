// MetricsListener: the hook for latency metrics. A policy reports each loader call
// (CacheAsideOptions::metrics), RedisBackend and RedisClusterBackend each round trip
// (RedisOptions::metrics); counters are not pushed here but pulled from each object's
// stats() when a scrape asks (<larder/metrics/prometheus.hpp> does both).
//
// Called on the caller's thread right after the call, so keep it short and thread-safe;
// it must not throw. Unset (nullptr), a call costs one branch.
#pragma once

#include <chrono>
#include <exception>
#include <string_view>
#include <utility>

namespace larder {

/// One loader call: how long it ran, and whether it threw.
struct LoadEvent {
    std::string_view cache;  ///< CacheAsideOptions::name
    std::chrono::nanoseconds took{};
    bool failed = false;
};

/// One call of a backend's API: on Redis usually one round trip; a retry inside the call
/// (EVAL after a flushed script, the new primary after a Sentinel failover) is part of
/// it. On a cluster each node's attempt is a call of that node's backend, so a call that
/// was redirected is two events, the first failed.
struct BackendCallEvent {
    std::string_view backend;    ///< RedisOptions::name
    std::string_view operation;  ///< "get", "set", "eval", ... (the Backend operation)
    std::chrono::nanoseconds took{};
    bool failed = false;  ///< it threw (a timeout, a lost connection, an error reply)
};

class MetricsListener {
public:
    virtual ~MetricsListener() = default;
    virtual void on_load(const LoadEvent&) noexcept {}
    virtual void on_backend_call(const BackendCallEvent&) noexcept {}
};

namespace detail {

/// Times a scope when `on`, then calls report(took, failed) at its end - failed when the
/// scope ends by an exception. Off, it reads no clock.
template <class Report>
class ScopedTimer {
public:
    ScopedTimer(bool on, Report report) noexcept : on_(on), report_(std::move(report)) {
        if (on_) {
            start_ = std::chrono::steady_clock::now();
            exceptions_ = std::uncaught_exceptions();
        }
    }
    ScopedTimer(const ScopedTimer&) = delete;
    ScopedTimer& operator=(const ScopedTimer&) = delete;

    ~ScopedTimer() {
        if (on_) {
            report_(std::chrono::steady_clock::now() - start_,
                    std::uncaught_exceptions() > exceptions_);
        }
    }

private:
    bool on_;
    Report report_;
    std::chrono::steady_clock::time_point start_{};
    int exceptions_ = 0;
};

/// Reports one backend call to `listener` (if any) when the scope ends.
[[nodiscard]] inline auto time_backend_call(MetricsListener* listener, std::string_view backend,
                                            std::string_view operation) noexcept {
    return ScopedTimer(
        listener != nullptr, [=](std::chrono::nanoseconds took, bool failed) noexcept {
            listener->on_backend_call(BackendCallEvent{
                .backend = backend, .operation = operation, .took = took, .failed = failed});
        });
}

}  // namespace detail

}  // namespace larder
