// The Backend conformance suite: every backend runs these same tests, so a strategy that
// works on one works on all. Add a fixture to support/backends.hpp to run a new backend.
#include <larder/backend/backend.hpp>
#include <larder/core/error.hpp>

#include <atomic>
#include <string>
#include <thread>
#include <vector>

#include "support/backends.hpp"

using namespace std::chrono_literals;
using larder::Millis;

namespace {

std::vector<std::string> hostile_keys() {
    return {
        "with space",
        "line\r\nbreak",
        std::string("nul\0inside", 10),
        "%s%n%d%%",
        std::string("\xff\xfe\x80 not utf-8", 14),
        "*3\r\n$3\r\nSET\r\n",  // looks like RESP
        std::string(1 << 20, 'k'),
    };
}

}  // namespace

BACKEND_TEST_CASE("A missing key reads as nothing", "[backend]") {
    TestType fx;
    REQUIRE_FALSE(fx.backend.get("absent"));
    REQUIRE_FALSE(fx.backend.del("absent"));
}

BACKEND_TEST_CASE("set stores bytes with a TTL that counts down", "[backend]") {
    TestType fx;
    fx.backend.set("k", "v", 10s);
    auto got = fx.backend.get("k");
    REQUIRE(got);
    REQUIRE(got->bytes == "v");
    REQUIRE(got->ttl);
    REQUIRE(*got->ttl <= 10s);
    REQUIRE(*got->ttl > 8s);

    fx.backend.set("k", "w", larder::no_expiry);
    got = fx.backend.get("k");
    REQUIRE(got->bytes == "w");
    REQUIRE_FALSE(got->ttl);
}

BACKEND_TEST_CASE("An entry is gone once its TTL passes", "[backend]") {
    TestType fx;
    fx.backend.set("short", "v", 100ms);
    fx.backend.set("long", "v", 60s);
    fx.advance(250ms);
    REQUIRE_FALSE(fx.backend.get("short"));
    REQUIRE(fx.backend.get("long"));
    REQUIRE(fx.backend.set_if_absent("short", "again", 60s));
}

BACKEND_TEST_CASE("set_if_absent creates only once", "[backend]") {
    TestType fx;
    REQUIRE(fx.backend.set_if_absent("k", "first", 10s));
    REQUIRE_FALSE(fx.backend.set_if_absent("k", "second", 10s));
    REQUIRE(fx.backend.get("k")->bytes == "first");
}

BACKEND_TEST_CASE("compare_and_set replaces only the expected bytes", "[backend]") {
    TestType fx;
    REQUIRE_FALSE(fx.backend.compare_and_set("k", "old", "new", 10s));
    REQUIRE_FALSE(fx.backend.get("k"));

    fx.backend.set("k", "old", larder::no_expiry);
    REQUIRE_FALSE(fx.backend.compare_and_set("k", "other", "new", 10s));
    REQUIRE(fx.backend.get("k")->bytes == "old");

    REQUIRE(fx.backend.compare_and_set("k", "old", "new", 10s));
    auto got = fx.backend.get("k");
    REQUIRE(got->bytes == "new");
    REQUIRE(got->ttl);
    REQUIRE(*got->ttl <= 10s);
}

BACKEND_TEST_CASE("compare_and_delete deletes only the expected bytes", "[backend]") {
    TestType fx;
    REQUIRE_FALSE(fx.backend.compare_and_delete("k", "v"));
    fx.backend.set("k", "v", 10s);
    REQUIRE_FALSE(fx.backend.compare_and_delete("k", "other"));
    REQUIRE(fx.backend.get("k"));
    REQUIRE(fx.backend.compare_and_delete("k", "v"));
    REQUIRE_FALSE(fx.backend.get("k"));
}

BACKEND_TEST_CASE("compare_and_expire extends only the expected bytes", "[backend]") {
    TestType fx;
    fx.backend.set("k", "lease", 1s);
    REQUIRE_FALSE(fx.backend.compare_and_expire("k", "other", 60s));
    REQUIRE(*fx.backend.get("k")->ttl <= 1s);
    REQUIRE(fx.backend.compare_and_expire("k", "lease", 60s));
    REQUIRE(*fx.backend.get("k")->ttl > 50s);
    REQUIRE_FALSE(fx.backend.compare_and_expire("absent", "lease", 60s));
}

BACKEND_TEST_CASE("del removes a key once", "[backend]") {
    TestType fx;
    fx.backend.set("k", "v", 10s);
    REQUIRE(fx.backend.del("k"));
    REQUIRE_FALSE(fx.backend.del("k"));
    REQUIRE_FALSE(fx.backend.get("k"));
}

BACKEND_TEST_CASE("increment counts from zero, keeps the TTL, rejects non-integers", "[backend]") {
    TestType fx;
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
        REQUIRE_THROWS_AS(fx.backend.increment("s", 1), larder::BackendError);
        REQUIRE(fx.backend.get("s")->bytes == bad);
    }
    fx.backend.set("max", "9223372036854775807", 10s);
    REQUIRE_THROWS_AS(fx.backend.increment("max", 1), larder::BackendError);
    fx.backend.set("zero", "0", 10s);
    REQUIRE(fx.backend.increment("zero", -1) == -1);
}

BACKEND_TEST_CASE("get_many answers in key order, with gaps and repeats", "[backend]") {
    TestType fx;
    fx.backend.set("a", "1", 10s);
    fx.backend.set("c", "3", larder::no_expiry);
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

BACKEND_TEST_CASE("Hostile keys and values round-trip exactly", "[backend]") {
    TestType fx;
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
    for (std::size_t i = 0; i < keys.size(); ++i) REQUIRE(many[i]->bytes == keys[i]);
    for (const auto& key : keys) REQUIRE(fx.backend.del(key));
    for (const auto& key : keys) REQUIRE_FALSE(fx.backend.get(key));
}

BACKEND_TEST_CASE("Concurrent increments are atomic", "[backend][concurrency]") {
    TestType fx;
    std::vector<std::thread> threads;
    for (int t = 0; t < 8; ++t) {
        threads.emplace_back([&] {
            for (int i = 0; i < 200; ++i) fx.backend.increment("counter", 1);
        });
    }
    for (auto& t : threads) t.join();
    REQUIRE(fx.backend.get("counter")->bytes == "1600");
}

BACKEND_TEST_CASE("Exactly one of many concurrent set_if_absent wins", "[backend][concurrency]") {
    TestType fx;
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
