// What the subscriber connections (the buses, the lease listener) make of their replies,
// apart from them so that they can be tested (and fuzzed) on replies that
// no healthy server sends.
#pragma once

#include <hiredis/hiredis.h>

#include <cstddef>

#include "larder/backend/redis/connection.hpp"

namespace larder::redis_detail {

/// The payload of a pub/sub message, ["message", <channel>, <payload>] (or
/// "smessage", on a sharded channel); nullptr for any other reply (a PING's
/// ["pong", ""], a subscription's confirmation).
[[nodiscard]] inline const redisReply* message_payload(const redisReply& reply) noexcept {
    if (reply.type != REDIS_REPLY_ARRAY || reply.elements != 3) return nullptr;
    const auto kind = text_of(*reply.element[0]);
    if (kind != "message" && kind != "smessage") return nullptr;
    return reply.element[2];
}

/// ["sunsubscribe", <channel>, <count>]: a cluster node ended a sharded
/// subscription, as it does when the channel's slot moves to another node.
[[nodiscard]] inline bool shard_unsubscribed(const redisReply& reply) noexcept {
    return reply.type == REDIS_REPLY_ARRAY && reply.elements >= 1 &&
           text_of(*reply.element[0]) == "sunsubscribe";
}

/// The payload of a tracking invalidation (RedisTrackingBus): calls
/// on_key(stored key) for each key of an array, or of a lone string; on_flush()
/// for nil (FLUSHALL, FLUSHDB: every key may have changed). Any other payload
/// says nothing.
template <class OnKey, class OnFlush>
void for_each_invalidation(const redisReply& payload, OnKey&& on_key, OnFlush&& on_flush) {
    if (payload.type == REDIS_REPLY_NIL) {
        on_flush();
    } else if (payload.type == REDIS_REPLY_ARRAY) {
        for (std::size_t i = 0; i < payload.elements; ++i) on_key(text_of(*payload.element[i]));
    } else if (payload.type == REDIS_REPLY_STRING) {
        on_key(text_of(payload));
    }
}

}  // namespace larder::redis_detail
