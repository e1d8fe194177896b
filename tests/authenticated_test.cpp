// Authenticated<B>: whoever can write to the shared store but lacks the secret cannot plant
// values, "not found" entries, leases, tag versions or write-behind queue entries. Each
// attack below is one that works on an undecorated backend (the planted bytes are made by
// an ordinary cache over the raw backend, as an attacker with store access would); with the
// decorator the planted bytes read as corrupt and are replaced. On every backend.
#if defined(LARDER_TEST_HAVE_CRYPTO) && defined(LARDER_TEST_HAVE_JSON)

#include <larder/backend/authenticated.hpp>
#include <larder/codec/json.hpp>
#include <larder/larder.hpp>
#include <larder/policy/write_behind.hpp>

#include <atomic>
#include <fstream>
#include <mutex>
#include <sstream>
#include <string>
#include <vector>

#include "support/backends.hpp"

#if defined(LARDER_TEST_REDIS_BACKEND)
#include <larder/backend/redis/write_behind_store.hpp>
#endif

using namespace std::chrono_literals;
using larder::Authenticated;
using larder::AuthenticationOptions;
using larder::MacKey;

namespace {

struct User {
    std::int64_t id = 0;
    std::string name;
    bool admin = false;
    bool operator==(const User&) const = default;
};
NLOHMANN_DEFINE_TYPE_NON_INTRUSIVE(User, id, name, admin)

const std::string secret_1(32, '\x11');
const std::string secret_2(32, '\x22');

AuthenticationOptions keys_1() {
    return {.keys = {MacKey{1, secret_1}}, .write_key_id = 1};
}

// A loader that counts its calls and returns the database's row.
struct Db {
    std::atomic<int> calls{0};
    auto loader(std::optional<User> row) {
        return [this, row] {
            ++calls;
            return row;
        };
    }
};

const User alice{42, "alice", false};
const User forged{42, "alice", true};

}  // namespace

BACKEND_TEST_CASE("A planted value with a valid envelope is a corrupt miss, replaced by the row",
                  "[security]") {
    TestType fx;
    using B = decltype(fx.backend);
    // The attacker: an ordinary cache on the same store, writing admin: true.
    larder::CacheAside<User, B> attacker(fx.backend, larder::test::options_for(fx));
    attacker.set("42", forged);
    const std::string planted = fx.backend.get(attacker.full_key("42"))->bytes;

    Authenticated<B> auth(fx.backend, keys_1());
    larder::CacheAside<User, Authenticated<B>> users(auth, larder::test::options_for(fx));
    Db db;
    REQUIRE(users.get("42", db.loader(alice)) == alice);
    REQUIRE(db.calls == 1);
    REQUIRE(users.stats().corrupt_values == 1);
    REQUIRE(auth.auth_stats().rejected_reads >= 1);

    // The planted bytes were replaced by the loaded row: a hit now.
    REQUIRE(fx.backend.get(attacker.full_key("42"))->bytes != planted);
    REQUIRE(users.get("42", db.loader(forged)) == alice);
    REQUIRE(db.calls == 1);
}

BACKEND_TEST_CASE("A planted \"not found\" without TTL is replaced by the row, with a TTL",
                  "[security]") {
    TestType fx;
    using B = decltype(fx.backend);
    // The attacker caches "no such user" and copies the bytes back without a TTL.
    larder::CacheAside<User, B> attacker(fx.backend, larder::test::options_for(fx));
    Db nobody;
    REQUIRE_FALSE(attacker.get("42", nobody.loader(std::nullopt)));
    const std::string not_found = fx.backend.get(attacker.full_key("42"))->bytes;
    fx.raw_set(attacker.full_key("42"), not_found);
    REQUIRE_FALSE(fx.backend.get(attacker.full_key("42"))->ttl);

    Authenticated<B> auth(fx.backend, keys_1());
    larder::CacheAside<User, Authenticated<B>> users(auth, larder::test::options_for(fx));
    Db db;
    REQUIRE(users.get("42", db.loader(alice)) == alice);
    REQUIRE(db.calls == 1);
    REQUIRE(users.stats().negative_hits == 0);
    REQUIRE(users.stats().corrupt_values == 1);
    const auto stored = fx.backend.get(attacker.full_key("42"));
    REQUIRE(stored);
    REQUIRE(stored->bytes != not_found);
    REQUIRE(stored->ttl);  // the replacement expires like any entry
    REQUIRE(users.get("42", db.loader(std::nullopt)) == alice);
    REQUIRE(db.calls == 1);
}

