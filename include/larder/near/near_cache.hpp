// NearCache<T>: the typed in-process L1 that sits in front of any backend. It keeps objects,
// not bytes, so a hit decodes nothing and makes no round trip: it copies the T out, or lends
// it to a visitor. Bounded by entries (SIEVE per shard), with its own short TTL, and a
// generation guard that keeps a fill which raced an invalidation out of the cache.
//
// A hit takes no lock and writes no cache line that another core reads. Entries are
// immutable nodes in a chained hash table of atomic pointers; writers serialize per shard
// and publish with release stores; a reader announces itself in its own per-thread slot
// (epoch-based reclamation, near/detail/epoch.hpp), counts in its own per-thread stripe, and
// sets a node's SIEVE bit only when the bit is clear, so a hot key's hit stores nothing.
#pragma once

#include <algorithm>
#include <array>
#include <atomic>
#include <bit>
#include <chrono>
#include <concepts>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <functional>
#include <limits>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <string_view>
#include <thread>
#include <type_traits>
#include <utility>

#include <time.h>

#include "larder/core/clock.hpp"
#include "larder/core/error.hpp"
#include "larder/core/stats.hpp"
#include "larder/near/detail/epoch.hpp"

namespace larder {

/// What one NearCache did since it was built.
struct NearCacheStats {
    std::uint64_t hits = 0;       ///< lookups that found a live entry
    std::uint64_t misses = 0;     ///< lookups that did not
    std::uint64_t evictions = 0;  ///< entries dropped to stay within max_entries

