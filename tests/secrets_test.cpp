// No message carries a secret: Redis URLs and their parse errors, connect and AUTH failures,
// and larder-lab's argument errors never repeat a password, neither whole, nor percent-
// encoded, nor the piece of it that a misread URL put somewhere else.
//
// Every password here is made of distinctive pieces (runs of letters and digits that no
// message would contain by chance), and a message fails a check when it contains any piece:
// a parser that cut a password at '?' and printed the rest would otherwise slip through.

// The URL parser needs no hiredis; RedisBackend does: under CMake only when larder::redis
// was found, compiled by hand whenever hiredis is there.
#if __has_include(<hiredis/hiredis.h>) && \
    (defined(LARDER_TEST_HAVE_REDIS) || !defined(LARDER_TEST_SOURCE_DIR))
#define LARDER_SECRETS_TEST_BACKEND 1
#include <larder/backend/redis.hpp>
#endif
#include <larder/backend/redis/options.hpp>
#include <larder/backend/redis/url.hpp>
#include <larder/core/error.hpp>

#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <chrono>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "support/catch.hpp"
#include "support/larder_lab.hpp"
#if defined(LARDER_TEST_HAVE_REDIS_SERVER) || defined(LARDER_TEST_REDIS_SERVER)
#include "support/redis_server.hpp"
#endif

using namespace std::chrono_literals;
using larder::ConfigError;
using larder::RedisOptions;

namespace {

bool contains(std::string_view text, std::string_view part) {
    return text.find(part) != std::string_view::npos;
}

bool is_alnum(char c) {
    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9');
}

/// The runs of 5+ letters and digits in `secret`: what a message must not contain.
std::vector<std::string> pieces(std::string_view secret) {
    std::vector<std::string> out;
    std::string run;
    for (std::size_t i = 0; i <= secret.size(); ++i) {
        if (i < secret.size() && is_alnum(secret[i])) {
            run.push_back(secret[i]);
            continue;
        }
        if (run.size() >= 5) out.push_back(run);
        run.clear();
    }
    return out;
}

/// The piece of `secret` that `text` contains, if any (case-insensitively: a scheme is
/// lower-cased before it is printed).
std::optional<std::string> leaked(std::string_view text, std::string_view secret) {
    auto lower = [](std::string_view s) {
        std::string out(s);
        for (char& c : out) {
            if (c >= 'A' && c <= 'Z') c = static_cast<char>(c - 'A' + 'a');
        }
        return out;
    };
    const std::string haystack = lower(text);
    for (const auto& piece : pieces(secret)) {
        if (contains(haystack, lower(piece))) return piece;
    }
    return std::nullopt;
}

template <class E, class F>
std::string message_of(F&& f) {
    try {
        f();
    } catch (const E& e) {
        return e.what();
    }
    FAIL("expected an exception");
    return {};
}

/// A loopback port that refuses connections for as long as this object lives: the socket
/// is bound but never listens, so nothing else can take the port meanwhile.
class ClosedPort {
public:
    ClosedPort() {
        fd_ = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
        REQUIRE(fd_ >= 0);
        sockaddr_in a{};
        a.sin_family = AF_INET;
        a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
        socklen_t len = sizeof a;
        REQUIRE(::bind(fd_, reinterpret_cast<sockaddr*>(&a), sizeof a) == 0);
        REQUIRE(::getsockname(fd_, reinterpret_cast<sockaddr*>(&a), &len) == 0);
        port_ = ntohs(a.sin_port);
    }
    ClosedPort(const ClosedPort&) = delete;
    ClosedPort& operator=(const ClosedPort&) = delete;
    ~ClosedPort() { ::close(fd_); }
    [[nodiscard]] int port() const { return port_; }

private:
    int fd_ = -1;
    int port_ = 0;
};

}  // namespace

