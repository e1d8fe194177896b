// One hiredis connection, owned: a blocking socket with a connect timeout and a per-wait
// command timeout, authenticated and on the right database before first use.
//
// Commands are argv arrays with explicit lengths, so keys and values are binary-safe and
// user bytes never pass through a format string. Commands are appended to the context's
// output buffer and flushed by the first reply read: N appended commands cost one round
// trip. A connection that saw an I/O error or a timeout has a reply stream that is out of
// step with its requests, so it reports itself not reusable and the pool drops it.
#pragma once

#include <fcntl.h>
#include <hiredis/hiredis.h>
#include <poll.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <time.h>

#include <algorithm>
#include <array>
#include <atomic>
#include <cerrno>
#include <charconv>
#include <concepts>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <functional>
#include <initializer_list>
#include <memory>
#include <mutex>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "larder/backend/redis/options.hpp"
#include "larder/backend/redis/reply.hpp"
#include "larder/backend/redis/stats.hpp"
#include "larder/core/error.hpp"
#include "larder/core/stats.hpp"

namespace larder::redis_detail {

struct ReplyDeleter {
    void operator()(redisReply* r) const noexcept { freeReplyObject(r); }
};
using ReplyPtr = std::unique_ptr<redisReply, ReplyDeleter>;

struct ContextDeleter {
    void operator()(redisContext* c) const noexcept { redisFree(c); }
};

[[nodiscard]] inline std::string_view text_of(const redisReply& r) noexcept {
    return r.str != nullptr ? std::string_view(r.str, r.len) : std::string_view{};
}

// Error replies whose first word says the server is not serving at all right now.
[[nodiscard]] inline bool means_unavailable(std::string_view error) noexcept {
    const std::string_view word = error.substr(0, error.find(' '));
    return word == "LOADING" || word == "BUSY" || word == "MASTERDOWN" || word == "CLUSTERDOWN";
}

// Commands RedisBackend::command may send that never change data: their timeout is a plain
// TimeoutError. Any other command that timed out after it was sent may have been applied.
[[nodiscard]] inline bool reads_only(std::span<const std::string_view> argv) noexcept {
    static constexpr std::array<std::string_view, 26> reads{
        "GET",    "MGET",   "STRLEN", "GETRANGE", "EXISTS",  "TYPE",     "TTL",
        "PTTL",   "HGET",   "HMGET",  "HLEN",     "HEXISTS", "HGETALL",  "HKEYS",
        "ZRANGE", "ZCARD",  "ZSCORE", "ZRANK",    "SCARD",   "SMEMBERS", "SISMEMBER",
        "LLEN",   "LRANGE", "PING",   "SCAN",     "DBSIZE"};
    if (argv.empty()) return false;
    const std::string_view verb = argv.front();
    for (std::string_view r : reads) {
        if (verb.size() == r.size() &&
            std::equal(verb.begin(), verb.end(), r.begin(), [](char a, char b) {
                return (a >= 'a' && a <= 'z' ? static_cast<char>(a - 'a' + 'A') : a) == b;
            })) {
            return true;
        }
    }
    return false;
}

// A Redis Cluster node's answer to a command for keys it does not serve alone: "MOVED
// <slot> <host:port>", "ASK <slot> <host:port>", TRYAGAIN or CROSSSLOT.
[[nodiscard]] inline bool means_cluster(std::string_view error) noexcept {
    const auto space = error.find(' ');
    const std::string_view word = error.substr(0, space);
    if (word == "CROSSSLOT" || word == "TRYAGAIN") return true;
    if (word != "MOVED" && word != "ASK") return false;
    const std::string_view rest = space == std::string_view::npos ? "" : error.substr(space + 1);
    const auto gap = rest.find(' ');
    const std::string_view slot = rest.substr(0, gap);
    if (slot.empty() || slot.size() > 5 ||
        slot.find_first_not_of("0123456789") != std::string_view::npos) {
        return false;
    }
    return gap != std::string_view::npos && rest.find(':', gap) != std::string_view::npos;
}

[[noreturn]] inline void throw_cluster_redirect(std::string_view what, std::string_view text) {
    throw ClusterRedirectError(
        "redis " + std::string(what) + ": " + std::string(text) +
            ": the server is a Redis Cluster node, and RedisBackend talks to one server (a "
            "standalone Redis or a primary): point it at one, or use RedisClusterBackend",
        std::string(text));
}

[[nodiscard]] inline bool means_unauthenticated(std::string_view error) noexcept {
    const std::string_view word = error.substr(0, error.find(' '));
    return word == "NOAUTH" || word == "WRONGPASS";
}

/// `text` with every occurrence of `secret` replaced by "***". For the reply to AUTH: Redis
/// itself never repeats the password, but a proxy in front of it, or a module, may.
[[nodiscard]] inline std::string without(std::string_view text, std::string_view secret) {
    std::string out;
    for (std::size_t at = 0;;) {
        const auto hit = secret.empty() ? std::string_view::npos : text.find(secret, at);
        out.append(text.substr(at, hit == std::string_view::npos ? hit : hit - at));
        if (hit == std::string_view::npos) return out;
        out.append("***");
        at = hit + secret.size();
    }
}

/// Throws the exception an error reply stands for; returns for any other reply.
inline void check(const redisReply& r, std::string_view what) {
    if (r.type != REDIS_REPLY_ERROR) return;
    const std::string_view text = text_of(r);
    if (means_unauthenticated(text)) {
        throw ConnectionError("redis " + std::string(what) +
                              ": authentication failed: " + std::string(text));
    }
    if (means_cluster(text)) throw_cluster_redirect(what, text);
    throw ReplyError("redis " + std::string(what) + ": " + std::string(text),
                     means_unavailable(text), text);
}

[[noreturn]] inline void unexpected(const redisReply& r, std::string_view what) {
    throw BackendError("redis " + std::string(what) + ": unexpected reply of type " +
                       std::to_string(r.type));
}

/// A deep copy of a hiredis reply. RESP3 types cannot arrive (the handshake never sends
/// HELLO 3) but are mapped anyway, so this compiles and behaves against hiredis 1.x.
[[nodiscard]] inline RedisReply to_reply(const redisReply& r) {
    RedisReply out;
    switch (r.type) {
        case REDIS_REPLY_STRING:
#ifdef REDIS_REPLY_VERB
        case REDIS_REPLY_VERB:
#endif
#ifdef REDIS_REPLY_BIGNUM
        case REDIS_REPLY_BIGNUM:
#endif
#ifdef REDIS_REPLY_DOUBLE
        case REDIS_REPLY_DOUBLE:
#endif
            out.type = RedisReply::Type::string;
            out.str.assign(text_of(r));
            break;
        case REDIS_REPLY_STATUS:
            out.type = RedisReply::Type::status;
            out.str.assign(text_of(r));
            break;
        case REDIS_REPLY_ERROR:
            out.type = RedisReply::Type::error;
            out.str.assign(text_of(r));
            break;
        case REDIS_REPLY_INTEGER:
#ifdef REDIS_REPLY_BOOL
        case REDIS_REPLY_BOOL:
#endif
            out.type = RedisReply::Type::integer;
            out.integer = r.integer;
            break;
        case REDIS_REPLY_ARRAY:
#ifdef REDIS_REPLY_MAP
        case REDIS_REPLY_MAP:
#endif
#ifdef REDIS_REPLY_SET
        case REDIS_REPLY_SET:
#endif
#ifdef REDIS_REPLY_PUSH
        case REDIS_REPLY_PUSH:
#endif
            out.type = RedisReply::Type::array;
            out.elements.reserve(r.elements);
            for (std::size_t i = 0; i < r.elements; ++i) {
                out.elements.push_back(to_reply(*r.element[i]));
            }
            break;
        default:
            out.type = RedisReply::Type::nil;
            break;
    }
    return out;
}

/// An integer as argument bytes, formatted without allocating.
class Number {
public:
    explicit Number(std::int64_t value) noexcept {
        const auto result = std::to_chars(buf_.data(), buf_.data() + buf_.size(), value);
        len_ = static_cast<std::size_t>(result.ptr - buf_.data());
    }
    [[nodiscard]] std::string_view view() const noexcept { return {buf_.data(), len_}; }

private:
    std::array<char, 24> buf_{};
    std::size_t len_ = 0;
};

/// The arguments of one command as pointer + length pairs. The bytes are borrowed: they
/// must live until the command has been appended. Up to eight arguments need no
/// allocation, which covers every command on the hot path.
class Args {
public:
    Args() = default;
    Args(std::initializer_list<std::string_view> args) {
        for (std::string_view a : args) push(a);
    }

