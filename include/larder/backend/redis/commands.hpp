// What each Backend operation sends to Redis and how it reads the replies, on one
// connection: shared by RedisBackend (one server) and RedisClusterBackend (a node per
// slot), which differ only in where a command goes. Reply readers are free functions so
// that they can be tested (and fuzzed) on replies no healthy server sends.
#pragma once

#include <cstddef>
#include <cstdint>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "larder/backend/backend.hpp"
#include "larder/backend/redis/connection.hpp"
#include "larder/backend/redis/scripts.hpp"
#include "larder/core/clock.hpp"

namespace larder::redis_detail {

/// The key as stored: prefix + key, without a copy when there is no prefix.
class StoredKey {
public:
    StoredKey(const std::string& prefix, std::string_view key) {
        if (prefix.empty()) {
            view_ = key;
        } else {
            owned_.reserve(prefix.size() + key.size());
            owned_.append(prefix).append(key);
            view_ = owned_;
        }
    }
    StoredKey(const StoredKey&) = delete;
    StoredKey& operator=(const StoredKey&) = delete;

    [[nodiscard]] std::string_view view() const noexcept { return view_; }

private:
    std::string owned_;
    std::string_view view_;
};

// What RedisBackend makes of each reply. Free functions, so that they can be tested (and
// fuzzed) on replies that no healthy server sends.

/// GET's reply: the value, or nullopt for nil. An error reply, or one of another type,
/// throws BackendError.
[[nodiscard]] inline std::optional<StoredValue> value_reply(const redisReply& value) {
    check(value, "GET");
    if (value.type == REDIS_REPLY_NIL) return std::nullopt;
    if (value.type != REDIS_REPLY_STRING) unexpected(value, "GET");
    return StoredValue{std::string(text_of(value)), std::nullopt};
}

/// MGET's reply for `count` keys: a value for each string, nullopt for anything else. An
/// error reply, or anything but an array of `count` elements, throws BackendError.
[[nodiscard]] inline std::vector<std::optional<StoredValue>> mget_reply(const redisReply& reply,
                                                                        std::size_t count) {
    check(reply, "MGET");
    if (reply.type != REDIS_REPLY_ARRAY || reply.elements != count) unexpected(reply, "MGET");
    std::vector<std::optional<StoredValue>> out;
    out.reserve(count);
    for (std::size_t i = 0; i < count; ++i) {
        const redisReply& v = *reply.element[i];
        if (v.type == REDIS_REPLY_STRING) {
            out.push_back(StoredValue{std::string(text_of(v)), std::nullopt});
        } else {
            out.emplace_back();
        }
    }
    return out;
}

/// The replies of GET and PTTL, pipelined: the value and its remaining TTL, or nullopt.
[[nodiscard]] inline std::optional<StoredValue> stored_value(const redisReply& value,
                                                             const redisReply& ttl) {
    check(value, "GET");
    check(ttl, "PTTL");
    if (value.type == REDIS_REPLY_NIL) return std::nullopt;
    if (value.type != REDIS_REPLY_STRING) unexpected(value, "GET");
    if (ttl.type != REDIS_REPLY_INTEGER) unexpected(ttl, "PTTL");
    // -2: deleted or expired since the GET. 0: expires within this millisecond, which
    // MemoryBackend already counts as expired (an entry dies when its deadline is
    // reached; Redis lets it live through that millisecond).
    if (ttl.integer == -2 || ttl.integer == 0) return std::nullopt;
    StoredValue out{std::string(text_of(value)), std::nullopt};
    if (ttl.integer > 0) out.ttl = Millis{ttl.integer};
    return out;
}

/// SET ... NX's reply: whether the key was set.
[[nodiscard]] inline bool set_if_absent_reply(const redisReply& reply) {
    check(reply, "SET NX");
    if (reply.type == REDIS_REPLY_NIL) return false;
    if (reply.type != REDIS_REPLY_STATUS) unexpected(reply, "SET NX");
    return true;
}

/// The reply of a command or script that answers an integer (DEL, INCRBY, PUBLISH).
[[nodiscard]] inline std::int64_t integer_reply(const redisReply& reply, std::string_view what) {
    check(reply, what);
    if (reply.type != REDIS_REPLY_INTEGER) unexpected(reply, what);
    return static_cast<std::int64_t>(reply.integer);
}

/// The keys of a multi-key call as stored: prefix + key, as views that live as long as
/// this object.
class StoredKeys {
public:
    StoredKeys(const std::string& prefix, std::span<const std::string> keys) {
        assign(prefix, keys);
    }
    StoredKeys(const std::string& prefix, std::span<const std::string_view> keys) {
        assign(prefix, keys);
    }
    StoredKeys(const StoredKeys&) = delete;
    StoredKeys& operator=(const StoredKeys&) = delete;

