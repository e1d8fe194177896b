// RedisBus: the invalidation bus over Redis pub/sub. One dedicated subscriber
// connection and one thread per bus (shared by every cache in the process that
// subscribes to it); publishing goes through an ordinary pooled RedisBackend.
//
// A subscriber that loses its connection cannot know what was published
// meanwhile, so the bus reports the loss at once (on_lost), reconnects with
// backoff, and once SUBSCRIBE is confirmed again replays what it missed from a
// log kept beside the channel (every message carries a sequence number):
// on_resumed when the log held all of it, so that L1s keep their hot set;
// on_restored (start over) when it did not. A connection that goes silent (a
// network partition that neither side notices) is caught by a PING every
// `ping_interval` whose answer must come within `ping_timeout`. A SUBSCRIBE
// that Redis refuses (an ACL without the channel) is reported through on_error
// and refusals(), then retried at max_backoff.
//
// On a Redis Cluster (RedisClusterBus, over RedisClusterBackend) the channel is
// a sharded one (SPUBLISH, SSUBSCRIBE; Redis 7): its messages travel only
// within the shard that owns its slot, and the counter and the log live in that
// slot too (under a hash tag made of the channel's name). The subscriber
// follows the slot: when it moves, Redis ends the subscription (sunsubscribe),
// and the bus subscribes again at the new owner and replays what it missed from
// the log, as after any reconnect.
//
// Tenants: the channel and every message carry the RedisOptions key prefix. The
// channel is `<prefix><channel>`, so an ACL of `&<prefix>*` admits it; a
// message "k<key>" goes out as "k<prefix><key>" - the entry's full stored key -
// and a message of another prefix that arrives on the same channel is dropped.
#pragma once

#include <fcntl.h>
#include <poll.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <functional>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <string_view>
#include <thread>
#include <type_traits>

#include "larder/backend/redis.hpp"
#include "larder/backend/redis/pubsub.hpp"
#include "larder/backend/redis_cluster.hpp"
#include "larder/core/keys.hpp"
#include "larder/core/random.hpp"
#include "larder/near/bus.hpp"
#include "larder/near/detail/redis_bus_wire.hpp"

namespace larder {

struct RedisBusOptions {
    /// After the key prefix: the channel is `<key prefix><channel>`.
    std::string channel = "larder:invalidate";
    /// Told (on the bus's thread) why a subscription failed or was refused; by
    /// default the reason goes to stderr. Keep it short; it must not throw.
    std::function<void(std::string_view)> on_error{};
    /// First wait before reconnecting; doubles up to max_backoff.
    Millis first_backoff{20};
    Millis max_backoff{1000};
    /// A PING on a quiet subscription, and how long its answer may take.
    Millis ping_interval{1000};
    Millis ping_timeout{2000};
    /// Messages kept in Redis (a sorted set beside the channel) so that a
    /// subscriber that reconnects can replay what it missed and keep its L1 (no
    /// cold start in every process at once). 0: none; a reconnect then starts
    /// every L1 over, as does a gap longer than the log. Messages are numbered
    /// either way, so buses that disagree on this stay correct (a gap is seen as
    /// one).
    std::size_t replay_log = 10'000;
};

/// `Redis` is RedisBackend (RedisBus: plain pub/sub on one server) or
/// RedisClusterBackend (RedisClusterBus: sharded pub/sub on a cluster).
template <class Redis>
class BasicRedisBus {
    static constexpr bool on_cluster = std::is_same_v<Redis, RedisClusterBackend>;

public:
    /// RedisOptions, or RedisClusterOptions on a cluster.
    using ConnectOptions = std::conditional_t<on_cluster, RedisClusterOptions, RedisOptions>;

