// Self-tests for the Redis test fixtures: every integration test builds on RedisServer and
// TcpProxy, so their behaviour under kill/restart/fault injection is pinned down here.
#include "support/catch.hpp"
#include "support/redis_server.hpp"
#include "support/tcp_proxy.hpp"

#include <cerrno>
#include <chrono>
#include <csignal>
#include <exception>
#include <filesystem>
#include <string>
#include <string_view>
#include <thread>
#include <vector>

#include <netinet/in.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <sys/un.h>
#include <unistd.h>

using namespace std::chrono_literals;
using larder::test::RedisServer;
using larder::test::RedisServerOptions;
using larder::test::TcpProxy;

namespace {

enum class ReadOutcome { line, timeout, closed, reset };

// Deliberately independent of the fixtures' own client: blocking socket, SO_RCVTIMEO, the way
// a client library would see the wire.
class RawClient {
public:
    explicit RawClient(int port, std::chrono::milliseconds recv_timeout = 200ms) {
        fd_ = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
        REQUIRE(fd_ >= 0);
        sockaddr_in addr{};
        addr.sin_family = AF_INET;
        addr.sin_port = htons(static_cast<std::uint16_t>(port));
        addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
        REQUIRE(::connect(fd_, reinterpret_cast<const sockaddr*>(&addr), sizeof addr) == 0);
        set_recv_timeout(recv_timeout);
    }

    explicit RawClient(const std::string& unix_path) {
        fd_ = ::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
        REQUIRE(fd_ >= 0);
        sockaddr_un addr{};
        addr.sun_family = AF_UNIX;
        REQUIRE(unix_path.size() < sizeof addr.sun_path);
        unix_path.copy(addr.sun_path, unix_path.size());
        REQUIRE(::connect(fd_, reinterpret_cast<const sockaddr*>(&addr), sizeof addr) == 0);
        set_recv_timeout(1000ms);
    }

    ~RawClient() { ::close(fd_); }
    RawClient(const RawClient&) = delete;
    RawClient& operator=(const RawClient&) = delete;

    void set_recv_timeout(std::chrono::milliseconds timeout) {
        timeval tv{};
        tv.tv_sec = static_cast<time_t>(timeout.count() / 1000);
        tv.tv_usec = static_cast<suseconds_t>((timeout.count() % 1000) * 1000);
        REQUIRE(::setsockopt(fd_, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv) == 0);
    }

    bool send(std::string_view data) {
        while (!data.empty()) {
            const ssize_t n = ::send(fd_, data.data(), data.size(), MSG_NOSIGNAL);
            if (n <= 0) {
                return false;
            }
            data.remove_prefix(static_cast<std::size_t>(n));
        }
        return true;
    }

    // Reads up to and including the next CRLF; a partial line stays buffered for the next call.
    ReadOutcome read_line(std::string& line) {
        while (true) {
            const std::size_t end = pending_.find("\r\n");
            if (end != std::string::npos) {
                line = pending_.substr(0, end + 2);
                pending_.erase(0, end + 2);
                return ReadOutcome::line;
            }
            char buffer[4096];
            const ssize_t n = ::recv(fd_, buffer, sizeof buffer, 0);
            if (n > 0) {
                pending_.append(buffer, static_cast<std::size_t>(n));
            } else if (n == 0) {
                return ReadOutcome::closed;
            } else if (errno == EAGAIN || errno == EWOULDBLOCK) {
                return ReadOutcome::timeout;
            } else if (errno == ECONNRESET || errno == EPIPE) {
                return ReadOutcome::reset;
            } else if (errno != EINTR) {
                FAIL("recv failed: " << errno);
            }
        }
    }

