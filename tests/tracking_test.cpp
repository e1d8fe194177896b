// RedisTrackingBus: L1 invalidation produced by Redis (client-side caching). Every write
// here that must reach the L1 is made by a writer that knows nothing of larder's buses - a
// raw hiredis connection, or a RedisBackend without any bus - and every test starts its own
// redis-server.
#include <larder/larder.hpp>
#include <larder/near/near.hpp>

#include "support/backends.hpp"

#if defined(LARDER_TEST_REDIS_BACKEND)
#include <hiredis/hiredis.h>
#include <larder/near/redis_bus.hpp>
#include <larder/near/redis_tracking_bus.hpp>

#include <algorithm>
#include <atomic>
#include <fstream>
#include <initializer_list>
#include <mutex>
#include <optional>
#include <set>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "support/child_process.hpp"
#include "support/client_list.hpp"
#include "support/eventually.hpp"
#include "support/redis_server.hpp"

using namespace std::chrono_literals;
using larder::test::client_ids;
using larder::test::eventually;
using larder::test::RedisServer;

namespace {

using Cache = larder::CacheAside<std::string, larder::RedisBackend>;
using Str = std::optional<std::string>;

larder::RedisOptions tenant_options(const RedisServer& server, std::string prefix = "app:") {
    return larder::RedisOptions{
        .port = server.port(), .command_timeout = 2s, .key_prefix = std::move(prefix)};
}

// A plain hiredis connection: a writer that is not larder at all.
class Raw {
public:
    explicit Raw(int port) : ctx_(redisConnect("127.0.0.1", port)) {
        if (ctx_ == nullptr || ctx_->err != 0) throw std::runtime_error("raw connect failed");
    }
    Raw(const Raw&) = delete;
    Raw& operator=(const Raw&) = delete;
    ~Raw() { redisFree(ctx_); }

    // The reply as text: a string or status as is, an integer in decimal, nil as "(nil)",
    // an error as "-...".
    std::string operator()(std::initializer_list<std::string> args) {
        std::vector<const char*> argv;
        std::vector<std::size_t> lengths;
        for (const auto& a : args) {
            argv.push_back(a.data());
            lengths.push_back(a.size());
        }
        auto* reply = static_cast<redisReply*>(
            redisCommandArgv(ctx_, static_cast<int>(argv.size()), argv.data(), lengths.data()));
        if (reply == nullptr) throw std::runtime_error("raw command failed");
        std::string out;
        switch (reply->type) {
            case REDIS_REPLY_STRING:
            case REDIS_REPLY_STATUS:
                out.assign(reply->str, reply->len);
                break;
            case REDIS_REPLY_ERROR:
                out = "-" + std::string(reply->str, reply->len);
                break;
            case REDIS_REPLY_INTEGER:
                out = std::to_string(reply->integer);
                break;
            default:
                out = "(nil)";
        }
        freeReplyObject(reply);
        return out;
    }

private:
    redisContext* ctx_;
};

// One process's view: a backend (tenant "app:") whose reads fill an L1 kept coherent by a
// RedisTrackingBus; beside it, a backend with no bus and a raw connection, the foreign
// writers; and `seed`, a cache on the plain backend that writes valid entries.
struct Rig {
    explicit Rig(larder::RedisTrackingOptions bus_options = {})
        : backend(tenant_options(server)),
          bus(backend, std::move(bus_options)),
          cache(backend, {.key_prefix = "users:"}),
          near(cache, bus, {.ttl = 60s}),
          plain(tenant_options(server)),
          seed(plain, {.key_prefix = "users:"}),
          raw(server.port()) {
        recorder = bus.subscribe(larder::BusHandlers{.on_message = [this](std::string_view m) {
            std::lock_guard lock(heard_mutex);
            heard.emplace(m);
        }});
        if (!bus.wait_connected(5s)) throw std::runtime_error("bus not connected");
        // Near enables L1 in on_restored, which runs just after the bus reports connected.
        if (!eventually([&] { return near.l1().enabled(); })) {
            throw std::runtime_error("L1 not enabled");
        }
    }

