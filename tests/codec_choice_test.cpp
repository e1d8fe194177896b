// A translation unit without <larder/codec/json.hpp>: naming a codec must not need the
// default one, and strings default to RawCodec whatever is included.
#include <larder/codec/msgpack.hpp>
#include <larder/larder.hpp>

#include "support/catch.hpp"

namespace {

struct Point {
    int x = 0;
    int y = 0;
    bool operator==(const Point&) const = default;
};
NLOHMANN_DEFINE_TYPE_NON_INTRUSIVE(Point, x, y)

}  // namespace

TEST_CASE("A named codec works without the default codec's header", "[core][codec]") {
    larder::MemoryBackend store;
    larder::CacheAside<Point, larder::MemoryBackend, larder::MsgPackCodec> points(store);
    STATIC_REQUIRE(std::is_same_v<decltype(points)::codec_type, larder::MsgPackCodec>);
    REQUIRE(points.get("p", [] { return std::optional<Point>(Point{1, 2}); }) == Point{1, 2});
    REQUIRE(points.get("p", [] { return std::optional<Point>(); }) == Point{1, 2});

    larder::CacheAside<std::string, larder::MemoryBackend, larder::Lock> strings(store);
    STATIC_REQUIRE(std::is_same_v<decltype(strings)::codec_type, larder::RawCodec>);
    STATIC_REQUIRE(std::is_same_v<decltype(strings)::guard_type, larder::Lock>);
}
