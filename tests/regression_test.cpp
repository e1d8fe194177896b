// Regression tests for reported bugs. Each test describes the fixed behaviour and failed
// on the code it was written against (85247f7), except d (3), a guard for the fix of
// d (1)/(4) (see its comment); the letter in the comment above each test names the case.
//
// Interleavings are forced with gates, blocking loaders and a pausing backend decorator
// (Tap, below), never with sleeps; waits are bounded with `eventually`.
#include <larder/backend/chaos.hpp>
#include <larder/larder.hpp>
#if defined(LARDER_TEST_HAVE_JSON)
#include <larder/codec/json.hpp>
#endif

#include <sys/types.h>
#include <sys/wait.h>
#include <unistd.h>

#include <array>
#include <atomic>
#include <cstdint>
#include <limits>
#include <map>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <thread>
#include <unordered_set>
#include <vector>

#include "support/backends.hpp"
#include "support/eventually.hpp"
#include "support/fake_db.hpp"

using namespace std::chrono_literals;
using larder::Millis;
using larder::test::eventually;
using larder::test::FakeDb;
using larder::test::Gate;
using larder::test::options_for;

namespace {

// ---------------------------------------------------------------------------------------
// Tap: a backend decorator for forcing interleavings. It counts calls, fails the next n
// calls of one operation, and can park the first get() that returns a value (not a lease)
// until the test resumes it - "this poll has read the value and not returned yet".
// It has no get_value, so a cache on it always reads with get().
// ---------------------------------------------------------------------------------------
enum class Op : std::size_t {
    get,
    get_many,
    set,
    set_if_absent,
    compare_and_set,
    compare_and_delete,
    compare_and_expire,
    del,
    increment,
    count_
};

template <larder::Backend Inner>
class Tap {
public:
    explicit Tap(Inner& inner) : inner_(inner) {}

    /// The next `n` calls of `op` throw BackendError.
    void fail_next(Op op, int n = 1) { failures_[index(op)].store(n); }
    [[nodiscard]] int injected() const { return injected_.load(); }
    [[nodiscard]] std::uint64_t calls(Op op) const { return calls_[index(op)].load(); }

    /// The next get() that reads a value parks until resume() (once).
    void pause_on_value_read() { pause_armed_.store(true); }
    [[nodiscard]] bool paused() const { return paused_.load(); }
    void resume() { resume_.open(); }

    /// The next compare_and_set finds its key gone, as when the store expires the key
    /// between a reader's read and its compare-and-set (once).
    void expire_before_next_compare_and_set() { expire_armed_.store(true); }

    std::optional<larder::StoredValue> get(std::string_view key) {
        before(Op::get);
        auto v = inner_.get(key);
        if (v && pause_armed_.load()) {
            const auto env = larder::envelope::parse(v->bytes);
            if (env && env->header.kind == larder::EntryKind::value &&
                pause_armed_.exchange(false)) {
                paused_.store(true);
                resume_.wait();
            }
        }
        return v;
    }
    std::vector<std::optional<larder::StoredValue>> get_many(std::span<const std::string> keys) {
        before(Op::get_many);
        return inner_.get_many(keys);
    }
    void set(std::string_view key, std::string_view value, Millis ttl) {
        before(Op::set);
        inner_.set(key, value, ttl);
    }
    bool set_if_absent(std::string_view key, std::string_view value, Millis ttl) {
        before(Op::set_if_absent);
        return inner_.set_if_absent(key, value, ttl);
    }
    bool compare_and_set(std::string_view key, std::string_view expected, std::string_view value,
                         Millis ttl) {
        before(Op::compare_and_set);
        if (expire_armed_.exchange(false)) (void)inner_.del(key);
        return inner_.compare_and_set(key, expected, value, ttl);
    }
    bool compare_and_delete(std::string_view key, std::string_view expected) {
        before(Op::compare_and_delete);
        return inner_.compare_and_delete(key, expected);
    }
    bool compare_and_expire(std::string_view key, std::string_view expected, Millis ttl) {
        before(Op::compare_and_expire);
        return inner_.compare_and_expire(key, expected, ttl);
    }
    bool del(std::string_view key) {
        before(Op::del);
        return inner_.del(key);
    }
    std::int64_t increment(std::string_view key, std::int64_t delta) {
        before(Op::increment);
        return inner_.increment(key, delta);
    }

private:
    static constexpr std::size_t index(Op op) { return static_cast<std::size_t>(op); }

    void before(Op op) {
        calls_[index(op)].fetch_add(1);
        auto& left = failures_[index(op)];
        for (int n = left.load(); n > 0;) {
            if (left.compare_exchange_weak(n, n - 1)) {
                injected_.fetch_add(1);
                throw larder::BackendError("tap: injected failure");
            }
        }
    }

    Inner& inner_;
    std::array<std::atomic<std::uint64_t>, static_cast<std::size_t>(Op::count_)> calls_{};
    std::array<std::atomic<int>, static_cast<std::size_t>(Op::count_)> failures_{};
    std::atomic<int> injected_{0};
    std::atomic<bool> pause_armed_{false};
    std::atomic<bool> expire_armed_{false};
    std::atomic<bool> paused_{false};
    Gate resume_;
};

static_assert(larder::Backend<Tap<larder::MemoryBackend>>);

template <class B>
bool holds_lease(B& backend, std::string_view key) {
    const auto stored = backend.get(key);
    if (!stored) return false;
    const auto env = larder::envelope::parse(stored->bytes);
    return env && env->header.kind == larder::EntryKind::lease;
}

// A loader that counts its calls and returns "v<call>".
struct Counting {
    std::atomic<int> calls{0};
    auto loader() {
        return [this] { return std::optional<std::string>("v" + std::to_string(++calls)); };
    }
};

// For failure messages about values that may be kilobytes of garbage.
std::string describe(const std::optional<std::string>& v) {
    if (!v) return "nullopt";
    if (v->size() <= 40) return "\"" + *v + "\"";
    return std::to_string(v->size()) + " bytes";
}

// Redis Cluster's key slot, written from the cluster spec (not from larder::keys): CRC16
// (XMODEM) of the hash tag - the part between the first '{' and the first '}' after it,
// when that part is not empty - or of the whole key, modulo 16384.
std::uint16_t crc16_xmodem(std::string_view s) {
    std::uint16_t crc = 0;
    for (const unsigned char c : s) {
        crc = static_cast<std::uint16_t>(crc ^ (c << 8));
        for (int i = 0; i < 8; ++i) {
            crc = (crc & 0x8000) ? static_cast<std::uint16_t>((crc << 1) ^ 0x1021)
                                 : static_cast<std::uint16_t>(crc << 1);
        }
    }
    return crc;
}

int cluster_slot(std::string_view key) {
    if (const auto open = key.find('{'); open != std::string_view::npos) {
        const auto close = key.find('}', open + 1);
        if (close != std::string_view::npos && close != open + 1) {
            key = key.substr(open + 1, close - open - 1);
        }
    }
    return crc16_xmodem(key) & 16383;
}

std::string printable(std::string_view s) {
    std::string out;
    for (const char c : s) {
        if (c == '\x1f') {
            out += "\\x1f";
        } else {
            out += c;
        }
    }
    return out;
}

}  // namespace

