// WriteThrough on every backend: the database write, then the cache; racing writers never
// leave the cache older than the database (and the seed's write-through, in the same race,
// does); a reader that loaded before a write cannot cache the old value; row versions
// against a writer that lost its lease; failing database writes, store outages, writers
// that hold a key too long.
#include <larder/backend/chaos.hpp>
#include <larder/codec/json.hpp>
#include <larder/policy/write_through.hpp>
#include <larder/stampede/lock.hpp>

#include <atomic>
#include <map>
#include <mutex>
#include <random>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

#include "support/backends.hpp"
#include "support/fake_db.hpp"

using namespace std::chrono_literals;
using larder::Millis;
using larder::test::Gate;

namespace {

// Rows with a version that grows with every committed write: what `UPDATE ... SET
// version = version + 1 ... RETURNING version` gives.
class VersionedDb {
public:
    std::uint64_t commit(const std::string& key, const std::string& value) {
        std::lock_guard lock(mutex_);
        auto& row = rows_[key];
        row.first = value;
        ++commits_;
        return ++row.second;
    }

    std::optional<std::string> read(const std::string& key) const {
        std::lock_guard lock(mutex_);
        auto it = rows_.find(key);
        if (it == rows_.end()) return std::nullopt;
        return it->second.first;
    }

    int commits() const {
        std::lock_guard lock(mutex_);
        return commits_;
    }

private:
    mutable std::mutex mutex_;
    std::map<std::string, std::pair<std::string, std::uint64_t>> rows_;
    int commits_ = 0;
};

template <class Fixture>
larder::WriteThroughOptions wt_options(Fixture& fx, larder::WriteThroughOptions o = {}) {
    o.cache.clock = fx.time_source();
    return o;
}

// What the cache holds for `key`, decoded: nullopt when nothing (or a lease) is there.
template <class B>
std::optional<std::string> cached_value(B& backend, const std::string& full) {
    const auto stored = backend.get(full);
    if (!stored) return std::nullopt;
    const auto env = larder::envelope::parse(stored->bytes);
    REQUIRE(env);
    if (env->header.kind != larder::EntryKind::value) return std::nullopt;
    return std::string(env->payload);
}

template <class B>
bool holds_lease(B& backend, const std::string& full) {
    const auto stored = backend.get(full);
    if (!stored) return false;
    const auto env = larder::envelope::parse(stored->bytes);
    return env && env->header.kind == larder::EntryKind::lease;
}

struct User {
    int id = 0;
    std::string name;
};
NLOHMANN_DEFINE_TYPE_NON_INTRUSIVE(User, id, name)

}  // namespace

BACKEND_TEST_CASE("put writes the database, then the cache; reads then hit", "[write_through]") {
    TestType fx;
    VersionedDb db;
    larder::WriteThrough<std::string, decltype(fx.backend)> users(
        fx.backend, wt_options(fx, {.cache = {.key_prefix = "user:"}}));
    const std::string full = users.full_key("42");
    bool lease_during_write = false;
    const auto outcome = users.put("42", "Ada", [&] {
        lease_during_write = holds_lease(fx.backend, full);
        db.commit("42", "Ada");
    });
    REQUIRE(outcome == larder::WriteOutcome::cached);
    REQUIRE(lease_during_write);  // while the database changes, nobody can fill the key
    int loads = 0;
    REQUIRE(users.get("42", [&] {
        ++loads;
        return db.read("42");
    }) == "Ada");
    REQUIRE(loads == 0);
    REQUIRE(cached_value(fx.backend, full) == "Ada");
    const auto ttl = fx.backend.get(full)->ttl;
    REQUIRE(ttl);  // an ordinary cache entry, with the read TTL
    REQUIRE(*ttl <= std::chrono::minutes(5));
    const auto s = users.stats();
    REQUIRE(s.puts == 1);
    REQUIRE(s.cached == 1);
    // The write lease is released.
    REQUIRE_FALSE(fx.backend.get(users.keys().sibling("42", "write")));
}