    // Broadcast mode hears the writes that made the test's entries, a moment later: waits
    // until they are delivered (a marker written after them has been).
    void settle() {
        if (bus.mode() != larder::TrackingMode::broadcast) return;
        const std::string marker = "settle-" + std::to_string(++settles);
        REQUIRE(raw({"SET", stored(marker), "x"}) == "OK");
        REQUIRE(eventually([&] {
            std::lock_guard lock(heard_mutex);
            return heard.count("k" + cache.full_key(marker)) == 1;
        }));
    }

    // The key as Redis stores it (tenant prefix included).
    std::string stored(const std::string& key) const {
        return backend.stored_key(cache.full_key(key));
    }

    // Stores `value` under `key` as larder writes it, through the plain backend.
    void write_entry(const std::string& key, const std::string& value) {
        plain.del(cache.full_key(key));
        REQUIRE(seed.get(key, [&] { return Str(value); }) == value);
    }

    // The bytes of a valid entry holding `value` (an entry says nothing of its key).
    std::string envelope_of(const std::string& value) {
        const std::string scratch = "scratch-" + std::to_string(++scratches);
        write_entry(scratch, value);
        const auto bytes = plain.get(cache.full_key(scratch));
        REQUIRE(bytes);
        return bytes->bytes;
    }

    bool in_l1(const std::string& key) { return near.l1().get(cache.full_key(key)).has_value(); }

    RedisServer server;
    larder::RedisBackend backend;
    larder::RedisTrackingBus bus;
    Cache cache;
    larder::Near<Cache, larder::RedisTrackingBus> near;
    larder::RedisBackend plain;
    Cache seed;
    Raw raw;
    int scratches = 0;
    int settles = 0;
    std::mutex heard_mutex;
    std::set<std::string> heard;       // every message delivered
    larder::BusSubscription recorder;  // last: gone first
};

// A loader that must not be needed: its value shows the read went to the "database".
auto from_db(const std::string& v) {
    return [v] { return Str(v); };
}

// Reads `key` through Near twice: the first read fills L1, the second must hit it.
void fill_l1(Rig& rig, const std::string& key, const std::string& expected) {
    rig.settle();
    REQUIRE(rig.near.get(key, from_db("loader")) == expected);
    const auto hits = rig.near.l1().stats().hits;
    REQUIRE(rig.near.get(key, from_db("loader")) == expected);
    REQUIRE(rig.near.l1().stats().hits == hits + 1);
}

}  // namespace

TEST_CASE("keys_read: a raw SET of an entry read into L1 drops it from L1",
          "[tracking][l1][redis]") {
    Rig rig;
    REQUIRE(rig.bus.mode() == larder::TrackingMode::keys_read);
    rig.write_entry("k", "v1");
    fill_l1(rig, "k", "v1");
    REQUIRE(rig.backend.stats().tracking_redirects >= 1);

    const std::string v2 = rig.envelope_of("v2");
    const auto keys_before = rig.bus.keys_invalidated();
    REQUIRE(rig.raw({"SET", rig.stored("k"), v2}) == "OK");
    REQUIRE(eventually([&] { return !rig.in_l1("k"); }));
    REQUIRE(rig.bus.keys_invalidated() > keys_before);
    REQUIRE(rig.near.get("k", from_db("loader")) == "v2");  // from Redis, not the loader
    // Read again, tracked again: the next foreign write is heard as well.
    fill_l1(rig, "k", "v2");
    REQUIRE(rig.raw({"DEL", rig.stored("k")}) == "1");
    REQUIRE(eventually([&] { return !rig.in_l1("k"); }));
    REQUIRE(rig.near.get("k", from_db("v3")) == "v3");
    REQUIRE(rig.bus.refusals() == 0);
}

