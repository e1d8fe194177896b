// WriteBehind on every backend: puts and increments acknowledged at once and flushed with
// the latest value of each key; writes that arrive during a flush (with the seed's
// SMEMBERS/DEL flush failing the same scenario); retries, dead letters and re-drives;
// expired claims; backpressure; the final drain; the read path around dirty data; and a
// model-based random test. Multi-process crash tests are in write_behind_crash_test.cpp.
#include <larder/codec/json.hpp>
#include <larder/policy/write_behind.hpp>

#include <array>
#include <atomic>
#include <map>
#include <mutex>
#include <random>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include "support/backends.hpp"
#include "support/eventually.hpp"
#include "support/fake_db.hpp"
#include "support/write_behind.hpp"

#if defined(LARDER_TEST_REDIS_BACKEND)
#include <larder/backend/redis/write_behind_store.hpp>
#endif

using namespace std::chrono_literals;
using larder::Millis;
using larder::test::eventually;
using larder::test::flush_all;
using larder::test::Gate;
using larder::test::Log;
using larder::test::manual;
using larder::test::Table;
using larder::test::writer_for;

namespace {

struct Row {
    std::string text;
    std::int64_t score = 0;
    bool operator==(const Row&) const = default;
};
NLOHMANN_DEFINE_TYPE_NON_INTRUSIVE(Row, text, score)

std::optional<std::string> no_row() {
    return std::nullopt;
}

// The seed's write-behind, transcribed over the same backend:
//   update:  SET key value; SADD dirty id
//   flush:   ids = SMEMBERS dirty; DEL dirty; for id in ids: GET; write to the database
// `while_running` runs where the seed waits for the DEL round trip, with the dirty set
// already read: the moment a concurrent request can slip in.
template <class B>
class SeedWriteBehind {
public:
    using DbWrite = std::function<void(const std::string&, const std::string&)>;
    SeedWriteBehind(B& backend, DbWrite db_write)
        : backend_(backend), db_write_(std::move(db_write)) {}

    void put(const std::string& id, const std::string& value) {
        backend_.set("seed:" + id, value, larder::no_expiry);
        sadd(id);
    }

    void flush(const std::function<void()>& while_running) {
        const std::vector<std::string> ids = smembers();
        if (while_running) while_running();
        del_dirty();
        for (const auto& id : ids) {
            if (auto v = backend_.get("seed:" + id)) db_write_(id, v->bytes);
        }
    }

private:
    static constexpr bool is_redis = requires(B & b) { b.command({"PING"}); };

    void sadd(const std::string& id) {
        if constexpr (is_redis) {
            backend_.command({"SADD", backend_.stored_key("seed:dirty"), id});
        } else {
            std::lock_guard lock(mutex_);
            dirty_.insert(id);
        }
    }
    std::vector<std::string> smembers() {
        if constexpr (is_redis) {
            std::vector<std::string> out;
            for (auto& e :
                 backend_.command({"SMEMBERS", backend_.stored_key("seed:dirty")}).elements) {
                out.push_back(e.str);
            }
            return out;
        } else {
            std::lock_guard lock(mutex_);
            return {dirty_.begin(), dirty_.end()};
        }
    }
    void del_dirty() {
        if constexpr (is_redis) {
            backend_.command({"DEL", backend_.stored_key("seed:dirty")});
        } else {
            std::lock_guard lock(mutex_);
            dirty_.clear();
        }
    }

    B& backend_;
    DbWrite db_write_;
    std::mutex mutex_;
    std::set<std::string> dirty_;
};

// The scenario both flushers face: ten keys are dirty; while the first flush runs, the
// application writes new values to five of them and to five new keys. After one more
// flush the database must hold the latest value of every key. Returns those values.
template <class Put, class Flush>
std::map<std::string, std::string> writes_during_a_flush(Put put, Flush flush) {
    std::map<std::string, std::string> latest;
    auto write = [&](const std::string& key, const std::string& value) {
        put(key, value);
        latest[key] = value;
    };
    for (int i = 0; i < 10; ++i) write("k" + std::to_string(i), "v1");
    flush([&] {
        for (int i = 0; i < 5; ++i) write("k" + std::to_string(i), "v2");
        for (int i = 10; i < 15; ++i) write("k" + std::to_string(i), "v2");
    });
    flush(nullptr);
    return latest;
}

// Batch writers for several flushers that record "<flusher>:<value>" in the order the
// database received them; a writer given a gate waits at it first (a stalled flusher).
class OrderedWrites {
public:
    auto writer(std::string name, Gate* gate = nullptr) {
        return [this, name = std::move(name),
                gate](std::span<const larder::DirtyEntry<std::string>> batch) {
            if (gate) gate->wait();
            std::lock_guard lock(mutex_);
            for (const auto& e : batch) order_.push_back(name + ":" + e.value);
            return larder::BatchResult{};
        };
    }
    std::vector<std::string> order() const {
        std::lock_guard lock(mutex_);
        return order_;
    }

private:
    mutable std::mutex mutex_;
    std::vector<std::string> order_;
};

}  // namespace

WRITE_BEHIND_TEST_CASE("A put is read back at once and flushed once with the latest value",
                       "[write_behind]") {
    TestType fx;
    Log log;
    Table<std::string> db;
    larder::WriteBehind<std::string, decltype(fx.backend)> wb(fx.backend, writer_for(db),
                                                              manual(fx, log));
    REQUIRE(wb.put("a", "1") > 0);
    const auto v2 = wb.put("a", "2");
    const auto v3 = wb.put("a", "3");
    REQUIRE(v3 > v2);
    wb.put("b", "x");

    int loads = 0;
    auto loader = [&] {
        ++loads;
        return std::optional<std::string>("from db");
    };
    REQUIRE(wb.get("a", loader) == "3");
    REQUIRE(wb.get("b", loader) == "x");
    REQUIRE(loads == 0);
    REQUIRE(db.writes() == 0);  // nothing reaches the database before a flush

    auto s = wb.stats();
    auto s_queue = wb.queue_stats();
    REQUIRE(s_queue.pending == 2);
    REQUIRE(s.puts == 4);
    REQUIRE(s.coalesced == 2);  // "1" and "2" were replaced before they were written

    const auto report = wb.flush();
    REQUIRE(report.flushed == 2);
    REQUIRE(report.batches == 1);
    REQUIRE(db.rows() == std::map<std::string, std::string>{{"a", "3"}, {"b", "x"}});
    REQUIRE(db.writes() == 2);
    s = wb.stats();
    s_queue = wb.queue_stats();
    REQUIRE(s_queue.pending == 0);
    REQUIRE(s.flushed == 2);
    REQUIRE(wb.flush().claimed == 0);
    REQUIRE(wb.get("a", loader) == "3");
    REQUIRE(loads == 0);
}

