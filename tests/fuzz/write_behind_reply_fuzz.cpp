// Fuzz target: what RedisWriteBehindStore makes of its scripts' replies
// (redis_detail::write_behind_reply: put, read_current, claim, settle, list_dead, redrive,
// stats, ZRANGE, CONFIG GET, INFO). The input builds two replies: one of any shape, and
// one shaped like the reply the chosen script gives, with fields taken from the input
// (numbers as text that may not be numbers, an element of the wrong type now and then).
// Checked, besides "no crash, no undefined behaviour":
//  - every parser returns or throws BackendError (DurabilityError, for a put's replica
//    count, is one), nothing else; eviction_risk, info_field and persistence never throw;
//  - what a parser returns is what the reply holds (counts, keys, values, versions);
//  - round trip: values built from the input, written as the scripts write them, parse
//    back unchanged (claims, dead entries, stats, put outcomes, read_current, settle).
#include <larder/backend/redis/write_behind_store.hpp>

#include <cmath>
#include <cstddef>
#include <cstdint>
#include <limits>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "fuzz_support.hpp"

namespace {

using larder::RedisReply;
using larder::fuzz::check;
using larder::fuzz::Input;
namespace wb = larder::redis_detail::write_behind_reply;
using Type = RedisReply::Type;

RedisReply integer(std::int64_t v) {
    return RedisReply{.type = Type::integer, .integer = v};
}
RedisReply string(std::string_view s) {
    return RedisReply{.type = Type::string, .str = std::string(s)};
}
RedisReply array(std::vector<RedisReply> e = {}) {
    return RedisReply{.type = Type::array, .elements = std::move(e)};
}

// A reply of any shape.
RedisReply any(Input& in, int depth = 0) {
    RedisReply r;
    switch (in.byte() % 6) {
        case 0:
            break;
        case 1:
            r = integer(in.integral<std::int64_t>());
            break;
        case 2:
            r = string(in.text(32));
            break;
        case 3:
            r.type = Type::status;
            r.str = in.text(8);
            break;
        case 4:
            r.type = Type::error;
            r.str = in.text(8);
            break;
        default:
            r.type = Type::array;
            if (depth < 3) {
                r.elements.resize(in.byte() % 24);
                for (auto& e : r.elements) e = any(in, depth + 1);
            }
            break;
    }
    return r;
}

// A number as the scripts write it, or (now and then) text that is none.
std::string number_text(Input& in) {
    switch (in.byte() % 8) {
        case 0:
            return std::string(in.text(24));
        case 1:
            return std::to_string(in.integral<std::int64_t>());
        case 2: {
            double d = 0;
            const auto bits = in.integral<std::uint64_t>();
            std::memcpy(&d, &bits, sizeof d);
            char buf[64];
            std::snprintf(buf, sizeof buf, "%.17g", d);
            return buf;
        }
        default:
            return std::to_string(in.integral<std::uint64_t>());
    }
}

// The field, or now and then an element of another type.
RedisReply maybe_wrong(Input& in, RedisReply field) {
    if (in.byte() % 16 != 0) return field;
    return any(in, 2);
}

RedisReply shaped_claim(Input& in) {
    std::vector<RedisReply> parts;
    parts.push_back(maybe_wrong(in, integer(in.integral<std::int64_t>())));
    for (int list = 0; list < 2; ++list) {
        std::vector<RedisReply> keys(in.byte() % 4);
        for (auto& k : keys) k = maybe_wrong(in, string(in.text(16)));
        parts.push_back(maybe_wrong(in, array(std::move(keys))));
    }
    const std::size_t entries = in.byte() % 5;
    for (std::size_t i = 0; i < entries; ++i) {
        parts.push_back(maybe_wrong(in, string(in.text(16))));
        parts.push_back(maybe_wrong(in, string(number_text(in))));
        parts.push_back(maybe_wrong(in, string(in.text(32))));
        parts.push_back(maybe_wrong(in, string(number_text(in))));
        parts.push_back(maybe_wrong(in, string(number_text(in))));
        parts.push_back(maybe_wrong(in, integer(in.integral<std::int64_t>())));
        parts.push_back(maybe_wrong(in, string(in.text(16))));
    }
    if (in.byte() % 8 == 0) parts.resize(in.byte() % (parts.size() + 2));
    return array(std::move(parts));
}

RedisReply shaped_list_dead(Input& in) {
    std::vector<RedisReply> parts;
    const std::size_t entries = in.byte() % 5;
    for (std::size_t i = 0; i < entries; ++i) {
        parts.push_back(maybe_wrong(in, string(in.text(16))));
        parts.push_back(maybe_wrong(in, string(in.text(32))));
        std::string meta;
        const std::size_t fields = 5 - (in.byte() % 16 == 0 ? in.byte() % 5 : 0);
        for (std::size_t f = 0; f < fields; ++f) {
            if (f > 0) meta += ' ';
            meta += number_text(in);
        }
        parts.push_back(maybe_wrong(in, string(meta)));
        parts.push_back(maybe_wrong(in, string(in.text(16))));
    }
    if (in.byte() % 8 == 0) parts.resize(in.byte() % (parts.size() + 2));
    return array(std::move(parts));
}

RedisReply shaped_integers(Input& in, std::size_t n) {
    std::vector<RedisReply> parts(n);
    for (auto& p : parts) p = maybe_wrong(in, integer(in.integral<std::int64_t>()));
    return array(std::move(parts));
}

template <class F>
void backend_error_or_returns(F&& f) {
    larder::fuzz::returns_or_throws<larder::BackendError>(std::forward<F>(f));
}

// Every parser on one reply.
void parse_all(const RedisReply& r, Input& in) {
    const std::vector<RedisReply>* parts = r.is_array() ? &r.elements : nullptr;

    backend_error_or_returns([&] {
        const auto batch = wb::claim(r);
        check(parts && parts->size() >= 3 && batch.entries.size() == (parts->size() - 3) / 7);
        check(batch.dead_lettered.size() == (*parts)[1].elements.size());
        check(batch.held.size() == (*parts)[2].elements.size());
        for (std::size_t i = 0; i < batch.entries.size(); ++i) {
            const auto& e = batch.entries[i];
            check(e.key == (*parts)[3 + 7 * i].str && e.value == (*parts)[5 + 7 * i].str &&
                  e.waited.count() == (*parts)[8 + 7 * i].integer &&
                  e.last_error == (*parts)[9 + 7 * i].str);
        }
    });
    backend_error_or_returns([&] {
        const auto dead = wb::list_dead(r);
        check(parts && dead.size() * 4 == parts->size());
        for (std::size_t i = 0; i < dead.size(); ++i) {
            check(dead[i].key == (*parts)[4 * i].str && dead[i].value == (*parts)[4 * i + 1].str &&
                  dead[i].error == (*parts)[4 * i + 3].str);
        }
    });
    backend_error_or_returns([&] {
        const auto s = wb::stats(r);
        check(parts && parts->size() == 4 && s.oldest_pending_age.count() == (*parts)[3].integer);
    });
    backend_error_or_returns([&] {
        const auto current = wb::read_current(r);
        check(parts &&
              (current ? parts->size() == 2 && current->bytes == (*parts)[1].str : parts->empty()));
    });
    const std::size_t count = parts ? parts->size() : 0;
    for (const std::size_t n : {count, count + 1}) {
        backend_error_or_returns([&] {
            std::vector<larder::SettleResult> out;
            wb::settle(r, n, out);
            check(out.size() == n);
        });
    }
    const std::size_t puts = count / 3;
    backend_error_or_returns([&] {
        const auto& p = wb::put_parts(r, puts);
        check(p.size() == 3 * puts);
        const int replicas = in.byte() % 3;
        const std::int64_t acked = in.byte() % 3;
        for (std::size_t i = 0; i < puts; ++i) {
            backend_error_or_returns([&] {
                const auto outcome = wb::put_outcome(std::span(p).subspan(3 * i, 3), acked,
                                                     replicas, larder::Millis{100});
                check(outcome.status != larder::PutStatus::stored || acked >= replicas);
            });
        }
    });
    backend_error_or_returns([&] { (void)wb::redrive(r); });
    backend_error_or_returns([&] { check(wb::integer(r, "x") == r.integer); });
    backend_error_or_returns([&] { check(wb::text(r, "x") == r.str); });
    backend_error_or_returns([&] {
        const auto keys = wb::keys(r);
        check(parts && keys.size() == parts->size());
    });
    backend_error_or_returns([&] { check(wb::info_text(r) == r.str); });
    (void)wb::eviction_risk(r);
    (void)wb::persistence(r.str, r.str);
    (void)wb::info_field(r.str, "aof_enabled");
    for (const auto& e : r.elements) {
        backend_error_or_returns([&] { (void)wb::to_ms(e.str); });
        backend_error_or_returns([&] { (void)wb::to_u64(e.str, "x"); });
    }
}

std::string random_name(Input& in) {
    return std::string(in.text(12));
}

// Values built from the input, written as the scripts write them, parsed back.
void round_trips(Input& in) {
    // claim
    larder::ClaimBatch batch;
    batch.requeued = in.integral<std::uint32_t>();
    batch.dead_lettered.resize(in.byte() % 3);
    for (auto& k : batch.dead_lettered) k = random_name(in);
    batch.held.resize(in.byte() % 3);
    for (auto& k : batch.held) k = random_name(in);
    batch.entries.resize(in.byte() % 3);
    std::vector<RedisReply> parts{integer(static_cast<std::int64_t>(batch.requeued)), array(),
                                  array()};
    for (const auto& k : batch.dead_lettered) parts[1].elements.push_back(string(k));
    for (const auto& k : batch.held) parts[2].elements.push_back(string(k));
    for (auto& e : batch.entries) {
        e.key = random_name(in);
        e.version = in.integral<std::uint64_t>();
        e.value = in.text(32);
        e.attempts = in.integral<std::uint32_t>();
        // Scores are doubles: times within 2^53 ms come back exactly.
        const std::int64_t since = in.integral<std::int64_t>() % (std::int64_t{1} << 53);
        e.dirty_since = larder::TimePoint{larder::Millis{since}};
        e.waited = larder::Millis{in.integral<std::int64_t>()};
        e.last_error = random_name(in);
        for (const auto& p : {string(e.key), string(std::to_string(e.version)), string(e.value),
                              string(std::to_string(e.attempts)), string(std::to_string(since)),
                              integer(e.waited.count()), string(e.last_error)}) {
            parts.push_back(p);
        }
    }
    const auto claimed = wb::claim(array(parts));
    check(claimed.requeued == batch.requeued && claimed.dead_lettered == batch.dead_lettered &&
          claimed.held == batch.held && claimed.entries.size() == batch.entries.size());
    for (std::size_t i = 0; i < batch.entries.size(); ++i) {
        const auto& a = claimed.entries[i];
        const auto& b = batch.entries[i];
        check(a.key == b.key && a.version == b.version && a.value == b.value &&
              a.attempts == b.attempts && a.dirty_since == b.dirty_since && a.waited == b.waited &&
              a.last_error == b.last_error);
    }

    // list_dead
    std::vector<larder::DeadRecord> dead(in.byte() % 3);
    parts.clear();
    for (auto& d : dead) {
        d.key = random_name(in);
        d.value = in.text(32);
        d.version = in.integral<std::uint64_t>();
        d.attempts = in.integral<std::uint32_t>();
        const std::int64_t dead_at = in.integral<std::int64_t>() % (std::int64_t{1} << 53);
        const std::int64_t since = in.integral<std::int64_t>() % (std::int64_t{1} << 53);
        d.dead_at = larder::TimePoint{larder::Millis{dead_at}};
        d.dirty_since = larder::TimePoint{larder::Millis{since}};
        d.error = random_name(in);
        parts.push_back(string(d.key));
        parts.push_back(string(d.value));
        parts.push_back(string(std::to_string(d.version) + " " + std::to_string(d.attempts) + " " +
                               std::to_string(dead_at) + " " + std::to_string(since) + " 0"));
        parts.push_back(string(d.error));
    }
    const auto listed = wb::list_dead(array(parts));
    check(listed.size() == dead.size());
    for (std::size_t i = 0; i < dead.size(); ++i) {
        const auto& a = listed[i];
        const auto& b = dead[i];
        check(a.key == b.key && a.value == b.value && a.version == b.version &&
              a.attempts == b.attempts && a.dead_at == b.dead_at &&
              a.dirty_since == b.dirty_since && a.error == b.error);
    }

    // stats
    const larder::QueueStats s{.pending = in.integral<std::uint32_t>(),
                               .processing = in.integral<std::uint32_t>(),
                               .dead = in.integral<std::uint32_t>(),
                               .oldest_pending_age = larder::Millis{in.integral<std::int64_t>()}};
    const auto back = wb::stats(
        array({integer(static_cast<std::int64_t>(s.pending)),
               integer(static_cast<std::int64_t>(s.processing)),
               integer(static_cast<std::int64_t>(s.dead)), integer(s.oldest_pending_age.count())}));
    check(back.pending == s.pending && back.processing == s.processing && back.dead == s.dead &&
          back.oldest_pending_age == s.oldest_pending_age);

    // read_current
    const larder::CurrentValue current{std::string(in.text(32)), in.flag()};
    const auto read =
        wb::read_current(array({integer(current.dirty ? 1 : 0), string(current.bytes)}));
    check(read && read->bytes == current.bytes && read->dirty == current.dirty);
    check(!wb::read_current(array()));

    // put outcomes: stored, conflict, full
    const auto status = static_cast<larder::PutStatus>(in.byte() % 3);
    const std::uint64_t version = in.integral<std::uint64_t>() >> 1;
    const bool coalesced = in.flag();
    const std::vector<RedisReply> put{integer(status == larder::PutStatus::stored     ? 1
                                              : status == larder::PutStatus::conflict ? 2
                                                                                      : 3),
                                      integer(static_cast<std::int64_t>(version)),
                                      integer(coalesced ? 1 : 0)};
    const auto outcome = wb::put_outcome(put, 1, 1, larder::Millis{100});
    check(outcome.status == status);
    if (status == larder::PutStatus::stored) {
        check(outcome.version == version && outcome.coalesced == coalesced);
        check(!larder::fuzz::returns_or_throws<larder::DurabilityError>(
            [&] { (void)wb::put_outcome(put, 0, 1, larder::Millis{100}); }));
    }

    // settle: one code per settlement, in order
    std::vector<RedisReply> codes(in.byte() % 8);
    for (auto& c : codes) c = integer(in.byte() % 6);
    std::vector<larder::SettleResult> settled;
    wb::settle(array(codes), codes.size(), settled);
    check(settled.size() == codes.size());
    for (std::size_t i = 0; i < codes.size(); ++i) {
        using R = larder::SettleResult;
        const auto want = std::array{R::done, R::superseded, R::gone, R::lost, R::held, R::gone}
            [static_cast<std::size_t>(codes[i].integer)];
        check(settled[i] == want);
    }

    // INFO fields
    const std::string value(in.text(16));
    if (value.find_first_of("\r\n") == std::string::npos) {
        const std::string info = "# Persistence\r\nloading:0\r\naof_enabled:" + value + "\r\n";
        check(wb::info_field(info, "aof_enabled") == value);
    }
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
    Input in(data, size);
    const RedisReply generic = any(in);
    parse_all(generic, in);
    RedisReply shaped;
    switch (in.byte() % 4) {
        case 0:
            shaped = shaped_claim(in);
            break;
        case 1:
            shaped = shaped_list_dead(in);
            break;
        case 2:
            shaped = shaped_integers(in, 4);
            break;
        default:
            shaped = shaped_integers(in, 3 * (in.byte() % 4));
            break;
    }
    parse_all(shaped, in);
    round_trips(in);
    return 0;
}
