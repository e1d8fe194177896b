// WriteBehindOptions::coalesce = false, on every backend: the batch writer receives every
// version of a key, once, in the order of the puts, one per key per batch - also with two
// flushers on one queue and a dead version in the middle (it holds the later ones back
// until it is redriven or discarded); reads see the latest version; max_pending counts
// versions. Each test shows what the default (coalescing) queue writes instead.
#include <larder/policy/write_behind.hpp>

#include <atomic>
#include <map>
#include <mutex>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include "support/backends.hpp"
#include "support/write_behind.hpp"

#if defined(LARDER_TEST_REDIS_BACKEND)
#include <larder/backend/redis/write_behind_store.hpp>
#endif

using namespace std::chrono_literals;
using larder::test::flush_all;
using larder::test::Log;
using larder::test::manual;

namespace {

using Entry = larder::DirtyEntry<std::string>;

// A history table: every row write, per key, in the order the writer received them.
class History {
public:
    larder::BatchResult write(std::span<const Entry> batch) {
        std::lock_guard lock(mutex_);
        std::set<std::string> keys;
        for (const auto& e : batch) {
            if (!keys.insert(e.key).second) repeated_in_batch_ = true;
            auto& h = rows_[e.key];
            if (!h.empty() && h.back().version >= e.version) out_of_order_ = true;
            h.push_back({e.value, e.version});
        }
        return {};
    }

    std::vector<std::string> values(const std::string& key) const {
        std::lock_guard lock(mutex_);
        std::vector<std::string> out;
        if (auto it = rows_.find(key); it != rows_.end()) {
            for (const auto& r : it->second) out.push_back(r.value);
        }
        return out;
    }

    bool out_of_order() const {
        std::lock_guard lock(mutex_);
        return out_of_order_;
    }
    bool repeated_in_batch() const {
        std::lock_guard lock(mutex_);
        return repeated_in_batch_;
    }

private:
    struct Row {
        std::string value;
        std::uint64_t version;
    };
    mutable std::mutex mutex_;
    std::map<std::string, std::vector<Row>> rows_;
    bool out_of_order_ = false;
    bool repeated_in_batch_ = false;
};

auto writer_for(History& h) {
    return [&h](std::span<const Entry> batch) { return h.write(batch); };
}

std::optional<std::string> no_row() {
    return std::nullopt;
}

}  // namespace

WRITE_BEHIND_TEST_CASE(
    "coalesce = false: every version is written, in order, one per key per batch",
    "[write_behind][order]") {
    TestType fx;
    Log log;
    for (const bool coalesce : {false, true}) {
        History db;
        auto o = manual(fx, log, coalesce ? "coalesced" : "in_order");
        o.coalesce = coalesce;
        larder::WriteBehind<std::string, decltype(fx.backend)> wb(fx.backend, writer_for(db), o);
        for (const char* v : {"a1", "a2", "a3"}) wb.put("a", v);
        wb.put("b", "b1");
        // Reads see the latest version, whatever is queued before it.
        REQUIRE(wb.get("a", no_row) == "a3");
        const auto report = flush_all(wb, fx);
        REQUIRE(wb.queue_stats().pending == 0);
        REQUIRE_FALSE(db.out_of_order());
        REQUIRE_FALSE(db.repeated_in_batch());
        REQUIRE(db.values("b") == std::vector<std::string>{"b1"});
        if (coalesce) {
            REQUIRE(db.values("a") == std::vector<std::string>{"a3"});
        } else {
            REQUIRE(db.values("a") == std::vector<std::string>{"a1", "a2", "a3"});
            REQUIRE(report.batches >= 3);  // one version of a key per batch
            REQUIRE(wb.stats().coalesced == 0);
        }
        REQUIRE(wb.get("a", no_row) == "a3");
    }
}

WRITE_BEHIND_TEST_CASE(
    "coalesce = false: puts during a flush are queued behind the version in flight",
    "[write_behind][order]") {
    TestType fx;
    Log log;
    History db;
    auto o = manual(fx, log);
    o.coalesce = false;
    larder::WriteBehind<std::string, decltype(fx.backend)>* self = nullptr;
    int batches = 0;
    larder::WriteBehind<std::string, decltype(fx.backend)> wb(
        fx.backend,
        [&](std::span<const Entry> batch) {
            // While v1 is being written, two more versions arrive (from this thread: the
            // writer holds no lock of the queue's).
            if (++batches == 1) {
                self->put("k", "v2");
                self->put("k", "v3");
            }
            return db.write(batch);
        },
        o);
    self = &wb;
    wb.put("k", "v1");
    flush_all(wb, fx);
    REQUIRE(db.values("k") == std::vector<std::string>{"v1", "v2", "v3"});
    REQUIRE_FALSE(db.out_of_order());
}

