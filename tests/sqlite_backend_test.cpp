// The SQLite backend of examples/sqlite_backend (the one docs/backends.md walks through):
// the conformance suite, and CacheAside over it. Built when CMake finds SQLite.
#if defined(LARDER_TEST_HAVE_SQLITE)

#include <larder/core/clock.hpp>
#include <larder/policy/cache_aside.hpp>
#include <larder/policy/write_behind.hpp>
#include <larder/testing/backend_conformance.hpp>

#include <unistd.h>

#include <cstdio>
#include <filesystem>
#include <fstream>
#include <map>
#include <optional>
#include <span>
#include <sstream>
#include <string>
#include <string_view>

#include "sqlite_backend/sqlite_backend.hpp"

using namespace std::chrono_literals;

// doc-fixture-begin
struct SqliteFixture {
    static constexpr bool manual_time = true;

    larder::ManualClock clock;
    SqliteBackend backend{":memory:", clock};

    void raw_set(std::string_view key, std::string_view bytes) {
        backend.set(key, bytes, larder::no_expiry);
    }
    void advance(larder::Millis by) { clock.advance(by); }
};

LARDER_BACKEND_CONFORMANCE_TESTS(SqliteFixture, "[sqlite]");
// doc-fixture-end

namespace {

std::string read_file(const std::string& path) {
    std::ifstream in(path, std::ios::binary);
    REQUIRE(in);
    std::stringstream s;
    s << in.rdbuf();
    return s.str();
}

// The text from the line after the one holding `begin` up to `end`.
std::string between(const std::string& text, const std::string& begin, const std::string& end) {
    const auto b = text.find(begin);
    REQUIRE(b != std::string::npos);
    const auto from = text.find('\n', b) + 1;
    const auto e = text.find(end, from);
    REQUIRE(e != std::string::npos);
    return text.substr(from, e - from);
}

// The text from `marker` on.
std::string after(const std::string& text, const std::string& marker) {
    const auto at = text.find(marker);
    REQUIRE(at != std::string::npos);
    return text.substr(at);
}

}  // namespace

TEST_CASE("docs/backends.md shows the SQLite backend and its fixture as they are",
          "[sqlite][docs]") {
    const std::string dir = LARDER_TEST_SOURCE_DIR;
    const std::string doc = read_file(dir + "/../docs/backends.md");
    const std::string shown_backend = between(
        after(doc, "<!-- examples/sqlite_backend/sqlite_backend.hpp -->"), "```cpp", "```\n");
    REQUIRE(shown_backend == read_file(dir + "/../examples/sqlite_backend/sqlite_backend.hpp"));
    const std::string shown_fixture =
        between(after(doc, "<!-- tests/sqlite_backend_test.cpp -->"), "```cpp", "```\n");
    const std::string fixture = between(read_file(dir + "/sqlite_backend_test.cpp"),
                                        "// doc-fixture-begin", "// doc-fixture-end");
    REQUIRE(shown_fixture.ends_with(fixture));
}

TEST_CASE("CacheAside over SqliteBackend", "[sqlite]") {
    larder::ManualClock clock;
    SqliteBackend store(":memory:", clock);
    larder::CacheAside<std::string, SqliteBackend> cache(
        store, {.key_prefix = "users:", .ttl = 5min, .clock = &clock});
    int loads = 0;
    auto load = [&] {
        ++loads;
        return std::optional<std::string>("ada");
    };

    REQUIRE(cache.get("1", load) == "ada");
    REQUIRE(cache.get("1", load) == "ada");
    REQUIRE(loads == 1);
    REQUIRE(store.get(cache.full_key("1")));  // the entry is a row of the table

    cache.invalidate("1");
    REQUIRE(cache.get("1", load) == "ada");
    REQUIRE(loads == 2);

    clock.advance(6min);  // past the TTL: loaded again
    REQUIRE(cache.get("1", load) == "ada");
    REQUIRE(loads == 3);
}

TEST_CASE("SqliteBackend: two connections to one file share the entries", "[sqlite]") {
    const std::string path = (std::filesystem::temp_directory_path() /
                              ("larder_sqlite_" + std::to_string(::getpid()) + ".db"))
                                 .string();
    std::remove(path.c_str());
    {
        SqliteBackend a(path), b(path);
        a.set("k", "v", 10s);
        REQUIRE(b.get("k")->bytes == "v");
        REQUIRE_FALSE(b.set_if_absent("k", "w", 10s));
        REQUIRE(b.compare_and_delete("k", "v"));
        REQUIRE_FALSE(a.get("k"));
    }
    std::remove(path.c_str());
}

TEST_CASE("WriteBehind over SqliteBackend, with the queue in process memory", "[sqlite]") {
    larder::ManualClock clock;
    SqliteBackend store(":memory:", clock);
    std::map<std::string, std::string> database;
    larder::WriteBehindOptions o;
    o.start_flusher = false;
    o.cache.clock = &clock;
    larder::WriteBehind<std::string, SqliteBackend> wb(
        store,
        [&](std::span<const larder::DirtyEntry<std::string>> batch) {
            for (const auto& e : batch) database[e.key] = e.value;
            return larder::BatchResult{};
        },
        o);
    (void)wb.put("k", "v");
    REQUIRE(database.empty());
    (void)wb.flush();
    REQUIRE(database["k"] == "v");
}

#endif  // LARDER_TEST_HAVE_SQLITE
