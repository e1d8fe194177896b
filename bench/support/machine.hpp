// What the numbers were measured with, printed at the top of every benchmark's output
// (and, for Google Benchmark programs, put in the JSON output's context by initialize()
// in report.hpp): the library's version and commit, the compiler, the CPU and its cores.
#pragma once

#include <fstream>
#include <string>
#include <thread>

#include "larder/version.hpp"
#include "larder_build_commit.hpp"  // generated: cmake/WriteBuildCommit.cmake

namespace larder::bench {

/// "AMD EPYC 7B13".
inline std::string cpu_model() {
    std::ifstream cpuinfo("/proc/cpuinfo");
    for (std::string line; std::getline(cpuinfo, line);) {
        if (line.rfind("model name", 0) != 0) continue;
        const auto colon = line.find(':');
        if (colon != std::string::npos && colon + 2 <= line.size()) return line.substr(colon + 2);
    }
    return "unknown CPU";
}

/// The commit the benchmarks were built from ("-dirty": with uncommitted changes);
/// "unknown" outside git.
inline std::string build_commit() {
    return LARDER_BUILD_COMMIT;
}

inline std::string compiler() {
#if defined(__clang__)
    return "clang " __clang_version__;
#elif defined(__GNUC__)
    return "g++ " __VERSION__;
#else
    return "unknown compiler";
#endif
}

/// "larder 0.1.0 (commit 1a2b3c4d5e6f), g++ 12.2.0; AMD EPYC, 2 cores".
inline std::string machine_description() {
    return "larder " + std::string(LARDER_VERSION_STRING) + " (commit " + build_commit() + "), " +
           compiler() + "; " + cpu_model() + ", " +
           std::to_string(std::thread::hardware_concurrency()) + " cores";
}

}  // namespace larder::bench