    /// `redis` says where Redis is, how to log in, and the tenant's key prefix.
    explicit BasicRedisBus(ConnectOptions redis, RedisBusOptions options = {})
        : options_(std::move(options)),
          prefix_(keys::Namespace(node_options(redis).key_prefix).prefix()),
          channel_(prefix_ + options_.channel),
          seq_key_(slot_base(channel_) + ":seq"),
          log_key_(slot_base(channel_) + ":log"),
          endpoint_(redis_detail::Endpoint::from(node_options(redis))),
          publisher_(publisher_options(std::move(redis))) {
        if (options_.channel.empty()) throw ConfigError("RedisBus: the channel must not be empty");
        if (pipe2(wake_, O_CLOEXEC | O_NONBLOCK) != 0) {
            throw BackendError("RedisBus: cannot create a wake-up pipe");
        }
        thread_ = std::thread([this] { run(); });
    }

    BasicRedisBus(const BasicRedisBus&) = delete;
    BasicRedisBus& operator=(const BasicRedisBus&) = delete;

    ~BasicRedisBus() {
        stopping_.store(true);
        wake();
        thread_.join();
        close(wake_[0]);
        close(wake_[1]);
    }

    /// Throws BackendError when Redis cannot be reached or refuses (an ACL
    /// without the channel).
    void publish(std::string_view message) {
        if (message.empty()) return;
        const std::string wire = redis_detail::bus_wire(message, prefix_);
        // Numbered even without a log: a subscriber that keeps one must see a gap
        // where a message it could not replay went out.
        const std::string keep = std::to_string(options_.replay_log);
        // The message's id, and the new epoch should it find the counter gone:
        // random, so never one used before.
        const std::string id = std::to_string(random_version());
        auto send = [&] {
            const RedisReply sent =
                publisher_.eval(publish_logged_, {seq_key_, log_key_},
                                {wire, channel_, keep, id, on_cluster ? "SPUBLISH" : "PUBLISH"});
            if constexpr (on_cluster) {
                // No one heard it: while the channel's slot migrates, the script runs where
                // its keys have gone (ASK), but the subscribers are still at the slot's
                // owner, which accepts SPUBLISH until the slot is handed over. Once more
                // there (a duplicate is harmless: invalidations are idempotent).
                if (sent.is_array() && sent.elements.size() == 2 && sent.elements[0].is_integer() &&
                    sent.elements[0].integer == 0 && sent.elements[1].is_string()) {
                    (void)publisher_.command({"SPUBLISH", channel_, sent.elements[1].str});
                }
            }
        };
        try {
            send();
        } catch (const ConnectionError&) {
            // A pooled connection the server had closed (a blip, a proxy, an idle
            // timeout): once more on a new one. The message may go out twice, which
            // is harmless; one that does not go out leaves other L1s serving the old
            // value until it does.
            send();
        } catch (const OutcomeUnknownError&) {
            send();  // the same, found closed only once the message had left
        }
    }

    /// Messages replayed from the log after reconnects, and reconnects that
    /// needed no fresh start (every missed message was still in the log).
    [[nodiscard]] std::uint64_t replayed() const noexcept { return replayed_.load(); }
    [[nodiscard]] std::uint64_t resumes() const noexcept { return resumes_.load(); }

    /// The channel as subscribed: the key prefix, then RedisBusOptions::channel.
    [[nodiscard]] const std::string& channel() const noexcept { return channel_; }

    /// Subscriptions Redis refused (an ACL without the channel): each was
    /// reported.
    [[nodiscard]] std::uint64_t refusals() const noexcept { return refusals_.load(); }

    /// Why the last subscription attempt failed; empty once subscribed.
    [[nodiscard]] std::string last_error() const { return state_.last_error(); }

    BusSubscription subscribe(BusHandlers handlers) {
        return state_.subscribe(std::move(handlers));
    }

    [[nodiscard]] bool connected() const noexcept { return state_.connected(); }

    /// Subscriptions made so far (1 + reconnects): lets tests see a recovery.
    [[nodiscard]] std::uint64_t subscriptions() const noexcept { return state_.subscriptions(); }

    /// Blocks until connected and every subscriber has been told so, or `timeout`
    /// passes; returns whether that happened.
    bool wait_connected(Millis timeout) { return state_.wait_connected(timeout); }

private:
    static const RedisOptions& node_options(const ConnectOptions& o) {
        if constexpr (on_cluster) {
            return o.node;
        } else {
            return o;
        }
    }

