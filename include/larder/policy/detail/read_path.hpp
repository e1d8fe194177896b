// The read path every policy shares: CacheAside, WriteThrough and WriteBehind derive from
// ReadPath, so get, tagged get, get_many and the invalidations are one piece of code, and
// the policies differ only in their write verbs.
//
// Every read is classified by the envelope's own freshness, then admitted by the entry's
// own stamped versions (classify() and admit(), read.hpp). The first read, a lease
// waiter's polls and a refresh's re-read all go through read() (the value and the
// versions its invalidator names, in one store command), a batch read through the same
// two checks, so none can skip one. What follows a read is decided here:
//  - fresh: served (and maybe refreshed early, as the guard says);
//  - stale (within grace): one caller across all processes refreshes, the rest serve it;
//  - absent: one caller per process (single-flight) leases the key, loads and fills by
//    compare-and-set against its lease;
//  - leased by another loader: wait as the guard says, polling with read();
//  - unknown (the store failed): load, and do not fill.
//
// What it is built from has headers of its own beside this one: the tag versions
// (tag_versions.hpp), leases (leases.hpp), loader runs (loads.hpp), the report to a cache
// in front (served.hpp) and the checked options (checked_options.hpp).
#pragma once

#include <algorithm>
#include <chrono>
#include <concepts>
#include <exception>
#include <initializer_list>
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
#include "larder/backend/lease_notices.hpp"
#include "larder/codec/raw.hpp"
#include "larder/core/clock.hpp"
#include "larder/core/codec.hpp"
#include "larder/core/envelope.hpp"
#include "larder/core/error.hpp"
#include "larder/core/keys.hpp"
#include "larder/core/loader.hpp"
#include "larder/core/log.hpp"
#include "larder/core/random.hpp"
#include "larder/core/stats.hpp"
#include "larder/policy/detail/background.hpp"
#include "larder/policy/detail/checked_options.hpp"
#include "larder/policy/detail/components.hpp"
#include "larder/policy/detail/keeper.hpp"
#include "larder/policy/detail/leases.hpp"
#include "larder/policy/detail/loads.hpp"
#include "larder/policy/detail/read.hpp"
#include "larder/policy/detail/served.hpp"
#include "larder/policy/detail/tag_versions.hpp"
#include "larder/policy/options.hpp"
#include "larder/stampede/guard.hpp"
#include "larder/stampede/single_flight.hpp"

namespace larder::detail {

template <class T, Backend B, class... Components>
class ReadPath {
    // Each check fails the build with its own static_assert, naming what the component
    // misses; `|| true` keeps this one from adding a second, vaguer error.
    static_assert((check_component<T, Components>() && ...) || true);

    using Read = detail::Read<T>;
    using Versions = TagVersions<B>;
    using Leases = detail::Leases<B>;

public:
    using value_type = T;
    using backend_type = B;
    using codec_type = pick_codec_t<T, Components...>;
    using guard_type = pick_guard_t<T, Components...>;
    using invalidator_type = pick_invalidator_t<T, Components...>;

    static_assert(!std::is_same_v<codec_type, MissingCodec>,
                  "larder: no codec for the cache's value type T. For JSON, include "
                  "<larder/codec/json.hpp> and give T to_json/from_json (for example "
                  "NLOHMANN_DEFINE_TYPE_NON_INTRUSIVE(T, members...)); or name a codec: "
                  "CacheAside<T, Backend, larder::MsgPackCodec> (<larder/codec/msgpack.hpp>), "
                  "or your own (docs/codecs.md)");

    /// The backend is borrowed: it must outlive the cache. Several caches may share it.
    explicit ReadPath(B& backend, CacheAsideOptions options = {}, guard_type guard = {},
                      codec_type codec = {}, invalidator_type invalidator = {})
        : backend_(backend),
          options_(validated(std::move(options))),
          keys_(options_.key_prefix),
          guard_(std::move(guard)),
          codec_(std::move(codec)),
          invalidator_(std::move(invalidator)),
          versions_(backend, keys_, options_.tag_ttl, stats_),
          leases_(keeper_, backend, *options_.clock, options_.lease_ttl, options_.max_load_time,
                  stats_, lease_notices(backend, guard_)),
          loads_(options_, stats_, TagInvalidator<invalidator_type>) {}

    /// With an invalidator that needs constructing (Events<Bus>, a Ttl rule), and the
    /// default guard and codec.
    ReadPath(B& backend, CacheAsideOptions options,
             invalidator_type invalidator) requires(!std::same_as<invalidator_type, guard_type>)
        : ReadPath(backend, std::move(options), guard_type{}, codec_type{},
                   std::move(invalidator)) {}

    ReadPath(const ReadPath&) = delete;
    ReadPath& operator=(const ReadPath&) = delete;

    /// The cached value of `key`, or the loader's. The loader returns std::optional<T>:
    /// nullopt means "no such row" and is cached for negative_ttl. A loader taking a
    /// LoadContext& may set the entry's TTL and tags, or ask not to cache it (adaptive
    /// caching). The loader's exception propagates unchanged (to every caller that shared
    /// the load), unless a stale value within the grace period can be served instead.
    /// `call` overrides the cache's options for this call.
    ///
    /// A loader runs before get() returns, so it may capture by reference; only a loader
    /// wrapped in detached() may be run later: by a background refresh, or past a loader
    /// timeout. Throws LoadTimeoutError past the hard timeout with no stale value at hand,
    /// and ConfigError when a timeout is set and the loader is not detached.
    template <class L>
    std::optional<T> get(std::string_view key, L&& loader, const CallOptions& call = {}) {
        if constexpr (check_loader<T, L>()) {
            return get_with(key, {}, loader, call);
        } else {
            return std::nullopt;  // not compiled: check_loader failed the build
        }
    }