TEST_CASE("broadcast: writes under the prefixes drop L1 entries, other keys send nothing",
          "[tracking][l1][redis]") {
    Rig rig({.mode = larder::TrackingMode::broadcast, .prefixes = {"users:"}});
    REQUIRE(rig.bus.broadcast_prefixes() ==
            std::vector<std::string>{"app:users:k:", "app:users:m:"});
    rig.write_entry("k", "v1");
    fill_l1(rig, "k", "v1");
    // Broadcast mode leaves the backend's connections alone.
    REQUIRE(rig.backend.stats().tracking_redirects == 0);

    const std::string v2 = rig.envelope_of("v2");
    REQUIRE(rig.in_l1("k"));  // the scratch key is not k
    REQUIRE(rig.raw({"SET", rig.stored("k"), v2}) == "OK");
    REQUIRE(eventually([&] { return !rig.in_l1("k"); }));
    REQUIRE(rig.near.get("k", from_db("loader")) == "v2");

    // Keys outside the prefixes: another cache of the tenant, another tenant, no tenant.
    const auto messages = rig.bus.messages();
    REQUIRE(rig.raw({"SET", "app:orders:k:1", "x"}) == "OK");
    REQUIRE(rig.raw({"SET", "other:users:k:k", "x"}) == "OK");
    REQUIRE(rig.raw({"SET", "users:k:k", "x"}) == "OK");
    // Then one inside: messages arrive in order, so once it is counted any message about
    // the others would have been counted before it.
    REQUIRE(rig.raw({"SET", "app:users:k:marker", "x"}) == "OK");
    REQUIRE(eventually([&] { return rig.bus.messages() > messages; }));
    std::this_thread::sleep_for(50ms);
    REQUIRE(rig.bus.messages() == messages + 1);
}

TEST_CASE("broadcast without prefixes covers the tenant; the options are validated",
          "[tracking][l1][redis]") {
    Rig rig({.mode = larder::TrackingMode::broadcast});
    REQUIRE(rig.bus.broadcast_prefixes() == std::vector<std::string>{"app:"});
    rig.write_entry("k", "v1");
    fill_l1(rig, "k", "v1");
    REQUIRE(rig.raw({"DEL", rig.stored("k")}) == "1");
    REQUIRE(eventually([&] { return !rig.in_l1("k"); }));

    larder::RedisBackend other(tenant_options(rig.server));
    using larder::TrackingMode;
    REQUIRE_THROWS_AS(
        larder::RedisTrackingBus(other, {.mode = TrackingMode::broadcast, .prefixes = {"users"}}),
        larder::ConfigError);
    REQUIRE_THROWS_AS(larder::RedisTrackingBus(other, {.prefixes = {"users:"}}),
                      larder::ConfigError);  // prefixes are for broadcast mode
    // One keys_read bus per backend.
    larder::RedisTrackingBus first(other);
    REQUIRE_THROWS_AS(larder::RedisTrackingBus(other), larder::ConfigError);
}

TEST_CASE("FLUSHALL clears the L1, in both modes", "[tracking][l1][redis]") {
    const auto mode = GENERATE(larder::TrackingMode::keys_read, larder::TrackingMode::broadcast);
    Rig rig({.mode = mode});
    rig.write_entry("a", "1");
    rig.write_entry("b", "2");
    fill_l1(rig, "a", "1");
    fill_l1(rig, "b", "2");
    REQUIRE(rig.bus.flushes() == 0);
    REQUIRE(rig.raw({"FLUSHALL"}) == "OK");
    // Once per tracking connection: in keys_read mode, the pool's and the subscriber's.
    REQUIRE(eventually([&] { return rig.bus.flushes() >= 1; }));
    REQUIRE(eventually([&] { return !rig.in_l1("a") && !rig.in_l1("b"); }));
    REQUIRE(rig.near.get("a", from_db("A")) == "A");
    REQUIRE(rig.near.get("b", from_db("B")) == "B");
}

// Redis 7 reports an expiry when it deletes the key, and its active expiry cycle deletes
// keys nobody reads (checked here): an L1 copy goes with its entry, with no read.
TEST_CASE("An entry that expires in Redis leaves the L1 without being read",
          "[tracking][l1][redis]") {
    Rig rig;
    const std::string bytes = rig.envelope_of("short");
    REQUIRE(rig.raw({"SET", rig.stored("k"), bytes, "PX", "300"}) == "OK");
    fill_l1(rig, "k", "short");
    const auto keys_before = rig.bus.keys_invalidated();
    REQUIRE(
        eventually([&] { return rig.bus.keys_invalidated() > keys_before && !rig.in_l1("k"); }));
    REQUIRE(rig.raw({"EXISTS", rig.stored("k")}) == "0");
    REQUIRE(rig.near.get("k", from_db("loaded")) == "loaded");
}

