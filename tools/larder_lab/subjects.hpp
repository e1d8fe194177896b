// The template half of larder-lab: the stores and the bus a configuration runs on, the
// guard a spec names, and build_subject<Adapter>, which turns a (backend, guard) pair known
// only at run time into one concrete Adapter<Backend, Guard> through a table of factories.
// Each policy's adapter lives in its own .cpp (cache_aside.cpp, write_through.cpp,
// write_behind.cpp), so they compile in parallel.
#pragma once

#include <larder/larder.hpp>
#include <larder/near/bus.hpp>
#include <larder/near/near.hpp>
#if defined(LARDER_LAB_HAVE_REDIS)
#include <larder/backend/redis.hpp>
#include <larder/near/redis_bus.hpp>
#endif

#include <algorithm>
#include <array>
#include <atomic>
#include <cerrno>
#include <memory>
#include <mutex>
#include <optional>
#include <span>
#include <string>
#include <tuple>
#include <utility>
#include <vector>

#include "lab.hpp"

namespace lab {

// ---- guards ---------------------------------------------------------------------------

/// Indexed by Spec::guard_index(): none, lock, xfetch, xfetch+lock.
using GuardTypes = std::tuple<larder::NoGuard, larder::Lock, larder::XFetch,
                              larder::Guards<larder::XFetch, larder::Lock>>;

template <class G>
G make_guard(const Options& o);

template <>
inline larder::NoGuard make_guard<larder::NoGuard>(const Options&) {
    return {};
}
template <>
inline larder::Lock make_guard<larder::Lock>(const Options& o) {
    return larder::Lock(larder::LockOptions{.max_wait = o.lock_wait});
}
template <>
inline larder::XFetch make_guard<larder::XFetch>(const Options& o) {
    return larder::XFetch(larder::XFetchOptions{.beta = o.xfetch_beta});
}
template <>
inline larder::Guards<larder::XFetch, larder::Lock>
make_guard<larder::Guards<larder::XFetch, larder::Lock>>(const Options& o) {
    return larder::Guards<larder::XFetch, larder::Lock>(make_guard<larder::XFetch>(o),
                                                        make_guard<larder::Lock>(o));
}

// ---- options shared by every policy ---------------------------------------------------

/// The clock for an option whose default is `default_clock`: the run's wall clock (which
/// larder-check steps, as NTP steps the system's) where the default is the system's wall
/// clock, the default otherwise (a component on monotonic time does not see a step).
inline const larder::Clock* wall_clock_for(const larder::Clock* default_clock, const Options& o) {
    return o.clock && default_clock == &larder::SystemClock::instance() ? o.clock : default_clock;
}

inline larder::CacheAsideOptions read_options(const Options& o) {
    larder::CacheAsideOptions c;
    c.ttl = o.ttl;
    c.jitter.max_extra = o.ttl_jitter;
    c.lease_ttl = o.lease_ttl;
    c.clock = wall_clock_for(c.clock, o);
    return c;
}

inline larder::NearCacheOptions l1_options(const Options& o) {
    return larder::NearCacheOptions{.max_entries = o.l1_entries, .ttl = o.effective_l1_ttl()};
}

// ---- stores ---------------------------------------------------------------------------

/// The cache store(s) and the invalidation bus of one run. Every simulated instance gets
/// a backend: for memory they share one (it stands for the shared cache server); for
/// Redis each has its own RedisBackend (its own connection pool), as separate processes
/// would.
template <class B>
class Stores;

template <>
class Stores<larder::MemoryBackend> {
public:
    using Bus = larder::MemoryBus;
    /// The write-behind queue lives in process memory: instances must share one object.
    static constexpr bool queue_in_process = true;

    Stores(const RunEnv& env, const Spec&)
        : backend_(larder::MemoryBackendOptions{
              .max_entries = std::max<std::size_t>(1'000'000, env.options.keys * 4),
              .clock = wall_clock_for(larder::MemoryBackendOptions{}.clock, env.options)}) {}

