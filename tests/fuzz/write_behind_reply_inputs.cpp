// The fixed inputs of the write_behind_reply target. Its input is read as choices (see
// write_behind_reply_fuzz.cpp), so these are byte patterns that steer it: every reply kind
// and shaped reply, each field of the wrong type, runs of large counts and numbers.
#include <string>

#include "fuzz_support.hpp"

larder::fuzz::ReplayInputs larder::fuzz::replay_inputs() {
    ReplayInputs in;
    for (char shape = 0; shape < 4; ++shape) {
        // A nil generic reply, then the shaped reply `shape` with small counts and fields.
        std::string s(1, '\0');
        s += std::string(2, '\0') + shape + std::string(40, '\x02') + std::string(60, '7');
        in.valid.push_back(s);
        in.valid.push_back(std::string(1, '\x05') + std::string(1, '\x03') + s);
    }
    for (const char fill : {'\0', '\x01', '\x05', '\x0f', '\x10', '\x7f', '\x80', '\xff'}) {
        in.hostile.push_back(std::string(512, fill));
    }
    in.hostile.emplace_back();
    return in;
}