TEST_CASE("A lost subscriber turns L1 off; after it is back the pool follows it",
          "[tracking][l1][redis]") {
    Rig rig;
    rig.write_entry("k", "v1");
    fill_l1(rig, "k", "v1");
    const auto first_id = rig.bus.client_id();
    const auto redirects = rig.backend.stats().tracking_redirects;

    REQUIRE(rig.raw({"CLIENT", "KILL", "TYPE", "pubsub"}) == "1");
    REQUIRE(eventually([&] { return !rig.bus.connected() || rig.bus.subscriptions() >= 2; }));
    // A write the old subscriber can no longer hear: L1 must not serve v1 any more.
    REQUIRE(rig.raw({"SET", rig.stored("k"), rig.envelope_of("v2")}) == "OK");
    REQUIRE(rig.near.get("k", from_db("loader")) == "v2");

    // connected() turns true just before on_restored enables L1.
    REQUIRE(eventually([&] { return rig.bus.subscriptions() >= 2 && rig.near.l1().enabled(); }));
    REQUIRE(rig.bus.client_id() != first_id);
    // The connection that reads k was redirected to the dead subscriber: it must follow
    // the new one before its next read, or the write below would never be heard.
    fill_l1(rig, "k", "v2");
    REQUIRE(rig.backend.stats().tracking_redirects > redirects);
    REQUIRE(rig.raw({"SET", rig.stored("k"), rig.envelope_of("v3")}) == "OK");
    REQUIRE(eventually([&] { return !rig.in_l1("k"); }));
    REQUIRE(rig.near.get("k", from_db("loader")) == "v3");
}

// The reconnect ordering under load: readers on several pooled connections fill L1 while
// the subscriber is replaced; a fill through a connection still redirected to the dead
// subscriber would keep its value past the next write.
TEST_CASE("Concurrent readers across subscriber reconnects: every write is seen",
          "[tracking][l1][redis]") {
    Rig rig;
    rig.write_entry("k", "0");
    std::atomic<bool> stop{false};
    std::vector<std::thread> readers;
    struct Joiner {
        std::atomic<bool>& stop;
        std::vector<std::thread>& threads;
        ~Joiner() {
            stop.store(true);
            for (auto& t : threads) t.join();
        }
    } joiner{stop, readers};
    for (int t = 0; t < 3; ++t) {
        readers.emplace_back([&] {
            while (!stop.load()) (void)rig.near.get("k", from_db("loader"));
        });
    }
    for (int i = 1; i <= 10; ++i) {
        const auto subscriptions = rig.bus.subscriptions();
        REQUIRE(rig.raw({"CLIENT", "KILL", "TYPE", "pubsub"}) == "1");
        REQUIRE(eventually(
            [&] { return rig.bus.connected() && rig.bus.subscriptions() > subscriptions; }));
        std::this_thread::sleep_for(20ms);  // the readers fill L1 again
        const std::string v = std::to_string(i);
        REQUIRE(rig.raw({"SET", rig.stored("k"), rig.envelope_of(v)}) == "OK");
        REQUIRE(eventually([&] { return rig.near.get("k", from_db("loader")) == v; }));
    }
    REQUIRE(rig.near.l1().stats().hits > 0);
}

TEST_CASE("A restarted Redis: L1 off, then on again and hearing writes", "[tracking][l1][redis]") {
    Rig rig;
    rig.write_entry("k", "v1");
    fill_l1(rig, "k", "v1");
    rig.server.restart();  // no persistence: the data is gone
    REQUIRE(eventually([&] { return rig.bus.subscriptions() >= 2 && rig.bus.connected(); }, 10s));
    Raw raw(rig.server.port());
    // The pools' connections died with the server; the first calls may fail on them.
    REQUIRE(eventually([&] { return rig.near.get("k", from_db("v2")) == "v2"; }));
    REQUIRE(eventually([&] {
        try {
            rig.plain.ping();
            return true;
        } catch (const larder::BackendError&) {
            return false;
        }
    }));
    rig.write_entry("k", "v3");
    fill_l1(rig, "k", "v3");
    REQUIRE(raw({"DEL", rig.stored("k")}) == "1");
    REQUIRE(eventually([&] { return !rig.in_l1("k"); }));
}

