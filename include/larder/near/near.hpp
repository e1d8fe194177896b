// Near<Policy, Bus>: a typed in-process cache (L1, a NearCache of objects) in front of any
// policy, kept coherent across processes by an invalidation bus (docs/l1.md).
//
//  - A hit in L1 decodes nothing and makes no round trip.
//  - A miss goes to the policy (and so to the shared store and the database); the value
//    is kept in L1 only if no invalidation of that key arrived meanwhile (a generation
//    check), so a value read before a write cannot land in L1 after it, and never longer
//    than the L1 TTL, nor than the entry it copied stays fresh as wall clocks tell it (the
//    writer stamps the envelope; a reader whose clock is behind, or stepped back, keeps
//    the copy longer than the store does, up to the L1 TTL).
//  - Every write through Near (every policy's verbs: invalidate, invalidate_after,
//    invalidate_tag, invalidate_version, set, put, modify, erase, increment) goes to the policy
//    first, then removes the key from this process's L1, then publishes it on the bus; every other
//    process removes it from its own L1 when the message arrives. A message the bus cannot carry
//    does not fail the write (it happened): it waits in an outbox, retried until the bus takes it.
//  - While the bus subscription is lost, L1 serves nothing (it cannot know what it
//    missed); when the subscription is back, L1 starts again from empty - unless the bus
//    replayed everything missed meanwhile (RedisBus's log), which keeps the hot set.
//
// A version bump (invalidate_tag, or a policy's Events invalidator) drops the keys whose
// stored entries are stamped with that version, as the policy reported them on the read
// that filled L1; keys whose versions it could not report are dropped by every bump.
#pragma once

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <deque>
#include <map>
#include <mutex>
#include <optional>
#include <set>
#include <span>
#include <stop_token>
#include <string>
#include <string_view>
#include <thread>
#include <utility>
#include <vector>

#include "larder/core/error.hpp"
#include "larder/core/loader.hpp"
#include "larder/invalidate/tags.hpp"
#include "larder/near/bus.hpp"
#include "larder/near/near_cache.hpp"
#include "larder/policy/options.hpp"

namespace larder {

template <class Policy, InvalidationBus Bus>
class Near {
public:
    using value_type = typename Policy::value_type;
    using T = value_type;

    /// Both are borrowed and must outlive this object.
    Near(Policy& policy, Bus& bus, NearCacheOptions options = {})
        : policy_(policy), bus_(bus), l1_(options) {
        l1_.suspend();  // until the bus confirms the subscription
        subscription_ = bus_.subscribe(BusHandlers{
            .on_message = [this](std::string_view m) { on_message(m); },
            // Kept, not served: the bus may come back having missed nothing.
            .on_lost = [this] { l1_.suspend(); },
            .on_restored =
                [this] {
                    l1_.clear();
                    forget_all_versions();
                    l1_.enable();
                    send_outbox();
                },
            // Every message missed meanwhile was replayed (and applied): no cold start.
            .on_resumed =
                [this] {
                    l1_.resume();
                    send_outbox();
                },
        });
    }

    Near(const Near&) = delete;
    Near& operator=(const Near&) = delete;
    ~Near() { subscription_.reset(); }  // no handler may run once members start to go

    template <class L>
    std::optional<T> get(std::string_view key, L&& loader, const CallOptions& call = {}) {
        return get(key, std::span<const std::string>{}, loader, call);
    }

    template <class L>
    std::optional<T> get(std::string_view key, std::span<const std::string> tags, L&& loader,
                         const CallOptions& call = {}) {
        if constexpr (detail::check_loader<T, L>()) {
            return read_through(key, tags, loader, call);
        } else {
            return std::nullopt;  // not compiled: check_loader failed the build
        }
    }

    template <class L>
    std::optional<T> get(std::string_view key, std::initializer_list<std::string> tags, L&& loader,
                         const CallOptions& call = {}) {
        return get(key, std::span<const std::string>(tags.begin(), tags.size()), loader, call);
    }