    /// get() for an entry that carries tags: it is served only while none of its tags
    /// was invalidated since it was written. The value and the tags' current versions are
    /// read in one round trip. Whatever tags a read passes, an entry is admitted by the
    /// tags it was stored with; the tags passed here are the ones a fill stamps.
    /// Needs an invalidator that stamps tags (Tags, the default).
    template <class L>
    std::optional<T> get(std::string_view key, std::span<const std::string> tags, L&& loader,
                         const CallOptions& call = {}) requires TagInvalidator<invalidator_type> {
        if constexpr (check_loader<T, L>()) {
            return get_with(key, tags, loader, call);
        } else {
            return std::nullopt;
        }
    }

    template <class L>
    std::optional<T> get(std::string_view key, std::initializer_list<std::string> tags, L&& loader,
                         const CallOptions& call = {}) requires TagInvalidator<invalidator_type> {
        return get(key, std::span<const std::string>(tags.begin(), tags.size()), loader, call);
    }

    /// What a read tells a cache in front of the policy (Near's L1) about its value.
    using Served = detail::Served;

    /// get(key, tags, loader, call) that also says what the value is stamped with.
    template <LoaderFor<T> L>
    std::optional<T> get_served(std::string_view key, std::span<const std::string> tags, L&& loader,
                                const CallOptions& call, Served& served) {
        return get_with(key, tags, loader, call, &served);
    }

    /// Invalidates every entry carrying `tag`, in O(1): the tag gets a new version, and
    /// entries stamped with the old one miss from now on. Throws BackendError when the
    /// store cannot be reached.
    void invalidate_tag(std::string_view tag) { invalidate_version(Tags::version_name(tag)); }

    /// Gives the version `name` a new value: every entry stamped with the old one misses
    /// from now on. invalidate_tag(t) is invalidate_version(Tags::version_name(t)); other
    /// invalidators name their versions likewise. Throws BackendError when the store
    /// cannot be reached.
    void invalidate_version(std::string_view name) {
        stats_.add<&StatsSnapshot::invalidations>();
        versions_.bump(name);
        invalidator_.bumped(version_key(name));
    }

    /// The stored key of a tag's version.
    [[nodiscard]] std::string tag_key(std::string_view tag) const {
        return version_key(Tags::version_name(tag));
    }

    /// The stored key of a version (docs/FORMAT.md, "Keys").
    [[nodiscard]] std::string version_key(std::string_view name) const {
        return versions_.key(name);
    }

    /// The version name a stored version key holds; nullopt for any other key.
    [[nodiscard]] std::optional<std::string_view> version_name_of(std::string_view stored) const {
        return versions_.name_of(stored);
    }

    /// Values for many keys, aligned with `keys`, from one backend read (a second only
    /// when some entries carry tags). The batch loader is called once, with only the keys
    /// that missed (each once), and returns one std::optional<T> per key it was given, in
    /// order. Stale values are served as they are (no refresh); use get() for keys that
    /// need one.
    template <class BatchLoader>
    std::vector<std::optional<T>> get_many(std::span<const std::string> keys,
                                           BatchLoader&& batch_loader) {
        return get_many(keys, std::span<const std::vector<std::string>>{}, batch_loader);
    }

    /// get_many of keys that carry tags: tags[i] are keys[i]'s, as get(key, tags, loader)
    /// takes them. They are read in the same command as the values, and stamped on what
    /// is filled, so that invalidate_tag reaches it; without them, a key filled by a batch
    /// read carries no tag and no invalidate_tag reaches it. `tags` is empty (no key has
    /// tags) or as long as `keys`; otherwise ConfigError.
    template <class BatchLoader>
    std::vector<std::optional<T>> get_many(std::span<const std::string> keys,
                                           std::span<const std::vector<std::string>> tags,
                                           BatchLoader&& batch_loader) {
        if constexpr (check_batch_loader<T, BatchLoader>()) {
            return get_many_with(keys, tags, batch_loader);
        } else {
            return {};  // not compiled: check_batch_loader failed the build
        }
    }

    /// Removes the cached value, and any lease on it, so that no load that started
    /// before this call can fill the key afterwards. Throws BackendError when the store
    /// could not be reached: the caller learns the entry may stay until its TTL.
    void invalidate(std::string_view key) {
        const std::string full = full_key(key);
        stats_.add<&StatsSnapshot::invalidations>();
        // New readers must not join a load that may have read the old row.
        flights_.forget(full);
        try {
            backend_.del(full);
        } catch (const BackendError&) {
            stats_.add<&StatsSnapshot::backend_errors>();
            throw;
        }
        invalidator_.invalidated(full);
    }

    [[nodiscard]] B& backend() noexcept { return backend_; }
    [[nodiscard]] guard_type& guard() noexcept { return guard_; }
    [[nodiscard]] invalidator_type& invalidator() noexcept { return invalidator_; }

    /// The key as stored: the prefix, `k:`, then the caller's key (docs/FORMAT.md).
    [[nodiscard]] std::string full_key(std::string_view key) const { return keys_.entry(key); }

    /// This cache's key layout: its entries, its own keys, and their siblings.
    [[nodiscard]] const keys::Namespace& keys() const noexcept { return keys_; }

    /// Over max_value_bytes (0: no limit): served, never cached.
    [[nodiscard]] bool too_large(std::size_t bytes) const noexcept {
        return options_.max_value_bytes != 0 && bytes > options_.max_value_bytes;
    }

    /// The caller's key of a stored entry key (what invalidators' rules see).
    [[nodiscard]] std::string_view caller_key(std::string_view full) const noexcept {
        return keys_.key_of(full).value_or(full);
    }

