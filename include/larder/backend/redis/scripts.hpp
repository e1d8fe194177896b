// The Lua scripts behind RedisBackend's compare-and-* operations, and how they are run.
//
// Each operation reads a key and writes it only if it still holds the expected bytes; in
// Redis that is atomic only inside a script (WATCH/MULTI would cost three round trips and
// retries). Every key a script touches is passed in KEYS, never built inside the script,
// so Redis Cluster can route it and a key prefix or hash tag is always honoured.
//
// A script is sent once per backend (SCRIPT LOAD) and then run by EVALSHA, which sends
// its 40-byte SHA1 instead of the source; "EVALSHA <sha1>" is formatted once and kept. When the
// server has forgotten it (SCRIPT FLUSH, a restart, a failover to a replica that never saw it),
// EVALSHA answers NOSCRIPT and the call is sent again as EVAL with the source, in one more
// round trip (which also puts the script back in the server's cache).
#pragma once

#include <array>
#include <atomic>
#include <mutex>
#include <span>
#include <string>
#include <string_view>

#include "larder/backend/redis/connection.hpp"
#include "larder/core/error.hpp"

namespace larder::redis_detail {

// KEYS[1] the key. ARGV[1] the expected bytes, ARGV[2] the new bytes, ARGV[3] the TTL in ms
// (0: none). GET of a missing key is false in Lua, which equals no string.
// Replacing a lease, ARGV[4] and ARGV[5] announce its end: PUBLISH ARGV[4] ARGV[5] (the
// channel, the key as the caller named it). The PUBLISH may be refused (an ACL without
// the channel): the write stands, and waiters poll.
inline constexpr std::string_view compare_and_set_lua = R"lua(
if redis.call('GET', KEYS[1]) ~= ARGV[1] then
    return 0
end
if tonumber(ARGV[3]) > 0 then
    redis.call('SET', KEYS[1], ARGV[2], 'PX', ARGV[3])
else
    redis.call('SET', KEYS[1], ARGV[2])
end
if ARGV[4] then
    redis.pcall('PUBLISH', ARGV[4], ARGV[5])
end
return 1
)lua";

// KEYS[1] the key. ARGV[1] the expected bytes. Releasing a lease, ARGV[2] and ARGV[3]
// announce its end, as in compare_and_set.
inline constexpr std::string_view compare_and_delete_lua = R"lua(
if redis.call('GET', KEYS[1]) ~= ARGV[1] then
    return 0
end
local deleted = redis.call('DEL', KEYS[1])
if ARGV[2] then
    redis.pcall('PUBLISH', ARGV[2], ARGV[3])
end
return deleted
)lua";

// KEYS[1] the key. ARGV[1] the expected bytes, ARGV[2] the new TTL in ms (0: none).
inline constexpr std::string_view compare_and_expire_lua = R"lua(
if redis.call('GET', KEYS[1]) ~= ARGV[1] then
    return 0
end
if tonumber(ARGV[2]) > 0 then
    redis.call('PEXPIRE', KEYS[1], ARGV[2])
else
    redis.call('PERSIST', KEYS[1])
end
return 1
)lua";

class Script {
public:
    /// `writes`: whether the script can change data. A timeout after a writing script was
    /// sent is OutcomeUnknownError (it may have run); after a read-only one, TimeoutError.
    Script(std::string_view name, std::string_view source, bool writes = true)
        : name_(name), source_(source), writes_(writes) {}

    Script(const Script&) = delete;
    Script& operator=(const Script&) = delete;