    void push(std::string_view arg) {
        // hiredis copies from the pointer even for an empty argument: never hand it null.
        const char* data = arg.empty() ? "" : arg.data();
        if (size_ < inline_capacity) {
            ptrs_[size_] = data;
            lens_[size_] = arg.size();
        } else {
            if (size_ == inline_capacity) {
                heap_ptrs_.assign(ptrs_.begin(), ptrs_.end());
                heap_lens_.assign(lens_.begin(), lens_.end());
            }
            heap_ptrs_.push_back(data);
            heap_lens_.push_back(arg.size());
        }
        ++size_;
    }

    [[nodiscard]] std::size_t size() const noexcept { return size_; }
    // hiredis takes `const char**` but never writes through it.
    [[nodiscard]] const char** argv() const noexcept {
        return const_cast<const char**>(size_ <= inline_capacity ? ptrs_.data()
                                                                 : heap_ptrs_.data());
    }
    [[nodiscard]] const std::size_t* lengths() const noexcept {
        return size_ <= inline_capacity ? lens_.data() : heap_lens_.data();
    }

private:
    static constexpr std::size_t inline_capacity = 8;
    std::array<const char*, inline_capacity> ptrs_{};
    std::array<std::size_t, inline_capacity> lens_{};
    std::vector<const char*> heap_ptrs_;
    std::vector<std::size_t> heap_lens_;
    std::size_t size_ = 0;
};

/// Where and how to connect: the part of RedisOptions each connection needs.
struct Endpoint {
    std::string host;
    int port = 6379;
    std::string unix_socket;
    std::string user;
    std::string password;
    int db = 0;
    Millis connect_timeout{200};
    Millis command_timeout{100};
    std::size_t min_throughput_bytes_per_second = 0;
    bool tcp_keepalive = true;
    bool readonly = false;