    /// Waits until no background refresh is queued or running.
    void wait_for_background_refreshes() { background_.drain(); }

    /// Leases extended by the keeper so far (a slow loader keeps its lease).
    [[nodiscard]] std::uint64_t lease_extensions() const { return leases_.extensions(); }

protected:
    /// The thread that keeps this cache's leases alive; a write path's write leases and
    /// claims share it.
    Keeper& keeper() noexcept { return keeper_; }

    const codec_type& codec() const noexcept { return codec_; }

    /// The value in a value envelope, or nullopt when this cache cannot read it (another
    /// codec's bytes, bytes its codec refuses, a user's from_json throwing a standard
    /// exception): such bytes are a miss, never an error. `why` receives the reason.
    std::optional<T> decode_payload(const EnvelopeView& env, std::string* why = nullptr) const {
        if (env.header.codec != codec_type::id) {
            if (why) *why = "written with codec " + std::to_string(env.header.codec);
            return std::nullopt;
        }
        try {
            return codec_.template decode<T>(env.payload);
        } catch (const std::exception& e) {
            if (why) *why = e.what();
            return std::nullopt;
        }
    }

    using TagVersion = detail::TagVersion;
    using EntryTimes = detail::EntryTimes;

    /// A value as stored: its bytes and the TTL the store keeps them for.
    struct Entry {
        std::string bytes;
        Millis ttl;
    };

    /// Stores `value` now (replacing any value or lease: a load in flight cannot
    /// overwrite it), with the current versions of `tags`. For write-through paths and
    /// warm-ups; a read-through cache needs only get(). A value over max_value_bytes
    /// removes the key instead (counted as too_large).
    void set(std::string_view key, const T& value, std::span<const std::string> tags = {}) {
        const std::string full = full_key(key);
        const std::vector<std::string> names = version_names(full, tags);
        std::vector<TagVersion> stamp;
        if (!names.empty()) stamp = versions_.current(names);
        Entry entry = encode(full, &value, std::chrono::microseconds{0}, stamp);
        if (too_large(entry.bytes.size())) {
            stats_.add<&StatsSnapshot::too_large>();
            backend_.del(full);  // what was cached is older than `value`
            written(full, stamp, /*cached=*/false);
            return;
        }
        backend_.set(full, entry.bytes, entry.ttl);
        written(full, stamp, /*cached=*/true);
    }

    [[nodiscard]] StatsSnapshot read_stats() const {
        StatsSnapshot s = stats_.snapshot();
        if constexpr (requires(const B& b) {
                          { b.evictions() } -> std::convertible_to<std::uint64_t>;
                      }) {
            s.evictions = backend_.evictions();
        }
        return s;
    }

    [[nodiscard]] const CacheAsideOptions& cache_options() const noexcept { return options_; }

    // Waits until no background refresh or timed-out load runs: a derived policy whose
    // loaders call back into it waits in its destructor.
    void wait_for_loads() {
        background_.drain();
        loads_.wait_idle();
    }

    // ---- for the write paths ------------------------------------------------------------

    // The current versions of what an entry of `full` depends on, created where missing:
    // read before a write path's database write, so that a bump during the write leaves
    // the written value stamped with the old version (and never served). Throws
    // BackendError.
    std::vector<TagVersion> versions_for_write(const std::string& full) {
        const std::vector<std::string> names = version_names(full, {});
        if (names.empty()) return {};
        return versions_.current(names);
    }

    // Whether `bytes` are an entry (a value or a "not found") that a read would not serve
    // as fresh now: past its freshness, or stamped with a version since bumped. Leases and
    // bytes that are no entry are not. Throws BackendError.
    bool retired(const std::string& bytes) {
        const auto env = envelope::parse(bytes);
        if (!env || env->header.kind == EntryKind::lease) return false;
        Read r = classify(StoredValue{bytes, std::nullopt});
        if (r.state != Read::fresh) return true;
        admit(std::span<Read>(&r, 1), {}, versions_);
        return r.state != Read::fresh;
    }

    // A write path wrote `full` (stamped with `stamp`; `cached`: its value is there now).
    // Readers from now on must not share a load that read the old row, the invalidator
    // hears of the write (Events: other processes' copies go), and the versions the value
    // carries are kept alive.
    void written(const std::string& full, std::span<const TagVersion> stamp, bool cached) {
        flights_.forget(full);
        invalidator_.invalidated(full);
        if (cached) versions_.keep_alive(stamp);
    }

    // A value's TTL before jitter: the call's (or loader's), else the invalidator's, else
    // the cache's.
    Millis value_ttl(std::string_view full, const EntryTimes& times) {
        if (times.ttl) return *times.ttl;
        if constexpr (TtlInvalidator<invalidator_type>) {
            if (const auto decided = invalidator_.ttl_for(caller_key(full));
                decided && decided->count() > 0) {
                return saturated(*decided);
            }
        }
        return options_.ttl;
    }

