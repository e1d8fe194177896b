// RedisWriteBehindStore: the WriteBehindStore concept on Redis, so that write-behind data
// outlives the process that wrote it. Every operation is one Lua script (loaded once, run
// by EVALSHA through RedisBackend::eval), so each is atomic on the server: a put that
// returned is in the queue, a claim moves entries as a whole, an acknowledgement removes
// an entry only if the claim is still its caller's and its version is unchanged. Link
// with larder::redis.
//
// Keys (before RedisBackend's key_prefix), all under one hash tag:
//
//   {larder:wb:<name>}:pending      ZSET  key -> time it may be claimed (ms, server clock)
//   {larder:wb:<name>}:processing   ZSET  key -> claim deadline
//   {larder:wb:<name>}:values       HASH  key -> dirty copy (the envelope bytes)
//   {larder:wb:<name>}:versions     HASH  key -> last version issued for the key (kept after
//                                         the flush: the floor of its next version)
//   {larder:wb:<name>}:attempts     HASH  key -> failed attempts of this version
//   {larder:wb:<name>}:errors       HASH  key -> last error
//   {larder:wb:<name>}:since        ZSET  key -> time of its oldest write not yet flushed
//   {larder:wb:<name>}:since_next   HASH  key -> first write during the flush in progress
//   {larder:wb:<name>}:owners       HASH  key -> token of the claim holding it
//   {larder:wb:<name>}:seq          STRING     the version counter
//   {larder:wb:<name>}:dead, :dead_meta, :dead_errors (HASH), :dead_order (ZSET)
//   {larder:wb:<name>}:head_versions HASH key -> version of the dirty copy, while newer
//                                         versions are queued behind it (coalesce = false)
//   {larder:wb:<name>}:later        HASH  key "\0" i -> "<version> <since> <bytes>": the
//                                         versions queued behind the dirty copy, i from
//   {larder:wb:<name>}:later_ends   HASH  key -> "<first i> <last i>"
//
// With coalesce = false, a key with both a dirty copy and a dead entry is held back: its
// versions wait for the dead one's redrive or discard (it is in neither :pending nor
// :processing). With coalescing the two never exist together.
//
// None has a TTL, so volatile-* eviction policies never touch them; allkeys-* policies
// can, and eviction_risk() says so when asked. The cached copy lives under the user's key, in its
// own slot: put, settle, redrive and discard_dead touch both, which works on a single
// Redis server (with or without replicas) but not on Redis Cluster - unless the queue and
// the cache keys share a hash tag: a name with a tag ("{lb}scores") is used as is, so a
// cache key_prefix "{lb}user:" and the queue then live in one slot. See
// docs/write-paths.md.
//
// Times are the server's (TIME inside the scripts), so flushers on several hosts agree on
// deadlines whatever their clocks say. A version is above the counter (an INCR), the
// server's clock in microseconds, and the key's last version and dead entry's version: a
// Redis that lost its counter (a failover to a replica that missed the last increments,
// whose clock is behind) still never hands a key a version below one it already had. The
// versions hash keeps one field per key ever written for that. Needs Redis 6.2 or later
// (ZADD LT; scripts replicated by effect).
//
// Concurrent puts share round trips (group commit): while two batches of puts are on their
// way to the server, the puts that arrive meanwhile wait and then go together in the next
// script call. A put that finds room goes at once, alone: none waits for company.
#pragma once

#include <algorithm>
#include <array>
#include <charconv>
#include <condition_variable>
#include <cstdint>
#include <deque>
#include <exception>
#include <initializer_list>
#include <mutex>
#include <optional>
#include <span>
#include <stdexcept>
#include <string>
#include <string_view>
#include <tuple>
#include <type_traits>
#include <vector>

#include "larder/backend/redis.hpp"
#include "larder/backend/redis_cluster.hpp"
#include "larder/backend/write_behind_store.hpp"
#include "larder/core/error.hpp"
#include "larder/core/keys.hpp"