// =======================================================================================
// Case a
// =======================================================================================

// a: a Lock waiter's poll admitted whatever it found, without looking at the tag versions
// the entry was stamped with: a read that started after invalidate_tag returned was served
// the fill of a load that read the database before the invalidation.
BACKEND_TEST_CASE(
    "A Lock waiter on a tagged key is not served a fill stamped before invalidate_tag",
    "[regression][stampede][lock][tags]") {
    TestType fx;
    using B = decltype(fx.backend);
    FakeDb db;
    db.write("post:1", "v1");
    const std::vector<std::string> tags{"user:42"};
    larder::CacheAside<std::string, B> a(fx.backend, options_for(fx));       // process A
    larder::CacheAside<std::string, B> writer(fx.backend, options_for(fx));  // the writer
    larder::CacheAside<std::string, B, larder::Lock> b(fx.backend, options_for(fx),
                                                       larder::Lock({.max_wait = 30s}));
    Gate a_loaded, a_release;
    std::thread ta([&] {
        (void)a.get("post:1", tags, [&] {
            auto row = db.read("post:1");  // v1, under the old tag version
            a_loaded.open();
            a_release.wait();
            return row;
        });
    });
    a_loaded.wait();  // A holds the lease and has read v1
    db.write("post:1", "v2");
    writer.invalidate_tag("user:42");  // returned: nobody may be served v1 from now on

    // B starts after invalidate_tag returned, finds A's lease and waits for it.
    // (A fix may also let B load at once instead of waiting: B finishing counts too.)
    std::optional<std::string> got;
    std::atomic<bool> b_done{false};
    std::thread tb([&] {
        got = b.get("post:1", tags, [&] { return db.read("post:1"); });
        b_done = true;
    });
    const bool b_waiting_or_done =
        eventually([&] { return b.stats().lease_waits == 1 || b_done.load(); }, 10s);
    a_release.open();  // A fills v1, stamped with the old tag version
    ta.join();
    tb.join();
    REQUIRE(b_waiting_or_done);
    INFO("B got " << describe(got) << (b.stats().lease_waits == 1 ? " after waiting" : ""));
    REQUIRE(got == "v2");
}

// =======================================================================================
// Case b
// =======================================================================================

// b (1): a Lock waiter leads the key's single-flight in its process with an empty fence
// (it holds no lease), so every later reader in that process joins it unconditionally.
// Forced interleaving: P3 holds the lease and loads v1; L1 (process P1) waits for it; P3
// fills v1; L1's poll reads v1 and is parked (Tap) before it returns; the DB changes to v2
// and P2.invalidate(k) returns; THEN J in P1 reads k (absent) and must not join L1, whose
// result was read before the invalidation. (Today J joins L1 and gets v1.)
BACKEND_TEST_CASE(
    "A read after another process's invalidate does not join a Lock waiter's older poll",
    "[regression][stampede][lock][cache_aside]") {
    TestType fx;
    using B = decltype(fx.backend);
    FakeDb db;
    db.write("k", "v1");
    Tap<B> tap(fx.backend);
    larder::CacheAside<std::string, Tap<B>, larder::Lock> p1(tap, options_for(fx),
                                                             larder::Lock({.max_wait = 30s}));
    larder::CacheAside<std::string, B> p2(fx.backend, options_for(fx));
    larder::CacheAside<std::string, B> p3(fx.backend, options_for(fx));

    Gate p3_loaded, p3_release;
    std::thread t3([&] {
        (void)p3.get("k", [&] {
            auto row = db.read("k");
            p3_loaded.open();
            p3_release.wait();
            return row;
        });
    });
    p3_loaded.wait();  // P3 holds the lease, has read v1

    tap.pause_on_value_read();
    std::optional<std::string> l1_got;
    std::thread l1([&] { l1_got = p1.get("k", [&] { return db.read("k"); }); });
    const bool l1_waited = eventually([&] { return p1.stats().lease_waits == 1; }, 10s);
    p3_release.open();  // P3 fills v1
    t3.join();
    const bool l1_parked = eventually([&] { return tap.paused(); }, 10s);  // L1's poll read v1

    db.write("k", "v2");
    p2.invalidate("k");  // returned

    std::optional<std::string> j_got;
    std::atomic<bool> j_done{false};
    std::thread j([&] {
        j_got = p1.get("k", [&] { return db.read("k"); });
        j_done = true;
    });
    // J must not need L1 to finish: it loads for itself.
    const bool j_without_l1 = eventually([&] { return j_done.load(); }, 5s);
    tap.resume();
    l1.join();
    j.join();
    REQUIRE(l1_waited);
    REQUIRE(l1_parked);
    CHECK(j_without_l1);
    INFO("J got " << describe(j_got) << ", L1 got " << describe(l1_got));
    REQUIRE(j_got == "v2");
}