    // The stored form of an entry: the header with its freshness, the stamp, then
    // append(bytes) adds the payload. `kind` value or not_found. Used by every writer of
    // entries (fills, set, and the write paths' puts), so all agree on freshness.
    template <class Append>
    Entry make_entry(std::string_view full, EntryKind kind, std::chrono::microseconds took,
                     std::span<const TagVersion> stamp, std::uint64_t version, Append&& append,
                     const EntryTimes& times = {}) {
        const bool is_value = kind == EntryKind::value;
        const Millis fresh = is_value ? options_.jitter.apply(value_ttl(full, times))
                                      : times.negative_ttl.value_or(options_.negative_ttl);
        const Millis grace = is_value ? times.grace.value_or(options_.grace) : Millis{0};
        const TimePoint now = options_.clock->now();
        const EnvelopeHeader header{
            .kind = kind,
            .codec = is_value ? codec_type::id : std::uint8_t{0},
            .written_at = now,
            .fresh_until = now + fresh,
            .grace_until = now + saturated_sum(fresh, grace),
            .recompute_time = took,
            .version = version,
        };
        Entry entry{{}, saturated_sum(fresh, grace)};
        envelope::write_header(entry.bytes, header, stamp);
        std::forward<Append>(append)(entry.bytes);
        return entry;
    }

private:
    // The versions an entry of `key` read with `tags` depends on, as the invalidator
    // names them, each once.
    std::vector<std::string> version_names(std::string_view full,
                                           std::span<const std::string> tags) {
        std::vector<std::string> names;
        invalidator_.versions_of(caller_key(full), tags, names);
        if (names.size() < 2) return names;
        std::vector<std::string> unique;
        unique.reserve(names.size());
        for (auto& n : names) {
            if (std::find(unique.begin(), unique.end(), n) == unique.end()) {
                unique.push_back(std::move(n));
            }
        }
        return unique;
    }

    template <BatchLoaderFor<T> BatchLoader>
    std::vector<std::optional<T>> get_many_with(std::span<const std::string> keys,
                                                std::span<const std::vector<std::string>> tags,
                                                BatchLoader& batch_loader) {
        if (!tags.empty() && tags.size() != keys.size()) {
            throw ConfigError("get_many: " + std::to_string(tags.size()) + " tag lists for " +
                              std::to_string(keys.size()) + " keys");
        }
        std::vector<std::string> full;
        full.reserve(keys.size());
        for (const auto& k : keys) full.push_back(full_key(k));

        // The versions each key depends on (its tags', and the invalidator's own), read in
        // the same command as the values.
        std::vector<std::vector<std::string>> names_of(keys.size());
        std::vector<TagVersion> known;
        for (std::size_t i = 0; i < keys.size(); ++i) {
            names_of[i] = version_names(
                full[i], tags.empty() ? std::span<const std::string>{} : std::span(tags[i]));
            for (const auto& n : names_of[i]) {
                const bool seen = std::any_of(known.begin(), known.end(),
                                              [&](const TagVersion& k) { return k.name == n; });
                if (!seen) known.push_back(TagVersion{n, 0});
            }
        }
        std::vector<Read> reads(keys.size());
        bool read_failed = false;
        try {
            std::vector<std::string> with_versions;
            if (!known.empty()) {
                with_versions.reserve(full.size() + known.size());
                with_versions = full;
                for (const auto& k : known) with_versions.push_back(version_key(k.name));
            }
            auto stored = read_values(backend_, known.empty() ? full : with_versions);
            for (std::size_t j = 0; j < known.size(); ++j) {
                known[j].version = Versions::parse(stored[keys.size() + j]);
            }
            for (std::size_t i = 0; i < keys.size(); ++i) reads[i] = classify(std::move(stored[i]));
            admit(std::span<Read>(reads), known, versions_);
        } catch (const ClusterRedirectError&) {
            stats_.add<&StatsSnapshot::backend_errors>();
            throw;  // a misconfiguration, not an outage: loading around it would hide it
        } catch (const BackendError& e) {
            stats_.add<&StatsSnapshot::backend_errors>();
            log_read_failure(e);
            read_failed = true;
            for (auto& r : reads) r = Read{.state = Read::unknown};
        }
        auto stamp_of = [&](std::size_t i) {
            std::vector<TagVersion> stamp;
            for (const auto& n : names_of[i]) {
                for (const auto& k : known) {
                    if (k.name == n) stamp.push_back(k);
                }
            }
            return stamp;
        };

        std::vector<std::optional<T>> out(keys.size());
        // Missing keys in first-seen order, each with the positions that want it.
        struct Missing {
            std::size_t first_index;
            std::vector<std::size_t> wanted_at;
        };
        std::vector<std::string> missing_keys;
        std::vector<Missing> missing;
        std::unordered_map<std::string_view, std::size_t> index_of;
        for (std::size_t i = 0; i < keys.size(); ++i) {
            Read& found = reads[i];
            if (found.servable()) {
                if (found.state == Read::fresh) {
                    stats_.add<&StatsSnapshot::hits>();
                } else {
                    stats_.add<&StatsSnapshot::stale_served>();
                }
                out[i] = std::move(found.value);
                continue;
            }
            stats_.add<&StatsSnapshot::misses>();
            auto [it, first] = index_of.try_emplace(keys[i], missing.size());
            if (first) {
                missing_keys.push_back(keys[i]);
                missing.push_back(Missing{i, {}});
            }
            missing[it->second].wanted_at.push_back(i);
        }
        if (missing.empty()) return out;

        // Leases only where the read worked and found nothing usable: after a failed read
        // the store is likely down, and a lease per key would be a round trip per key.
        std::vector<std::optional<std::string>> leases(missing.size());
        std::vector<Keeper::Hold> holds;
        // A fill must be stamped: versions that do not exist yet are created first, or
        // nothing is filled.
        const bool can_stamp = !read_failed && versions_.create_missing(known);
        for (std::size_t m = 0; m < missing.size() && can_stamp; ++m) {
            const Read& found = reads[missing[m].first_index];
            if (found.state != Read::absent) continue;
            const std::string& key = full[missing[m].first_index];
            leases[m] = leases_.take(key, found.replaced());
            if (leases[m]) holds.push_back(leases_.hold(key, *leases[m]));
        }
        auto release_all = [&] {
            holds.clear();
            for (std::size_t m = 0; m < missing.size(); ++m) {
                leases_.release(full[missing[m].first_index], leases[m]);
            }
        };

        std::vector<std::optional<T>> loaded;
        const Stopwatch watch(*options_.clock);
        try {
            loaded = loads_.run_batch(batch_loader, std::span<const std::string>(missing_keys));
        } catch (...) {
            release_all();
            throw;
        }
        if (loaded.size() != missing.size()) {
            release_all();
            throw LoaderError("get_many: the batch loader returned " +
                              std::to_string(loaded.size()) + " values for " +
                              std::to_string(missing.size()) + " keys");
        }
        holds.clear();
        const auto took = watch.elapsed();
        const bool late = overdue(took);
        for (std::size_t m = 0; m < missing.size(); ++m) {
            const std::string& key = full[missing[m].first_index];
            if (late) {
                leases_.release(key, leases[m]);
            } else if (leases[m]) {
                fill(key, *leases[m], loaded[m], took, stamp_of(missing[m].first_index));
            }
            const auto& at = missing[m].wanted_at;
            for (std::size_t j = 0; j + 1 < at.size(); ++j) out[at[j]] = loaded[m];
            out[at.back()] = std::move(loaded[m]);
        }
        return out;
    }

