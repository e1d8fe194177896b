// Redis helpers shared by the benchmarks: a private redis-server (the test fixture), the
// hand-written hiredis code a user would otherwise write (one redisContext, argv commands,
// values copied out of the reply), and RedisOptions pointing at the private server.
#pragma once

#include <hiredis/hiredis.h>
#include <sys/resource.h>

#include <algorithm>
#include <chrono>
#include <cstddef>
#include <memory>
#include <stdexcept>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "../../tests/support/redis_server.hpp"
#include "larder/backend/redis.hpp"

namespace larder::bench {

/// A private redis-server on a free loopback port, without persistence. Started from the
/// main thread (it dies with the thread that started it), killed by the destructor.
inline std::unique_ptr<test::RedisServer> start_redis_server() {
    return std::make_unique<test::RedisServer>();
}

/// The server's version (INFO server's redis_version), or "unknown".
inline std::string redis_version(test::RedisServer& server) {
    try {
        const std::string text = server.query({"INFO", "server"}).text;
        constexpr std::string_view field = "redis_version:";
        const auto at = text.find(field);
        if (at == std::string::npos) return "unknown";
        const auto from = at + field.size();
        return text.substr(from, text.find_first_of("\r\n", from) - from);
    } catch (const std::exception&) {
        return "unknown";
    }
}

/// RedisBackend options for `server`. Timeouts are raised from the defaults (100 ms): on a
/// shared 2-core machine a thread can be off the CPU that long, and a timeout then opens
/// the circuit breaker and sends reads to the loader, which is not what these programs
/// measure. Everything else stays at the library's defaults.
inline RedisOptions options_for(const test::RedisServer& server, std::size_t pool_size = 8) {
    RedisOptions o;
    o.host = server.host();
    o.port = server.port();
    o.pool_size = pool_size;
    o.command_timeout = std::chrono::seconds(1);
    o.pool_wait_timeout = std::chrono::seconds(1);
    return o;
}

/// One raw hiredis connection: what a hand-written get_user keeps per thread.
class RawConnection {
public:
    explicit RawConnection(const test::RedisServer& server) {
        const timeval timeout{1, 0};
        ctx_ = redisConnectWithTimeout(server.host().c_str(), server.port(), timeout);
        if (ctx_ == nullptr || ctx_->err != 0) {
            const std::string why = ctx_ != nullptr ? ctx_->errstr : "out of memory";
            if (ctx_ != nullptr) redisFree(ctx_);
            throw std::runtime_error("raw hiredis connect failed: " + why);
        }
    }
    RawConnection(const RawConnection&) = delete;
    RawConnection& operator=(const RawConnection&) = delete;
    ~RawConnection() { redisFree(ctx_); }

    [[nodiscard]] redisContext* get() const noexcept { return ctx_; }

private:
    redisContext* ctx_ = nullptr;
};

struct ReplyFree {
    void operator()(redisReply* r) const noexcept { freeReplyObject(r); }
};
using RawReply = std::unique_ptr<redisReply, ReplyFree>;

/// redisCommandArgv with explicit lengths; throws on an I/O error.
inline RawReply raw_command(redisContext* c, std::initializer_list<std::string_view> args) {
    std::vector<const char*> argv;
    std::vector<std::size_t> lens;
    argv.reserve(args.size());
    lens.reserve(args.size());
    for (std::string_view a : args) {
        argv.push_back(a.data());
        lens.push_back(a.size());
    }
    auto* reply = static_cast<redisReply*>(
        redisCommandArgv(c, static_cast<int>(argv.size()), argv.data(), lens.data()));
    if (reply == nullptr) throw std::runtime_error(std::string("hiredis: ") + c->errstr);
    return RawReply(reply);
}

/// The hand-written hit: GET, copy the bytes out (the reply is freed), done.
inline std::string raw_get(redisContext* c, const std::string& key) {
    const char* argv[2] = {"GET", key.data()};
    const std::size_t lens[2] = {3, key.size()};
    auto* reply = static_cast<redisReply*>(redisCommandArgv(c, 2, argv, lens));
    if (reply == nullptr) throw std::runtime_error(std::string("hiredis: ") + c->errstr);
    if (reply->type != REDIS_REPLY_STRING) {
        freeReplyObject(reply);
        throw std::runtime_error("raw GET: not a string reply");
    }
    std::string value(reply->str, reply->len);
    freeReplyObject(reply);
    return value;
}

/// The hand-written batch read: one MGET, every value copied out.
class RawMget {
public:
    explicit RawMget(const std::vector<std::string>& keys) {
        argv_.push_back("MGET");
        lens_.push_back(4);
        for (const auto& k : keys) {
            argv_.push_back(k.data());
            lens_.push_back(k.size());
        }
    }

    void operator()(redisContext* c, std::vector<std::string>& out) const {
        auto* reply = static_cast<redisReply*>(
            redisCommandArgv(c, static_cast<int>(argv_.size()),
                             const_cast<const char**>(argv_.data()), lens_.data()));
        if (reply == nullptr) throw std::runtime_error(std::string("hiredis: ") + c->errstr);
        if (reply->type != REDIS_REPLY_ARRAY || reply->elements != argv_.size() - 1) {
            freeReplyObject(reply);
            throw std::runtime_error("raw MGET: unexpected reply");
        }
        out.clear();
        for (std::size_t i = 0; i < reply->elements; ++i) {
            const redisReply* e = reply->element[i];
            out.emplace_back(e->type == REDIS_REPLY_STRING ? std::string(e->str, e->len)
                                                           : std::string());
        }
        freeReplyObject(reply);
    }

private:
    std::vector<const char*> argv_;
    std::vector<std::size_t> lens_;
};

/// CPU time spent by this process and by the redis-server over an interval, in
/// microseconds per operation: on a shared machine whose other tenants change the
/// throughput from run to run, what each operation costs is the steadier figure.
class CpuMeter {
public:
    explicit CpuMeter(const test::RedisServer& server) : server_(server), start_(now()) {}

    /// {client, server} microseconds of CPU per operation since construction.
    [[nodiscard]] std::pair<double, double> per_op(long ops) const {
        const auto [client, redis] = now();
        const double n = static_cast<double>(std::max(ops, 1L));
        return {(client - start_.first) / n, (redis - start_.second) / n};
    }

private:
    [[nodiscard]] std::pair<double, double> now() const {
        rusage self{};
        getrusage(RUSAGE_SELF, &self);
        const auto us = [](const timeval& t) {
            return static_cast<double>(t.tv_sec) * 1e6 + static_cast<double>(t.tv_usec);
        };
        return {us(self.ru_utime) + us(self.ru_stime), redis_cpu_us()};
    }

    // used_cpu_sys + used_cpu_user from INFO cpu (seconds, with microsecond digits).
    [[nodiscard]] double redis_cpu_us() const {
        const std::string text = server_.query({"INFO", "cpu"}).text;
        double total = 0;
        for (const std::string_view field : {"used_cpu_sys:", "used_cpu_user:"}) {
            const std::size_t at = text.find(field);
            if (at != std::string::npos) total += std::stod(text.substr(at + field.size()));
        }
        return total * 1e6;
    }

    const test::RedisServer& server_;
    std::pair<double, double> start_;
};

}  // namespace larder::bench