TEST_CASE("A malformed Redis URL's ConfigError never repeats its password", "[security]") {
    struct Row {
        std::string url;
        std::string password;  ///< as written in the URL; its pieces must not be printed
    };
    const std::vector<Row> rows{
        // A raw '?' in the password, and a bad port: the old parser cut the query at the
        // first '?' and named "Xylo9Pw@host:abc" as an unknown parameter.
        {"redis://:Zq7Secret?Xylo9Pw@host:abc", "Zq7Secret?Xylo9Pw"},
        {"redis://app:Zq7Secret?Xylo9Pw@[::1", "Zq7Secret?Xylo9Pw"},
        {"redis://app:Zq7Secret?Xylo9Pw&Quark5Pw@host:0", "Zq7Secret?Xylo9Pw&Quark5Pw"},
        {"unix://app:Zq7Secret?Xylo9Pw@/run/redis.sock?timeout=1", "Zq7Secret?Xylo9Pw"},
        // A URL that lost its host (and with it the '@'): the password is all that is left.
        {"redis://app:Zq7Secret?Xylo9Pw", "Zq7Secret?Xylo9Pw"},
        {"redis://:Zq7Secret?Xylo9Pw=1", "Zq7Secret?Xylo9Pw"},
        {"redis://:Zq7Secret", "Zq7Secret"},
        {"redis://app:Zq7Secret/Xylo9Pw", "Zq7Secret/Xylo9Pw"},
        // Raw '#', '/', '@' in a password, and a URL that is wrong after it.
        {"redis://:Zq7Secret#Xylo9Pw@host/x", "Zq7Secret#Xylo9Pw"},
        {"redis://:Zq7Secret/Xylo9Pw@host:99999", "Zq7Secret/Xylo9Pw"},
        {"redis://:Zq7Secret@Xylo9Pw@host/1/2", "Zq7Secret@Xylo9Pw"},
        // Percent-encoded: neither the encoded nor the decoded form is printed.
        {"redis://:Zq7Secret-with-%40Xylo9Pw@host:0", "Zq7Secret-with-%40Xylo9Pw"},
        {"redis://:Zq7Secret%3FXylo9Pw%zz@host", "Zq7Secret%3FXylo9Pw%zz"},
        {"redis://app:Zq7Secret%3FXylo9Pw@host?db=1&db=2", "Zq7Secret%3FXylo9Pw"},
        // The password where a scheme belongs.
        {"Zq7Secret://host", "Zq7Secret"},
        {"Zq7Secret@Xylo9Pw://host", "Zq7Secret@Xylo9Pw"},
        {"rediss://:Zq7Secret?Xylo9Pw@host", "Zq7Secret?Xylo9Pw"},
    };
    for (const auto& row : rows) {
        INFO(row.url);
        const std::string msg =
            message_of<ConfigError>([&] { (void)RedisOptions::from_url(row.url); });
        INFO(msg);
        CHECK(contains(msg, "invalid Redis URL"));
        CHECK(leaked(msg, row.password) == std::nullopt);
    }
}

TEST_CASE("Raw '?', '@', '/', '#' in a password parse; a userinfo without ':' is the password",
          "[security]") {
    struct Row {
        std::string url;
        std::string host;
        int port;
        std::string user;
        std::string password;
        int db;
    };
    const std::vector<Row> rows{
        {"redis://:S3cr3t?x@y@cache:6380/2", "cache", 6380, "", "S3cr3t?x@y", 2},
        {"redis://app:S3cr3t?x@y@cache?db=3", "cache", 6379, "app", "S3cr3t?x@y", 3},
        {"redis://:pa/ss#w:rd@cache", "cache", 6379, "", "pa/ss#w:rd", 0},
        {"redis://:pw-with-%40%3F%25@cache", "cache", 6379, "", "pw-with-@?%", 0},
        {"redis://app:p%3Aw@[::1]:7000/1", "::1", 7000, "app", "p:w", 1},
        // No ':' in the userinfo: a password, as redis-cli and Lettuce read it.
        {"redis://S3cr3t@cache", "cache", 6379, "", "S3cr3t", 0},
        {"redis://S3cr3t%3Fx@cache:6380", "cache", 6380, "", "S3cr3t?x", 0},
        {"redis://app:@cache", "cache", 6379, "app", "", 0},
    };
    for (const auto& row : rows) {
        INFO(row.url);
        const RedisOptions o = RedisOptions::from_url(row.url);
        CHECK(o.host == row.host);
        CHECK(o.port == row.port);
        CHECK(o.user == row.user);
        CHECK(o.password == row.password);
        CHECK(o.db == row.db);
    }
    const RedisOptions u = RedisOptions::from_url("unix://app:S3cr3t?x@/run/a@b.sock?db=4");
    CHECK(u.unix_socket == "/run/a@b.sock");
    CHECK(u.user == "app");
    CHECK(u.password == "S3cr3t?x");
    CHECK(u.db == 4);
    const RedisOptions bare = RedisOptions::from_url("unix://S3cr3t@/run/redis.sock");
    CHECK(bare.user.empty());
    CHECK(bare.password == "S3cr3t");
}