    /// Values for many keys, aligned with `keys`: L1's copies, and the policy's get_many
    /// for the rest. What the policy returns is not kept in L1: a batch read reports
    /// neither the versions nor the freshness of each entry, which an L1 copy needs.
    template <class BatchLoader>
    std::vector<std::optional<T>> get_many(std::span<const std::string> keys,
                                           BatchLoader&& batch_loader) requires
        requires(Policy& p) {
        p.get_many(keys, batch_loader);
    }
    { return get_many(keys, std::span<const std::vector<std::string>>{}, batch_loader); }

    /// get_many of keys that carry tags (tags[i] are keys[i]'s), as the policy's.
    template <class BatchLoader>
    std::vector<std::optional<T>> get_many(std::span<const std::string> keys,
                                           std::span<const std::vector<std::string>> tags,
                                           BatchLoader&& batch_loader) requires
        requires(Policy& p) {
        p.get_many(keys, tags, batch_loader);
    }
    {
        if (!tags.empty() && tags.size() != keys.size()) {
            throw ConfigError("get_many: " + std::to_string(tags.size()) + " tag lists for " +
                              std::to_string(keys.size()) + " keys");
        }
        std::vector<std::optional<T>> out(keys.size());
        std::vector<std::string> missed;
        std::vector<std::size_t> at;
        for (std::size_t i = 0; i < keys.size(); ++i) {
            if ((out[i] = l1_.get(policy_.full_key(keys[i])))) continue;
            missed.push_back(keys[i]);
            at.push_back(i);
        }
        if (missed.empty()) return out;
        std::vector<std::vector<std::string>> missed_tags;
        if (!tags.empty()) {
            for (const std::size_t i : at) missed_tags.push_back(tags[i]);
        }
        auto loaded =
            policy_.get_many(std::span<const std::string>(missed),
                             std::span<const std::vector<std::string>>(missed_tags), batch_loader);
        for (std::size_t m = 0; m < at.size(); ++m) out[at[m]] = std::move(loaded[m]);
        return out;
    }

    // ---- writes: the store first, then this process's L1, then every other one --------
    //
    // In that order: a local reader that read the old value before the write reached the
    // store cannot keep it in L1 afterwards (the erase after the write fails its fill), and
    // when the call returns, no read in this process sees the old value. A write that
    // throws may have happened (a timeout after sending, a database commit before the
    // failure): the L1 copies go all the same, and the error is rethrown.

    void invalidate(std::string_view key) {
        write(key, [&] { policy_.invalidate(key); });
    }

    /// The database write, then invalidate (as CacheAside::invalidate_after).
    template <std::invocable DbWrite>
    void invalidate_after(std::string_view key, DbWrite&& db_write) {
        write(key, [&] {
            std::invoke(db_write);
            policy_.invalidate(key);
        });
    }

    void invalidate_tag(std::string_view tag) { invalidate_version(Tags::version_name(tag)); }

    /// Bumps a version (a tag's, or an entity's with EntityVersions): every entry stamped
    /// with it goes, here and in every L1.
    void invalidate_version(std::string_view name) {
        struct After {
            Near& near;
            std::string name;
            ~After() {
                try {
                    near.drop_version(name);
                } catch (...) {
                    near.l1_.clear();  // out of memory: drop everything rather than guess
                }
                near.announce(std::string("v") += near.policy_.version_key(name));
            }
        } after{*this, std::string(name)};
        policy_.invalidate_version(name);
    }

    /// CacheAside's set: stores a value the caller already has.
    template <class... Args>
    decltype(auto) set(std::string_view key, Args&&... args) requires requires(Policy& p) {
        p.set(key, std::forward<Args>(args)...);
    }
    {
        return write(
            key, [&]() -> decltype(auto) { return policy_.set(key, std::forward<Args>(args)...); });
    }

    /// A write-through or write-behind policy's put.
    template <class... Args>
    decltype(auto) put(std::string_view key, Args&&... args) requires requires(Policy& p) {
        p.put(key, std::forward<Args>(args)...);
    }
    {
        return write(
            key, [&]() -> decltype(auto) { return policy_.put(key, std::forward<Args>(args)...); });
    }