    template <class L>
    std::optional<T> get_with(std::string_view key, std::span<const std::string> tags, L& loader,
                              const CallOptions& options, Served* served = nullptr) {
        const Call call = resolve(options, options_, is_detached_v<std::decay_t<L>>);
        const std::string full = full_key(key);
        const std::vector<std::string> names = version_names(full, tags);
        const auto before = flights_.now();
        std::vector<TagVersion> stamp;
        Read found = read(full, names, stamp, is_adaptive_loader_v<L>);
        return get_read(full, std::move(found), loader, names, stamp, before, call, served);
    }

    // ---- the read: one store command, classified, admitted -------------------------

    // Reads `full` and the versions of `tags` in one command, then admits what is there
    // by its own stamped tags. `stamp` receives the tags' current versions (created where
    // missing, when a fill may follow): what a fill after this read stamps. `with_bumps`
    // (for a loader that may choose tags) reads the bump counter in the same command.
    Read read(const std::string& full, std::span<const std::string> tags,
              std::vector<TagVersion>& stamp, bool with_bumps = false) {
        stamp.clear();
        Read r;
        std::uint64_t bumps = 0;
        const LeaseNotices::Mark mark = leases_.mark();
        try {
            if (tags.empty() && !with_bumps) {
                r = classify(read_value(backend_, full));
            } else {
                std::vector<std::string> keys;
                keys.reserve(tags.size() + 2);
                keys.push_back(full);
                for (const auto& t : tags) keys.push_back(version_key(t));
                if (with_bumps) keys.push_back(version_key(Versions::bumps_name));
                auto stored = read_values(backend_, keys);
                for (std::size_t i = 0; i < tags.size(); ++i) {
                    stamp.push_back(TagVersion{tags[i], Versions::parse(stored[i + 1])});
                }
                if (with_bumps) bumps = Versions::parse(stored.back());
                r = classify(std::move(stored[0]));
            }
            admit(std::span<Read>(&r, 1), stamp, versions_);
        } catch (const ClusterRedirectError&) {
            stats_.add<&StatsSnapshot::backend_errors>();
            throw;  // a misconfiguration, not an outage: loading around it would hide it
        } catch (const BackendError& e) {
            stats_.add<&StatsSnapshot::backend_errors>();
            log_read_failure(e);
            return Read{.state = Read::unknown};
        }
        r.bumps = bumps;
        r.mark = mark;
        if (r.state == Read::leased && !with_bumps) r.bumps = versions_.bumps();
        if (r.state == Read::absent && !versions_.create_missing(stamp)) {
            r.state = Read::unknown;  // cannot stamp a fill: load, but do not fill
        }
        if (with_bumps && r.bumps == 0) {
            // A counter that does not exist cannot show a bump: create it first. (Without
            // it, a fill with tags its loader chose is given up.)
            std::vector<TagVersion> counter{TagVersion{std::string(Versions::bumps_name), 0}};
            if (versions_.create_missing(counter, no_expiry)) r.bumps = counter[0].version;
        }
        return r;
    }

    Read classify(std::optional<StoredValue> stored) {
        return detail::classify<T>(
            std::move(stored), *options_.clock,
            [this](const EnvelopeView& env) { return decode_payload(env); }, stats_);
    }

    void log_read_failure(const BackendError& e) const noexcept {
        options_.log(LogLevel::debug, [&] {
            return "cache '" + options_.name + "': the store failed a read (" +
                   std::string(e.what()) + "); loading without the cache";
        });
    }

    // ---- a read's outcome -------------------------------------------------------------