BACKEND_TEST_CASE("Racing writers never leave the cache older than the database",
                  "[write_through][race]") {
    TestType fx;
    for (const bool with_versions : {false, true}) {
        VersionedDb db;
        larder::WriteThrough<std::string, decltype(fx.backend)> cache(
            fx.backend,
            wt_options(fx, {.cache = {.key_prefix = with_versions ? "versioned:" : "plain:"}}));
        constexpr int keys = 3;
        std::atomic<bool> writing{true};
        std::vector<std::thread> threads;
        for (int t = 0; t < 6; ++t) {
            threads.emplace_back([&, t] {
                std::mt19937 rng(static_cast<unsigned>(t * 7919 + with_versions));
                auto jitter = [&] {
                    std::this_thread::sleep_for(
                        std::chrono::microseconds(std::uniform_int_distribution<int>(0, 300)(rng)));
                };
                for (int i = 0; i < 40; ++i) {
                    const std::string key = "k" + std::to_string((t + i) % keys);
                    const std::string value = "t" + std::to_string(t) + "-" + std::to_string(i);
                    if (with_versions) {
                        cache.put(key, value, [&] {
                            jitter();
                            const auto v = db.commit(key, value);
                            jitter();
                            return v;
                        });
                    } else {
                        cache.put(key, value, [&] {
                            jitter();
                            db.commit(key, value);
                            jitter();
                        });
                    }
                }
            });
        }
        // Readers fill misses from the database meanwhile.
        std::vector<std::thread> readers;
        for (int r = 0; r < 2; ++r) {
            readers.emplace_back([&, r] {
                int i = r;
                while (writing.load()) {
                    const std::string key = "k" + std::to_string(i++ % keys);
                    (void)cache.get(key, [&] { return db.read(key); });
                }
            });
        }
        for (auto& t : threads) t.join();
        writing = false;
        for (auto& r : readers) r.join();

        for (int k = 0; k < keys; ++k) {
            const std::string key = "k" + std::to_string(k);
            const auto cached = cached_value(fx.backend, cache.full_key(key));
            INFO("key " << key << (with_versions ? " with row versions" : " without versions"));
            if (cached) REQUIRE(*cached == *db.read(key));
            REQUIRE(cache.get(key, [&] { return db.read(key); }) == db.read(key));
        }
        const auto s = cache.stats();
        WARN((with_versions ? "with" : "without")
             << " row versions: 240 puts, " << s.cached << " cached, " << s.invalidated
             << " invalidated, " << s.kept_newer << " kept a newer value, " << s.lock_waits
             << " waited for another writer");
        REQUIRE(s.puts == 240);
    }
}

BACKEND_TEST_CASE("The textbook write-through leaves the older value cached when two writers race",
                  "[write_through][seed]") {
    TestType fx;
    VersionedDb db;
    // update_user: UPDATE; SELECT; SETEX - here the UPDATE and the SETEX, in two threads.
    Gate w1_committed, w2_done;
    std::thread w1([&] {
        db.commit("k", "v1");
        w1_committed.open();
        w2_done.wait();  // W1 is descheduled between its commit and its SETEX
        fx.backend.set("seed:k", "v1", 1h);
    });
    std::thread w2([&] {
        w1_committed.wait();
        db.commit("k", "v2");
        fx.backend.set("seed:k", "v2", 1h);
        w2_done.open();
    });
    w1.join();
    w2.join();
    REQUIRE(db.read("k") == "v2");
    REQUIRE(fx.backend.get("seed:k")->bytes == "v1");  // stale until the TTL
}

BACKEND_TEST_CASE("WriteThrough orders the same race: the second writer waits for the first",
                  "[write_through][race]") {
    TestType fx;
    VersionedDb db;
    larder::WriteThrough<std::string, decltype(fx.backend)> cache(fx.backend, wt_options(fx));
    std::mutex order_mutex;
    std::vector<std::string> order;
    auto note = [&](std::string what) {
        std::lock_guard lock(order_mutex);
        order.push_back(std::move(what));
    };
    Gate w1_committed;
    std::thread w1([&] {
        cache.put("k", "v1", [&] {
            db.commit("k", "v1");
            w1_committed.open();
            // Descheduled between commit and cache update, as in the seed's race.
            std::this_thread::sleep_for(50ms);
            note("w1 db_write returns");
        });
    });
    std::thread w2([&] {
        w1_committed.wait();
        cache.put("k", "v2", [&] {
            note("w2 db_write starts");
            db.commit("k", "v2");
        });
    });
    w1.join();
    w2.join();
    // W2 waited for W1's write lease, which W1 gives back only after its cache update (a
    // note after W1's put returned would race W2's start: the lease is free by then).
    REQUIRE(order == std::vector<std::string>{"w1 db_write returns", "w2 db_write starts"});
    REQUIRE(cached_value(fx.backend, cache.full_key("k")) == "v2");
    REQUIRE(db.read("k") == "v2");
    REQUIRE(cache.stats().lock_waits == 1);
}