    [[nodiscard]] static Endpoint from(const RedisOptions& o) {
        return Endpoint{.host = o.host,
                        .port = o.port,
                        .unix_socket = o.unix_socket,
                        .user = o.user,
                        .password = o.password,
                        .db = o.db,
                        .connect_timeout = o.connect_timeout,
                        .command_timeout = o.command_timeout,
                        .min_throughput_bytes_per_second = o.min_throughput_bytes_per_second,
                        .tcp_keepalive = o.tcp_keepalive,
                        .readonly = o.readonly};
    }

    /// The wait allowed for each I/O step of a round trip that sends `bytes`: a large
    /// request takes the server longer to read and to apply, and must not time out for
    /// that alone. Saturates rather than overflowing.
    [[nodiscard]] Millis timeout_for(std::size_t bytes) const noexcept {
        if (min_throughput_bytes_per_second == 0) return command_timeout;
        const std::size_t per_ms = std::max<std::size_t>(min_throughput_bytes_per_second / 1000, 1);
        const std::size_t extra = bytes / per_ms;
        constexpr std::size_t cap = std::size_t{24} * 3600 * 1000;  // a day: beyond any use
        return command_timeout + Millis{static_cast<std::int64_t>(std::min(extra, cap))};
    }

    /// host:port or unix:path, for messages (never the credentials).
    [[nodiscard]] std::string describe() const {
        return unix_socket.empty() ? host + ":" + std::to_string(port) : "unix:" + unix_socket;
    }
};

[[nodiscard]] inline timeval to_timeval(Millis ms) noexcept {
    timeval tv{};
    tv.tv_sec = static_cast<decltype(tv.tv_sec)>(ms.count() / 1000);
    tv.tv_usec = static_cast<decltype(tv.tv_usec)>((ms.count() % 1000) * 1000);
    return tv;
}

[[nodiscard]] inline bool is_timeout(int hiredis_err, int saved_errno) noexcept {
#ifdef REDIS_ERR_TIMEOUT  // hiredis >= 1.0 reports some timeouts explicitly
    if (hiredis_err == REDIS_ERR_TIMEOUT) return true;
#endif
    // A blocking socket whose SO_RCVTIMEO/SO_SNDTIMEO expired fails with EAGAIN, which
    // hiredis reports as a plain I/O error.
    return hiredis_err == REDIS_ERR_IO &&
           (saved_errno == EAGAIN || saved_errno == EWOULDBLOCK || saved_errno == ETIMEDOUT);
}

/// Where the reads of a RedisBackend are to be tracked (Redis client-side caching, default
/// mode): the client id of a RedisTrackingBus's subscriber connection, and an epoch that
/// moves whenever that id does. Every pooled connection remembers the epoch it was last
/// pointed at; one that is behind sends CLIENT TRACKING on REDIRECT <id> before its next
/// command. client_id is written before epoch (release), so whoever sees an epoch sees
/// that id or a later one (or 0: the subscriber is away).
struct TrackingRedirect {
    std::atomic<std::int64_t> client_id{0};
    /// 0: no subscriber yet (nothing to redirect to).
    std::atomic<std::uint64_t> epoch{0};