    // Keeps reading through receive timeouts until something other than a timeout happens.
    ReadOutcome read_line_within(std::string& line, std::chrono::milliseconds limit) {
        const auto deadline = std::chrono::steady_clock::now() + limit;
        ReadOutcome outcome = read_line(line);
        while (outcome == ReadOutcome::timeout && std::chrono::steady_clock::now() < deadline) {
            outcome = read_line(line);
        }
        return outcome;
    }

private:
    int fd_ = -1;
    std::string pending_;
};

constexpr std::string_view ping_request = "*1\r\n$4\r\nPING\r\n";

// Plain substring search instead of Catch matchers, whose names differ between Catch2 v2 and v3.
template <typename Fn>
std::string exception_message(Fn&& fn) {
    try {
        fn();
    } catch (const std::exception& e) {
        return e.what();
    }
    return "<no exception>";
}

bool process_exists(pid_t pid) {
    errno = 0;
    return ::kill(pid, 0) == 0 || errno != ESRCH;
}

}  // namespace

TEST_CASE("RedisServer starts and answers PING", "[redis][support]") {
    RedisServer server;

    CHECK(server.is_running());
    CHECK(server.pid() > 0);
    CHECK(server.port() > 0);
    CHECK(server.host() == "127.0.0.1");
    CHECK(server.url() == "redis://127.0.0.1:" + std::to_string(server.port()));
    CHECK(std::filesystem::is_directory(server.dir()));
    CHECK(server.unix_socket_path().empty());
    CHECK(server.command({"PING"}) == "PONG");
    CHECK(server.ping());
    // Nothing on disk unless persistence is asked for.
    CHECK(server.command({"CONFIG", "GET", "save"}) == "save\n");
    CHECK(server.command({"CONFIG", "GET", "appendonly"}) == "appendonly\nno");
    CHECK(server.command({"CONFIG", "GET", "bind"}) == "bind\n127.0.0.1");

    RawClient raw(server.port());
    REQUIRE(raw.send(ping_request));
    std::string line;
    REQUIRE(raw.read_line_within(line, 2000ms) == ReadOutcome::line);
    CHECK(line == "+PONG\r\n");
}

TEST_CASE("RedisServer command is binary safe and renders every reply type", "[redis][support]") {
    RedisServer server;

    const std::string value("a\0b\r\nc\xff\r\n", 9);
    REQUIRE(value.size() == 9);
    CHECK(server.command({"SET", std::string("k\0ey", 4), value}) == "OK");
    CHECK(server.command({"GET", std::string("k\0ey", 4)}) == value);
    CHECK(server.command({"STRLEN", std::string("k\0ey", 4)}) == "9");
    CHECK(server.command({"GET", "missing"}) == "(nil)");
    CHECK(server.command({"DBSIZE"}) == "1");
    CHECK(server.command({"RPUSH", "list", "x", "y", "z"}) == "3");
    CHECK(server.command({"LRANGE", "list", "0", "-1"}) == "x\ny\nz");
    CHECK(server.command({"LRANGE", "missing", "0", "-1"}).empty());
    CHECK(server.command({"INCR", "list"}).rfind("-WRONGTYPE", 0) == 0);
    CHECK(server.command({"NO-SUCH-COMMAND"}).rfind("-ERR", 0) == 0);

    const larder::test::RespReply reply = server.query({"GET", "missing"});
    CHECK(reply.type == larder::test::RespReply::Type::nil);

    // The fixture must allow DEBUG, which Redis 7 disables by default.
    CHECK(server.command({"DEBUG", "SLEEP", "0"}) == "OK");
    // Short command timeouts turn a slow server into an exception rather than a hang.
    CHECK_THROWS_AS(server.command({"DEBUG", "SLEEP", "0.5"}, 100ms), std::runtime_error);
}

