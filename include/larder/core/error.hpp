// The exception tree. Everything larder throws derives from larder::Error, so a caller can
// catch the library's failures in one place while a loader's own exceptions pass through
// unchanged:
//
//   Error
//   +-- BackendError                the cache store failed
//   |   +-- ClusterRedirectError    a one-server backend pointed at a cluster node
//   |   +-- TimeoutError            no answer within the deadline
//   |   |   +-- OutcomeUnknownError a write sent, its reply lost
//   |   |   +-- PoolExhaustedError  every connection stayed borrowed for the whole wait
//   |   +-- DurabilityError         applied, not confirmed by enough replicas
//   |   +-- ConnectionError         could not connect or authenticate
//   |   +-- CircuitOpenError        the breaker skips the store
//   |   +-- ReplyError              the store answered with an error reply
//   +-- CodecError                  bytes that are not a value of this cache
//   +-- ValueTooLargeError          a value over max_value_bytes that must be stored
//   +-- LoaderError                 a loader broke its contract
//   +-- LoadTimeoutError            a load outlived its hard timeout
//   +-- BackpressureError           a write-behind queue full
//   +-- WriteConflictError          a write lost the race for its key too often
//   +-- ClosedError                 the cache was closed
//   +-- ConfigError                 options that cannot work together
//   +-- InvalidArgumentError        an argument outside the call's contract
#pragma once

#include <stdexcept>
#include <string>
#include <string_view>
#include <utility>

namespace larder {

class Error : public std::runtime_error {
public:
    using std::runtime_error::runtime_error;
};

/// The cache store failed: connection refused, protocol error, script rejected...
class BackendError : public Error {
public:
    using Error::Error;
};

/// A backend for one Redis server is pointed at a Redis Cluster node: the node redirected a
/// command to another (MOVED, ASK), asked for it again later (TRYAGAIN: its slot is being
/// moved) or refused keys of several slots (CROSSSLOT). A store
/// failure like any other for what cleans up after one (leases, claims, drains), except
/// that a cache read does not load around it: that would hide the mistake behind a
/// database load per read, so the read fails with it instead.
class ClusterRedirectError : public BackendError {
public:
    explicit ClusterRedirectError(const std::string& what, std::string reply = {})
        : BackendError(what), reply_(std::move(reply)) {}

    /// The node's error reply as it came: "MOVED 3999 127.0.0.1:7001", "ASK ...",
    /// "TRYAGAIN ..." (a slot in migration) or "CROSSSLOT ...".
    [[nodiscard]] const std::string& reply() const noexcept { return reply_; }

private:
    std::string reply_;
};

/// The store did not answer within its deadline.
class TimeoutError : public BackendError {
public:
    using BackendError::BackendError;
};

/// A write was sent but its reply never came: the store may or may not have applied it.
/// Retrying is safe only where the write is idempotent; reading back tells which.
class OutcomeUnknownError : public TimeoutError {
public:
    using TimeoutError::TimeoutError;
};

/// A write was applied by the store but not confirmed at the durability asked for (Redis:
/// fewer replicas acknowledged it within the wait): a failover may still lose it. It is
/// not an OutcomeUnknownError: reading it back proves nothing about the replicas.
class DurabilityError : public BackendError {
public:
    using BackendError::BackendError;
};

/// Every connection of a pool stayed borrowed for the whole wait. Not a sign of a sick
/// server (the application may simply run more concurrent calls than the pool holds), so
/// the circuit breaker does not count it.
class PoolExhaustedError : public TimeoutError {
public:
    using TimeoutError::TimeoutError;
};

/// Could not connect or authenticate.
class ConnectionError : public BackendError {
public:
    using BackendError::BackendError;
};

/// The circuit breaker is open: the store is skipped until its cool-down ends.
class CircuitOpenError : public BackendError {
public:
    using BackendError::BackendError;
};

/// The store answered with an error reply (Redis: a wrong type, a rejected script, a
/// server loading its data set). The connection itself is fine.
class ReplyError : public BackendError {
public:
    /// `reply`: the server's error reply, which tells READONLY and CLUSTERDOWN apart.
    ReplyError(const std::string& what, bool server_unavailable, std::string_view reply = {})
        : BackendError(what),
          server_unavailable_(server_unavailable),
          read_only_(reply.starts_with("READONLY ")),
          cluster_down_(reply.starts_with("CLUSTERDOWN")) {}

    /// The server cannot serve anyone right now (loading its data set, stuck in a script,
    /// no master): the breaker counts it like an I/O error. Other error replies (a wrong
    /// type, a rejected script) say nothing about the server's health.
    [[nodiscard]] bool server_unavailable() const noexcept { return server_unavailable_; }

    /// READONLY: a write reached a replica (a demoted primary), which refused it.
    [[nodiscard]] bool read_only() const noexcept { return read_only_; }

    /// CLUSTERDOWN: the cluster, not necessarily this node, cannot serve (a primary is
    /// missing and full coverage is required).
    [[nodiscard]] bool cluster_down() const noexcept { return cluster_down_; }

private:
    bool server_unavailable_;
    bool read_only_;
    bool cluster_down_;
};

/// Bytes that are not a value this cache wrote with this codec.
class CodecError : public Error {
public:
    using Error::Error;
};

/// A value larger than the cache's max_value_bytes where it cannot just go uncached (a
/// write-behind put: the value would be acknowledged but could never be queued).
class ValueTooLargeError : public Error {
public:
    using Error::Error;
};

/// A loader broke its contract (for example a batch loader returned the wrong count).
class LoaderError : public Error {
public:
    using Error::Error;
};

/// A load took longer than the hard timeout, and no stale value was at hand. The load
/// goes on in the background and fills the cache when it ends.
class LoadTimeoutError : public Error {
public:
    using Error::Error;
};

/// WriteBehind: the queue holds max_pending dirty keys and the put could not wait for
/// room (WhenFull::fail), or waited block_timeout in vain. Nothing was written.
class BackpressureError : public Error {
public:
    using Error::Error;
};

/// A write lost the race for its key too often: WriteThrough could not take the key's
/// write lease within max_lock_wait (before the database write, which did not run), or a
/// WriteBehind read-modify-write kept finding the value changed. Nothing was written.
class WriteConflictError : public Error {
public:
    using Error::Error;
};

/// WriteBehind: the cache was closed (close() or destruction began); it acknowledges no
/// more writes. Nothing was written.
class ClosedError : public Error {
public:
    using Error::Error;
};

/// Options that cannot work together, detected at construction.
class ConfigError : public Error {
public:
    using Error::Error;
};

/// An argument outside what the call accepts (an empty command, a counter that would
/// overflow, a queue key the store does not know). Nothing was done.
class InvalidArgumentError : public Error {
public:
    using Error::Error;
};

}  // namespace larder