    /// A write-behind policy's read-modify-write.
    template <class... Args>
    decltype(auto) modify(std::string_view key, Args&&... args) requires requires(Policy& p) {
        p.modify(key, std::forward<Args>(args)...);
    }
    {
        return write(key, [&]() -> decltype(auto) {
            return policy_.modify(key, std::forward<Args>(args)...);
        });
    }

    /// A write-behind policy's erase.
    template <class... Args>
    decltype(auto) erase(std::string_view key, Args&&... args) requires requires(Policy& p) {
        p.erase(key, std::forward<Args>(args)...);
    }
    {
        return write(key, [&]() -> decltype(auto) {
            return policy_.erase(key, std::forward<Args>(args)...);
        });
    }

    /// A write-behind policy's increment (of a field, or of an integer value).
    template <class... Args>
    decltype(auto) increment(std::string_view key, Args&&... args) requires requires(Policy& p) {
        p.increment(key, std::forward<Args>(args)...);
    }
    {
        return write(key, [&]() -> decltype(auto) {
            return policy_.increment(key, std::forward<Args>(args)...);
        });
    }

    [[nodiscard]] Policy& policy() noexcept { return policy_; }
    [[nodiscard]] NearCache<T>& l1() noexcept { return l1_; }

    /// Messages a write could not publish at once (the write itself succeeded or failed
    /// on its own); each waits in the outbox until the bus takes it.
    [[nodiscard]] std::uint64_t bus_errors() const noexcept { return bus_errors_.load(); }

    /// Messages waiting to be published again.
    [[nodiscard]] std::size_t unsent() const noexcept { return outbox_size_.load(); }

private:
    // Runs the policy's write of `key`, then drops the key from this L1 and announces it,
    // also when the write throws.
    template <class Op>
    decltype(auto) write(std::string_view key, Op&& op) {
        struct After {
            Near& near;
            std::string full;
            ~After() {
                near.l1_.erase(full);
                near.announce(std::string("k") += full);
            }
        } after{*this, policy_.full_key(key)};
        return std::invoke(op);
    }

    // The write has happened: a bus that cannot carry the news must not make it look
    // failed (a caller would retry a write that succeeded). The message waits in an outbox
    // and goes out with the next message, when the bus is back, or on a retry (every
    // 50 ms doubling to 1 s, on a thread that runs only while the outbox is not empty).
    // Until then the other processes' L1s may serve the old value: the message cannot be
    // replayed to them, since it has no number yet. Invalidations are idempotent and
    // commute, so a late one in any order is as good as a timely one.
    void announce(std::string message) noexcept {
        send_outbox();
        try {
            bus_.publish(message);
        } catch (...) {
            bus_errors_.fetch_add(1, std::memory_order_relaxed);
            keep(std::move(message));
        }
    }

    void keep(std::string message) noexcept {
        try {
            std::lock_guard lock(outbox_mutex_);
            if (outbox_.size() >= max_outbox) {
                // Too much missed to say which: every L1 starts over.
                outbox_.assign(1, std::string("*"));
                ++outbox_resets_;
            } else {
                outbox_.push_back(std::move(message));
            }
            outbox_size_.store(outbox_.size(), std::memory_order_release);
            if (!retrying_.exchange(true)) {
                std::lock_guard start(retrier_mutex_);
                retrier_ = std::jthread([this](std::stop_token stop) { retry_outbox(stop); });
            }
        } catch (...) {
            // Out of memory: nothing left to do but rely on the other L1s' TTL.
        }
    }

