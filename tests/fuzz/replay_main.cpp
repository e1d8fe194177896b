// Replays a fuzz target without libFuzzer, so that every build (and CI, under ASan and
// UBSan) runs the targets: the files or directories named on the command line (a corpus,
// tests/fuzz/corpus/<target> in ctest), the target's fixed inputs (replay_inputs(), from
// its <target>_inputs.cpp), every truncation of the well-formed ones, then random inputs
// from a fixed seed, half of them mutated copies of the well-formed inputs and the corpus.
// Bounded in count and size so that a run takes well under a second per target.
//
//   <replay> [corpus file or directory]... [--random N]
#include <algorithm>
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

#include "fuzz_support.hpp"

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size);

namespace {

std::size_t runs = 0;

void run(const std::string& input) {
    // A copy in its own allocation: ASan then catches a read one byte past the input.
    std::vector<std::uint8_t> copy(input.begin(), input.end());
    LLVMFuzzerTestOneInput(copy.data(), copy.size());
    ++runs;
}

std::string read_file(const std::filesystem::path& file) {
    std::ifstream in(file, std::ios::binary);
    return std::string(std::istreambuf_iterator<char>(in), {});
}

// The files of a corpus directory in name order (a failure reproduces in the same order
// everywhere), or the one file named.
std::vector<std::string> read_corpus(const std::filesystem::path& path) {
    if (!std::filesystem::exists(path)) {
        std::fprintf(stderr, "no such corpus file or directory: %s\n", path.c_str());
        std::exit(2);
    }
    if (!std::filesystem::is_directory(path)) return {read_file(path)};
    std::vector<std::filesystem::path> files;
    for (const auto& entry : std::filesystem::directory_iterator(path)) {
        if (entry.is_regular_file()) files.push_back(entry.path());
    }
    std::sort(files.begin(), files.end());
    std::vector<std::string> out;
    for (const auto& f : files) out.push_back(read_file(f));
    return out;
}

}  // namespace

int main(int argc, char** argv) {
    std::size_t random_count = 2000;
    std::vector<std::string> corpus;
    for (int i = 1; i < argc; ++i) {
        if (std::strcmp(argv[i], "--random") == 0 && i + 1 < argc) {
            random_count = std::strtoull(argv[++i], nullptr, 10);
        } else {
            for (auto& input : read_corpus(argv[i])) corpus.push_back(std::move(input));
        }
    }
    for (const auto& c : corpus) run(c);

    const auto inputs = larder::fuzz::replay_inputs();
    for (const auto& v : inputs.valid) {
        run(v);
        for (std::size_t n = 0; n < v.size(); ++n) run(v.substr(0, n));  // every truncation
    }
    for (const auto& h : inputs.hostile) run(h);

    // What mutations start from: the well-formed inputs, and the corpus (small files only).
    std::vector<std::string> seeds = inputs.valid;
    for (const auto& c : corpus) {
        if (c.size() <= 4096) seeds.push_back(c);
    }

    // Fixed seed: a failure reproduces on every run and every machine.
    std::mt19937_64 rng(0x1a2de5);
    for (std::size_t i = 0; i < random_count; ++i) {
        std::string input;
        if (i % 2 == 0 && !seeds.empty()) {
            // A well-formed input with a few bytes changed, inserted or removed.
            input = seeds[rng() % seeds.size()];
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
