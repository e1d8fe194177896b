// A codec whose decode is not a template over the value type.
// expect: larder: a Codec for the cache's value type T needs template <class U> U
// decode(std::string_view) const
#include <larder/backend/memory.hpp>
#include <larder/policy/cache_aside.hpp>

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>

struct Point {
    int x = 0;
    int y = 0;
};

struct PointCodec {
    static constexpr std::uint8_t id = 200;
    void encode(const Point& p, std::string& out) const {
        out += std::to_string(p.x) + "," + std::to_string(p.y);
    }
    Point decode(std::string_view) const { return {}; }
};

int main() {
    larder::MemoryBackend backend;
    larder::CacheAside<Point, larder::MemoryBackend, PointCodec> points(backend);
    (void)points.get("1", [] { return std::optional<Point>(Point{1, 2}); });
}