namespace larder {

namespace redis_detail::write_behind_lua {

// KEYS[1..17] are always the queue's keys, in this order; KEYS[18...] are user keys.
inline constexpr std::string_view prelude = R"lua(
local P, R, V, N, A, E, S, SEQ, D, DM, DE, DZ, NS, O = KEYS[1], KEYS[2], KEYS[3], KEYS[4],
    KEYS[5], KEYS[6], KEYS[7], KEYS[8], KEYS[9], KEYS[10], KEYS[11], KEYS[12], KEYS[13],
    KEYS[14]
local HV, L, LE = KEYS[15], KEYS[16], KEYS[17]
local function fmt(n) return string.format('%.0f', n) end
local function now_ms()
    local t = redis.call('TIME')
    return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end
local function next_version(now, k)
    -- The counter is lifted by the clock, never by one key's floor: a key whose version
    -- nears the limit must not drag the others there.
    local seq = math.max(redis.call('INCR', SEQ), now * 1000)
    -- The key's last version stays in N after a flush and after it dies: its floor.
    local v = math.max(seq, tonumber(redis.call('HGET', N, k) or '0') + 1)
    -- Lua counts in doubles: past 2^53 a version would no longer grow. (The clock in
    -- microseconds reaches it in the year 2255; only a planted version gets there now.)
    if v >= 9007199254740991 then error({err = 'ERR larder: write-behind versions exhausted'}) end
    redis.call('SET', SEQ, fmt(seq))
    return v
end
-- The version of the dirty copy (N holds the last one issued, which is the same unless
-- newer versions are queued behind it).
local function head_version(k)
    return redis.call('HGET', HV, k) or redis.call('HGET', N, k)
end
-- Versions queued behind the dirty copy (coalesce = false): first and last index, or nil.
local function later_ends(k)
    local ends = redis.call('HGET', LE, k)
    if not ends then return nil end
    local space = string.find(ends, ' ', 1, true)
    return tonumber(string.sub(ends, 1, space - 1)), tonumber(string.sub(ends, space + 1))
end
local function later_field(k, i) return k .. '\0' .. fmt(i) end
-- '<version> <since> <bytes>' -> version, since, bytes
local function parse_later(s)
    local a = string.find(s, ' ', 1, true)
    local b = string.find(s, ' ', a + 1, true)
    return string.sub(s, 1, a - 1), string.sub(s, a + 1, b - 1), string.sub(s, b + 1)
end
-- The latest unflushed copy: the newest queued version, else the dirty one, else the dead
-- entry's.
local function unflushed(k)
    local _, last = later_ends(k)
    if last then
        local _, _, bytes = parse_later(redis.call('HGET', L, later_field(k, last)))
        return bytes
    end
    return redis.call('HGET', V, k) or redis.call('HGET', D, k)
end
-- The next queued version becomes the dirty copy (not scheduled); false when none is.
local function promote(k)
    local first, last = later_ends(k)
    if not first then return false end
    local f = later_field(k, first)
    local ver, since, bytes = parse_later(redis.call('HGET', L, f))
    redis.call('HDEL', L, f)
    if first == last then
        redis.call('HDEL', LE, k)
        redis.call('HDEL', HV, k)
    else
        redis.call('HSET', LE, k, fmt(first + 1) .. ' ' .. fmt(last))
        redis.call('HSET', HV, k, ver)
    end
    redis.call('HSET', V, k, bytes)
    redis.call('ZADD', S, since, k)
    redis.call('HDEL', A, k)
    redis.call('HDEL', E, k)
    redis.call('HDEL', NS, k)
    return true
end
-- Drops the key from the queue; its version stays, as the floor of the next one.
local function forget(k)
    redis.call('ZREM', P, k)
    redis.call('ZREM', R, k)
    redis.call('HDEL', V, k)
    redis.call('HDEL', A, k)
    redis.call('HDEL', E, k)
    redis.call('ZREM', S, k)
    redis.call('HDEL', NS, k)
    redis.call('HDEL', O, k)
    redis.call('HDEL', HV, k)
end
-- Moves a dirty entry to the dead letters; `attempts` counts every failed one. Versions
-- queued behind it wait for its redrive or discard (held back), so the order holds.
local function bury(k, attempts, now, err)
    local since = redis.call('ZSCORE', S, k) or fmt(now)
    redis.call('HSET', D, k, redis.call('HGET', V, k))
    redis.call('HSET', DM, k, (head_version(k) or '0') .. ' ' .. fmt(attempts) .. ' ' ..
        fmt(now) .. ' ' .. since .. ' 0')
    redis.call('HSET', DE, k, err)
    redis.call('ZADD', DZ, fmt(now), k)
    if promote(k) then
        redis.call('ZREM', P, k)
        redis.call('ZREM', R, k)
        redis.call('HDEL', O, k)
    else
        forget(k)
    end
end
local function forget_dead(k)
    redis.call('HDEL', D, k)
    redis.call('HDEL', DM, k)
    redis.call('HDEL', DE, k)
    redis.call('ZREM', DZ, k)
end
)lua";

// Puts, applied in order (concurrent puts share one call): ARGV: count, then per put:
// key, bytes, max_pending, 'put' | 'cas', expected, coalesce ('1' | '0'). KEYS[17 + i]:
// the cached copy of put i. Returns per put: status (1 stored, 2 conflict, 3 full, 4
// failed), version, coalesced (the error, when failed).
inline constexpr std::string_view put = R"lua(
-- Read once per batch: the clock, the version counter (written back once, at the end),
-- whether anything is dead at all (puts only ever remove dead entries) and whether any
-- version is queued behind another (coalesce = false).
local now = now_ms()
local now_s = fmt(now)
local seq = tonumber(redis.call('GET', SEQ) or '0')
local any_dead = redis.call('ZCARD', DZ) > 0
local any_later = redis.call('HLEN', L) > 0
-- As next_version, with the counter kept in `seq`.
local function version_for(k)
    local next_seq = math.max(seq + 1, now * 1000)
    local v = math.max(next_seq, tonumber(redis.call('HGET', N, k) or '0') + 1)
    if v >= 9007199254740991 then error({err = 'ERR larder: write-behind versions exhausted'}) end
    seq = next_seq
    return v
end
local function put(k, bytes, U, max_pending, cas, expected, coalesce)
    local dirty = redis.call('HEXISTS', V, k) == 1
    if cas then
        local cur = unflushed(k) or redis.call('GET', U)
        if cur ~= expected then return {2, 0, 0} end
    end
    -- Dead entries hold acknowledged data as much as dirty ones: they take room too.
    -- Coalesced, a put to a dirty or dead key takes that key's place; kept in order, every
    -- version takes one.
    local dead = any_dead and redis.call('HEXISTS', D, k) == 1
    if max_pending > 0 and not (coalesce and (dirty or dead)) and
        redis.call('HLEN', V) + redis.call('HLEN', L) + redis.call('ZCARD', DZ) >= max_pending then
        return {3, 0, 0}
    end
    local v = version_for(k)
    local v_s = fmt(v)
    redis.call('SET', U, bytes)
    if not coalesce and (dirty or dead) then
        if dirty then
            -- Behind the versions queued already.
            if redis.call('HEXISTS', HV, k) == 0 then redis.call('HSET', HV, k, head_version(k)) end
            local first, last = later_ends(k)
            if not first then first, last = 0, -1 end
            any_later = true
            redis.call('HSET', L, later_field(k, last + 1), v_s .. ' ' .. now_s .. ' ' .. bytes)
            redis.call('HSET', LE, k, fmt(first) .. ' ' .. fmt(last + 1))
        else
            -- In order: after the dead version, whenever that is redriven or discarded.
            redis.call('HSET', V, k, bytes)
            redis.call('ZADD', S, now_s, k)
        end
        redis.call('HSET', N, k, v_s)
        return {1, v, 0}
    end
    if dirty then
        -- The newest queued version is the one replaced: a queue kept in order by another
        -- writer stays in order.
        local first, last
        if any_later then first, last = later_ends(k) end
        if last then
            local f = later_field(k, last)
            local _, since = parse_later(redis.call('HGET', L, f))
            redis.call('HSET', L, f, v_s .. ' ' .. since .. ' ' .. bytes)
            redis.call('HSET', N, k, v_s)
            return {1, v, 1}
        end
        if dead then
            -- Held back behind a dead version (a queue kept in order): it still waits.
            redis.call('HSET', V, k, bytes)
            redis.call('HSET', N, k, v_s)
            return {1, v, 1}
        end
    end
    -- (A clean key is in none of R, NS, A, E and S: nothing to ask or clear.)
    local in_flight = dirty and redis.call('ZSCORE', R, k)
    -- Replaced a value that will never be written: one waiting, or one that arrived during
    -- the flush in progress (the flush writes the older value, the next one only this).
    local coalesced = 0
    if dirty and (not in_flight or redis.call('HEXISTS', NS, k) == 1) then coalesced = 1 end
    redis.call('HSET', V, k, bytes)
    redis.call('HSET', N, k, v_s)
    if dirty then
        redis.call('HDEL', A, k)
        redis.call('HDEL', E, k)
    else
        redis.call('ZADD', S, now_s, k)
    end
    if in_flight then
        -- The first write the flush in progress does not carry: the age of the key once the
        -- older value is acknowledged.
        redis.call('HSETNX', NS, k, now_s)
    else
        -- Ready now: a key in backoff gets the new value's chance at once (LT: Redis 6.2).
        redis.call('ZADD', P, 'LT', now_s, k)
    end
    -- The dead value is replaced, as a waiting one is (the put was built on it, or overwrites it).
    if dead then forget_dead(k) end
    return {1, v, coalesced}
end
local out = {}
for i = 1, tonumber(ARGV[1]) do
    local a = 2 + (i - 1) * 6
    -- A put that fails (out of memory, versions exhausted) fails alone: the puts before it
    -- in the batch stay applied, so their callers must hear that they were.
    local ok, r = pcall(put, ARGV[a], ARGV[a + 1], KEYS[17 + i], tonumber(ARGV[a + 2]),
        ARGV[a + 3] == 'cas', ARGV[a + 4], ARGV[a + 5] ~= '0')
    if not ok then
        r = {4, 0, type(r) == 'table' and (r.err or r.message) or tostring(r)}
    end
    local n = #out
    out[n + 1], out[n + 2], out[n + 3] = r[1], r[2], r[3]
end
redis.call('SET', SEQ, fmt(seq))
return out
)lua";