BACKEND_TEST_CASE("A reader that loaded before a put cannot cache the old value",
                  "[write_through]") {
    TestType fx;
    VersionedDb db;
    db.commit("k", "old");
    larder::WriteThrough<std::string, decltype(fx.backend)> cache(fx.backend, wt_options(fx));
    Gate loading, release;
    std::optional<std::string> reader_got;
    std::thread reader([&] {
        reader_got = cache.get("k", [&] {
            auto row = db.read("k");
            loading.open();
            release.wait();
            return row;
        });
    });
    loading.wait();
    REQUIRE(cache.put("k", "new", [&] { db.commit("k", "new"); }) == larder::WriteOutcome::cached);
    release.open();
    reader.join();
    REQUIRE(reader_got == "old");
    REQUIRE(cached_value(fx.backend, cache.full_key("k")) == "new");
    REQUIRE(cache.stats().reads.fills_rejected == 1);
}

BACKEND_TEST_CASE("A database write that throws leaves a miss, and its exception propagates",
                  "[write_through]") {
    TestType fx;
    VersionedDb db;
    larder::WriteThrough<std::string, decltype(fx.backend)> cache(fx.backend, wt_options(fx));
    cache.put("k", "v1", [&] { db.commit("k", "v1"); });
    struct Deadlock : std::runtime_error {
        using std::runtime_error::runtime_error;
    };
    REQUIRE_THROWS_AS(cache.put("k", "v2", [&]() -> void { throw Deadlock("deadlock"); }),
                      Deadlock);
    REQUIRE_FALSE(fx.backend.get(cache.full_key("k")));  // not v1, not v2: a miss
    REQUIRE(cache.get("k", [&] { return db.read("k"); }) == "v1");
    // The write lease was given back: the next writer does not wait.
    cache.put("k", "v3", [&] { db.commit("k", "v3"); });
    REQUIRE(cache.stats().lock_waits == 0);
    REQUIRE(cache.stats().db_failures == 1);
    REQUIRE(cached_value(fx.backend, cache.full_key("k")) == "v3");
}

BACKEND_TEST_CASE("A value the codec cannot encode fails before the database write",
                  "[write_through]") {
    TestType fx;
    larder::WriteThrough<User, decltype(fx.backend)> users(fx.backend, wt_options(fx));
    bool wrote = false;
    REQUIRE_THROWS_AS(users.put("1", User{1, "\xff\xfe"}, [&] { wrote = true; }),
                      larder::CodecError);
    REQUIRE_FALSE(wrote);
    // Nothing of the failed put is left in the cache: the first read loads, the next hits.
    int loads = 0;
    const auto load = [&] {
        ++loads;
        return User{1, "ann"};
    };
    REQUIRE(users.get("1", load).value().name == "ann");
    REQUIRE(users.get("1", load).value().name == "ann");
    REQUIRE(loads == 1);
}

BACKEND_TEST_CASE("With the Lock guard, readers during a write wait for its value",
                  "[write_through][lock]") {
    TestType fx;
    VersionedDb db;
    db.commit("k", "old");
    larder::WriteThrough<std::string, decltype(fx.backend), larder::Lock> cache(
        fx.backend, wt_options(fx), larder::Lock({.max_wait = 10s}));
    (void)cache.get("k", [&] { return db.read("k"); });
    Gate writing, release;
    std::thread writer([&] {
        cache.put("k", "new", [&] {
            writing.open();
            release.wait();
            db.commit("k", "new");
        });
    });
    writing.wait();
    int loads = 0;
    std::optional<std::string> got;
    std::thread reader([&] {
        got = cache.get("k", [&] {
            ++loads;
            return db.read("k");
        });
    });
    std::this_thread::sleep_for(30ms);
    release.open();
    writer.join();
    reader.join();
    REQUIRE(got == "new");  // never the old value it would have found before the write
    REQUIRE(loads == 0);
    REQUIRE(cache.stats().reads.lease_waits == 1);
}

