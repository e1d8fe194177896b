// Errors of the write paths (WriteThrough, WriteBehind).
#pragma once

#include "larder/core/error.hpp"

namespace larder {

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

}  // namespace larder