    larder::MemoryBackend& backend(std::size_t) { return backend_; }
    Bus& bus() { return bus_; }

private:
    larder::MemoryBackend backend_;
    larder::MemoryBus bus_;
};

#if defined(LARDER_LAB_HAVE_REDIS)
inline larder::RedisOptions redis_options(const RunEnv& env) {
    larder::RedisOptions o = larder::RedisOptions::from_url(env.redis_url);
    o.key_prefix = env.key_prefix;
    o.require_connection = true;
    const std::size_t per_instance =
        (env.options.threads + env.options.instances - 1) / env.options.instances;
    o.pool_size = std::max<std::size_t>(8, per_instance + 4);
    return o;
}

template <>
class Stores<larder::RedisBackend> {
public:
    using Bus = larder::RedisBus;
    static constexpr bool queue_in_process = false;

    Stores(const RunEnv& env, const Spec& spec) {
        const larder::RedisOptions o = redis_options(env);
        for (std::size_t i = 0; i < env.options.instances; ++i) {
            backends_.push_back(std::make_unique<larder::RedisBackend>(o));
        }
        // One subscriber connection stands for every instance's: messages still travel
        // through Redis, so other instances see a write only after the pub/sub delay.
        if (spec.l1) {
            bus_ = std::make_unique<larder::RedisBus>(
                o, larder::RedisBusOptions{.channel = env.key_prefix + "invalidate"});
        }
    }

    larder::RedisBackend& backend(std::size_t i) { return *backends_[i]; }
    Bus& bus() { return *bus_; }

private:
    std::vector<std::unique_ptr<larder::RedisBackend>> backends_;
    std::unique_ptr<larder::RedisBus> bus_;
};
#endif

// ---- writers that choose their version ------------------------------------------------

/// Write-through and write-behind writes carry their value, and so its version, into the
/// call. Write-behind writers of one row take turns (next): its queue keeps the latest put
/// by arrival, so versions must reach it in the order they were issued (otherwise the lab,
/// not the policy, would reorder them), and every version given out is used up, whether
/// its write is acknowledged or fails (it may still land): the versions of one row's
/// writes rise in the order the writes ran. Write-through writers race (draw), as writers
/// of one row do in production: the row version each
/// returns from its database write is what orders them. Either way the database must end
/// with the newest acknowledged version. The rows can live in memory shared by processes.
class VersionIssuer {
public:
    VersionIssuer(std::size_t keys, VersionRow* shared)
        : owned_(shared ? 0 : keys), rows_(shared ? shared : owned_.data()) {
        if (!shared) init_version_rows(rows_, keys, false);
    }
    VersionIssuer(const VersionIssuer&) = delete;
    VersionIssuer& operator=(const VersionIssuer&) = delete;
    ~VersionIssuer() {
        for (auto& row : owned_) pthread_mutex_destroy(&row.turn);
    }

    class Ticket {
    public:
        explicit Ticket(VersionRow& row) : row_(row) {
            // A writer that died holding the turn left its row consistent: each field
            // changes in one store.
            if (pthread_mutex_lock(&row_.turn) == EOWNERDEAD) pthread_mutex_consistent(&row_.turn);
            version = ++row_.sent;
        }
        Ticket(const Ticket&) = delete;
        Ticket& operator=(const Ticket&) = delete;
        ~Ticket() { pthread_mutex_unlock(&row_.turn); }
        /// The write is an erase.
        void erasing() { row_.erase_sent = version; }
        /// The write was acknowledged: the version is taken.
        void acknowledged() {
            row_.issued = version;
            if (row_.erase_sent == version) row_.erase_acknowledged = version;
        }

    private:
        VersionRow& row_;

    public:
        std::uint64_t version = 0;
    };
    Ticket next(std::size_t k) { return Ticket(rows_[k]); }

