// MemoryBackend: the Backend concept in process memory. Sharded locks for concurrency,
// millisecond TTLs on monotonic time (or an injected clock), and a bound on entries and bytes
// enforced with SIEVE eviction (Zhang et al., NSDI 2024): as simple as LRU, but a hit only sets a
// bit, and a one-off scan cannot flush the hot set. Expired entries are reclaimed by the operations
// themselves (a short sweep on every write), so no thread is needed.
#pragma once

#include <algorithm>
#include <atomic>
#include <bit>
#include <charconv>
#include <chrono>
#include <cstdint>
#include <ctime>
#include <functional>
#include <memory>
#include <mutex>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <thread>
#include <unordered_map>
#include <vector>

#include "larder/backend/backend.hpp"
#include "larder/backend/lease_notices.hpp"
#include "larder/core/clock.hpp"
#include "larder/core/error.hpp"

namespace larder {

struct MemoryBackendOptions {
    std::size_t max_entries = 1'000'000;
    std::size_t max_bytes = std::size_t{512} << 20;
    /// Number of lock shards, rounded up to a power of two; 0 picks one from the core count.
    std::size_t shards = 0;
    /// What TTLs run on. nullptr: time since boot, which never steps (CLOCK_BOOTTIME, or
    /// steady_clock where there is none). Expiry times never leave the process, so they
    /// need no wall time, and a wall clock stepped back (NTP, a resumed VM) would stretch
    /// every entry's life by the step. Tests pass a ManualClock.
    const Clock* clock = nullptr;
};

class MemoryBackend {
public:
    explicit MemoryBackend(MemoryBackendOptions options = {}) : clock_(options.clock) {
        std::size_t n = options.shards;
        if (n == 0) n = std::max<std::size_t>(8, 4 * std::thread::hardware_concurrency());
        n = std::min<std::size_t>(std::bit_ceil(n), 256);
        if (options.max_entries == 0 || options.max_bytes == 0) {
            throw ConfigError("MemoryBackend: max_entries and max_bytes must be positive");
        }
        // Small bounds get fewer shards, so that each shard can hold at least one entry.
        while (n > 1 && options.max_entries / n == 0) n /= 2;
        shards_ = std::vector<Shard>(n);
        mask_ = n - 1;
        for (auto& s : shards_) {
            s.max_entries = options.max_entries / n;
            s.max_bytes = options.max_bytes / n;
        }
    }

    MemoryBackend(const MemoryBackend&) = delete;
    MemoryBackend& operator=(const MemoryBackend&) = delete;

    [[nodiscard]] std::optional<StoredValue> get(std::string_view key) {
        const auto now = now_ms();
        auto& s = shard(key);
        std::lock_guard lock(s.mutex);
        Node* n = s.find_live(key, now);
        if (!n) return std::nullopt;
        n->visited = true;
        return StoredValue{n->value, remaining(n, now)};
    }

    [[nodiscard]] std::vector<std::optional<StoredValue>> get_many(
        std::span<const std::string> keys) {
        std::vector<std::optional<StoredValue>> out;
        out.reserve(keys.size());
        for (const auto& k : keys) out.push_back(get(k));
        return out;
    }

    void set(std::string_view key, std::string_view value, Millis ttl) {
        const auto now = now_ms();
        auto& s = shard(key);
        std::lock_guard lock(s.mutex);
        s.upsert(key, value, expiry(now, ttl), now, evictions_);
    }

    bool set_if_absent(std::string_view key, std::string_view value, Millis ttl) {
        const auto now = now_ms();
        auto& s = shard(key);
        std::lock_guard lock(s.mutex);
        if (s.find_live(key, now)) return false;
        s.upsert(key, value, expiry(now, ttl), now, evictions_);
        return true;
    }

    bool compare_and_set(std::string_view key, std::string_view expected, std::string_view value,
                         Millis ttl) {
        const auto now = now_ms();
        auto& s = shard(key);
        std::lock_guard lock(s.mutex);
        Node* n = s.find_live(key, now);
        if (!n || n->value != expected) return false;
        s.upsert(key, value, expiry(now, ttl), now, evictions_);
        return true;
    }

    bool compare_and_delete(std::string_view key, std::string_view expected) {
        const auto now = now_ms();
        auto& s = shard(key);
        std::lock_guard lock(s.mutex);
        Node* n = s.find_live(key, now);
        if (!n || n->value != expected) return false;
        s.erase(n);
        return true;
    }

    /// compare_and_set of a lease that tells lease_notices() when it replaces it.
    bool replace_lease(std::string_view key, std::string_view lease, std::string_view value,
                       Millis ttl) {
        if (!compare_and_set(key, lease, value, ttl)) return false;
        lease_notices_.heard(key);
        return true;
    }

    /// compare_and_delete of a lease that tells lease_notices().
    bool release_lease(std::string_view key, std::string_view lease) {
        if (!compare_and_delete(key, lease)) return false;
        lease_notices_.heard(key);
        return true;
    }