TEST_CASE("RedisServer kill stop and restart keep the port", "[redis][support]") {
    RedisServer server;
    const int port = server.port();
    const pid_t first_pid = server.pid();

    server.kill();
    CHECK_FALSE(server.is_running());
    CHECK(server.pid() == -1);
    CHECK_FALSE(process_exists(first_pid));
    CHECK_FALSE(server.ping());
    CHECK_THROWS_AS(server.command({"PING"}), std::runtime_error);

    server.restart();
    CHECK(server.is_running());
    CHECK(server.port() == port);
    CHECK(server.pid() != first_pid);
    CHECK(server.command({"PING"}) == "PONG");

    server.stop();
    CHECK_FALSE(server.is_running());
    CHECK_FALSE(server.ping());

    server.restart();
    CHECK(server.port() == port);
    CHECK(server.ping());

    // restart() of a live server stops it first.
    const pid_t live_pid = server.pid();
    server.restart();
    CHECK(server.pid() != live_pid);
    CHECK_FALSE(process_exists(live_pid));
    CHECK(server.ping());

    // A server shut down behind the fixture's back is noticed and can be restarted too.
    CHECK_THROWS(server.command({"SHUTDOWN", "NOSAVE"}));
    for (int i = 0; i < 200 && server.is_running(); ++i) {
        std::this_thread::sleep_for(5ms);
    }
    CHECK_FALSE(server.is_running());
    server.restart();
    CHECK(server.ping());
}

TEST_CASE("RedisServer persistence survives kill and restart", "[redis][support]") {
    RedisServer server({.persistence = true});

    CHECK(server.command({"CONFIG", "GET", "appendonly"}) == "appendonly\nyes");
    CHECK(server.command({"SET", "durable", "yes"}) == "OK");
    server.kill();
    server.restart();
    CHECK(server.command({"GET", "durable"}) == "yes");

    RedisServer volatile_server;
    CHECK(volatile_server.command({"SET", "durable", "yes"}) == "OK");
    volatile_server.kill();
    volatile_server.restart();
    CHECK(volatile_server.command({"GET", "durable"}) == "(nil)");
}

TEST_CASE("Two RedisServers run side by side", "[redis][support]") {
    RedisServer first;
    RedisServer second;

    CHECK(first.port() != second.port());
    CHECK(first.dir() != second.dir());
    CHECK(first.command({"SET", "where", "first"}) == "OK");
    CHECK(second.command({"GET", "where"}) == "(nil)");
    CHECK(first.command({"GET", "where"}) == "first");
}

TEST_CASE("RedisServer destructor leaves no process or directory behind", "[redis][support]") {
    pid_t pid = -1;
    std::string dir;
    {
        RedisServer server;
        pid = server.pid();
        dir = server.dir();
        REQUIRE(process_exists(pid));
    }
    errno = 0;
    CHECK(::kill(pid, 0) == -1);
    CHECK(errno == ESRCH);
    CHECK_FALSE(std::filesystem::exists(dir));

    // Also when the server was paused (SIGSTOP) at destruction time.
    {
        RedisServer server;
        pid = server.pid();
        server.pause();
    }
    CHECK_FALSE(process_exists(pid));
}

TEST_CASE("RedisServer start-up failures are reported with the log", "[redis][support]") {
    RedisServerOptions options;
    options.extra_args = {"--no-such-directive", "1"};
    const std::string message = exception_message([&] { RedisServer server(options); });
    INFO(message);
    CHECK(message.find("exited during start-up") != std::string::npos);
    CHECK(message.find("no-such-directive") != std::string::npos);

    // A fixed port that stays busy is waited for, then reported.
    TcpProxy squatter("127.0.0.1", 1);
    RedisServerOptions busy;
    busy.port = squatter.port();
    busy.startup_timeout = 300ms;
    const std::string busy_message = exception_message([&] { RedisServer server(busy); });
    INFO(busy_message);
    CHECK(busy_message.find("could not bind port") != std::string::npos);
}

