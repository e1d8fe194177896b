// The options every policy's cache side takes: CacheAside's own, and the `cache` member
// of WriteThroughOptions and WriteBehindOptions (one key prefix, one clock, one TTL for
// reads and writes alike).
#pragma once

#include <chrono>
#include <cstddef>
#include <optional>
#include <string>

#include "larder/core/clock.hpp"
#include "larder/core/log.hpp"
#include "larder/core/metrics.hpp"
#include "larder/stampede/jitter.hpp"

namespace larder {

struct CacheAsideOptions {
    /// Prepended to every key: a namespace, so several caches can share one store.
    std::string key_prefix{};
    /// How long a loaded value stays fresh.
    Millis ttl = std::chrono::minutes(5);
    /// How long a "not found" stays cached; shorter, so a new row shows up soon.
    Millis negative_ttl = std::chrono::seconds(30);
    /// Spreads expiries of entries written together.
    TtlJitter jitter{};
    /// Fail-safe: how long a value is kept past its freshness. While one reader refreshes
    /// it the others get it at once, and when the loader fails it is served instead of
    /// the error (counted as stale_served). 0 turns it off.
    Millis grace{0};
    /// How long a loader holds the key. A running loader's lease is extended every
    /// lease_ttl / 3, so this bounds only how long a crashed or stopped holder blocks the
    /// key: its lease, no longer extended, runs out, and a waiter takes it over.
    Millis lease_ttl = std::chrono::seconds(3);
    /// The longest a lease is extended for one load. A loader that hangs (alive, its
    /// lease kept) would otherwise hold the key for ever, and every other process's
    /// waiter would wait max_wait and load unfilled, read after read. Past it the lease
    /// runs out within lease_ttl and a waiter takes over; the late loader's value is
    /// served to its caller but not stored (counted as overdue_loads).
    Millis max_load_time = std::chrono::seconds(30);
    /// How long a tag's version lives once created. 0: twice the longest an entry can
    /// live. An entry whose tag version expired misses (never resurrects); so this only
    /// bounds the memory of tags nobody uses any more.
    Millis tag_ttl{0};
    /// Loader timeouts (0: none). They apply to loaders wrapped in detached(), which own
    /// what they capture: a load its caller stopped waiting for goes on in the background
    /// and fills when it ends. get() with any other loader while a timeout is set throws
    /// ConfigError (the loader would outlive the call).
    /// soft_timeout: with a stale value at hand (grace, or an early refresh), a loader
    /// slower than this lets the caller return that value.
    Millis soft_timeout{0};
    /// hard_timeout: bounds every caller's wait for a load (its own, or another loader's
    /// lease); past it, the caller gets the value at hand, or LoadTimeoutError.
    Millis hard_timeout{0};
    /// The largest encoded entry written to the store. A loaded value over it is served
    /// but not cached (counted as too_large); a write-behind put over it is refused with
    /// ValueTooLargeError. Large values cost the store's memory and time on every call
    /// that carries them, and a call's timeout must cover them (docs/security.md). 0: no
    /// limit.
    std::size_t max_value_bytes = std::size_t{8} << 20;
    const Clock* clock = &SystemClock::instance();
    /// How logs and metrics name this cache. Empty: the key prefix, or "default".
    std::string name{};
    /// Told how long each loader call took (nullptr: nothing is timed). Counters are
    /// stats(). It must outlive the cache.
    MetricsListener* metrics = nullptr;
    /// What the cache cannot tell a caller: a refresh that failed in the background, a
    /// load past max_load_time, bytes it cannot decode, a write-behind entry dead-lettered.
    Logger log{};
};

/// Per-call overrides of a cache's options: get(key, loader, {.ttl = 10s}). Unset fields
/// are the cache's. A loader taking a LoadContext& can still decide the TTL itself.
struct CallOptions {
    std::optional<Millis> ttl{};
    std::optional<Millis> negative_ttl{};
    std::optional<Millis> grace{};
    std::optional<Millis> soft_timeout{};
    std::optional<Millis> hard_timeout{};
};

}  // namespace larder
