// Per-thread random numbers. Lease tokens must not collide across processes, so each
// thread's generator is seeded from std::random_device, never from time or a constant.
#pragma once

#include <pthread.h>

#include <array>
#include <atomic>
#include <cstdint>
#include <random>

namespace larder {

namespace detail {

// Bumped in every child after fork(): a child that kept its parent's generator state
// would draw the same lease tokens, jitter and XFetch decisions as the parent and as
// every sibling.
inline std::atomic<std::uint64_t>& fork_generation() {
    static std::atomic<std::uint64_t> generation{0};
    return generation;
}

inline std::mt19937_64 seeded_rng() {
    std::random_device device;
    std::seed_seq seed{device(), device(), device(), device(), device(), device()};
    return std::mt19937_64(seed);
}

inline std::mt19937_64& thread_rng() {
    static const bool registered = [] {
        ::pthread_atfork(nullptr, nullptr,
                         [] { fork_generation().fetch_add(1, std::memory_order_relaxed); });
        return true;
    }();
    (void)registered;
    thread_local std::mt19937_64 rng = seeded_rng();
    thread_local std::uint64_t seeded_in = fork_generation().load(std::memory_order_relaxed);
    if (const auto now = fork_generation().load(std::memory_order_relaxed); now != seeded_in) {
        rng = seeded_rng();
        seeded_in = now;
    }
    return rng;
}

}  // namespace detail

/// A uniform double in (0, 1]: never 0, so that ln(U) is always finite.
inline double random_unit_open_closed() {
    // 53 random bits; shifting by one keeps 0 out and lets 1 in.
    const std::uint64_t bits = detail::thread_rng()() >> 11;
    return static_cast<double>(bits + 1) * 0x1.0p-53;
}

/// A uniform integer in [lo, hi].
inline std::int64_t random_between(std::int64_t lo, std::int64_t hi) {
    return std::uniform_int_distribution<std::int64_t>(lo, hi)(detail::thread_rng());
}

/// 128 random bits: a lease token.
using Token = std::array<std::uint64_t, 2>;

/// 64 random bits, never 0: a tag version or a version key. Versions are compared only
/// for equality, so they need not grow; they must never repeat, and two bumps in the
/// same millisecond or after a clock step must not collide (see docs/invalidation.md).
inline std::uint64_t random_version() {
    std::uint64_t v = 0;
    while (v == 0) v = detail::thread_rng()();
    return v;
}

inline Token random_token() {
    auto& rng = detail::thread_rng();
    return Token{rng(), rng()};
}

}  // namespace larder