TEST_CASE("RedisServer requirepass unix socket and pause", "[redis][support]") {
    RedisServerOptions options;
    options.requirepass = "s3cret";
    options.unix_socket = true;
    RedisServer server(options);

    // The fixture's own client authenticates; a bare connection does not.
    CHECK(server.command({"PING"}) == "PONG");
    RawClient raw(server.port());
    REQUIRE(raw.send(ping_request));
    std::string line;
    REQUIRE(raw.read_line_within(line, 2000ms) == ReadOutcome::line);
    CHECK(line.rfind("-NOAUTH", 0) == 0);

    REQUIRE(server.unix_socket_path() == server.dir() + "/redis.sock");
    RawClient local(server.unix_socket_path());
    REQUIRE(local.send("*2\r\n$4\r\nAUTH\r\n$6\r\ns3cret\r\n*1\r\n$4\r\nPING\r\n"));
    REQUIRE(local.read_line_within(line, 2000ms) == ReadOutcome::line);
    CHECK(line == "+OK\r\n");
    REQUIRE(local.read_line_within(line, 2000ms) == ReadOutcome::line);
    CHECK(line == "+PONG\r\n");

    server.pause();
    CHECK(server.is_running());
    CHECK_THROWS_AS(server.command({"PING"}, 200ms), std::runtime_error);
    server.resume();
    CHECK(server.command({"PING"}) == "PONG");

    server.set_auth("", "wrong");
    const std::string auth_message = exception_message([&] { server.command({"PING"}); });
    INFO(auth_message);
    CHECK(auth_message.find("AUTH rejected") != std::string::npos);
}

TEST_CASE("RedisServer ACL file and extra arguments", "[redis][support]") {
    RedisServer server({
        .extra_args = {"--maxmemory", "10mb", "--maxmemory-policy", "allkeys-lru"},
        .acl_file_contents = "user default off\nuser admin on >pw ~* &* +@all\n",
        .auth_user = "admin",
        .auth_password = "pw",
    });

    CHECK(server.command({"ACL", "WHOAMI"}) == "admin");
    CHECK(server.command({"CONFIG", "GET", "maxmemory-policy"}) == "maxmemory-policy\nallkeys-lru");
    RawClient raw(server.port());
    REQUIRE(raw.send(ping_request));
    std::string line;
    REQUIRE(raw.read_line_within(line, 2000ms) == ReadOutcome::line);
    CHECK(line.rfind("-NOAUTH", 0) == 0);
}

TEST_CASE("RedisServer info_commandstats counts calls per command", "[redis][support]") {
    RedisServer server;
    server.reset_stats();
    for (int i = 0; i < 3; ++i) {
        server.command({"SET", "k", std::to_string(i)});
    }
    server.command({"GET", "k"});
    server.command({"CONFIG", "SET", "maxmemory-policy", "allkeys-lru"});

    const auto stats = server.info_commandstats();
    REQUIRE(stats.count("set") == 1);
    CHECK(stats.at("set") == 3);
    REQUIRE(stats.count("get") == 1);
    CHECK(stats.at("get") == 1);
    CHECK(stats.count("config|set") == 1);
    CHECK(stats.count("evalsha") == 0);
}

TEST_CASE("TcpProxy forwards both ways", "[redis][support]") {
    RedisServer server;
    TcpProxy proxy(server.host(), server.port());
    CHECK(proxy.port() > 0);
    CHECK(proxy.port() != server.port());

    RawClient client(proxy.port());
    std::string line;
    for (int i = 0; i < 3; ++i) {
        REQUIRE(client.send(ping_request));
        REQUIRE(client.read_line_within(line, 2000ms) == ReadOutcome::line);
        CHECK(line == "+PONG\r\n");
    }
    CHECK(proxy.connection_count() == 1);
    CHECK(proxy.accepted_count() == 1);

    // A payload far bigger than one read chunk arrives intact.
    const std::string big(3 * 1024 * 1024 + 7, 'x');
    const std::string set_request =
        "*3\r\n$3\r\nSET\r\n$3\r\nbig\r\n$" + std::to_string(big.size()) + "\r\n" + big + "\r\n";
    REQUIRE(client.send(set_request));
    REQUIRE(client.read_line_within(line, 5000ms) == ReadOutcome::line);
    CHECK(line == "+OK\r\n");
    CHECK(server.command({"STRLEN", "big"}) == std::to_string(big.size()));
}

