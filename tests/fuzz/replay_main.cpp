// Replays a fuzz target without libFuzzer, so that every build (and CI, under ASan and
// UBSan) runs the targets: a fixed set of hostile inputs, the files or directories named
// on the command line (a corpus), then random inputs from a fixed seed. Bounded in count
// and size so that a run takes well under a second per target.
//
//   <replay> [corpus file or directory]... [--random N]
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <random>
#include <string>
#include <vector>

#include "fuzz_record.hpp"

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size);

namespace {

std::size_t runs = 0;

void run(const std::string& input) {
    // A copy in its own allocation: ASan then catches a read one byte past the input.
    std::vector<std::uint8_t> copy(input.begin(), input.end());
    LLVMFuzzerTestOneInput(copy.data(), copy.size());
    ++runs;
}

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

void run_corpus(const std::filesystem::path& path) {
    auto run_file = [](const std::filesystem::path& file) {
        std::ifstream in(file, std::ios::binary);
        run(std::string(std::istreambuf_iterator<char>(in), {}));
    };
    if (!std::filesystem::exists(path)) {
        std::fprintf(stderr, "no such corpus file or directory: %s\n", path.c_str());
        std::exit(2);
    }
    if (std::filesystem::is_directory(path)) {
        for (const auto& entry : std::filesystem::directory_iterator(path)) {
            if (entry.is_regular_file()) run_file(entry.path());
        }
    } else {
        run_file(path);
    }
}

}  // namespace

int main(int argc, char** argv) {
    std::size_t random_count = 2000;
    for (int i = 1; i < argc; ++i) {
        if (std::strcmp(argv[i], "--random") == 0 && i + 1 < argc) {
            random_count = std::strtoull(argv[++i], nullptr, 10);
        } else {
            run_corpus(argv[i]);
        }
    }

    const auto valid = valid_inputs();
    for (const auto& v : valid) {
        run(v);
        for (std::size_t n = 0; n < v.size(); ++n) run(v.substr(0, n));  // every truncation
    }
    for (const auto& h : hostile_inputs()) run(h);

    // Fixed seed: a failure reproduces on every run and every machine.
    std::mt19937_64 rng(0x1a2de5);
    for (std::size_t i = 0; i < random_count; ++i) {
        std::string input;
        if (i % 2 == 0) {
            // A valid value with a few bytes changed, inserted or removed.
            input = valid[rng() % valid.size()];
            const std::size_t edits = 1 + rng() % 4;
            for (std::size_t e = 0; e < edits && !input.empty(); ++e) {
                const std::size_t at = rng() % input.size();
                switch (rng() % 3) {
                    case 0:
                        input[at] = static_cast<char>(rng());
                        break;
                    case 1:
                        input.insert(at, 1, static_cast<char>(rng()));
                        break;
                    default:
                        input.erase(at, 1);
                        break;
                }
            }
        } else {
            input.resize(rng() % 256);
            for (auto& c : input) c = static_cast<char>(rng());
        }
        run(input);
    }
    std::printf("replayed %zu inputs\n", runs);
    return 0;
}
