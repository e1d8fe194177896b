// The exception tree. Everything larder throws derives from larder::Error, so a caller can
// catch the library's failures in one place while a loader's own exceptions pass through
// unchanged.
#pragma once

#include <stdexcept>
#include <string>
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

/// Options that cannot work together, detected at construction.
class ConfigError : public Error {
public:
    using Error::Error;
};

}  // namespace larder
