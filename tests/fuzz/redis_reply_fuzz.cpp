// Fuzz target: what the Redis backend and buses make of a server's replies. The input is a
// byte stream from a hostile server, read by hiredis's own reader (as a connection reads
// it), and every reply it yields goes through the conversions:
//  - to_reply (RedisBackend::command and eval): a faithful deep copy, and RESP written
//    from that copy reads back as the same reply (decode(encode(x)) == x);
//  - check: throws ConnectionError, ClusterRedirectError (a redirect's shape only) or
//    ReplyError for an error reply, nothing otherwise;
//  - value_reply, mget_reply, stored_value (with the next reply as PTTL's),
//    set_if_absent_reply and integer_reply: return what the reply says, or throw
//    BackendError, nothing else;
//  - message_payload and for_each_invalidation (RedisBus, RedisTrackingBus): the
//    payload is the third element of a "message" array, and each key is handed on once.
//
// hiredis 0.14 allocates an array of whatever element count a reply claims (up to
// INT_MAX pointers) before any element arrives; that is hiredis's behaviour, not the
// code under test, so this reader refuses counts above 4096 as allocation failures.
#include <hiredis/hiredis.h>
#include <larder/backend/redis.hpp>
#include <larder/backend/redis/pubsub.hpp>

#include <cstddef>
#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "fuzz_support.hpp"