TEST_CASE("redact_url hides the password and keeps where and as whom", "[security]") {
    struct Row {
        std::string url;
        std::string redacted;
    };
    const std::vector<Row> rows{
        {"redis://app:S3cr3t@cache:6379/2", "redis://app:***@cache:6379/2"},
        {"redis://:S3cr3t@cache", "redis://:***@cache"},
        {"redis://S3cr3t@cache", "redis://:***@cache"},
        {"redis://app:S3cr3t?x@y@cache:6380/1", "redis://app:***@cache:6380/1"},
        {"redis://app:pw-with-%40@cache", "redis://app:***@cache"},
        {"unix://app:S3cr3t@/run/redis.sock?db=1", "unix://app:***@/run/redis.sock?db=1"},
        {"redis://cache:6379/0", "redis://cache:6379/0"},
        {"redis://[::1]:6379", "redis://[::1]:6379"},
        {"redis://cache?password=S3cr3t&db=2", "redis://cache?***&db=2"},
        {"redis://cache/0#S3cr3t", "redis://cache/0#***"},
        // Malformed input is redacted too: a host lost, a scheme lost.
        {"redis://app:S3cr3t", "redis://app:***"},
        {"redis://:S3cr3t/0", "redis://:***/0"},
        {"app:S3cr3t@cache:6379", "app:***@cache:6379"},
        {"", ""},
    };
    for (const auto& row : rows) {
        INFO(row.url);
        CHECK(larder::redact_url(row.url) == row.redacted);
    }
}

#if defined(LARDER_SECRETS_TEST_BACKEND)

using larder::ConnectionError;
using larder::RedisBackend;

TEST_CASE("An unreachable Redis: the ConnectionError names the address, never the password",
          "[security]") {
    const ClosedPort closed;
    const std::string where = "127.0.0.1:" + std::to_string(closed.port());
    const std::string password = "Zq7Secret?Xylo9Pw";
    const std::string url = "redis://app:" + password + "@" + where + "/1";

    SECTION("require_connection, at construction") {
        const std::string msg = message_of<ConnectionError>([&] {
            RedisOptions o = RedisOptions::from_url(url);
            o.require_connection = true;
            RedisBackend b(std::move(o));
        });
        INFO(msg);
        CHECK(contains(msg, where));
        CHECK(leaked(msg, password) == std::nullopt);
    }
    SECTION("lazily, on the first calls and while reconnecting is backed off") {
        RedisOptions o = RedisOptions::from_url(url);
        o.reconnect_backoff = 60s;  // the second call fails fast, naming the last error
        RedisBackend backend(std::move(o));
        for (int i = 0; i < 2; ++i) {
            const std::string msg = message_of<ConnectionError>([&] { (void)backend.get("k"); });
            INFO(msg);
            CHECK(contains(msg, where));
            CHECK(leaked(msg, password) == std::nullopt);
        }
    }
}

#if defined(LARDER_TEST_HAVE_REDIS_SERVER) || defined(LARDER_TEST_REDIS_SERVER)