BACKEND_TEST_CASE("A planted lease does not make a Lock reader wait: it loads and fills",
                  "[security]") {
    TestType fx;
    using B = decltype(fx.backend);
    // A lease no loader holds, without a TTL: on an undecorated store every Lock reader
    // waits max_wait on it, loads without filling, and the next reader waits again.
    Authenticated<B> auth(fx.backend, keys_1());
    larder::CacheAside<User, Authenticated<B>, larder::Lock> users(
        auth, larder::test::options_for(fx), larder::Lock({.max_wait = 2s}));
    fx.raw_set(users.full_key("42"),
               larder::envelope::make_lease(larder::random_token(), fx.time_source()->now()));
    Db db;
    REQUIRE(users.get("42", db.loader(alice)) == alice);
    REQUIRE(db.calls == 1);
    const auto s = users.stats();
    REQUIRE(s.lease_waits == 0);  // never waited on the planted lease
    REQUIRE(s.corrupt_values == 1);
    REQUIRE(s.fills == 1);  // the reader took the key over and filled it
    // The key holds the loaded value: the next reader hits.
    REQUIRE(users.get("42", db.loader(forged)) == alice);
    REQUIRE(db.calls == 1);
    REQUIRE(auth.get(users.full_key("42")));
    REQUIRE(larder::envelope::parse(auth.get(users.full_key("42"))->bytes)->header.kind ==
            larder::EntryKind::value);
}

BACKEND_TEST_CASE("A planted tag version is replaced, and cannot revive an invalidated entry",
                  "[security]") {
    TestType fx;
    using B = decltype(fx.backend);
    Authenticated<B> auth(fx.backend, keys_1());
    larder::CacheAside<User, Authenticated<B>> users(auth, larder::test::options_for(fx));
    const std::vector<std::string> tags{"team:7"};
    Db db;
    REQUIRE(users.get("42", tags, db.loader(alice)) == alice);
    // The version the entry was stamped with, as the attacker can read it from the store.
    const std::string tag_key = users.tag_key("team:7");
    const std::string stamped = auth.get(tag_key)->bytes;
    users.invalidate_tag("team:7");
    // Writing the old version back (unsealed) would revive the invalidated entry on an
    // undecorated store.
    fx.raw_set(tag_key, stamped);
    REQUIRE(users.get("42", tags, db.loader(User{42, "alice v2", false})) ==
            User{42, "alice v2", false});
    REQUIRE(db.calls == 2);
    // The unsealed version was replaced by a sealed one that no old entry carries.
    const auto now = auth.get(tag_key);
    REQUIRE(now);
    REQUIRE_FALSE(auth.is_rejected(now->bytes));
    REQUIRE(now->bytes != stamped);
}