    /// Points every connection at `id` (they follow on their next use).
    void retarget(std::int64_t id) noexcept {
        client_id.store(id, std::memory_order_relaxed);
        epoch.store(next_epoch(), std::memory_order_release);
    }

    /// The subscriber is gone: connections stop following until the next retarget. Redis
    /// refuses a redirect to a client that no longer exists, which would fail every command
    /// of a new connection meanwhile; and nothing they read matters while L1 is off.
    void suspend() noexcept { client_id.store(0, std::memory_order_release); }

    /// Epochs are unique in the process, so a connection that followed one redirect never
    /// mistakes another's epoch for its own.
    static std::uint64_t next_epoch() noexcept {
        static std::atomic<std::uint64_t> last{0};
        return last.fetch_add(1, std::memory_order_relaxed) + 1;
    }

    /// Who hears that a tracking connection closed (the bus; nullptr when it goes).
    void on_untracked(std::function<void()> listener) {
        std::lock_guard lock(mutex_);
        listener_ = std::move(listener);
    }

    /// A tracking connection closed: Redis forgets what it tracked for it, so a later
    /// write to a key only it read will never be reported.
    void untracked() noexcept {
        std::lock_guard lock(mutex_);
        if (!listener_) return;
        try {
            listener_();
        } catch (...) {
        }
    }

private:
    std::mutex mutex_;
    std::function<void()> listener_;
};

/// Sends a PING on a subscribed connection without waiting for its answer (a subscriber
/// reads that with everything else). Written directly, as Connection writes everything
/// (hiredis's own output buffer stays empty), with MSG_NOSIGNAL: a peer that went away is
/// EPIPE, not a SIGPIPE that would kill the process. Throws BackendError naming `who`.
inline void send_ping(redisContext* ctx, const char* who) {
    constexpr std::string_view ping = "*1\r\n$4\r\nPING\r\n";
    std::size_t sent = 0;
    while (sent < ping.size()) {
        const ssize_t n = ::send(ctx->fd, ping.data() + sent, ping.size() - sent, MSG_NOSIGNAL);
        if (n > 0) {
            sent += static_cast<std::size_t>(n);
        } else if (n < 0 && errno == EINTR) {
            continue;
        } else {
            throw BackendError(std::string(who) + ": lost while sending PING");
        }
    }
}

class Connection {
public:
    /// Connects, authenticates and selects the database. Throws ConnectionError (or
    /// TimeoutError when the handshake got no answer in time).
    Connection(const Endpoint& endpoint, Counters& counters)
        : endpoint_(endpoint), counters_(counters) {
        const timeval connect_tv = to_timeval(endpoint.connect_timeout);
        redisContext* raw =
            endpoint.unix_socket.empty()
                ? redisConnectWithTimeout(endpoint.host.c_str(), endpoint.port, connect_tv)
                : redisConnectUnixWithTimeout(endpoint.unix_socket.c_str(), connect_tv);
        if (raw == nullptr) {
            throw ConnectionError("redis: cannot allocate a connection to " + endpoint.describe());
        }
        ctx_.reset(raw);
        if (raw->err != 0) {
            throw ConnectionError("redis: cannot connect to " + endpoint.describe() + ": " +
                                  raw->errstr);
        }
        // The socket must not leak into programs the application forks and executes.
        if (const int flags = fcntl(raw->fd, F_GETFD); flags >= 0) {
            fcntl(raw->fd, F_SETFD, flags | FD_CLOEXEC);
        }
        if (redisSetTimeout(raw, to_timeval(endpoint.command_timeout)) != REDIS_OK ||
            (endpoint.tcp_keepalive && endpoint.unix_socket.empty() &&
             redisEnableKeepAlive(raw) != REDIS_OK)) {
            throw ConnectionError("redis: cannot configure the socket to " + endpoint.describe() +
                                  ": " + raw->errstr);
        }
        handshake();
    }

