// Core pieces: clock, envelope, codecs, jitter, stats, errors.
#include <larder/codec/json.hpp>
#include <larder/codec/msgpack.hpp>
#include <larder/larder.hpp>

#include <set>
#include <thread>
#include <vector>

#include "support/catch.hpp"

namespace {

struct Profile {
    int id = 0;
    std::string name;
    std::vector<int> scores;
    bool operator==(const Profile&) const = default;
};
NLOHMANN_DEFINE_TYPE_NON_INTRUSIVE(Profile, id, name, scores)

}  // namespace

TEST_CASE("ManualClock moves only when told to", "[core][clock]") {
    larder::ManualClock clock;
    const auto start = clock.now();
    REQUIRE(clock.now() == start);
    clock.advance(larder::Millis{1500});
    REQUIRE(clock.now() - start == larder::Millis{1500});
    clock.set(start);
    REQUIRE(clock.now() == start);
}

TEST_CASE("SystemClock follows the wall clock", "[core][clock]") {
    const auto a = larder::SystemClock::instance().now();
    const auto wall = std::chrono::system_clock::now();
    REQUIRE(std::chrono::abs(wall - a) < std::chrono::seconds(5));
}

TEST_CASE("An envelope round-trips its header, tags and payload", "[core][envelope]") {
    larder::EnvelopeHeader h{.kind = larder::EntryKind::value,
                             .codec = larder::codec_id::json,
                             .written_at = larder::TimePoint{larder::Millis{1'234'567'890'123}},
                             .fresh_until = larder::TimePoint{larder::Millis{1'234'567'950'123}},
                             .grace_until = larder::TimePoint{larder::Millis{1'234'568'010'123}},
                             .recompute_time = std::chrono::microseconds{42'000},
                             .version = 0xDEADBEEFCAFEull,
                             .nonce = 0x0123456789ABCDEFull};
    std::string bytes;
    larder::envelope::write_header(bytes, h, 2);
    larder::envelope::write_tag(bytes, "user:42", 7);
    larder::envelope::write_tag(bytes, std::string("a\0b", 3), 0xFFFFFFFFFFFFFFFFull);
    bytes += std::string("pay\0load", 8);

    const auto v = larder::envelope::parse(bytes);
    REQUIRE(v);
    REQUIRE(v->header.kind == larder::EntryKind::value);
    REQUIRE(v->header.codec == larder::codec_id::json);
    REQUIRE(v->header.written_at == h.written_at);
    REQUIRE(v->header.recompute_time == h.recompute_time);
    REQUIRE(v->header.fresh_until == h.fresh_until);
    REQUIRE(v->header.grace_until == h.grace_until);
    REQUIRE(v->header.version == h.version);
    REQUIRE(v->header.nonce == h.nonce);
    REQUIRE(v->payload == std::string_view("pay\0load", 8));
    std::vector<std::pair<std::string, std::uint64_t>> tags;
    larder::envelope::for_each_tag(
        *v, [&](std::string_view name, std::uint64_t ver) { tags.emplace_back(name, ver); });
    REQUIRE(tags.size() == 2);
    REQUIRE(tags[0] == std::pair<std::string, std::uint64_t>{"user:42", 7});
    REQUIRE(tags[1].first == std::string("a\0b", 3));
    REQUIRE(tags[1].second == 0xFFFFFFFFFFFFFFFFull);
}

TEST_CASE("Bytes that are not a valid envelope do not parse", "[core][envelope]") {
    std::string good;
    larder::envelope::write_header(good, larder::EnvelopeHeader{.codec = 1});
    good += "x";
    REQUIRE(larder::envelope::parse(good));

    SECTION("empty and short") {
        REQUIRE_FALSE(larder::envelope::parse(""));
        REQUIRE_FALSE(larder::envelope::parse(good.substr(0, larder::envelope::header_size - 1)));
    }
    SECTION("wrong magic") {
        auto b = good;
        b[0] = 'x';
        REQUIRE_FALSE(larder::envelope::parse(b));
    }
    SECTION("an older (1, 2) or unknown format version") {
        auto b = good;
        b[2] = 1;
        REQUIRE_FALSE(larder::envelope::parse(b));
        b[2] = 2;
        REQUIRE_FALSE(larder::envelope::parse(b));
        b[2] = 4;
        REQUIRE_FALSE(larder::envelope::parse(b));
    }
    SECTION("unknown kind") {
        auto b = good;
        b[3] = 9;
        REQUIRE_FALSE(larder::envelope::parse(b));
    }
    SECTION("tag count pointing past the end") {
        auto b = good;
        b[6] = 3;
        REQUIRE_FALSE(larder::envelope::parse(b));
    }
    SECTION("a lease whose token is not 16 bytes") {
        auto lease = larder::envelope::make_lease(larder::random_token(), larder::TimePoint{});
        REQUIRE(larder::envelope::parse(lease));
        lease.pop_back();
        REQUIRE_FALSE(larder::envelope::parse(lease));
    }
    SECTION("random bytes") {
        for (int i = 0; i < 1000; ++i) {
            std::string b(static_cast<std::size_t>(larder::random_between(0, 80)), '\0');
            for (auto& c : b) c = static_cast<char>(larder::random_between(0, 255));
            if (b.size() >= 2) b[0] = 'R';  // not the magic
            REQUIRE_FALSE(larder::envelope::parse(b));
        }
    }
}

TEST_CASE("Lease bytes are unique per holder", "[core][envelope]") {
    const larder::TimePoint now{larder::Millis{5}};
    std::set<std::string> seen;
    for (int i = 0; i < 1000; ++i)
        seen.insert(larder::envelope::make_lease(larder::random_token(), now));
    REQUIRE(seen.size() == 1000);
    const auto v = larder::envelope::parse(*seen.begin());
    REQUIRE(v->header.kind == larder::EntryKind::lease);
}

TEST_CASE("Codecs round-trip and reject foreign bytes", "[core][codec]") {
    const Profile p{7, std::string("n\0me\r\n%s", 9), {1, 2, 3}};

    SECTION("raw") {
        larder::RawCodec codec;
        std::string out = "prefix";
        const std::string value("bin\0ary\xff", 8);
        codec.encode(value, out);
        REQUIRE(out == "prefix" + value);
        REQUIRE(codec.decode<std::string>(std::string_view(out).substr(6)) == value);
        const std::vector<std::byte> bytes{std::byte{0}, std::byte{255}};
        std::string out2;
        codec.encode(bytes, out2);
        REQUIRE(codec.decode<std::vector<std::byte>>(out2) == bytes);
    }
    SECTION("json") {
        larder::JsonCodec codec;
        std::string out;
        codec.encode(p, out);
        REQUIRE(codec.decode<Profile>(out) == p);
        REQUIRE_THROWS_AS(codec.decode<Profile>("{\"other\":1}"), larder::CodecError);
        REQUIRE_THROWS_AS(codec.decode<Profile>("not json"), larder::CodecError);
        REQUIRE_THROWS_AS(codec.decode<Profile>("{\"id\":\"seven\",\"name\":\"x\",\"scores\":[]}"),
                          larder::CodecError);
    }
    SECTION("msgpack") {
        larder::MsgPackCodec codec;
        std::string out;
        codec.encode(p, out);
        REQUIRE(codec.decode<Profile>(out) == p);
        REQUIRE_THROWS_AS(codec.decode<Profile>("\xc1"), larder::CodecError);
    }
    SECTION("the default codec follows the type") {
        STATIC_REQUIRE(std::is_same_v<larder::default_codec_t<std::string>, larder::RawCodec>);
        STATIC_REQUIRE(std::is_same_v<larder::default_codec_t<Profile>, larder::JsonCodec>);
        STATIC_REQUIRE(larder::Codec<larder::MsgPackCodec, Profile>);
        STATIC_REQUIRE(larder::Codec<larder::RawCodec, std::vector<std::uint8_t>>);
    }
}

TEST_CASE("TTL jitter stays within its bounds", "[core][jitter]") {
    const larder::Millis ttl{300'000};
    SECTION("uniform extra, as the seed's ttl + random(0, 60)") {
        const larder::TtlJitter j{.max_extra = larder::Millis{60'000}};
        larder::Millis lo = larder::Millis::max(), hi = larder::Millis::min();
        for (int i = 0; i < 20'000; ++i) {
            const auto t = j.apply(ttl);
            lo = std::min(lo, t);
            hi = std::max(hi, t);
        }
        REQUIRE(lo >= ttl);
        REQUIRE(hi <= ttl + larder::Millis{60'000});
        // Spread over the range, not stuck at one end.
        REQUIRE(lo < ttl + larder::Millis{3'000});
        REQUIRE(hi > ttl + larder::Millis{57'000});
    }
    SECTION("ratio around the TTL") {
        const larder::TtlJitter j{.ratio = 0.1};
        for (int i = 0; i < 20'000; ++i) {
            const auto t = j.apply(ttl);
            REQUIRE(t >= larder::Millis{270'000});
            REQUIRE(t <= larder::Millis{330'000});
        }
    }
    SECTION("never below the floor, nor below 1 ms") {
        const larder::TtlJitter j{.ratio = 0.9, .floor = larder::Millis{250'000}};
        for (int i = 0; i < 5'000; ++i) REQUIRE(j.apply(ttl) >= larder::Millis{250'000});
        const larder::TtlJitter tiny{.ratio = 0.99};
        for (int i = 0; i < 5'000; ++i) REQUIRE(tiny.apply(larder::Millis{1}) >= larder::Millis{1});
    }
    SECTION("deterministic with an injected random source") {
        const larder::TtlJitter j{.max_extra = larder::Millis{1000}, .ratio = 0.5};
        REQUIRE(j.apply(larder::Millis{1000}, [] { return 1.0; }) == larder::Millis{2500});
    }
    SECTION("bad settings are a ConfigError") {
        REQUIRE_THROWS_AS((larder::TtlJitter{.ratio = 1.0}.validate()), larder::ConfigError);
        REQUIRE_THROWS_AS((larder::TtlJitter{.ratio = -0.1}.validate()), larder::ConfigError);
        REQUIRE_THROWS_AS((larder::TtlJitter{.max_extra = larder::Millis{-1}}.validate()),
                          larder::ConfigError);
    }
}

TEST_CASE("random_unit_open_closed never returns 0", "[core][random]") {
    double lo = 1.0;
    for (int i = 0; i < 100'000; ++i) {
        const double u = larder::random_unit_open_closed();
        REQUIRE(u > 0.0);
        REQUIRE(u <= 1.0);
        lo = std::min(lo, u);
    }
    REQUIRE(lo < 0.001);
}

TEST_CASE("SingleFlight shares one execution and forgets on request", "[core][single_flight]") {
    larder::SingleFlight<int> flight;
    SECTION("a lone caller runs and is not shared") {
        auto r = flight.run("k", [] { return 5; });
        REQUIRE(r.value == 5);
        REQUIRE_FALSE(r.shared);
        REQUIRE(flight.in_flight() == 0);
    }
    SECTION("an exception reaches the caller and clears the key") {
        REQUIRE_THROWS_AS(flight.run("k", []() -> int { throw std::logic_error("x"); }),
                          std::logic_error);
        REQUIRE(flight.run("k", [] { return 1; }).value == 1);
    }
}

TEST_CASE("The envelope bytes are those of docs/FORMAT.md's example", "[core][envelope]") {
    const larder::TimePoint written{larder::Millis{1'700'000'000'000}};
    std::string bytes;
    larder::envelope::write_header(bytes, larder::EnvelopeHeader{
                                              .kind = larder::EntryKind::value,
                                              .codec = larder::codec_id::raw,
                                              .written_at = written,
                                              .fresh_until = written + std::chrono::seconds(60),
                                              .grace_until = written + std::chrono::seconds(60),
                                              .recompute_time = std::chrono::microseconds{1500},
                                              .nonce = 0x0102030405060708ull,
                                          });
    bytes += "hi";
    const unsigned char expected[] = {
        0xca, 0xce, 0x03, 0x01, 0x01, 0x00, 0x00, 0x00, 0x00, 0x68, 0xe5, 0xcf, 0x8b, 0x01, 0x00,
        0x00, 0x60, 0x52, 0xe6, 0xcf, 0x8b, 0x01, 0x00, 0x00, 0x60, 0x52, 0xe6, 0xcf, 0x8b, 0x01,
        0x00, 0x00, 0xdc, 0x05, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00,
        0x00, 0x00, 0x00, 0x08, 0x07, 0x06, 0x05, 0x04, 0x03, 0x02, 0x01, 0x68, 0x69};
    REQUIRE(bytes == std::string(reinterpret_cast<const char*>(expected), sizeof expected));
}

TEST_CASE("larder/version.hpp matches the CMake project's version", "[core]") {
    const std::string expected = LARDER_TEST_PROJECT_VERSION;
    CHECK(std::string(LARDER_VERSION_STRING) == expected);
    CHECK(std::string(larder::version) == expected);
    CHECK(std::to_string(LARDER_VERSION_MAJOR) + "." + std::to_string(LARDER_VERSION_MINOR) + "." +
              std::to_string(LARDER_VERSION_PATCH) ==
          expected);
}
