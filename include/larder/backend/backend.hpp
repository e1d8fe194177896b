// The Backend concept: the few operations with Redis semantics that every strategy is
// built from, and nothing more: each one is called by some policy, stampede guard,
// invalidator or write-behind store. MemoryBackend implements them under its shard locks,
// RedisBackend with commands and Lua scripts; a user can write a third (a decorator that
// injects faults, another store) against this page, and check it with the conformance
// suite in <larder/testing/backend_conformance.hpp>.
//
// Operations no part of the library needs are optional capabilities, below the concept:
// a backend offers them when its store does them well, and code that calls them asks for
// the capability (`requires Increments<B>`).
//
// Rules every implementation follows:
//  - keys and values are arbitrary bytes (spaces, CR/LF, NUL, '%', non-UTF-8);
//  - a TTL is in milliseconds; `no_expiry` stores without one;
//  - each operation is atomic on its own;
//  - a failure of the store throws larder::BackendError (TimeoutError when it did not
//    answer in time); "no such key" is never an error.
#pragma once

#include <concepts>
#include <cstdint>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "larder/core/clock.hpp"

namespace larder {

inline constexpr Millis no_expiry{0};

/// Stored bytes and what is left of their TTL, read together in one operation.
struct StoredValue {
    std::string bytes{};
    /// Remaining time to live; nullopt when the key has no expiry.
    std::optional<Millis> ttl{};
};

template <class B>
concept Backend = requires(B& backend, std::string_view key, std::string_view value,
                           std::string_view expected, Millis ttl,
                           std::span<const std::string> keys) {
    /// GET + PTTL in one round trip (write-through's fences, version keys, the
    /// write-behind store's cached copy).
    { backend.get(key) } -> std::same_as<std::optional<StoredValue>>;
    /// One round trip for all keys; the result is aligned with `keys` (get_many reads).
    { backend.get_many(keys) } -> std::same_as<std::vector<std::optional<StoredValue>>>;
    /// SET key value [PX ttl] (fills, write-through, the write-behind store's cached copy).
    { backend.set(key, value, ttl) } -> std::same_as<void>;
    /// SET key value NX [PX ttl]: true when this call created the key (taking a lease).
    { backend.set_if_absent(key, value, ttl) } -> std::same_as<bool>;
    /// Replace the value only while it still equals `expected` (filling a lease, fenced
    /// writes, replacing corrupt bytes).
    { backend.compare_and_set(key, expected, value, ttl) } -> std::same_as<bool>;
    /// Delete only while the value still equals `expected` (releasing a lease, removing
    /// corrupt bytes).
    { backend.compare_and_delete(key, expected) } -> std::same_as<bool>;
    /// Reset the TTL only while the value still equals `expected` (a lease extension).
    { backend.compare_and_expire(key, expected, ttl) } -> std::same_as<bool>;
    /// DEL key: true when a key was removed (invalidation).
    { backend.del(key) } -> std::same_as<bool>;
};

/// Optional: INCRBY. A missing key counts from 0; a TTL is kept; a value that is not a
/// decimal 64-bit integer (Redis's rules: no sign '+', no leading zeros, no "-0") and an
/// overflow are errors (BackendError), leaving the value as it was. No policy calls it
/// (WriteBehind::increment is a read-modify-write of a cached T, through its queue); it is
/// for counters of your own on the same store.
template <class B>
concept Increments = Backend<B> && requires(B& backend, std::string_view key, std::int64_t delta) {
    { backend.increment(key, delta) } -> std::same_as<std::int64_t>;
};

/// Optional, for stores where the TTL costs extra: reads without it (StoredValue::ttl is
/// nullopt). A policy uses them when nothing it does needs the TTL.
template <class B>
concept ValueOnlyReads = requires(B& backend, std::string_view key,
                                  std::span<const std::string> keys) {
    { backend.get_value(key) } -> std::same_as<std::optional<StoredValue>>;
    { backend.get_many_values(keys) } -> std::same_as<std::vector<std::optional<StoredValue>>>;
};

}  // namespace larder

namespace larder::detail {

/// A stored value read the cheapest way the backend offers: freshness is in the value's
/// envelope, so no read of the policies needs the store's TTL.
template <Backend B>
std::optional<StoredValue> read_value(B& backend, const std::string& key) {
    if constexpr (ValueOnlyReads<B>) {
        return backend.get_value(key);
    } else {
        return backend.get(key);
    }
}

/// read_value for many keys, in one command.
template <Backend B>
std::vector<std::optional<StoredValue>> read_values(B& backend, std::span<const std::string> keys) {
    if constexpr (ValueOnlyReads<B>) {
        return backend.get_many_values(keys);
    } else {
        return backend.get_many(keys);
    }
}

}  // namespace larder::detail
