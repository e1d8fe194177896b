// CacheAside: the application reads through the cache and loads from its database on a
// miss; writers change the database, then invalidate.
//
// What the naive version of this pattern gets wrong, and what this class does instead:
//  - stale set: a reader that loaded before an update can store the old value after the
//    update's delete. Here a miss first takes a lease in the key itself (SET NX PX of a
//    random token) and fills with compare-and-set against it; invalidate() deletes the
//    key, lease included, so the late fill fails and is counted as rejected. A refresh of
//    a value that is still there fills by compare-and-set against the old value's bytes,
//    so an invalidation fences it the same way.
//  - herds: concurrent misses in one process share one loader call (single-flight); the
//    stampede guard decides what other processes do (Lock: wait for the holder's value)
//    and whether a hot value is refreshed before it expires (XFetch).
//  - "not found" is cached too (negative caching), with its own TTL.
//  - an empty value is a value: presence comes from the envelope, not from truthiness.
//  - a cache problem never fails a read: a store error degrades to the loader, and bytes
//    that are not ours are a counted miss, removed only by compare-and-delete.
//  - fail-safe: with a grace period, a value outlives its freshness; when the loader then
//    fails, the stale value is served instead of the error.
#pragma once

#include <concepts>
#include <functional>
#include <string_view>

#include "larder/backend/backend.hpp"
#include "larder/policy/detail/read_path.hpp"
#include "larder/policy/options.hpp"

namespace larder {

/// CacheAside<T, Backend, Components...>: Components are an optional codec for T, an
/// optional StampedeGuard and an optional Invalidator (default: Tags), in any order (see
/// policy/detail/components.hpp). The read verbs (get, get_many, invalidate, ...) are the
/// read path's, shared with WriteThrough and WriteBehind; the write verbs are
/// invalidate_after (the pattern's write: database, then invalidate) and set.
template <class T, Backend B, class... Components>
class CacheAside : public detail::ReadPath<T, B, Components...> {
    using Base = detail::ReadPath<T, B, Components...>;

public:
    /// (backend, options, guard, codec, invalidator), or (backend, options, invalidator).
    /// The backend is borrowed: it must outlive the cache. Several caches may share it.
    using Base::Base;

    /// Stores `value` now (replacing any value or lease: a load in flight cannot
    /// overwrite it), with the current versions of `tags`. For warm-ups; a read-through
    /// cache needs only get().
    using Base::set;

    /// The pattern's write done in the right order: change the database, then invalidate.
    /// If db_write throws, nothing is invalidated and the exception propagates. Throws
    /// BackendError when the invalidation could not reach the store (the database write
    /// happened; the entry may stay until its TTL).
    template <std::invocable DbWrite>
    void invalidate_after(std::string_view key, DbWrite&& db_write) {
        std::invoke(db_write);
        this->invalidate(key);
    }

    [[nodiscard]] StatsSnapshot stats() const { return this->read_stats(); }
    [[nodiscard]] const CacheAsideOptions& options() const noexcept {
        return this->cache_options();
    }
};

}  // namespace larder
