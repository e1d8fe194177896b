// The Lua scripts of RedisWriteBehindStore (<larder/backend/redis/write_behind_store.hpp>):
// each operation on the queue is one script, atomic on the server.
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
#pragma once

#include <string_view>

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

}  // namespace larder
