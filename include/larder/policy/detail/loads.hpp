// Running a loader: every call counted and timed (stats, the metrics listener), what the
// loader left in its context checked, and - when the call has a deadline - on a thread of
// its own, so that the caller can stop waiting while the load goes on to fill. Whether to
// load, and what to do with the value, is the read path's decision.
#pragma once

#include <algorithm>
#include <chrono>
#include <exception>
#include <functional>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <type_traits>
#include <utility>
#include <vector>

#include "larder/core/clock.hpp"
#include "larder/core/error.hpp"
#include "larder/core/loader.hpp"
#include "larder/core/metrics.hpp"
#include "larder/core/stats.hpp"
#include "larder/policy/detail/checked_options.hpp"
#include "larder/policy/detail/load_threads.hpp"
#include "larder/policy/options.hpp"

namespace larder::detail {

/// Times a recompute. The longer of the monotonic clock and the cache's clock: real time
/// in production, and in tests the time a loader spends on a ManualClock.
class Stopwatch {
public:
    explicit Stopwatch(const Clock& clock)
        : clock_(clock), steady_(std::chrono::steady_clock::now()), start_(clock.now()) {}
    [[nodiscard]] std::chrono::microseconds elapsed() const {
        using std::chrono::duration_cast, std::chrono::microseconds;
        return std::max(duration_cast<microseconds>(std::chrono::steady_clock::now() - steady_),
                        duration_cast<microseconds>(clock_.now() - start_));
    }

private:
    const Clock& clock_;
    std::chrono::steady_clock::time_point steady_;
    TimePoint start_;
};

/// What a load returned, and what its loader decided about it.
template <class T>
struct Loaded {
    std::optional<T> value;
    LoadContext context;
};

template <class T>
class Loads {
public:
    /// `options`: the cache's (clock, metrics listener, name), which outlive this.
    /// `takes_tags`: a loader may set tags in its context (the cache stamps tags).
    Loads(const CacheAsideOptions& options, StripedCounters<StatsSnapshot>& stats, bool takes_tags)
        : options_(options), stats_(stats), takes_tags_(takes_tags) {}

    /// Runs the loader, then finish(value or nullptr on error, context, took) exactly
    /// once. With no deadline, on this thread: returns the value or rethrows the loader's
    /// exception. With one, on a thread of its own (the loader is detached: it owns what
    /// it captures), waited for until `until`: nullopt when it still runs then; it goes on
    /// alone, and finish runs when it ends.
    template <class L, class Finish>
    std::optional<Loaded<T>> run(L& loader, SteadyTime until, Finish finish) {
        if constexpr (is_detached_v<std::decay_t<L>>) {
            if (until != no_deadline) {
                // Started even when the deadline has passed already (a slow machine): the
                // caller stops waiting at once, and the fill still serves the next reader.
                auto outcome = std::make_shared<LoadOutcome<Loaded<T>>>();
                threads_.start([this, outcome, load = std::decay_t<L>(loader),
                                finish = std::move(finish)]() mutable {
                    LoadContext context;
                    const Stopwatch watch(*options_.clock);
                    std::optional<T> value;
                    std::exception_ptr error;
                    try {
                        value = call(load, context);
                    } catch (...) {
                        error = std::current_exception();
                    }
                    finish(error ? nullptr : &value, context, watch.elapsed());
                    outcome->set(Loaded<T>{std::move(value), std::move(context)}, std::move(error));
                });
                if (!outcome->wait_until(until)) return std::nullopt;
                return outcome->take();
            }
        }
        LoadContext context;
        const Stopwatch watch(*options_.clock);
        std::optional<T> value;
        try {
            value = call(loader, context);
        } catch (...) {
            finish(nullptr, context, watch.elapsed());
            throw;
        }
        finish(&value, context, watch.elapsed());
        return Loaded<T>{std::move(value), std::move(context)};
    }

    /// A load whose value nobody stores. Throws LoadTimeoutError past `deadline`.
    template <class L>
    std::optional<T> run_unfilled(L& loader, SteadyTime deadline) {
        auto loaded = run(
            loader, deadline,
            [](const std::optional<T>*, const LoadContext&, std::chrono::microseconds) noexcept {});
        if (!loaded) throw LoadTimeoutError("larder: the load took longer than hard_timeout");
        return std::move(loaded->value);
    }

    /// One call of a batch loader with `keys`, counted and timed.
    template <class BatchLoader>
    std::vector<std::optional<T>> run_batch(BatchLoader& loader,
                                            std::span<const std::string> keys) {
        stats_.add<&StatsSnapshot::loads>();
        try {
            const auto timer = time_load();
            return std::invoke(loader, keys);
        } catch (...) {
            stats_.add<&StatsSnapshot::load_errors>();
            throw;
        }
    }

    /// Blocks until no load run on a thread of its own is running.
    void wait_idle() { threads_.wait_idle(); }

private:
    // One loader call, counted and timed, with what it left in its context checked.
    template <class L>
    std::optional<T> call(L& loader, LoadContext& context) {
        stats_.add<&StatsSnapshot::loads>();
        const auto timer = time_load();
        try {
            std::optional<T> value = call_loader<T>(loader, context);
            if (context.ttl && context.ttl->count() <= 0) {
                throw LoaderError("larder: a loader set a TTL that is not positive");
            }
            if (!context.tags.empty() && !takes_tags_) {
                throw LoaderError(
                    "larder: a loader set tags, but the cache has no tag invalidator");
            }
            return value;
        } catch (...) {
            stats_.add<&StatsSnapshot::load_errors>();
            throw;
        }
    }

    // Reports a loader call to the metrics listener (if any) when the scope ends.
    [[nodiscard]] auto time_load() const noexcept {
        return ScopedTimer(options_.metrics != nullptr,
                           [this](std::chrono::nanoseconds took, bool failed) noexcept {
                               options_.metrics->on_load(LoadEvent{
                                   .cache = options_.name, .took = took, .failed = failed});
                           });
    }

    const CacheAsideOptions& options_;
    StripedCounters<StatsSnapshot>& stats_;
    const bool takes_tags_;
    // Last: destroyed first, waiting for every load still running on a thread of its own
    // (each holds this object).
    LoadThreads threads_;
};

}  // namespace larder::detail
