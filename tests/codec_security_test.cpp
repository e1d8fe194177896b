// Decoders that cannot be crashed: bytes planted in the store (a valid envelope around a
// hostile payload) are a counted miss that the loader replaces, never a crash, undefined
// behaviour or a wrong value. Before DecodeLimits, 100,000 nested MessagePack arrays
// overflowed the reader's stack, deep JSON overflowed the copy into a json field, and
// 1e300 in an int field became whatever the float-to-int conversion produced.
#include <larder/backend/memory.hpp>
#include <larder/codec/json.hpp>
#include <larder/codec/msgpack.hpp>
#include <larder/codec/raw.hpp>
#include <larder/core/envelope.hpp>
#include <larder/policy/cache_aside.hpp>

#include <cstdint>
#include <cstring>
#include <limits>
#include <optional>
#include <string>
#include <string_view>

#include "support/backends.hpp"

using larder::test::options_for;

namespace {

// A record with a schemaless part, as documents often have: its from_json copies the
// nested json, which recurses once per level.
struct Doc {
    std::string title;
    nlohmann::json body;
    bool operator==(const Doc&) const = default;
};
NLOHMANN_DEFINE_TYPE_NON_INTRUSIVE(Doc, title, body)

struct Counter {
    int id = 0;
    std::string name;
    bool operator==(const Counter&) const = default;
};
NLOHMANN_DEFINE_TYPE_NON_INTRUSIVE(Counter, id, name)

std::string envelope_with(std::uint8_t codec, std::string_view payload) {
    std::string b;
    larder::envelope::write_header(b, larder::EnvelopeHeader{.codec = codec});
    b += payload;
    return b;
}

// {"title":"deep","body":[[...[null]...]]} with `levels` arrays in body: the document's
// depth is levels + 1. Built by hand: nlohmann cannot build 100,000 levels without
// recursing itself.
std::string deep_json_doc(std::size_t levels) {
    return R"({"title":"deep","body":)" + std::string(levels, '[') + "null" +
           std::string(levels, ']') + "}";
}

std::string deep_msgpack_doc(std::size_t levels) {
    std::string out;
    out += '\x82';  // fixmap of 2
    out +=
        "\xa5title\xa4"
        "deep";
    out +=
        "\xa4"
        "body";
    out.append(levels, '\x91');  // fixarray of 1, nested
    out += '\xc0';               // nil
    return out;
}

// A JSON body nested so that the whole Doc is exactly `depth` levels deep.
nlohmann::json nested_body(std::size_t depth) {
    nlohmann::json body = nullptr;
    for (std::size_t i = 1; i < depth; ++i) body = nlohmann::json::array({std::move(body)});
    return body;
}

// A json value as the codec's bytes, bypassing any type: how a foreign writer plants it.
template <class Codec>
std::string payload_of(const nlohmann::json& j) {
    if constexpr (std::same_as<Codec, larder::JsonCodec>) {
        return j.dump();
    } else {
        const auto v = nlohmann::json::to_msgpack(j);
        return std::string(v.begin(), v.end());
    }
}

template <class Codec>
std::string encoded(const Codec& codec, const Doc& doc) {
    std::string out;
    codec.encode(doc, out);
    return out;
}

// Plants `payload` under key "k" in a valid envelope, reads it through `cache`, and checks
// the read was a counted corrupt miss that the loader filled, after which reads hit.
template <class Cache, class T>
void require_corrupt_miss(larder::test::MemoryFixture& fx, Cache& cache, std::uint8_t codec,
                          std::string_view payload, const T& fresh) {
    fx.raw_set(cache.full_key("k"), envelope_with(codec, payload));
    const auto corrupt_before = cache.stats().corrupt_values;
    int loads = 0;
    auto loader = [&] {
        ++loads;
        return std::optional<T>(fresh);
    };
    REQUIRE(cache.get("k", loader) == fresh);
    REQUIRE(loads == 1);
    REQUIRE(cache.stats().corrupt_values == corrupt_before + 1);
    REQUIRE(cache.get("k", loader) == fresh);
    REQUIRE(loads == 1);
}

const Doc fresh_doc{"fresh", nlohmann::json{{"ok", true}}};

}  // namespace