    [[nodiscard]] std::span<const std::string_view> views() const noexcept { return views_; }

private:
    template <class Key>
    void assign(const std::string& prefix, std::span<const Key> keys) {
        views_.reserve(keys.size());
        if (prefix.empty()) {
            views_.assign(keys.begin(), keys.end());
            return;
        }
        owned_.reserve(keys.size());
        for (const auto& k : keys) owned_.push_back(prefix + std::string(k));
        views_.assign(owned_.begin(), owned_.end());
    }

    std::vector<std::string> owned_;
    std::vector<std::string_view> views_;
};

// ---- the operations, each on one connection ------------------------------------------

/// GET alone: one command per hit.
[[nodiscard]] inline std::optional<StoredValue> get_value(Connection& c, std::string_view key) {
    return value_reply(*c.command(Args{"GET", key}));
}

/// GET and PTTL, pipelined: one round trip.
//
// Why a pipeline and not a script returning {GET, PTTL}: both take one round trip, but on
// the server a trivial EVALSHA costs ~1.9 us of CPU against ~0.55 us for GET + PTTL
// (measured here, 2 cores, Redis 7.0, 400k ops in 200-deep pipelines), and it is the
// server's CPU that runs out first under many clients. A pipeline also works with
// scripting disabled and on read-only replicas. The two commands are not atomic, but the
// value is whatever GET saw; a concurrent delete or expiry between them shows as PTTL -2
// and reads as absent, which is also what a read a moment later would see.
[[nodiscard]] inline std::optional<StoredValue> get(Connection& c, std::string_view key) {
    auto [value, ttl] = c.pipeline(Args{"GET", key}, Args{"PTTL", key});
    return stored_value(*value, *ttl);
}

// Multi-key reads in two halves, so that a cluster client can send to every node before
// it waits for any.

/// Queues and sends one MGET.
inline void send_mget(Connection& c, std::span<const std::string_view> keys) {
    Args mget{"MGET"};
    for (std::string_view k : keys) mget.push(k);
    c.append(mget);
    c.flush();
}

[[nodiscard]] inline std::vector<std::optional<StoredValue>> receive_mget(Connection& c,
                                                                          std::size_t count) {
    return mget_reply(*c.receive(), count);
}

/// Queues and sends GET + PTTL per key, in one pipeline.
inline void send_get_many(Connection& c, std::span<const std::string_view> keys) {
    for (std::string_view k : keys) {
        c.append(Args{"GET", k});
        c.append(Args{"PTTL", k});
    }
    c.flush();
}

/// The replies of send_get_many, all read before any is looked at, so that an error reply
/// in the middle leaves the connection in step.
[[nodiscard]] inline std::vector<std::optional<StoredValue>> receive_get_many(Connection& c,
                                                                              std::size_t count) {
    std::vector<ReplyPtr> replies;
    replies.reserve(2 * count);
    for (std::size_t i = 0; i < 2 * count; ++i) replies.push_back(c.receive());
    std::vector<std::optional<StoredValue>> out;
    out.reserve(count);
    for (std::size_t i = 0; i < count; ++i) {
        out.push_back(stored_value(*replies[2 * i], *replies[2 * i + 1]));
    }
    return out;
}

/// SET key value [PX ttl]; a TTL of no_expiry (or below) stores without one.
inline void set(Connection& c, std::string_view key, std::string_view value, Millis ttl) {
    const Number px(saturated(ttl).count());
    const auto reply = ttl.count() > 0 ? c.command(Args{"SET", key, value, "PX", px.view()})
                                       : c.command(Args{"SET", key, value});
    check(*reply, "SET");
}

/// SET key value NX [PX ttl]: true when this call created the key.
[[nodiscard]] inline bool set_if_absent(Connection& c, std::string_view key, std::string_view value,
                                        Millis ttl) {
    const Number px(saturated(ttl).count());
    const auto reply = ttl.count() > 0 ? c.command(Args{"SET", key, value, "NX", "PX", px.view()})
                                       : c.command(Args{"SET", key, value, "NX"});
    return set_if_absent_reply(*reply);
}

/// A script that answers an integer (the compare-and-* operations).
[[nodiscard]] inline std::int64_t integer_script(Connection& c, Script& script,
                                                 std::span<const std::string_view> keys,
                                                 std::span<const std::string_view> args) {
    const auto reply = script.run(c, keys, args);
    if (reply->type != REDIS_REPLY_INTEGER) unexpected(*reply, script.name());
    return static_cast<std::int64_t>(reply->integer);
}

}  // namespace larder::redis_detail