// b (2): invalidate(key) forgot only the untagged flight key, so a tagged load already in
// flight stayed joinable. The tagged leader here loads without a lease (another process
// holds it, and NoGuard does not wait), so its flight has no fence to check: only the
// flight table can stop a later reader from joining it. (With a lease, the fence check
// alone hides the bug; an untagged read in the same spot does not join - its flight key is
// forgotten.)
BACKEND_TEST_CASE(
    "A tagged read after invalidate(key) does not join a tagged load started before it",
    "[regression][cache_aside][tags]") {
    TestType fx;
    using B = decltype(fx.backend);
    FakeDb db;
    db.write("k", "v1");
    const std::vector<std::string> tags{"t"};
    larder::CacheAside<std::string, B> cache(fx.backend, options_for(fx));
    larder::CacheAside<std::string, B> other(fx.backend, options_for(fx));  // another process

    Gate other_loading, other_release;
    std::thread holder([&] {
        (void)other.get("k", tags, [&] {
            other_loading.open();
            other_release.wait();
            return db.read("k");
        });
    });
    other_loading.wait();  // the other process holds k's lease

    Gate loaded, release;
    std::thread leader([&] {
        (void)cache.get("k", tags, [&] {
            auto row = db.read("k");  // v1
            loaded.open();
            release.wait();
            return row;
        });
    });
    loaded.wait();
    db.write("k", "v2");
    cache.invalidate("k");  // returned

    std::optional<std::string> fresh;
    std::atomic<bool> done{false};
    std::thread late([&] {
        fresh = cache.get("k", tags, [&] { return db.read("k"); });
        done = true;
    });
    const bool without_waiting = eventually([&] { return done.load(); }, 5s);
    release.open();
    other_release.open();
    late.join();
    leader.join();
    holder.join();
    CHECK(without_waiting);
    INFO("the late read got " << describe(fresh));
    REQUIRE(fresh == "v2");
}

// =======================================================================================
// Case c
// =======================================================================================

// c: WriteThrough::put did not detach loads in flight, so a get that missed after put
// returned could join a load that read the database before the write. A get misses after a
// put when its store read fails (it then degrades to the loader; here the Tap fails that
// one read); today it joins the older load and returns v1.
BACKEND_TEST_CASE("A get after put returned does not join a load that read before the write",
                  "[regression][write_through]") {
    TestType fx;
    using B = decltype(fx.backend);
    FakeDb db;
    db.write("k", "v1");
    Tap<B> tap(fx.backend);
    larder::WriteThroughOptions o;
    o.cache.clock = fx.time_source();
    larder::WriteThrough<std::string, Tap<B>> cache(tap, o);

    Gate loaded, release;
    std::thread old_reader([&] {
        (void)cache.get("k", [&] {
            auto row = db.read("k");  // v1
            loaded.open();
            release.wait();
            return row;
        });
    });
    loaded.wait();
    const auto outcome = cache.put("k", "v2", [&] { db.write("k", "v2"); });  // returned

    tap.fail_next(Op::get);  // the next read misses: the store fails it
    std::optional<std::string> fresh;
    std::atomic<bool> done{false};
    std::thread late([&] {
        fresh = cache.get("k", [&] { return db.read("k"); });
        done = true;
    });
    const bool without_waiting = eventually([&] { return done.load(); }, 5s);
    release.open();
    late.join();
    old_reader.join();
    REQUIRE(outcome == larder::WriteOutcome::cached);
    REQUIRE(tap.injected() == 1);
    CHECK(without_waiting);
    INFO("the get after put got " << describe(fresh));
    REQUIRE(fresh == "v2");
}

// =======================================================================================
// Case d
// =======================================================================================

// d (1): an untagged read did not look at the entry's stamped tags, so it was served an
// entry whose tag had been invalidated.
BACKEND_TEST_CASE("A tagged entry read without tags misses after invalidate_tag",
                  "[regression][tags]") {
    TestType fx;
    larder::CacheAside<std::string, decltype(fx.backend)> cache(fx.backend, options_for(fx));
    const std::vector<std::string> tags{"t"};
    Counting load;
    REQUIRE(cache.get("k", tags, load.loader()) == "v1");
    cache.invalidate_tag("t");
    const auto got = cache.get("k", load.loader());
    INFO("untagged read after invalidate_tag got " << describe(got));
    REQUIRE(got == "v2");
}

// d (2): get_many did not look at stamped tags either.
BACKEND_TEST_CASE("get_many does not serve an entry whose tag was invalidated",
                  "[regression][tags][batch]") {
    TestType fx;
    larder::CacheAside<std::string, decltype(fx.backend)> cache(fx.backend, options_for(fx));
    const std::vector<std::string> tags{"t"};
    REQUIRE(cache.get("k", tags, [] { return std::optional<std::string>("old"); }) == "old");
    cache.invalidate_tag("t");
    std::vector<std::string> asked;
    const auto got =
        cache.get_many(std::vector<std::string>{"k"}, [&](std::span<const std::string> missing) {
            asked.assign(missing.begin(), missing.end());
            return std::vector<std::optional<std::string>>(missing.size(),
                                                           std::optional<std::string>("new"));
        });
    REQUIRE(got.size() == 1);
    INFO("get_many after invalidate_tag got " << describe(got[0]));
    REQUIRE(got[0] == "new");
    REQUIRE(asked == std::vector<std::string>{"k"});
}

// d (3): an entry's own stamped tags decide. Filled with {a, b}, read with {a} only: after
// invalidate_tag("b") it must miss. (Today this already misses: any difference in tag
// count is a miss. It guards the fix of d (1)/(4), which must keep checking the entry's
// own tags.)
BACKEND_TEST_CASE("An entry stamped {a, b} read with {a} misses after invalidate_tag(b)",
                  "[regression][tags]") {
    TestType fx;
    larder::CacheAside<std::string, decltype(fx.backend)> cache(fx.backend, options_for(fx));
    const std::vector<std::string> ab{"a", "b"}, a{"a"};
    Counting load;
    REQUIRE(cache.get("k", ab, load.loader()) == "v1");
    cache.invalidate_tag("b");
    const auto got = cache.get("k", a, load.loader());
    INFO("read with {a} after invalidate_tag(b) got " << describe(got));
    REQUIRE(got == "v2");
}

