// WriteBehind around the failures of production: a database that is down for seconds or
// minutes, a shutdown during an outage, dead letters that pile up, an evicted cached copy
// of an unflushed write, versions after the store lost its counter, and a fenced writer
// that refuses a stale row. Each would lose or hide acknowledged writes in a naive
// write-behind (see the [regression] tags); docs/write-paths.md names these tests.
#include <larder/codec/json.hpp>
#include <larder/policy/write_behind.hpp>

#include <algorithm>
#include <atomic>
#include <map>
#include <mutex>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include "support/backends.hpp"
#include "support/eventually.hpp"
#include "support/write_behind.hpp"

#if defined(LARDER_TEST_REDIS_BACKEND)
#include <larder/backend/redis/write_behind_store.hpp>
#endif

using namespace std::chrono_literals;
using larder::Millis;
using larder::test::flush_all;
using larder::test::Log;
using larder::test::manual;
using larder::test::Table;
using larder::test::writer_for;

namespace {

struct Player {
    std::string name;
    std::int64_t score = 0;
    bool operator==(const Player&) const = default;
};
NLOHMANN_DEFINE_TYPE_NON_INTRUSIVE(Player, name, score)

// A batch writer over `table` that throws while `down` is set: the database is unreachable.
// Records the highest attempt number it was ever handed.
template <class V>
struct FlakyDatabase {
    Table<V>& table;
    std::atomic<bool> down{false};
    std::atomic<std::uint32_t> highest_attempt{0};
    std::atomic<int> calls{0};

    auto writer() {
        return [this](std::span<const larder::DirtyEntry<V>> batch) {
            ++calls;
            for (const auto& e : batch) {
                std::uint32_t seen = highest_attempt.load();
                while (e.attempt > seen &&
                       !highest_attempt.compare_exchange_weak(seen, e.attempt)) {
                }
            }
            if (down.load()) throw std::runtime_error("could not connect to the database");
            return table.write(batch);
        };
    }
};

}  // namespace