    // The counter and the log beside the channel: on a cluster, in the channel's slot (a
    // sharded channel hashes as a key does, so "{c}:seq" lives where "c" is published). A
    // channel with braces that make no tag of their own gets a two-byte tag of its slot.
    static std::string slot_base(const std::string& channel) {
        if (!on_cluster || keys::hash_tag(channel) != std::string_view(channel)) return channel;
        if (channel.find_first_of("{}") == std::string::npos) return "{" + channel + "}";
        return "{" + keys::detail::tags_by_slot()[keys::slot(channel)] + "}" + channel;
    }

    static ConnectOptions publisher_options(ConnectOptions o) {
        RedisOptions* node = nullptr;
        if constexpr (on_cluster) {
            node = &o.node;
        } else {
            node = &o;
        }
        node->pool_size = 2;
        node->key_prefix.clear();
        return o;
    }

    // Where to subscribe: the server, or the node that owns the channel's slot
    // now.
    redis_detail::Endpoint subscriber_endpoint() {
        if constexpr (on_cluster) {
            publisher_.refresh_slots();
            const std::string owner = publisher_.node_of(channel_);
            const auto colon = owner.rfind(':');
            if (owner.empty() || colon == std::string::npos) {
                throw BackendError("RedisClusterBus: no node serves the channel's slot");
            }
            redis_detail::Endpoint e = endpoint_;
            e.host = owner.substr(0, colon);
            e.port = std::stoi(owner.substr(colon + 1));
            return e;
        } else {
            return endpoint_;
        }
    }

    void wake() const {
        const char byte = 1;
        [[maybe_unused]] const auto n = ::write(wake_[1], &byte, 1);
    }

    // Sleeps up to `d`, or less when the bus is being destroyed.
    void nap(Millis d) const {
        pollfd p{wake_[0], POLLIN, 0};
        ::poll(&p, 1, static_cast<int>(d.count()));
    }

    void run() {
        Millis backoff = options_.first_backoff;
        while (!stopping_.load()) {
            try {
                listen();
                backoff = options_.first_backoff;
            } catch (const SubscribeRefused& e) {
                // Not a network fault: it lasts until someone changes the ACL.
                // Reported before counted: whoever sees the count sees the reason too.
                report(e.what());
                refusals_.fetch_add(1);
                backoff = options_.max_backoff;
            } catch (const std::exception& e) {
                // Connection refused, lost, or silent: retry below.
                state_.set_error(e.what());
            }
            if (state_.connected()) state_.set_connected(false);
            if (stopping_.load()) break;
            nap(backoff);
            backoff = std::min(backoff * 2, options_.max_backoff);
        }
    }

    // One subscription, until it fails or the bus stops.
    void listen() {
        redis_detail::Counters counters;
        redis_detail::Connection conn(subscriber_endpoint(), counters);
        const std::string server = server_identity(conn);
        const char* verb = on_cluster ? "SSUBSCRIBE" : "SUBSCRIBE";
        const auto reply = conn.command(redis_detail::Args{verb, channel_});
        if (reply->type != REDIS_REPLY_ARRAY) {
            std::string why = "RedisBus: " + std::string(verb) + " " + channel_ + " refused";
            if (reply->type == REDIS_REPLY_ERROR) {
                const std::string_view text = redis_detail::text_of(*reply);
                // The slot moved between the map's refresh and the subscription: again.
                if (redis_detail::means_cluster(text))
                    throw BackendError(why + ": " + std::string(text));
                why += ": " + std::string(text);
            }
            throw SubscribeRefused(why);
        }
        state_.set_connected(
            true, [] {}, catch_up(server));

        // ["message", channel, payload] (["smessage", ...] when sharded); PING answers
        // ["pong", ""]; ignore the rest.
        const auto on_reply = [this](const redisReply& message) {
            if (const redisReply* payload = redis_detail::message_payload(message)) {
                deliver(redis_detail::text_of(*payload));
            } else if (redis_detail::shard_unsubscribed(message)) {
                // The channel's slot moved to another node, which now carries its messages.
                throw BackendError("RedisClusterBus: the channel's slot moved");
            }
        };
        redis_detail::SubscriptionLiveness liveness(options_.ping_interval, options_.ping_timeout,
                                                    "RedisBus");
        while (!stopping_.load()) {
            if (redis_detail::subscription_turn(conn.context(), wake_[0], liveness, on_reply)) {
                return;  // stopping
            }
        }
    }