BACKEND_TEST_CASE("Row versions: a writer that lost its lease never replaces a newer value",
                  "[write_through][versions]") {
    TestType fx;
    VersionedDb db;
    larder::WriteThrough<std::string, decltype(fx.backend)> cache(fx.backend, wt_options(fx));
    const std::string full = cache.full_key("k");
    const std::string lock_key = cache.keys().sibling("k", "write");
    // A writer stalls inside its write for longer than its lease: its lease and marker
    // expire (deleted here), and another writer does a whole put meanwhile.
    auto lose_lease_while = [&](auto&& other_writer) {
        fx.backend.del(lock_key);
        fx.backend.del(full);
        other_writer();
    };

    SECTION("the stalled writer committed first: the newer value stays") {
        const auto outcome = cache.put("k", "A", [&] {
            const auto v = db.commit("k", "A");
            lose_lease_while([&] { cache.put("k", "B", [&] { return db.commit("k", "B"); }); });
            return v;
        });
        REQUIRE(outcome == larder::WriteOutcome::kept_newer);
        REQUIRE(cached_value(fx.backend, full) == "B");
        REQUIRE(db.read("k") == "B");
    }
    SECTION("the stalled writer committed last: its value replaces the older one") {
        const auto outcome = cache.put("k", "A", [&] {
            lose_lease_while([&] { cache.put("k", "B", [&] { return db.commit("k", "B"); }); });
            return db.commit("k", "A");
        });
        REQUIRE(outcome == larder::WriteOutcome::cached);
        REQUIRE(cached_value(fx.backend, full) == "A");
        REQUIRE(db.read("k") == "A");
    }
    SECTION("without row versions the stalled writer cannot order them: it leaves a miss") {
        const auto outcome = cache.put("k", "A", [&] {
            db.commit("k", "A");
            lose_lease_while([&] { cache.put("k", "B", [&] { db.commit("k", "B"); }); });
        });
        REQUIRE(outcome == larder::WriteOutcome::invalidated);
        REQUIRE_FALSE(fx.backend.get(full));
        REQUIRE(cache.get("k", [&] { return db.read("k"); }) == "B");
    }
}

// Issue: a db_write that commits and then throws, after the write lease could not be
// taken, must not leave the old value cached (there is no marker to remove: the old value
// itself is deleted, best effort).
BACKEND_TEST_CASE("A write that commits and throws after the lease failed leaves a miss",
                  "[regression][write_through][faults]") {
    TestType fx;
    larder::ChaosBackend chaos(fx.backend);
    VersionedDb db;
    larder::WriteThrough<std::string, decltype(chaos)> cache(
        chaos, wt_options(fx, {.write_lease_ttl = 300ms}));
    const std::string full = cache.full_key("k");
    cache.put("k", "v1", [&] { db.commit("k", "v1"); });
    REQUIRE(fx.backend.get(full));

    chaos.fail_next(1);  // the write lease cannot be taken
    REQUIRE_THROWS_AS(cache.put("k", "v2",
                                [&] {
                                    db.commit("k", "v2");
                                    throw std::runtime_error("committed, then the reply was lost");
                                }),
                      std::runtime_error);
    REQUIRE(db.read("k") == "v2");
    REQUIRE_FALSE(fx.backend.get(full));  // not v1
    REQUIRE(cache.get("k", [&] { return db.read("k"); }) == "v2");
}

