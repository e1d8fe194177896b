// Near<Policy, Bus>: a typed in-process cache (L1, a NearCache of objects) in front of any
// policy, kept coherent across processes by an invalidation bus.
//
//  - A hit in L1 decodes nothing and makes no round trip.
//  - A miss goes to the policy (and so to the shared store and the database); the value
//    is kept in L1 only if no invalidation of that key arrived meanwhile (a generation
//    check), so a value read before a write cannot land in L1 after it.
//  - Every write through Near (invalidate, update, invalidate_tag, and a policy's put)
//    removes the key from this process's L1 and publishes it on the bus; every other
//    process removes it from its own L1 when the message arrives.
//  - While the bus subscription is lost, L1 serves nothing (it cannot know what it
//    missed); when the subscription is back, L1 starts again from empty.
//
// Version keys need no message: a bump changes the key readers ask for.
#pragma once

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
#include "larder/near/bus.hpp"
#include "larder/near/near_cache.hpp"

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
                    forget_all_tags();
                    l1_.enable();
                },
        });
    }

    Near(const Near&) = delete;
    Near& operator=(const Near&) = delete;
    ~Near() { subscription_.reset(); }  // no handler may run once members start to go

    template <LoaderFor<T> L>
    std::optional<T> get(std::string_view key, L&& loader) {
        const std::string full = policy_.full_key(key);
        if (auto hit = l1_.get(full)) return hit;
        const auto generation = l1_.generation(full);
        auto value = policy_.get(key, loader);
        if (value) l1_.put_if_generation(full, *value, generation);
        return value;
    }

    template <LoaderFor<T> L>
    std::optional<T> get(std::string_view key, std::span<const std::string> tags, L&& loader) {
        const std::string full = policy_.full_key(key);
        if (auto hit = l1_.get(full)) return hit;
        // Known under its tags before the load starts, so a tag message arriving during
        // the load erases the key, which moves its generation: no stale put below.
        remember_tags(full, tags);
        const auto generation = l1_.generation(full);
        auto value = policy_.get(key, tags, loader);
        if (value) l1_.put_if_generation(full, *value, generation);
        return value;
    }

    template <LoaderFor<T> L>
    std::optional<T> get(std::string_view key, std::initializer_list<std::string> tags,
                         L&& loader) {
        return get(key, std::span<const std::string>(tags.begin(), tags.size()), loader);
    }

    /// The policy's invalidate, then every process's L1.
    void invalidate(std::string_view key) {
        const std::string full = policy_.full_key(key);
        l1_.erase(full);
        policy_.invalidate(key);
        announce(full);
    }

    /// The database write, then invalidate (as CacheAside::invalidate_after).
    template <std::invocable DbWrite>
    void invalidate_after(std::string_view key, DbWrite&& db_write) {
        std::invoke(db_write);
        invalidate(key);
    }

    void invalidate_tag(std::string_view tag) {
        policy_.invalidate_tag(tag);
        drop_tag(tag);
        bus_.publish(std::string("t") += tag);
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
        if constexpr (std::is_void_v<decltype(policy_.put(key, std::forward<Args>(args)...))>) {
            policy_.put(key, std::forward<Args>(args)...);
            announce(full);
        } else {
            decltype(auto) result = policy_.put(key, std::forward<Args>(args)...);
            announce(full);
            return result;
        }
    }

    [[nodiscard]] Policy& policy() noexcept { return policy_; }
    [[nodiscard]] NearCache<T>& l1() noexcept { return l1_; }

private:
    void announce(const std::string& full) { bus_.publish(std::string("k") += full); }

    void on_message(std::string_view m) {
        if (m.empty()) return;
        const std::string_view body = m.substr(1);
        if (m[0] == 'k') {
            l1_.erase(body);
        } else if (m[0] == 't') {
            drop_tag(body);
        } else if (m[0] == 'v') {
            // A version bumped through a policy's Events invalidator: a tag's drops the
            // keys known under it; any other version's keys are not known here, so all go.
            constexpr std::string_view tag_prefix = "tag\x1f";
            if (body.starts_with(tag_prefix)) {
                drop_tag(body.substr(tag_prefix.size()));
            } else {
                l1_.clear();
                forget_all_tags();
            }
        }
    }

    // Which L1 keys carry which tag, so a tag message drops exactly those. Touched on
    // misses and invalidations only, never on a hit.
    void remember_tags(const std::string& full, std::span<const std::string> tags) {
        if (tags.empty()) return;
        std::lock_guard lock(tags_mutex_);
        // L1 evicts without telling this index; past a bound, start both over (safe: a
        // miss) rather than let the index grow.
        if (tagged_keys_ > 4 * l1_.capacity() + 1024) {
            keys_by_tag_.clear();
            tagged_keys_ = 0;
            l1_.clear();
        }
        for (const auto& t : tags) tagged_keys_ += keys_by_tag_[t].insert(full).second ? 1 : 0;
    }

    void drop_tag(std::string_view tag) {
        std::set<std::string> keys;
        {
            std::lock_guard lock(tags_mutex_);
            if (auto it = keys_by_tag_.find(std::string(tag)); it != keys_by_tag_.end()) {
                keys = std::move(it->second);
                keys_by_tag_.erase(it);
            }
            tagged_keys_ -= std::min(tagged_keys_, keys.size());
        }
        for (const auto& k : keys) l1_.erase(k);
    }

    void forget_all_tags() {
        std::lock_guard lock(tags_mutex_);
        keys_by_tag_.clear();
        tagged_keys_ = 0;
    }

    Policy& policy_;
    Bus& bus_;
    NearCache<T> l1_;
    std::mutex tags_mutex_;
    std::map<std::string, std::set<std::string>> keys_by_tag_;
    std::size_t tagged_keys_ = 0;
    BusSubscription subscription_;  // last: gone first
};

}  // namespace larder