    template <class L>
    std::optional<T> get_read(const std::string& full, Read found, L& loader,
                              std::span<const std::string> tags, std::vector<TagVersion>& stamp,
                              std::uint64_t before, const Call& call, Served* served) {
        switch (found.state) {
            case Read::fresh:
                stats_.add<&StatsSnapshot::hits>();
                if (found.negative) stats_.add<&StatsSnapshot::negative_hits>();
                if (!found.negative &&
                    guard_.refresh_early(FreshHit{found.fresh_for, found.recompute_time})) {
                    return refresh(full, std::move(found), loader, /*early=*/true, tags, call,
                                   served);
                }
                report_found(served, found);
                return std::move(found.value);
            case Read::stale:
                return refresh(full, std::move(found), loader, /*early=*/false, tags, call, served);
            case Read::absent:
            case Read::leased:
            case Read::unknown:
                break;
        }
        stats_.add<&StatsSnapshot::misses>();
        const auto state = found.state;
        // Share a load in flight only if its result was observed after this read began,
        // or it is fenced by the very lease this read saw: a result observed earlier may
        // predate an invalidation (maybe another process's) that returned before this
        // read. That holds for a read that could not reach the store too: it waits for
        // the load in flight and then joins the next one.
        // A lease fences a load against invalidations of the key, not of its tags: the
        // fence is the lease with the tag versions read beside it.
        const std::string seen = state == Read::leased
                                     ? Leases::fence(found.bytes, stamp, found.bumps).value_or("")
                                     : std::string();
        auto accept = [&](std::string_view fence, std::uint64_t observed) {
            return observed > before || (!seen.empty() && fence == seen);
        };
        bool led = false;
        auto lead = [&](auto& leader) {
            led = true;
            return load_missing(full, loader, std::move(found), tags, stamp, leader, call, served);
        };
        auto result = [&] {
            for (int attempt = 0;; ++attempt) {
                try {
                    return flights_.run(full, lead, accept, call.deadline);
                } catch (const LoadTimeoutError&) {
                    // Another caller's timeout, shared: a caller without one of its own
                    // goes on (joins the next load, or leads it).
                    if (led || call.deadline != no_deadline || attempt >= 3) throw;
                }
            }
        }();
        if (result.shared) {
            stats_.add<&StatsSnapshot::coalesced>();
            // What the leader's load decided (its loader's context) is not known here.
            report_unknown(served);
        }
        return std::move(result.value);
    }

    // What this caller's load decided about its entry: whether it may be kept at all, and
    // the shortest it stays fresh (jitter at its lowest).
    void report_loaded(Served* served, const std::string& full, const Loaded<T>& loaded,
                       const Call& call) {
        if (!served) return;
        EntryTimes times = call.times;
        if (loaded.context.ttl) times.ttl = times.negative_ttl = saturated(*loaded.context.ttl);
        Millis fresh_for = times.negative_ttl.value_or(options_.negative_ttl);
        if (loaded.value) {
            // Jitter at its lowest.
            const Millis ttl = value_ttl(full, times);
            fresh_for = Millis{static_cast<Millis::rep>(static_cast<double>(ttl.count()) *
                                                        (1.0 - options_.jitter.ratio))};
        }
        detail::report_loaded(served, loaded.context.cache, fresh_for);
    }

    // A miss, run by one caller per key in this process. Takes the lease and loads; if
    // another process holds the lease, waits as the guard says (each poll is a full
    // read(), admission included), then loads unfilled. The hard timeout bounds it all.
    template <class L, class Leader>
    std::optional<T> load_missing(const std::string& full, L& loader, Read found,
                                  std::span<const std::string> tags, std::vector<TagVersion>& stamp,
                                  Leader& leader, const Call& call, Served* served) {
        const LeaseWait wait = guard_.lease_wait();
        const auto deadline =
            std::min(call.deadline, std::chrono::steady_clock::now() + wait.max_wait);
        Millis backoff = std::max(wait.first_backoff, Millis{1});
        bool counted_wait = false;
        int lease_attempts = 0;
        for (;;) {
            // Waiting on another loader's lease: a reader that saw the same lease (and tag
            // versions) read when this leader did, with no invalidation between, and may
            // share whatever this leader observes from now on.
            if (found.state == Read::leased)
                leader.set_fence(Leases::waiting_fence(found.bytes, stamp, found.bumps));
            if (found.state == Read::fresh || found.state == Read::stale) {
                if (found.state == Read::stale) stats_.add<&StatsSnapshot::stale_served>();
                report_found(served, found);
                return std::move(found.value);
            }
            if (found.state == Read::absent) {
                bool contended = false;
                if (auto lease = leases_.take(full, found.replaced(), &contended)) {
                    // The counter as this load begins: readers who find this lease and
                    // read the same counter may share the load.
                    if (!is_adaptive_loader_v<L>) found.bumps = versions_.bumps();
                    leader.set_fence(Leases::fence_of(*lease, stamp, found.bumps));
                    leader.observe();
                    report_load(served, stamp, is_adaptive_loader_v<L>);
                    return load_and_fill(full, *lease, loader, stamp, found.bumps, call, served);
                }
                if (!contended) break;  // the store failed
                // Someone else got there first: read whose lease it is, so that readers
                // who see the same lease may share this load.
                leader.observe();
                found = read(full, tags, stamp, is_adaptive_loader_v<L>);
                // Gone again: the bytes this caller meant to replace expired in the store
                // just then, or the holder gave its lease up. Lease again: loading without
                // filling here costs the database one query per process at every expiry.
                // Bounded, so that a store that keeps changing under us cannot hold a
                // reader: then it loads and does not fill.
                if (found.state == Read::absent && ++lease_attempts >= 3) break;
                continue;
            }
            if (found.state != Read::leased || std::chrono::steady_clock::now() >= deadline) break;
            if (!counted_wait) {
                stats_.add<&StatsSnapshot::lease_waits>();
                counted_wait = true;
            }
            if (leases_.announced(found.bytes, found.mark)) {
                // Woken by the holder's fill or release; the poll is the fallback.
                leases_.wait_for_end(
                    full, found.mark,
                    std::min(deadline, std::chrono::steady_clock::now() + wait.fallback_poll));
            } else {
                // Jitter keeps waiters of many processes from polling in lockstep.
                const auto nap = Millis{random_between(backoff.count() / 2 + 1, backoff.count())};
                std::this_thread::sleep_for(std::min<std::chrono::steady_clock::duration>(
                    nap, deadline - std::chrono::steady_clock::now()));
                backoff = std::min(backoff * 2, std::max(wait.max_backoff, backoff));
            }
            leader.observe();
            found = read(full, tags, stamp, is_adaptive_loader_v<L>);
        }
        // Time ran out while another caller held the lease: no time is left to load in.
        if (std::chrono::steady_clock::now() >= call.deadline) {
            throw LoadTimeoutError(
                "larder: hard_timeout passed while another caller was loading the key");
        }
        leader.observe();
        std::optional<T> value = loads_.run_unfilled(loader, call.deadline);
        // Not stored: a copy elsewhere (L1) could not be told when the row changes.
        report_unknown(served);
        return value;
    }