    // Where a message stands: the lifetime of the counter (an epoch a publisher
    // draws when it finds none, so a flush or a restart without persistence
    // starts a new one), its number in it, and its own random id, which tells it
    // from another message given the same number after a rollback (a restart from
    // an older snapshot, a failover to a replica that was behind: the counter
    // comes back lower, under the same epoch).
    using Position = redis_detail::BusPosition;

    // Which server process, with which dataset, this connection talks to: its
    // run_id (a restart or a failover changes it) and replication id (a resync
    // that replaced its data changes it). A server restored from a snapshot has
    // lost the messages published after the snapshot, and with them their
    // numbers: the log and the counter agree, and only this tells that something
    // is missing. "" when INFO is refused (an ACL without +info): then no
    // reconnect can resume. Asked on the connection that subscribes.
    std::string server_identity(redis_detail::Connection& conn) {
        std::string identity;
        for (const char* section : {"server", "replication"}) {
            const auto info = conn.command(redis_detail::Args{"INFO", section});
            const std::string_view text = info->type == REDIS_REPLY_STRING
                                              ? redis_detail::text_of(*info)
                                              : std::string_view{};
            const std::string_view field = section[0] == 's' ? "run_id:" : "master_replid:";
            const auto at = text.find(field);
            if (at == std::string_view::npos) {
                if (!info_refused_.exchange(true)) {
                    report("RedisBus: INFO " + std::string(section) +
                           " refused; without it a reconnect cannot tell a restarted server "
                           "from the one it left, so every L1 starts over (grant +info)");
                }
                return {};
            }
            const auto begin = at + field.size();
            identity.append(text.substr(begin, text.find_first_of("\r\n", begin) - begin));
            identity += '/';
        }
        return identity;
    }

    // Just subscribed: replays from the log what this bus missed since its last
    // message, before any message of the new subscription is read (those follow,
    // duplicates included, which is harmless: invalidations are idempotent). True
    // if nothing missed is unknown: the same server process and dataset, the
    // counter in the same epoch and not behind the last message heard, the log
    // still holding that very message (same number, same id) and every number
    // after it.
    bool catch_up(const std::string& server) {
        if (options_.replay_log == 0) return false;
        std::optional<Position> last = std::exchange(heard_, std::nullopt);
        if (server.empty() || server != server_) last.reset();  // another server: start over
        server_ = server;
        try {
            // No counter yet: draw its epoch now. Otherwise a subscriber that heard
            // nothing could not tell the epoch a publisher draws later from one
            // drawn, flushed and drawn again while it was away; with it, only a
            // reconnect after a flush starts over.
            (void)publisher_.command(
                {"HSETNX", seq_key_, "epoch", std::to_string(random_version())});
            const auto now = publisher_.command({"HMGET", seq_key_, "epoch", "seq"});
            Position current;
            if (now.elements.size() == 2) {
                current.epoch = now.elements[0].str;
                current.seq = std::strtoull(now.elements[1].str.c_str(), nullptr, 10);
            }
            if (current.epoch.empty()) return false;  // deleted under us: nothing to go by
            const bool same_epoch =
                last && last->epoch == current.epoch && last->seq <= current.seq;
            const auto logged =
                publisher_.command({"ZRANGEBYSCORE", log_key_,
                                    std::to_string(same_epoch ? last->seq : current.seq), "+inf"});
            const auto& entries = logged.elements;
            // Starting over: from where the counter stands now.
            auto start_over = [&] {
                heard_ = current;
                for (const auto& m : entries) {
                    const auto at = redis_detail::bus_position_of(m.str);
                    if (at && at->epoch == current.epoch && at->seq == current.seq) heard_ = *at;
                }
                return false;
            };
            if (!same_epoch) return start_over();
            std::size_t first_missed = 0;
            if (last->seq > 0) {  // the last message heard, unless the epoch had none
                const auto at =
                    entries.empty() ? std::nullopt : redis_detail::bus_position_of(entries[0].str);
                if (last->id.empty() || !at || at->seq != last->seq || at->id != last->id) {
                    return start_over();
                }
                first_missed = 1;
            }
            std::uint64_t expected = last->seq + 1;
            for (std::size_t i = first_missed; i < entries.size(); ++i) {
                const auto at = redis_detail::bus_position_of(entries[i].str);
                if (!at || at->epoch != last->epoch || at->seq != expected++) return start_over();
            }
            // Nothing numbered after the last message heard may be missing from the
            // log.
            if (expected <= current.seq) return start_over();
            heard_ = last;
            for (std::size_t i = first_missed; i < entries.size(); ++i) {
                replayed_.fetch_add(1, std::memory_order_relaxed);
                deliver(entries[i].str);
            }
            resumes_.fetch_add(1, std::memory_order_relaxed);
            return true;
        } catch (const Error&) {
            return false;  // the log cannot be read: start over, and the next time too
        }
    }

