// CacheAside: the application reads through the cache and loads from its database on a
// miss; writers change the database, then invalidate.
//
// What the naive version of this pattern gets wrong, and what this class does instead:
//  - stale set: a reader that loaded before an update can store the old value after the
//    update's delete. Here a miss first takes a lease in the key itself (SET NX PX of a
//    random token) and fills with compare-and-set against it; invalidate() deletes the
//    key, lease included, so the late fill fails and is counted as rejected.
//  - herds: concurrent misses in one process share one loader call (single-flight).
//  - "not found" is cached too (negative caching), with its own TTL.
//  - an empty value is a value: presence comes from the envelope, not from truthiness.
//  - a cache problem never fails a read: a store error degrades to the loader, and bytes
//    that are not ours are a counted miss, removed only by compare-and-delete.
#pragma once

#include <chrono>
#include <concepts>
#include <functional>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <type_traits>
#include <unordered_map>
#include <utility>
#include <vector>

#include "larder/backend/backend.hpp"
#include "larder/codec/raw.hpp"
#include "larder/core/clock.hpp"
#include "larder/core/codec.hpp"
#include "larder/core/envelope.hpp"
#include "larder/core/error.hpp"
#include "larder/core/random.hpp"
#include "larder/core/stats.hpp"
#include "larder/stampede/jitter.hpp"
#include "larder/stampede/single_flight.hpp"

namespace larder {

struct CacheAsideOptions {
    /// Prepended to every key: a namespace, so several caches can share one store.
    std::string key_prefix;
    /// How long a loaded value stays cached.
    Millis ttl = std::chrono::minutes(5);
    /// How long a "not found" stays cached; shorter, so a new row shows up soon.
    Millis negative_ttl = std::chrono::seconds(30);
    /// Spreads expiries of entries written together.
    TtlJitter jitter{};
    /// How long a loader holds the key; bounds the wait when a holder dies.
    Millis lease_ttl = std::chrono::seconds(10);
    const Clock* clock = &SystemClock::instance();
};

template <class T, Backend B, class C = default_codec_t<T>>
    requires Codec<C, T>
class CacheAside {
public:
    using value_type = T;
    using backend_type = B;
    using codec_type = C;

    /// The backend is borrowed: it must outlive the cache. Several caches may share it.
    explicit CacheAside(B& backend, CacheAsideOptions options = {}, C codec = {})
        : backend_(backend), options_(std::move(options)), codec_(std::move(codec)) {
        if (!options_.clock) options_.clock = &SystemClock::instance();
        options_.jitter.validate();
        if (options_.ttl.count() <= 0 || options_.negative_ttl.count() <= 0 ||
            options_.lease_ttl.count() <= 0) {
            throw ConfigError("CacheAside: ttl, negative_ttl and lease_ttl must be positive");
        }
    }

    /// The cached value of `key`, or the loader's. `loader()` returns std::optional<T>:
    /// nullopt means "no such row" and is cached for negative_ttl. The loader's exception
    /// propagates unchanged (to every caller that shared the load).
    template <class Loader>
        requires std::convertible_to<std::invoke_result_t<Loader&>, std::optional<T>>
    std::optional<T> get(std::string_view key, Loader&& loader) {
        const std::string full = full_key(key);
        Lookup found = lookup(full);
        if (found.state == Lookup::hit) return std::move(found.value);

        stats_.add(Counter::misses);
        const bool may_fill = found.state == Lookup::absent;
        auto result = flights_.run(full, [&] { return load_and_fill(full, loader, may_fill); });
        if (result.shared) stats_.add(Counter::coalesced);
        return std::move(result.value);
    }

