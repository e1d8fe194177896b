// CacheAside: the application reads through the cache and loads from its database on a
// miss; writers change the database, then invalidate.
//
// What the naive version of this pattern gets wrong, and what this class does instead:
//  - stale set: a reader that loaded before an update can store the old value after the
//    update's delete. Here a miss first takes a lease in the key itself (SET NX PX of a
//    random token) and fills with compare-and-set against it; invalidate() deletes the
//    key, lease included, so the late fill fails and is counted as rejected. A refresh of
//    a value that is still there fills by compare-and-set against the old value's bytes,
//    so an invalidation fences it the same way.
//  - herds: concurrent misses in one process share one loader call (single-flight); the
//    stampede guard decides what other processes do (Lock: wait for the holder's value)
//    and whether a hot value is refreshed before it expires (XFetch).
//  - "not found" is cached too (negative caching), with its own TTL.
//  - an empty value is a value: presence comes from the envelope, not from truthiness.
//  - a cache problem never fails a read: a store error degrades to the loader, and bytes
//    that are not ours are a counted miss, removed only by compare-and-delete.
//  - fail-safe: with a grace period, a value outlives its freshness; when the loader then
//    fails, the stale value is served instead of the error.
#pragma once

#include <algorithm>
#include <charconv>
#include <chrono>
#include <concepts>
#include <functional>
#include <initializer_list>
#include <limits>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <thread>
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
#include "larder/core/keys.hpp"
#include "larder/core/loader.hpp"
#include "larder/core/random.hpp"
#include "larder/core/stats.hpp"
#include "larder/policy/detail/background.hpp"
#include "larder/policy/detail/components.hpp"
#include "larder/policy/detail/lease_keeper.hpp"
#include "larder/stampede/guard.hpp"
#include "larder/stampede/jitter.hpp"
#include "larder/stampede/single_flight.hpp"

namespace larder {

struct CacheAsideOptions {
    /// Prepended to every key: a namespace, so several caches can share one store.
    std::string key_prefix{};
    /// How long a loaded value stays fresh.
    Millis ttl = std::chrono::minutes(5);
    /// How long a "not found" stays cached; shorter, so a new row shows up soon.
    Millis negative_ttl = std::chrono::seconds(30);
    /// Spreads expiries of entries written together.
    TtlJitter jitter{};
    /// Fail-safe: how long a value is kept past its freshness. While one reader refreshes
    /// it the others get it at once, and when the loader fails it is served instead of
    /// the error (counted as stale_served). 0 turns it off.
    Millis grace{0};
    /// How long a loader holds the key. A running loader's lease is extended every
    /// lease_ttl / 3, so this bounds only how long a crashed holder blocks the key.
    Millis lease_ttl = std::chrono::seconds(10);
    /// How long a tag's version lives once created. 0: twice the longest an entry can
    /// live. An entry whose tag version expired misses (never resurrects); so this only
    /// bounds the memory of tags nobody uses any more.
    Millis tag_ttl{0};
    const Clock* clock = &SystemClock::instance();
};

/// CacheAside<T, Backend, Components...>: Components are an optional codec for T and an
/// optional StampedeGuard, in any order (see policy/detail/components.hpp).
template <class T, Backend B, class... Components>
class CacheAside {
    static_assert(detail::all_components_known<T, Components...>,
                  "each component must be a Codec for T or a StampedeGuard");

    struct TagVersion {
        std::string name;
        std::uint64_t version = 0;
    };

    /// One store read, classified.
    struct Read {
        enum State {
            fresh,    ///< a value or a cached "not found", still fresh
            stale,    ///< a value past its freshness, within the grace period
            absent,   ///< nothing there: this caller may lease and fill
            leased,   ///< another loader holds the key
            unknown,  ///< the store failed: load, but do not fill
        } state = absent;
        bool negative = false;     ///< the value is a cached "not found"
        std::optional<T> value{};  ///< fresh or stale value
        std::string bytes{};       ///< the stored bytes (refreshes CAS on them)
        Millis fresh_for{0};       ///< time left until stale
        std::chrono::microseconds recompute_time{0};
    };

public:
    using value_type = T;
    using backend_type = B;
    using codec_type = detail::pick_codec_t<T, Components...>;
    using guard_type = detail::pick_guard_t<T, Components...>;