WRITE_BEHIND_TEST_CASE("Dirty data has no TTL; once flushed, its cached copy gets clean_ttl",
                       "[write_behind]") {
    TestType fx;
    Log log;
    Table<std::string> db;
    auto o = manual(fx, log);
    o.clean_ttl = 60s;
    larder::WriteBehind<std::string, decltype(fx.backend)> wb(fx.backend, writer_for(db), o);
    wb.put("k", "v");
    const std::string full = wb.full_key("k");
    auto stored = fx.backend.get(full);
    REQUIRE(stored);
    REQUIRE_FALSE(stored->ttl);
    wb.flush();
    stored = fx.backend.get(full);
    REQUIRE(stored);
    REQUIRE(stored->ttl);
    REQUIRE(stored->ttl->count() > 0);
    REQUIRE(stored->ttl->count() <= 60'000);
}

WRITE_BEHIND_TEST_CASE(
    "An evicted cached copy loses nothing: reads and flushes use the queue's copy",
    "[write_behind]") {
    TestType fx;
    Log log;
    Table<std::string> db;
    db.seed("k", "old row");
    larder::WriteBehind<std::string, decltype(fx.backend)> wb(fx.backend, writer_for(db),
                                                              manual(fx, log));
    wb.put("k", "unflushed");
    REQUIRE(fx.backend.del(wb.full_key("k")));  // as an eviction would
    int loads = 0;
    REQUIRE(wb.get("k", [&] {
        ++loads;
        return db.read("k");
    }) == "unflushed");
    REQUIRE(loads == 0);  // the database's older row was never consulted
    wb.flush();
    REQUIRE(db.read("k") == "unflushed");
}

TEST_CASE("MemoryBackend's SIEVE evicts cached copies, never queued ones",
          "[write_behind][memory]") {
    larder::ManualClock clock;
    larder::MemoryBackend store({.max_entries = 8, .shards = 1, .clock = &clock});
    Log log;
    Table<std::string> db;
    larder::WriteBehindOptions o;
    o.start_flusher = false;
    o.cache.clock = &clock;
    o.cache.log.sink = [&log](larder::LogLevel, std::string_view line) { log.add(line); };
    larder::WriteBehind<std::string, larder::MemoryBackend> wb(store, writer_for(db), o);
    for (int i = 0; i < 100; ++i) wb.put("k" + std::to_string(i), "v" + std::to_string(i));
    REQUIRE(store.evictions() > 0);
    REQUIRE(wb.queue_stats().pending == 100);
    for (int i = 0; i < 100; ++i) {
        REQUIRE(wb.get("k" + std::to_string(i), no_row) == "v" + std::to_string(i));
    }
    wb.flush();
    REQUIRE(db.rows().size() == 100);
    for (int i = 0; i < 100; ++i)
        REQUIRE(db.read("k" + std::to_string(i)) == "v" + std::to_string(i));
}

WRITE_BEHIND_TEST_CASE("A put during a cache-aside load wins over the load's fill",
                       "[write_behind]") {
    TestType fx;
    Log log;
    Table<std::string> db;
    db.seed("k", "old row");
    larder::WriteBehind<std::string, decltype(fx.backend)> wb(fx.backend, writer_for(db),
                                                              manual(fx, log));
    Gate loading, release;
    std::optional<std::string> reader_got;
    std::thread reader([&] {
        reader_got = wb.get("k", [&] {
            loading.open();
            release.wait();
            return db.read("k");
        });
    });
    loading.wait();
    wb.put("k", "new");  // replaces the reader's lease
    release.open();
    reader.join();
    REQUIRE(reader_got == "old row");  // what it loaded, served to that caller only
    REQUIRE(wb.get("k", [&] { return db.read("k"); }) == "new");
    REQUIRE(wb.stats().reads.fills_rejected == 1);
}

WRITE_BEHIND_TEST_CASE(
    "Writes that arrive while a batch is being written are all flushed next time",
    "[write_behind]") {
    TestType fx;
    Log log;
    Table<std::string> db;
    std::function<void()> during_write;
    larder::WriteBehind<std::string, decltype(fx.backend)> wb(
        fx.backend,
        [&](std::span<const larder::DirtyEntry<std::string>> batch) {
            if (during_write) std::exchange(during_write, nullptr)();
            return db.write(batch);
        },
        manual(fx, log));
    const auto latest =
        writes_during_a_flush([&](const std::string& k, const std::string& v) { wb.put(k, v); },
                              [&](std::function<void()> hook) {
                                  during_write = std::move(hook);
                                  wb.flush();
                              });
    REQUIRE(db.rows() == latest);
    REQUIRE(wb.queue_stats().pending == 0);
    REQUIRE(wb.stats().superseded == 5);  // k0..k4: written as v1, acknowledged only as v2
}

WRITE_BEHIND_TEST_CASE("The textbook SMEMBERS/DEL flush loses writes in the same scenario",
                       "[write_behind][seed]") {
    TestType fx;
    Table<std::string> db;
    SeedWriteBehind<decltype(fx.backend)> seed(fx.backend,
                                               [&](const std::string& k, const std::string& v) {
                                                   const larder::DirtyEntry<std::string> e{k, v};
                                                   db.write(std::span(&e, 1));
                                               });
    const auto latest =
        writes_during_a_flush([&](const std::string& k, const std::string& v) { seed.put(k, v); },
                              [&](std::function<void()> hook) { seed.flush(hook); });
    const auto rows = db.rows();
    std::vector<std::string> lost;
    for (const auto& [k, v] : latest) {
        auto it = rows.find(k);
        if (it == rows.end() || it->second != v) lost.push_back(k);
    }
    WARN("the seed's flush lost " << lost.size() << " of " << latest.size()
                                  << " acknowledged writes (ids added between SMEMBERS and DEL)");
    REQUIRE(lost.size() == 5);
    for (int i = 10; i < 15; ++i) {
        REQUIRE(std::find(lost.begin(), lost.end(), "k" + std::to_string(i)) != lost.end());
    }
}

WRITE_BEHIND_TEST_CASE(
    "A writer failing 30% of calls loses nothing; a poison entry is dead-lettered "
    "alone after max_attempts",
    "[write_behind][retry]") {
    TestType fx;
    Log log;
    Table<std::string> db;
    std::mt19937 rng(20240607);
    std::mutex writer_mutex;
    std::map<std::string, std::uint32_t> most_attempts;
    int calls = 0, failed_calls = 0, poison_tries = 0;
    bool poison_fixed = false;
    auto o = manual(fx, log);
    o.batch_size = 16;
    o.retry.max_attempts = 12;
    larder::WriteBehind<std::string, decltype(fx.backend)> wb(
        fx.backend,
        [&](std::span<const larder::DirtyEntry<std::string>> batch) {
            std::lock_guard lock(writer_mutex);
            ++calls;
            for (const auto& e : batch) {
                most_attempts[e.key] = std::max(most_attempts[e.key], e.attempt);
            }
            if (std::uniform_int_distribution<int>(0, 9)(rng) < 3) {
                ++failed_calls;
                throw std::runtime_error("connection reset by the database");
            }
            larder::BatchResult result;
            std::vector<larder::DirtyEntry<std::string>> good;
            for (std::size_t i = 0; i < batch.size(); ++i) {
                if (batch[i].key == "poison" && !poison_fixed) {
                    ++poison_tries;
                    result.fail(i, "CHECK constraint failed: score >= 0");
                } else {
                    good.push_back(batch[i]);
                }
            }
            db.write(good);
            return result;
        },
        o);

    std::map<std::string, std::string> latest;
    for (int i = 0; i < 100; ++i) {
        const std::string k = "k" + std::to_string(i);
        wb.put(k, "a" + std::to_string(i));
        latest[k] = "a" + std::to_string(i);
    }
    wb.put("poison", "-1");
    // Some keys change while the first flushes fail.
    for (int round = 0; round < 3; ++round) {
        wb.flush();
        fx.advance(5ms);
        for (int i = round; i < 100; i += 7) {
            const std::string k = "k" + std::to_string(i);
            latest[k] = "b" + std::to_string(round) + "-" + std::to_string(i);
            wb.put(k, latest[k]);
        }
    }
    const auto report = flush_all(wb, fx);
    (void)report;

    const auto s = wb.stats();
    WARN("writer calls " << calls << ", failed " << failed_calls << "; retried " << s.retried
                         << ", dead-lettered " << s.dead_lettered << "; poison rejected "
                         << poison_tries << " times");
    REQUIRE(failed_calls > 0);
    REQUIRE(s.retried > 0);
    // No loss: every other key holds its latest value.
    const auto rows = db.rows();
    for (const auto& [k, v] : latest) {
        INFO(k);
        REQUIRE(rows.count(k) == 1);
        REQUIRE(rows.at(k) == v);
    }
    // Bounded: nothing was tried more than max_attempts times.
    for (const auto& [k, n] : most_attempts) REQUIRE(n <= 12);
    // The poison entry: rejected max_attempts times (calls that failed as a whole are
    // outages and count for nothing), then parked with its value and the database's message.
    REQUIRE(most_attempts["poison"] == 12);
    REQUIRE(rows.count("poison") == 0);
    REQUIRE(wb.queue_stats().dead == 1);
    REQUIRE(s.dead_lettered == 1);
    const auto dead = wb.list_dead();
    REQUIRE(dead.size() == 1);
    REQUIRE(dead[0].key == "poison");
    REQUIRE(dead[0].value == "-1");
    REQUIRE(dead[0].attempts == 12);
    // The last failure's message: the entry's own, or the whole call's.
    REQUIRE((dead[0].error.find("CHECK constraint") != std::string::npos ||
             dead[0].error.find("connection reset") != std::string::npos));
    REQUIRE(log.contains("dead-lettered 'poison'"));

    // Fixed; re-driven; flushed.
    {
        std::lock_guard lock(writer_mutex);
        poison_fixed = true;
    }
    REQUIRE(wb.redrive("poison") == larder::RedriveResult::requeued);
    REQUIRE(wb.list_dead().empty());
    flush_all(wb, fx);
    REQUIRE(db.read("poison") == "-1");
}

WRITE_BEHIND_TEST_CASE("A put to a dead key replaces the dead entry, and discard drops one",
                       "[write_behind][retry]") {
    TestType fx;
    Log log;
    Table<std::string> db;
    bool reject = true;
    auto o = manual(fx, log);
    o.retry.max_attempts = 1;
    larder::WriteBehind<std::string, decltype(fx.backend)> wb(
        fx.backend,
        [&](std::span<const larder::DirtyEntry<std::string>> batch) {
            larder::BatchResult r;
            if (reject) {
                for (std::size_t i = 0; i < batch.size(); ++i) r.fail(i, "rejected");
                return r;
            }
            return db.write(batch);
        },
        o);
    wb.put("a", "bad a");
    wb.put("b", "bad b");
    wb.flush();
    REQUIRE(wb.list_dead().size() == 2);
    REQUIRE(wb.get("b", no_row) == "bad b");  // acknowledged, still visible until discarded

    reject = false;
    // Written after it died: the newer value replaces the dead one, as it would replace a
    // value still waiting.
    wb.put("a", "good a");
    const auto dead = wb.list_dead();
    REQUIRE(dead.size() == 1);
    REQUIRE(dead[0].key == "b");
    REQUIRE(wb.redrive("a") == larder::RedriveResult::not_found);
    wb.flush();
    REQUIRE(db.read("a") == "good a");

    REQUIRE(wb.discard_dead("b"));
    REQUIRE_FALSE(wb.discard_dead("b"));
    REQUIRE(wb.redrive("b") == larder::RedriveResult::not_found);
    REQUIRE(wb.list_dead().empty());
    // The discarded value is gone from the cache too: reads go back to the database.
    REQUIRE(wb.get("b", [] { return std::optional<std::string>("row b"); }) == "row b");
}

WRITE_BEHIND_TEST_CASE(
    "A value this cache cannot decode is dead-lettered without blocking the batch",
    "[write_behind][retry]") {
    TestType fx;
    Log log;
    Table<std::string> strings;
    Table<Row> rows;
    // Two caches on one queue, one writing strings, one reading rows: the strings are
    // poison for the second.
    larder::WriteBehind<std::string, decltype(fx.backend)> producer(fx.backend, writer_for(strings),
                                                                    manual(fx, log, "shared"));
    larder::WriteBehind<Row, decltype(fx.backend)> consumer(
        fx.backend, producer.shared_store(), writer_for(rows), manual(fx, log, "shared"));
    producer.put("s", "not a row");
    consumer.put("r", Row{"ok", 1});
    consumer.flush();
    REQUIRE(rows.read("r") == Row{"ok", 1});
    const auto dead = consumer.list_dead();
    REQUIRE(dead.size() == 1);
    REQUIRE(dead[0].key == "s");
    REQUIRE_FALSE(dead[0].value);
    REQUIRE(dead[0].error.find("cannot be decoded") != std::string::npos);
}

WRITE_BEHIND_TEST_CASE("Claims of a flusher that died are re-queued when their deadline passes",
                       "[write_behind][claims]") {
    TestType fx;
    Log log;
    Table<std::string> db;
    std::vector<std::uint32_t> attempts_seen;
    auto o = manual(fx, log);
    o.claim_ttl = 300ms;
    larder::WriteBehind<std::string, decltype(fx.backend)> wb(
        fx.backend,
        [&](std::span<const larder::DirtyEntry<std::string>> batch) {
            for (const auto& e : batch) attempts_seen.push_back(e.attempt);
            return db.write(batch);
        },
        o);
    wb.put("a", "1");
    wb.put("b", "2");
    // A flusher claims both and dies before writing.
    const auto claimed = wb.store().claim(10, o.claim_ttl);
    REQUIRE(claimed.entries.size() == 2);
    REQUIRE(wb.flush().claimed == 0);  // claimed by someone else, not yet expired
    REQUIRE(wb.queue_stats().processing == 2);
    fx.advance(350ms);
    const auto report = wb.flush();
    REQUIRE(report.requeued == 2);
    REQUIRE(report.flushed == 2);
    REQUIRE(db.rows() == std::map<std::string, std::string>{{"a", "1"}, {"b", "2"}});
    REQUIRE(attempts_seen == std::vector<std::uint32_t>{2, 2});  // the dead claim counted
    REQUIRE(wb.stats().requeued_claims == 2);
    // The dead flusher wakes up and acknowledges: its claims are gone, nothing changes.
    std::vector<larder::Settlement> late;
    for (const auto& e : claimed.entries) {
        late.push_back({.action = larder::Settlement::ack, .key = e.key, .version = e.version});
    }
    const auto results = wb.store().settle(late, 0ms);
    REQUIRE(results == std::vector<larder::SettleResult>{larder::SettleResult::gone,
                                                         larder::SettleResult::gone});
}

// Before: settle and extend checked only the entry's version. A flusher whose claim had
// expired (it stalled, or Redis paused) could still extend it, and its late
// acknowledgement freed the entry while the flusher that re-claimed it was writing; a
// newer put was then claimed and written by a third, and the second wrote the old value
// last. Claims are now the caller's own: named by a token, and forfeit once expired.
WRITE_BEHIND_TEST_CASE(
    "A claim is its flusher's own: an expired one can be neither extended nor settled",
    "[regression][write_behind][claims]") {
    TestType fx;
    Log log;
    Table<std::string> db;
    auto o = manual(fx, log);
    o.claim_ttl = 300ms;
    larder::WriteBehind<std::string, decltype(fx.backend)> wb(fx.backend, writer_for(db), o);
    auto& store = wb.store();
    const std::string key = wb.full_key("k");
    const std::vector<std::string> keys{key};
    auto ack = [&](std::uint64_t version, std::uint64_t token) {
        const std::vector<larder::Settlement> s{
            {.action = larder::Settlement::ack, .key = key, .version = version, .token = token}};
        return store.settle(s, 0ms).at(0);
    };
    const auto v1 = wb.put("k", "v1");

    const auto f1 = store.claim(10, o.claim_ttl, {.token = 1});  // F1 takes it, then stalls
    REQUIRE(f1.entries.size() == 1);
    REQUIRE(store.extend(keys, o.claim_ttl, 1) == 1);  // while it lasts, it is F1's
    REQUIRE(store.extend(keys, o.claim_ttl, 2) == 0);  // and only F1's
    fx.advance(350ms);
    REQUIRE(store.extend(keys, o.claim_ttl, 1) == 0);  // expired: forfeit

    const auto f2 = store.claim(10, o.claim_ttl, {.token = 2});  // F2 takes it over
    REQUIRE(f2.requeued == 1);
    REQUIRE(f2.entries.size() == 1);
    REQUIRE(ack(v1, 1) == larder::SettleResult::lost);  // F1's late acknowledgement
    REQUIRE(wb.queue_stats().processing == 1);          // F2 still holds it

    const auto v2 = wb.put("k", "v2");                                    // while F2 writes v1
    REQUIRE(store.claim(10, o.claim_ttl, {.token = 3}).entries.empty());  // F3: still F2's
    REQUIRE(ack(v1, 2) == larder::SettleResult::superseded);
    const auto f3 = store.claim(10, o.claim_ttl, {.token = 3});
    REQUIRE(f3.entries.size() == 1);
    REQUIRE(f3.entries[0].version == v2);
    REQUIRE(ack(v2, 3) == larder::SettleResult::done);
    REQUIRE(wb.queue_stats().pending == 0);
}

// The same race through WriteBehind: F1's writer stalls past its claim, F2 writes the key
// again, a newer put comes; the database must end with the newer value.
TEST_CASE("A stalled flusher's late acknowledgement leaves the flusher that took over alone",
          "[regression][write_behind][claims][memory]") {
    larder::test::MemoryFixture fx;
    Log log;
    OrderedWrites db;
    auto o = manual(fx, log);
    o.claim_ttl = 300ms;
    using WB = larder::WriteBehind<std::string, larder::MemoryBackend>;
    Gate f1_gate, f2_gate;
    WB f1(fx.backend, db.writer("f1", &f1_gate), o);
    WB f2(fx.backend, f1.shared_store(), db.writer("f2", &f2_gate), o);
    WB f3(fx.backend, f1.shared_store(), db.writer("f3"), o);
    f1.put("k", "v1");

    std::thread t1([&] { f1.flush(); });
    REQUIRE(larder::test::eventually([&] { return f1.queue_stats().processing == 1; }));
    fx.advance(350ms);  // F1 stalls past its claim
    std::thread t2([&] { f2.flush(); });
    REQUIRE(larder::test::eventually([&] { return f2.stats().requeued_claims == 1; }));
    f1_gate.open();
    t1.join();  // F1 wrote v1 and settled late
    REQUIRE(f1.stats().forfeited == 1);
    f1.put("k", "v2");  // while F2 still writes v1
    REQUIRE(f3.flush().claimed == 0);
    f2_gate.open();
    t2.join();
    REQUIRE(f3.flush().flushed == 1);
    REQUIRE(db.order() == std::vector<std::string>{"f1:v1", "f2:v1", "f3:v2"});
    REQUIRE(f1.queue_stats().pending == 0);
}

WRITE_BEHIND_TEST_CASE("A flusher crashing on the same value every time dead-letters it",
                       "[write_behind][claims]") {
    TestType fx;
    Log log;
    Table<std::string> db;
    auto o = manual(fx, log);
    o.claim_ttl = 100ms;
    o.retry.max_attempts = 3;
    larder::WriteBehind<std::string, decltype(fx.backend)> wb(fx.backend, writer_for(db), o);
    wb.put("kills-the-writer", "x");
    for (int crash = 0; crash < 3; ++crash) {
        // A flusher claims it and dies, three times; each claim re-queues the last one.
        const auto batch = wb.store().claim(1, o.claim_ttl);
        REQUIRE(batch.requeued == (crash == 0 ? 0u : 1u));
        REQUIRE(batch.entries.size() == 1);
        REQUIRE(batch.entries[0].attempts == static_cast<std::uint32_t>(crash));
        fx.advance(150ms);
    }
    wb.put("fine", "y");
    flush_all(wb, fx);
    REQUIRE(db.read("fine") == "y");
    REQUIRE_FALSE(db.read("kills-the-writer"));
    const auto dead = wb.list_dead();
    REQUIRE(dead.size() == 1);
    REQUIRE(dead[0].error.find("claim expired") != std::string::npos);
}

WRITE_BEHIND_TEST_CASE("Backpressure: a bound on dirty keys, failing or blocking with a timeout",
                       "[write_behind][backpressure]") {
    TestType fx;
    Log log;
    Table<std::string> db;
    auto o = manual(fx, log);
    o.max_pending = 3;
    o.when_full = larder::WhenFull::fail;
    {
        larder::WriteBehind<std::string, decltype(fx.backend)> wb(fx.backend, writer_for(db), o);
        wb.put("a", "1");
        wb.put("b", "1");
        wb.put("c", "1");
        REQUIRE_THROWS_AS(wb.put("d", "1"), larder::BackpressureError);
        wb.put("a", "2");  // a dirty key always fits: it adds nothing
        REQUIRE_THROWS_AS(wb.modify(
                              "e", [](std::string& v) { v += "!"; }, no_row),
                          larder::BackpressureError);
        REQUIRE(wb.stats().rejected >= 1);
        wb.flush();
        wb.put("d", "1");
        REQUIRE(wb.get("d", no_row) == "1");
    }
    o.name = "blocking";
    o.when_full = larder::WhenFull::block;
    o.block_timeout = 100ms;
    {
        larder::WriteBehind<std::string, decltype(fx.backend)> wb(fx.backend, writer_for(db), o);
        wb.put("a", "1");
        wb.put("b", "1");
        wb.put("c", "1");
        const auto start = std::chrono::steady_clock::now();
        REQUIRE_THROWS_AS(wb.put("d", "1"), larder::BackpressureError);
        const auto blocked =
            std::chrono::duration_cast<Millis>(std::chrono::steady_clock::now() - start);
        WARN("blocked " << blocked.count() << " ms with block_timeout 100 ms and no flusher");
        wb.flush();
    }
    o.name = "unblocked";
    o.start_flusher = true;
    o.interval = std::chrono::hours(1);  // only a blocked put's nudge makes it flush
    o.block_timeout = 10s;
    {
        larder::WriteBehind<std::string, decltype(fx.backend)> wb(fx.backend, writer_for(db), o);
        wb.put("x", "1");
        wb.put("y", "1");
        wb.put("z", "1");
        wb.put("w", "1");  // blocks until the woken flusher makes room
        REQUIRE(wb.get("w", no_row) == "1");
        REQUIRE(db.read("x") == "1");
    }
    REQUIRE(db.read("w") == "1");  // the drain at destruction
}

WRITE_BEHIND_TEST_CASE("Destruction drains, and reports what it could not flush",
                       "[write_behind][drain]") {
    TestType fx;
    Log log;
    Table<std::string> db;
    auto o = manual(fx, log);
    {
        larder::WriteBehind<std::string, decltype(fx.backend)> wb(fx.backend, writer_for(db), o);
        for (int i = 0; i < 250; ++i) wb.put("k" + std::to_string(i), "v");
    }
    REQUIRE(db.rows().size() == 250);  // no flush() call: the destructor drained
    REQUIRE_FALSE(log.contains("drain incomplete"));

    // A database that is down: the drain gives up at its deadline and says what is left.
    o.drain_timeout = 100ms;
    o.retry.max_attempts = 1000;
    bool down = true;
    auto writer = [&](std::span<const larder::DirtyEntry<std::string>> batch) {
        if (down) throw std::runtime_error("database unavailable");
        return db.write(batch);
    };
    std::shared_ptr<typename larder::WriteBehind<std::string, decltype(fx.backend)>::store_type>
        store;
    {
        larder::WriteBehind<std::string, decltype(fx.backend)> wb(fx.backend, writer, o);
        store = wb.shared_store();
        wb.put("unflushable", "acknowledged");
    }
    INFO(log.all());
    REQUIRE(log.contains("drain incomplete, 1 dirty key(s) not flushed"));
    REQUIRE(log.contains("unflushable"));
    if constexpr (std::is_same_v<decltype(fx.backend), larder::MemoryBackend>) {
        REQUIRE(log.contains("NOT durable"));
    } else {
        REQUIRE(log.contains("stay in the store"));
        store.reset();  // Redis keeps the queue by itself: a new process would find it
    }
    // The next flusher on the same queue writes it.
    down = false;
    larder::WriteBehind<std::string, decltype(fx.backend)> next(fx.backend, store, writer, o);
    flush_all(next, fx);
    REQUIRE(db.read("unflushable") == "acknowledged");
}

WRITE_BEHIND_TEST_CASE("close() reports the drain; a write afterwards throws and is not queued",
                       "[write_behind][drain][regression]") {
    TestType fx;
    Log log;
    Table<std::string> db;
    larder::WriteBehind<std::string, decltype(fx.backend)> wb(fx.backend, writer_for(db),
                                                              manual(fx, log));
    wb.put("a", "1");
    const auto report = wb.close(1s);
    REQUIRE(report.complete);
    REQUIRE(report.flushed.flushed == 1);
    REQUIRE(wb.close(1s).flushed.flushed == 1);  // the one drain's report, again
    // Acknowledging it would promise a flush that no flusher of this object will do (and
    // on the memory store, nobody ever will).
    REQUIRE_THROWS_AS(wb.put("b", "2"), larder::ClosedError);
    REQUIRE_THROWS_AS(wb.modify(
                          "n", [](std::string& v) { v += "x"; }, no_row),
                      larder::ClosedError);
    REQUIRE(wb.queue_stats().pending == 0);
    REQUIRE(wb.flush().claimed == 0);
    REQUIRE_FALSE(db.read("b"));
}

WRITE_BEHIND_TEST_CASE("Closing stops the flusher between batches, not after all of them",
                       "[write_behind][drain]") {
    TestType fx;
    Log log;
    Table<std::string> db;
    std::atomic<int> calls{0};
    auto o = manual(fx, log);
    o.start_flusher = true;
    o.interval = 1ms;
    o.batch_size = 1;
    larder::WriteBehind<std::string, decltype(fx.backend)> wb(
        fx.backend,
        [&](std::span<const larder::DirtyEntry<std::string>> batch) {
            calls.fetch_add(1);
            std::this_thread::sleep_for(20ms);  // a slow database: 40 batches take 0.8 s
            return db.write(batch);
        },
        o);
    for (int i = 0; i < 40; ++i) wb.put("k" + std::to_string(i), "v");
    REQUIRE(eventually([&] { return calls.load() > 0; }));
    const auto report = wb.close(0ms);
    REQUIRE_FALSE(report.complete);
    REQUIRE(report.left.pending > 0);  // the flush in progress did not run to the end
    REQUIRE(calls.load() < 40);
}

WRITE_BEHIND_TEST_CASE(
    "Stats: pending, oldest pending age, flushed, coalesced, retried, dead-lettered",
    "[write_behind][stats]") {
    TestType fx;
    Log log;
    Table<std::string> db;
    auto o = manual(fx, log);
    o.retry.max_attempts = 2;
    larder::WriteBehind<std::string, decltype(fx.backend)> wb(
        fx.backend,
        [&](std::span<const larder::DirtyEntry<std::string>> batch) {
            larder::BatchResult r;
            std::vector<larder::DirtyEntry<std::string>> good;
            for (std::size_t i = 0; i < batch.size(); ++i) {
                if (batch[i].key == "bad") {
                    r.fail(i, "no");
                } else {
                    good.push_back(batch[i]);
                }
            }
            db.write(good);
            return r;
        },
        o);
    REQUIRE(wb.queue_stats().oldest_pending_age == 0ms);
    wb.put("old", "1");
    fx.advance(200ms);
    wb.put("old", "2");
    wb.put("bad", "x");
    auto s = wb.stats();
    auto s_queue = wb.queue_stats();
    REQUIRE(s_queue.pending == 2);
    REQUIRE(s_queue.processing == 0);
    REQUIRE(s.coalesced == 1);
    REQUIRE(s_queue.oldest_pending_age >= 200ms);  // dirty since the first put, not the last
    if constexpr (TestType::manual_time) REQUIRE(s_queue.oldest_pending_age == 200ms);
    wb.flush();
    s = wb.stats();
    s_queue = wb.queue_stats();
    REQUIRE(s.flushed == 1);
    REQUIRE(s.retried == 1);
    REQUIRE(s_queue.pending == 1);
    REQUIRE(s.batches == 1);
    flush_all(wb, fx);
    s = wb.stats();
    s_queue = wb.queue_stats();
    REQUIRE(s.dead_lettered == 1);
    REQUIRE(s_queue.dead == 1);
    REQUIRE(s_queue.pending == 0);
    REQUIRE(s_queue.oldest_pending_age == 0ms);
}

WRITE_BEHIND_TEST_CASE("Oldest pending age counts from the oldest write the database has not seen",
                       "[write_behind][stats]") {
    TestType fx;
    Log log;
    Table<std::string> db;
    std::function<void()> during_write;
    larder::WriteBehind<std::string, decltype(fx.backend)> wb(
        fx.backend,
        [&](std::span<const larder::DirtyEntry<std::string>> batch) {
            if (during_write) std::exchange(during_write, nullptr)();
            return db.write(batch);
        },
        manual(fx, log));
    wb.put("hot", "1");
    fx.advance(300ms);
    // While "1" is written, "2" and "3" arrive: the key stays dirty, but the database is
    // only behind by them once "1" is acknowledged.
    during_write = [&] {
        fx.advance(100ms);
        wb.put("hot", "2");
        wb.put("hot", "3");  // "2" will never be written: coalesced
    };
    wb.flush();
    REQUIRE(db.read("hot") == "1");
    REQUIRE(wb.stats().coalesced == 1);
    const auto age = wb.queue_stats().oldest_pending_age;
    REQUIRE(age < 300ms);
    if constexpr (TestType::manual_time) REQUIRE(age == 0ms);
    fx.advance(50ms);
    REQUIRE(wb.queue_stats().oldest_pending_age >= 50ms);
    wb.flush();
    REQUIRE(db.read("hot") == "3");
    REQUIRE(wb.queue_stats().oldest_pending_age == 0ms);
}

WRITE_BEHIND_TEST_CASE("increment: an update_user_score, atomic across threads",
                       "[write_behind][increment]") {
    TestType fx;
    Log log;
    Table<Row> db;
    for (int u = 0; u < 5; ++u) db.seed("user" + std::to_string(u), Row{"name", 1000});
    larder::WriteBehind<Row, decltype(fx.backend)> scores(fx.backend, writer_for(db),
                                                          manual(fx, log));
    std::atomic<bool> done{false};
    std::thread flusher([&] {
        while (!done.load()) {
            scores.flush();
            std::this_thread::sleep_for(1ms);
        }
    });
    std::vector<std::thread> threads;
    for (int t = 0; t < 4; ++t) {
        threads.emplace_back([&, t] {
            for (int i = 0; i < 100; ++i) {
                const std::string user = "user" + std::to_string((t + i) % 5);
                (void)scores.increment(user, &Row::score, 1 + (i % 3),
                                       [&] { return db.read(user); });
            }
        });
    }
    for (auto& t : threads) t.join();
    done = true;
    flusher.join();
    flush_all(scores, fx);

    std::int64_t total = 0;
    for (int u = 0; u < 5; ++u) {
        const auto row = db.read("user" + std::to_string(u));
        REQUIRE(row);
        REQUIRE(row->text == "name");  // the rest of the row came from the database
        total += row->score - 1000;
    }
    std::int64_t expected = 0;
    for (int t = 0; t < 4; ++t) {
        for (int i = 0; i < 100; ++i) expected += 1 + (i % 3);
    }
    REQUIRE(total == expected);
    const auto s = scores.stats();
    WARN("400 increments: " << db.writes() << " row writes, " << s.coalesced << " coalesced, "
                            << s.conflicts << " compare-and-put retries");
    REQUIRE(s.increments == 400);
}

WRITE_BEHIND_TEST_CASE("increment on integers, on a missing row, and on overflow",
                       "[write_behind][increment]") {
    TestType fx;
    Log log;
    Table<std::int64_t> db;
    db.seed("seeded", 40);
    larder::WriteBehind<std::int64_t, decltype(fx.backend)> counters(fx.backend, writer_for(db),
                                                                     manual(fx, log));
    auto from_db = [&](const std::string& k) { return [&db, k] { return db.read(k); }; };
    REQUIRE(counters.increment("seeded", 2, from_db("seeded")) == 42);
    REQUIRE(counters.increment("fresh", 5, from_db("fresh")) == 5);  // no row: from T{}
    REQUIRE(counters.increment("fresh", -7, from_db("fresh")) == -2);
    counters.put("big", std::numeric_limits<std::int64_t>::max());
    REQUIRE_THROWS_AS(counters.increment("big", 1, from_db("big")), larder::InvalidArgumentError);
    REQUIRE(counters.get("big", from_db("big")) == std::numeric_limits<std::int64_t>::max());
    counters.flush();
    REQUIRE(db.read("seeded") == 42);
    REQUIRE(db.read("fresh") == -2);
}

WRITE_BEHIND_TEST_CASE("The flusher thread writes every interval without flush()",
                       "[write_behind][flusher]") {
    TestType fx;
    Log log;
    Table<std::string> db;
    auto o = manual(fx, log);
    o.start_flusher = true;
    o.interval = 10ms;
    larder::WriteBehind<std::string, decltype(fx.backend)> wb(fx.backend, writer_for(db), o);
    wb.put("k", "v");
    REQUIRE(eventually([&] { return db.read("k") == "v"; }));
    wb.put("k", "w");
    REQUIRE(eventually([&] { return db.read("k") == "w"; }));
}

WRITE_BEHIND_TEST_CASE("Keys and values are arbitrary bytes", "[write_behind]") {
    TestType fx;
    Log log;
    Table<std::string> db;
    larder::WriteBehind<std::string, decltype(fx.backend)> wb(fx.backend, writer_for(db),
                                                              manual(fx, log));
    const std::vector<std::string> keys{
        "with space", "crlf\r\nSET x y", std::string("nul\0byte", 8), "%s%n", "{tag}", "ключ", ""};
    for (const auto& k : keys) wb.put(k, k + std::string("\0value", 6));
    wb.flush();
    REQUIRE(db.rows().size() == keys.size());
    for (const auto& k : keys) REQUIRE(db.read(k) == k + std::string("\0value", 6));
}

WRITE_BEHIND_TEST_CASE("Model-based: random puts, increments, reads and flushes across threads",
                       "[write_behind][model]") {
    TestType fx;
    Log log;
    Table<Row> db;
    constexpr int key_count = 12;
    auto key_of = [](int i) { return "m" + std::to_string(i); };
    for (int i = 0; i < key_count; i += 2) db.seed(key_of(i), Row{"seeded", 100});

    std::map<std::string, Row> model = db.rows();  // what the database must end with
    std::array<std::mutex, key_count> key_locks;   // op + model update, one key at a time
    std::mutex model_mutex;

    std::mt19937 writer_rng(7);
    std::mutex writer_mutex;
    auto o = manual(fx, log);
    o.batch_size = 5;
    o.retry.max_attempts = 1000;
    larder::WriteBehind<Row, decltype(fx.backend)> wb(
        fx.backend,
        [&](std::span<const larder::DirtyEntry<Row>> batch) {
            int pause_us = 0;
            {
                std::lock_guard lock(writer_mutex);
                if (std::uniform_int_distribution<int>(0, 9)(writer_rng) == 0) {
                    throw std::runtime_error("deadlock detected, transaction rolled back");
                }
                pause_us = std::uniform_int_distribution<int>(0, 400)(writer_rng);
            }
            // A database takes a while: writes to the same keys arrive meanwhile.
            std::this_thread::sleep_for(std::chrono::microseconds(pause_us));
            return db.write(batch);
        },
        o);

    std::atomic<int> mismatches{0};
    std::vector<std::thread> threads;
    for (int t = 0; t < 4; ++t) {
        threads.emplace_back([&, t] {
            std::mt19937 rng(1000 + t);
            auto pick = [&](int n) { return std::uniform_int_distribution<int>(0, n - 1)(rng); };
            for (int op = 0; op < 300; ++op) {
                const int k = pick(key_count);
                const std::string key = key_of(k);
                auto from_db = [&db, key] { return db.read(key); };
                switch (pick(10)) {
                    case 0:
                    case 1: {
                        std::lock_guard lock(key_locks[k]);
                        const Row row{"t" + std::to_string(t) + "-" + std::to_string(op), pick(50)};
                        wb.put(key, row);
                        std::lock_guard m(model_mutex);
                        model[key] = row;
                        break;
                    }
                    case 2:
                    case 3:
                    case 4: {
                        std::lock_guard lock(key_locks[k]);
                        const int delta = pick(21) - 10;
                        (void)wb.increment(key, &Row::score, delta, from_db);
                        std::lock_guard m(model_mutex);
                        model[key].score += delta;  // a missing row starts from Row{}
                        break;
                    }
                    case 5:
                    case 6: {
                        std::lock_guard lock(key_locks[k]);
                        const auto got = wb.get(key, from_db);
                        std::lock_guard m(model_mutex);
                        auto it = model.find(key);
                        const std::optional<Row> want =
                            it == model.end() ? std::nullopt : std::optional<Row>(it->second);
                        if (got != want) mismatches.fetch_add(1);
                        break;
                    }
                    case 7: {
                        // The cached copy disappears (eviction); the queue's copy must not.
                        std::lock_guard lock(key_locks[k]);
                        (void)fx.backend.del(wb.full_key(key));
                        break;
                    }
                    default:
                        (void)wb.flush();
                        fx.advance(1ms);
                        break;
                }
            }
        });
    }
    for (auto& t : threads) t.join();
    flush_all(wb, fx);
    REQUIRE(mismatches.load() == 0);
    REQUIRE(db.rows() == model);
    const auto s = wb.stats();
    WARN("model test: " << s.puts << " acknowledged writes, " << s.flushed << " rows flushed, "
                        << s.coalesced << " coalesced, " << s.retried << " retried, "
                        << s.superseded << " superseded, " << s.conflicts << " conflicts");
    REQUIRE(s.dead_lettered == 0);
}

#if defined(LARDER_TEST_REDIS_BACKEND)

TEST_CASE("A slow batch writer keeps its claims: a second flusher never writes the same keys",
          "[write_behind][claims][redis]") {
    larder::test::RedisServer server;
    auto redis = larder::test::make_test_backend(server, {.command_timeout = 2s});
    Log log;
    Table<std::string> db;
    std::atomic<int> writing{0}, overlaps{0};
    auto writer = [&](std::span<const larder::DirtyEntry<std::string>> batch) {
        if (writing.fetch_add(1) > 0) overlaps.fetch_add(1);
        std::this_thread::sleep_for(600ms);  // four claim_ttls
        writing.fetch_sub(1);
        return db.write(batch);
    };
    larder::WriteBehindOptions o;
    o.name = "slow";
    o.start_flusher = false;
    o.claim_ttl = 150ms;
    o.cache.log.sink = [&log](larder::LogLevel, std::string_view line) { log.add(line); };
    larder::WriteBehind<std::string, larder::RedisBackend> slow(redis, writer, o);
    larder::WriteBehind<std::string, larder::RedisBackend> eager(redis, writer, o);
    slow.put("k", "v");
    std::thread t([&] { slow.flush(); });
    REQUIRE(eventually([&] { return writing.load() == 1; }));
    std::size_t stolen = 0;
    while (writing.load() == 1) {
        stolen += eager.flush().claimed;
        std::this_thread::sleep_for(20ms);
    }
    t.join();
    REQUIRE(stolen == 0);
    REQUIRE(overlaps.load() == 0);
    REQUIRE(db.writes() == 1);
    REQUIRE(slow.queue_stats().pending == 0);
}

// Before: a Redis pause longer than claim_ttl expired a healthy flusher's claim while its
// keeper's extension waited; the extension then revived it, or its late acknowledgement
// freed the entry under the flusher that had taken over, and an older value was written
// last. No process stalls here: only the server sleeps.
TEST_CASE("A Redis pause that expires a healthy flusher's claim cannot reorder its writes",
          "[regression][write_behind][claims][redis]") {
    larder::test::RedisServer server;  // DEBUG is enabled for local connections
    auto redis = larder::test::make_test_backend(server, {.command_timeout = 5s});
    OrderedWrites db;
    larder::WriteBehindOptions o;
    o.name = "paused";
    o.start_flusher = false;
    o.claim_ttl = 600ms;
    o.cache.log.level = larder::LogLevel::off;
    using WB = larder::WriteBehind<std::string, larder::RedisBackend>;
    Gate f1_gate, f2_gate;
    WB f1(redis, db.writer("f1", &f1_gate), o);
    WB f2(redis, db.writer("f2", &f2_gate), o);
    WB f3(redis, db.writer("f3"), o);
    f1.put("k", "v1");

    std::thread t1([&] { f1.flush(); });
    REQUIRE(eventually([&] { return f1.queue_stats().processing == 1; }));
    // The server sleeps past the claim; F1's keeper goes on extending, and waits.
    REQUIRE(server.command({"DEBUG", "SLEEP", "1.5"}, 5s) == "OK");
    std::thread t2([&] { f2.flush(); });
    REQUIRE(eventually([&] { return f2.stats().requeued_claims == 1; }));
    f1_gate.open();
    t1.join();
    REQUIRE(f1.stats().forfeited == 1);
    f1.put("k", "v2");  // while F2 still writes v1
    REQUIRE(f3.flush().claimed == 0);
    f2_gate.open();
    t2.join();
    REQUIRE(f3.flush().flushed == 1);
    REQUIRE(db.order() == std::vector<std::string>{"f1:v1", "f2:v1", "f3:v2"});
    REQUIRE(f3.queue_stats().pending == 0);
}

TEST_CASE("An allkeys-* maxmemory-policy is warned about, or refused", "[write_behind][redis]") {
    larder::test::RedisServer server(
        {.extra_args = {"--maxmemory", "64mb", "--maxmemory-policy", "allkeys-lru"}});
    auto redis = larder::test::make_test_backend(server);
    Table<std::string> db;
    Log log;
    larder::WriteBehindOptions o;
    o.start_flusher = false;
    o.cache.log.sink = [&log](larder::LogLevel, std::string_view line) { log.add(line); };
    o.eviction_check = larder::EvictionCheck::warn;  // opt-in: it needs CONFIG GET
    { larder::WriteBehind<std::string, larder::RedisBackend> wb(redis, writer_for(db), o); }
    REQUIRE(log.contains("allkeys-lru"));
    o.eviction_check = larder::EvictionCheck::refuse;
    REQUIRE_THROWS_AS(
        (larder::WriteBehind<std::string, larder::RedisBackend>(redis, writer_for(db), o)),
        larder::ConfigError);
    server.command({"CONFIG", "SET", "maxmemory-policy", "volatile-lru"});
    larder::WriteBehind<std::string, larder::RedisBackend> fine(redis, writer_for(db), o);
    fine.put("k", "v");
}

TEST_CASE("Acknowledged puts survive a redis-server crash with appendfsync always",
          "[write_behind][redis]") {
    larder::test::RedisServer server({.persistence = true});
    Table<std::string> db;
    Log log;
    larder::WriteBehindOptions o;
    o.name = "durable";
    o.start_flusher = false;
    o.drain_timeout = 0ms;  // this process only produces
    o.cache.log.sink = [&log](larder::LogLevel, std::string_view line) { log.add(line); };
    std::map<std::string, std::string> acknowledged;
    {
        auto redis = larder::test::make_test_backend(server);
        larder::WriteBehind<std::string, larder::RedisBackend> producer(redis, writer_for(db), o);
        for (int i = 0; i < 200; ++i) {
            const std::string k = "k" + std::to_string(i % 50);
            producer.put(k, "v" + std::to_string(i));
            acknowledged[k] = "v" + std::to_string(i);
        }
        server.kill();  // SIGKILL: no shutdown save
    }
    server.restart();
    auto redis = larder::test::make_test_backend(server);
    o.drain_timeout = 2s;
    larder::WriteBehind<std::string, larder::RedisBackend> flusher(redis, writer_for(db), o);
    flusher.flush();
    REQUIRE(db.rows() == acknowledged);
}

#endif

WRITE_BEHIND_TEST_CASE(
    "erase queues a delete: the key reads as not found until the writer removes the row",
    "[write_behind][erase]") {
    TestType fx;
    Log log;
    std::mutex rows_mutex;
    std::map<std::string, std::string> rows{{"k", "db"}, {"j", "db"}};
    std::vector<std::string> received;  // "key=value" or "key deleted", in order
    larder::WriteBehind<std::string, decltype(fx.backend)> wb(
        fx.backend,
        [&](std::span<const larder::DirtyEntry<std::string>> batch) {
            std::lock_guard lock(rows_mutex);
            for (const auto& e : batch) {
                if (e.erased) {
                    rows.erase(e.key);
                    received.push_back(e.key + " deleted");
                } else {
                    rows[e.key] = e.value;
                    received.push_back(e.key + "=" + e.value);
                }
            }
            return larder::BatchResult{};
        },
        manual(fx, log));
    auto from_db = [&](const std::string& key) {
        return [&, key]() -> std::optional<std::string> {
            std::lock_guard lock(rows_mutex);
            auto it = rows.find(key);
            if (it == rows.end()) return std::nullopt;
            return it->second;
        };
    };
    REQUIRE(wb.get("k", from_db("k")) == "db");
    const auto v1 = wb.erase("k");
    REQUIRE(wb.get("k", from_db("k")) == std::nullopt);  // the cached tombstone
    REQUIRE(fx.backend.del(wb.full_key("k")));           // evicted: the queue still says so
    REQUIRE(wb.get("k", from_db("k")) == std::nullopt);
    const std::vector<std::string> both{"k", "j"};
    const auto many = wb.get_many(both, [&](std::span<const std::string> keys) {
        std::vector<std::optional<std::string>> out;
        for (const auto& k : keys) out.push_back(from_db(k)());
        return out;
    });
    REQUIRE(many.at(0) == std::nullopt);
    REQUIRE(many.at(1) == "db");
    flush_all(wb, fx);
    REQUIRE(received == std::vector<std::string>{"k deleted"});
    REQUIRE_FALSE(from_db("k")());
    REQUIRE(wb.get("k", from_db("k")) == std::nullopt);

    // Coalesced with puts, latest wins; versions keep growing.
    wb.put("j", "v2");
    const auto v2 = wb.erase("j");
    REQUIRE(v2 > v1);
    wb.erase("k");
    wb.put("k", "back");
    flush_all(wb, fx);
    REQUIRE(received == std::vector<std::string>{"k deleted", "j deleted", "k=back"});
    // A read-modify-write after a delete starts from nothing.
    wb.erase("k");
    REQUIRE(wb.modify(
                "k", [](std::string& v) { v += "x"; }, from_db("k")) == "x");
}