    Connection(const Connection&) = delete;
    Connection& operator=(const Connection&) = delete;

    /// Queues a command; nothing is sent until flush() or the next receive(). While
    /// asking() is on, each command goes after an ASKING of its own.
    void append(const Args& args) { append({}, 0, args); }

    /// The same, for a command whose first `head_items` arguments are `head`, formatted
    /// once by format_items (a script's EVALSHA and SHA1), followed by `rest`.
    void append(std::string_view head, std::size_t head_items, const Args& rest) {
        if (asking_) {
            append_resp(outgoing_, {}, 0, Args{"ASKING"});
            ++pending_;
        }
        append_resp(outgoing_, head, head_items, rest);
        ++pending_;
        unflushed_ = true;
    }

    /// `args` as RESP bulk strings, without the array header: the head of append().
    [[nodiscard]] static std::string format_items(const Args& args) {
        std::string out;
        append_resp(out, {}, 0, args);
        return out.substr(out.find('\n') + 1);
    }

    /// Sends what append() queued, without waiting for a reply: RedisClusterBackend sends
    /// to every node involved before it reads from any.
    void flush() {
        if (!unflushed_) return;
        unflushed_ = false;
        counters_.add<&RedisBackendStats::round_trips>();
        request_sent_ = false;
        request_complete_ = false;
        replies_received_ = 0;
        use_timeout(endpoint_.timeout_for(outgoing_.size()));
        send_outgoing();
    }

    /// The next reply; the first call after append() sends everything queued. Throws
    /// TimeoutError or ConnectionError on I/O failure; error replies are returned.
    [[nodiscard]] ReplyPtr receive() {
        flush();
        // An ASKING's own reply: +OK, or an error that the command's reply repeats.
        if (asking_) (void)read_reply();
        return read_reply();
    }

    /// Redis Cluster's ASK redirect: while on, every command is preceded by ASKING, so the
    /// node that imports a slot serves it. Turn it on and off between round trips only.
    void asking(bool on) noexcept { asking_ = on; }

    /// Where this connection goes.
    [[nodiscard]] const Endpoint& endpoint() const noexcept { return endpoint_; }

    /// The counters of the backend this connection belongs to.
    [[nodiscard]] Counters& counters() const noexcept { return counters_; }

    /// One command, one round trip.
    [[nodiscard]] ReplyPtr command(const Args& args) {
        append(args);
        return receive();
    }

    /// Several commands in one round trip; every reply is read before any is looked at,
    /// so an error reply in the middle leaves the connection in step.
    template <class... A>
    requires(std::same_as<A, Args>&&...)
        [[nodiscard]] std::array<ReplyPtr, sizeof...(A)> pipeline(const A&... commands) {
        (append(commands), ...);
        std::array<ReplyPtr, sizeof...(A)> replies;
        for (auto& r : replies) r = receive();
        return replies;
    }

    [[nodiscard]] std::vector<ReplyPtr> pipeline(std::span<const Args> commands) {
        for (const Args& c : commands) append(c);
        std::vector<ReplyPtr> replies;
        replies.reserve(commands.size());
        for (std::size_t i = 0; i < commands.size(); ++i) replies.push_back(receive());
        return replies;
    }

    /// In step and error-free: safe to hand to the next caller.
    [[nodiscard]] bool reusable() const noexcept {
        return !broken_ && pending_ == 0 && ctx_->err == 0;
    }

    /// The peer went away (EOF, reset): other idle connections to it are likely dead too.
    [[nodiscard]] bool lost() const noexcept { return lost_; }

    /// After a failed round trip: some of its bytes reached the socket, so the server may
    /// have run its commands (a write's outcome is then unknown, not "not applied").
    [[nodiscard]] bool request_sent() const noexcept { return request_sent_; }
    /// ... all of it: the server may have run it.
    [[nodiscard]] bool request_complete() const noexcept { return request_complete_; }

    /// After a failed round trip: part of its replies had arrived when it failed. The
    /// server was answering; what timed out was the size of the exchange, not the server.
    [[nodiscard]] bool reply_started() const noexcept { return reply_started_; }

