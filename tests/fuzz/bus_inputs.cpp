// The fixed inputs of the bus target: wire messages as RedisBus receives them (mode byte
// 0: hostile wire, then the prefix's length and bytes, then the message), and positions
// that are cut short or hold what no script writes.
#include <string>

#include "fuzz_support.hpp"

namespace {

// Mode 0 (a wire message), the prefix "t:" and `wire`.
std::string wire(const std::string& wire) {
    return std::string("\0\2t:", 4) + wire;
}

}  // namespace

larder::fuzz::ReplayInputs larder::fuzz::replay_inputs() {
    ReplayInputs in;
    in.valid = {
        wire("#17.1.99:kt:app:k:a"),
        wire("#17.2.98:vt:app:m:v\x1ftag\x1ft1"),
        wire("#17.3.97:*t:"),
        wire("kt:app:k:b"),
        std::string("\1\0", 2) + std::string(40, '\0'),  // a message built from parts
        std::string("\3\2t:", 4) + std::string(40, '\1'),
    };
    in.hostile = {
        wire(""),
        wire("#"),
        wire("#:"),
        wire("#.:"),
        wire("#..:"),
        wire("#..:k"),
        wire("#1.2:kt:app:k:a"),
        wire("#1.-1.x:kt:app:k:a"),
        wire("#1.99999999999999999999999.x:*t:"),
        wire("#1.0x10.x:k"),
        wire("#1.2.3"),
        wire("#1.2.3:"),
        wire("#1.2.3:#4.5.6:kt:app:k:a"),
        wire("k"),
        wire("kt"),
        wire("kt:"),
        wire("*"),
        wire("*t:extra"),
        wire("vt:"),
        wire("xt:app:k:a"),
        wire(std::string("kt:app:k:\0", 10)),
        std::string(1, '\0'),
        std::string(),
    };
    return in;
}