// d (4): the stamp check compared the reader's tag list with the entry's, so a key read
// with {a} and with {a, b} reloaded on every read. The entry's own stamp {a} is current:
// reading it with {a, b} is a hit (at most one reload, if a fix restamps with {a, b}).
BACKEND_TEST_CASE("A key read alternately with {a} and {a, b} does not reload on every read",
                  "[regression][tags]") {
    TestType fx;
    larder::CacheAside<std::string, decltype(fx.backend)> cache(fx.backend, options_for(fx));
    const std::vector<std::string> a{"a"}, ab{"a", "b"};
    Counting load;
    for (int i = 0; i < 4; ++i) {
        (void)cache.get("k", a, load.loader());
        (void)cache.get("k", ab, load.loader());
    }
    INFO("8 alternating reads called the loader " << load.calls.load() << " times");
    REQUIRE(load.calls.load() <= 2);
}

// =======================================================================================
// Case e
// =======================================================================================

// e: when the fill's compare-and-set failed with a store error, the lease stayed until its
// TTL, and a Lock reader in another process waited for a value that would never come.
BACKEND_TEST_CASE("A fill that fails with a store error gives its lease back",
                  "[regression][cache_aside][faults][lock]") {
    TestType fx;
    using B = decltype(fx.backend);
    Tap<B> tap(fx.backend);
    larder::CacheAside<std::string, Tap<B>> x(tap, options_for(fx));
    larder::CacheAside<std::string, B, larder::Lock> y(fx.backend, options_for(fx),
                                                       larder::Lock({.max_wait = 30s}));
    tap.fail_next(Op::compare_and_set);
    REQUIRE(x.get("k", [] { return std::optional<std::string>("x's"); }) == "x's");
    REQUIRE(tap.injected() == 1);  // the fill's compare-and-set failed
    CHECK_FALSE(holds_lease(fx.backend, x.full_key("k")));

    std::optional<std::string> got;
    std::atomic<bool> done{false};
    std::thread ty([&] {
        got = y.get("k", [] { return std::optional<std::string>("y's"); });
        done = true;
    });
    // Within a few seconds, not at max_wait (30 s) nor at the lease TTL (10 s).
    const bool prompt = eventually([&] { return done.load(); }, 5s);
    if (!prompt)
        (void)fx.backend.del(x.full_key("k"));  // end a failing run now instead of at max_wait
    ty.join();
    REQUIRE(prompt);
    REQUIRE(got == "y's");
}

// =======================================================================================
// Case f
// =======================================================================================

// f: Lock accepted backoffs that cannot work (a zero first_backoff made the waiter's
// jittered nap random_between(1, 0)); they must be a ConfigError at construction (of the
// Lock, or at the latest of the cache that uses it).
TEST_CASE("Lock rejects a zero or inverted backoff and a negative max_wait",
          "[regression][stampede][lock]") {
    auto build = [](larder::LockOptions o) {
        larder::MemoryBackend backend;
        larder::CacheAside<std::string, larder::MemoryBackend, larder::Lock> cache(backend, {},
                                                                                   larder::Lock(o));
    };
    CHECK_THROWS_AS(build({.first_backoff = 0ms}), larder::ConfigError);
    CHECK_THROWS_AS(build({.first_backoff = 20ms, .max_backoff = 5ms}), larder::ConfigError);
    CHECK_THROWS_AS(build({.max_wait = -1s}), larder::ConfigError);
    CHECK_NOTHROW(build({}));
}

// =======================================================================================
// Case g
// =======================================================================================

// g: a tag's version key expired tag_ttl after it was created, however much the tag was
// used, and every entry carrying it then missed while still fresh.
TEST_CASE("A tag version in use does not expire under a fresh entry",
          "[regression][tags][memory]") {
    larder::test::MemoryFixture fx;
    larder::CacheAside<std::string, larder::MemoryBackend> cache(
        fx.backend, options_for(fx, {.ttl = 5s, .tag_ttl = 10s}));
    const std::vector<std::string> tags{"t"};
    Counting load;
    REQUIRE(cache.get("k", tags, load.loader()) == "v1");  // t = 0
    fx.advance(6s);                                        // expired
    REQUIRE(cache.get("k", tags, load.loader()) == "v2");  // t = 6: reloads, fresh until 11
    fx.advance(4500ms);                                    // t = 10.5
    const auto got = cache.get("k", tags, load.loader());
    INFO("read at t=10.5 s got " << describe(got));
    REQUIRE(got == "v2");
    REQUIRE(load.calls.load() == 2);
}

// =======================================================================================
// Case h
// =======================================================================================

// h (1): ttl = Millis::max() overflowed (now + ttl in the memory backend, an invalid PX on
// Redis, 2 * ttl for the default tag_ttl): the value was never cached. Either the options
// are rejected, or the value is cached.
BACKEND_TEST_CASE("A ttl of Millis::max() is rejected at construction or works",
                  "[regression][core][ttl]") {
    TestType fx;
    using Cache = larder::CacheAside<std::string, decltype(fx.backend)>;
    std::optional<Cache> cache;
    try {
        cache.emplace(fx.backend, options_for(fx, {.ttl = Millis::max()}));
    } catch (const larder::ConfigError&) {
        SUCCEED("rejected at construction");
        return;
    }
    Counting load;
    REQUIRE(cache->get("k", load.loader()) == "v1");
    fx.advance(20ms);
    const auto got = cache->get("k", load.loader());
    INFO("second read got " << describe(got));
    REQUIRE(got == "v1");
    REQUIRE(load.calls.load() == 1);
}

// h (2): a jittered huge ttl overflowed in llround and came out as a 1 ms TTL. Each draw
// overflows with probability about 1/3 at this ttl, so 32 keys make a pass on the old code
// a one-in-300,000 event.
BACKEND_TEST_CASE("A jittered huge ttl is rejected at construction or is not 1 ms",
                  "[regression][core][ttl][jitter]") {
    TestType fx;
    using Cache = larder::CacheAside<std::string, decltype(fx.backend)>;
    const Millis huge{std::numeric_limits<Millis::rep>::max() / 8 * 7};
    std::optional<Cache> cache;
    try {
        cache.emplace(fx.backend,
                      options_for(fx, {.ttl = huge, .jitter = larder::TtlJitter{.ratio = 0.5}}));
    } catch (const larder::ConfigError&) {
        SUCCEED("rejected at construction");
        return;
    }
    Counting load;
    std::vector<std::string> keys;
    for (int i = 0; i < 32; ++i) keys.push_back("k" + std::to_string(i));
    for (const auto& k : keys) (void)cache->get(k, load.loader());
    REQUIRE(load.calls.load() == 32);
    fx.advance(20ms);
    int gone = 0;
    for (const auto& k : keys) {
        if (!fx.backend.get(cache->full_key(k))) ++gone;
    }
    INFO(gone << " of 32 entries were gone 20 ms after they were written");
    REQUIRE(gone == 0);
}