    /// Every cache on this store hears every lease end, in this process.
    LeaseNotices& lease_notices() noexcept { return lease_notices_; }

    bool compare_and_expire(std::string_view key, std::string_view expected, Millis ttl) {
        const auto now = now_ms();
        auto& s = shard(key);
        std::lock_guard lock(s.mutex);
        Node* n = s.find_live(key, now);
        if (!n || n->value != expected) return false;
        n->expires_at = expiry(now, ttl);
        return true;
    }

    bool del(std::string_view key) {
        const auto now = now_ms();
        auto& s = shard(key);
        std::lock_guard lock(s.mutex);
        Node* n = s.find_live(key, now);
        if (!n) return false;
        s.erase(n);
        return true;
    }

    std::int64_t increment(std::string_view key, std::int64_t delta) {
        const auto now = now_ms();
        auto& s = shard(key);
        std::lock_guard lock(s.mutex);
        Node* n = s.find_live(key, now);
        std::int64_t current = 0;
        std::int64_t expires_at = 0;
        if (n) {
            if (!parse_integer(n->value, current)) {
                throw BackendError("increment: value is not an integer or out of range");
            }
            expires_at = n->expires_at;
        }
        std::int64_t next = 0;
        if (__builtin_add_overflow(current, delta, &next)) {
            throw BackendError("increment: would overflow");
        }
        s.upsert(key, std::to_string(next), expires_at, now, evictions_);
        return next;
    }

    /// Entries dropped to stay within the bounds (expiry not included).
    [[nodiscard]] std::uint64_t evictions() const noexcept {
        return evictions_.load(std::memory_order_relaxed);
    }

    /// Live entries, counting expired ones not reclaimed yet.
    [[nodiscard]] std::size_t size() const {
        std::size_t n = 0;
        for (auto& s : shards_) {
            std::lock_guard lock(s.mutex);
            n += s.map.size();
        }
        return n;
    }

    /// Bytes accounted against max_bytes.
    [[nodiscard]] std::size_t bytes() const {
        std::size_t n = 0;
        for (auto& s : shards_) {
            std::lock_guard lock(s.mutex);
            n += s.bytes;
        }
        return n;
    }

    /// Reclaims every expired entry now (writes do it a little at a time anyway).
    void purge_expired() {
        const auto now = now_ms();
        for (auto& s : shards_) {
            std::lock_guard lock(s.mutex);
            s.sweep(now, s.map.size());
        }
    }

    void clear() {
        for (auto& s : shards_) {
            std::lock_guard lock(s.mutex);
            s.map.clear();
            s.head = s.tail = s.hand = s.sweep_at = nullptr;
            s.bytes = 0;
        }
    }

private:
    // Per-entry cost beyond key and value bytes: node, map slot and allocator headers.
    static constexpr std::size_t node_overhead = 96;
    // Expired entries examined per write: enough to keep pace with the write rate.
    static constexpr std::size_t sweep_per_write = 2;

    struct Node {
        std::string key;
        std::string value;
        std::int64_t expires_at = 0;  // ms since epoch; 0 = never
        bool visited = false;
        Node* prev = nullptr;  // towards the head (newer)
        Node* next = nullptr;  // towards the tail (older)

        [[nodiscard]] std::size_t cost() const { return key.size() + value.size() + node_overhead; }
        [[nodiscard]] bool expired(std::int64_t now) const {
            return expires_at != 0 && expires_at <= now;
        }
    };

    struct Hash {
        using is_transparent = void;
        std::size_t operator()(std::string_view s) const noexcept {
            return std::hash<std::string_view>{}(s);
        }
    };

    struct Shard {
        mutable std::mutex mutex;
        // Keys are views into their node, which owns the bytes and never moves.
        std::unordered_map<std::string_view, std::unique_ptr<Node>, Hash, std::equal_to<>> map;
        Node* head = nullptr;      // newest
        Node* tail = nullptr;      // oldest
        Node* hand = nullptr;      // SIEVE's eviction hand, moves tail → head
        Node* sweep_at = nullptr;  // expiry sweep cursor, moves tail → head
        std::size_t bytes = 0;
        std::size_t max_entries = 0;
        std::size_t max_bytes = 0;

        Node* find_live(std::string_view key, std::int64_t now) {
            auto it = map.find(key);
            if (it == map.end()) return nullptr;
            Node* n = it->second.get();
            if (n->expired(now)) {
                erase(n);
                return nullptr;
            }
            return n;
        }