    friend bool operator==(const NearCacheStats&, const NearCacheStats&) = default;
};

template <>
struct counter_set<NearCacheStats> {
    using S = NearCacheStats;
    static constexpr std::string_view family = "near_cache";
    static constexpr std::array<CounterField<S>, 3> fields{{
        {"hits", "lookups that found a live entry", &S::hits},
        {"misses", "lookups that did not", &S::misses},
        {"evictions", "entries dropped to stay within max_entries", &S::evictions},
    }};
};

struct NearCacheOptions {
    /// Upper bound on entries, split evenly over the shards (so the bound holds per shard).
    std::size_t max_entries = 10'000;
    /// L1's own time to live, counted from the put. Keep it short: it bounds how long a
    /// value can outlive an invalidation that never arrived. put() can shorten it per entry.
    Millis ttl = std::chrono::seconds(5);
    /// Writer lock shards, rounded up to a power of two; 0 picks one from the core count.
    /// Reads never lock, so this only matters for concurrent puts and erases.
    std::size_t shards = 0;
    /// nullptr: a coarse monotonic clock (CLOCK_MONOTONIC_COARSE, a few ns per read,
    /// resolution one kernel tick); inject a ManualClock in tests.
    const Clock* clock = nullptr;
};

namespace detail {

[[nodiscard]] inline std::uint64_t near_load64(const char* p) noexcept {
    std::uint64_t w;
    std::memcpy(&w, p, 8);
    return w;
}

[[nodiscard]] inline std::uint64_t near_load32(const char* p) noexcept {
    std::uint32_t w;
    std::memcpy(&w, p, 4);
    return w;
}

/// A 64-bit string hash (8 bytes per step, murmur3's finalizer), seeded per cache so that
/// keys chosen to share a bucket in one process do not in another: colliding keys would
/// build long chains and, sharing a bucket's generation, keep a target key's fills
/// failing. Short tails are read with overlapping loads instead of byte by byte; with the
/// length mixed in first, the words read still determine the string.
[[nodiscard]] inline std::uint64_t near_hash(std::string_view s,
                                             std::uint64_t seed = 0x243F6A8885A308D3ull) noexcept {
    constexpr std::uint64_t m = 0x9E3779B97F4A7C15ull;
    const char* p = s.data();
    const std::size_t n = s.size();
    std::uint64_t h = seed ^ (static_cast<std::uint64_t>(n) * m);
    auto step = [&h](std::uint64_t w) {
        h = (h ^ w) * m;
        h ^= h >> 32;
    };
    if (n >= 8) {
        const char* last = p + n - 8;
        for (; p < last; p += 8) step(near_load64(p));
        step(near_load64(last));
    } else if (n >= 4) {
        step((near_load32(p) << 32) | near_load32(p + n - 4));
    } else if (n > 0) {
        const auto byte = [p](std::size_t i) {
            return static_cast<std::uint64_t>(static_cast<unsigned char>(p[i]));
        };
        step((byte(0) << 16) | (byte(n / 2) << 8) | byte(n - 1));
    }
    h ^= h >> 33;
    h *= 0xff51afd7ed558ccdull;
    h ^= h >> 33;
    h *= 0xc4ceb9fe1a85ec53ull;
    h ^= h >> 33;
    return h;
}

/// A seed no other process can predict: the address space layout and the time, mixed.
[[nodiscard]] inline std::uint64_t near_random_seed(const void* salt) noexcept {
    static std::atomic<std::uint64_t> counter{0};
    std::uint64_t x =
        static_cast<std::uint64_t>(reinterpret_cast<std::uintptr_t>(salt)) ^
        static_cast<std::uint64_t>(std::chrono::steady_clock::now().time_since_epoch().count()) ^
        (counter.fetch_add(1, std::memory_order_relaxed) << 48);
    x += 0x9E3779B97F4A7C15ull;  // splitmix64
    x = (x ^ (x >> 30)) * 0xBF58476D1CE4E5B9ull;
    x = (x ^ (x >> 27)) * 0x94D049BB133111EBull;
    return x ^ (x >> 31);
}

/// Key equality without a call into memcmp for keys up to 16 bytes (most cache keys).
[[nodiscard]] inline bool near_key_equal(std::string_view a, std::string_view b) noexcept {
    const std::size_t n = a.size();
    if (n != b.size()) return false;
    const char* x = a.data();
    const char* y = b.data();
    if (n >= 8 && n <= 16) {
        return ((near_load64(x) ^ near_load64(y)) |
                (near_load64(x + n - 8) ^ near_load64(y + n - 8))) == 0;
    }
    if (n >= 4 && n < 8) {
        return ((near_load32(x) ^ near_load32(y)) |
                (near_load32(x + n - 4) ^ near_load32(y + n - 4))) == 0;
    }
    return n == 0 || std::memcmp(x, y, n) == 0;
}

/// Milliseconds on a clock that never jumps. L1's expiry times never leave the process, so
/// they need no wall time, and a wall-clock step backwards would stretch every entry's life.
[[nodiscard]] inline std::int64_t coarse_monotonic_ms() noexcept {
#if defined(CLOCK_MONOTONIC_COARSE)
    timespec ts{};
    clock_gettime(CLOCK_MONOTONIC_COARSE, &ts);
    return static_cast<std::int64_t>(ts.tv_sec) * 1000 + ts.tv_nsec / 1'000'000;
#else
    return std::chrono::duration_cast<Millis>(std::chrono::steady_clock::now().time_since_epoch())
        .count();
#endif
}

}  // namespace detail

/// A typed, bounded, short-lived in-process cache. Thread-safe; see docs/l1.md.
///
/// Coherence: erase(), put(), clear(), disable() and enable() change the generation of what
/// they touch, and put_if_generation() stores only if the generation it was given is still
/// current, checked atomically with the store. A fill therefore reads `generation(key)`
/// before loading from L2 and stores with put_if_generation(): a value loaded before an
/// invalidation cannot land in L1 after it. Generations are kept per hash bucket (there are
/// at least max_entries buckets), so an erase of another key in the same bucket also fails
/// a racing fill: a spurious L1 miss, never a stale value.
template <class T>
class NearCache {
    static_assert(std::is_object_v<T> && !std::is_const_v<T> && std::is_move_constructible_v<T>,
                  "NearCache<T> holds objects: T must be a non-const, move-constructible type");

public:
    explicit NearCache(NearCacheOptions options = {})
        : clock_(options.clock),
          ttl_ms_(options.ttl.count()),
          seed_(detail::near_random_seed(this)) {
        if (options.max_entries == 0) throw ConfigError("NearCache: max_entries must be positive");
        if (options.ttl.count() <= 0) throw ConfigError("NearCache: ttl must be positive");

        std::size_t n = options.shards;
        if (n == 0) {
            n = std::clamp<std::size_t>(4 * std::thread::hardware_concurrency(), 4, 64);
            // Automatic shards stay big enough for SIEVE to tell hot from cold.
            while (n > 1 && options.max_entries / n < 64) n /= 2;
        }
        n = std::min<std::size_t>(std::bit_ceil(n), 256);
        while (n > 1 && options.max_entries / n == 0) n /= 2;

        const std::size_t per_shard = options.max_entries / n;
        const std::size_t buckets_per_shard = std::bit_ceil(std::max<std::size_t>(per_shard, 16));
        shard_shift_ = static_cast<unsigned>(std::countr_zero(buckets_per_shard));
        bucket_mask_ = n * buckets_per_shard - 1;

        buckets_.reset(new std::atomic<Node*>[n * buckets_per_shard]());
        generations_.reset(new std::atomic<std::uint64_t>[n * buckets_per_shard]());
        counters_.reset(new CounterStripe[counter_stripes + 1]);
        shards_.reset(new Shard[n]);
        shard_count_ = n;
        for (std::size_t i = 0; i < n; ++i) shards_[i].capacity = per_shard;
    }

