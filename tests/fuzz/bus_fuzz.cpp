// Fuzz target: the invalidation bus's messages, from the wire to L1. RedisBus numbers and
// prefixes each message ("#<epoch>.<seq>.<id>:<kind><prefix><key>",
// include/larder/near/detail/redis_bus_wire.hpp); a subscriber takes the position off,
// drops other tenants' messages and hands "<kind><key>" to Near, whose on_message reads it
// (bus.hpp lists the kinds). The input is either a hostile wire message or a message built
// from parts. Checked, besides "no crash":
//  - take_bus_position and bus_message take the message apart as it was put together:
//    a message Near publishes, prefixed and numbered as the script does, comes back with
//    its position and as it was sent (decode(encode(x)) == x);
//  - whatever arrives, Near's on_message throws nothing; a "k" message for a key drops
//    that key from L1 and no other, a "v" (or "k") message for a tag's version key drops
//    the keys read with that tag, "*" drops everything, and a message of no known kind
//    drops nothing.
#include <larder/backend/memory.hpp>
#include <larder/near/bus.hpp>
#include <larder/near/detail/redis_bus_wire.hpp>
#include <larder/near/near.hpp>
#include <larder/policy/cache_aside.hpp>

#include <array>
#include <cstddef>
#include <cstdint>
#include <optional>
#include <string>
#include <string_view>

#include "fuzz_support.hpp"

namespace {

using larder::fuzz::check;
using larder::fuzz::Input;
namespace rd = larder::redis_detail;

using Cache = larder::CacheAside<std::string, larder::MemoryBackend>;

// The script's numbering: '#' .. epoch .. '.' .. seq .. '.' .. id .. ':' .. message.
std::string numbered(const rd::BusPosition& at, std::string_view wire) {
    return "#" + at.epoch + "." + std::to_string(at.seq) + "." + at.id + ":" + std::string(wire);
}

// A subscriber's side: what Near hears of `wire`, and where it stands.
std::optional<std::string> receive(std::string_view wire, std::string_view prefix,
                                   std::optional<rd::BusPosition>& at) {
    const std::string_view whole = wire;
    at = rd::take_bus_position(wire);
    if (at) {
        check(whole.starts_with('#') && wire.data() == whole.data() + whole.find(':') + 1);
    } else {
        check(wire.data() == whole.data());
    }
    std::string scratch;
    const auto message = rd::bus_message(wire, prefix, scratch);
    if (!message) {
        check(wire.empty() || !wire.substr(1).starts_with(prefix));
        return std::nullopt;
    }
    check(!message->empty() && message->front() == wire.front() &&
          message->substr(1) == wire.substr(1 + prefix.size()));
    return std::string(*message);
}

// Near over a cache and a MemoryBus, with three keys in L1: two plain, one read with a tag.
// One for the whole run (building it for each input would take most of the time); each
// input starts with the three keys back in L1.
struct Subscriber {
    larder::MemoryBackend store;
    Cache cache{store, larder::CacheAsideOptions{.key_prefix = "app:"}};
    larder::MemoryBus bus;
    larder::Near<Cache, larder::MemoryBus> near{cache, bus};
    const std::array<std::string, 3> keys{"a", "b", "tagged"};

    void reload() {
        auto load = [] { return std::optional<std::string>("v"); };
        if (!held("a")) (void)near.get("a", load);
        if (!held("b")) (void)near.get("b", load);
        if (!held("tagged")) (void)near.get("tagged", {std::string("t1")}, load);
        for (const auto& k : keys) check(held(k));
    }

    bool held(const std::string& key) { return near.l1().contains(cache.full_key(key)); }
};

// What a message built from parts says, as Near would publish it.
std::string message_from(Input& in, const Subscriber& s) {
    static constexpr std::array<char, 5> kinds{'k', 'v', '*', 'x', '#'};
    std::string m(1, kinds[in.byte() % kinds.size()]);
    switch (in.byte() % 5) {
        case 0:
            m += s.cache.full_key(s.keys[in.byte() % s.keys.size()]);
            break;
        case 1:
            m += s.cache.tag_key("t1");
            break;
        case 2:
            m += s.cache.full_key(in.text(8));
            break;
        case 3:
            break;
        default:
            m += in.text(24);
            break;
    }
    if (in.byte() % 8 == 0) m += in.text(4);  // a key with more after it
    return m;
}

void deliver(Subscriber& s, const std::string& m) {
    s.bus.publish(m);  // Near::on_message, synchronously; nothing may escape it
    const std::string_view body = std::string_view(m).substr(1);
    if (m == "*") {
        for (const auto& k : s.keys) check(!s.held(k));
        return;
    }
    if (m.empty() || (m[0] != 'k' && m[0] != 'v')) {
        for (const auto& k : s.keys) check(s.held(k));
        return;
    }
    if (m[0] == 'k') {
        for (const auto& k : s.keys) {
            const std::string full = s.cache.full_key(k);
            if (body == full) check(!s.held(k));
        }
        // An entry's key drops that entry only.
        if (s.cache.keys().key_of(body)) {
            for (const auto& k : s.keys) check(s.held(k) == (body != s.cache.full_key(k)));
        }
    }
    if (body == s.cache.tag_key("t1")) check(!s.held("tagged"));
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
    Input in(data, size);
    const std::uint8_t mode = in.byte();
    const std::string prefix(in.text(12));
    static Subscriber s;
    s.reload();
    std::optional<rd::BusPosition> at;

    if (mode % 2 == 0) {
        // A hostile wire message.
        if (const auto m = receive(in.rest(), prefix, at)) deliver(s, *m);
        return 0;
    }

    // A message Near publishes, prefixed and numbered as the bus's script does.
    const std::string m = message_from(in, s);
    const rd::BusPosition sent{std::to_string(in.integral<std::uint64_t>()),
                               in.integral<std::uint64_t>(),
                               std::to_string(in.integral<std::uint64_t>())};
    const bool number = mode % 4 == 1;
    const std::string wire = rd::bus_wire(m, prefix);
    const auto heard = receive(number ? numbered(sent, wire) : wire, prefix, at);
    if (number) {
        check(heard && *heard == m);
        check(at && at->epoch == sent.epoch && at->seq == sent.seq && at->id == sent.id);
    } else if (m[0] != '#') {
        // Unnumbered (a bus without the script): as sent, unless it looks numbered itself.
        check(heard && *heard == m && !at);
    }
    deliver(s, m);
    return 0;
}
