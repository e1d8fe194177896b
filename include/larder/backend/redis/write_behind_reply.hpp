// What RedisWriteBehindStore makes of its scripts' replies: free functions, so that they
// can be tested (and fuzzed) on replies no healthy server sends. Anything but the reply a
// script is written to give throws BackendError.
#pragma once

#include <algorithm>
#include <charconv>
#include <cstdint>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "larder/backend/redis/reply.hpp"
#include "larder/backend/write_behind_store.hpp"
#include "larder/core/error.hpp"

namespace larder {

namespace redis_detail::write_behind_reply {

[[noreturn]] inline void unexpected(std::string_view what) {
    throw BackendError("redis write-behind: unexpected reply to " + std::string(what));
}

inline const std::string& text(const RedisReply& r, std::string_view what) {
    if (!r.is_string()) unexpected(what);
    return r.str;
}

inline std::int64_t integer(const RedisReply& r, std::string_view what) {
    if (!r.is_integer()) unexpected(what);
    return r.integer;
}

inline const std::vector<RedisReply>& array(const RedisReply& r, std::string_view what) {
    if (!r.is_array()) unexpected(what);
    return r.elements;
}

inline std::uint64_t to_u64(std::string_view s, std::string_view what) {
    std::uint64_t v = 0;
    auto [end, ec] = std::from_chars(s.data(), s.data() + s.size(), v);
    if (ec != std::errc{} || end != s.data() + s.size()) {
        throw BackendError("redis write-behind: bad " + std::string(what) + " '" +
                           std::string(s.substr(0, 32)) + "'");
    }
    return v;
}

// Scores come back as doubles formatted by Redis ("1700000000000", or with an exponent).
// One that is NaN, infinite or beyond int64 is no time (and converting it would be
// undefined behaviour).
inline std::int64_t to_ms(std::string_view s) {
    double v = 0;
    auto [end, ec] = std::from_chars(s.data(), s.data() + s.size(), v);
    if (ec != std::errc{} || !(v >= -0x1p63 && v < 0x1p63)) {
        throw BackendError("redis write-behind: bad time '" + std::string(s.substr(0, 32)) + "'");
    }
    return static_cast<std::int64_t>(v);
}

// "version attempts dead_at since 0" (the last field is kept for the format's sake)
inline void parse_meta(std::string_view meta, DeadRecord& d) {
    std::array<std::string_view, 5> f{};
    std::size_t n = 0;
    while (n < f.size()) {
        const auto space = meta.find(' ');
        f[n++] = meta.substr(0, space);
        if (space == std::string_view::npos) break;
        meta.remove_prefix(space + 1);
    }
    if (n != f.size()) throw BackendError("redis write-behind: bad dead entry metadata");
    d.version = to_u64(f[0], "version");
    d.attempts = static_cast<std::uint32_t>(to_u64(f[1], "attempts"));
    d.dead_at = TimePoint{Millis{to_ms(f[2])}};
    d.dirty_since = TimePoint{Millis{to_ms(f[3])}};
}

/// The put script's reply to a batch of `count` puts: three parts per put.
inline const std::vector<RedisReply>& put_parts(const RedisReply& r, std::size_t count) {
    const auto& parts = array(r, "put");
    if (parts.size() != 3 * count) throw BackendError("redis write-behind: bad put reply");
    return parts;
}

/// One put's three parts (status, version, coalesced or error). A stored put that reached
/// fewer than `replicas` replicas (`acked`, WAIT's count) throws DurabilityError.
inline PutOutcome put_outcome(std::span<const RedisReply> parts, std::int64_t acked, int replicas,
                              Millis replica_timeout) {
    PutOutcome out;
    switch (integer(parts[0], "put")) {
        case 1:
            out.status = PutStatus::stored;
            break;
        case 2:
            out.status = PutStatus::conflict;
            return out;
        case 3:
            out.status = PutStatus::full;
            return out;
        case 4:
            throw BackendError("redis write-behind: put failed: " + text(parts[2], "put"));
        default:
            throw BackendError("redis write-behind: bad put status");
    }
    out.version = static_cast<std::uint64_t>(integer(parts[1], "put"));
    out.coalesced = integer(parts[2], "put") == 1;
    if (acked < replicas) {
        throw DurabilityError("redis write-behind: the put reached " + std::to_string(acked) +
                              " of " + std::to_string(replicas) + " replicas within " +
                              std::to_string(replica_timeout.count()) +
                              " ms; it is on the primary and may be lost by a failover");
    }
    return out;
}

/// {dirty (1 or 0), bytes}, or {} when the key has no value.
inline std::optional<CurrentValue> read_current(const RedisReply& r) {
    const auto& parts = array(r, "read_current");
    if (parts.empty()) return std::nullopt;
    if (parts.size() != 2) throw BackendError("redis write-behind: bad read_current reply");
    return CurrentValue{text(parts[1], "read_current"), integer(parts[0], "read_current") == 1};
}

/// {requeued, {dead-lettered key...}, {held key...}, then 7 parts per claimed entry: key,
/// version, value, attempts, dirty since, waited, last error}.
inline ClaimBatch claim(const RedisReply& r) {
    const auto& parts = array(r, "claim");
    if (parts.size() < 3 || (parts.size() - 3) % 7 != 0) {
        throw BackendError("redis write-behind: bad claim reply");
    }
    ClaimBatch out;
    out.requeued = static_cast<std::size_t>(integer(parts[0], "claim"));
    for (const auto& k : array(parts[1], "claim")) out.dead_lettered.push_back(text(k, "claim"));
    for (const auto& k : array(parts[2], "claim")) out.held.push_back(text(k, "claim"));
    out.entries.reserve((parts.size() - 3) / 7);
    for (std::size_t i = 3; i < parts.size(); i += 7) {
        ClaimedEntry e;
        e.key = text(parts[i], "claim");
        e.version = to_u64(text(parts[i + 1], "claim"), "version");
        e.value = text(parts[i + 2], "claim");
        e.attempts = static_cast<std::uint32_t>(to_u64(text(parts[i + 3], "claim"), "attempts"));
        e.dirty_since = TimePoint{Millis{to_ms(text(parts[i + 4], "claim"))}};
        e.waited = Millis{integer(parts[i + 5], "claim")};
        e.last_error = text(parts[i + 6], "claim");
        out.entries.push_back(std::move(e));
    }
    return out;
}

/// One result code per settlement of a chunk of `count`, appended to `out`.
inline void settle(const RedisReply& r, std::size_t count, std::vector<SettleResult>& out) {
    const auto& parts = array(r, "settle");
    if (parts.size() != count) throw BackendError("redis write-behind: bad settle reply");
    for (const auto& p : parts) {
        switch (integer(p, "settle")) {
            case 0:
                out.push_back(SettleResult::done);
                break;
            case 1:
                out.push_back(SettleResult::superseded);
                break;
            case 3:
                out.push_back(SettleResult::lost);
                break;
            case 4:
                out.push_back(SettleResult::held);
                break;
            default:
                out.push_back(SettleResult::gone);
                break;
        }
    }
}

/// 4 parts per dead entry: key, value, metadata (parse_meta), error.
inline std::vector<DeadRecord> list_dead(const RedisReply& r) {
    const auto& parts = array(r, "list_dead");
    if (parts.size() % 4 != 0) throw BackendError("redis write-behind: bad list_dead reply");
    std::vector<DeadRecord> out;
    for (std::size_t i = 0; i < parts.size(); i += 4) {
        DeadRecord d;
        d.key = text(parts[i], "list_dead");
        d.value = text(parts[i + 1], "list_dead");
        parse_meta(text(parts[i + 2], "list_dead"), d);
        d.error = text(parts[i + 3], "list_dead");
        out.push_back(std::move(d));
    }
    return out;
}

inline RedriveResult redrive(const RedisReply& r) {
    switch (integer(r, "redrive")) {
        case 1:
            return RedriveResult::requeued;
        case 2:
            return RedriveResult::superseded;
        default:
            return RedriveResult::not_found;
    }
}

/// {pending, processing, dead, oldest pending age}.
inline QueueStats stats(const RedisReply& r) {
    const auto& parts = array(r, "stats");
    if (parts.size() != 4) throw BackendError("redis write-behind: bad stats reply");
    QueueStats s;
    s.pending = static_cast<std::size_t>(integer(parts[0], "stats"));
    s.processing = static_cast<std::size_t>(integer(parts[1], "stats"));
    s.dead = static_cast<std::size_t>(integer(parts[2], "stats"));
    s.oldest_pending_age = Millis{integer(parts[3], "stats")};
    return s;
}

/// ZRANGE's reply: the keys.
inline std::vector<std::string> keys(const RedisReply& r) {
    std::vector<std::string> out;
    for (const auto& e : array(r, "ZRANGE")) out.push_back(text(e, "ZRANGE"));
    return out;
}

/// CONFIG GET maxmemory-policy's reply.
inline EvictionRisk eviction_risk(const RedisReply& r) {
    if (r.is_array() && r.elements.size() == 2 && r.elements[1].is_string()) {
        const std::string& policy = r.elements[1].str;
        if (policy.starts_with("allkeys-")) {
            return {EvictionRisk::evicting,
                    "Redis runs maxmemory-policy " + policy +
                        ": under memory pressure it may evict unflushed write-behind "
                        "data; use noeviction or a volatile-* policy"};
        }
        return {EvictionRisk::none, "maxmemory-policy " + policy};
    }
    return {EvictionRisk::unknown, "CONFIG GET maxmemory-policy gave no policy"};
}

/// INFO's reply: its text.
inline const std::string& info_text(const RedisReply& r) {
    if (!r.is_string()) unexpected("INFO");
    return r.str;
}

// "name:value" lines of an INFO reply.
inline std::string info_field(std::string_view info, std::string_view name) {
    const std::string prefix = std::string(name) + ":";
    std::size_t at = 0;
    while (at < info.size()) {
        std::size_t end = info.find('\n', at);
        if (end == std::string_view::npos) end = info.size();
        std::string_view line = info.substr(at, end - at);
        if (!line.empty() && line.back() == '\r') line.remove_suffix(1);
        if (line.starts_with(prefix)) return std::string(line.substr(prefix.size()));
        at = end + 1;
    }
    return {};
}

/// What INFO persistence and INFO replication say.
inline Persistence persistence(std::string_view persistence_info,
                               std::string_view replication_info) {
    Persistence p{.outlives_process = true};
    p.survives_restart = info_field(persistence_info, "aof_enabled") == "1";
    const std::string replicas = info_field(replication_info, "connected_slaves");
    std::from_chars(replicas.data(), replicas.data() + replicas.size(), p.replicas);
    p.detail = p.survives_restart
                   ? "appendonly yes: acknowledged writes survive a Redis restart (up to the "
                     "appendfsync policy)"
                   : "appendonly no: a Redis restart loses unflushed writes (all of them "
                     "without RDB snapshots, those since the last one with)";
    p.detail += "; " + std::to_string(p.replicas) + " replica(s) connected";
    return p;
}

}  // namespace redis_detail::write_behind_reply

}  // namespace larder
