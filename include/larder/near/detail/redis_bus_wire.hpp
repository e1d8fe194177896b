// RedisBus's messages on the wire, apart from the bus so that they can be tested (and
// fuzzed) alone. A message goes out as "<kind><prefix><key>" (the tenant's key prefix after
// the kind, bus.hpp lists the kinds), numbered by the publishing script:
//
//   #<epoch>.<seq>.<id>:<kind><prefix><key>
//
// <epoch> names the counter's lifetime, <seq> is the message's number in it and <id> its
// own random id (redis_bus.hpp says why each is needed). Subscribers hear "<kind><key>".
#pragma once

#include <cstdint>
#include <cstdlib>
#include <optional>
#include <string>
#include <string_view>

namespace larder::redis_detail {

/// Where a numbered message stands.
struct BusPosition {
    std::string epoch;
    std::uint64_t seq = 0;
    std::string id;  // "" when not known
};

/// What publish() sends for `message` ("<kind><key>", not empty): "<kind><prefix><key>".
[[nodiscard]] inline std::string bus_wire(std::string_view message, std::string_view prefix) {
    std::string wire;
    wire.reserve(message.size() + prefix.size());
    wire.append(message.substr(0, 1)).append(prefix).append(message.substr(1));
    return wire;
}

/// The position of a numbered message ("#<epoch>.<seq>.<id>:" in front); nullopt for one
/// that is not numbered.
[[nodiscard]] inline std::optional<BusPosition> bus_position_of(std::string_view wire) {
    if (!wire.starts_with('#')) return std::nullopt;
    const auto colon = wire.find(':');
    if (colon == std::string_view::npos) return std::nullopt;
    const std::string_view head = wire.substr(1, colon - 1);
    const auto dot = head.find('.');
    const auto id_dot = dot == std::string_view::npos ? dot : head.find('.', dot + 1);
    if (id_dot == std::string_view::npos) return std::nullopt;
    return BusPosition{
        std::string(head.substr(0, dot)),
        std::strtoull(std::string(head.substr(dot + 1, id_dot - dot - 1)).c_str(), nullptr, 10),
        std::string(head.substr(id_dot + 1))};
}

/// Takes the position off the front of a numbered message, and returns it; leaves a
/// message that is not numbered as it is.
[[nodiscard]] inline std::optional<BusPosition> take_bus_position(std::string_view& wire) {
    auto at = bus_position_of(wire);
    if (at) wire.remove_prefix(wire.find(':') + 1);
    return at;
}

/// What subscribers hear of `wire` (without its position), "<kind><key>"; nullopt for an
/// empty message, or another tenant's (one without `prefix` after its kind). A view of
/// `wire` when there is no prefix to remove, else of `scratch`.
[[nodiscard]] inline std::optional<std::string_view> bus_message(std::string_view wire,
                                                                 std::string_view prefix,
                                                                 std::string& scratch) {
    if (wire.empty() || !wire.substr(1).starts_with(prefix)) return std::nullopt;
    if (prefix.empty()) return wire;
    scratch.clear();
    scratch.reserve(wire.size() - prefix.size());
    scratch.append(wire.substr(0, 1)).append(wire.substr(1 + prefix.size()));
    return std::string_view(scratch);
}

}  // namespace larder::redis_detail