    // Publishes the outbox oldest first; a message leaves it once the bus took it, so
    // unsent() never reads 0 while one is still on its way. One sender at a time, and
    // never a wait for another: the bus's thread calls this holding its subscribers' lock,
    // which an in-process bus's publish takes.
    void send_outbox() noexcept {
        if (outbox_size_.load(std::memory_order_acquire) == 0) return;
        std::unique_lock sending(sending_mutex_, std::try_to_lock);
        if (!sending.owns_lock()) return;
        try {
            for (;;) {
                std::string next;
                std::uint64_t resets = 0;
                {
                    std::lock_guard lock(outbox_mutex_);
                    if (outbox_.empty()) return;
                    next = outbox_.front();
                    resets = outbox_resets_;
                }
                bus_.publish(next);
                std::lock_guard lock(outbox_mutex_);
                // Collapsed into "*" meanwhile: that one is still to go.
                if (resets == outbox_resets_) outbox_.pop_front();
                outbox_size_.store(outbox_.size(), std::memory_order_release);
            }
        } catch (...) {
            // Still refused: it stays, and the retry thread tries again.
        }
    }

    // The retry thread: goes while the outbox holds something.
    void retry_outbox(std::stop_token stop) {
        std::mutex mutex;
        std::condition_variable_any cv;
        std::unique_lock lock(mutex);
        auto wait = std::chrono::milliseconds(50);
        while (!cv.wait_for(lock, stop, wait, [] { return false; }) && !stop.stop_requested()) {
            send_outbox();
            if (outbox_size_.load(std::memory_order_acquire) == 0) {
                retrying_.store(false);
                // A message kept between the check and the store found the flag still set.
                if (outbox_size_.load(std::memory_order_acquire) == 0 || retrying_.exchange(true)) {
                    return;
                }
            }
            wait = std::min(wait * 2, std::chrono::milliseconds(1000));
        }
    }

    // L1 keeps a value only if no message about it arrived since before its read (a
    // generation check). During the read the key counts as depending on every version,
    // so any version message moves its generation; then it is indexed under the versions
    // the stored entry is stamped with, as the policy reports them.
    template <class L>
    std::optional<T> read_through(std::string_view key, std::span<const std::string> tags,
                                  L& loader, const CallOptions& call) {
        const std::string full = policy_.full_key(key);
        if (auto hit = l1_.get(full)) return hit;
        begin_read(full);
        const auto generation = l1_.generation(full);
        const auto started = l1_.now();
        typename Policy::Served served;
        std::optional<T> value;
        try {
            value = policy_.get_served(key, tags, loader, call, served);
        } catch (...) {
            end_read(full, nullptr, false);
            throw;
        }
        // Kept only what L2 may keep, and never longer than it stays fresh there: the
        // freshness was measured during the read, so what the read took (a slow refresh
        // that failed, a slow round trip) is taken off.
        std::optional<Millis> fresh_for = served.fresh_for;
        if (fresh_for) *fresh_for -= std::max(Millis{0}, l1_.now() - started);
        const bool keep = value && served.cacheable && (!fresh_for || fresh_for->count() > 0);
        end_read(full, served.known ? &served.names : nullptr, keep);
        if (keep) {
            if (fresh_for) {
                l1_.put_if_generation(full, *value, generation, *fresh_for);
            } else {
                l1_.put_if_generation(full, *value, generation);
            }
        }
        return value;
    }

    // The bus's vocabulary (bus.hpp). Keys of other caches on the same bus are not this
    // L1's business.
    void on_message(std::string_view m) {
        if (m.empty()) return;
        const std::string_view body = m.substr(1);
        if (m[0] == 'k') {
            // A stored key changed: an entry's, or (from server-assisted tracking, which
            // does not know what a key is for) a version's.
            if (policy_.keys().key_of(body)) {
                l1_.erase(body);
            } else if (const auto name = policy_.version_name_of(body)) {
                drop_version(*name);
            }
        } else if (m[0] == 'v') {
            // invalidate_tag, or a policy's Events invalidator
            if (const auto name = policy_.version_name_of(body)) drop_version(*name);
        } else if (m == "*") {
            // Everything may have changed (a flush of the store). The index first: a read
            // that indexes its key between the two must also have read its generation
            // before the clear, so its fill fails; one that reads it after keeps its entry.
            forget_all_versions();
            l1_.clear();
        }
    }

