// RedisOptions: how RedisBackend reaches a Redis and how hard it tries. One aggregate with
// defaults, so a caller names only what differs (designated initializers, in declaration
// order) or reads the address part from a URL with RedisOptions::from_url.
#pragma once

#include <chrono>
#include <cstddef>
#include <string>
#include <string_view>
#include <vector>

#include "larder/backend/redis/url.hpp"
#include "larder/core/clock.hpp"
#include "larder/core/log.hpp"
#include "larder/core/metrics.hpp"

namespace larder {

/// The states of RedisBackend's circuit breaker.
enum class BreakerState {
    closed,     ///< calls go to Redis
    open,       ///< calls fail at once with CircuitOpenError, without any I/O
    half_open,  ///< the cool-down is over and one probe call is in flight
};

[[nodiscard]] constexpr std::string_view to_string(BreakerState s) noexcept {
    switch (s) {
        case BreakerState::closed:
            return "closed";
        case BreakerState::open:
            return "open";
        case BreakerState::half_open:
            return "half_open";
    }
    return "unknown";
}

struct CircuitBreakerOptions {
    /// Consecutive failed calls (I/O errors, timeouts, failed connects) that open the
    /// breaker. 0 disables the breaker.
    unsigned failure_threshold = 5;
    /// How long an open breaker fails calls fast before it lets one probe through. Short,
    /// because while it is open every read goes to the database.
    Millis cool_down{500};
};

/// A server's address.
struct RedisAddress {
    std::string host{};
    int port = 0;

    friend bool operator==(const RedisAddress&, const RedisAddress&) = default;
};

/// Redis Sentinel: the backend asks the sentinels where the primary of `master_name` is,
/// instead of connecting to host and port, and follows it through failovers
/// (docs/redis.md, "Sentinel").
struct SentinelOptions {
    /// Asked in order until one answers. Empty: no Sentinel.
    std::vector<RedisAddress> sentinels{};
    std::string master_name{};
    /// Credentials of the sentinels themselves (the data nodes use RedisOptions's).
    std::string user{};
    std::string password{};
    /// Subscribe to +switch-master on a sentinel (one thread per backend), so that a
    /// failover is followed as soon as it is announced, not only when a call fails on the
    /// old primary.
    bool follow_switch_master = true;
};

// Every member has a default member initializer, so that designated initializers naming
// only some of them stay clean under -Wextra (-Wmissing-field-initializers).
struct RedisOptions {
    std::string host = "127.0.0.1";
    int port = 6379;
    /// Path of a unix socket; when set, host and port are not used.
    std::string unix_socket{};
    /// ACL user (Redis 6+): `AUTH user password`. Empty: `AUTH password`, or no AUTH at all
    /// when the password is empty too.
    std::string user{};
    std::string password{};
    /// Selected on every new connection; 0 sends no SELECT.
    int db = 0;
    /// Bounds the TCP (or unix socket) connect of each new connection.
    Millis connect_timeout{200};
    /// Bounds each wait for the socket while sending or receiving. A cache that answers
    /// slower than this is worse than no cache: the caller's loader is typically a few ms.
    Millis command_timeout{100};
    /// The slowest transfer a call is expected to survive, in bytes per second: a call that
    /// sends N bytes waits up to command_timeout + N / this for each step of its I/O, so a
    /// large value is not reported as a timeout merely for being large (docs/redis.md,
    /// "Large values and timeouts"). Replies are not known in advance and are not scaled.
    /// 0: no scaling, command_timeout bounds every call.
    std::size_t min_throughput_bytes_per_second = std::size_t{8} << 20;
    /// Connections kept open; a redisContext is not thread-safe, so this is also the
    /// number of calls that can be in flight at once.
    std::size_t pool_size = 8;
    /// How long a call waits for a free connection before TimeoutError.
    Millis pool_wait_timeout{100};
    /// While connects fail, at most one attempt per this interval; other calls fail at
    /// once with ConnectionError instead of adding to a dead server's SYN backlog.
    Millis reconnect_backoff{50};
    /// SO_KEEPALIVE on TCP connections, so a peer that vanished is noticed on idle ones.
    bool tcp_keepalive = true;
    /// Prepended to every key and to RedisBus's channel: several applications (tenants)
    /// can share one Redis, each limited by an ACL to `~<prefix>* &<prefix>*`. Empty, or
    /// ending in ':'. Use a hash tag, e.g. "{app}:", only if all keys
    /// must share one Cluster slot (docs/security.md).
    std::string key_prefix{};
    /// READONLY on every new connection: reads served by a Redis Cluster replica.
    /// RedisClusterBackend sets it for the connections of read_from_replicas.
    bool readonly = false;
    /// true: connect, authenticate and PING in the constructor and throw ConnectionError
    /// if that fails. false: construct anyway and connect on first use.
    bool require_connection = false;
    CircuitBreakerOptions breaker{};
    /// With sentinels, the primary is found through them, and host and port are not used.
    SentinelOptions sentinel{};
    /// How logs and metrics name this backend.
    std::string name = "redis";
    /// Told how long each call took, and whether it failed (nullptr: nothing is timed).
    /// It must outlive the backend.
    MetricsListener* metrics = nullptr;
    /// The circuit breaker opening (warn) and closing (info), failed connects (info), a
    /// Sentinel failover followed (warn).
    Logger log{};

    /// Address, credentials and database from a URL, everything else from the defaults:
    /// redis://[[user]:password@]host[:port][/db] or unix://[[user]:password@]/path[?db=N].
    /// A userinfo without ':' is the password (redis://s3cret@host, as redis-cli reads it).
    /// User and password may be percent-encoded. Throws ConfigError on a malformed URL,
    /// whose message never repeats the URL; print a URL with larder::redact_url.
    [[nodiscard]] static RedisOptions from_url(std::string_view url) {
        redis_detail::UrlParts parts = redis_detail::parse_url(url);
        RedisOptions options;
        if (!parts.host.empty()) options.host = std::move(parts.host);
        if (parts.port) options.port = *parts.port;
        options.unix_socket = std::move(parts.unix_socket);
        options.user = std::move(parts.user);
        options.password = std::move(parts.password);
        if (parts.db) options.db = *parts.db;
        return options;
    }
};

}  // namespace larder