TEST_CASE("A foreign tag bump drops the L1 entries stamped with that tag",
          "[tracking][l1][tags][redis]") {
    const auto mode = GENERATE(larder::TrackingMode::keys_read, larder::TrackingMode::broadcast);
    Rig rig({.mode = mode});
    REQUIRE(rig.seed.get("post", {"user:42"}, from_db("p1")) == "p1");
    REQUIRE(rig.seed.get("other", {"user:7"}, from_db("o1")) == "o1");
    rig.settle();
    REQUIRE(rig.near.get("post", {"user:42"}, from_db("loader")) == "p1");
    REQUIRE(rig.near.get("other", {"user:7"}, from_db("loader")) == "o1");
    const auto hits = rig.near.l1().stats().hits;
    REQUIRE(rig.near.get("post", {"user:42"}, from_db("loader")) == "p1");
    REQUIRE(rig.near.get("other", {"user:7"}, from_db("loader")) == "o1");
    REQUIRE(rig.near.l1().stats().hits == hits + 2);

    // Another process bumps the tag's version; the entry key itself is not written.
    const std::string version_key = rig.backend.stored_key(rig.cache.tag_key("user:42"));
    REQUIRE(rig.raw({"EXISTS", version_key}) == "1");
    REQUIRE(rig.raw({"SET", version_key, "12345"}) == "OK");
    REQUIRE(eventually([&] { return !rig.in_l1("post"); }));
    REQUIRE(rig.in_l1("other"));  // stamped with another tag only
    REQUIRE(rig.near.get("post", {"user:42"}, from_db("p2")) == "p2");
}

TEST_CASE("CLIENT TRACKING refused by an ACL: reported, retried, and L1 stays off",
          "[tracking][l1][redis][acl]") {
    RedisServer server({
        .acl_file_contents = "user default on nopass ~* &* +@all\n"
                             "user app on >app-pw ~* &* +@all -client|tracking\n",
    });
    larder::RedisBackend backend(larder::RedisOptions{
        .port = server.port(), .user = "app", .password = "app-pw", .command_timeout = 2s});
    std::mutex mutex;
    std::vector<std::string> reported;
    larder::RedisTrackingBus bus(backend,
                                 {.max_backoff = 50ms, .on_error = [&](std::string_view why) {
                                      std::lock_guard lock(mutex);
                                      reported.emplace_back(why);
                                  }});
    Cache cache(backend);
    larder::Near near(cache, bus);
    REQUIRE(eventually([&] { return bus.refusals() >= 2; }));
    REQUIRE_FALSE(bus.connected());
    {
        std::lock_guard lock(mutex);
        REQUIRE(reported.size() >= 2);
        REQUIRE(reported.front().find("CLIENT TRACKING") != std::string::npos);
    }
    // The cache works; L1 serves nothing, and the pool was never asked to track.
    REQUIRE(near.get("k", from_db("v")) == "v");
    REQUIRE(near.get("k", from_db("other")) == "v");
    REQUIRE(near.l1().stats().hits == 0);
    REQUIRE(backend.stats().tracking_redirects == 0);
}

TEST_CASE("A silent subscriber is noticed within ping_interval + ping_timeout",
          "[tracking][l1][redis]") {
    RedisServer server;
    larder::RedisBackend backend(tenant_options(server));
    larder::RedisTrackingBus bus(backend, {.ping_interval = 100ms, .ping_timeout = 200ms});
    Cache cache(backend);
    larder::Near near(cache, bus);
    REQUIRE(bus.wait_connected(5s));
    REQUIRE(eventually([&] { return near.l1().enabled(); }));  // on_restored runs just after
    server.pause();  // accepts nothing, answers nothing, closes nothing
    REQUIRE(eventually([&] { return !bus.connected(); }, 3s));
    REQUIRE_FALSE(near.l1().enabled());
    server.resume();
    REQUIRE(eventually([&] { return bus.connected() && near.l1().enabled(); }, 10s));
    REQUIRE(bus.subscriptions() >= 2);
}