    /// Values for many keys, aligned with `keys`, from one backend read. The batch loader
    /// is called once, with only the keys that missed (each once), and returns one
    /// std::optional<T> per key it was given, in order.
    template <class BatchLoader>
        requires std::convertible_to<
            std::invoke_result_t<BatchLoader&, std::span<const std::string>>,
            std::vector<std::optional<T>>>
    std::vector<std::optional<T>> get_many(std::span<const std::string> keys,
                                           BatchLoader&& batch_loader) {
        std::vector<std::string> full;
        full.reserve(keys.size());
        for (const auto& k : keys) full.push_back(full_key(k));

        std::vector<std::optional<StoredValue>> stored;
        try {
            stored = backend_.get_many(std::span<const std::string>(full));
        } catch (const BackendError&) {
            stats_.add(Counter::backend_errors);
            stored.assign(keys.size(), std::nullopt);
        }

        std::vector<std::optional<T>> out(keys.size());
        // Missing keys in first-seen order, each with the positions that want it.
        std::vector<std::string> missing;
        std::vector<std::string> missing_full;
        std::vector<bool> missing_may_fill;
        std::vector<std::vector<std::size_t>> wanted_at;
        std::unordered_map<std::string_view, std::size_t> index_of;
        for (std::size_t i = 0; i < keys.size(); ++i) {
            Lookup found = classify(full[i], stored[i]);
            if (found.state == Lookup::hit) {
                out[i] = std::move(found.value);
                continue;
            }
            stats_.add(Counter::misses);
            auto [it, fresh] = index_of.try_emplace(keys[i], missing.size());
            if (fresh) {
                missing.push_back(keys[i]);
                missing_full.push_back(full[i]);
                missing_may_fill.push_back(found.state == Lookup::absent);
                wanted_at.emplace_back();
            }
            wanted_at[it->second].push_back(i);
        }
        if (missing.empty()) return out;

        std::vector<std::optional<std::string>> leases(missing.size());
        for (std::size_t m = 0; m < missing.size(); ++m) {
            if (missing_may_fill[m]) leases[m] = try_lease(missing_full[m]);
        }

        std::vector<std::optional<T>> loaded;
        const auto started = std::chrono::steady_clock::now();
        stats_.add(Counter::loads);
        try {
            loaded = std::invoke(batch_loader, std::span<const std::string>(missing));
        } catch (...) {
            stats_.add(Counter::load_errors);
            for (std::size_t m = 0; m < missing.size(); ++m) release(missing_full[m], leases[m]);
            throw;
        }
        if (loaded.size() != missing.size()) {
            for (std::size_t m = 0; m < missing.size(); ++m) release(missing_full[m], leases[m]);
            throw LoaderError("get_many: the batch loader returned " +
                              std::to_string(loaded.size()) + " values for " +
                              std::to_string(missing.size()) + " keys");
        }
        const auto took = std::chrono::steady_clock::now() - started;
        for (std::size_t m = 0; m < missing.size(); ++m) {
            if (leases[m]) fill(missing_full[m], *leases[m], loaded[m], took);
            const auto& at = wanted_at[m];
            for (std::size_t j = 0; j + 1 < at.size(); ++j) out[at[j]] = loaded[m];
            out[at.back()] = std::move(loaded[m]);
        }
        return out;
    }

    /// Removes the cached value, and any lease on it, so that no load that started
    /// before this call can fill the key afterwards. Throws BackendError when the store
    /// could not be reached: the caller learns the entry may stay until its TTL.
    void invalidate(std::string_view key) {
        const std::string full = full_key(key);
        stats_.add(Counter::invalidations);
        try {
            backend_.del(full);
        } catch (const BackendError&) {
            stats_.add(Counter::backend_errors);
            flights_.forget(full);
            throw;
        }
        flights_.forget(full);
    }

    /// The seed's write path done in the right order: change the database, then
    /// invalidate. If db_write throws, nothing is invalidated and the exception propagates.
    template <class DbWrite>
        requires std::invocable<DbWrite&>
    void update(std::string_view key, DbWrite&& db_write) {
        std::invoke(db_write);
        invalidate(key);
    }

    [[nodiscard]] StatsSnapshot stats() const {
        StatsSnapshot s = stats_.snapshot();
        if constexpr (requires(const B& b) {
                          { b.evictions() } -> std::convertible_to<std::uint64_t>;
                      }) {
            s.evictions = backend_.evictions();
        }
        return s;
    }

    [[nodiscard]] const CacheAsideOptions& options() const noexcept { return options_; }
    [[nodiscard]] B& backend() noexcept { return backend_; }

    /// The key as stored: the prefix, then the caller's key.
    [[nodiscard]] std::string full_key(std::string_view key) const {
        std::string full;
        full.reserve(options_.key_prefix.size() + key.size());
        full.append(options_.key_prefix).append(key);
        return full;
    }

private:
    struct Lookup {
        enum State {
            hit,      ///< value (or cached "not found") in `value`
            absent,   ///< nothing there: this caller may lease and fill
            leased,   ///< another loader holds the key: load, but do not fill
            unknown,  ///< the store failed: load, but do not fill
        } state = absent;
        std::optional<T> value;
    };

