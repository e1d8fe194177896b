// Near<Policy, Bus>: a typed in-process cache (L1, a NearCache of objects) in front of any
// policy, kept coherent across processes by an invalidation bus.
//
//  - A hit in L1 decodes nothing and makes no round trip.
//  - A miss goes to the policy (and so to the shared store and the database); the value
//    is kept in L1 only if no invalidation of that key arrived meanwhile (a generation
//    check), so a value read before a write cannot land in L1 after it.
//  - Every write through Near (invalidate, invalidate_after, invalidate_tag, a policy's put)
//    removes the key from this process's L1 and publishes it on the bus; every other
//    process removes it from its own L1 when the message arrives. A message the bus
//    cannot carry does not fail the write (it happened); it is counted (bus_errors).
//  - While the bus subscription is lost, L1 serves nothing (it cannot know what it
//    missed); when the subscription is back, L1 starts again from empty.
//
// A version bump (invalidate_tag, or a policy's Events invalidator) drops the keys whose
// stored entries are stamped with that version, as the policy reported them on the read
// that filled L1; keys whose versions it could not report are dropped by every bump.
#pragma once

#include <atomic>
#include <map>
#include <mutex>
#include <optional>
#include <set>
#include <span>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

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
        l1_.disable();  // until the bus confirms the subscription
        subscription_ = bus_.subscribe(BusHandlers{
            .on_message = [this](std::string_view m) { on_message(m); },
            .on_lost = [this] { l1_.disable(); },
            .on_restored =
                [this] {
                    l1_.clear();
                    forget_all_versions();
                    l1_.enable();
                },
        });
    }

    Near(const Near&) = delete;
    Near& operator=(const Near&) = delete;
    ~Near() { subscription_.reset(); }  // no handler may run once members start to go

    template <LoaderFor<T> L>
    std::optional<T> get(std::string_view key, L&& loader, const CallOptions& call = {}) {
        return read_through(key, {}, loader, call);
    }

    template <LoaderFor<T> L>
    std::optional<T> get(std::string_view key, std::span<const std::string> tags, L&& loader,
                         const CallOptions& call = {}) {
        return read_through(key, tags, loader, call);
    }

    template <LoaderFor<T> L>
    std::optional<T> get(std::string_view key, std::initializer_list<std::string> tags, L&& loader,
                         const CallOptions& call = {}) {
        return read_through(key, std::span<const std::string>(tags.begin(), tags.size()), loader,
                            call);
    }

    /// The policy's invalidate, then every process's L1 - even when the policy's part
    /// fails (its error is rethrown): L1 copies go whatever the store did.
    void invalidate(std::string_view key) {
        const std::string full = policy_.full_key(key);
        l1_.erase(full);
        always_then(full, [&] { policy_.invalidate(key); });
    }

    /// The database write, then invalidate (as CacheAside::invalidate_after). A db_write
    /// that throws may have committed: the L1 copies go all the same.
    template <std::invocable DbWrite>
    void invalidate_after(std::string_view key, DbWrite&& db_write) {
        const std::string full = policy_.full_key(key);
        always_then(full, [&] {
            std::invoke(db_write);
            policy_.invalidate(key);
        });
    }

    void invalidate_tag(std::string_view tag) {
        const std::string name = Tags::version_name(tag);
        try {
            policy_.invalidate_tag(tag);
        } catch (...) {
            drop_version(name);
            publish_after_write(std::string("v") += policy_.version_key(name));
            throw;
        }
        drop_version(name);
        publish_after_write(std::string("v") += policy_.version_key(name));
    }

    /// A write-through or write-behind policy's put: the policy stores the value, then
    /// every process's L1 forgets the key.
    template <class... Args>
    decltype(auto) put(std::string_view key, Args&&... args) requires requires(Policy& p) {
        p.put(key, std::forward<Args>(args)...);
    }
    {
        const std::string full = policy_.full_key(key);
        l1_.erase(full);
        // Erased again once the write is done, or has failed (maybe having committed): a
        // read of the old value racing the write must not stay in L1, here or elsewhere.
        try {
            if constexpr (std::is_void_v<decltype(policy_.put(key, std::forward<Args>(args)...))>) {
                policy_.put(key, std::forward<Args>(args)...);
                forget(full);
            } else {
                decltype(auto) result = policy_.put(key, std::forward<Args>(args)...);
                forget(full);
                return result;
            }
        } catch (...) {
            l1_.erase(full);
            publish_after_write(std::string("k") += full);
            throw;
        }
    }

    [[nodiscard]] Policy& policy() noexcept { return policy_; }
    [[nodiscard]] NearCache<T>& l1() noexcept { return l1_; }

    /// Messages a write could not publish (the write itself succeeded or failed on its
    /// own): other processes' L1 copies of those keys may last until their L1 TTL.
    [[nodiscard]] std::uint64_t bus_errors() const noexcept { return bus_errors_.load(); }

private:
    void forget(const std::string& full) {
        l1_.erase(full);
        publish_after_write(std::string("k") += full);
    }

    // The write has happened: a bus that cannot carry the news must not make it look
    // failed (a caller would retry a write that succeeded). It is counted instead; the
    // other processes' L1s are then bounded by their TTL - and a bus that cannot publish
    // has usually lost their subscriptions too, which turns those L1s off.
    void publish_after_write(const std::string& message) noexcept {
        try {
            bus_.publish(message);
        } catch (...) {
            bus_errors_.fetch_add(1, std::memory_order_relaxed);
        }
    }

    // Runs `write`, then drops `full` from every L1, also when `write` throws.
    template <class Write>
    void always_then(const std::string& full, Write&& write) {
        try {
            std::invoke(write);
        } catch (...) {
            l1_.erase(full);
            publish_after_write(std::string("k") += full);
            throw;
        }
        forget(full);
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
        typename Policy::Served served;
        std::optional<T> value;
        try {
            value = policy_.get_served(key, tags, loader, call, served);
        } catch (...) {
            end_read(full, nullptr, false);
            throw;
        }
        // Kept only what L2 may keep, and never longer than it stays fresh there.
        const bool keep =
            value && served.cacheable && (!served.fresh_for || served.fresh_for->count() > 0);
        end_read(full, served.known ? &served.names : nullptr, keep);
        if (keep) {
            if (served.fresh_for) {
                l1_.put_if_generation(full, *value, generation, *served.fresh_for);
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
            // Everything may have changed (a flush of the store).
            l1_.clear();
            forget_all_versions();
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
        // L1 evicts without telling this index; past a bound, start both over (safe: a
        // miss) rather than let the index grow.
        if (indexed_ > 4 * l1_.capacity() + 1024) {
            keys_by_version_.clear();
            unknown_.clear();
            indexed_ = 0;
            l1_.clear();
        }
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
    std::atomic<std::uint64_t> bus_errors_{0};
    BusSubscription subscription_;  // last: gone first
};

}  // namespace larder
