// The Backend conformance suite, for your own backend: the tests every larder backend
// passes (MemoryBackend, RedisBackend, RedisClusterBackend run these same ones). A backend
// that passes them behaves as the policies expect: bytes round-trip exactly, TTLs count
// down and expire, each operation is atomic on its own, get_many is aligned with its keys.
//
// In one of your Catch2 test files (Catch2 v2 or v3; this header includes whichever is
// installed, unless you included one already):
//
//     #include <larder/testing/backend_conformance.hpp>
//
//     struct MyFixture {
//         static constexpr bool manual_time = true;
//         larder::ManualClock clock;
//         MyBackend backend{&clock};   // a fresh, empty store for every test case
//         void raw_set(std::string_view key, std::string_view bytes) { ... }
//         void advance(larder::Millis by) { clock.advance(by); }
//     };
//
//     LARDER_BACKEND_CONFORMANCE_TESTS(MyFixture, "[mybackend]");
//
// Every test case is a TEMPLATE_TEST_CASE over the fixture, named as the test plus the
// fixture's name, tagged [backend] (and [concurrency] for the tests that run threads) and
// with your tags. Run them with `./tests "[mybackend]"`.
//
// The fixture (the BackendFixture concept below) is default-constructible, and each test
// case makes one, so its backend starts empty. It has
//  - `backend`: the backend under test (a member, or a reference member);
//  - `raw_set(key, bytes)`: stores `bytes` under `key` without an expiry, as the store
//    holds them, behind the backend's back where it can (a direct write to the table,
//    SET on the server); `backend.set(key, bytes, larder::no_expiry)` will do;
//  - `advance(Millis)`: lets that much time pass for the backend's TTLs: a manual clock
//    the backend reads, or a real sleep;
//  - `static constexpr bool manual_time`: true when advance() moves a clock rather than
//    sleeps (the suite then also checks TTLs of an hour, at no cost).
//
// Tests of the optional capabilities (Increments, ValueOnlyReads) check them when the
// backend has them and pass otherwise. The test cases expand from one line: Catch2 names
// them with __COUNTER__, which it uses by default (do not define CATCH_CONFIG_NO_COUNTER).
// A fixture type with a comma in its name (a template with two arguments) needs an alias.
#pragma once

#if defined(LARDER_CATCH2_V3) || (defined(CATCH_VERSION_MAJOR) && CATCH_VERSION_MAJOR >= 3)
#include <catch2/catch_template_test_macros.hpp>
#include <catch2/catch_test_macros.hpp>
#elif defined(CATCH_VERSION_MAJOR) || __has_include(<catch2/catch.hpp>)
#include <catch2/catch.hpp>
#else
#include <catch2/catch_template_test_macros.hpp>
#include <catch2/catch_test_macros.hpp>
#endif

#include <atomic>
#include <chrono>
#include <concepts>
#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>
#include <thread>
#include <type_traits>
#include <vector>

#include "larder/backend/backend.hpp"
#include "larder/core/clock.hpp"
#include "larder/core/error.hpp"