TEST_CASE("MessagePack nested 100000 levels deep is a corrupt miss through CacheAside",
          "[security][codec]") {
    larder::test::MemoryFixture fx;
    larder::CacheAside<Doc, larder::MemoryBackend, larder::MsgPackCodec> cache(fx.backend,
                                                                               options_for(fx));
    require_corrupt_miss(fx, cache, larder::codec_id::msgpack, deep_msgpack_doc(100'000),
                         fresh_doc);
    // The bare form of the report: 100 KB of 0x91 and nothing else.
    require_corrupt_miss(fx, cache, larder::codec_id::msgpack, std::string(100'000, '\x91'),
                         fresh_doc);
}

TEST_CASE("JSON nested 100000 levels deep is a corrupt miss through CacheAside",
          "[security][codec]") {
    larder::test::MemoryFixture fx;
    larder::CacheAside<Doc, larder::MemoryBackend, larder::JsonCodec> cache(fx.backend,
                                                                            options_for(fx));
    require_corrupt_miss(fx, cache, larder::codec_id::json, deep_json_doc(100'000), fresh_doc);
}

TEMPLATE_TEST_CASE(
    "A document exactly max_depth deep decodes and one level deeper is a corrupt miss",
    "[security][codec]", larder::JsonCodec, larder::MsgPackCodec) {
    larder::test::MemoryFixture fx;
    larder::CacheAside<Doc, larder::MemoryBackend, TestType> cache(fx.backend, options_for(fx));
    const std::size_t limit = TestType{}.limits.max_depth;
    REQUIRE(limit == 128);  // the documented default

    const Doc at_limit{"at", nested_body(limit)};
    fx.raw_set(cache.full_key("k"), envelope_with(TestType::id, encoded(TestType{}, at_limit)));
    REQUIRE(cache.get("k", [] { return std::optional<Doc>(); }) == at_limit);
    REQUIRE(cache.stats().corrupt_values == 0);

    const Doc beyond{"beyond", nested_body(limit + 1)};
    require_corrupt_miss(fx, cache, TestType::id, encoded(TestType{}, beyond), fresh_doc);
}

TEST_CASE("A codec instance's own depth limit is the one its cache applies", "[security][codec]") {
    larder::test::MemoryFixture fx;
    const larder::MsgPackCodec shallow{.limits = {.max_depth = 4}};
    larder::CacheAside<Doc, larder::MemoryBackend, larder::MsgPackCodec> cache(
        fx.backend, options_for(fx), {}, shallow);

    const Doc four{"four", nested_body(4)};
    fx.raw_set(cache.full_key("k"),
               envelope_with(larder::codec_id::msgpack, encoded(shallow, four)));
    REQUIRE(cache.get("k", [] { return std::optional<Doc>(); }) == four);
    require_corrupt_miss(fx, cache, larder::codec_id::msgpack,
                         encoded(shallow, Doc{"five", nested_body(5)}), fresh_doc);
}

TEMPLATE_TEST_CASE("A value over the codec's size limit is a corrupt miss", "[security][codec]",
                   larder::JsonCodec, larder::MsgPackCodec) {
    larder::test::MemoryFixture fx;
    larder::CacheAside<Doc, larder::MemoryBackend, TestType> cache(fx.backend, options_for(fx));
    const std::size_t limit = TestType{}.limits.max_bytes;
    REQUIRE(limit == std::size_t{16} << 20);  // the documented default

    // Well-formed and shallow: only its size is wrong.
    const Doc huge{std::string(limit, 'x'), nullptr};
    const std::string payload = encoded(TestType{}, huge);
    REQUIRE(payload.size() > limit);
    require_corrupt_miss(fx, cache, TestType::id, payload, fresh_doc);

    // A value just under the limit still decodes.
    const Doc big{std::string(limit - 64, 'y'), nullptr};
    const std::string fits = encoded(TestType{}, big);
    REQUIRE(fits.size() <= limit);
    fx.raw_set(cache.full_key("big"), envelope_with(TestType::id, fits));
    REQUIRE(cache.get("big", [] { return std::optional<Doc>(); }) == big);
}

TEST_CASE("RawCodec applies the size limit it is given", "[security][codec]") {
    larder::test::MemoryFixture fx;
    larder::CacheAside<std::string, larder::MemoryBackend, larder::RawCodec> cache(
        fx.backend, options_for(fx), {}, larder::RawCodec{.max_bytes = 1024});
    require_corrupt_miss(fx, cache, larder::codec_id::raw, std::string(1025, 'r'),
                         std::string("fresh"));
    fx.raw_set(cache.full_key("ok"), envelope_with(larder::codec_id::raw, std::string(1024, 'r')));
    REQUIRE(cache.get("ok", [] { return std::optional<std::string>(); }) == std::string(1024, 'r'));
}

TEST_CASE("1e300 read into an int field is a corrupt miss and not a converted value",
          "[security][codec]") {
    larder::test::MemoryFixture fx;
    const Counter fresh{7, "fresh"};
    SECTION("JSON") {
        larder::CacheAside<Counter, larder::MemoryBackend, larder::JsonCodec> cache(
            fx.backend, options_for(fx));
        require_corrupt_miss(fx, cache, larder::codec_id::json, R"({"id":1e300,"name":"x"})",
                             fresh);
        require_corrupt_miss(fx, cache, larder::codec_id::json, R"({"id":-1e19,"name":"x"})",
                             fresh);
    }
    SECTION("MessagePack") {
        larder::CacheAside<Counter, larder::MemoryBackend, larder::MsgPackCodec> cache(
            fx.backend, options_for(fx));
        for (const double bad : {1e300, std::numeric_limits<double>::quiet_NaN(),
                                 std::numeric_limits<double>::infinity()}) {
            INFO(bad);
            const std::string payload =
                payload_of<larder::MsgPackCodec>(nlohmann::json{{"id", bad}, {"name", "x"}});
            require_corrupt_miss(fx, cache, larder::codec_id::msgpack, payload, fresh);
        }
    }
}

TEMPLATE_TEST_CASE("A number that does not fit an arithmetic value type is a corrupt miss",
                   "[security][codec]", larder::JsonCodec, larder::MsgPackCodec) {
    larder::test::MemoryFixture fx;
    larder::CacheAside<int, larder::MemoryBackend, TestType> cache(fx.backend, options_for(fx));
    for (const nlohmann::json& bad :
         {nlohmann::json(1e10), nlohmann::json(-2147483649.0), nlohmann::json(4294967296LL),
          nlohmann::json(std::uint64_t{1} << 63)}) {
        INFO(bad.dump());
        const std::string payload = payload_of<TestType>(bad);
        require_corrupt_miss(fx, cache, TestType::id, payload, 7);
        cache.invalidate("k");
    }
    // Values that fit still decode, a float truncated as nlohmann truncates it.
    for (const auto& [value, want] :
         {std::pair{nlohmann::json(2147483647), 2147483647}, std::pair{nlohmann::json(-3.9), -3},
          std::pair{nlohmann::json(-2147483648.5), -2147483647 - 1}}) {
        INFO(value.dump());
        fx.raw_set(cache.full_key("ok"), envelope_with(TestType::id, payload_of<TestType>(value)));
        REQUIRE(cache.get("ok", [] { return std::optional<int>(); }) == want);
        cache.invalidate("ok");
    }
}