    /// The backend is borrowed: it must outlive the cache. Several caches may share it.
    explicit CacheAside(B& backend, CacheAsideOptions options = {}, guard_type guard = {},
                        codec_type codec = {})
        : backend_(backend),
          options_(validated(std::move(options))),
          guard_(std::move(guard)),
          codec_(std::move(codec)),
          keeper_(backend, options_.lease_ttl) {}

    CacheAside(const CacheAside&) = delete;
    CacheAside& operator=(const CacheAside&) = delete;

    /// The cached value of `key`, or the loader's. `loader()` returns std::optional<T>:
    /// nullopt means "no such row" and is cached for negative_ttl. The loader's exception
    /// propagates unchanged (to every caller that shared the load), unless a stale value
    /// within the grace period can be served instead.
    ///
    /// With a background-refreshing guard the loader may be called after get() returns,
    /// so it must then own what it captures (copy, not reference, locals).
    template <LoaderFor<T> L>
    std::optional<T> get(std::string_view key, L&& loader) {
        const std::string full = full_key(key);
        const auto fences = flights_.fences_set();
        return get_read(full, read(full), loader, {}, fences);
    }

    /// get() for an entry that carries tags: it is served only while none of its tags
    /// was invalidated since it was written. Pass the same tags on every read of a key.
    /// The value and the tags' current versions are read in one round trip.
    template <LoaderFor<T> L>
    std::optional<T> get(std::string_view key, std::span<const std::string> tags, L&& loader) {
        const std::string full = full_key(key);
        std::vector<TagVersion> current;
        const auto fences = flights_.fences_set();
        Read found = read_tagged(full, tags, current);
        return get_read(full, std::move(found), loader, current, fences);
    }

    template <LoaderFor<T> L>
    std::optional<T> get(std::string_view key, std::initializer_list<std::string> tags,
                         L&& loader) {
        return get(key, std::span<const std::string>(tags.begin(), tags.size()), loader);
    }

    /// Stores `value` now (replacing any value or lease: a load in flight cannot
    /// overwrite it), with the current versions of `tags`. For write-through paths and
    /// warm-ups; a read-through cache needs only get().
    void set(std::string_view key, const T& value, std::span<const std::string> tags = {}) {
        const std::string full = full_key(key);
        std::vector<TagVersion> current;
        if (!tags.empty()) current = tag_versions(tags, true);
        flights_.forget(full);
        backend_.set(full, encode(&value, std::chrono::microseconds{0}, current),
                     options_.jitter.apply(options_.ttl) + options_.grace);
    }

    /// Invalidates every entry carrying `tag`, in O(1): the tag gets a new version, and
    /// entries stamped with the old one miss from now on. Throws BackendError when the
    /// store cannot be reached.
    void invalidate_tag(std::string_view tag) {
        stats_.add(Counter::invalidations);
        try {
            backend_.set(tag_key(tag), std::to_string(new_tag_version()), options_.tag_ttl);
        } catch (const BackendError&) {
            stats_.add(Counter::backend_errors);
            throw;
        }
    }