    /// The wait allowed for each I/O step of the last round trip.
    [[nodiscard]] Millis current_timeout() const noexcept { return current_timeout_; }

    /// Idle and yet readable: nothing was asked, so what is there is the end of the
    /// stream (the server closed it) or an error. Never blocks.
    [[nodiscard]] bool hung_up() const noexcept {
        pollfd p{ctx_->fd, POLLIN, 0};
        return ::poll(&p, 1, 0) > 0 && (p.revents & (POLLIN | POLLHUP | POLLERR)) != 0;
    }

    /// The hiredis context, for a subscriber that polls the socket itself.
    [[nodiscard]] redisContext* context() noexcept { return ctx_.get(); }

    /// Server-assisted tracking (RedisTrackingBus): the epoch of the redirect this
    /// connection was last pointed at with CLIENT TRACKING; 0 when it does not track.
    [[nodiscard]] std::uint64_t tracking_epoch() const noexcept { return tracking_epoch_; }

    /// Now tracking for `redirect` at `epoch` (0 and nullptr: not tracking). A tracking
    /// connection that closes tells `redirect`.
    void set_tracking(std::uint64_t epoch, std::shared_ptr<TrackingRedirect> redirect) noexcept {
        tracking_epoch_ = epoch;
        tracking_ = std::move(redirect);
    }

    ~Connection() {
        if (tracking_ && tracking_epoch_ != 0) tracking_->untracked();
    }

private:
    void handshake() {
        const bool auth = !endpoint_.user.empty() || !endpoint_.password.empty();
        const Number db(endpoint_.db);
        if (!endpoint_.user.empty()) {
            append(Args{"AUTH", endpoint_.user, endpoint_.password});
        } else if (!endpoint_.password.empty()) {
            append(Args{"AUTH", endpoint_.password});
        }
        if (endpoint_.db != 0) append(Args{"SELECT", db.view()});
        if (endpoint_.readonly) append(Args{"READONLY"});
        if (pending_ == 0) return;

        // Pipelined: one round trip however much there is to set up.
        ReplyPtr auth_reply = auth ? receive() : nullptr;
        ReplyPtr select_reply = endpoint_.db != 0 ? receive() : nullptr;
        ReplyPtr readonly_reply = endpoint_.readonly ? receive() : nullptr;
        if (auth_reply && auth_reply->type == REDIS_REPLY_ERROR) {
            const std::string as =
                endpoint_.user.empty() ? "" : " as user '" + endpoint_.user + "'";
            throw ConnectionError("redis: authentication failed at " + endpoint_.describe() + as +
                                  ": " + without(text_of(*auth_reply), endpoint_.password));
        }
        if (select_reply && select_reply->type == REDIS_REPLY_ERROR) {
            const std::string_view text = text_of(*select_reply);
            if (means_unauthenticated(text)) {
                throw ConnectionError("redis: authentication failed at " + endpoint_.describe() +
                                      ": " + std::string(text));
            }
            throw ConnectionError("redis: SELECT " + std::to_string(endpoint_.db) + " failed at " +
                                  endpoint_.describe() + ": " + std::string(text));
        }
        if (readonly_reply && readonly_reply->type == REDIS_REPLY_ERROR) {
            throw ConnectionError("redis: READONLY failed at " + endpoint_.describe() + ": " +
                                  std::string(text_of(*readonly_reply)));
        }
    }

    // Commands as RESP, written here rather than by hiredis 0.14, whose sds formatting
    // was the largest part of a hit's client instructions (docs/performance.md).
    static void append_resp(std::string& out, std::string_view head, std::size_t head_items,
                            const Args& args) {
        const char** argv = args.argv();
        const std::size_t* lengths = args.lengths();
        std::size_t bytes = 16 + head.size();
        for (std::size_t i = 0; i < args.size(); ++i) bytes += lengths[i] + 24;
        out.reserve(out.size() + bytes);
        auto number = [&out](char kind, std::size_t n) {
            char digits[24];
            const auto end = std::to_chars(digits, digits + sizeof digits, n).ptr;
            out.push_back(kind);
            out.append(digits, end);
            out.append("\r\n", 2);
        };
        number('*', head_items + args.size());
        out.append(head);
        for (std::size_t i = 0; i < args.size(); ++i) {
            number('$', lengths[i]);
            out.append(argv[i], lengths[i]);
            out.append("\r\n", 2);
        }
    }

