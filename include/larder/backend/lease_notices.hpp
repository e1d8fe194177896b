// Lease notices: how a Lock waiter learns at once that the lease it waits on has ended.
//
// A backend that can tell (NotifiesLeaseEnds) ends a lease with replace_lease() (the fill)
// or release_lease() (the holder gave up), and both announce the key to every process: on
// Redis a PUBLISH inside the same script, on the in-process map a direct call. Each
// backend object keeps one LeaseNotices that hears them: a waiter takes a mark before the
// read that finds the lease, then waits for a notice of its key heard after that mark.
//
// Notices can be lost (the listener reconnecting, a holder that died): a waiter also reads
// the key again at its fallback pace, so a lost notice costs latency, never a wrong value.
#pragma once

#include <array>
#include <atomic>
#include <chrono>
#include <concepts>
#include <condition_variable>
#include <cstdint>
#include <functional>
#include <mutex>
#include <string_view>

#include "larder/core/clock.hpp"

namespace larder {

class LeaseNotices {
public:
    /// For a store in this process, which tells every lease end itself: no listener to lose.
    struct AlwaysListening {};
    static constexpr AlwaysListening always_listening{};

    LeaseNotices() = default;
    explicit LeaseNotices(AlwaysListening) noexcept : generation_(1) {}
    LeaseNotices(const LeaseNotices&) = delete;
    LeaseNotices& operator=(const LeaseNotices&) = delete;

    /// Where a waiter stands before its read: the notices heard so far, and whether they
    /// were being heard at all.
    struct Mark {
        std::uint64_t generation = 0;  // odd: listening
        std::uint64_t heard = 0;
    };

    /// Taken before the read that may find a lease. One or two atomic loads.
    [[nodiscard]] Mark mark() const noexcept {
        return Mark{generation_.load(std::memory_order_acquire),
                    heard_.load(std::memory_order_acquire)};
    }

    /// Whether notices were heard at `m` and still are: only then can wait_for_end() be
    /// trusted to wake on the key's notice.
    [[nodiscard]] bool listening_since(const Mark& m) const noexcept {
        return (m.generation & 1U) != 0 &&
               generation_.load(std::memory_order_acquire) == m.generation;
    }

    /// Blocks until a notice for `key` heard after `since`, or `until`, or the listener
    /// is lost. True when a notice (or possibly one: too many were heard meanwhile to
    /// tell) came: read the key again.
    bool wait_for_end(std::string_view key, const Mark& since,
                      std::chrono::steady_clock::time_point until) {
        const std::uint64_t h = hash(key);
        std::unique_lock lock(mutex_);
        bool ended = false;
        cv_.wait_until(lock, until, [&] {
            if (!listening_since(since)) return true;
            ended = heard_after(h, since.heard);
            return ended;
        });
        return ended;
    }

    // ---- the listener's side -----------------------------------------------------------

    /// A lease on `key` ended (the stored key, as announced).
    void heard(std::string_view key) {
        {
            std::lock_guard lock(mutex_);
            const std::uint64_t n = heard_.load(std::memory_order_relaxed) + 1;
            recent_[n % recent_.size()] = hash(key);
            heard_.store(n, std::memory_order_release);
        }
        cv_.notify_all();
    }

    /// The listener subscribed (true) or lost its subscription (false).
    void set_listening(bool on) {
        {
            std::lock_guard lock(mutex_);
            const std::uint64_t g = generation_.load(std::memory_order_relaxed);
            if (((g & 1U) != 0) == on) return;
            generation_.store(g + 1, std::memory_order_release);
        }
        cv_.notify_all();
    }

    [[nodiscard]] bool listening() const noexcept {
        return (generation_.load(std::memory_order_acquire) & 1U) != 0;
    }

    /// Notices heard so far.
    [[nodiscard]] std::uint64_t notices() const noexcept {
        return heard_.load(std::memory_order_acquire);
    }

private:
    static std::uint64_t hash(std::string_view key) noexcept {
        return std::hash<std::string_view>{}(key);
    }

    // Under mutex_. A hash collision only wakes a waiter early: it reads again.
    bool heard_after(std::uint64_t h, std::uint64_t since) const noexcept {
        const std::uint64_t now = heard_.load(std::memory_order_relaxed);
        if (now - since >= recent_.size()) return now != since;  // too many to tell
        for (std::uint64_t n = since + 1; n <= now; ++n) {
            if (recent_[n % recent_.size()] == h) return true;
        }
        return false;
    }

    mutable std::mutex mutex_;
    std::condition_variable cv_;
    std::atomic<std::uint64_t> generation_{0};
    std::atomic<std::uint64_t> heard_{0};
    std::array<std::uint64_t, 1024> recent_{};  // the last notices' key hashes, by number
};

/// A backend that announces the end of a lease: replace_lease and release_lease are
/// compare_and_set and compare_and_delete that also tell every process's
/// lease_notices(), which starts listening on first use.
template <class B>
concept NotifiesLeaseEnds = requires(B& b, std::string_view key, std::string_view bytes,
                                     Millis ttl) {
    { b.lease_notices() } -> std::same_as<LeaseNotices&>;
    { b.replace_lease(key, bytes, bytes, ttl) } -> std::same_as<bool>;
    { b.release_lease(key, bytes) } -> std::same_as<bool>;
};

}  // namespace larder
