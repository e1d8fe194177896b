// The fixed inputs of the codec targets (json, msgpack, raw): well-formed values of both
// formats, and what broke, or could break, a decoder.
#include <nlohmann/json.hpp>

#include <cstddef>
#include <string>
#include <string_view>
#include <vector>

#include "fuzz_record.hpp"

namespace {

std::string msgpack_of(const nlohmann::json& j) {
    const auto v = nlohmann::json::to_msgpack(j);
    return std::string(v.begin(), v.end());
}

std::string repeat(std::string_view unit, std::size_t n) {
    std::string out;
    out.reserve(unit.size() * n);
    for (std::size_t i = 0; i < n; ++i) out += unit;
    return out;
}

// Well-formed values of each codec: seeds for truncation and mutation.
std::vector<std::string> valid_inputs() {
    const nlohmann::json record = larder::fuzz::sample_record();
    std::vector<std::string> out{
        record.dump(),
        msgpack_of(record),
        R"({"id":1,"count":2,"score":0.5,"active":false,"name":"","roles":[],"quotas":{},"extra":null})",
        "[1,-2,3.5e10,\"s\",true,null,{\"k\":[]}]",
        "42",
        "\"text\"",
    };
    out.push_back(msgpack_of(nlohmann::json::binary({1, 2, 3}, 7)));
    return out;
}

// Inputs that broke, or could break, a decoder: depth, claimed lengths, numbers.
std::vector<std::string> hostile_inputs() {
    std::vector<std::string> out;
    for (const std::size_t depth : {127, 128, 129, 100'000}) {
        out.push_back(std::string(depth, '['));
        out.push_back(std::string(depth, '[') + std::string(depth, ']'));
        out.push_back(repeat(R"({"a":)", depth) + "1" + std::string(depth, '}'));
        out.push_back(R"({"id":1,"extra":)" + std::string(depth, '[') + std::string(depth, ']') +
                      "}");
        out.push_back(std::string(depth, '\x91') + '\xc0');  // fixarray of 1
        out.push_back(repeat("\x81\xa1"
                             "a",
                             depth) +
                      '\xc0');  // fixmap {"a": ...}
        out.push_back(repeat(std::string_view("\xdd\x00\x00\x00\x01", 5), depth) +
                      '\xc0');  // array32 of 1
    }
    // Lengths that claim more than there is.
    for (const char* header :
         {"\xdd\xff\xff\xff\xff", "\xdf\xff\xff\xff\xff", "\xdb\xff\xff\xff\xff",
          "\xc6\xff\xff\xff\xff", "\xc9\xff\xff\xff\xff\x01", "\xdc\xff\xff", "\xde\xff\xff"}) {
        out.push_back(header);
        out.push_back(std::string(header) + "abc");
    }
    out.push_back(std::string("\xdd\xff\xff\xff\xff", 5) + std::string(1000, '\xc0'));
    // Numbers at and beyond every edge.
    for (const char* n : {"1e300", "-1e300", "1e400", "-0", "9223372036854775807",
                          "9223372036854775808", "18446744073709551615", "18446744073709551616",
                          "-9223372036854775809", "4294967296", "2147483648", "-2147483649",
                          "255.9", "256", "-1", "-1.5", "0.9999999999999999", "1e-400"}) {
        out.push_back(n);
        out.push_back(std::string(R"({"id":)") + n + R"(,"count":)" + n +
                      R"(,"score":1,"active":true,"name":"n","roles":[],"quotas":{"q":)" + n +
                      R"(},"extra":null,"parent":)" + n + "}");
    }
    for (const double d : {1e300, -1e300, 0x1p63, -0x1p63, 0x1p64, 5e9, -1.5}) {
        out.push_back(msgpack_of(d));
        out.push_back(msgpack_of(nlohmann::json{{"id", d}, {"count", d}, {"score", d}}));
    }
    out.push_back(std::string("\xcb\x7f\xf8\x00\x00\x00\x00\x00\x00", 9));  // float64 NaN
    out.push_back(std::string("\xcb\x7f\xf0\x00\x00\x00\x00\x00\x00", 9));  // float64 +inf
    out.push_back(std::string("\xca\xff\x80\x00\x00", 5));                  // float32 -inf
    // Strings: bad UTF-8, escapes, surrogates.
    for (const char* s :
         {"\"\xff\xfe\"", "\"\\ud800\"", "\"\\u0000\"", "\"\\", "\xa3\xff\xfe\xfd"}) {
        out.push_back(s);
    }
    out.push_back(std::string(20'000, '"'));
    out.emplace_back();
    return out;
}

}  // namespace

larder::fuzz::ReplayInputs larder::fuzz::replay_inputs() {
    return {valid_inputs(), hostile_inputs()};
}