    NearCache(const NearCache&) = delete;
    NearCache& operator=(const NearCache&) = delete;

    /// Requires that no other thread is still using the cache.
    ~NearCache() {
        for (std::size_t i = 0; i < shard_count_; ++i) {
            Shard& s = shards_[i];
            for (Node* n = s.newest; n;) delete std::exchange(n, n->older);
            for (Node* n = s.retired_head; n;) delete std::exchange(n, n->retired_next);
        }
    }

    /// A copy of the cached object, or nullopt (absent, expired, or the cache is disabled).
    [[nodiscard]] std::optional<T> get(
        std::string_view key) const requires std::copy_constructible<T> {
        const detail::EpochGuard guard;
        const Node* n = lookup(key, guard);
        if (n == nullptr) return std::nullopt;
        return std::optional<T>(std::in_place, n->value);  // copied before the guard ends
    }

    /// Calls f(const T&) on the cached object without copying it; false on a miss. The
    /// reference is valid only during the call. f runs inside a read section, which holds
    /// back the freeing of replaced entries in every NearCache of the process: keep it short
    /// and never block in it. f may read and write this or another NearCache.
    template <class F>
    bool visit(std::string_view key, F&& f) const {
        const detail::EpochGuard guard;
        const Node* n = lookup(key, guard);
        if (n == nullptr) return false;
        std::invoke(std::forward<F>(f), n->value);
        return true;
    }

    /// Stores value for the cache's ttl. Also invalidates fills of this key in flight (their
    /// put_if_generation fails), since their value may be older than this one.
    void put(std::string_view key, T value) {
        (void)store(key, std::move(value), ttl_ms_, nullptr);
    }

    /// As put(), but the entry lives min(ttl, options.ttl): pass L2's remaining TTL so that
    /// L1 never outlives the entry it copied. A ttl <= 0 stores nothing and acts as erase():
    /// the old value is no more current than the new one.
    void put(std::string_view key, T value, Millis ttl) {
        if (ttl.count() <= 0) {
            (void)erase(key);
            return;
        }
        (void)store(key, std::move(value), std::min(ttl.count(), ttl_ms_), nullptr);
    }

    /// The generation to pass to put_if_generation(), read before loading the value.
    [[nodiscard]] std::uint64_t generation(std::string_view key) const noexcept {
        return generation_of(hash(key) & bucket_mask_);
    }

    /// Whether a live entry is held (and served: the cache is enabled). Not counted as a
    /// hit or a miss, and does not mark the entry as visited.
    [[nodiscard]] bool contains(std::string_view key) const {
        const detail::EpochGuard guard;
        const Node* n = enabled_.load(std::memory_order_relaxed) ? find(hash(key), key) : nullptr;
        return n != nullptr && n->expires_at > now_ms();
    }

    /// Stores value only if nothing invalidated the key since `generation` was read: no
    /// erase, put, clear, disable or enable (and no erase or put of a key sharing its
    /// bucket). Returns whether it stored. A fill stores this way, so it never overwrites
    /// a newer value or resurrects an erased one.
    bool put_if_generation(std::string_view key, T value, std::uint64_t generation) {
        return store(key, std::move(value), ttl_ms_, &generation);
    }

    bool put_if_generation(std::string_view key, T value, std::uint64_t generation, Millis ttl) {
        return store(key, std::move(value), std::min(ttl.count(), ttl_ms_), &generation);
    }