WRITE_BEHIND_TEST_CASE(
    "A planted write-behind entry with key ../../etc never reaches the batch writer",
    "[security]") {
    TestType fx;
    using B = decltype(fx.backend);
    Authenticated<B> auth(fx.backend, keys_1());
    std::mutex mutex;
    std::vector<std::string> written;
    auto writer = [&](std::span<const larder::DirtyEntry<User>> batch) {
        std::lock_guard lock(mutex);
        for (const auto& e : batch) written.push_back(e.key);
        return larder::BatchResult{};
    };
    larder::WriteBehindOptions o;
    o.name = "users";
    o.start_flusher = false;
    o.cache.clock = fx.time_source();
    o.cache.log.level = larder::LogLevel::off;
    larder::WriteBehind<User, Authenticated<B>> wb(auth, writer, o);

    // A well-formed entry, as an ordinary cache encodes it, queued under a hostile key
    // straight into the shared queue (what an attacker with store access can do).
    larder::CacheAside<User, B> attacker(fx.backend, larder::test::options_for(fx));
    attacker.set("x", forged);
    const std::string envelope = fx.backend.get(attacker.full_key("x"))->bytes;
    REQUIRE(wb.store().inner().put("../../etc", envelope, 0).status == larder::PutStatus::stored);
    wb.put("42", alice);

    const auto report = wb.flush();
    REQUIRE(written == std::vector<std::string>{"42"});
    REQUIRE(report.flushed == 1);
    REQUIRE(auth.auth_stats().rejected_queue_entries == 1);
    // Dead-lettered, with the reason, and it stays out of the writer's way.
    const auto dead = wb.list_dead();
    REQUIRE(dead.size() == 1);
    REQUIRE(dead[0].key == "../../etc");
    REQUIRE_FALSE(dead[0].value);
    REQUIRE(dead[0].error.find("authentication") != std::string::npos);
    REQUIRE(wb.flush().claimed == 0);
    REQUIRE(written == std::vector<std::string>{"42"});
}

BACKEND_TEST_CASE("Rotation: key 1's values read while key 2 writes, rejected once 1 is removed",
                  "[security]") {
    TestType fx;
    using B = decltype(fx.backend);
    Db db;
    {
        Authenticated<B> auth(fx.backend, keys_1());
        larder::CacheAside<User, Authenticated<B>> users(auth, larder::test::options_for(fx));
        REQUIRE(users.get("42", db.loader(alice)) == alice);
        auth.set("plain", "written under key 1", larder::no_expiry);
    }
    REQUIRE(db.calls == 1);

    // Key 2 added as the write key; key 1 still accepted.
    Authenticated<B> both(fx.backend,
                          {.keys = {MacKey{1, secret_1}, MacKey{2, secret_2}}, .write_key_id = 2});
    {
        larder::CacheAside<User, Authenticated<B>> users(both, larder::test::options_for(fx));
        REQUIRE(users.get("42", db.loader(forged)) == alice);
        REQUIRE(db.calls == 1);
        REQUIRE(users.stats().corrupt_values == 0);
        users.set("43", User{43, "bob", false});
    }
    // Compare operations find the key a value was sealed with.
    REQUIRE(both.get("plain")->bytes == "written under key 1");
    REQUIRE(both.compare_and_set("plain", "written under key 1", "rewritten", larder::no_expiry));
    REQUIRE(both.get("plain")->bytes == "rewritten");

    // Key 1 removed: what it sealed is rejected, what key 2 sealed still reads.
    Authenticated<B> only_2(fx.backend, {.keys = {MacKey{2, secret_2}}, .write_key_id = 2});
    larder::CacheAside<User, Authenticated<B>> users(only_2, larder::test::options_for(fx));
    REQUIRE(users.get("42", db.loader(User{42, "alice from db", false})) ==
            User{42, "alice from db", false});
    REQUIRE(db.calls == 2);
    REQUIRE(users.stats().corrupt_values == 1);
    REQUIRE(users.get("43", db.loader(std::nullopt)) == User{43, "bob", false});
    REQUIRE(db.calls == 2);
    REQUIRE(only_2.get("plain")->bytes == "rewritten");
}

