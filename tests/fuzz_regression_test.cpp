// Regressions found by the fuzz targets (tests/fuzz, docs/fuzzing.md): each input that
// broke a parser, as a test that fails without its fix. The inputs are also in the
// targets' corpora (tests/fuzz/corpus/<target>/regression-*), replayed by ctest.
#include <cstdint>
#include <string>
#include <vector>

#include "support/catch.hpp"

#if defined(LARDER_TEST_HAVE_REDIS)
#include <larder/backend/redis/write_behind_store.hpp>

namespace {

using larder::RedisReply;

RedisReply text(std::string s) {
    return RedisReply{.type = RedisReply::Type::string, .str = std::move(s)};
}

RedisReply number(std::int64_t n) {
    return RedisReply{.type = RedisReply::Type::integer, .integer = n};
}

// A claim reply with one entry whose "dirty since" score is `since`.
RedisReply claim_with_since(const std::string& since) {
    RedisReply r{.type = RedisReply::Type::array};
    r.elements = {number(0), RedisReply{.type = RedisReply::Type::array},
                  RedisReply{.type = RedisReply::Type::array}};
    for (auto& e :
         {text("key"), text("7"), text("value"), text("0"), text(since), number(5), text("")}) {
        r.elements.push_back(e);
    }
    return r;
}

}  // namespace

// write_behind_reply fuzz target: a score of 18446744073709551615 (any time beyond int64, or
// NaN, or infinity) was converted to int64 anyway, which is undefined behaviour (UBSan:
// "1.84467e+19 is outside the range of representable values of type 'long'"); on x86 it
// came out as INT64_MIN, a time long before the epoch.
TEST_CASE("Write-behind replies refuse a time beyond int64 instead of converting it",
          "[write_behind][fuzz]") {
    namespace wb = larder::redis_detail::write_behind_reply;
    for (const char* bad : {"18446744073709551615", "9223372036854775808", "-1e19", "1e300",
                            "-1e300", "inf", "-inf", "nan"}) {
        INFO(bad);
        CHECK_THROWS_AS(wb::to_ms(bad), larder::BackendError);
        CHECK_THROWS_AS(wb::claim(claim_with_since(bad)), larder::BackendError);
        RedisReply dead{.type = RedisReply::Type::array};
        dead.elements = {text("key"), text("value"), text(std::string("7 1 ") + bad + " 0 0"),
                         text("error")};
        CHECK_THROWS_AS(wb::list_dead(dead), larder::BackendError);
    }
    // The edges that are times still are (-2^63 - 1 rounds to -2^63, a double).
    CHECK(wb::to_ms("-9223372036854775808") == INT64_MIN);
    CHECK(wb::to_ms("-9223372036854775809") == INT64_MIN);
    CHECK(wb::to_ms("9223372036854774784") == 9223372036854774784);
    CHECK(wb::to_ms("1.7e+12") == 1'700'000'000'000);
    CHECK(wb::claim(claim_with_since("1700000000000")).entries.at(0).dirty_since ==
          larder::TimePoint{larder::Millis{1'700'000'000'000}});
}

#endif  // LARDER_TEST_HAVE_REDIS