    /// Removes the key and fails every fill of it in flight. True if a live entry was removed.
    bool erase(std::string_view key) {
        const std::uint64_t h = hash(key);
        const std::size_t b = h & bucket_mask_;
        const std::int64_t now = now_ms();
        Shard& s = shard_of(b);
        std::lock_guard lock(s.mutex);
        bump_generation(b);
        Node* n = find(h, key);
        if (n == nullptr) return false;
        const bool live = n->expires_at > now;
        remove(s, n);
        collect(s);
        return live;
    }

    /// Drops every entry and fails every fill in flight.
    void clear() {
        std::lock_guard admin(admin_mutex_);
        drop_all();
    }

    /// Stops serving and storing: get() misses and put() stores nothing until enable().
    /// For an invalidation subscriber that lost its subscription: L1 cannot know what it
    /// missed meanwhile, so it must not serve what it holds.
    void disable() {
        std::lock_guard admin(admin_mutex_);
        enabled_.store(false, std::memory_order_release);
        drop_all();
    }

    /// Serves again, starting from empty; fills that started before fail.
    void enable() {
        std::lock_guard admin(admin_mutex_);
        drop_all();
        enabled_.store(true, std::memory_order_release);
    }

    /// Stops serving and storing, like disable(), but keeps what it holds (erase() still
    /// removes entries): for a subscription that may come back with nothing missed.
    /// Fills that started before fail.
    void suspend() {
        std::lock_guard admin(admin_mutex_);
        enabled_.store(false, std::memory_order_release);
        clears_.fetch_add(1, std::memory_order_acq_rel);
    }

    /// Serves again what suspend() kept (and erase() left); fills that started before fail.
    void resume() {
        std::lock_guard admin(admin_mutex_);
        clears_.fetch_add(1, std::memory_order_acq_rel);
        enabled_.store(true, std::memory_order_release);
    }

    [[nodiscard]] bool enabled() const noexcept { return enabled_.load(std::memory_order_acquire); }

    /// The time on the cache's clock (entries expire by it), as milliseconds since its epoch.
    [[nodiscard]] Millis now() const noexcept { return Millis{now_ms()}; }

    /// Entries held, counting expired ones not reclaimed yet.
    [[nodiscard]] std::size_t size() const noexcept {
        std::size_t n = 0;
        for (std::size_t i = 0; i < shard_count_; ++i) {
            n += shards_[i].count.load(std::memory_order_relaxed);
        }
        return n;
    }

    /// Hits, misses and evictions (entries dropped to stay within max_entries; expiry
    /// not included) since construction; local, no I/O.
    [[nodiscard]] NearCacheStats stats() const noexcept {
        NearCacheStats s;
        s.hits = sum(&CounterStripe::hits);
        s.misses = sum(&CounterStripe::misses);
        for (std::size_t i = 0; i < shard_count_; ++i) {
            s.evictions += shards_[i].evictions.load(std::memory_order_relaxed);
        }
        return s;
    }

    /// Entries held at most: max_entries rounded down to a multiple of the shard count.
    [[nodiscard]] std::size_t capacity() const noexcept {
        return shard_count_ * shards_[0].capacity;
    }

private:
    // Nodes retired per shard between attempts to free them. Each attempt advances the
    // process-wide epoch (a store readers then miss in cache once) and scans every slot.
    static constexpr std::size_t retire_batch = 64;
    static constexpr std::size_t counter_stripes = 64;
    static constexpr std::size_t expired_checks_per_write = 2;

    // Immutable once published, except `next` (relinked by writers), `visited` (SIEVE's
    // bit) and the writer-only fields at the end, which readers never touch. Aligned so
    // that what a lookup reads (link, hash, expiry, bit, key) is one cache line and the
    // value starts on the next.
    struct alignas(64) Node {
        Node(std::uint64_t h, std::string_view k, T&& v, std::int64_t expires)
            : hash(h), expires_at(expires), key(k), value(std::move(v)) {}

        std::atomic<Node*> next{nullptr};
        const std::uint64_t hash;
        const std::int64_t expires_at;
        mutable std::atomic<bool> visited{false};
        const std::string key;
        const T value;

        // Writer side, under the shard's mutex.
        Node* newer = nullptr;  // SIEVE queue, towards the newest
        Node* older = nullptr;  // SIEVE queue, towards the oldest
        Node* retired_next = nullptr;
        std::uint64_t retired_at = 0;  // epoch stamp
    };