TEST_CASE("TcpProxy blackhole silences connections until lifted", "[redis][support]") {
    RedisServer server;
    TcpProxy proxy(server.host(), server.port());
    RawClient client(proxy.port(), 200ms);
    std::string line;
    REQUIRE(client.send(ping_request));
    REQUIRE(client.read_line_within(line, 2000ms) == ReadOutcome::line);

    proxy.blackhole(true);
    CHECK(proxy.blackholed());
    REQUIRE(client.send(ping_request));
    CHECK(client.read_line(line) == ReadOutcome::timeout);

    // New connections are accepted but just as silent.
    RawClient late(proxy.port(), 200ms);
    REQUIRE(late.send(ping_request));
    CHECK(late.read_line(line) == ReadOutcome::timeout);

    proxy.blackhole(false);
    // Held-back requests are delivered once the partition heals.
    REQUIRE(client.read_line_within(line, 2000ms) == ReadOutcome::line);
    CHECK(line == "+PONG\r\n");
    REQUIRE(late.read_line_within(line, 2000ms) == ReadOutcome::line);
    CHECK(line == "+PONG\r\n");
    REQUIRE(client.send(ping_request));
    REQUIRE(client.read_line_within(line, 2000ms) == ReadOutcome::line);
    CHECK(line == "+PONG\r\n");
}

TEST_CASE("TcpProxy drop_all_connections resets clients", "[redis][support]") {
    RedisServer server;
    TcpProxy proxy(server.host(), server.port());
    RawClient client(proxy.port(), 200ms);
    std::string line;
    REQUIRE(client.send(ping_request));
    REQUIRE(client.read_line_within(line, 2000ms) == ReadOutcome::line);

    proxy.drop_all_connections();
    CHECK(proxy.connection_count() == 0);
    const ReadOutcome outcome = client.read_line_within(line, 2000ms);
    CHECK((outcome == ReadOutcome::reset || outcome == ReadOutcome::closed));

    RawClient fresh(proxy.port(), 200ms);
    REQUIRE(fresh.send(ping_request));
    REQUIRE(fresh.read_line_within(line, 2000ms) == ReadOutcome::line);
    CHECK(line == "+PONG\r\n");
}

TEST_CASE("TcpProxy delay adds latency in both directions", "[redis][support]") {
    RedisServer server;
    TcpProxy proxy(server.host(), server.port());
    RawClient client(proxy.port(), 1000ms);
    std::string line;

    proxy.set_delay(100ms);
    const auto start = std::chrono::steady_clock::now();
    REQUIRE(client.send(ping_request));
    REQUIRE(client.read_line_within(line, 3000ms) == ReadOutcome::line);
    const auto elapsed = std::chrono::steady_clock::now() - start;
    CHECK(line == "+PONG\r\n");
    CHECK(elapsed >= 200ms);

    proxy.set_delay(0ms);
    const auto fast_start = std::chrono::steady_clock::now();
    REQUIRE(client.send(ping_request));
    REQUIRE(client.read_line_within(line, 3000ms) == ReadOutcome::line);
    CHECK(std::chrono::steady_clock::now() - fast_start < 200ms);
}

TEST_CASE("TcpProxy passes on upstream death and refusal", "[redis][support]") {
    RedisServer server;
    TcpProxy proxy(server.host(), server.port());
    RawClient client(proxy.port(), 200ms);
    std::string line;
    REQUIRE(client.send(ping_request));
    REQUIRE(client.read_line_within(line, 2000ms) == ReadOutcome::line);

    server.kill();
    const ReadOutcome outcome = client.read_line_within(line, 2000ms);
    CHECK((outcome == ReadOutcome::closed || outcome == ReadOutcome::reset));

    // With nothing listening upstream, new clients are reset instead of left hanging.
    RawClient refused(proxy.port(), 200ms);
    const ReadOutcome refused_outcome = refused.read_line_within(line, 2000ms);
    CHECK((refused_outcome == ReadOutcome::reset || refused_outcome == ReadOutcome::closed));

    server.restart();
    RawClient again(proxy.port(), 200ms);
    REQUIRE(again.send(ping_request));
    REQUIRE(again.read_line_within(line, 2000ms) == ReadOutcome::line);
    CHECK(line == "+PONG\r\n");
}