// h (3): MemoryBackend computed now + ttl without saturating: Millis::max() was born expired.
TEST_CASE("MemoryBackend stores a Millis::max() ttl as a long one, not as expired",
          "[regression][core][memory]") {
    larder::test::MemoryFixture fx;
    fx.backend.set("set", "v", Millis::max());
    CHECK(fx.backend.get("set").has_value());
    REQUIRE(fx.backend.set_if_absent("nx", "v", Millis::max()));
    CHECK(fx.backend.get("nx").has_value());
    CHECK_FALSE(fx.backend.set_if_absent("nx", "w", Millis::max()));  // it is there
}

// =======================================================================================
// Case i
// =======================================================================================

// i: when get_many's one store read failed, every key looked absent, and get_many took a
// lease per key (and tried a fill per key) against a store that had just failed.
BACKEND_TEST_CASE("get_many after a failed store read does not lease every key",
                  "[regression][cache_aside][batch][faults]") {
    TestType fx;
    larder::ChaosBackend chaos(fx.backend);
    larder::CacheAside<std::string, decltype(chaos)> cache(chaos, options_for(fx));
    std::vector<std::string> keys;
    for (int i = 0; i < 50; ++i) keys.push_back("k" + std::to_string(i));
    chaos.fail_next(1);  // the batch read
    const auto before = chaos.calls();
    const auto got = cache.get_many(keys, [](std::span<const std::string> missing) {
        std::vector<std::optional<std::string>> out;
        for (const auto& k : missing) out.emplace_back("db:" + k);
        return out;
    });
    const auto after = chaos.calls();
    REQUIRE(got.size() == keys.size());
    for (std::size_t i = 0; i < keys.size(); ++i) REQUIRE(got[i] == "db:" + keys[i]);
    INFO("backend calls: " << after.total() - before.total() << " ("
                           << after.set_if_absent - before.set_if_absent << " set_if_absent, "
                           << after.compare_and_set - before.compare_and_set
                           << " compare_and_set)");
    REQUIRE(after.total() - before.total() <= 5);
}

// =======================================================================================
// Case j
// =======================================================================================

// j: a refresh fills by compare-and-set against the old value's bytes, and equal bytes can
// be written again: invalidate + set of the same value in the same millisecond. The
// refresh, started before both, then overwrote the newer write with what it loaded.
// The clock stands still from the refresh's start on, so set() writes what 09443b1 wrote
// byte for byte; the envelope's nonce now keeps the two writes apart.
TEST_CASE("A refresh cannot overwrite an equal value written after it started",
          "[regression][stampede][fail_safe][memory]") {
    larder::test::MemoryFixture fx;
    larder::CacheAside<std::string, larder::MemoryBackend> cache(
        fx.backend, options_for(fx, {.ttl = 5s, .grace = 60s}));
    cache.set("k", "v");
    fx.advance(6s);  // stale: past its freshness, within its grace
    const std::string bytes = fx.backend.get(cache.full_key("k"))->bytes;

    Gate refreshing, release;
    std::thread refresher([&] {
        (void)cache.get("k", [&] {
            refreshing.open();
            release.wait();
            return std::optional<std::string>("v_old");  // read before the write below
        });
    });
    refreshing.wait();  // the refresh of v is elected and loading
    cache.invalidate("k");
    cache.set("k", "v");
    const bool equal_bytes = fx.backend.get(cache.full_key("k"))->bytes == bytes;
    release.open();
    refresher.join();
    INFO("the rewritten bytes are " << (equal_bytes ? "equal" : "not equal") << " to the old");
    const auto got = cache.get("k", [] { return std::optional<std::string>("loaded"); });
    INFO("after the refresh the cache holds " << describe(got));
    REQUIRE(got == "v");
}

// =======================================================================================
// Case k
// =======================================================================================

// k: versions were (ms << 16) | 16 random bits: within one millisecond, or after the clock
// stepped back to a millisecond already used, a bump could return a version given out
// before (200,000 bumps in one millisecond cover the 65,535 values many times over).
TEST_CASE("VersionKeys bumps never repeat a version, in one millisecond or after a step back",
          "[regression][core][version_keys][memory]") {
    larder::ManualClock clock;
    larder::MemoryBackend backend({.clock = &clock});
    larder::VersionKeys versions(backend, {.clock = &clock});
    std::unordered_set<std::uint64_t> seen;
    std::size_t repeats = 0;
    for (int i = 0; i < 200'000; ++i) {
        if (!seen.insert(versions.bump("user:42")).second) ++repeats;
    }
    CHECK(repeats == 0);

    clock.advance(1s);
    (void)seen.insert(versions.bump("user:42"));
    clock.advance(-1s);  // an NTP step back to the millisecond used above
    std::size_t repeats_after_step_back = 0;
    for (int i = 0; i < 1000; ++i) {
        if (!seen.insert(versions.bump("user:42")).second) ++repeats_after_step_back;
    }
    CHECK(repeats_after_step_back == 0);
}

// k: the same scheme for tag versions: invalidate_tag in one millisecond could hand out a
// version an entry is already stamped with, and that entry would be served again.
TEST_CASE("invalidate_tag never repeats a tag version in one millisecond",
          "[regression][tags][core][memory]") {
    larder::test::MemoryFixture fx;
    larder::CacheAside<std::string, larder::MemoryBackend> cache(fx.backend, options_for(fx));
    std::unordered_set<std::string> seen;
    std::size_t repeats = 0;
    for (int i = 0; i < 20'000; ++i) {
        cache.invalidate_tag("t");
        const auto stored = fx.backend.get(cache.tag_key("t"));
        REQUIRE(stored);
        if (!seen.insert(stored->bytes).second) ++repeats;
    }
    REQUIRE(repeats == 0);
}