    struct alignas(64) Shard {
        std::mutex mutex;
        Node* newest = nullptr;
        Node* oldest = nullptr;
        Node* hand = nullptr;      // SIEVE's eviction hand, moves oldest → newest
        Node* sweep_at = nullptr;  // expiry sweep cursor, moves oldest → newest
        std::size_t capacity = 0;
        std::size_t held = 0;
        Node* retired_head = nullptr;  // oldest stamp first
        Node* retired_tail = nullptr;
        std::size_t retired = 0;
        std::size_t next_collect = retire_batch;
        std::atomic<std::size_t> count{0};  // `held`, for size() without the lock
        std::atomic<std::uint64_t> evictions{0};
    };

    // Hits and misses per thread: a thread with a dense index below counter_stripes is the
    // only writer of its stripe, so it counts with a plain load and store (no locked
    // instruction); threads beyond share the last stripe with atomic increments.
    struct alignas(64) CounterStripe {
        std::atomic<std::uint64_t> hits{0};
        std::atomic<std::uint64_t> misses{0};
    };

    using Counter = std::atomic<std::uint64_t> CounterStripe::*;

    void bump(std::size_t thread, Counter which) const noexcept {
        if (thread < counter_stripes) {
            auto& c = counters_[thread].*which;
            c.store(c.load(std::memory_order_relaxed) + 1, std::memory_order_relaxed);
        } else {
            (counters_[counter_stripes].*which).fetch_add(1, std::memory_order_relaxed);
        }
    }

    [[nodiscard]] std::uint64_t sum(Counter which) const noexcept {
        std::uint64_t n = 0;
        for (std::size_t i = 0; i <= counter_stripes; ++i) {
            n += (counters_[i].*which).load(std::memory_order_relaxed);
        }
        return n;
    }

    [[nodiscard]] std::uint64_t hash(std::string_view key) const noexcept {
        return detail::near_hash(key, seed_);
    }

    [[nodiscard]] std::int64_t now_ms() const noexcept {
        return clock_ ? clock_->now().time_since_epoch().count() : detail::coarse_monotonic_ms();
    }

    // The hit path. Inside the caller's read section; counts the hit or the miss.
    [[nodiscard]] const Node* lookup(std::string_view key,
                                     const detail::EpochGuard& guard) const noexcept {
        const std::uint64_t h = hash(key);
        const std::int64_t now = now_ms();
        const Node* n = enabled_.load(std::memory_order_relaxed) ? find(h, key) : nullptr;
        if (n == nullptr || n->expires_at <= now) {
            bump(guard.thread_index(), &CounterStripe::misses);
            return nullptr;
        }
        // SIEVE's bit, stored only when clear: a key that stays hot is never written to.
        if (!n->visited.load(std::memory_order_relaxed)) {
            n->visited.store(true, std::memory_order_relaxed);
        }
        bump(guard.thread_index(), &CounterStripe::hits);
        return n;
    }

    [[nodiscard]] Shard& shard_of(std::size_t bucket) const noexcept {
        return shards_[bucket >> shard_shift_];
    }

    // Link loads and stores are seq_cst (loads are plain loads on x86 and AArch64): the
    // reclamation argument in detail/epoch.hpp orders them with the epoch operations.
    [[nodiscard]] Node* find(std::uint64_t h, std::string_view key) const noexcept {
        for (Node* n = buckets_[h & bucket_mask_].load(std::memory_order_seq_cst); n;
             n = n->next.load(std::memory_order_seq_cst)) {
            if (n->hash == h && detail::near_key_equal(n->key, key)) return n;
        }
        return nullptr;
    }

    // Generation of a bucket: its own counter plus the cache-wide clear counter. Both only
    // grow, so the sum changes whenever either does; it never comes back to an old value.
    [[nodiscard]] std::uint64_t generation_of(std::size_t bucket) const noexcept {
        return generations_[bucket].load(std::memory_order_acquire) +
               clears_.load(std::memory_order_acquire);
    }

    // Under the bucket's shard mutex.
    void bump_generation(std::size_t bucket) noexcept {
        auto& g = generations_[bucket];
        g.store(g.load(std::memory_order_relaxed) + 1, std::memory_order_release);
    }