WRITE_BEHIND_TEST_CASE("coalesce = false: a dead version holds back later ones until redriven",
                       "[write_behind][order][retry]") {
    TestType fx;
    Log log;
    History db;
    std::set<std::string> rejected{"a1"};
    auto o = manual(fx, log);
    o.coalesce = false;
    o.retry.max_attempts = 1;
    larder::WriteBehind<std::string, decltype(fx.backend)> wb(
        fx.backend,
        [&](std::span<const Entry> batch) {
            larder::BatchResult r;
            std::vector<Entry> ok;
            for (std::size_t i = 0; i < batch.size(); ++i) {
                if (rejected.contains(batch[i].value)) {
                    r.fail(i, "rejected");
                } else {
                    ok.push_back(batch[i]);
                }
            }
            db.write(ok);
            return r;
        },
        o);
    wb.put("a", "a1");
    wb.put("a", "a2");
    wb.flush();  // a1 dies
    wb.put("a", "a3");
    for (int i = 0; i < 5; ++i) wb.flush();
    // Nothing of a is written past the dead version, and nothing is lost.
    REQUIRE(db.values("a").empty());
    REQUIRE(wb.list_dead().size() == 1);
    REQUIRE(wb.list_dead()[0].value == "a1");
    REQUIRE(wb.queue_stats().pending == 1);
    REQUIRE(wb.get("a", no_row) == "a3");

    rejected.clear();
    REQUIRE(wb.redrive("a") == larder::RedriveResult::requeued);
    flush_all(wb, fx);
    REQUIRE(db.values("a") == std::vector<std::string>{"a1", "a2", "a3"});
    REQUIRE_FALSE(db.out_of_order());
    REQUIRE(wb.list_dead().empty());
    REQUIRE(wb.queue_stats().pending == 0);
}

WRITE_BEHIND_TEST_CASE("coalesce = false: discarding a dead version lets the later ones go on",
                       "[write_behind][order][retry]") {
    TestType fx;
    Log log;
    History db;
    bool reject = true;
    auto o = manual(fx, log);
    o.coalesce = false;
    o.retry.max_attempts = 1;
    larder::WriteBehind<std::string, decltype(fx.backend)> wb(
        fx.backend,
        [&](std::span<const Entry> batch) {
            larder::BatchResult r;
            if (reject) {
                for (std::size_t i = 0; i < batch.size(); ++i) r.fail(i, "rejected");
                return r;
            }
            return db.write(batch);
        },
        o);
    wb.put("a", "a1");
    wb.flush();  // a1 dies with nothing behind it
    REQUIRE(wb.queue_stats().pending == 0);
    // A put after the death is queued behind it, not in place of it.
    wb.put("a", "a2");
    wb.put("a", "a3");
    reject = false;
    for (int i = 0; i < 3; ++i) wb.flush();
    REQUIRE(db.values("a").empty());
    REQUIRE(wb.list_dead().size() == 1);

    REQUIRE(wb.discard_dead("a"));
    flush_all(wb, fx);
    REQUIRE(db.values("a") == std::vector<std::string>{"a2", "a3"});
    REQUIRE(wb.get("a", no_row) == "a3");  // the cached copy of the latest stays
}

WRITE_BEHIND_TEST_CASE("coalesce = false: max_pending counts versions, not keys",
                       "[write_behind][order][backpressure]") {
    TestType fx;
    Log log;
    History db;
    auto o = manual(fx, log);
    o.coalesce = false;
    o.max_pending = 3;
    o.when_full = larder::WhenFull::fail;
    larder::WriteBehind<std::string, decltype(fx.backend)> wb(fx.backend, writer_for(db), o);
    wb.put("k", "v1");
    wb.put("k", "v2");
    wb.put("k", "v3");
    REQUIRE_THROWS_AS(wb.put("k", "v4"), larder::BackpressureError);
    REQUIRE(wb.get("k", no_row) == "v3");  // the refused put left nothing behind
    flush_all(wb, fx);
    REQUIRE(db.values("k") == std::vector<std::string>{"v1", "v2", "v3"});
    wb.put("k", "v4");  // room again
    flush_all(wb, fx);
    REQUIRE(db.values("k").back() == "v4");
}

WRITE_BEHIND_TEST_CASE("coalesce = false: threads putting and two flushers keep every key's order",
                       "[write_behind][order][threads]") {
    TestType fx;
    Log log;
    History db;
    auto o = manual(fx, log);
    o.coalesce = false;
    o.batch_size = 7;
    auto store = std::make_shared<larder::write_behind_store_t<decltype(fx.backend)>>(
        fx.backend, larder::WriteBehindStoreOptions{.name = "shared", .coalesce = false});
    o.name = "shared";
    larder::WriteBehind<std::string, decltype(fx.backend)> a(fx.backend, store, writer_for(db), o);
    larder::WriteBehind<std::string, decltype(fx.backend)> b(fx.backend, store, writer_for(db), o);

    constexpr int writers = 4, keys_per_writer = 5, versions = 40;
    std::atomic<bool> done{false};
    std::vector<std::thread> threads;
    for (int w = 0; w < writers; ++w) {
        threads.emplace_back([&, w] {
            for (int v = 0; v < versions; ++v) {
                for (int k = 0; k < keys_per_writer; ++k) {
                    a.put("w" + std::to_string(w) + "k" + std::to_string(k), std::to_string(v));
                }
            }
        });
    }
    std::thread flusher_a([&] {
        while (!done) a.flush();
    });
    std::thread flusher_b([&] {
        while (!done) b.flush();
    });
    for (auto& t : threads) t.join();
    done = true;
    flusher_a.join();
    flusher_b.join();
    flush_all(a, fx);

    REQUIRE_FALSE(db.out_of_order());
    REQUIRE_FALSE(db.repeated_in_batch());
    std::vector<std::string> all;
    for (int v = 0; v < versions; ++v) all.push_back(std::to_string(v));
    for (int w = 0; w < writers; ++w) {
        for (int k = 0; k < keys_per_writer; ++k) {
            const std::string key = "w" + std::to_string(w) + "k" + std::to_string(k);
            INFO("key " << key);
            REQUIRE(db.values(key) == all);
        }
    }
}