        void upsert(std::string_view key, std::string_view value, std::int64_t expires_at,
                    std::int64_t now, std::atomic<std::uint64_t>& evictions) {
            const std::size_t cost = key.size() + value.size() + node_overhead;
            if (cost > max_bytes) {
                throw BackendError("MemoryBackend: entry larger than a shard's byte budget");
            }
            sweep(now, sweep_per_write);
            if (auto it = map.find(key); it != map.end()) {
                Node* n = it->second.get();
                bytes -= n->cost();
                n->value.assign(value);
                n->expires_at = expires_at;
                bytes += n->cost();
                make_room(0, now, evictions, n);
                return;
            }
            make_room(cost, now, evictions, nullptr);
            auto node = std::make_unique<Node>();
            node->key.assign(key);
            node->value.assign(value);
            node->expires_at = expires_at;
            Node* n = node.get();
            map.emplace(std::string_view(n->key), std::move(node));
            link_front(n);
            bytes += n->cost();
        }

        // Evicts until `extra` more bytes and (when extra > 0) one more entry fit.
        void make_room(std::size_t extra, std::int64_t now, std::atomic<std::uint64_t>& evictions,
                       const Node* keep) {
            const std::size_t extra_entries = extra > 0 ? 1 : 0;
            while (!map.empty() &&
                   (map.size() + extra_entries > max_entries || bytes + extra > max_bytes)) {
                Node* victim = pick_victim(now, keep);
                if (!victim) return;
                if (!victim->expired(now)) evictions.fetch_add(1, std::memory_order_relaxed);
                erase(victim);
            }
        }

        // SIEVE: sweep the hand towards the head, clearing visited bits, and take the first
        // unvisited entry. Expired entries are taken at once.
        Node* pick_victim(std::int64_t now, const Node* keep) {
            for (std::size_t steps = 0; steps <= 2 * map.size() + 1; ++steps) {
                if (!hand) hand = tail;
                if (!hand) return nullptr;
                Node* n = hand;
                if (n != keep && (n->expired(now) || !n->visited)) return n;
                n->visited = false;
                hand = n->prev;
            }
            return nullptr;
        }

        void sweep(std::int64_t now, std::size_t budget) {
            for (std::size_t i = 0; i < budget && !map.empty(); ++i) {
                if (!sweep_at) sweep_at = tail;
                Node* n = sweep_at;
                sweep_at = n->prev;
                if (n->expired(now)) erase(n);
            }
        }

        void link_front(Node* n) {
            n->prev = nullptr;
            n->next = head;
            if (head) head->prev = n;
            head = n;
            if (!tail) tail = n;
        }

        void erase(Node* n) {
            if (hand == n) hand = n->prev;
            if (sweep_at == n) sweep_at = n->prev;
            if (n->prev)
                n->prev->next = n->next;
            else
                head = n->next;
            if (n->next)
                n->next->prev = n->prev;
            else
                tail = n->prev;
            bytes -= n->cost();
            map.erase(std::string_view(n->key));  // frees n
        }
    };

    // Redis's rules: optional '-', digits, no leading zeros, no "-0", fits in 64 bits.
    static bool parse_integer(std::string_view v, std::int64_t& out) {
        const std::size_t digits_at = !v.empty() && v[0] == '-' ? 1 : 0;
        if (v.size() == digits_at || v.size() > 20) return false;
        if (v[digits_at] == '0' && (v.size() > digits_at + 1 || digits_at == 1)) return false;
        auto [end, ec] = std::from_chars(v.data(), v.data() + v.size(), out);
        return ec == std::errc{} && end == v.data() + v.size();
    }

    // Time that never steps and, where the system has it, goes on during a suspend (an
    // entry's TTL is time that passed, asleep or not; CLOCK_MONOTONIC stops).
    [[nodiscard]] std::int64_t now_ms() const {
        if (clock_) return clock_->now().time_since_epoch().count();
#if defined(CLOCK_BOOTTIME)
        timespec ts{};
        clock_gettime(CLOCK_BOOTTIME, &ts);
        return static_cast<std::int64_t>(ts.tv_sec) * 1000 + ts.tv_nsec / 1'000'000;
#else
        return std::chrono::duration_cast<Millis>(
                   std::chrono::steady_clock::now().time_since_epoch())
            .count();
#endif
    }

    static std::int64_t expiry(std::int64_t now, Millis ttl) {
        return ttl.count() > 0 ? now + saturated(ttl).count() : 0;
    }

    static std::optional<Millis> remaining(const Node* n, std::int64_t now) {
        if (n->expires_at == 0) return std::nullopt;
        return Millis{n->expires_at - now};
    }

    Shard& shard(std::string_view key) {
        return shards_[Hash{}(key)&mask_];
    }

    const Clock* clock_;
    std::vector<Shard> shards_;
    std::size_t mask_ = 0;
    std::atomic<std::uint64_t> evictions_{0};
    LeaseNotices lease_notices_{LeaseNotices::always_listening};
};

static_assert(Backend<MemoryBackend>);
static_assert(Increments<MemoryBackend>);
static_assert(NotifiesLeaseEnds<MemoryBackend>);

}  // namespace larder