    bool store(std::string_view key, T&& value, std::int64_t ttl_ms,
               const std::uint64_t* expected_generation) {
        if (ttl_ms <= 0 || !enabled_.load(std::memory_order_relaxed)) return false;
        const std::uint64_t h = hash(key);
        const std::size_t b = h & bucket_mask_;
        const std::int64_t now = now_ms();
        // Saturated: a TTL of Millis::max() means "as long as the cache's own ttl allows".
        const std::int64_t expires = ttl_ms > std::numeric_limits<std::int64_t>::max() - now
                                         ? std::numeric_limits<std::int64_t>::max()
                                         : now + ttl_ms;
        // Built before taking the lock: copying the key and moving T may allocate.
        auto node = std::make_unique<Node>(h, key, std::move(value), expires);

        Shard& s = shard_of(b);
        std::lock_guard lock(s.mutex);
        // Re-checked under the lock: disable() empties each shard under this same lock.
        if (!enabled_.load(std::memory_order_acquire)) return false;
        if (expected_generation) {
            if (generation_of(b) != *expected_generation) return false;
        } else {
            bump_generation(b);
        }
        sweep_expired(s, now);
        link(s, b, node.release(), now);
        collect(s);
        return true;
    }

    void link(Shard& s, std::size_t b, Node* n, std::int64_t now) {
        std::atomic<Node*>* at = &buckets_[b];
        for (Node* c = at->load(std::memory_order_relaxed); c;
             at = &c->next, c = at->load(std::memory_order_relaxed)) {
            if (c->hash != n->hash || !detail::near_key_equal(c->key, n->key)) continue;
            // Replace: the new node takes the old one's place in its chain and in the
            // SIEVE queue, and keeps its visited bit.
            n->visited.store(c->visited.load(std::memory_order_relaxed), std::memory_order_relaxed);
            n->next.store(c->next.load(std::memory_order_relaxed), std::memory_order_relaxed);
            queue_replace(s, c, n);
            at->store(n, std::memory_order_seq_cst);
            retire(s, c);
            return;
        }
        while (s.held >= s.capacity && evict_one(s, now)) {
        }
        std::atomic<Node*>& head = buckets_[b];  // reloaded: an eviction may have changed it
        n->next.store(head.load(std::memory_order_relaxed), std::memory_order_relaxed);
        head.store(n, std::memory_order_seq_cst);
        queue_push(s, n);
        s.count.store(++s.held, std::memory_order_relaxed);
    }

    // SIEVE (Zhang et al., NSDI 2024): the hand walks from the oldest entry towards the
    // newest, clearing visited bits, and evicts the first entry that was not visited since
    // the hand last passed it. Expired entries go first. Readers may set bits again behind
    // the hand, so after two full passes the entry under the hand goes anyway: the bound
    // on entries holds whatever the readers do.
    bool evict_one(Shard& s, std::int64_t now) {
        for (std::size_t steps = 0;; ++steps) {
            if (!s.hand) s.hand = s.oldest;
            Node* n = s.hand;
            if (!n) return false;
            if (n->expires_at <= now || !n->visited.load(std::memory_order_relaxed) ||
                steps > 2 * s.held) {
                if (n->expires_at > now) s.evictions.fetch_add(1, std::memory_order_relaxed);
                remove(s, n);
                return true;
            }
            n->visited.store(false, std::memory_order_relaxed);
            s.hand = n->newer;
        }
    }

    // Reclaims expired entries a few at a time, so memory is returned without a thread.
    void sweep_expired(Shard& s, std::int64_t now) {
        for (std::size_t i = 0; i < expired_checks_per_write && s.held > 0; ++i) {
            if (!s.sweep_at) s.sweep_at = s.oldest;
            Node* n = s.sweep_at;
            s.sweep_at = n->newer;
            if (n->expires_at <= now) remove(s, n);
        }
    }

    void remove(Shard& s, Node* n) {
        std::atomic<Node*>* at = &buckets_[n->hash & bucket_mask_];
        while (at->load(std::memory_order_relaxed) != n) {
            at = &at->load(std::memory_order_relaxed)->next;
        }
        // Readers standing on n still follow n->next, which stays valid until n is freed.
        at->store(n->next.load(std::memory_order_relaxed), std::memory_order_seq_cst);
        queue_unlink(s, n);
        s.count.store(--s.held, std::memory_order_relaxed);
        retire(s, n);
    }