namespace larder::testing {

/// What LARDER_BACKEND_CONFORMANCE_TESTS needs of a fixture (see the top of this file).
template <class F>
concept BackendFixture = std::constructible_from<F> &&
    requires(F& fx, std::string_view key, std::string_view bytes, Millis by) {
    requires Backend<std::remove_cvref_t<decltype(fx.backend)>>;
    fx.raw_set(key, bytes);
    fx.advance(by);
    typename std::bool_constant<F::manual_time>;
};

namespace conformance {

using namespace std::chrono_literals;

/// Keys that break a store that treats keys as text, or a protocol that frames them.
inline std::vector<std::string> hostile_keys() {
    return {
        "with space",
        "line\r\nbreak",
        std::string("nul\0inside", 10),
        "%s%n%d%%",
        std::string("\xff\xfe\x80 not utf-8", 14),
        "*3\r\n$3\r\nSET\r\n",  // looks like RESP
        "'; DROP TABLE t; --",  // looks like SQL
        std::string(std::size_t{1} << 20, 'k'),
    };
}

template <BackendFixture Fx>
void missing_key() {
    Fx fx;
    REQUIRE_FALSE(fx.backend.get("absent"));
    REQUIRE_FALSE(fx.backend.del("absent"));
}

template <BackendFixture Fx>
void ttl_counts_down() {
    Fx fx;
    fx.backend.set("k", "v", 10s);
    auto got = fx.backend.get("k");
    REQUIRE(got);
    REQUIRE(got->bytes == "v");
    REQUIRE(got->ttl);
    REQUIRE(*got->ttl <= 10s);
    REQUIRE(*got->ttl > 8s);

    fx.advance(300ms);
    got = fx.backend.get("k");
    REQUIRE(got);
    REQUIRE(got->ttl);
    REQUIRE(*got->ttl <= 10s - 300ms);

    fx.backend.set("k", "w", no_expiry);
    got = fx.backend.get("k");
    REQUIRE(got->bytes == "w");
    REQUIRE_FALSE(got->ttl);
}

template <BackendFixture Fx>
void ttl_expires() {
    Fx fx;
    fx.backend.set("short", "v", 100ms);
    fx.backend.set("long", "v", 60s);
    fx.advance(250ms);
    REQUIRE_FALSE(fx.backend.get("short"));
    REQUIRE(fx.backend.get("long"));
    REQUIRE_FALSE(fx.backend.compare_and_set("short", "v", "w", 60s));
    REQUIRE_FALSE(fx.backend.compare_and_delete("short", "v"));
    REQUIRE_FALSE(fx.backend.compare_and_expire("short", "v", 60s));
    REQUIRE(fx.backend.set_if_absent("short", "again", 60s));

    if constexpr (Fx::manual_time) {
        fx.backend.set("hour", "v", 1h);
        fx.advance(1h - 1s);
        const auto got = fx.backend.get("hour");
        REQUIRE(got);
        REQUIRE(got->ttl);
        REQUIRE(*got->ttl <= 1s);
        fx.advance(1s + 1ms);
        REQUIRE_FALSE(fx.backend.get("hour"));
        REQUIRE_FALSE(fx.backend.get_many(std::vector<std::string>{"hour"})[0]);
    }
}

template <BackendFixture Fx>
void raw_bytes_read_back() {
    Fx fx;
    const std::string bytes("raw\0\r\n\xff", 7);
    fx.raw_set("raw", bytes);
    auto got = fx.backend.get("raw");
    REQUIRE(got);
    REQUIRE(got->bytes == bytes);
    REQUIRE_FALSE(got->ttl);
    REQUIRE(fx.backend.compare_and_set("raw", bytes, "replaced", 10s));
    REQUIRE(fx.backend.get("raw")->bytes == "replaced");
}

template <BackendFixture Fx>
void set_if_absent_once() {
    Fx fx;
    REQUIRE(fx.backend.set_if_absent("k", "first", 10s));
    REQUIRE_FALSE(fx.backend.set_if_absent("k", "second", 10s));
    REQUIRE(fx.backend.get("k")->bytes == "first");
}

template <BackendFixture Fx>
void compare_and_set() {
    Fx fx;
    REQUIRE_FALSE(fx.backend.compare_and_set("k", "old", "new", 10s));
    REQUIRE_FALSE(fx.backend.get("k"));

    fx.backend.set("k", "old", no_expiry);
    REQUIRE_FALSE(fx.backend.compare_and_set("k", "other", "new", 10s));
    REQUIRE(fx.backend.get("k")->bytes == "old");

    REQUIRE(fx.backend.compare_and_set("k", "old", "new", 10s));
    auto got = fx.backend.get("k");
    REQUIRE(got->bytes == "new");
    REQUIRE(got->ttl);
    REQUIRE(*got->ttl <= 10s);

    REQUIRE(fx.backend.compare_and_set("k", "new", "newer", no_expiry));
    got = fx.backend.get("k");
    REQUIRE(got->bytes == "newer");
    REQUIRE_FALSE(got->ttl);
}

template <BackendFixture Fx>
void compare_and_delete() {
    Fx fx;
    REQUIRE_FALSE(fx.backend.compare_and_delete("k", "v"));
    fx.backend.set("k", "v", 10s);
    REQUIRE_FALSE(fx.backend.compare_and_delete("k", "other"));
    REQUIRE(fx.backend.get("k"));
    REQUIRE(fx.backend.compare_and_delete("k", "v"));
    REQUIRE_FALSE(fx.backend.get("k"));
}

template <BackendFixture Fx>
void compare_and_expire() {
    Fx fx;
    fx.backend.set("k", "lease", 1s);
    REQUIRE_FALSE(fx.backend.compare_and_expire("k", "other", 60s));
    REQUIRE(*fx.backend.get("k")->ttl <= 1s);
    REQUIRE(fx.backend.compare_and_expire("k", "lease", 60s));
    REQUIRE(*fx.backend.get("k")->ttl > 50s);
    REQUIRE(fx.backend.get("k")->bytes == "lease");
    REQUIRE_FALSE(fx.backend.compare_and_expire("absent", "lease", 60s));
}

template <BackendFixture Fx>
void del_once() {
    Fx fx;
    fx.backend.set("k", "v", 10s);
    REQUIRE(fx.backend.del("k"));
    REQUIRE_FALSE(fx.backend.del("k"));
    REQUIRE_FALSE(fx.backend.get("k"));
}

template <BackendFixture Fx>
void get_many_aligned() {
    Fx fx;
    fx.backend.set("a", "1", 10s);
    fx.backend.set("c", "3", no_expiry);
    const std::vector<std::string> keys{"a", "b", "c", "a"};
    const auto got = fx.backend.get_many(keys);
    REQUIRE(got.size() == 4);
    REQUIRE(got[0]->bytes == "1");
    REQUIRE(got[0]->ttl);
    REQUIRE_FALSE(got[1]);
    REQUIRE(got[2]->bytes == "3");
    REQUIRE_FALSE(got[2]->ttl);
    REQUIRE(got[3]->bytes == "1");
    REQUIRE(fx.backend.get_many(std::vector<std::string>{}).empty());
}

template <BackendFixture Fx>
void hostile_bytes() {
    Fx fx;
    const std::string value("v\0\r\n%s\xff", 8);
    for (const auto& key : hostile_keys()) {
        INFO("key of " << key.size() << " bytes");
        fx.backend.set(key, value + key.substr(0, 16), 10s);
        auto got = fx.backend.get(key);
        REQUIRE(got);
        REQUIRE(got->bytes == value + key.substr(0, 16));
        REQUIRE(fx.backend.compare_and_set(key, value + key.substr(0, 16), key, 10s));
        REQUIRE(fx.backend.get(key)->bytes == key);
    }
    const auto keys = hostile_keys();
    const auto many = fx.backend.get_many(keys);
    REQUIRE(many.size() == keys.size());
    for (std::size_t i = 0; i < keys.size(); ++i) REQUIRE(many[i]->bytes == keys[i]);
    // Keys that differ only after a NUL, or by a trailing byte, are distinct keys.
    fx.backend.set(std::string("p\0a", 3), "1", 10s);
    fx.backend.set(std::string("p\0b", 3), "2", 10s);
    REQUIRE(fx.backend.get(std::string("p\0a", 3))->bytes == "1");
    REQUIRE_FALSE(fx.backend.get(std::string("p", 1)));
    for (const auto& key : keys) REQUIRE(fx.backend.del(key));
    for (const auto& key : keys) REQUIRE_FALSE(fx.backend.get(key));
}

template <BackendFixture Fx>
void set_if_absent_race() {
    Fx fx;
    for (int round = 0; round < 20; ++round) {
        const std::string key = "lease:" + std::to_string(round);
        std::atomic<int> winners{0};
        std::atomic<bool> go{false};
        std::vector<std::thread> threads;
        for (int t = 0; t < 16; ++t) {
            threads.emplace_back([&, t] {
                while (!go.load()) std::this_thread::yield();
                if (fx.backend.set_if_absent(key, std::to_string(t), 10s)) winners.fetch_add(1);
            });
        }
        go = true;
        for (auto& t : threads) t.join();
        REQUIRE(winners.load() == 1);
    }
}

template <BackendFixture Fx>
void increments() {
    using B = std::remove_cvref_t<decltype(std::declval<Fx&>().backend)>;
    if constexpr (Increments<B>) {
        Fx fx;
        REQUIRE(fx.backend.increment("n", 5) == 5);
        REQUIRE(fx.backend.increment("n", -7) == -2);
        REQUIRE(fx.backend.get("n")->bytes == "-2");
        REQUIRE_FALSE(fx.backend.get("n")->ttl);

        fx.backend.set("t", "10", 10s);
        REQUIRE(fx.backend.increment("t", 1) == 11);
        REQUIRE(fx.backend.get("t")->ttl);

        for (const std::string bad :
             {"abc", "", "007", "-0", "+1", " 1", "1.5", "9223372036854775808"}) {
            INFO("value '" << bad << "'");
            fx.backend.set("s", bad, 10s);
            REQUIRE_THROWS_AS(fx.backend.increment("s", 1), BackendError);
            REQUIRE(fx.backend.get("s")->bytes == bad);
        }
        fx.backend.set("max", "9223372036854775807", 10s);
        REQUIRE_THROWS_AS(fx.backend.increment("max", 1), BackendError);
        fx.backend.set("zero", "0", 10s);
        REQUIRE(fx.backend.increment("zero", -1) == -1);
    } else {
        SUCCEED("the backend does not have the Increments capability");
    }
}

template <BackendFixture Fx>
void concurrent_increments() {
    using B = std::remove_cvref_t<decltype(std::declval<Fx&>().backend)>;
    if constexpr (Increments<B>) {
        Fx fx;
        std::vector<std::thread> threads;
        for (int t = 0; t < 8; ++t) {
            threads.emplace_back([&] {
                for (int i = 0; i < 200; ++i) (void)fx.backend.increment("counter", 1);
            });
        }
        for (auto& t : threads) t.join();
        REQUIRE(fx.backend.get("counter")->bytes == "1600");
    } else {
        SUCCEED("the backend does not have the Increments capability");
    }
}

template <BackendFixture Fx>
void value_only_reads() {
    using B = std::remove_cvref_t<decltype(std::declval<Fx&>().backend)>;
    if constexpr (ValueOnlyReads<B>) {
        Fx fx;
        fx.backend.set("a", "1", 10s);
        fx.backend.set("c", std::string("3\0\r\n", 4), no_expiry);
        REQUIRE_FALSE(fx.backend.get_value("b"));
        const auto a = fx.backend.get_value("a");
        REQUIRE(a);
        REQUIRE(a->bytes == "1");
        REQUIRE_FALSE(a->ttl);
        const std::vector<std::string> keys{"a", "b", "c", "a"};
        const auto got = fx.backend.get_many_values(keys);
        REQUIRE(got.size() == 4);
        REQUIRE(got[0]->bytes == "1");
        REQUIRE_FALSE(got[1]);
        REQUIRE(got[2]->bytes == std::string("3\0\r\n", 4));
        REQUIRE(got[3]->bytes == "1");
        REQUIRE(fx.backend.get_many_values(std::vector<std::string>{}).empty());
    } else {
        SUCCEED("the backend does not have the ValueOnlyReads capability");
    }
}

}  // namespace conformance
}  // namespace larder::testing