    /// Runs the script on `conn` and returns its (non-error) reply. A rejected script
    /// (scripting disabled, no permission, a runtime error) throws ReplyError naming it.
    [[nodiscard]] ReplyPtr run(Connection& conn, std::span<const std::string_view> keys,
                               std::span<const std::string_view> args) {
        Counters& counters = conn.counters();
        if (eval_only_.load(std::memory_order_relaxed)) {
            conn.append(call_args("EVAL", source_, keys, args));
            return checked(conn.receive());
        }
        if (!known_.load(std::memory_order_acquire)) {
            // First use by this backend: load and run in one round trip. EVAL (not EVALSHA)
            // because the SHA1 is not known before SCRIPT LOAD answers.
            counters.add<&RedisBackendStats::script_loads>();
            auto [loaded, result] =
                conn.pipeline(load_args(), call_args("EVAL", source_, keys, args));
            if (loaded->type == REDIS_REPLY_ERROR && result->type != REDIS_REPLY_ERROR &&
                !means_cluster(text_of(*loaded))) {
                // The script ran, but SCRIPT LOAD is not allowed (an ACL without
                // script|load): its reply is the call's, and every later call is an EVAL.
                // Throwing here would report a write that happened as failed.
                eval_only_.store(true, std::memory_order_relaxed);
                return std::move(result);  // a structured binding: no implicit move
            }
            remember(*loaded);
            return checked(std::move(result));
        }
        const Args rest = call_rest(keys, args);
        conn.append(evalsha_head_, 2, rest);
        ReplyPtr result = conn.receive();
        // Redis's own answer to an unknown SHA1, not merely an error that starts with
        // NOSCRIPT (a script may return one): EVAL then runs it again.
        if (result->type == REDIS_REPLY_ERROR &&
            text_of(*result).starts_with("NOSCRIPT No matching script")) {
            // EVAL, not SCRIPT LOAD and EVALSHA again: EVAL cannot answer NOSCRIPT, however
            // often the script cache is flushed meanwhile, and it puts the script back in
            // that cache for the next EVALSHA.
            counters.add<&RedisBackendStats::script_loads>();
            conn.append(call_args("EVAL", source_, keys, args));
            result = conn.receive();
        }
        return checked(std::move(result));
    }

    [[nodiscard]] std::string_view name() const noexcept { return name_; }
    [[nodiscard]] std::string_view source() const noexcept { return source_; }
    [[nodiscard]] bool writes() const noexcept { return writes_; }

private:
    [[nodiscard]] Args load_args() const { return Args{"SCRIPT", "LOAD", source_}; }

    [[nodiscard]] static Args call_args(std::string_view verb, std::string_view script,
                                        std::span<const std::string_view> keys,
                                        std::span<const std::string_view> args) {
        Args a;
        a.push(verb);
        a.push(script);
        push_rest(a, keys, args);
        return a;
    }

    // What follows EVALSHA and the SHA1 (formatted once, in evalsha_head_).
    [[nodiscard]] static Args call_rest(std::span<const std::string_view> keys,
                                        std::span<const std::string_view> args) {
        Args a;
        push_rest(a, keys, args);
        return a;
    }

    static void push_rest(Args& a, std::span<const std::string_view> keys,
                          std::span<const std::string_view> args) {
        a.push(small_number(keys.size()));
        for (std::string_view k : keys) a.push(k);
        for (std::string_view v : args) a.push(v);
    }

    // numkeys as a view that outlives the Args.
    [[nodiscard]] static std::string_view small_number(std::size_t n) {
        static const std::array<std::string, 256> numbers = [] {
            std::array<std::string, 256> out;
            for (std::size_t i = 0; i < out.size(); ++i) out[i] = std::to_string(i);
            return out;
        }();
        if (n >= numbers.size()) throw BackendError("redis: too many keys for one script");
        return numbers[n];
    }

    void remember(const redisReply& loaded) {
        if (loaded.type == REDIS_REPLY_ERROR) {
            if (means_cluster(text_of(loaded))) throw_cluster_redirect(name_, text_of(loaded));
            throw ReplyError("redis: cannot load the " + std::string(name_) +
                                 " script (Redis must allow SCRIPT LOAD, EVAL and EVALSHA): " +
                                 std::string(text_of(loaded)),
                             means_unavailable(text_of(loaded)), text_of(loaded));
        }
        if (loaded.type != REDIS_REPLY_STRING) unexpected(loaded, "SCRIPT LOAD");
        std::lock_guard lock(mutex_);
        if (!known_.load(std::memory_order_relaxed)) {
            evalsha_head_ = Connection::format_items(Args{"EVALSHA", text_of(loaded)});
            known_.store(true, std::memory_order_release);
        }
    }

    [[nodiscard]] ReplyPtr checked(ReplyPtr result) const {
        if (result->type == REDIS_REPLY_ERROR) {
            const std::string_view text = text_of(*result);
            if (means_unauthenticated(text)) check(*result, name_);
            if (means_cluster(text)) throw_cluster_redirect(name_, text);
            throw ReplyError(
                "redis: the " + std::string(name_) + " script failed: " + std::string(text),
                means_unavailable(text), text);
        }
        return result;
    }

    const std::string_view name_;
    const std::string_view source_;
    const bool writes_;
    std::mutex mutex_;
    std::atomic<bool> known_{false};
    std::atomic<bool> eval_only_{false};  // SCRIPT LOAD is refused; EVAL is not
    // EVALSHA and the script's SHA1 as RESP, the same bytes on every call. Written once,
    // before known_ becomes true; never changed after.
    std::string evalsha_head_;
};

}  // namespace larder::redis_detail