// Before: a pooled tracking connection that closed told the bus at once, on the thread that
// closed it, holding TrackingRedirect's lock while the bus's fan-out took the subscribers'
// lock; a subscriber's handler (run under that lock on the bus's thread) that closed a
// tracking connection of the same backend took them in the opposite order. Now the bus's
// own thread delivers the "*". Here a user thread's command and a handler's command each
// lose their connection, the user thread's first. Objects are leaked if it deadlocks (no
// destructor could finish).
TEST_CASE("A tracking connection closing on two threads at once does not deadlock the bus",
          "[regression][l1][tracking][redis]") {
    auto* server = new larder::test::RedisServer;
    auto* backend = new larder::RedisBackend(
        larder::RedisOptions{.port = server->port(), .command_timeout = 30s, .pool_size = 4});
    auto* bus = new larder::RedisTrackingBus(*backend);
    REQUIRE(bus->wait_connected(5s));
    (void)backend->get("trigger");  // read on a tracking connection: a write to it is reported

    std::atomic<bool> in_handler{false}, handler_done{false}, a_done{false};
    auto* sub = new larder::BusSubscription(bus->subscribe(larder::BusHandlers{
        .on_message =
            [&, backend](std::string_view m) {
                if (m != "ktrigger" || in_handler.exchange(true)) return;
                try {
                    (void)backend->command({"BLPOP", "qb", "20"});
                } catch (const std::exception&) {
                }
                handler_done = true;
            },
    }));

    // The user thread: a command whose connection will be killed.
    std::thread a([&, backend] {
        try {
            (void)backend->command({"BLPOP", "qa", "20"});
        } catch (const std::exception&) {
        }
        a_done = true;
    });
    REQUIRE(eventually([&] { return client_ids(*server, "normal", "cmd=blpop").size() == 1; }));
    const auto a_conn = client_ids(*server, "normal", "cmd=blpop");

    // The bus's thread: the handler runs (under the subscribers' lock) and blocks in BLPOP.
    REQUIRE(server->command({"SET", "trigger", "x"}) == "OK");
    REQUIRE(eventually([&] { return client_ids(*server, "normal", "cmd=blpop").size() == 2; }));
    std::string b_conn;
    for (const auto& id : client_ids(*server, "normal", "cmd=blpop")) {
        if (id != a_conn[0]) b_conn = id;
    }
    REQUIRE(!b_conn.empty());
    REQUIRE(in_handler.load());

    // a's connection closes: untracked() takes the redirect's lock, then waits for the
    // subscribers' lock, held by the handler.
    REQUIRE(server->command({"CLIENT", "KILL", "ID", a_conn[0]}) == "1");
    REQUIRE(eventually([&] { return bus->untracked_closes() >= 1; }));
    std::this_thread::sleep_for(200ms);
    // The handler's connection closes: its untracked() needs the redirect's lock.
    REQUIRE(server->command({"CLIENT", "KILL", "ID", b_conn}) == "1");

    const bool finished = eventually([&] { return handler_done.load() && a_done.load(); }, 10s);
    if (!finished) {
        a.detach();  // deadlocked: leak everything rather than hang in destructors
        FAIL(
            "deadlock: the handler's thread and the user thread wait for each other "
            "(TrackingRedirect::mutex_ vs the subscribers' lock)");
    }
    a.join();
    delete sub;
    delete bus;
    delete backend;
    delete server;
}

// Before: the same lock re-entered on one thread: untracked() ran the "*" fan-out holding
// TrackingRedirect's lock, and a "*" handler working through the same backend that met a
// closed tracking connection called untracked() again (a self-deadlock).
TEST_CASE("A tracking connection closing inside a \"*\" handler does not deadlock its thread",
          "[regression][l1][tracking][redis]") {
    auto* server = new larder::test::RedisServer;
    auto* backend = new larder::RedisBackend(
        larder::RedisOptions{.port = server->port(), .command_timeout = 30s, .pool_size = 4});
    auto* bus = new larder::RedisTrackingBus(*backend);
    REQUIRE(bus->wait_connected(5s));

    std::atomic<bool> in_handler{false}, handler_done{false}, a_done{false};
    auto* sub = new larder::BusSubscription(bus->subscribe(larder::BusHandlers{
        .on_message =
            [&, backend](std::string_view m) {
                if (m != "*" || in_handler.exchange(true)) return;
                try {
                    (void)backend->command({"BLPOP", "qc", "20"});
                } catch (const std::exception&) {
                }
                handler_done = true;
            },
    }));

    std::thread a([&, backend] {
        try {
            (void)backend->command({"BLPOP", "qa", "20"});
        } catch (const std::exception&) {
        }
        a_done = true;
    });
    REQUIRE(eventually([&] { return client_ids(*server, "normal", "cmd=blpop").size() == 1; }));
    const auto a_conn = client_ids(*server, "normal", "cmd=blpop");
    REQUIRE(server->command({"CLIENT", "KILL", "ID", a_conn[0]}) == "1");
    // a's thread: untracked() -> "*" -> the handler, which blocks in BLPOP on a new connection.
    REQUIRE(eventually([&] {
        const auto ids = client_ids(*server, "normal", "cmd=blpop");
        return in_handler.load() && ids.size() == 1 && ids[0] != a_conn[0];
    }));
    const auto c_conn = client_ids(*server, "normal", "cmd=blpop");
    REQUIRE(server->command({"CLIENT", "KILL", "ID", c_conn[0]}) == "1");

    const bool finished = eventually([&] { return handler_done.load() && a_done.load(); }, 10s);
    if (!finished) {
        a.detach();  // deadlocked: leak everything rather than hang in destructors
        FAIL("deadlock: untracked() re-entered TrackingRedirect::mutex_ on the same thread");
    }
    a.join();
    delete sub;
    delete bus;
    delete backend;
    delete server;
}