// ARGV: key, 'all' | 'unflushed'. KEYS[18]: the cached copy. Returns {} or
// {from the queue (0/1), bytes}; 'unflushed' never reads the cached copy.
inline constexpr std::string_view read_current = R"lua(
local d = unflushed(ARGV[1])
if d then return {1, d} end
if ARGV[2] == 'unflushed' then return {} end
local c = redis.call('GET', KEYS[18])
if c then return {0, c} end
return {}
)lua";

// ARGV: max, claim_ttl_ms, requeue limit, max_attempts (0: none), max_bytes (0: none),
// token ('0': none), max_dead (0: none), budget ms, then tokens of lost claims. Returns
// {requeued, dead-lettered keys, held keys (arrays), then 7 fields per entry: key, version,
// value, attempts, dirty since, ms since then, last error}.
inline constexpr std::string_view claim = R"lua(
local now = now_ms()
local max_attempts, max_bytes, token = tonumber(ARGV[4]), tonumber(ARGV[5]), ARGV[6]
local max_dead, budget = tonumber(ARGV[7]), tonumber(ARGV[8])
local requeued, dead, held = 0, {}, {}
-- A claim that ended without news is a failed attempt; the store's count decides, so an
-- entry whose claims never reach a flusher is dead-lettered here, not re-queued forever.
local function release(k, why)
    redis.call('ZREM', R, k)
    redis.call('HDEL', NS, k)
    redis.call('HDEL', O, k)
    if redis.call('HEXISTS', V, k) == 1 then
        local attempts = redis.call('HINCRBY', A, k, 1)
        local dead_full = max_dead > 0 and redis.call('ZCARD', DZ) >= max_dead and
            redis.call('HEXISTS', D, k) == 0
        local since = tonumber(redis.call('ZSCORE', S, k) or fmt(now))
        local spent = max_attempts > 0 and attempts >= max_attempts and now - since >= budget
        if spent and dead_full then held[#held + 1] = k end
        if spent and not dead_full then
            bury(k, attempts, now, 'gave up after ' .. fmt(attempts) .. ' attempts: ' .. why)
            dead[#dead + 1] = k
        else
            redis.call('HSET', E, k, why)
            redis.call('ZADD', P, fmt(now), k)
            requeued = requeued + 1
        end
    end
end
if #ARGV > 8 then
    local lost = {}
    for i = 9, #ARGV do lost[ARGV[i]] = true end
    for _, k in ipairs(redis.call('ZRANGE', R, 0, -1)) do
        local owner = redis.call('HGET', O, k)
        if owner and lost[owner] then release(k, "its claim's reply was lost (a timeout)") end
    end
end
local expired = redis.call('ZRANGEBYSCORE', R, '-inf', fmt(now), 'LIMIT', 0, ARGV[3])
for _, k in ipairs(expired) do
    release(k, 'claim expired: the flusher holding it died or stalled')
end
local ready = redis.call('ZRANGEBYSCORE', P, '-inf', fmt(now), 'LIMIT', 0, ARGV[1])
local deadline = fmt(now + tonumber(ARGV[2]))
local out = {requeued, dead, held}
local bytes = 0
for _, k in ipairs(ready) do
    -- Measured before it is read: a value that would overflow the claim stays queued.
    local size = redis.call('HSTRLEN', V, k)
    if max_bytes > 0 and #out > 3 and bytes + size > max_bytes then break end
    bytes = bytes + size
    redis.call('ZREM', P, k)
    local value = redis.call('HGET', V, k)
    if value then
        redis.call('ZADD', R, deadline, k)
        if token ~= '0' then redis.call('HSET', O, k, token) end
        out[#out + 1] = k
        out[#out + 1] = head_version(k) or '0'
        out[#out + 1] = value
        out[#out + 1] = redis.call('HGET', A, k) or '0'
        local since = redis.call('ZSCORE', S, k) or fmt(now)
        out[#out + 1] = since
        out[#out + 1] = math.max(0, now - tonumber(since))
        out[#out + 1] = redis.call('HGET', E, k) or ''
    end
end
return out
)lua";

// ARGV: claim_ttl_ms, token, keys... Only keys still claimed under the token, before
// their deadline, are touched. Returns how many.
inline constexpr std::string_view extend = R"lua(
local now = now_ms()
local deadline = fmt(now + tonumber(ARGV[1]))
local extended = 0
for i = 3, #ARGV do
    local at = redis.call('ZSCORE', R, ARGV[i])
    if at and tonumber(at) > now and (redis.call('HGET', O, ARGV[i]) or '0') == ARGV[2] then
        redis.call('ZADD', R, deadline, ARGV[i])
        extended = extended + 1
    end
end
return extended
)lua";

// ARGV: clean_ttl_ms, max_dead (0: none), then per entry: op ('a' ack, 'r' retry, 'd' dead,
// 'w' defer), key, version, retry delay ms, error, claim token. KEYS[17 + i]: the cached
// copy of entry i. Returns per entry 0 done, 1 superseded, 2 gone, 3 lost (not this
// claim's any more), 4 held (dead, but the dead-letter list is full: pending again).
inline constexpr std::string_view settle = R"lua(
local now = now_ms()
local clean_ttl, max_dead = tonumber(ARGV[1]), tonumber(ARGV[2])
local out = {}
local e = 0
for i = 3, #ARGV, 6 do
    e = e + 1
    local op, k, ver = ARGV[i], ARGV[i + 1], ARGV[i + 2]
    local cur = redis.call('HEXISTS', V, k) == 1 and head_version(k)
    local mine = redis.call('ZSCORE', R, k) and (redis.call('HGET', O, k) or '0') == ARGV[i + 5]
    if not cur then
        if mine then
            redis.call('ZREM', R, k)
            redis.call('HDEL', O, k)
        end
        out[e] = 2
    elseif not mine then
        -- Its deadline passed and it was re-queued, or another flusher holds it now.
        out[e] = 3
    elseif cur ~= ver then
        redis.call('HDEL', O, k)
        if redis.call('ZREM', R, k) == 1 then redis.call('ZADD', P, fmt(now), k) end
        -- Written (ack): what is still unflushed is what came after the claim.
        local next_since = redis.call('HGET', NS, k)
        if op == 'a' and next_since then redis.call('ZADD', S, next_since, k) end
        redis.call('HDEL', NS, k)
        out[e] = 1
    else
        local value = redis.call('HGET', V, k)
        if op == 'a' and promote(k) then
            -- The next version queued behind it is written next.
            redis.call('ZREM', R, k)
            redis.call('HDEL', O, k)
            redis.call('ZADD', P, fmt(now), k)
        elseif op == 'a' then
            forget(k)
            if clean_ttl > 0 and redis.call('GET', KEYS[17 + e]) == value then
                redis.call('PEXPIRE', KEYS[17 + e], ARGV[1])
            end
        else
            local full = op == 'd' and max_dead > 0 and redis.call('ZCARD', DZ) >= max_dead and
                redis.call('HEXISTS', D, k) == 0
            if op == 'd' and not full then
                bury(k, tonumber(redis.call('HGET', A, k) or '0') + 1, now, ARGV[i + 4])
            else
                -- retry, defer, or dead with no room: pending again after the delay; only
                -- a defer (the database was unreachable) costs the entry no attempt.
                redis.call('ZREM', R, k)
                redis.call('HDEL', NS, k)
                redis.call('HDEL', O, k)
                if op ~= 'w' then redis.call('HINCRBY', A, k, 1) end
                redis.call('HSET', E, k, ARGV[i + 4])
                redis.call('ZADD', P, fmt(now + tonumber(ARGV[i + 3])), k)
            end
            if full then out[e] = 4 end
        end
        out[e] = out[e] or 0
    end
end
return out
)lua";

// ARGV: limit. Returns 4 fields per entry, oldest first: key, value, meta, error.
inline constexpr std::string_view list_dead = R"lua(
local ks = redis.call('ZRANGE', DZ, 0, tonumber(ARGV[1]) - 1)
local out = {}
for _, k in ipairs(ks) do
    out[#out + 1] = k
    out[#out + 1] = redis.call('HGET', D, k) or ''
    out[#out + 1] = redis.call('HGET', DM, k) or ''
    out[#out + 1] = redis.call('HGET', DE, k) or ''
end
return out
)lua";

// ARGV: key. KEYS[18]: the cached copy. Returns 1 requeued, 2 superseded (dirty again), 0
// not found.
inline constexpr std::string_view redrive = R"lua(
local k, U = ARGV[1], KEYS[18]
local value = redis.call('HGET', D, k)
if not value then return 0 end
local meta = redis.call('HGET', DM, k) or ''
local held_back = redis.call('HEXISTS', V, k) == 1
local now = now_ms()
-- Issued before anything changes: a refused version leaves the dead entry where it was.
local v = not held_back and next_version(now, k)
if held_back then
    -- Held back behind it (coalesce = false): the dead version goes back in front of the
    -- versions it held back, as itself; they are written after it, in order.
    local version, since = string.match(meta, '^(%S+) %S+ %S+ (%S+)')
    local first, last = later_ends(k)
    if not first then first, last = 1, 0 end
    redis.call('HSET', L, later_field(k, first - 1), head_version(k) .. ' ' ..
        (redis.call('ZSCORE', S, k) or since) .. ' ' .. redis.call('HGET', V, k))
    redis.call('HSET', LE, k, fmt(first - 1) .. ' ' .. fmt(last))
    redis.call('HSET', HV, k, version)
    redis.call('HSET', V, k, value)
    redis.call('ZADD', S, since, k)
    redis.call('HDEL', A, k)
    redis.call('HDEL', E, k)
    forget_dead(k)
    redis.call('ZADD', P, fmt(now), k)
    return 1
end
forget_dead(k)
redis.call('HSET', V, k, value)
redis.call('HSET', N, k, fmt(v))
redis.call('HDEL', A, k)
redis.call('HDEL', E, k)
redis.call('ZADD', P, fmt(now), k)
redis.call('ZADD', S, 'NX', fmt(now), k)
redis.call('SET', U, value)
return 1
)lua";

// ARGV: key. KEYS[18]: the cached copy. Returns 1 when a dead entry was removed.
inline constexpr std::string_view discard_dead = R"lua(
if redis.call('HEXISTS', D, ARGV[1]) == 0 then return 0 end
forget_dead(ARGV[1])
-- Whatever is cached holds the dead value (a read may have cached it again with a new
-- envelope), unless the key is dirty again: drop it, so reads go to the database.
if redis.call('HEXISTS', V, ARGV[1]) == 0 then
    redis.call('DEL', KEYS[18])
elseif not redis.call('ZSCORE', R, ARGV[1]) then
    -- The versions it held back (coalesce = false) go on.
    redis.call('ZADD', P, 'NX', fmt(now_ms()), ARGV[1])
end
return 1
)lua";

// Returns {dirty keys, claimed, dead, oldest dirty age ms}.
inline constexpr std::string_view stats = R"lua(
local now = now_ms()
local oldest = redis.call('ZRANGE', S, 0, 0, 'WITHSCORES')
local age = 0
if oldest[2] then age = now - tonumber(oldest[2]) end
if age < 0 then age = 0 end
return {redis.call('HLEN', V), redis.call('ZCARD', R), redis.call('ZCARD', DZ), age}
)lua";

}  // namespace redis_detail::write_behind_lua

// What RedisWriteBehindStore makes of its scripts' replies: free functions, so that they
// can be tested (and fuzzed) on replies no healthy server sends. Anything but the reply a
// script is written to give throws BackendError.
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

/// `Redis` is RedisBackend (RedisWriteBehindStore) or RedisClusterBackend
/// (RedisClusterWriteBehindStore): anything with their eval, eval_and_wait, command,
/// stored_key and options.
template <class Redis>
class BasicRedisWriteBehindStore {
public:
    /// The backend is borrowed and must outlive the store. No I/O happens here.
    explicit BasicRedisWriteBehindStore(Redis& backend, WriteBehindStoreOptions options = {})
        : backend_(backend),
          name_(std::move(options.name)),
          max_dead_(options.max_dead),
          replicas_(options.replicas),
          replica_timeout_(options.replica_timeout),
          coalesce_(options.coalesce),
          put_("write_behind_put", source<redis_detail::write_behind_lua::put>()),
          read_current_("write_behind_read_current",
                        source<redis_detail::write_behind_lua::read_current>(), false),
          claim_("write_behind_claim", source<redis_detail::write_behind_lua::claim>()),
          extend_("write_behind_extend", source<redis_detail::write_behind_lua::extend>()),
          settle_("write_behind_settle", source<redis_detail::write_behind_lua::settle>()),
          list_dead_("write_behind_list_dead", source<redis_detail::write_behind_lua::list_dead>(),
                     false),
          redrive_("write_behind_redrive", source<redis_detail::write_behind_lua::redrive>()),
          discard_dead_("write_behind_discard_dead",
                        source<redis_detail::write_behind_lua::discard_dead>()),
          stats_("write_behind_stats", source<redis_detail::write_behind_lua::stats>(), false) {
        if (name_.empty()) throw ConfigError("RedisWriteBehindStore: the name must not be empty");
        if (replicas_ < 0)
            throw ConfigError("RedisWriteBehindStore: replicas must not be negative");
        // WAIT's reply must come before the connection's own deadline, or a put that
        // reached fewer replicas would look like a lost reply instead.
        if (replicas_ > 0 && (replica_timeout_.count() <= 0 ||
                              replica_timeout_ >= backend_.options().command_timeout)) {
            throw ConfigError(
                "RedisWriteBehindStore: replica_timeout must be positive and below the "
                "backend's command_timeout");
        }
        // With no ':' in the name, no cache prefix (which ends in ':') followed by k: or m:
        // can spell a queue key (docs/FORMAT.md, "Keys").
        if (name_.find(':') != std::string::npos) {
            throw ConfigError("RedisWriteBehindStore: the name must not contain ':'");
        }
        // A put changes the queue and the cached copy in one script: on a cluster both must
        // live in one slot, which a hash tag in the key prefix (applied to both) ensures.
        if constexpr (std::is_same_v<Redis, RedisClusterBackend>) {
            const std::string& prefix = backend_.options().key_prefix;
            if (keys::hash_tag(prefix) == std::string_view(prefix)) {
                throw ConfigError(
                    "RedisClusterWriteBehindStore: the backend's key_prefix needs a hash tag, "
                    "such as \"{app}:\", so that the queue and the cached copies share one "
                    "slot (docs/cluster.md)");
            }
        }
        // A name with its own hash tag is used as is (Redis Cluster: share the cache's tag).
        const std::string base = keys::hash_tag(name_) != std::string_view(name_)
                                     ? "larder:wb:" + name_ + ":"
                                     : "{larder:wb:" + name_ + "}:";
        static constexpr std::array<std::string_view, queue_key_count> roles{
            "pending",    "processing", "values",        "versions",  "attempts",    "errors",
            "since",      "seq",        "dead",          "dead_meta", "dead_errors", "dead_order",
            "since_next", "owners",     "head_versions", "later",     "later_ends"};
        for (std::size_t i = 0; i < roles.size(); ++i) keys_[i] = base + std::string(roles[i]);
    }

    BasicRedisWriteBehindStore(const BasicRedisWriteBehindStore&) = delete;
    BasicRedisWriteBehindStore& operator=(const BasicRedisWriteBehindStore&) = delete;

    PutOutcome put(std::string_view key, std::string_view bytes, std::size_t max_pending) {
        return put_impl(key, bytes, max_pending, "put", {});
    }

    PutOutcome put_if(std::string_view key, std::string_view bytes, std::string_view expected,
                      std::size_t max_pending) {
        return put_impl(key, bytes, max_pending, "cas", expected);
    }

    std::optional<CurrentValue> read_current(std::string_view key) {
        return read_current_impl(key, "all");
    }

    std::optional<std::string> unflushed_value(std::string_view key) {
        auto current = read_current_impl(key, "unflushed");
        if (!current) return std::nullopt;
        return std::move(current->bytes);
    }

    ClaimBatch claim(std::size_t max, Millis claim_ttl, const ClaimOptions& options = {}) {
        const redis_detail::Number n(static_cast<std::int64_t>(max));
        const redis_detail::Number ttl(claim_ttl.count());
        const redis_detail::Number requeue_limit(
            static_cast<std::int64_t>(std::max<std::size_t>(max, 100)));
        const redis_detail::Number max_attempts(static_cast<std::int64_t>(options.max_attempts));
        const redis_detail::Number max_bytes(static_cast<std::int64_t>(
            std::min<std::size_t>(options.max_bytes, std::size_t{1} << 50)));
        std::vector<std::string> tokens;  // the claim's token, then the lost ones
        tokens.reserve(1 + options.lost.size());
        tokens.push_back(std::to_string(options.token));
        for (std::uint64_t t : options.lost) tokens.push_back(std::to_string(t));
        const redis_detail::Number max_dead(static_cast<std::int64_t>(max_dead_));
        const redis_detail::Number budget(std::max<std::int64_t>(0, options.budget.count()));
        std::vector<std::string_view> args{
            n.view(),         ttl.view(), requeue_limit.view(), max_attempts.view(),
            max_bytes.view(), tokens[0],  max_dead.view(),      budget.view()};
        args.insert(args.end(), tokens.begin() + 1, tokens.end());
        return redis_detail::write_behind_reply::claim(backend_.eval(claim_, queue_keys(), args));
    }

    std::size_t extend(std::span<const std::string> keys, Millis claim_ttl, std::uint64_t token) {
        if (keys.empty()) return 0;
        const redis_detail::Number ttl(claim_ttl.count());
        const std::string owner = std::to_string(token);
        std::vector<std::string_view> args;
        args.reserve(keys.size() + 2);
        args.push_back(ttl.view());
        args.push_back(owner);
        for (const auto& k : keys) args.push_back(k);
        return static_cast<std::size_t>(redis_detail::write_behind_reply::integer(
            backend_.eval(extend_, queue_keys(), args), "extend"));
    }

    std::vector<SettleResult> settle(std::span<const Settlement> settlements, Millis clean_ttl) {
        std::vector<SettleResult> out;
        out.reserve(settlements.size());
        // Scripts take at most 255 keys: settle in chunks.
        constexpr std::size_t chunk = 100;
        for (std::size_t first = 0; first < settlements.size(); first += chunk) {
            const auto part =
                settlements.subspan(first, std::min(chunk, settlements.size() - first));
            settle_chunk(part, clean_ttl, out);
        }
        return out;
    }

    std::vector<DeadRecord> list_dead(std::size_t limit) {
        if (limit == 0) return {};
        const redis_detail::Number n(static_cast<std::int64_t>(limit));
        const std::array<std::string_view, 1> args{n.view()};
        return redis_detail::write_behind_reply::list_dead(
            backend_.eval(list_dead_, queue_keys(), args));
    }

    RedriveResult redrive(std::string_view key) {
        const auto keys = with_user_keys({key});
        const std::array<std::string_view, 1> args{key};
        return redis_detail::write_behind_reply::redrive(backend_.eval(redrive_, keys, args));
    }

    bool discard_dead(std::string_view key) {
        const auto keys = with_user_keys({key});
        const std::array<std::string_view, 1> args{key};
        return redis_detail::write_behind_reply::integer(backend_.eval(discard_dead_, keys, args),
                                                         "discard_dead") == 1;
    }

    QueueStats stats() {
        return redis_detail::write_behind_reply::stats(
            backend_.eval(stats_, queue_keys(), std::span<const std::string_view>{}));
    }

    std::vector<std::string> pending_keys(std::size_t limit) {
        if (limit == 0) return {};
        const std::string since = backend_.stored_key(keys_[6]);
        const redis_detail::Number last(static_cast<std::int64_t>(limit) - 1);
        return redis_detail::write_behind_reply::keys(
            backend_.command({"ZRANGE", since, "0", last.view()}));
    }

    static constexpr bool durable = true;

    /// An allkeys-* maxmemory-policy may evict the queue and unflushed cached copies.
    /// Sends CONFIG GET maxmemory-policy, an @admin command that a tenant's ACL usually
    /// refuses (and records in ACL LOG): so it runs only when asked, never on its own.
    EvictionRisk eviction_risk() {
        try {
            return redis_detail::write_behind_reply::eviction_risk(
                server_command({"CONFIG", "GET", "maxmemory-policy"}));
        } catch (const BackendError& e) {
            return {EvictionRisk::could_not_run,
                    std::string("could not read maxmemory-policy: ") + e.what()};
        }
    }

    /// INFO persistence and INFO replication: allowed by a tenant's ACL with +info. (The
    /// RDB snapshot settings would need CONFIG GET, an @admin command a tenant's ACL refuses
    /// and logs, so they are not asked: without appendonly, a restart is taken to lose
    /// what is unflushed.)
    Persistence persistence() {
        const std::string persistence = info_text("persistence");
        const std::string replication = info_text("replication");
        return redis_detail::write_behind_reply::persistence(persistence, replication);
    }

    [[nodiscard]] const std::string& name() const noexcept { return name_; }

    /// The Redis key of one part of the queue ("pending", "values", ...), before the
    /// backend's key_prefix.
    [[nodiscard]] std::string queue_key(std::string_view role) const {
        for (const auto& k : keys_) {
            if (k.size() > role.size() && k.ends_with(role) &&
                k[k.size() - role.size() - 1] == ':') {
                return k;
            }
        }
        throw InvalidArgumentError("RedisWriteBehindStore: no queue key '" + std::string(role) +
                                   "'");
    }

private:
    static constexpr std::size_t queue_key_count = 17;
    // Group commit bounds: batches of puts on their way at once (two, so that one is built
    // while the other travels), and what one batch carries at most.
    static constexpr int max_put_batches = 2;
    static constexpr std::size_t put_batch_size = 64;
    static constexpr std::size_t put_batch_bytes = std::size_t{1} << 20;

    /// A script's full source: the prelude, then its body. Built once, kept for the program.
    template <const std::string_view& Body>
    static const std::string& source() {
        static const std::string text =
            std::string(redis_detail::write_behind_lua::prelude) + std::string(Body);
        return text;
    }

    [[nodiscard]] std::array<std::string_view, queue_key_count> queue_keys() const {
        std::array<std::string_view, queue_key_count> out;
        for (std::size_t i = 0; i < queue_key_count; ++i) out[i] = keys_[i];
        return out;
    }

    [[nodiscard]] std::vector<std::string_view> with_user_keys(
        std::initializer_list<std::string_view> user) const {
        std::vector<std::string_view> out(keys_.begin(), keys_.end());
        out.insert(out.end(), user.begin(), user.end());
        return out;
    }

    std::optional<CurrentValue> read_current_impl(std::string_view key, std::string_view what) {
        const auto keys = with_user_keys({key});
        const std::array<std::string_view, 2> args{key, what};
        return redis_detail::write_behind_reply::read_current(
            backend_.eval(read_current_, keys, args));
    }

    // One put waiting for its batch. Its views point into the caller's frame, which waits.
    struct QueuedPut {
        std::string_view key, bytes, mode, expected;
        std::size_t max_pending = 0;
        PutOutcome outcome{};
        std::exception_ptr error{};
        bool done = false;
        // Its caller waits here, woken alone: waking every waiting caller at the end of each
        // batch cost more than the batch saved once many threads put at once.
        std::condition_variable wake{};
    };

    // Group commit: the caller's put joins the queue; while fewer than max_put_batches
    // batches are on their way, a waiting caller takes up to put_batch_size puts from the
    // front and sends them as one script call, then wakes their callers. Whenever a batch
    // could be sent and puts wait, the first of them is woken to send it.
    PutOutcome put_impl(std::string_view key, std::string_view bytes, std::size_t max_pending,
                        std::string_view mode, std::string_view expected) {
        QueuedPut mine{key, bytes, mode, expected, max_pending};
        std::unique_lock lock(put_mutex_);
        put_queue_.push_back(&mine);
        while (!mine.done) {
            if (put_batches_ < max_put_batches && !put_queue_.empty()) {
                ++put_batches_;
                std::vector<QueuedPut*> batch;
                std::size_t bytes_taken = 0;
                while (!put_queue_.empty() && batch.size() < put_batch_size &&
                       (batch.empty() || bytes_taken < put_batch_bytes)) {
                    bytes_taken += put_queue_.front()->bytes.size();
                    batch.push_back(put_queue_.front());
                    put_queue_.pop_front();
                }
                wake_next_sender();
                lock.unlock();
                send_puts(batch);
                lock.lock();
                --put_batches_;
                // Each woken caller needs the lock to return, so its QueuedPut outlives this.
                for (QueuedPut* p : batch) {
                    p->done = true;
                    p->wake.notify_one();
                }
                wake_next_sender();
            } else {
                mine.wake.wait(lock);
            }
        }
        lock.unlock();
        if (mine.error) std::rethrow_exception(mine.error);
        return mine.outcome;
    }

    // Called with put_mutex_ held.
    void wake_next_sender() {
        if (put_batches_ < max_put_batches && !put_queue_.empty()) {
            put_queue_.front()->wake.notify_one();
        }
    }

    // Sends one batch; every put in it gets its outcome, or the error (none is left unset).
    void send_puts(std::span<QueuedPut* const> batch) noexcept {
        try {
            std::vector<std::string_view> keys(keys_.begin(), keys_.end());
            std::vector<std::string> numbers;  // reserved: the views below stay valid
            numbers.reserve(1 + batch.size());
            std::vector<std::string_view> args;
            args.reserve(1 + 6 * batch.size());
            numbers.push_back(std::to_string(batch.size()));
            args.push_back(numbers.back());
            for (const QueuedPut* p : batch) {
                keys.push_back(p->key);
                numbers.push_back(std::to_string(p->max_pending));
                args.insert(args.end(), {p->key, p->bytes, numbers.back(), p->mode, p->expected,
                                         coalesce_ ? "1" : "0"});
            }
            std::int64_t acked = 0;
            RedisReply r;
            if (replicas_ > 0) {
                std::tie(r, acked) =
                    backend_.eval_and_wait(put_, keys, args, replicas_, replica_timeout_);
            } else {
                r = backend_.eval(put_, keys, args);
            }
            const auto& parts = redis_detail::write_behind_reply::put_parts(r, batch.size());
            for (std::size_t i = 0; i < batch.size(); ++i) {
                try {
                    batch[i]->outcome = redis_detail::write_behind_reply::put_outcome(
                        std::span(parts).subspan(3 * i, 3), acked, replicas_, replica_timeout_);
                } catch (...) {
                    batch[i]->error = std::current_exception();
                }
            }
        } catch (...) {
            for (QueuedPut* p : batch) p->error = std::current_exception();
        }
    }

    void settle_chunk(std::span<const Settlement> part, Millis clean_ttl,
                      std::vector<SettleResult>& out) {
        std::vector<std::string_view> keys(keys_.begin(), keys_.end());
        // Numbers as text; reserved up front so the views below stay valid.
        std::vector<std::string> numbers;
        numbers.reserve(2 + 3 * part.size());
        std::vector<std::string_view> args;
        args.reserve(2 + 6 * part.size());
        numbers.push_back(std::to_string(std::max<std::int64_t>(0, clean_ttl.count())));
        args.push_back(numbers.back());
        numbers.push_back(std::to_string(max_dead_));
        args.push_back(numbers.back());
        for (const auto& s : part) {
            keys.push_back(s.key);
            args.push_back(op_code(s.action));
            args.push_back(s.key);
            numbers.push_back(std::to_string(s.version));
            args.push_back(numbers.back());
            numbers.push_back(std::to_string(std::max<std::int64_t>(0, s.retry_after.count())));
            args.push_back(numbers.back());
            args.push_back(s.error);
            numbers.push_back(std::to_string(s.token));
            args.push_back(numbers.back());
        }
        redis_detail::write_behind_reply::settle(backend_.eval(settle_, keys, args), part.size(),
                                                 out);
    }

    std::string info_text(std::string_view section) {
        return redis_detail::write_behind_reply::info_text(server_command({"INFO", section}));
    }

    // A command about the server, asked of the one that holds the queue.
    RedisReply server_command(std::initializer_list<std::string_view> argv) {
        if constexpr (std::is_same_v<Redis, RedisClusterBackend>) {
            return backend_.command_at(backend_.stored_key(keys_[0]), argv);
        } else {
            return backend_.command(argv);
        }
    }

    static std::string_view op_code(Settlement::Action action) {
        switch (action) {
            case Settlement::ack:
                return "a";
            case Settlement::retry:
                return "r";
            case Settlement::dead:
                return "d";
            case Settlement::defer:
                return "w";
        }
        return "r";
    }

    Redis& backend_;
    std::string name_;
    std::size_t max_dead_;
    int replicas_;
    Millis replica_timeout_;
    bool coalesce_;
    std::array<std::string, queue_key_count> keys_;
    std::mutex put_mutex_;
    std::deque<QueuedPut*> put_queue_;
    int put_batches_ = 0;  // on their way now
    RedisScript put_;
    RedisScript read_current_;
    RedisScript claim_;
    RedisScript extend_;
    RedisScript settle_;
    RedisScript list_dead_;
    RedisScript redrive_;
    RedisScript discard_dead_;
    RedisScript stats_;
};

using RedisWriteBehindStore = BasicRedisWriteBehindStore<RedisBackend>;
using RedisClusterWriteBehindStore = BasicRedisWriteBehindStore<RedisClusterBackend>;

template <>
struct write_behind_store_for<RedisBackend> {
    using type = RedisWriteBehindStore;
};

template <>
struct write_behind_store_for<RedisClusterBackend> {
    using type = RedisClusterWriteBehindStore;
};

static_assert(WriteBehindStore<RedisWriteBehindStore>);
static_assert(WriteBehindStore<RedisClusterWriteBehindStore>);

}  // namespace larder
