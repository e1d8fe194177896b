// Runs the larder-lab binary the build made (LARDER_TEST_LARDER_LAB) and collects what it
// printed, stdout and stderr together.
#pragma once

#if defined(LARDER_TEST_LARDER_LAB)

#include <chrono>
#include <string>
#include <vector>

#include "support/child_process.hpp"

namespace larder::test {

struct LabRun {
    int status = -1;
    std::string output;  ///< stdout and stderr together
};

/// Runs larder-lab with `args`; a shell joins its stderr to the stdout ChildProcess reads.
inline LabRun run_lab(const std::vector<std::string>& args) {
    std::vector<std::string> sh_args{"-c", "exec \"$0\" \"$@\" 2>&1", LARDER_TEST_LARDER_LAB};
    sh_args.insert(sh_args.end(), args.begin(), args.end());
    ChildProcess child("/bin/sh", sh_args);
    LabRun run;
    while (auto line = child.read_line(std::chrono::seconds(60))) run.output += *line + "\n";
    run.status = child.wait();
    return run;
}

}  // namespace larder::test

#endif