TEST_CASE("A database outage of 5 s, 30 s or 5 min dead-letters nothing and loses nothing",
          "[write_behind][regression][outage][memory]") {
    // The retry settings that, counting a failed batch as an attempt of each entry,
    // dead-lettered 500 of 500 acknowledged writes 5 s into an outage; no time budget, so
    // only telling an outage from a bad row can save them.
    const Millis outage = GENERATE(Millis{5'000}, Millis{30'000}, Millis{300'000});
    CAPTURE(outage.count());
    larder::test::MemoryFixture fx;
    Log log;
    Table<std::string> table;
    FlakyDatabase<std::string> db{table};
    auto o = manual(fx, log);
    o.retry = {.max_attempts = 5, .budget = 0ms, .first_backoff = 200ms, .max_backoff = 30s};
    larder::WriteBehind<std::string, larder::MemoryBackend> wb(fx.backend, db.writer(), o);

    std::map<std::string, std::string> latest;
    for (int i = 0; i < 500; ++i) {
        const std::string k = "k" + std::to_string(i);
        latest[k] = "v" + std::to_string(i);
        wb.put(k, latest[k]);
    }
    db.down = true;
    const auto start = fx.clock.now();
    int round = 0, puts_during = 0;
    while (fx.clock.now() - start < outage) {
        wb.flush();
        // Writes keep coming during the outage (each gives its key a chance at once).
        if (++round % 8 == 0) {
            ++puts_during;
            const std::string k = "k" + std::to_string(round % 500);
            latest[k] = "w" + std::to_string(round);
            wb.put(k, latest[k]);
        }
        fx.advance(250ms);
    }
    const auto during = wb.stats();
    const auto during_queue = wb.queue_stats();
    REQUIRE(during_queue.dead == 0);
    REQUIRE(during.dead_lettered == 0);
    REQUIRE(during_queue.pending == 500);
    REQUIRE(during.deferred > 0);
    REQUIRE(during.retried == 0);
    // Backing off: each of the queue's 5 batches is tried at most once per half of
    // max_outage_backoff (5 s, half of it jitter), besides a try per put.
    const int calls_during = db.calls.load();
    WARN("outage of " << outage.count() / 1000 << " s: " << calls_during << " batch-writer calls, "
                      << during.deferred << " entries deferred");
    REQUIRE(calls_during <= 40 + puts_during + 5 * static_cast<int>(outage / 2500ms));

    db.down = false;
    // Recovery is noticed within the capped backoff.
    for (int i = 0; i < 40 && wb.queue_stats().pending > 0; ++i) {
        wb.flush();
        fx.advance(250ms);
    }
    const auto after_queue = wb.queue_stats();
    REQUIRE(after_queue.pending == 0);
    REQUIRE(after_queue.dead == 0);
    REQUIRE(db.highest_attempt == 1);  // no entry was charged for the outage
    REQUIRE(table.rows() == latest);
}

#if defined(LARDER_TEST_REDIS_BACKEND)
TEST_CASE("A 4 s database outage on the Redis store dead-letters nothing and loses nothing",
          "[write_behind][regression][outage][redis]") {
    larder::test::RedisFixture fx;
    Log log;
    Table<std::string> table;
    FlakyDatabase<std::string> db{table};
    auto o = manual(fx, log);
    // Two rejections and no budget: a model that charged each failed batch to its entries
    // would dead-letter every one within a second.
    o.retry = {.max_attempts = 2,
               .budget = 0ms,
               .first_backoff = 50ms,
               .max_backoff = 1s,
               .max_outage_backoff = 500ms};
    larder::WriteBehind<std::string, larder::RedisBackend> wb(fx.backend, db.writer(), o);
    std::map<std::string, std::string> latest;
    for (int i = 0; i < 200; ++i) {
        const std::string k = "k" + std::to_string(i);
        latest[k] = "v" + std::to_string(i);
        wb.put(k, latest[k]);
    }
    db.down = true;
    const auto end = std::chrono::steady_clock::now() + 4s;
    while (std::chrono::steady_clock::now() < end) {
        wb.flush();
        std::this_thread::sleep_for(20ms);
    }
    REQUIRE(wb.queue_stats().dead == 0);
    REQUIRE(wb.stats().deferred > 0);
    db.down = false;
    const auto recovered = std::chrono::steady_clock::now() + 10s;
    while (wb.queue_stats().pending > 0 && std::chrono::steady_clock::now() < recovered) {
        wb.flush();
        std::this_thread::sleep_for(20ms);
    }
    REQUIRE(wb.queue_stats().pending == 0);
    REQUIRE(wb.queue_stats().dead == 0);
    REQUIRE(db.highest_attempt == 1);
    REQUIRE(table.rows() == latest);
}
#endif

TEST_CASE("A rejected row is retried for the whole time budget before it is dead-lettered",
          "[write_behind][retry][memory]") {
    larder::test::MemoryFixture fx;
    Log log;
    Table<std::string> table;
    auto o = manual(fx, log);
    o.retry = {.max_attempts = 3, .budget = 10s, .first_backoff = 100ms, .max_backoff = 1s};
    std::atomic<int> rejections{0};
    larder::WriteBehind<std::string, larder::MemoryBackend> wb(
        fx.backend,
        [&](std::span<const larder::DirtyEntry<std::string>> batch) {
            larder::BatchResult r;
            for (std::size_t i = 0; i < batch.size(); ++i) {
                ++rejections;
                r.fail(i, "deadlock detected");
            }
            return r;
        },
        o);
    wb.put("row", "v");
    const auto start = fx.clock.now();
    while (fx.clock.now() - start < 9s) {
        wb.flush();
        fx.advance(100ms);
    }
    // Past max_attempts, inside the budget: still pending.
    REQUIRE(rejections > 3);
    REQUIRE(wb.queue_stats().dead == 0);
    REQUIRE(wb.queue_stats().pending == 1);
    while (fx.clock.now() - start < 12s) {
        wb.flush();
        fx.advance(100ms);
    }
    REQUIRE(wb.queue_stats().dead == 1);
    REQUIRE(wb.queue_stats().pending == 0);
    REQUIRE(wb.list_dead().at(0).error == "deadlock detected");
}

WRITE_BEHIND_TEST_CASE(
    "Dead letters take room under max_pending, stop at max_dead, and are announced",
    "[write_behind][regression][dead_letters]") {
    TestType fx;
    Log log;
    Table<std::string> table;
    std::atomic<bool> reject{true};
    auto o = manual(fx, log);
    o.retry.max_attempts = 1;
    o.max_pending = 4;
    o.max_dead = 2;
    o.when_full = larder::WhenFull::fail;
    std::mutex events_mutex;
    std::vector<larder::DeadLetterEvent> events;
    o.on_dead_letter = [&](const larder::DeadLetterEvent& e) {
        std::lock_guard lock(events_mutex);
        events.push_back(e);
    };
    larder::WriteBehind<std::string, decltype(fx.backend)> wb(
        fx.backend,
        [&](std::span<const larder::DirtyEntry<std::string>> batch) {
            if (!reject) return table.write(batch);
            larder::BatchResult r;
            for (std::size_t i = 0; i < batch.size(); ++i) r.fail(i, "constraint");
            return r;
        },
        o);
    wb.put("a", "1");
    wb.put("b", "2");
    wb.put("c", "3");
    wb.flush();
    const auto s = wb.stats();
    const auto s_queue = wb.queue_stats();
    // Two died; the third found the list full and stayed pending.
    REQUIRE(s_queue.dead == 2);
    REQUIRE(s_queue.pending == 1);
    REQUIRE(s.dead_lettered == 2);
    REQUIRE(s.held == 1);
    {
        std::lock_guard lock(events_mutex);
        REQUIRE(events.size() == 3);
        int full = 0;
        for (const auto& e : events) {
            REQUIRE(e.error == "constraint");
            REQUIRE(e.version > 0);
            full += e.list_full ? 1 : 0;
        }
        REQUIRE(full == 1);
    }
    REQUIRE(log.contains("dead-letter list full"));
    // Three keys are dirty or dead: one more fits, then the dead count against the bound.
    wb.put("d", "4");
    REQUIRE_THROWS_AS(wb.put("e", "5"), larder::BackpressureError);
    // A put to a dead key supersedes it without taking more room than it had.
    reject = false;
    const auto redriven = wb.redrive_all();
    REQUIRE(redriven.requeued == 2);
    flush_all(wb, fx);
    REQUIRE(table.rows() ==
            std::map<std::string, std::string>{{"a", "1"}, {"b", "2"}, {"c", "3"}, {"d", "4"}});
    REQUIRE(wb.queue_stats().dead == 0);
    wb.put("e", "5");  // room again
}

WRITE_BEHIND_TEST_CASE("Dead letters are redriven by key, by the time they died, and all at once",
                       "[write_behind][dead_letters]") {
    TestType fx;
    Log log;
    Table<std::string> table;
    std::atomic<bool> reject{true};
    auto o = manual(fx, log);
    o.retry.max_attempts = 1;
    larder::WriteBehind<std::string, decltype(fx.backend)> wb(
        fx.backend,
        [&](std::span<const larder::DirtyEntry<std::string>> batch) {
            if (!reject) return table.write(batch);
            larder::BatchResult r;
            for (std::size_t i = 0; i < batch.size(); ++i) r.fail(i, "no");
            return r;
        },
        o);
    // Three incidents, 50 ms apart: keys a*, b*, c*.
    for (const char* group : {"a", "b", "c"}) {
        for (int i = 0; i < 3; ++i) wb.put(group + std::to_string(i), group);
        wb.flush();
        fx.advance(50ms);
    }
    auto dead = wb.list_dead();
    REQUIRE(dead.size() == 9);
    auto died = [&](const std::string& key) {
        for (const auto& d : dead) {
            if (d.key == key) return d.dead_at;
        }
        FAIL("no dead entry " << key);
        return larder::TimePoint{};
    };
    REQUIRE(died("a0") < died("b0"));
    REQUIRE(died("b2") < died("c0"));
    reject = false;

    // The b incident only.
    const auto b = wb.redrive_dead_between(died("b0"), died("c0"));
    REQUIRE(b.requeued == 3);
    flush_all(wb, fx);
    REQUIRE(table.rows().size() == 3);
    for (int i = 0; i < 3; ++i) REQUIRE(table.read("b" + std::to_string(i)) == "b");

    // One key.
    REQUIRE(wb.redrive("c1") == larder::RedriveResult::requeued);
    flush_all(wb, fx);
    REQUIRE(table.read("c1") == "c");
    REQUIRE(wb.list_dead().size() == 5);

    // The rest; one of them was written again since it died, which replaced it.
    wb.put("a1", "newer");
    REQUIRE(wb.list_dead().size() == 4);
    const auto rest = wb.redrive_all();
    REQUIRE(rest.requeued == 4);
    REQUIRE(rest.superseded == 0);
    flush_all(wb, fx);
    REQUIRE(wb.list_dead().empty());
    REQUIRE(table.rows().size() == 9);
    REQUIRE(table.read("a1") == "newer");
}

WRITE_BEHIND_TEST_CASE(
    "close() with the database down dead-letters nothing; what is left stays pending and the "
    "next flusher writes it",
    "[write_behind][drain][regression]") {
    TestType fx;
    Log log;
    Table<std::string> table;
    FlakyDatabase<std::string> db{table};
    auto o = manual(fx, log);
    // Settings that dead-lettered the whole queue within a close() of 3 s when every failed
    // batch counted as an attempt.
    o.retry = {.max_attempts = 1,
               .budget = 0ms,
               .first_backoff = 1ms,
               .max_backoff = 4ms,
               .max_outage_backoff = 20ms};
    auto first = std::make_unique<larder::WriteBehind<std::string, decltype(fx.backend)>>(
        fx.backend, db.writer(), o);
    const auto store = first->shared_store();
    std::map<std::string, std::string> latest;
    for (int i = 0; i < 200; ++i) {
        const std::string k = "k" + std::to_string(i);
        latest[k] = "v" + std::to_string(i);
        first->put(k, latest[k]);
    }
    db.down = true;
    const larder::DrainReport report = first->close(300ms);
    REQUIRE_FALSE(report.complete);
    REQUIRE(report.flushed.dead_lettered == 0);
    REQUIRE(report.flushed.deferred > 0);
    REQUIRE(report.left.pending == 200);
    REQUIRE(report.left.dead == 0);
    REQUIRE(report.keys_left.size() == 100);
    REQUIRE(log.contains("not flushed"));
    first.reset();

    // The next flusher on the same queue, once the database is back.
    db.down = false;
    larder::WriteBehind<std::string, decltype(fx.backend)> next(fx.backend, store, db.writer(), o);
    flush_all(next, fx);
    REQUIRE(table.rows() == latest);
    REQUIRE(next.queue_stats().dead == 0);
}

WRITE_BEHIND_TEST_CASE(
    "A write racing close() is either refused or drained, never acknowledged and lost",
    "[write_behind][drain]") {
    TestType fx;
    Log log;
    Table<std::string> table;
    larder::WriteBehind<std::string, decltype(fx.backend)> wb(fx.backend, writer_for(table),
                                                              manual(fx, log));
    std::mutex acked_mutex;
    std::map<std::string, std::string> acked;
    std::atomic<int> refused{0};
    std::atomic<bool> go{false};
    std::vector<std::thread> writers;
    for (int t = 0; t < 4; ++t) {
        writers.emplace_back([&, t] {
            while (!go) std::this_thread::yield();
            for (int i = 0; i < 2000; ++i) {
                const std::string k = "t" + std::to_string(t) + "-" + std::to_string(i);
                try {
                    wb.put(k, "x");
                } catch (const larder::ClosedError&) {
                    ++refused;
                    return;
                }
                std::lock_guard lock(acked_mutex);
                acked[k] = "x";
            }
        });
    }
    go = true;
    std::this_thread::sleep_for(5ms);
    const auto report = wb.close(10s);
    for (auto& w : writers) w.join();
    REQUIRE(report.complete);
    // Every acknowledged write reached the database; none was queued after the drain.
    REQUIRE(table.rows() == acked);
    REQUIRE(wb.queue_stats().pending == 0);
    WARN(acked.size() << " writes acknowledged before close(), " << refused.load()
                      << " writer threads refused after it");
}

namespace {

// Three increments of 10 on a row at 100 are acknowledged (130) and dead-lettered; the
// cached copy is evicted by `evict`; the next increment must build on 130, not on the
// database's 100, and the dead entry it replaces is not replayed by redrive.
template <class B>
void dead_increment_survives_eviction(B& backend, const larder::Clock* clock,
                                      const std::function<bool(const std::string&)>& evict) {
    Log log;
    Table<Player> table;
    table.seed("p", Player{"ann", 100});
    std::atomic<bool> reject{true};
    larder::WriteBehindOptions o;
    o.name = "evict";
    o.cache.key_prefix = "wbe:";
    o.start_flusher = false;
    o.cache.clock = clock;
    o.retry = {.max_attempts = 1, .budget = 0ms, .first_backoff = 1ms, .max_backoff = 4ms};
    o.cache.log.sink = [&log](larder::LogLevel, std::string_view line) { log.add(line); };
    larder::WriteBehind<Player, B> wb(
        backend,
        [&](std::span<const larder::DirtyEntry<Player>> batch) {
            if (!reject) return table.write(batch);
            larder::BatchResult r;
            for (std::size_t i = 0; i < batch.size(); ++i) r.fail(i, "replica read-only");
            return r;
        },
        o);
    auto row = [&] { return table.read("p"); };
    for (int i = 0; i < 3; ++i) REQUIRE(wb.increment("p", &Player::score, 10, row) == 110 + 10 * i);
    wb.flush();
    REQUIRE(wb.queue_stats().dead == 1);
    REQUIRE(table.read("p")->score == 100);

    REQUIRE(evict(wb.full_key("p")));
    // Reads and the next increment start from the dead write, which the database lacks.
    REQUIRE(wb.get("p", row)->score == 130);
    REQUIRE(wb.increment("p", &Player::score, 1, row) == 131);
    REQUIRE(wb.redrive("p") == larder::RedriveResult::not_found);  // replaced by the increment
    reject = false;
    for (int i = 0; i < 50 && wb.queue_stats().pending > 0; ++i) wb.flush();
    REQUIRE(table.read("p")->score == 131);
}

}  // namespace

TEST_CASE("A dead-lettered increment survives MemoryBackend evicting its cached copy",
          "[write_behind][regression][eviction][memory]") {
    larder::ManualClock clock;
    larder::MemoryBackend backend({.max_entries = 8, .shards = 1, .clock = &clock});
    dead_increment_survives_eviction(backend, &clock, [&](const std::string& full) {
        // Real eviction: SIEVE makes room for new entries. The cached copy was read (its
        // visited bit is set), and SIEVE lets a scan of one-hit entries pass it by; entries
        // read once each bring the hand round to it.
        for (int i = 0; i < 100; ++i) {
            const std::string filler = "filler" + std::to_string(i);
            backend.set(filler, std::string(16, 'x'), larder::no_expiry);
            (void)backend.get(filler);
        }
        return !backend.get(full) && backend.evictions() > 0;
    });
}

#if defined(LARDER_TEST_REDIS_BACKEND)
TEST_CASE("A dead-lettered increment survives Redis evicting its cached copy (allkeys-lru)",
          "[write_behind][regression][eviction][redis]") {
    larder::test::RedisServer server(larder::test::RedisServerOptions{
        .extra_args = {"--maxmemory", "4mb", "--maxmemory-policy", "allkeys-lru"}});
    larder::RedisBackend backend = larder::test::make_test_backend(server);
    larder::RedisWriteBehindStore probe(backend, {.name = "evict"});
    dead_increment_survives_eviction(
        backend, &larder::SystemClock::instance(), [&](const std::string& full) {
            const std::string stored = backend.stored_key(full);
            // Real eviction by allkeys-lru, with the keys' ages set so that it is also
            // deterministic: the cached copy idles for 3 s; the filler is restored 1 s idle
            // (RESTORE ... IDLETIME); the queue's keys are used every few fillers, as a live
            // flusher uses them. (The LRU clock counts in seconds.)
            std::this_thread::sleep_for(3100ms);
            server.command({"SET", "filler:template", std::string(4096, 'x')});
            const std::string payload = server.command({"DUMP", "filler:template"});
            server.command({"DEL", "filler:template"});
            for (int i = 0; i < 20'000; ++i) {
                if (i % 32 == 0) {
                    (void)probe.stats();
                    (void)probe.list_dead(10);
                    if (server.command({"EXISTS", stored}) == "0") break;
                }
                server.command(
                    {"RESTORE", "filler:" + std::to_string(i), "0", payload, "IDLETIME", "1"});
            }
            const bool evicted = server.command({"EXISTS", stored}) == "0";
            const auto info = server.command({"INFO", "stats"});
            INFO(info.substr(info.find("evicted_keys")).substr(0, 40));
            // The queue still holds the dead entry (else the test proves nothing).
            REQUIRE(probe.stats().dead == 1);
            return evicted;
        });
}

TEST_CASE("A key's version never goes below its last one, when the store lost its counter",
          "[write_behind][regression][versions][redis]") {
    larder::test::RedisFixture fx;
    Log log;
    Table<std::string> table;
    auto o = manual(fx, log);
    o.retry.max_attempts = 1;
    larder::WriteBehind<std::string, larder::RedisBackend> wb(
        fx.backend,
        [&](std::span<const larder::DirtyEntry<std::string>> b) {
            larder::BatchResult r = table.write_fenced(b);
            for (std::size_t i = 0; i < b.size(); ++i) {
                if (b[i].key == "dead") r.fail(i, "rejected");
            }
            return r;
        },
        o);
    const std::string seq = fx.backend.stored_key(wb.store().queue_key("seq"));
    // A primary whose counter ran far ahead of the clock (its clock was ahead, or many
    // writes) issues the key's version, which is flushed. (Versions stay below 2^53: Lua
    // counts in doubles.)
    const std::uint64_t ahead = 3'000'000'000'000'000ull;
    fx.server().command({"SET", seq, std::to_string(ahead)});
    const std::uint64_t v1 = wb.put("k", "before the failover");
    REQUIRE(v1 > ahead);
    flush_all(wb, fx);
    REQUIRE(table.version_of("k") == v1);
    // The failover lost the counter: the new primary starts low, its clock behind.
    fx.server().command({"SET", seq, "1"});
    const std::uint64_t v2 = wb.put("k", "after the failover");
    REQUIRE(v2 > v1);
    flush_all(wb, fx);
    REQUIRE(table.read("k") == "after the failover");
    REQUIRE(wb.stats().stale == 0);

    // A dead entry's version is a floor too.
    fx.server().command({"SET", seq, std::to_string(ahead * 2)});
    const std::uint64_t v3 = wb.put("dead", "rejected");
    flush_all(wb, fx);
    REQUIRE(wb.queue_stats().dead == 1);
    fx.server().command({"SET", seq, "1"});
    REQUIRE(wb.put("dead", "again") > v3);
}
#endif

TEST_CASE("Versions never go backwards when the clock steps back",
          "[write_behind][versions][memory]") {
    larder::test::MemoryFixture fx;
    Log log;
    Table<std::string> table;
    larder::WriteBehind<std::string, larder::MemoryBackend> wb(
        fx.backend,
        [&](std::span<const larder::DirtyEntry<std::string>> b) { return table.write_fenced(b); },
        manual(fx, log));
    fx.clock.set(larder::TimePoint{std::chrono::hours(24 * 365 * 50)});
    const std::uint64_t v1 = wb.put("k", "1");
    flush_all(wb, fx);
    fx.clock.set(larder::TimePoint{std::chrono::hours(24 * 365 * 40)});  // ten years back
    const std::uint64_t v2 = wb.put("k", "2");
    REQUIRE(v2 > v1);
    flush_all(wb, fx);
    REQUIRE(table.read("k") == "2");
}

WRITE_BEHIND_TEST_CASE(
    "A fenced writer's stale refusal is dead-lettered and counted, never flushed",
    "[write_behind][regression][versions]") {
    TestType fx;
    Log log;
    Table<std::string> table;
    // A row written by another path with a version above anything this queue issued.
    table.seed("k", "newer, from elsewhere", std::numeric_limits<std::uint64_t>::max());
    auto o = manual(fx, log);
    std::vector<larder::DeadLetterEvent> events;
    o.on_dead_letter = [&](const larder::DeadLetterEvent& e) { events.push_back(e); };
    larder::WriteBehind<std::string, decltype(fx.backend)> wb(
        fx.backend,
        [&](std::span<const larder::DirtyEntry<std::string>> b) { return table.write_fenced(b); },
        o);
    wb.put("k", "acknowledged");
    wb.put("fine", "ok");
    const auto report = wb.flush();
    REQUIRE(report.flushed == 1);
    REQUIRE(report.stale == 1);
    REQUIRE(report.retried == 0);
    const auto s = wb.stats();
    const auto s_queue = wb.queue_stats();
    REQUIRE(s.stale == 1);
    REQUIRE(s.flushed == 1);
    REQUIRE(s_queue.dead == 1);
    REQUIRE(events.size() == 1);
    REQUIRE(events[0].key == "k");
    REQUIRE(events[0].error.find("refused as stale") != std::string::npos);
    REQUIRE(wb.list_dead().at(0).value == "acknowledged");
    REQUIRE(table.read("k") == "newer, from elsewhere");
}

// ---- where two of the above meet (each found by review, each failed before its fix) -----

namespace {

struct Counter {
    std::int64_t n = 0;
    bool operator==(const Counter&) const = default;
};
NLOHMANN_DEFINE_TYPE_NON_INTRUSIVE(Counter, n)

// Rejects (BatchResult::fail) every row whose key is in `bad`; writes the rest.
template <class V>
auto rejecting(Table<V>& table, std::vector<std::string> bad) {
    return [&table, bad](std::span<const larder::DirtyEntry<V>> batch) {
        larder::BatchResult r;
        std::vector<larder::DirtyEntry<V>> ok;
        for (std::size_t i = 0; i < batch.size(); ++i) {
            if (std::find(bad.begin(), bad.end(), batch[i].key) != bad.end()) {
                r.fail(i, "rejected");
            } else {
                ok.push_back(batch[i]);
            }
        }
        (void)table.write(ok);
        return r;
    };
}

}  // namespace

WRITE_BEHIND_TEST_CASE(
    "discard_dead drops a dead value a read cached again, so it is never written",
    "[write_behind][regression][dead_letters]") {
    TestType fx;
    Log log;
    Table<Counter> table;
    table.seed("k", Counter{0});
    std::atomic<bool> reject{true};
    auto o = manual(fx, log);
    o.retry.max_attempts = 1;
    larder::WriteBehind<Counter, decltype(fx.backend)> wb(
        fx.backend,
        [&](std::span<const larder::DirtyEntry<Counter>> batch) {
            if (!reject) return table.write(batch);
            larder::BatchResult r;
            for (std::size_t i = 0; i < batch.size(); ++i) r.fail(i, "rejected");
            return r;
        },
        o);
    auto row = [&] { return table.read("k"); };
    wb.put("k", Counter{100});
    wb.flush();
    REQUIRE(wb.queue_stats().dead == 1);
    REQUIRE(fx.backend.del(wb.full_key("k")));  // the cached copy is evicted
    REQUIRE(wb.get("k", row)->n == 100);        // served from the dead entry, and cached again
    REQUIRE(wb.discard_dead("k"));
    REQUIRE(wb.get("k", row)->n == 0);  // the database's row
    REQUIRE(wb.increment("k", &Counter::n, 1, row) == 1);
    reject = false;
    flush_all(wb, fx);
    REQUIRE(table.read("k")->n == 1);
}

WRITE_BEHIND_TEST_CASE(
    "A put to a dead key takes its place under max_pending; nothing stale holds room",
    "[write_behind][regression][dead_letters]") {
    TestType fx;
    Log log;
    Table<std::string> table;
    std::atomic<bool> reject{true};
    auto o = manual(fx, log);
    o.retry.max_attempts = 1;
    o.max_pending = 2;
    o.when_full = larder::WhenFull::fail;
    larder::WriteBehind<std::string, decltype(fx.backend)> wb(
        fx.backend,
        [&](std::span<const larder::DirtyEntry<std::string>> batch) {
            if (!reject) return table.write(batch);
            larder::BatchResult r;
            for (std::size_t i = 0; i < batch.size(); ++i) r.fail(i, "rejected");
            return r;
        },
        o);
    wb.put("a", "x");
    wb.put("b", "y");
    wb.flush();
    REQUIRE(wb.queue_stats().dead == 2);
    // Full of dead entries, yet the application can still overwrite a bad value.
    REQUIRE_THROWS_AS(wb.put("c", "z"), larder::BackpressureError);
    wb.put("a", "x2");
    REQUIRE(wb.queue_stats().dead == 1);
    reject = false;
    flush_all(wb, fx);
    REQUIRE(table.read("a") == "x2");
    // a is clean again and b still dead: one slot is free.
    wb.put("c", "z");
    REQUIRE_THROWS_AS(wb.put("d", "w"), larder::BackpressureError);
}

TEST_CASE(
    "An entry whose claims keep expiring is held, counted and announced when the list is full",
    "[write_behind][regression][dead_letters][memory]") {
    larder::test::MemoryFixture fx;
    Log log;
    Table<std::string> table;
    auto o = manual(fx, log);
    o.max_dead = 1;
    o.retry.max_attempts = 2;
    std::vector<larder::DeadLetterEvent> events;
    o.on_dead_letter = [&](const larder::DeadLetterEvent& e) { events.push_back(e); };
    larder::WriteBehind<std::string, larder::MemoryBackend> wb(fx.backend, rejecting(table, {"a"}),
                                                               o);
    wb.put("a", "x");
    flush_all(wb, fx);
    REQUIRE(wb.queue_stats().dead == 1);  // the list is full
    events.clear();
    wb.put("b", "y");
    // Two flushers die holding b.
    auto& store = wb.store();
    REQUIRE(store.claim(10, 5ms, larder::ClaimOptions{.token = 11}).entries.size() == 1);
    fx.advance(10ms);
    REQUIRE(store.claim(10, 5ms, larder::ClaimOptions{.token = 13}).entries.size() == 1);
    fx.advance(10ms);
    const auto report = wb.flush();
    REQUIRE(report.held == 1);
    REQUIRE(wb.stats().held == 1);
    REQUIRE(events.size() == 1);
    REQUIRE(events[0].key == "b");
    REQUIRE(events[0].list_full);
}

WRITE_BEHIND_TEST_CASE("An expired claim cannot dead-letter a rejected row before its time budget",
                       "[write_behind][regression][retry]") {
    TestType fx;
    Log log;
    Table<std::string> table;
    auto o = manual(fx, log);
    o.retry.max_attempts = 2;
    o.retry.budget = std::chrono::hours(1);
    larder::WriteBehind<std::string, decltype(fx.backend)> wb(fx.backend, rejecting(table, {"a"}),
                                                              o);
    wb.put("a", "x");
    REQUIRE(wb.flush().retried == 1);  // rejected once
    fx.advance(10ms);
    // A flusher takes it and dies.
    REQUIRE(wb.store().claim(10, 5ms, larder::ClaimOptions{.token = 99}).entries.size() == 1);
    fx.advance(20ms);
    (void)wb.flush();
    REQUIRE(wb.queue_stats().dead == 0);
    REQUIRE(wb.queue_stats().pending == 1);
}

TEST_CASE("A close() racing another close() waits for the one drain and reports it",
          "[write_behind][regression][drain][memory]") {
    larder::test::MemoryFixture fx;
    Log log;
    auto o = manual(fx, log);
    larder::WriteBehind<std::string, larder::MemoryBackend> wb(
        fx.backend,
        [&](std::span<const larder::DirtyEntry<std::string>>) -> larder::BatchResult {
            throw std::runtime_error("database down");
        },
        o);
    wb.put("a", "x");
    wb.put("b", "y");
    larder::DrainReport first;
    std::thread t([&] { first = wb.close(300ms); });
    // The first drain is under way once the writer was called.
    REQUIRE(larder::test::eventually([&] { return wb.stats().failed_batches > 0; }));
    const auto second = wb.close(1s);
    t.join();
    REQUIRE_FALSE(first.complete);
    REQUIRE_FALSE(second.complete);
    REQUIRE(second.left.pending == 2);
}

TEST_CASE("The memory store keeps flushing when the clock steps back",
          "[write_behind][regression][memory]") {
    larder::test::MemoryFixture fx;
    Log log;
    Table<std::string> table;
    larder::WriteBehind<std::string, larder::MemoryBackend> wb(fx.backend, writer_for(table),
                                                               manual(fx, log));
    wb.put("a", "x");
    fx.clock.set(fx.clock.now() - std::chrono::hours(1));  // an NTP step back
    wb.put("b", "y");
    const auto report = wb.close(1s);
    REQUIRE(report.complete);
    REQUIRE(table.rows() == std::map<std::string, std::string>{{"a", "x"}, {"b", "y"}});
}

#if defined(LARDER_TEST_REDIS_BACKEND)
TEST_CASE("The retry budget is measured on Redis's clock, not on a cache host's that disagrees",
          "[write_behind][regression][retry][redis]") {
    larder::test::RedisFixture fx;
    Log log;
    Table<std::string> table;
    for (const auto skew : {std::chrono::minutes(2), -std::chrono::minutes(2)}) {
        larder::ManualClock skewed(larder::SystemClock::instance().now() + skew);
        auto o = manual(fx, log, "skew");
        o.cache.clock = &skewed;
        o.retry.max_attempts = 1;
        o.retry.budget = std::chrono::minutes(1);
        larder::WriteBehind<std::string, larder::RedisBackend> wb(fx.backend,
                                                                  rejecting(table, {"a"}), o);
        wb.put("a", "x");
        (void)wb.flush();
        // Rejected 1 ms after its write: inside the budget whatever this host's clock says.
        REQUIRE(wb.list_dead().empty());
        REQUIRE(wb.queue_stats().pending == 1);
        REQUIRE(wb.discard_dead("a") == false);
        wb.close(0ms);
        fx.server().command({"FLUSHALL"});
    }
}

TEST_CASE("A version that would pass 2^53 is refused, not repeated",
          "[write_behind][regression][versions][redis]") {
    larder::test::RedisFixture fx;
    Log log;
    Table<std::string> table;
    larder::WriteBehind<std::string, larder::RedisBackend> wb(fx.backend, writer_for(table),
                                                              manual(fx, log));
    const std::string versions = fx.backend.stored_key(wb.store().queue_key("versions"));
    fx.server().command({"HSET", versions, wb.full_key("k"), "9007199254740990"});
    REQUIRE_THROWS_AS(wb.put("k", "a"), larder::BackendError);
    REQUIRE(wb.queue_stats().pending == 0);  // nothing acknowledged, nothing queued
    // The shared counter was not lifted to the refused version: other keys go on.
    REQUIRE(wb.put("other", "b") < 9'000'000'000'000'000);
    REQUIRE(wb.queue_stats().pending == 1);
}
#endif

#if defined(LARDER_TEST_REDIS_BACKEND)
TEST_CASE("Concurrent puts share a script call, and one that fails there fails alone",
          "[write_behind][redis][group_commit]") {
    larder::test::RedisFixture fx;
    Log log;
    Table<std::string> table;
    larder::WriteBehind<std::string, larder::RedisBackend> wb(fx.backend, writer_for(table),
                                                              manual(fx, log));
    const std::string versions = fx.backend.stored_key(wb.store().queue_key("versions"));
    fx.server().command({"HSET", versions, wb.full_key("k"), "9007199254740990"});
    wb.put("warm", "up");  // the script is loaded
    fx.server().command({"CONFIG", "RESETSTAT"});

    // The server holds every write for a while: two puts leave at once (two batches may be
    // on their way), and the six that come meanwhile wait for them, then go together.
    fx.server().command({"CLIENT", "PAUSE", "600", "WRITE"});
    std::vector<std::string> keys{"a", "b", "c", "d", "e", "k", "f", "g"};
    std::vector<std::uint64_t> version(keys.size(), 0);
    std::vector<std::string> error(keys.size());
    std::vector<std::thread> threads;
    auto start = [&](std::size_t i) {
        threads.emplace_back([&, i] {
            try {
                version[i] = wb.put(keys[i], "value of " + keys[i]);
            } catch (const larder::BackendError& e) {
                error[i] = e.what();
            }
        });
    };
    start(0);
    start(1);
    std::this_thread::sleep_for(100ms);
    for (std::size_t i = 2; i < keys.size(); ++i) start(i);
    for (auto& t : threads) t.join();

    const std::string stats = fx.server().command({"INFO", "commandstats"});
    const auto at = stats.find("cmdstat_evalsha:calls=");
    REQUIRE(at != std::string::npos);
    const int calls = std::stoi(stats.substr(at + std::string("cmdstat_evalsha:calls=").size()));
    INFO("script calls for " << keys.size() << " puts: " << calls);
    REQUIRE(calls <= 4);

    // "k" would pass 2^53: it alone is refused; the puts it travelled with are acknowledged.
    std::set<std::uint64_t> distinct;
    for (std::size_t i = 0; i < keys.size(); ++i) {
        INFO("key " << keys[i] << ": " << error[i]);
        if (keys[i] == "k") {
            REQUIRE(error[i].find("versions exhausted") != std::string::npos);
            continue;
        }
        REQUIRE(error[i].empty());
        REQUIRE(version[i] > 0);
        distinct.insert(version[i]);
        REQUIRE(wb.get(keys[i], [] { return std::optional<std::string>(); }) ==
                "value of " + keys[i]);
    }
    REQUIRE(distinct.size() == keys.size() - 1);
    flush_all(wb, fx);
    REQUIRE(table.rows().size() == keys.size());  // the seven and "warm"
    REQUIRE_FALSE(table.read("k"));
}
#endif