    /// The stored key of a tag's version.
    [[nodiscard]] std::string tag_key(std::string_view tag) const {
        std::string key;
        key.reserve(options_.key_prefix.size() + tag.size() + 5);
        key.append(options_.key_prefix).append("\x1ftag\x1f").append(tag);
        return key;
    }

private:
    template <class L>
    std::optional<T> get_read(const std::string& full, Read found, L& loader,
                              std::span<const TagVersion> tags, std::uint64_t fences_before_read) {
        switch (found.state) {
            case Read::fresh:
                stats_.add(Counter::hits);
                if (found.negative) stats_.add(Counter::negative_hits);
                if (!found.negative &&
                    guard_.refresh_early(FreshHit{found.fresh_for, found.recompute_time})) {
                    return refresh(full, std::move(found), loader, /*early=*/true, tags);
                }
                return std::move(found.value);
            case Read::stale:
                return refresh(full, std::move(found), loader, /*early=*/false, tags);
            case Read::absent:
            case Read::leased:
            case Read::unknown:
                break;
        }
        stats_.add(Counter::misses);
        const auto state = found.state;
        // Join a load in flight only if this read saw its lease, or read before the lease
        // was taken: a reader that should have seen the lease and did not knows an
        // invalidation (maybe in another process) fenced that load off.
        const std::string seen = state == Read::leased ? std::move(found.bytes) : std::string();
        auto may_join = [&](std::string_view fence, std::uint64_t fence_number) {
            return fence.empty() || fence_number > fences_before_read || state == Read::unknown ||
                   fence == seen;
        };
        auto result = flights_.run(
            flight_key(full, tags),
            [&](auto& leader) { return load_missing(full, loader, state, tags, leader); },
            may_join);
        if (result.shared) stats_.add(Counter::coalesced);
        return std::move(result.value);
    }

public:
    /// Values for many keys, aligned with `keys`, from one backend read. The batch loader
    /// is called once, with only the keys that missed (each once), and returns one
    /// std::optional<T> per key it was given, in order. Stale values are served as they
    /// are (no refresh); use get() for keys that need one.
    template <BatchLoaderFor<T> BatchLoader>
    std::vector<std::optional<T>> get_many(std::span<const std::string> keys,
                                           BatchLoader&& batch_loader) {
        std::vector<std::string> full;
        full.reserve(keys.size());
        for (const auto& k : keys) full.push_back(full_key(k));

        std::vector<std::optional<StoredValue>> stored;
        try {
            // No refresh happens here, so the TTLs are not needed: one MGET where possible.
            if constexpr (ValueOnlyReads<B>) {
                stored = backend_.get_many_values(std::span<const std::string>(full));
            } else {
                stored = backend_.get_many(std::span<const std::string>(full));
            }
        } catch (const BackendError&) {
            stats_.add(Counter::backend_errors);
            stored.assign(keys.size(), std::nullopt);
        }

        std::vector<std::optional<T>> out(keys.size());
        // Missing keys in first-seen order, each with the positions that want it.
        struct Missing {
            std::size_t first_index;
            bool may_fill;
            std::vector<std::size_t> wanted_at;
        };
        std::vector<std::string> missing_keys;
        std::vector<Missing> missing;
        std::unordered_map<std::string_view, std::size_t> index_of;
        for (std::size_t i = 0; i < keys.size(); ++i) {
            Read found = classify(full[i], std::move(stored[i]));
            if (found.state == Read::fresh || found.state == Read::stale) {
                stats_.add(found.state == Read::fresh ? Counter::hits : Counter::stale_served);
                out[i] = std::move(found.value);
                continue;
            }
            stats_.add(Counter::misses);
            auto [it, fresh] = index_of.try_emplace(keys[i], missing.size());
            if (fresh) {
                missing_keys.push_back(keys[i]);
                missing.push_back(Missing{i, found.state == Read::absent, {}});
            }
            missing[it->second].wanted_at.push_back(i);
        }
        if (missing.empty()) return out;

        std::vector<std::optional<std::string>> leases(missing.size());
        for (std::size_t m = 0; m < missing.size(); ++m) {
            if (missing[m].may_fill) leases[m] = try_lease(full[missing[m].first_index]);
        }
        auto release_all = [&] {
            for (std::size_t m = 0; m < missing.size(); ++m) {
                release(full[missing[m].first_index], leases[m]);
            }
        };

        std::vector<std::optional<T>> loaded;
        const Stopwatch watch(*options_.clock);
        stats_.add(Counter::loads);
        try {
            loaded = std::invoke(batch_loader, std::span<const std::string>(missing_keys));
        } catch (...) {
            stats_.add(Counter::load_errors);
            release_all();
            throw;
        }
        if (loaded.size() != missing.size()) {
            release_all();
            throw LoaderError("get_many: the batch loader returned " +
                              std::to_string(loaded.size()) + " values for " +
                              std::to_string(missing.size()) + " keys");
        }
        const auto took = watch.elapsed();
        for (std::size_t m = 0; m < missing.size(); ++m) {
            const std::string& key = full[missing[m].first_index];
            if (leases[m]) fill(key, *leases[m], loaded[m], took, {});
            const auto& at = missing[m].wanted_at;
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
        // New readers must not join a load that may have read the old row.
        flights_.forget(full);
        try {
            backend_.del(full);
        } catch (const BackendError&) {
            stats_.add(Counter::backend_errors);
            throw;
        }
    }

    /// The seed's write path done in the right order: change the database, then
    /// invalidate. If db_write throws, nothing is invalidated and the exception propagates.
    template <std::invocable DbWrite>
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
    [[nodiscard]] guard_type& guard() noexcept { return guard_; }

    /// The key as stored: the prefix, then the caller's key.
    [[nodiscard]] std::string full_key(std::string_view key) const {
        std::string full;
        full.reserve(options_.key_prefix.size() + key.size());
        full.append(options_.key_prefix).append(key);
        return full;
    }

    /// Waits until no background refresh is queued or running.
    void wait_for_background_refreshes() { background_.drain(); }

    /// Leases extended by the keeper so far (a slow loader keeps its lease).
    [[nodiscard]] std::uint64_t lease_extensions() const { return keeper_.extensions(); }

private:
    static CacheAsideOptions validated(CacheAsideOptions o) {
        if (!o.clock) o.clock = &SystemClock::instance();
        o.jitter.validate();
        if (o.ttl.count() <= 0 || o.negative_ttl.count() <= 0 || o.lease_ttl.count() <= 0) {
            throw ConfigError("CacheAside: ttl, negative_ttl and lease_ttl must be positive");
        }
        if (o.grace.count() < 0 || o.tag_ttl.count() < 0) {
            throw ConfigError("CacheAside: grace and tag_ttl must not be negative");
        }
        if (o.tag_ttl.count() == 0) {
            const auto longest_jitter =
                o.jitter.max_extra + Millis{static_cast<Millis::rep>(
                                         o.jitter.ratio * static_cast<double>(o.ttl.count()))};
            o.tag_ttl = 2 * (std::max(o.ttl, o.negative_ttl) + longest_jitter + o.grace);
        }
        return o;
    }

    // Whether reads can skip the TTL: nothing looks at it without a TTL-reading guard or
    // a grace period, and on Redis it is a second command per hit.
    [[nodiscard]] bool value_only_reads() const noexcept {
        if constexpr (ValueOnlyReads<B>) {
            return !needs_remaining_ttl<guard_type>() && options_.grace.count() == 0;
        } else {
            return false;
        }
    }

    std::optional<StoredValue> fetch(const std::string& full) {
        if constexpr (ValueOnlyReads<B>) {
            if (value_only_reads()) return backend_.get_value(full);
        }
        return backend_.get(full);
    }

    Read read(const std::string& full) {
        std::optional<StoredValue> stored;
        try {
            stored = fetch(full);
        } catch (const BackendError&) {
            stats_.add(Counter::backend_errors);
            return Read{.state = Read::unknown};
        }
        return classify(full, std::move(stored));
    }

    // The value and the current versions of `tags` in one store read (get_many). A value
    // stamped with other versions, or with other tags, was invalidated by a tag: its bytes
    // are removed (compare-and-delete) and the read is a miss. Tags without a version get
    // one, so that the fill can be stamped with it.
    Read read_tagged(const std::string& full, std::span<const std::string> tags,
                     std::vector<TagVersion>& current) {
        std::vector<std::string> keys;
        keys.reserve(tags.size() + 1);
        keys.push_back(full);
        for (const auto& t : tags) keys.push_back(tag_key(t));
        std::vector<std::optional<StoredValue>> stored;
        try {
            stored = backend_.get_many(std::span<const std::string>(keys));
        } catch (const BackendError&) {
            stats_.add(Counter::backend_errors);
            return Read{.state = Read::unknown};
        }
        bool all_known = true;
        current.clear();
        for (std::size_t i = 0; i < tags.size(); ++i) {
            const auto version = parse_tag_version(stored[i + 1]);
            all_known = all_known && version.has_value();
            current.push_back(TagVersion{tags[i], version.value_or(0)});
        }
        Read r = classify(full, std::move(stored[0]));
        if ((r.state == Read::fresh || r.state == Read::stale) &&
            (!all_known || !stamped_with(r.bytes, current))) {
            r = remove_invalidated(full, r.bytes);
        }
        if (!all_known && !create_missing_versions(current)) {
            if (r.state == Read::absent) r.state = Read::unknown;  // cannot stamp: do not fill
        }
        return r;
    }

    // The current versions of `tags`, created where missing.
    std::vector<TagVersion> tag_versions(std::span<const std::string> tags, bool throw_on_error) {
        std::vector<std::string> keys;
        for (const auto& t : tags) keys.push_back(tag_key(t));
        std::vector<TagVersion> current;
        try {
            const auto stored = backend_.get_many(std::span<const std::string>(keys));
            for (std::size_t i = 0; i < tags.size(); ++i) {
                current.push_back(TagVersion{tags[i], parse_tag_version(stored[i]).value_or(0)});
            }
        } catch (const BackendError&) {
            stats_.add(Counter::backend_errors);
            if (throw_on_error) throw;
        }
        if (!create_missing_versions(current) && throw_on_error) {
            throw BackendError("CacheAside: cannot create tag versions");
        }
        return current;
    }

    bool create_missing_versions(std::vector<TagVersion>& current) {
        for (auto& t : current) {
            if (t.version != 0) continue;
            const std::string key = tag_key(t.name);
            try {
                const std::uint64_t fresh = new_tag_version();
                if (backend_.set_if_absent(key, std::to_string(fresh), options_.tag_ttl)) {
                    t.version = fresh;
                } else if (auto v = parse_tag_version(backend_.get(key))) {
                    t.version = *v;  // another writer created it first
                } else {
                    return false;
                }
            } catch (const BackendError&) {
                stats_.add(Counter::backend_errors);
                return false;
            }
        }
        return true;
    }

    // Whether stored bytes carry exactly `current`'s tags at exactly those versions.
    static bool stamped_with(const std::string& bytes, std::span<const TagVersion> current) {
        const auto env = envelope::parse(bytes);
        if (!env || env->tag_count != current.size()) return false;
        bool all_match = true;
        envelope::for_each_tag(*env, [&](std::string_view name, std::uint64_t version) {
            bool found = false;
            for (const auto& t : current) found = found || (t.name == name && t.version == version);
            all_match = all_match && found;
        });
        return all_match;
    }

    Read remove_invalidated(const std::string& full, const std::string& bytes) {
        try {
            if (backend_.compare_and_delete(full, bytes)) return Read{.state = Read::absent};
        } catch (const BackendError&) {
            stats_.add(Counter::backend_errors);
        }
        return Read{.state = Read::unknown};
    }

    static std::optional<std::uint64_t> parse_tag_version(const std::optional<StoredValue>& v) {
        if (!v) return std::nullopt;
        std::uint64_t out = 0;
        const auto* end = v->bytes.data() + v->bytes.size();
        auto [ptr, ec] = std::from_chars(v->bytes.data(), end, out);
        if (ec != std::errc{} || ptr != end || out == 0) return std::nullopt;
        return out;
    }

    // Milliseconds since the epoch in the high bits, random low bits: a version created
    // after the old one was evicted or flushed never equals it.
    std::uint64_t new_tag_version() const {
        const auto ms =
            static_cast<std::uint64_t>(options_.clock->now().time_since_epoch().count());
        return (ms << 16) | static_cast<std::uint64_t>(random_between(1, 0xFFFF));
    }

    Read classify(const std::string& full, std::optional<StoredValue> stored) {
        if (!stored) return Read{.state = Read::absent};
        const auto env = envelope::parse(stored->bytes);
        if (!env) return corrupt(full, stored->bytes);
        const auto& h = env->header;
        if (h.kind == EntryKind::lease) {
            Read r{.state = Read::leased};
            r.bytes = std::move(stored->bytes);  // whose lease: decides joining a load
            return r;
        }

        Read r;
        r.recompute_time = h.recompute_time;
        // The store's clock says how long is left; the grace part of it is not fresh.
        const Millis left = stored->ttl ? *stored->ttl : Millis::max();
        r.fresh_for = stored->ttl ? left - h.grace : Millis::max();
        r.state = r.fresh_for.count() > 0 ? Read::fresh : Read::stale;
        if (h.kind == EntryKind::not_found) {
            r.negative = true;
        } else {
            if (h.codec != codec_type::id) return corrupt(full, stored->bytes);
            try {
                r.value.emplace(codec_.template decode<T>(env->payload));
            } catch (const CodecError&) {
                return corrupt(full, stored->bytes);
            }
        }
        r.bytes = std::move(stored->bytes);
        return r;
    }

    // Bytes we cannot read are a miss. They are removed only if they are still the same
    // bytes, so a good value written meanwhile by someone else survives.
    Read corrupt(const std::string& full, const std::string& bytes) {
        stats_.add(Counter::corrupt_values);
        try {
            if (backend_.compare_and_delete(full, bytes)) return Read{.state = Read::absent};
        } catch (const BackendError&) {
            stats_.add(Counter::backend_errors);
        }
        return Read{.state = Read::unknown};
    }

    // A miss, run by one caller per key in this process. Takes the lease and loads; if
    // another process holds the lease, waits as the guard says, then loads unfilled.
    // Loads of a tagged key share a flight only when they saw the same tag versions: a
    // read after invalidate_tag must not join a load stamped with the old ones.
    static std::string flight_key(const std::string& full, std::span<const TagVersion> tags) {
        if (tags.empty()) return full;
        std::string key = full;
        for (const auto& t : tags) key.append("\x1f").append(std::to_string(t.version));
        return key;
    }

    template <class L, class Leader>
    std::optional<T> load_missing(const std::string& full, L& loader, typename Read::State state,
                                  std::span<const TagVersion> tags, Leader& leader) {
        const LeaseWait wait = guard_.lease_wait();
        const auto deadline = std::chrono::steady_clock::now() + wait.max_wait;
        Millis backoff = wait.first_backoff;
        bool counted_wait = false;
        for (;;) {
            if (state == Read::absent) {
                bool contended = false;
                if (auto lease = try_lease(full, &contended)) {
                    leader.set_fence(*lease);
                    return load_and_fill(full, *lease, loader, tags);
                }
                state = contended ? Read::leased : Read::unknown;
            }
            if (state != Read::leased || std::chrono::steady_clock::now() >= deadline) break;
            if (!counted_wait) {
                stats_.add(Counter::lease_waits);
                counted_wait = true;
            }
            // Jitter keeps waiters of many processes from polling in lockstep.
            const auto nap = Millis{random_between(backoff.count() / 2 + 1, backoff.count())};
            std::this_thread::sleep_for(nap);
            backoff = std::min(backoff * 2, wait.max_backoff);
            Read again = read(full);
            if (again.state == Read::fresh || again.state == Read::stale) {
                if (again.state == Read::stale) stats_.add(Counter::stale_served);
                return std::move(again.value);
            }
            state = again.state;
        }
        return load_unfilled(loader);
    }

    // Times a recompute. The longer of the monotonic clock and the cache's clock: real
    // time in production, and in tests the time a loader spends on a ManualClock.
    class Stopwatch {
    public:
        explicit Stopwatch(const Clock& clock)
            : clock_(clock), steady_(std::chrono::steady_clock::now()), start_(clock.now()) {}
        [[nodiscard]] std::chrono::microseconds elapsed() const {
            using std::chrono::duration_cast, std::chrono::microseconds;
            return std::max(duration_cast<microseconds>(std::chrono::steady_clock::now() - steady_),
                            duration_cast<microseconds>(clock_.now() - start_));
        }

    private:
        const Clock& clock_;
        std::chrono::steady_clock::time_point steady_;
        TimePoint start_;
    };

    template <class L>
    std::optional<T> load_unfilled(L& loader) {
        stats_.add(Counter::loads);
        try {
            return std::invoke(loader);
        } catch (...) {
            stats_.add(Counter::load_errors);
            throw;
        }
    }

    template <class L>
    std::optional<T> load_and_fill(const std::string& full, const std::string& lease, L& loader,
                                   std::span<const TagVersion> tags) {
        const Stopwatch watch(*options_.clock);
        std::optional<T> value;
        {
            auto hold = keeper_.hold(full, lease);
            try {
                value = load_unfilled(loader);
            } catch (...) {
                release(full, lease);
                throw;
            }
        }
        fill(full, lease, value, watch.elapsed(), tags);
        return value;
    }

    // A value is there (fresh and elected for early refresh, or stale): one caller across
    // all processes refreshes it, holding a lease on a sibling key; the rest serve it.
    template <class L>
    std::optional<T> refresh(const std::string& full, Read found, L& loader, bool early,
                             std::span<const TagVersion> tags) {
        if (early && guard_.refresh_in_background()) {
            if constexpr (std::is_copy_constructible_v<std::decay_t<L>>) {
                background_.submit(full, [this, full, bytes = found.bytes, loader,
                                          stamp = std::vector(tags.begin(), tags.end())]() mutable {
                    (void)refresh_now(full, bytes, loader, /*early=*/true, stamp);
                });
                return std::move(found.value);
            }
        }
        if (auto refreshed = refresh_now(full, found.bytes, loader, early, tags)) {
            return std::move(*refreshed);
        }
        if (found.state == Read::stale) stats_.add(Counter::stale_served);
        return std::move(found.value);
    }

    // Refreshes the value stored as `bytes`. nullopt when this caller did not refresh
    // (someone else holds the refresh lease, or the loader failed); otherwise the new value.
    template <class L>
    std::optional<std::optional<T>> refresh_now(const std::string& full, const std::string& bytes,
                                                L& loader, bool early,
                                                std::span<const TagVersion> tags) {
        const std::string lease_key = keys::sibling(full, "refresh");
        auto lease = try_lease(lease_key);
        if (!lease) return std::nullopt;
        // Another process may have refreshed and released just before this lease was
        // taken: if the bytes changed, its value is the refresh.
        try {
            auto now = backend_.get(full);
            if (!now || now->bytes != bytes) {
                release(lease_key, lease);
                if (!now) return std::nullopt;
                Read current = classify(full, std::move(now));
                if (current.state != Read::fresh || current.negative) return std::nullopt;
                return std::optional<std::optional<T>>(std::move(current.value));
            }
        } catch (const BackendError&) {
            stats_.add(Counter::backend_errors);
        }
        if (early) stats_.add(Counter::early_refreshes);
        const Stopwatch watch(*options_.clock);
        std::optional<T> value;
        try {
            auto hold = keeper_.hold(lease_key, *lease);
            value = load_unfilled(loader);
        } catch (...) {
            release(lease_key, lease);
            return std::nullopt;  // fail-safe: the caller serves what it has
        }
        // Fenced on the old bytes: an invalidation meanwhile makes this fill fail.
        fill(full, bytes, value, watch.elapsed(), tags);
        release(lease_key, lease);
        return std::optional<std::optional<T>>(std::move(value));
    }

    // The lease bytes when this caller now holds `key`; nullopt otherwise, with
    // *contended set when someone else holds it (rather than the store failing).
    std::optional<std::string> try_lease(const std::string& key, bool* contended = nullptr) {
        std::string lease = envelope::make_lease(random_token(), options_.clock->now());
        try {
            if (backend_.set_if_absent(key, lease, options_.lease_ttl)) return lease;
            if (contended) *contended = true;
        } catch (const BackendError&) {
            stats_.add(Counter::backend_errors);
        }
        return std::nullopt;
    }

    void release(const std::string& key, const std::optional<std::string>& lease) noexcept {
        if (!lease) return;
        try {
            backend_.compare_and_delete(key, *lease);
        } catch (const BackendError&) {
            stats_.add(Counter::backend_errors);  // the lease expires by itself
        } catch (...) {
        }
    }

    // The stored bytes of a value (or of "not found" when value is null).
    std::string encode(const T* value, std::chrono::microseconds took,
                       std::span<const TagVersion> tags) const {
        const EnvelopeHeader header{
            .kind = value ? EntryKind::value : EntryKind::not_found,
            .codec = value ? codec_type::id : std::uint8_t{0},
            .written_at = options_.clock->now(),
            .recompute_time = took,
            .grace = value ? options_.grace : Millis{0},
        };
        std::string bytes;
        envelope::write_header(bytes, header, static_cast<std::uint16_t>(tags.size()));
        for (const auto& t : tags) envelope::write_tag(bytes, t.name, t.version);
        if (value) codec_.encode(*value, bytes);
        return bytes;
    }

    // Replaces `expected` (a lease, or the value being refreshed) with the loaded value.
    void fill(const std::string& full, const std::string& expected, const std::optional<T>& value,
              std::chrono::microseconds took, std::span<const TagVersion> tags) {
        const Millis grace = value ? options_.grace : Millis{0};
        std::string bytes;
        try {
            bytes = encode(value ? &*value : nullptr, took, tags);
        } catch (const std::exception&) {
            // A value the codec cannot write is served but not cached. A lease is given
            // back at once; a value being refreshed stays until its TTL.
            stats_.add(Counter::corrupt_values);
            const auto held = envelope::parse(expected);
            if (held && held->header.kind == EntryKind::lease) release(full, expected);
            return;
        }
        const Millis ttl =
            (value ? options_.jitter.apply(options_.ttl) : options_.negative_ttl) + grace;
        try {
            if (backend_.compare_and_set(full, expected, bytes, ttl)) {
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
    guard_type guard_;
    [[no_unique_address]] codec_type codec_;
    Stats stats_;
    SingleFlight<std::optional<T>> flights_;
    detail::LeaseKeeper<B> keeper_;
    // Last: destroyed first, so no background refresh outlives the members it uses.
    detail::BackgroundWorker background_;
};

}  // namespace larder