    // ["#<epoch>.<seq>.<id>:"]"<kind><prefix><key>" on the wire; subscribers hear
    // "<kind><key>".
    void deliver(std::string_view wire) {
        if (auto at = redis_detail::take_bus_position(wire)) {
            // The latest, not the largest: the script numbers and publishes in one
            // step, so the channel's order is the log's, and a new epoch is where it
            // continues.
            if (heard_) heard_ = std::move(*at);
        }
        std::string scratch;
        const auto message = redis_detail::bus_message(wire, prefix_, scratch);
        if (!message) return;  // another tenant's
        state_.message(*message);
    }

    void report(const std::string& why) { state_.report(why, options_.on_error); }

    class SubscribeRefused : public BackendError {
    public:
        using BackendError::BackendError;
    };

    const RedisBusOptions options_;
    const std::string prefix_;
    const std::string channel_;
    const std::string seq_key_;
    const std::string log_key_;
    const redis_detail::Endpoint endpoint_;
    Redis publisher_;
    detail::ListenerState state_;
    std::atomic<bool> stopping_{false};
    std::atomic<std::uint64_t> refusals_{0};
    std::atomic<std::uint64_t> replayed_{0};
    std::atomic<std::uint64_t> resumes_{0};
    std::optional<Position> heard_;          // the last message heard; the bus's thread only
    std::string server_;                     // the server identity heard_ belongs to; ditto
    std::atomic<bool> info_refused_{false};  // reported once
    RedisScript publish_logged_{"bus_publish", R"lua(
local epoch = redis.call('HGET', KEYS[1], 'epoch')
if not epoch then
    epoch = ARGV[4]
    redis.call('HSET', KEYS[1], 'epoch', epoch)
end
local seq = redis.call('HINCRBY', KEYS[1], 'seq', 1)
local m = '#' .. epoch .. '.' .. string.format('%d', seq) .. '.' .. ARGV[4] .. ':' .. ARGV[1]
local keep = tonumber(ARGV[3])
if keep > 0 then
    redis.call('ZADD', KEYS[2], seq, m)
    local over = redis.call('ZCARD', KEYS[2]) - keep
    if over > 0 then redis.call('ZREMRANGEBYRANK', KEYS[2], 0, over - 1) end
end
return {redis.call(ARGV[5], ARGV[2], m), m}
)lua"};
    int wake_[2] = {-1, -1};
    std::thread thread_;  // last: starts after everything it uses exists
};

using RedisBus = BasicRedisBus<RedisBackend>;
using RedisClusterBus = BasicRedisBus<RedisClusterBackend>;

static_assert(InvalidationBus<RedisBus>);
static_assert(InvalidationBus<RedisClusterBus>);

}  // namespace larder
