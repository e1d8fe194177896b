// What the subscriber connections (the buses, the lease listener) make of their replies,
// apart from them so that they can be tested (and fuzzed) on replies that
// no healthy server sends.
#pragma once

#include <hiredis/hiredis.h>
#include <poll.h>

#include <cerrno>
#include <chrono>
#include <cstddef>
#include <string>

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

/// The liveness of a subscription, as every subscriber loop keeps it after its poll():
/// traffic proves it alive; a quiet one gets a PING, and one whose PING goes unanswered
/// is dead (TimeoutError). `who` names the subscriber in errors.
class SubscriptionLiveness {
public:
    using clock = std::chrono::steady_clock;

    SubscriptionLiveness(Millis ping_interval, Millis ping_timeout, const char* who)
        : ping_interval_(ping_interval), ping_timeout_(ping_timeout), who_(who) {}

    /// Something arrived.
    void heard(clock::time_point now) noexcept {
        last_traffic_ = now;
        ping_outstanding_ = false;
    }

    /// Nothing arrived by `now`.
    void quiet(redisContext* ctx, clock::time_point now) {
        if (ping_outstanding_) {
            if (now - ping_sent_ > ping_timeout_) {
                throw TimeoutError(std::string(who_) + ": the subscription went silent");
            }
        } else if (now - last_traffic_ > ping_interval_) {
            send_ping(ctx, who_);
            ping_sent_ = now;
            ping_outstanding_ = true;
        }
    }

    [[nodiscard]] const char* who() const noexcept { return who_; }
    [[nodiscard]] Millis ping_interval() const noexcept { return ping_interval_; }

private:
    const Millis ping_interval_;
    const Millis ping_timeout_;
    const char* who_;
    clock::time_point last_traffic_ = clock::now();
    clock::time_point ping_sent_ = last_traffic_;
    bool ping_outstanding_ = false;
};

/// One turn of a subscriber's loop: waits up to ping_interval / 2 for the subscription
/// or the wake pipe; hands every reply that arrived to `on_reply`, in order, or PINGs a
/// quiet subscription (SubscriptionLiveness). Returns true, having read nothing, when the
/// wake pipe fired: the caller drains it and decides whether to stop. Throws
/// BackendError when the connection is lost or unreadable, TimeoutError when it went
/// silent.
template <class OnReply>
bool subscription_turn(redisContext* ctx, int wake_fd, SubscriptionLiveness& liveness,
                       OnReply&& on_reply) {
    pollfd fds[2] = {{ctx->fd, POLLIN, 0}, {wake_fd, POLLIN, 0}};
    const int ready = ::poll(fds, 2, static_cast<int>(liveness.ping_interval().count() / 2));
    if (ready < 0 && errno != EINTR) {
        throw BackendError(std::string(liveness.who()) + ": poll failed");
    }
    if (fds[1].revents != 0) return true;
    const auto now = SubscriptionLiveness::clock::now();
    if (fds[0].revents == 0) {
        liveness.quiet(ctx, now);
        return false;
    }
    if (redisBufferRead(ctx) != REDIS_OK)
        throw BackendError(std::string(liveness.who()) + ": lost");
    liveness.heard(now);
    for (;;) {
        void* raw = nullptr;
        if (redisGetReplyFromReader(ctx, &raw) != REDIS_OK) {
            throw BackendError(std::string(liveness.who()) + ": protocol error");
        }
        if (raw == nullptr) return false;
        const ReplyPtr reply(static_cast<redisReply*>(raw));
        on_reply(*reply);
    }
}

}  // namespace larder::redis_detail