    template <class L>
    std::optional<T> load_and_fill(const std::string& full, const std::string& lease, L& loader,
                                   std::span<const TagVersion> stamp, std::uint64_t bumps,
                                   const Call& call, Served* served) {
        auto finish = [this, full, lease, bumps, times = call.times,
                       stamp = std::vector<TagVersion>(stamp.begin(), stamp.end()),
                       hold = leases_.hold(full, lease)](const std::optional<T>* value,
                                                         const LoadContext& context,
                                                         std::chrono::microseconds took) mutable {
            { auto done = std::move(hold); }  // the lease is no longer extended
            if (!value || overdue(took)) {
                leases_.release(full, lease);
                return;
            }
            fill(full, lease, *value, took, stamp, context, times, bumps);
        };
        auto loaded = loads_.run(loader, call.deadline, std::move(finish));
        if (!loaded) throw LoadTimeoutError("larder: the load took longer than hard_timeout");
        report_loaded(served, full, *loaded, call);
        return std::move(loaded->value);
    }

    // A value is there (fresh and elected for early refresh, or stale): one caller across
    // all processes refreshes it, holding a lease on a sibling key; the rest serve it.
    template <class L>
    std::optional<T> refresh(const std::string& full, Read found, L& loader, bool early,
                             std::span<const std::string> caller_names, const Call& call,
                             Served* served) {
        // A refresh stamps the versions the entry carries as well as the caller's: a
        // reader passing fewer tags must not strip the entry of its own, and a bump of one
        // of them during the load must fence this fill.
        std::vector<std::string> names(caller_names.begin(), caller_names.end());
        for (const auto& t : found.stamped) {
            if (std::find(names.begin(), names.end(), t.name) == names.end()) {
                names.push_back(t.name);
            }
        }
        if constexpr (is_detached_v<std::decay_t<L>>) {
            if (early && guard_.refresh_in_background()) {
                Call background = call;  // nobody waits for it
                background.deadline = background.soft_deadline = no_deadline;
                background_.submit(
                    full, [this, full, bytes = found.bytes, loader, names, background]() mutable {
                        (void)refresh_now(full, bytes, loader, /*early=*/true, names, background,
                                          nullptr);
                    });
                report_refreshing(served, found, names, is_adaptive_loader_v<L>);
                return std::move(found.value);
            }
        }
        if (auto refreshed = refresh_now(full, found.bytes, loader, early, names, call, served)) {
            return std::move(*refreshed);
        }
        if (found.state == Read::stale) stats_.add<&StatsSnapshot::stale_served>();
        report_refreshing(served, found, names, is_adaptive_loader_v<L>);
        return std::move(found.value);
    }

    // Refreshes the value stored as `bytes`. nullopt when this caller did not refresh
    // (someone else holds the refresh lease, the loader failed, or it was slower than
    // the soft timeout: it then fills when it ends); otherwise the new value.
    template <class L>
    std::optional<std::optional<T>> refresh_now(const std::string& full, const std::string& bytes,
                                                L& loader, bool early,
                                                std::span<const std::string> tags, const Call& call,
                                                Served* served) {
        const std::string lease_key = keys_.sibling(caller_key(full), "refresh");
        auto lease = leases_.take(lease_key, nullptr);
        if (!lease) return std::nullopt;
        // Another process may have refreshed and released just before this lease was
        // taken: if the bytes changed, its value is the refresh. The re-read is a full
        // read(): it also gives the tag versions this refresh stamps.
        std::vector<TagVersion> stamp;
        Read now;
        try {
            now = read(full, tags, stamp, is_adaptive_loader_v<L>);
        } catch (...) {
            leases_.release(lease_key, lease);
            throw;
        }
        if (now.state == Read::unknown || !versions_.create_missing(stamp)) {
            leases_.release(lease_key, lease);
            return std::nullopt;
        }
        if (now.bytes != bytes) {
            leases_.release(lease_key, lease);
            if (now.state != Read::fresh || now.negative) return std::nullopt;
            report_found(served, now);
            return std::optional<std::optional<T>>(std::move(now.value));
        }
        if (early) stats_.add<&StatsSnapshot::early_refreshes>();
        report_load(served, stamp, is_adaptive_loader_v<L>);
        // Fenced on the old bytes (unique per write: the envelope's nonce): an
        // invalidation meanwhile makes this fill fail, even if equal bytes came back.
        auto finish = [this, full, bytes, lease_key, lease = *lease, bumps = now.bumps,
                       times = call.times, stamp = std::move(stamp),
                       hold = leases_.hold(lease_key, *lease)](
                          const std::optional<T>* value, const LoadContext& context,
                          std::chrono::microseconds took) mutable {
            { auto done = std::move(hold); }
            if (value && !overdue(took))
                fill(full, bytes, *value, took, stamp, context, times, bumps);
            leases_.release(lease_key, std::optional<std::string>(lease));
        };
        try {
            auto loaded = loads_.run(loader, call.soft_deadline, std::move(finish));
            if (!loaded) return std::nullopt;  // the value at hand is served meanwhile
            report_loaded(served, full, *loaded, call);
            return std::optional<std::optional<T>>(std::move(loaded->value));
        } catch (...) {
            // Fail-safe: the caller serves what it has, and only the log hears why.
            options_.log(LogLevel::warn, [&] {
                return "cache '" + options_.name + "': refreshing '" +
                       std::string(caller_key(full)) + "' failed (" + current_exception_message() +
                       "); serving the value at hand";
            });
            return std::nullopt;
        }
    }