    // Which L1 keys depend on which version, so a version message drops exactly those;
    // the keys whose versions are not known and the keys being read, which every version
    // message drops. Touched on misses and invalidations only, never on a hit.
    void begin_read(const std::string& full) {
        std::lock_guard lock(index_mutex_);
        ++reading_[full];
    }

    // `names` null: unknown. `stored`: the value goes to L1.
    void end_read(const std::string& full, const std::vector<std::string>* names, bool stored) {
        std::lock_guard lock(index_mutex_);
        if (auto it = reading_.find(full); it != reading_.end() && --it->second == 0) {
            reading_.erase(it);
        }
        if (!stored) return;
        // L1 evicts without telling this index: when it has doubled, drop the keys L1 no
        // longer holds (amortized constant work per read; the hot set stays).
        if (indexed_ > prune_at_) prune();
        if (!names) {
            indexed_ += unknown_.insert(full).second ? 1 : 0;
            return;
        }
        for (const auto& n : *names) indexed_ += keys_by_version_[n].insert(full).second ? 1 : 0;
    }

    void drop_version(std::string_view name) {
        std::vector<std::string> keys;
        {
            std::lock_guard lock(index_mutex_);
            if (auto it = keys_by_version_.find(std::string(name)); it != keys_by_version_.end()) {
                keys.assign(it->second.begin(), it->second.end());
                indexed_ -= std::min(indexed_, it->second.size());
                keys_by_version_.erase(it);
            }
            keys.insert(keys.end(), unknown_.begin(), unknown_.end());
            indexed_ -= std::min(indexed_, unknown_.size());
            unknown_.clear();
            for (const auto& [k, readers] : reading_) keys.push_back(k);
        }
        for (const auto& k : keys) l1_.erase(k);
    }

    // Under index_mutex_. A key L1 does not hold may still be on its way in (indexed by
    // end_read, its put not yet made): erasing it fails that fill, so nothing enters L1
    // unindexed.
    void prune() {
        auto drop_absent = [&](std::set<std::string>& keys) {
            for (auto it = keys.begin(); it != keys.end();) {
                if (l1_.contains(*it)) {
                    ++it;
                } else {
                    l1_.erase(*it);
                    it = keys.erase(it);
                }
            }
        };
        indexed_ = 0;
        for (auto it = keys_by_version_.begin(); it != keys_by_version_.end();) {
            drop_absent(it->second);
            indexed_ += it->second.size();
            it = it->second.empty() ? keys_by_version_.erase(it) : std::next(it);
        }
        drop_absent(unknown_);
        indexed_ += unknown_.size();
        prune_at_ = std::max(2 * indexed_, min_prune_at());
    }

    [[nodiscard]] std::size_t min_prune_at() const noexcept { return 4 * l1_.capacity() + 1024; }

    void forget_all_versions() {
        std::lock_guard lock(index_mutex_);
        keys_by_version_.clear();
        unknown_.clear();
        indexed_ = 0;
    }

    Policy& policy_;
    Bus& bus_;
    NearCache<T> l1_;
    std::mutex index_mutex_;
    std::map<std::string, std::set<std::string>> keys_by_version_;
    std::set<std::string> unknown_;
    std::map<std::string, int> reading_;
    std::size_t indexed_ = 0;
    std::size_t prune_at_ = min_prune_at();
    static constexpr std::size_t max_outbox = 4096;
    std::mutex outbox_mutex_;
    std::deque<std::string> outbox_;
    std::uint64_t outbox_resets_ = 0;  // overflows collapsed into "*"
    std::atomic<std::size_t> outbox_size_{0};
    std::mutex sending_mutex_;
    std::atomic<std::uint64_t> bus_errors_{0};
    std::atomic<bool> retrying_{false};
    std::mutex retrier_mutex_;
    BusSubscription subscription_;
    std::jthread retrier_;  // last: stopped first, while the outbox it sends from is there
};

}  // namespace larder