namespace {

using larder::RedisReply;
using larder::fuzz::check;
using larder::fuzz::returns_or_throws;
namespace rd = larder::redis_detail;

constexpr int max_elements = 4096;

redisReplyObjectFunctions capped_functions() {
    redisReader* plain = redisReaderCreate();
    redisReplyObjectFunctions fn = *plain->fn;
    redisReaderFree(plain);
    return fn;
}

const redisReplyObjectFunctions& defaults() {
    static const redisReplyObjectFunctions fn = capped_functions();
    return fn;
}

// The count is an int in hiredis 0.14, a size_t in 1.x.
template <class Count>
void* create_array(const redisReadTask* task, Count elements) {
    if (static_cast<long long>(elements) > max_elements) return nullptr;  // "out of memory"
    return defaults().createArray(task, elements);
}

struct ReaderDeleter {
    void operator()(redisReader* r) const noexcept { redisReaderFree(r); }
};
using Reader = std::unique_ptr<redisReader, ReaderDeleter>;

Reader make_reader() {
    static redisReplyObjectFunctions fn = [] {
        redisReplyObjectFunctions f = defaults();
        f.createArray = &create_array;
        return f;
    }();
    return Reader(redisReaderCreateWithFunctions(&fn));
}

// Every reply a reader yields for `bytes`, until it needs more or reports an error.
std::vector<rd::ReplyPtr> read_all(std::string_view bytes) {
    std::vector<rd::ReplyPtr> out;
    const Reader reader = make_reader();
    if (!reader || redisReaderFeed(reader.get(), bytes.data(), bytes.size()) != REDIS_OK) {
        return out;
    }
    for (;;) {
        void* raw = nullptr;
        if (redisReaderGetReply(reader.get(), &raw) != REDIS_OK || raw == nullptr) break;
        out.emplace_back(static_cast<redisReply*>(raw));
    }
    return out;
}

bool same(const redisReply& r, const RedisReply& c) {
    switch (r.type) {
        case REDIS_REPLY_STRING:
            return c.is_string() && c.str == rd::text_of(r);
        case REDIS_REPLY_STATUS:
            return c.is_status() && c.str == rd::text_of(r);
        case REDIS_REPLY_ERROR:
            return c.is_error() && c.str == rd::text_of(r);
        case REDIS_REPLY_INTEGER:
            return c.is_integer() && c.integer == r.integer;
        case REDIS_REPLY_ARRAY:
            if (!c.is_array() || c.elements.size() != r.elements) return false;
            for (std::size_t i = 0; i < r.elements; ++i) {
                if (!same(*r.element[i], c.elements[i])) return false;
            }
            return true;
        default:
            return c.is_nil();
    }
}

// RESP2, as a server writes it. A nil array (*-1) reads as nil too, so nil is "$-1".
void encode(const RedisReply& r, std::string& out) {
    switch (r.type) {
        case RedisReply::Type::string:
            out += "$" + std::to_string(r.str.size()) + "\r\n" + r.str + "\r\n";
            break;
        case RedisReply::Type::status:
            out += "+" + r.str + "\r\n";
            break;
        case RedisReply::Type::error:
            out += "-" + r.str + "\r\n";
            break;
        case RedisReply::Type::integer:
            out += ":" + std::to_string(r.integer) + "\r\n";
            break;
        case RedisReply::Type::array:
            out += "*" + std::to_string(r.elements.size()) + "\r\n";
            for (const auto& e : r.elements) encode(e, out);
            break;
        case RedisReply::Type::nil:
            out += "$-1\r\n";
            break;
    }
}

template <class F>
void backend_error_or_returns(F&& f) {
    returns_or_throws<larder::BackendError>(std::forward<F>(f));
}

void convert(const redisReply& r, const redisReply& next) {
    const RedisReply copy = rd::to_reply(r);
    check(same(r, copy));
    // Written back as RESP (hiredis never yields a status or error line holding a CRLF,
    // so every copy can be), it reads back as the same reply.
    std::string resp;
    encode(copy, resp);
    const auto again = read_all(resp);
    check(again.size() == 1 && rd::to_reply(*again[0]) == copy);

    const bool is_error = r.type == REDIS_REPLY_ERROR;
    try {
        rd::check(r, "FUZZ");
        check(!is_error);
    } catch (const larder::ConnectionError&) {
        check(is_error);
    } catch (const larder::ClusterRedirectError&) {
        check(is_error && rd::means_cluster(rd::text_of(r)));
    } catch (const larder::ReplyError&) {
        check(is_error);
    }

    backend_error_or_returns([&] {
        const auto v = rd::value_reply(r);
        check(v ? r.type == REDIS_REPLY_STRING && v->bytes == rd::text_of(r) && !v->ttl
                : r.type == REDIS_REPLY_NIL);
    });
    backend_error_or_returns([&] {
        const auto v = rd::stored_value(r, next);
        if (!v) return;
        check(r.type == REDIS_REPLY_STRING && next.type == REDIS_REPLY_INTEGER);
        check(v->bytes == rd::text_of(r));
        // -2 (gone) and 0 (expiring now) read as absent; -1 is "no expiry".
        check(v->ttl ? next.integer > 0 && v->ttl->count() == next.integer
                     : next.integer < 0 && next.integer != -2);
    });
    for (const std::size_t count : {r.elements, r.elements + 1}) {
        backend_error_or_returns([&] {
            const auto values = rd::mget_reply(r, count);
            check(r.type == REDIS_REPLY_ARRAY && values.size() == r.elements);
            for (std::size_t i = 0; i < values.size(); ++i) {
                check(values[i].has_value() == (r.element[i]->type == REDIS_REPLY_STRING));
            }
        });
    }
    backend_error_or_returns(
        [&] { check(rd::set_if_absent_reply(r) == (r.type == REDIS_REPLY_STATUS)); });
    backend_error_or_returns([&] {
        const std::int64_t n = rd::integer_reply(r, "FUZZ");
        check(r.type == REDIS_REPLY_INTEGER && n == r.integer);
    });

    if (const redisReply* payload = rd::message_payload(r)) {
        check(r.type == REDIS_REPLY_ARRAY && r.elements == 3 && payload == r.element[2]);
        std::size_t keys = 0;
        std::size_t flushes = 0;
        rd::for_each_invalidation(
            *payload,
            [&](std::string_view key) {
                check(payload->type == REDIS_REPLY_STRING ||
                      (payload->type == REDIS_REPLY_ARRAY && keys < payload->elements &&
                       key == rd::text_of(*payload->element[keys])));
                ++keys;
            },
            [&] { ++flushes; });
        check(flushes == (payload->type == REDIS_REPLY_NIL ? 1u : 0u));
        check(keys == (payload->type == REDIS_REPLY_ARRAY    ? payload->elements
                       : payload->type == REDIS_REPLY_STRING ? 1u
                                                             : 0u));
    }
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
    const auto replies = read_all(std::string_view(reinterpret_cast<const char*>(data), size));
    for (std::size_t i = 0; i < replies.size(); ++i) {
        const redisReply& r = *replies[i];
        convert(r, i + 1 < replies.size() ? *replies[i + 1] : r);
        if (r.type == REDIS_REPLY_ARRAY) {
            for (std::size_t e = 0; e < r.elements; ++e) convert(*r.element[e], r);
        }
    }
    return 0;
}