    // A load that outlived max_load_time: its lease was no longer extended and may
    // belong to a waiter now. Its value is served, not stored.
    bool overdue(std::chrono::microseconds took) noexcept {
        if (took <= options_.max_load_time) return false;
        stats_.add<&StatsSnapshot::overdue_loads>();
        options_.log(LogLevel::warn, [&] {
            return "cache '" + options_.name + "': a load took " +
                   std::to_string(std::chrono::duration_cast<Millis>(took).count()) +
                   " ms, past max_load_time; its value is served, not stored";
        });
        return true;
    }

    // The entry of a value (or of "not found" when value is null).
    Entry encode(std::string_view full, const T* value, std::chrono::microseconds took,
                 std::span<const TagVersion> stamp, const EntryTimes& times = {}) {
        return make_entry(
            full, value ? EntryKind::value : EntryKind::not_found, took, stamp, 0,
            [&](std::string& out) {
                if (value) codec_.encode(*value, out);
            },
            times);
    }

    // Replaces `expected` (a lease, or the value being refreshed) with the loaded value,
    // as the loader's context says: its TTL, its tags, or not at all. `bumps` is the bump
    // counter read before the load (0: not read).
    void fill(const std::string& full, const std::string& expected, const std::optional<T>& value,
              std::chrono::microseconds took, std::span<const TagVersion> stamp,
              const LoadContext& context = {}, EntryTimes times = {}, std::uint64_t bumps = 0) {
        const auto held = envelope::parse(expected);
        const bool expected_is_lease = held && held->header.kind == EntryKind::lease;
        // A fill that does not happen gives a lease back at once; a value being refreshed
        // stays until its TTL.
        auto give_up = [&] {
            if (expected_is_lease) leases_.release(full, expected);
        };
        if (!context.cache) {
            stats_.add<&StatsSnapshot::not_cached>();
            return give_up();
        }
        std::vector<TagVersion> stamped(stamp.begin(), stamp.end());
        if (!context.tags.empty() && !add_loader_tags(full, context.tags, stamped, bumps)) {
            stats_.add<&StatsSnapshot::fills_rejected>();
            return give_up();
        }
        if (context.ttl) times.ttl = times.negative_ttl = saturated(*context.ttl);
        std::optional<Entry> entry;
        try {
            entry = encode(full, value ? &*value : nullptr, took, stamped, times);
        } catch (const std::exception&) {
            stats_.add<&StatsSnapshot::corrupt_values>();  // served, but not cached
            return give_up();
        }
        if (too_large(entry->bytes.size())) {
            // Served, not cached. A value it was to replace goes too: left, it would be
            // served stale in its place.
            stats_.add<&StatsSnapshot::too_large>();
            try {
                if (expected_is_lease) {
                    (void)leases_.end(full, expected);
                } else {
                    (void)backend_.compare_and_delete(full, expected);
                }
            } catch (const BackendError&) {
                stats_.add<&StatsSnapshot::backend_errors>();
            }
            return;
        }
        try {
            const bool filled =
                expected_is_lease
                    ? leases_.replace(full, expected, entry->bytes, entry->ttl)
                    : backend_.compare_and_set(full, expected, entry->bytes, entry->ttl);
            if (filled) {
                stats_.add<&StatsSnapshot::fills>();
                versions_.keep_alive(stamped);
            } else {
                stats_.add<&StatsSnapshot::fills_rejected>();
            }
        } catch (const BackendError&) {
            // Give the lease back: left in place, it would keep every other process's
            // Lock waiter waiting until lease_ttl runs out.
            stats_.add<&StatsSnapshot::backend_errors>();
            give_up();
        }
    }

    // Adds to `stamp` the versions of the tags a loader chose once it had loaded, and of
    // what the invalidator names with them; false when a bump may have happened since
    // the load began (TagVersions::add_chosen).
    bool add_loader_tags(const std::string& full, std::span<const std::string> tags,
                         std::vector<TagVersion>& stamp, std::uint64_t bumps_before) {
        if (bumps_before == 0) return false;  // no counter to check the versions against
        std::vector<std::string> names;
        invalidator_.versions_of(caller_key(full), tags, names);
        return versions_.add_chosen(names, stamp, bumps_before);
    }

    // The backend's lease notices, when this cache is to hear lease ends: only a guard
    // that waits for other loaders needs them, on a backend that announces them.
    static LeaseNotices* lease_notices(B& backend, guard_type& guard) {
        if constexpr (NotifiesLeaseEnds<B>) {
            if (guard.lease_wait().max_wait.count() > 0) return &backend.lease_notices();
        }
        return nullptr;
    }

    B& backend_;
    CacheAsideOptions options_;
    keys::Namespace keys_;
    guard_type guard_;
    [[no_unique_address]] codec_type codec_;
    [[no_unique_address]] invalidator_type invalidator_;
    detail::StripedCounters<StatsSnapshot> stats_;
    Versions versions_;
    SingleFlight<std::optional<T>> flights_;
    Keeper keeper_;  // extends leases here, and a write path's write leases and claims
    Leases leases_;
    // Last: destroyed first, so no load or refresh outlives the members it uses.
    Loads<T> loads_;
    BackgroundWorker background_;
};

}  // namespace larder::detail