// =======================================================================================
// Case l
// =======================================================================================

// l (1): a tag record's length is a u16: a 70,000-byte tag name was written with length
// 4,464, and the rest of the name became the value's payload - garbage served to an
// untagged read. The tagged get may instead reject the tag with a larder::Error.
BACKEND_TEST_CASE("A 70,000-byte tag name never turns into garbage values",
                  "[regression][tags][core]") {
    TestType fx;
    larder::CacheAside<std::string, decltype(fx.backend)> cache(fx.backend, options_for(fx));
    const std::vector<std::string> tags{std::string(70'000, 't')};
    auto loader = [] { return std::optional<std::string>("value"); };

    bool rejected = false;
    std::optional<std::string> tagged;
    try {
        tagged = cache.get("k", tags, loader);
    } catch (const larder::Error& e) {
        rejected = true;
        WARN("the tagged get was rejected: " << e.what());
    }
    if (!rejected) {
        INFO("tagged read got " << describe(tagged));
        REQUIRE(tagged == "value");
    }
    const auto untagged = cache.get("k", loader);
    INFO("untagged read got " << describe(untagged));
    REQUIRE(untagged == "value");
    if (!rejected) {
        const auto again = cache.get("k", tags, loader);
        INFO("second tagged read got " << describe(again));
        REQUIRE(again == "value");
    }
}

#if defined(LARDER_TEST_HAVE_JSON)
namespace {

enum class Role { admin, member };

struct Account {
    Role role = Role::member;
    std::string name;
    bool operator==(const Account&) const = default;
};

void to_json(nlohmann::json& j, const Account& a) {
    j = nlohmann::json{{"role", a.role == Role::admin ? "admin" : "member"}, {"name", a.name}};
}

// An ordinary hand-written decoder: an unknown role throws std::out_of_range from
// std::map::at - a standard exception, not a nlohmann::json::exception. (nlohmann's own
// json::at throws json::out_of_range, which the codec already turns into a CodecError.)
void from_json(const nlohmann::json& j, Account& a) {
    static const std::map<std::string, Role> roles{{"admin", Role::admin},
                                                   {"member", Role::member}};
    a.role = roles.at(j.at("role").get<std::string>());
    a.name = j.at("name").get<std::string>();
}

// What an older version of the service cached under the same key.
struct LegacyAccount {
    std::string role;
    std::string name;
};
NLOHMANN_DEFINE_TYPE_NON_INTRUSIVE(LegacyAccount, role, name)

}  // namespace

// l (2): JsonCodec::decode caught only nlohmann's exceptions, so a from_json that threw a
// standard exception escaped from get() instead of being a counted corrupt value.
BACKEND_TEST_CASE("A JSON decoder that throws a standard exception makes get a counted miss",
                  "[regression][cache_aside][corrupt][codec]") {
    TestType fx;
    using B = decltype(fx.backend);
    larder::CacheAside<LegacyAccount, B> legacy(fx.backend, options_for(fx));
    larder::CacheAside<Account, B> accounts(fx.backend, options_for(fx));
    (void)legacy.get("acct:1", [] {
        return std::optional<LegacyAccount>(LegacyAccount{"owner", "ada"});
    });

    const Account ada{Role::admin, "ada"};
    std::optional<Account> got;
    std::string escaped;
    try {
        got = accounts.get("acct:1", [&] { return std::optional<Account>(ada); });
    } catch (const std::exception& e) {
        escaped = e.what();
    }
    INFO("get threw: " << escaped);
    REQUIRE(escaped.empty());
    REQUIRE(got == ada);
    REQUIRE(accounts.stats().corrupt_values == 1);
    // The unreadable bytes were replaced by the loader's value.
    REQUIRE(accounts.get("acct:1", [] { return std::optional<Account>(); }) == ada);
}
#endif

// =======================================================================================
// Case m
// =======================================================================================

// m: keys::sibling wraps a key without a valid hash tag in {...}; when the key itself
// contains '}' (or an empty "{}"), Redis Cluster reads a different hash tag out of the
// wrapped key, and the sibling lands in another slot than the key.
TEST_CASE("keys::sibling hashes to its key's Redis Cluster slot", "[regression][core][keys]") {
    // The CRC and the slot rule, checked against known values.
    REQUIRE(crc16_xmodem("123456789") == 0x31C3);
    REQUIRE(cluster_slot("foo") == 12182);
    REQUIRE(cluster_slot("somekey") == 11058);
    REQUIRE(cluster_slot("foo{hash_tag}") == 2515);

    const std::vector<std::string> keys{
        "user:1", "{user:1}:profile", "app:{tenant}:x", "user}1", "a{}b", "}{x", ""};
    for (const std::string prefix : {"", "app:", "{tenant}:", "a}b:"}) {
        const larder::keys::Namespace ns(prefix);
        for (const auto& key : keys) {
            const std::string entry = ns.entry(key);
            const std::string sib = ns.sibling(key, "role");
            INFO("entry '" << printable(entry) << "' (slot " << cluster_slot(entry)
                           << "), sibling '" << printable(sib) << "' (slot " << cluster_slot(sib)
                           << ")");
            CHECK(cluster_slot(sib) == cluster_slot(entry));
            CHECK(larder::keys::slot(entry) == cluster_slot(entry));
            CHECK_FALSE(ns.key_of(sib));  // a sibling is never an entry
        }
    }
    const auto& table = larder::keys::detail::tags_by_slot();
    for (std::size_t s = 0; s < table.size(); ++s) {
        REQUIRE(table[s].size() == 2);
        REQUIRE(static_cast<std::size_t>(cluster_slot(table[s])) == s);
    }
}

// =======================================================================================
// Case n
// =======================================================================================

// n: the per-thread generator's state was inherited by fork(), so parent and child drew
// the same lease tokens and numbers.
TEST_CASE("A forked child draws different random tokens than its parent",
          "[regression][core][random]") {
    (void)larder::random_token();  // the parent's generator is in use before the fork
    struct Draw {
        larder::Token token{};
        std::int64_t number = 0;
    };
    int fds[2];
    REQUIRE(pipe(fds) == 0);
    const pid_t pid = fork();
    REQUIRE(pid >= 0);
    if (pid == 0) {
        Draw d;
        d.token = larder::random_token();
        d.number = larder::random_between(0, std::numeric_limits<std::int64_t>::max());
        const auto n = write(fds[1], &d, sizeof d);
        _exit(n == static_cast<ssize_t>(sizeof d) ? 0 : 1);
    }
    close(fds[1]);
    Draw parent;
    parent.token = larder::random_token();
    parent.number = larder::random_between(0, std::numeric_limits<std::int64_t>::max());

    Draw child;
    std::size_t got = 0;
    auto* out = reinterpret_cast<char*>(&child);
    while (got < sizeof child) {
        const auto n = read(fds[0], out + got, sizeof child - got);
        if (n <= 0) break;
        got += static_cast<std::size_t>(n);
    }
    close(fds[0]);
    int status = 0;
    waitpid(pid, &status, 0);
    REQUIRE(got == sizeof child);
    REQUIRE(WIFEXITED(status));
    CHECK(child.token != parent.token);
    CHECK(child.number != parent.number);
}

// =======================================================================================
// Found by review after the read path was unified: where two features meet
// =======================================================================================

namespace {
std::string entity_of(std::string_view key) {
    return std::string(key.substr(0, key.find('/')));
}
}  // namespace

// get_many filled entries without the invalidator's versions, so invalidate_version did
// not reach them.
BACKEND_TEST_CASE("get_many stamps the invalidator's versions on its fills",
                  "[regression][cache_aside][batch][invalidator]") {
    TestType fx;
    using larder::EntityVersions;
    larder::CacheAside<std::string, decltype(fx.backend), EntityVersions> cache(
        fx.backend, options_for(fx), EntityVersions(entity_of));
    std::string db = "v1";
    const std::vector<std::string> keys{"user:1/profile"};
    auto batch = [&](std::span<const std::string> missing) {
        return std::vector<std::optional<std::string>>(missing.size(), db);
    };
    REQUIRE(cache.get_many(keys, batch)[0] == "v1");
    db = "v2";
    cache.invalidate_version(EntityVersions::version_name("user:1"));
    REQUIRE(cache.get("user:1/profile", [&] { return std::optional<std::string>(db); }) == "v2");
    REQUIRE(cache.get_many(keys, batch)[0] == "v2");
}

// A refresh by a reader that passed no tags (or other tags) re-stamped the entry with the
// reader's tags only, so invalidate_tag of the entry's own tag no longer reached it.
TEST_CASE("A refresh keeps the entry's own tags, whatever tags the refreshing reader passes",
          "[regression][stampede][fail_safe][tags][memory]") {
    larder::test::MemoryFixture fx;
    larder::CacheAside<std::string, larder::MemoryBackend> cache(
        fx.backend, options_for(fx, {.ttl = 5s, .grace = 60s}));
    const std::vector<std::string> t{"t"};
    std::string db = "v1";
    auto load = [&] { return std::optional<std::string>(db); };
    REQUIRE(cache.get("k", t, load) == "v1");
    fx.advance(6s);  // stale: the next read refreshes
    db = "v2";
    REQUIRE(cache.get("k", load) == "v2");  // refreshed by a reader without tags
    db = "v3";
    cache.invalidate_tag("t");
    REQUIRE(cache.get("k", t, load) == "v3");
    REQUIRE(cache.get("k", load) == "v3");
}

// A refresh fenced only on the old bytes: a tag bump during its load does not change
// them, so the refresh stored the value it loaded before the bump (a stale set).
TEST_CASE("A refresh racing invalidate_tag cannot store what it loaded before the bump",
          "[regression][stampede][fail_safe][tags][memory]") {
    larder::test::MemoryFixture fx;
    larder::CacheAside<std::string, larder::MemoryBackend> reader(
        fx.backend, options_for(fx, {.ttl = 5s, .grace = 60s}));
    larder::CacheAside<std::string, larder::MemoryBackend> writer(fx.backend, options_for(fx));
    const std::vector<std::string> t{"t"};
    std::string db = "v1";
    REQUIRE(reader.get("k", t, [&] { return std::optional<std::string>(db); }) == "v1");
    fx.advance(6s);
    Gate loading, release;
    std::thread refresher([&] {
        (void)reader.get("k", [&] {
            auto row = std::optional<std::string>(db);  // v1: read before the write below
            loading.open();
            release.wait();
            return row;
        });
    });
    loading.wait();
    db = "v2";
    writer.invalidate_tag("t");
    release.open();
    refresher.join();
    REQUIRE(reader.get("k", t, [&] { return std::optional<std::string>(db); }) == "v2");
}

// WriteThrough's put stored its value without the invalidator's versions.
BACKEND_TEST_CASE("WriteThrough's put is stamped with the invalidator's versions",
                  "[regression][write_through][invalidator]") {
    TestType fx;
    using larder::EntityVersions;
    larder::WriteThrough<std::string, decltype(fx.backend), EntityVersions> cache(
        fx.backend, {.cache = {.clock = fx.time_source()}}, {}, {}, EntityVersions(entity_of));
    (void)cache.put("user:1/name", "ada", [] {});
    REQUIRE(cache.get("user:1/name", [] { return std::optional<std::string>("db"); }) == "ada");
    cache.invalidate_version(EntityVersions::version_name("user:1"));
    REQUIRE(cache.get("user:1/name", [] { return std::optional<std::string>("db"); }) == "db");
}

// A WriteThrough put whose cache update failed left its marker; a reader in another
// process that loaded the old row while the put's database write ran was fenced by that
// marker, and a read starting after put returned saw the same marker and shared the old
// value. A writer's marker is no fence for readers.
TEST_CASE("A writer's marker seen by two readers is no reason to share a load",
          "[regression][write_through][single_flight][memory]") {
    larder::test::MemoryFixture fx;
    larder::ChaosBackend writer_store(fx.backend);
    larder::CacheAside<std::string, larder::MemoryBackend> readers(fx.backend, options_for(fx));
    larder::WriteThrough<std::string, decltype(writer_store)> writer(
        writer_store, {.cache = {.clock = &fx.clock}});
    std::atomic<int> db{1};
    auto row = [&] { return std::optional<std::string>("v" + std::to_string(db.load())); };
    Gate in_db, loaded, go;
    std::thread w([&] {
        (void)writer.put("k", "v2", [&] {
            in_db.open();
            loaded.wait();
            db = 2;
            writer_store.fail_all(true);  // the cache update after the commit fails
        });
        writer_store.fail_all(false);
    });
    in_db.wait();  // the marker is stored, the database not yet written
    std::thread a([&] {
        (void)readers.get("k", [&] {
            auto old = row();  // v1
            loaded.open();
            go.wait();
            return old;
        });
    });
    w.join();  // put has returned
    std::optional<std::string> got;
    std::atomic<bool> b_returned{false};
    std::thread b([&] {
        got = readers.get("k", row);
        b_returned = true;
    });
    const bool b_done = larder::test::eventually([&] { return b_returned.load(); }, 2s);
    go.open();
    a.join();
    b.join();
    CHECK(b_done);
    REQUIRE(got == "v2");
}

// Tag names past 65,535 bytes, and long keys under EntityVersions, are ordinary input.
BACKEND_TEST_CASE("Long tag names and long entity names are served like any other",
                  "[regression][tags][invalidator]") {
    TestType fx;
    larder::CacheAside<std::string, decltype(fx.backend)> cache(fx.backend, options_for(fx));
    const std::vector<std::string> tags{std::string(65'535, 't')};
    REQUIRE(cache.get("k", tags, [] { return std::optional<std::string>("a"); }) == "a");
    REQUIRE(cache.get("k", tags, [] { return std::optional<std::string>("b"); }) == "a");
    cache.invalidate_tag(tags[0]);
    REQUIRE(cache.get("k", tags, [] { return std::optional<std::string>("c"); }) == "c");

    using larder::EntityVersions;
    larder::CacheAside<std::string, decltype(fx.backend), EntityVersions> by_entity(
        fx.backend, options_for(fx));
    const std::string long_key(70'000, 'k');
    REQUIRE(by_entity.get(long_key, [] { return std::optional<std::string>("x"); }) == "x");
    REQUIRE(by_entity.get(long_key, [] { return std::optional<std::string>("y"); }) == "x");
}

// A hostile fresh_until (INT64_MIN) overflowed the subtraction that computed freshness
// (UBSan) and the value was served as fresh.
TEST_CASE("A hostile fresh_until is not fresh, and computing it does not overflow",
          "[regression][cache_aside][corrupt][memory]") {
    larder::test::MemoryFixture fx;
    larder::CacheAside<std::string, larder::MemoryBackend> cache(fx.backend, options_for(fx));
    std::string bytes;
    larder::envelope::write_header(
        bytes,
        larder::EnvelopeHeader{
            .codec = larder::codec_id::raw,
            .fresh_until = larder::TimePoint{Millis{std::numeric_limits<std::int64_t>::min()}},
            .grace_until = larder::TimePoint{Millis{1}},
        });
    bytes += "planted";
    fx.raw_set(cache.full_key("k"), bytes);
    REQUIRE(cache.get("k", [] { return std::optional<std::string>("loaded"); }) == "loaded");
}

// A read that could not reach the store used to join any load in flight, even one that
// read the row before another process's invalidate() returned. It now waits for that load
// and joins the next.
TEST_CASE("A read that cannot reach the store does not join a load older than itself",
          "[regression][single_flight][memory]") {
    larder::test::MemoryFixture fx;
    larder::ChaosBackend flaky(fx.backend);
    larder::CacheAside<std::string, decltype(flaky)> a(flaky, options_for(fx));
    larder::CacheAside<std::string, larder::MemoryBackend> b(fx.backend, options_for(fx));
    FakeDb db;
    db.write("k", "v1");
    flaky.fail_all(true);  // process A cannot reach the store
    Gate read_v1, proceed;
    std::atomic<int> loads{0};
    std::optional<std::string> first;
    std::thread old_load([&] {
        first = a.get("k", [&] {
            auto row = db.read("k");
            if (loads++ == 0) {
                read_v1.open();
                proceed.wait();
            }
            return row;
        });
    });
    read_v1.wait();
    b.invalidate_after("k", [&] { db.write("k", "v2"); });  // process B
    std::optional<std::string> second;
    std::thread new_read([&] {
        second = a.get("k", [&] {
            ++loads;
            return db.read("k");
        });
    });
    // Let the new read find the old load in flight (after its miss it joins at once).
    REQUIRE(eventually([&] { return a.stats().misses == 2; }));
    std::this_thread::sleep_for(20ms);
    proceed.open();
    old_load.join();
    new_read.join();
    REQUIRE(first == "v1");
    REQUIRE(second == "v2");
    REQUIRE(loads == 2);
}

// A reader that found an entry past its grace (the store still holding it) took the lease
// by compare-and-set against those bytes. When the store expired the key just then, the
// compare-and-set failed, the reader read the key again, found nothing, and loaded without
// filling: one more database query per process at every expiry of a hot key (the Lock rows
// of stampede_bench counted up to 5 loads per recompute with 4 processes). It now leases
// the empty key and fills.
TEST_CASE("A lease lost because the store expired the key just then is taken again",
          "[regression][cache_aside][lock][memory]") {
    larder::test::MemoryFixture fx;
    Tap<larder::MemoryBackend> tap(fx.backend);
    larder::CacheAside<std::string, Tap<larder::MemoryBackend>, larder::Lock> cache(
        tap, options_for(fx));
    std::string expired;
    larder::envelope::write_header(expired, larder::EnvelopeHeader{
                                                .codec = larder::codec_id::raw,
                                                .fresh_until = larder::TimePoint{Millis{1}},
                                                .grace_until = larder::TimePoint{Millis{1}},
                                            });
    expired += "old";
    fx.raw_set(cache.full_key("k"), expired);
    tap.expire_before_next_compare_and_set();

    Counting load;
    REQUIRE(cache.get("k", load.loader()) == "v1");
    REQUIRE(tap.calls(Op::compare_and_set) >= 1);
    CHECK(cache.stats().fills == 1);
    // Filled: the next read is a hit, not a second query.
    REQUIRE(cache.get("k", load.loader()) == "v1");
    REQUIRE(load.calls.load() == 1);
}
