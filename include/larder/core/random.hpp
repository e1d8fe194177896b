// Per-thread random numbers. Lease tokens must not collide across processes, so each
// thread's generator is seeded from std::random_device, never from time or a constant.
#pragma once

#include <array>
#include <cstdint>
#include <random>

namespace larder {

namespace detail {

inline std::mt19937_64& thread_rng() {
    thread_local std::mt19937_64 rng = [] {
        std::random_device device;
        std::seed_seq seed{device(), device(), device(), device(), device(), device()};
        return std::mt19937_64(seed);
    }();
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

inline Token random_token() {
    auto& rng = detail::thread_rng();
    return Token{rng(), rng()};
}

}  // namespace larder