    /// A version of row k no other writer has, without taking turns.
    std::uint64_t draw(std::size_t k) {
        return std::atomic_ref<std::uint64_t>(rows_[k].drawn).fetch_add(1) + 1;
    }
    /// A drawn version's write was acknowledged.
    void acknowledged(std::size_t k, std::uint64_t version) {
        std::atomic_ref<std::uint64_t> issued(rows_[k].issued);
        std::uint64_t seen = issued.load();
        while (seen < version && !issued.compare_exchange_weak(seen, version)) {
        }
    }

private:
    std::vector<VersionRow> owned_;
    VersionRow* rows_;
};

// ---- batch reads ------------------------------------------------------------------------

/// The batch loader of a get_many that asked for row rows[j] under cache key names[j]:
/// it answers each key it is given with that row from the database.
inline auto rows_loader(FakeDb& db, std::span<const std::string> names,
                        std::span<const std::size_t> rows) {
    return [&db, names, rows](std::span<const std::string> missed) {
        std::vector<std::optional<std::string>> out;
        out.reserve(missed.size());
        for (const auto& m : missed) {
            const auto at = std::find(names.begin(), names.end(), m) - names.begin();
            out.emplace_back(db.read(rows[static_cast<std::size_t>(at)]));
        }
        return out;
    };
}

/// Runs f on what the application calls: the instance's Near, or its policy without an L1.
template <class In, class F>
decltype(auto) front(In& in, F&& f) {
    return in.near ? f(*in.near) : f(*in.policy);
}

/// get of row k through the instance's front, under `key`.
template <class In>
std::optional<std::string> read_row(In& in, FakeDb& db, const std::string& key, std::size_t k) {
    auto loader = [db = &db, k] { return db->read(k); };
    return in.near ? in.near->get(key, loader) : in.policy->get(key, loader);
}

/// get_many of rows ks (with their tags, if they have any) through the instance's front.
template <class In>
std::vector<std::optional<std::string>> read_rows(
    In& in, FakeDb& db, std::span<const std::string> names, std::span<const std::size_t> ks,
    std::span<const std::vector<std::string>> tags = {}) {
    auto loader = rows_loader(db, names, ks);
    return front(in, [&](auto& cache) { return cache.get_many(names, tags, loader); });
}

/// A cache key per row.
inline std::vector<std::string> key_names(std::span<const std::size_t> ks) {
    std::vector<std::string> out;
    out.reserve(ks.size());
    for (const std::size_t k : ks) out.push_back(key_name(k));
    return out;
}

// ---- the factory table ----------------------------------------------------------------

template <class A>
std::unique_ptr<Subject> make_one(const RunEnv& env, const Spec& spec) {
    return std::make_unique<A>(env, spec);
}

template <template <class, class> class Adapter, class B, std::size_t... I>
std::unique_ptr<Subject> make_with_guard(const RunEnv& env, const Spec& spec,
                                         std::index_sequence<I...>) {
    using Factory = std::unique_ptr<Subject> (*)(const RunEnv&, const Spec&);
    static constexpr std::array<Factory, sizeof...(I)> factories{
        &make_one<Adapter<B, std::tuple_element_t<I, GuardTypes>>>...};
    return factories.at(spec.guard_index())(env, spec);
}

/// Adapter<Backend, Guard> for the run's backend and the spec's guard.
template <template <class, class> class Adapter>
std::unique_ptr<Subject> build_subject(const RunEnv& env, const Spec& spec) {
    constexpr auto guards = std::make_index_sequence<std::tuple_size_v<GuardTypes>>{};
    switch (env.backend) {
        case BackendKind::memory:
            return make_with_guard<Adapter, larder::MemoryBackend>(env, spec, guards);
        case BackendKind::redis:
#if defined(LARDER_LAB_HAVE_REDIS)
            return make_with_guard<Adapter, larder::RedisBackend>(env, spec, guards);
#else
            break;
#endif
    }
    throw UsageError("this larder-lab was built without hiredis: only --backend memory");
}

/// The L1 counters of a Near, or nothing.
template <class NearPtr>
void add_l1(CacheCounts& c, const NearPtr& near) {
    if (!near) return;
    const auto h = near->l1().stats().hits;
    c.hits += h;
    c.l1_hits += h;
}

inline void add_reads(CacheCounts& c, const larder::StatsSnapshot& s) {
    c.hits += s.hits;
    c.misses += s.misses;
    c.backend_errors += s.backend_errors;
}

}  // namespace lab