#if defined(LARDER_TEST_HELPER_L1_CHILD)
namespace {

// Runs 1000 writes in this process and measures when the child's L1 (a Near reading in a
// loop) sees each: with a RedisBus, the writer invalidates through its own Near; with a
// RedisTrackingBus, the writer is a cache without any bus and Redis tells the child.
std::vector<double> propagation_delays_ms(bool tracking, int writes) {
    RedisServer server;
    const larder::RedisOptions options{.port = server.port(), .command_timeout = 2s};
    larder::RedisBackend redis(options);
    Cache cache(redis);
    std::optional<larder::RedisBus> bus;
    std::optional<larder::Near<Cache, larder::RedisBus>> near;
    if (!tracking) {
        bus.emplace(options);
        near.emplace(cache, *bus);
        REQUIRE(bus->wait_connected(5s));
    }
    redis.set("db:k", "0", larder::no_expiry);

    std::vector<std::string> args{std::to_string(server.port())};
    if (tracking) args.emplace_back("tracking");
    larder::test::ChildProcess child(LARDER_TEST_HELPER_L1_CHILD, args);
    REQUIRE(child.read_line(30s) == "ready");
    child.write_line("get k");
    REQUIRE(child.read_line(20s) == "0");
    child.write_line("watch k " + std::to_string(writes));
    REQUIRE(child.read_line(20s) == "watching 0");
    std::vector<double> delays_ms;
    for (int i = 1; i <= writes; ++i) {
        redis.set("db:k", std::to_string(i), larder::no_expiry);
        const auto written = std::chrono::duration_cast<std::chrono::microseconds>(
                                 std::chrono::system_clock::now().time_since_epoch())
                                 .count();
        if (near) {
            near->invalidate("k");
        } else {
            cache.invalidate("k");  // a DEL: nothing is published
        }
        const auto line = child.read_line(20s);
        REQUIRE(line);
        std::istringstream in(*line);
        std::string word, value;
        long long seen_at = 0;
        in >> word >> value >> seen_at;
        REQUIRE(word == "seen");
        REQUIRE(value == std::to_string(i));  // every write seen, in order, none stale
        delays_ms.push_back(static_cast<double>(seen_at - written) / 1000.0);
    }
    const auto done = child.read_line(20s);
    REQUIRE(done);
    REQUIRE(done->rfind("done ", 0) == 0);
    REQUIRE(std::stoll(done->substr(5)) > writes);  // the child's reads were mostly L1 hits
    child.write_line("quit");
    REQUIRE(child.wait() == 0);
    std::sort(delays_ms.begin(), delays_ms.end());
    return delays_ms;
}

}  // namespace

TEST_CASE("A write in one process reaches another's L1: 1000 writes, both buses",
          "[tracking][l1][redis][multiprocess]") {
    const int writes = 1000;
    const auto pubsub = propagation_delays_ms(false, writes);
    const auto tracked = propagation_delays_ms(true, writes);
    auto line = [&](const char* name, const std::vector<double>& d) {
        std::ostringstream out;
        out << name << ": p50 " << d[writes / 2] << " ms, p99 " << d[writes * 99 / 100]
            << " ms, max " << d.back() << " ms";
        return out.str();
    };
    WARN("propagation delay over " << writes << " writes\n"
                                   << line("RedisBus (pub/sub)        ", pubsub) << "\n"
                                   << line("RedisTrackingBus keys_read", tracked));
}
#endif

