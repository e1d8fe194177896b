// WriteBehind::modify with a loader of the wrong value type.
// expect: larder: a loader returns std::optional<T> (std::nullopt: no such row)
#include <larder/backend/memory.hpp>
#include <larder/codec/json.hpp>
#include <larder/policy/write_behind.hpp>

#include <cstdint>
#include <optional>
#include <span>
#include <string>

int main() {
    larder::MemoryBackend backend;
    larder::WriteBehind<std::int64_t, larder::MemoryBackend> counters(
        backend, [](auto) { return larder::BatchResult{}; });
    (void)counters.modify(
        "k", [](std::int64_t& v) { ++v; }, [] { return std::optional<std::string>("7"); });
}