BACKEND_TEST_CASE("A store outage never blocks the database write", "[write_through][faults]") {
    TestType fx;
    larder::ChaosBackend chaos(fx.backend);
    VersionedDb db;
    larder::WriteThrough<std::string, decltype(chaos)> cache(
        chaos, wt_options(fx, {.write_lease_ttl = 300ms}));
    const std::string full = cache.full_key("k");
    cache.put("k", "v1", [&] { db.commit("k", "v1"); });

    // The lease cannot be taken: write anyway, then remove the old value.
    chaos.fail_next(1);
    REQUIRE(cache.put("k", "v2", [&] { db.commit("k", "v2"); }) ==
            larder::WriteOutcome::invalidated);
    REQUIRE(db.read("k") == "v2");
    REQUIRE_FALSE(fx.backend.get(full));

    // The store is down for good: the write still happens, and the caller learns that the
    // old value may live on.
    cache.put("k", "v3", [&] { db.commit("k", "v3"); });
    chaos.fail_all(true);
    REQUIRE_THROWS_AS(cache.put("k", "v4", [&] { db.commit("k", "v4"); }), larder::BackendError);
    REQUIRE(db.read("k") == "v4");
    chaos.fail_all(false);

    // The store fails after the write: the writer's marker expires and leaves a miss.
    REQUIRE(cache.put("k", "v5", [&] {
        db.commit("k", "v5");
        chaos.fail_all(true);
    }) == larder::WriteOutcome::cache_unavailable);
    chaos.fail_all(false);
    REQUIRE(holds_lease(fx.backend, full));
    fx.advance(350ms);
    REQUIRE(cache.get("k", [&] { return db.read("k"); }) == "v5");
    REQUIRE(cache.stats().backend_errors >= 3);
}

BACKEND_TEST_CASE("A key held too long by another writer: give up before the database write",
                  "[write_through][lease]") {
    TestType fx;
    VersionedDb db;
    larder::WriteThrough<std::string, decltype(fx.backend)> cache(
        fx.backend, wt_options(fx, {.write_lease_ttl = 300ms, .max_lock_wait = 50ms}));
    const std::string lock_key = cache.keys().sibling("k", "write");
    fx.backend.set(lock_key, "a live writer", 10s);
    bool wrote = false;
    REQUIRE_THROWS_AS(cache.put("k", "v", [&] { wrote = true; }), larder::WriteConflictError);
    REQUIRE_FALSE(wrote);

    // A writer that died holding the lease blocks others until the lease expires.
    larder::WriteThrough<std::string, decltype(fx.backend)> patient(
        fx.backend, wt_options(fx, {.write_lease_ttl = 300ms, .max_lock_wait = 10s}));
    fx.backend.set(lock_key, "a dead writer", 300ms);
    std::thread time_passes([&] {
        std::this_thread::sleep_for(20ms);
        fx.advance(350ms);
    });
    REQUIRE(patient.put("k", "v", [&] { db.commit("k", "v"); }) == larder::WriteOutcome::cached);
    time_passes.join();
    REQUIRE(patient.stats().lock_waits == 1);
}

BACKEND_TEST_CASE("Write-through keys and values are arbitrary bytes", "[write_through]") {
    TestType fx;
    VersionedDb db;
    larder::WriteThrough<std::string, decltype(fx.backend)> cache(fx.backend, wt_options(fx));
    const std::vector<std::string> keys{"with space", "crlf\r\nDEL x", std::string("n\0l", 3), "%s",
                                        "{tag}"};
    for (const auto& k : keys) {
        const std::string value = std::string("\0", 1) + k;
        REQUIRE(cache.put(k, value, [&] { db.commit(k, value); }) == larder::WriteOutcome::cached);
        REQUIRE(cache.get(k, [] { return std::optional<std::string>(); }) == value);
    }
}

TEST_CASE("A write path has one set of cache options, for its puts and its reads alike",
          "[write_through][config]") {
    larder::ManualClock clock;
    larder::MemoryBackend store({.clock = &clock});
    VersionedDb db;
    larder::WriteThrough<std::string, larder::MemoryBackend> cache(
        store, {.cache = {.key_prefix = "a:", .ttl = std::chrono::seconds(5), .clock = &clock}});
    REQUIRE(cache.put("k", "v1", [&] { db.commit("k", "v1"); }) == larder::WriteOutcome::cached);
    // Stored under the one prefix, read back under it.
    REQUIRE(store.get("a:k:k").has_value());  // docs/FORMAT.md, "Keys"
    REQUIRE_FALSE(store.get("k:k").has_value());
    int loads = 0;
    auto load = [&] {
        ++loads;
        return db.read("k");
    };
    REQUIRE(cache.get("k", load) == "v1");
    REQUIRE(loads == 0);
    // The put's freshness is the cache's TTL, on the cache's clock.
    clock.advance(std::chrono::seconds(6));
    REQUIRE(cache.get("k", load) == "v1");
    REQUIRE(loads == 1);
}