// ---- the example of docs/tracking.md, compiled and run here ----------------------------

// doc-example-begin
#include <larder/backend/redis.hpp>
#include <larder/near/near.hpp>
#include <larder/near/redis_tracking_bus.hpp>
#include <larder/policy/cache_aside.hpp>

#include <chrono>
#include <thread>

namespace {

int run_example(const larder::RedisOptions& where) {
    larder::RedisBackend redis(where);
    larder::RedisTrackingBus bus(redis);  // keys_read: Redis tracks what `redis` reads
    larder::CacheAside<std::string, larder::RedisBackend> users(redis, {.key_prefix = "users:"});
    larder::Near near(users, bus);
    if (!bus.wait_connected(std::chrono::seconds(5))) return 1;

    auto load = [] { return std::optional<std::string>("Ada"); };
    (void)near.get("42", load);  // the loader, then stored in Redis
    (void)near.get("42", load);  // kept in L1 until Redis reports a change

    // Any other writer - here a backend with no bus at all - changes the entry: Redis
    // tells the bus, and the L1 copy goes.
    larder::RedisBackend elsewhere(where);
    elsewhere.del(users.full_key("42"));
    for (int i = 0; i < 500 && near.l1().get(users.full_key("42")); ++i) {
        std::this_thread::sleep_for(std::chrono::milliseconds(10));
    }
    return near.l1().get(users.full_key("42")) ? 1 : 0;
}

}  // namespace
// doc-example-end

TEST_CASE("The example of docs/tracking.md runs, and the page shows it verbatim",
          "[tracking][l1][redis][docs]") {
    RedisServer server;
    REQUIRE(run_example(larder::RedisOptions{.port = server.port()}) == 0);
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
    const std::string source = read(std::string(LARDER_TEST_SOURCE_DIR) + "/tracking_test.cpp");
    const std::string doc = read(std::string(LARDER_TEST_SOURCE_DIR) + "/../docs/tracking.md");
    REQUIRE(between(doc, "```cpp", "```") ==
            between(source, "// doc-example-begin", "// doc-example-end"));
}

#endif

// Before: Redis forgets what it tracked for a connection that closes, and nothing told L1:
// after CLIENT KILL of the pooled connections, a raw write to a key L1 held was never
// reported, and L1 served the old value until its TTL.
TEST_CASE("keys_read: pooled connections the server closed take L1's copies with them",
          "[regression][tracking][l1][redis]") {
    Rig rig;
    rig.write_entry("k", "v1");
    fill_l1(rig, "k", "v1");
    const std::string v2 = rig.envelope_of("v2");
    REQUIRE(rig.raw({"CLIENT", "KILL", "TYPE", "normal"}) != "0");
    REQUIRE(rig.raw({"SET", rig.stored("k"), v2}) == "OK");
    REQUIRE(eventually([&] { return !rig.in_l1("k"); }));
    REQUIRE(rig.bus.untracked_closes() >= 1);
    REQUIRE(rig.near.get("k", from_db("loader")) == "v2");
}

// Before: while the subscriber was away, every new pooled connection first redirected its
// tracking to the dead subscriber's id, which Redis refuses: every command failed, writes
// included, until the subscriber was back.
TEST_CASE("keys_read: while the subscriber is away, new connections still serve commands",
          "[regression][tracking][l1][redis]") {
    Rig rig({.first_backoff = 10s, .max_backoff = 10s});  // it stays away for the test
    rig.write_entry("k", "v1");
    fill_l1(rig, "k", "v1");
    REQUIRE(rig.raw({"CLIENT", "KILL", "TYPE", "pubsub"}) != "0");
    REQUIRE(eventually([&] { return !rig.bus.connected(); }));
    REQUIRE(rig.raw({"CLIENT", "KILL", "TYPE", "normal"}) != "0");
    REQUIRE(eventually([&] {
        try {
            rig.near.invalidate("k");
            return true;
        } catch (const larder::BackendError&) {
            return false;  // the first call may meet a killed connection
        }
    }));
    REQUIRE(rig.backend.stats().tracking_refusals == 0);
    REQUIRE(rig.near.get("k", from_db("v2")) == "v2");
}