    // Sends what append() queued. MSG_NOSIGNAL: a peer that went away is EPIPE, not a
    // SIGPIPE that would kill the process (a library must not change its disposition).
    void send_outgoing() {
        const int fd = ctx_->fd;
        std::size_t sent = 0;
        while (sent < outgoing_.size()) {
            const ssize_t n =
                ::send(fd, outgoing_.data() + sent, outgoing_.size() - sent, MSG_NOSIGNAL);
            if (n >= 0) {
                sent += static_cast<std::size_t>(n);
                if (n > 0) request_sent_ = true;
                continue;
            }
            if (errno == EINTR) continue;
            const int err = errno;
            outgoing_.clear();
            broken_ = true;
            if (err == EAGAIN || err == EWOULDBLOCK) {
                throw TimeoutError("redis: " + endpoint_.describe() + " took no command within " +
                                   std::to_string(endpoint_.command_timeout.count()) + " ms");
            }
            lost_ = err == EPIPE || err == ECONNRESET || err == ENOTCONN;
            throw ConnectionError("redis: cannot send to " + endpoint_.describe() + ": " +
                                  std::strerror(err));
        }
        outgoing_.clear();
        request_complete_ = true;
    }

    // Sets the socket's per-wait timeouts, only when they change: a round trip that sends
    // more than min_throughput allows in command_timeout gets longer, the next small one
    // goes back to command_timeout.
    void use_timeout(Millis timeout) {
        if (timeout == current_timeout_) return;
        if (redisSetTimeout(ctx_.get(), to_timeval(timeout)) != REDIS_OK) {
            broken_ = true;
            throw ConnectionError("redis: cannot configure the socket to " + endpoint_.describe() +
                                  ": " + ctx_->errstr);
        }
        current_timeout_ = timeout;
    }

    [[nodiscard]] ReplyPtr read_reply() {
        // hiredis's own output buffer stays empty, so it only reads here.
        void* raw = nullptr;
        const int rc = redisGetReply(ctx_.get(), &raw);
        const int saved_errno = errno;
        if (rc != REDIS_OK || raw == nullptr) fail(saved_errno);
        --pending_;
        ++replies_received_;
        return ReplyPtr(static_cast<redisReply*>(raw));
    }

    [[noreturn]] void fail(int saved_errno) {
        broken_ = true;
        const redisReader* reader = ctx_->reader;
        // Unparsed bytes, or the root of a reply being built (an array whose first elements
        // came): part of a reply arrived. (ridx says nothing: hiredis sets it up on every
        // read attempt, data or not.)
        reply_started_ =
            replies_received_ > 0 ||
            (reader != nullptr && (reader->len > reader->pos || reader->reply != nullptr));
        const int err = ctx_->err;
        if (is_timeout(err, saved_errno)) {
            throw TimeoutError("redis: no reply from " + endpoint_.describe() + " within " +
                               std::to_string(endpoint_.command_timeout.count()) + " ms");
        }
        if (err == REDIS_ERR_EOF || err == REDIS_ERR_IO) {
            lost_ = true;
            throw ConnectionError("redis: connection to " + endpoint_.describe() +
                                  " lost: " + ctx_->errstr);
        }
        throw BackendError("redis: " + endpoint_.describe() + ": " + ctx_->errstr);
    }

    const Endpoint endpoint_;  // a copy: under Sentinel, each connection's own primary
    Counters& counters_;
    std::unique_ptr<redisContext, ContextDeleter> ctx_;
    std::string outgoing_;  // commands appended, not yet sent
    std::size_t pending_ = 0;
    bool unflushed_ = false;
    bool broken_ = false;
    bool lost_ = false;
    Millis current_timeout_ = endpoint_.command_timeout;  // what the socket is set to
    bool request_sent_ = false;         // this round trip handed bytes to the socket
    bool request_complete_ = false;     // ... all of its bytes
    std::size_t replies_received_ = 0;  // replies of this round trip read so far
    bool reply_started_ = false;        // set by fail()
    bool asking_ = false;               // see asking()
    std::uint64_t tracking_epoch_ = 0;  // see tracking_epoch()
    std::shared_ptr<TrackingRedirect> tracking_;
};

}  // namespace larder::redis_detail