BACKEND_TEST_CASE("A value sealed for one key does not verify under another", "[security]") {
    TestType fx;
    using B = decltype(fx.backend);
    Authenticated<B> auth(fx.backend, keys_1());
    auth.set("user:1", "role=admin", larder::no_expiry);
    // Copied byte for byte to another key: the MAC covers the key.
    fx.raw_set("user:2", fx.backend.get("user:1")->bytes);
    const auto copied = auth.get("user:2");
    REQUIRE(copied);
    REQUIRE(auth.is_rejected(copied->bytes));
    REQUIRE(auth.auth_stats().rejected_reads == 1);
    // The rejected form still removes exactly the bytes that were read.
    REQUIRE(auth.compare_and_delete("user:2", copied->bytes));
    REQUIRE_FALSE(fx.backend.get("user:2"));
    REQUIRE(auth.get("user:1")->bytes == "role=admin");
}

BACKEND_TEST_CASE("increment on a sealed counter adds, keeps the TTL and refuses planted bytes",
                  "[security]") {
    TestType fx;
    using B = decltype(fx.backend);
    Authenticated<B> auth(fx.backend, keys_1());
    REQUIRE(auth.increment("n", 5) == 5);
    REQUIRE(auth.increment("n", -7) == -2);
    REQUIRE(auth.get("n")->bytes == "-2");
    auth.set("t", "10", 60s);
    REQUIRE(auth.increment("t", 1) == 11);
    REQUIRE(fx.backend.get("t")->ttl);
    fx.raw_set("p", "100");  // an integer, but not sealed
    REQUIRE_THROWS_AS(auth.increment("p", 1), larder::BackendError);
}

// ---- the example of docs/authenticated-entries.md, compiled and run here ---------------

// doc-example-begin
#include <larder/backend/authenticated.hpp>
#include <larder/backend/memory.hpp>
#include <larder/codec/json.hpp>
#include <larder/policy/cache_aside.hpp>

namespace {

struct Account {
    std::int64_t id = 0;
    bool admin = false;
};
NLOHMANN_DEFINE_TYPE_NON_INTRUSIVE(Account, id, admin)

int run_example() {
    larder::MemoryBackend store;  // or a RedisBackend
    // Secrets come from your secret store; at least 16 random bytes, 32 recommended.
    larder::Authenticated<larder::MemoryBackend> sealed(
        store, {.keys = {{.id = 1, .secret = std::string(32, 'k')}}, .write_key_id = 1});
    larder::CacheAside<Account, larder::Authenticated<larder::MemoryBackend>> accounts(sealed);

    auto account = accounts.get("7", [] { return std::optional<Account>(Account{7, false}); });

    // Bytes written behind the cache's back fail verification: a miss, then replaced.
    store.set(accounts.full_key("7"), "planted", larder::no_expiry);
    account = accounts.get("7", [] { return std::optional<Account>(Account{7, false}); });
    return account && !account->admin && accounts.stats().corrupt_values == 1 ? 0 : 1;
}

}  // namespace
// doc-example-end

TEST_CASE("The example of docs/authenticated-entries.md runs, and the page shows it verbatim",
          "[security][docs]") {
    REQUIRE(run_example() == 0);
    auto read = [](const std::string& path) {
        std::ifstream in(path);
        REQUIRE(in);
        std::stringstream s;
        s << in.rdbuf();
        return s.str();
    };
    auto between = [](const std::string& text, const std::string& begin, const std::string& end) {
        const auto b = text.find(begin);
        REQUIRE(b != std::string::npos);
        const auto from = text.find('\n', b) + 1;
        const auto e = text.find(end, from);
        REQUIRE(e != std::string::npos);
        return text.substr(from, e - from);
    };
    const std::string source =
        read(std::string(LARDER_TEST_SOURCE_DIR) + "/authenticated_test.cpp");
    const std::string doc =
        read(std::string(LARDER_TEST_SOURCE_DIR) + "/../docs/authenticated-entries.md");
    REQUIRE(between(doc, "```cpp", "```") ==
            between(source, "// doc-example-begin", "// doc-example-end"));
}

#endif