    void queue_push(Shard& s, Node* n) {
        n->newer = nullptr;
        n->older = s.newest;
        if (s.newest) s.newest->newer = n;
        s.newest = n;
        if (!s.oldest) s.oldest = n;
    }

    void queue_unlink(Shard& s, Node* n) {
        if (s.hand == n) s.hand = n->newer;
        if (s.sweep_at == n) s.sweep_at = n->newer;
        (n->newer ? n->newer->older : s.newest) = n->older;
        (n->older ? n->older->newer : s.oldest) = n->newer;
    }

    void queue_replace(Shard& s, Node* old, Node* n) {
        n->newer = old->newer;
        n->older = old->older;
        (n->newer ? n->newer->older : s.newest) = n;
        (n->older ? n->older->newer : s.oldest) = n;
        if (s.hand == old) s.hand = n;
        if (s.sweep_at == old) s.sweep_at = n;
    }

    // After the unlink: stamp and queue for freeing once no reader can hold the node.
    void retire(Shard& s, Node* n) {
        n->retired_at = detail::EpochDomain::global().retire_epoch();
        append_retired(s, n, n, 1);
    }

    void append_retired(Shard& s, Node* first, Node* last, std::size_t count) {
        last->retired_next = nullptr;
        (s.retired_tail ? s.retired_tail->retired_next : s.retired_head) = first;
        s.retired_tail = last;
        s.retired += count;
    }

    // Every retire_batch retirements: try to move the epoch two steps (enough, when no
    // reader is inside, to free everything retired so far) and free what is old enough.
    void collect(Shard& s) {
        if (s.retired < s.next_collect) return;
        auto& domain = detail::EpochDomain::global();
        if (domain.try_advance()) (void)domain.try_advance();
        const std::uint64_t now = domain.epoch();
        while (s.retired_head && s.retired_head->retired_at + 2 <= now) {
            Node* n = std::exchange(s.retired_head, s.retired_head->retired_next);
            delete n;
            --s.retired;
        }
        if (!s.retired_head) s.retired_tail = nullptr;
        s.next_collect = s.retired + retire_batch;
    }

    // Under admin_mutex_. The clear counter moves first, so a fill that read its generation
    // before this call fails even in a shard that has not been emptied yet.
    void drop_all() {
        clears_.fetch_add(1, std::memory_order_acq_rel);
        const std::size_t buckets_per_shard = std::size_t{1} << shard_shift_;
        for (std::size_t i = 0; i < shard_count_; ++i) {
            Shard& s = shards_[i];
            std::lock_guard lock(s.mutex);
            if (!s.newest) continue;
            for (std::size_t b = i * buckets_per_shard; b < (i + 1) * buckets_per_shard; ++b) {
                if (buckets_[b].load(std::memory_order_relaxed)) {
                    buckets_[b].store(nullptr, std::memory_order_seq_cst);
                }
            }
            // One stamp for the whole shard, taken after every unlink.
            const std::uint64_t stamp = detail::EpochDomain::global().retire_epoch();
            for (Node* n = s.newest; n; n = n->older) {
                n->retired_at = stamp;
                n->retired_next = n->older;
            }
            append_retired(s, s.newest, s.oldest, s.held);
            s.newest = s.oldest = s.hand = s.sweep_at = nullptr;
            s.held = 0;
            s.count.store(0, std::memory_order_relaxed);
            collect(s);
        }
    }

    // Read on every hit; written only at construction (and enabled_ by disable/enable).
    const Clock* clock_;
    std::int64_t ttl_ms_;
    std::uint64_t seed_;
    std::size_t bucket_mask_ = 0;
    unsigned shard_shift_ = 0;
    std::unique_ptr<std::atomic<Node*>[]> buckets_;
    std::unique_ptr<CounterStripe[]> counters_;
    std::atomic<bool> enabled_{true};

    alignas(64) std::unique_ptr<std::atomic<std::uint64_t>[]> generations_;  // per bucket
    std::atomic<std::uint64_t> clears_{0};
    std::unique_ptr<Shard[]> shards_;
    std::size_t shard_count_ = 0;
    std::mutex admin_mutex_;  // serializes clear, disable, enable
};

}  // namespace larder