#define LARDER_CONFORMANCE_CASE_(name, tags, Fixture, test) \
    TEMPLATE_TEST_CASE(name, tags, Fixture) {               \
        larder::testing::conformance::test<TestType>();     \
    }

/// Defines every conformance test case for `Fixture` (a BackendFixture), each tagged
/// [backend] and `tags` (a string literal, "" for none). Use it at namespace scope, once
/// per fixture, followed by a semicolon.
#define LARDER_BACKEND_CONFORMANCE_TESTS(Fixture, tags)                                            \
    LARDER_CONFORMANCE_CASE_("A missing key reads as nothing", "[backend]" tags, Fixture,          \
                             missing_key)                                                          \
    LARDER_CONFORMANCE_CASE_("set stores bytes with a TTL that counts down", "[backend]" tags,     \
                             Fixture, ttl_counts_down)                                             \
    LARDER_CONFORMANCE_CASE_("An entry is gone once its TTL passes", "[backend]" tags, Fixture,    \
                             ttl_expires)                                                          \
    LARDER_CONFORMANCE_CASE_("Bytes stored behind the backend's back read back exactly",           \
                             "[backend]" tags, Fixture, raw_bytes_read_back)                       \
    LARDER_CONFORMANCE_CASE_("set_if_absent creates only once", "[backend]" tags, Fixture,         \
                             set_if_absent_once)                                                   \
    LARDER_CONFORMANCE_CASE_("compare_and_set replaces only the expected bytes", "[backend]" tags, \
                             Fixture, compare_and_set)                                             \
    LARDER_CONFORMANCE_CASE_("compare_and_delete deletes only the expected bytes",                 \
                             "[backend]" tags, Fixture, compare_and_delete)                        \
    LARDER_CONFORMANCE_CASE_("compare_and_expire extends only the expected bytes",                 \
                             "[backend]" tags, Fixture, compare_and_expire)                        \
    LARDER_CONFORMANCE_CASE_("del removes a key once", "[backend]" tags, Fixture, del_once)        \
    LARDER_CONFORMANCE_CASE_("get_many answers in key order, with gaps and repeats",               \
                             "[backend]" tags, Fixture, get_many_aligned)                          \
    LARDER_CONFORMANCE_CASE_("Hostile keys and values round-trip exactly", "[backend]" tags,       \
                             Fixture, hostile_bytes)                                               \
    LARDER_CONFORMANCE_CASE_("Exactly one of many concurrent set_if_absent wins",                  \
                             "[backend][concurrency]" tags, Fixture, set_if_absent_race)           \
    LARDER_CONFORMANCE_CASE_("increment counts from zero, keeps the TTL, rejects non-integers",    \
                             "[backend]" tags, Fixture, increments)                                \
    LARDER_CONFORMANCE_CASE_("Concurrent increments are atomic", "[backend][concurrency]" tags,    \
                             Fixture, concurrent_increments)                                       \
    LARDER_CONFORMANCE_CASE_("Value-only reads return the bytes without a TTL", "[backend]" tags,  \
                             Fixture, value_only_reads)                                            \
    static_assert(larder::testing::BackendFixture<Fixture>,                                        \
                  "LARDER_BACKEND_CONFORMANCE_TESTS: the fixture needs a default constructor, "    \
                  "a `backend` member that is a larder::Backend, raw_set(key, bytes), "            \
                  "advance(Millis) and static constexpr bool manual_time")