TEST_CASE("A wrong password to a requirepass server: the ConnectionError names no password",
          "[security][redis]") {
    larder::test::RedisServerOptions so;
    so.requirepass = "Right7Password";
    larder::test::RedisServer server(so);
    REQUIRE(server.command({"ACL", "SETUSER", "app", "on", ">App7Password", "~*", "+@all"}) ==
            "OK");
    const std::string where = server.host() + ":" + std::to_string(server.port());

    auto fails_without = [&](const std::string& url, const std::string& password) {
        INFO(url);
        RedisOptions o = RedisOptions::from_url(url);
        o.require_connection = true;
        const std::string msg = message_of<ConnectionError>([&] { RedisBackend b(o); });
        INFO(msg);
        CHECK(contains(msg, "authentication failed"));
        CHECK(contains(msg, where));
        CHECK(leaked(msg, password) == std::nullopt);
        return msg;
    };
    SECTION("the password alone, written without ':' (the form redis-cli reads)") {
        fails_without("redis://Zq7WrongPw@" + where, "Zq7WrongPw");
    }
    SECTION("the password alone, with a raw '?' and '@'") {
        fails_without("redis://:Zq7Wrong?Xylo9@Pw@" + where, "Zq7Wrong?Xylo9@Pw");
    }
    SECTION("an ACL user: the user is named, the password is not") {
        const std::string msg = fails_without("redis://app:Zq7WrongPw@" + where, "Zq7WrongPw");
        CHECK(contains(msg, "'app'"));
    }
    SECTION("lazily, on a call") {
        RedisBackend backend(RedisOptions::from_url("redis://Zq7WrongPw@" + where));
        const std::string msg = message_of<ConnectionError>([&] { (void)backend.get("k"); });
        INFO(msg);
        CHECK(contains(msg, "authentication failed"));
        CHECK(leaked(msg, "Zq7WrongPw") == std::nullopt);
    }
    SECTION("the right password in each form connects") {
        for (const std::string& url :
             {"redis://Right7Password@" + where, "redis://:Right7Password@" + where,
              "redis://app:App7Password@" + where + "/1"}) {
            INFO(url);
            RedisOptions o = RedisOptions::from_url(url);
            o.require_connection = true;
            RedisBackend backend(std::move(o));
            backend.set("k", "v", 10s);
            CHECK(backend.get("k")->bytes == "v");
        }
    }
}

#endif  // a redis-server

#endif  // RedisBackend

#if defined(LARDER_TEST_LARDER_LAB)

using larder::test::run_lab;

TEST_CASE("larder-lab's argument errors repeat no password, on stdout or stderr", "[security]") {
    const std::string password = "Zq7Secret?Xylo9Pw";
    const ClosedPort closed;
    const std::string where = "127.0.0.1:" + std::to_string(closed.port());
    const std::vector<std::vector<std::string>> bad{
        // a URL without --backend
        {"redis://:" + password + "@" + where},
        // a URL whose password holds '?' (the old parser printed the rest as a parameter)
        {"--backend", "redis://:" + password + "@" + where + "/x"},
        {"--backend=redis://app:" + password + "@" + where + "/1/2"},
        // a password where another value belongs
        {"--backend", password + "@" + where},
        {"--keys", password},
        {"--skew", password},
        {"--config", password},
        {"--compare", "cache-aside," + password},
        {"--compare", password + ",,cache-aside"},
        {"--pass=" + password},
        {"-" + password},
        // a valid URL with nothing listening: the connect error names the address only
        {"--backend", "redis://app:" + password + "@" + where + "/1", "--quiet"},
        {"--backend", "redis://" + password + "@" + where, "--quiet"},
    };
    for (const auto& args : bad) {
        std::string shown;
        for (const auto& a : args) shown += a + " ";
        INFO("larder-lab " << shown);
        const larder::test::LabRun run = run_lab(args);
        INFO(run.output);
        CHECK(run.status == 2);
        CHECK(contains(run.output, "larder-lab"));
        CHECK(leaked(run.output, password) == std::nullopt);
    }
}

#endif  // larder-lab built