    Lookup lookup(const std::string& full) {
        std::optional<StoredValue> stored;
        try {
            stored = backend_.get(full);
        } catch (const BackendError&) {
            stats_.add(Counter::backend_errors);
            return Lookup{Lookup::unknown, std::nullopt};
        }
        return classify(full, stored);
    }

    Lookup classify(const std::string& full, const std::optional<StoredValue>& stored) {
        if (!stored) return Lookup{Lookup::absent, std::nullopt};
        const auto env = envelope::parse(stored->bytes);
        if (!env) return corrupt(full, stored->bytes);
        switch (env->header.kind) {
            case EntryKind::lease:
                stats_.add(Counter::lease_waits);
                return Lookup{Lookup::leased, std::nullopt};
            case EntryKind::not_found:
                stats_.add(Counter::hits);
                stats_.add(Counter::negative_hits);
                return Lookup{Lookup::hit, std::nullopt};
            case EntryKind::value:
                if (env->header.codec != C::id) return corrupt(full, stored->bytes);
                try {
                    Lookup found{Lookup::hit, codec_.template decode<T>(env->payload)};
                    stats_.add(Counter::hits);
                    return found;
                } catch (const CodecError&) {
                    return corrupt(full, stored->bytes);
                }
        }
        return corrupt(full, stored->bytes);
    }

    // Bytes we cannot read are a miss. They are removed only if they are still the same
    // bytes, so a good value written meanwhile by someone else survives.
    Lookup corrupt(const std::string& full, const std::string& bytes) {
        stats_.add(Counter::corrupt_values);
        try {
            if (backend_.compare_and_delete(full, bytes)) return Lookup{Lookup::absent, {}};
        } catch (const BackendError&) {
            stats_.add(Counter::backend_errors);
            return Lookup{Lookup::unknown, std::nullopt};
        }
        return Lookup{Lookup::unknown, std::nullopt};
    }

    template <class Loader>
    std::optional<T> load_and_fill(const std::string& full, Loader& loader, bool may_fill) {
        std::optional<std::string> lease = may_fill ? try_lease(full) : std::nullopt;
        const auto started = std::chrono::steady_clock::now();
        stats_.add(Counter::loads);
        std::optional<T> value;
        try {
            value = std::invoke(loader);
        } catch (...) {
            stats_.add(Counter::load_errors);
            release(full, lease);
            throw;
        }
        if (lease) fill(full, *lease, value, std::chrono::steady_clock::now() - started);
        return value;
    }

    // The lease bytes when this caller now holds the key, nullopt otherwise.
    std::optional<std::string> try_lease(const std::string& full) {
        std::string lease = envelope::make_lease(random_token(), options_.clock->now());
        try {
            if (backend_.set_if_absent(full, lease, options_.lease_ttl)) return lease;
            stats_.add(Counter::lease_waits);
        } catch (const BackendError&) {
            stats_.add(Counter::backend_errors);
        }
        return std::nullopt;
    }

    void release(const std::string& full, const std::optional<std::string>& lease) noexcept {
        if (!lease) return;
        try {
            backend_.compare_and_delete(full, *lease);
        } catch (const BackendError&) {
            // The lease expires by itself.
            stats_.add(Counter::backend_errors);
        } catch (...) {
        }
    }

    void fill(const std::string& full, const std::string& lease, const std::optional<T>& value,
              std::chrono::steady_clock::duration took) {
        EnvelopeHeader header{
            .kind = value ? EntryKind::value : EntryKind::not_found,
            .codec = value ? C::id : std::uint8_t{0},
            .written_at = options_.clock->now(),
            .recompute_time = std::chrono::duration_cast<std::chrono::microseconds>(took),
        };
        std::string bytes;
        try {
            envelope::write_header(bytes, header);
            if (value) codec_.encode(*value, bytes);
        } catch (const std::exception&) {
            // A value the codec cannot write is served but not cached.
            stats_.add(Counter::corrupt_values);
            release(full, lease);
            return;
        }
        const Millis ttl = value ? options_.jitter.apply(options_.ttl) : options_.negative_ttl;
        try {
            if (backend_.compare_and_set(full, lease, bytes, ttl)) {
                stats_.add(Counter::fills);
            } else {
                stats_.add(Counter::fills_rejected);
            }
        } catch (const BackendError&) {
            stats_.add(Counter::backend_errors);
        }
    }

    B& backend_;
    CacheAsideOptions options_;
    [[no_unique_address]] C codec_;
    Stats stats_;
    SingleFlight<std::optional<T>> flights_;
};

}  // namespace larder
