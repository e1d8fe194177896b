// A one-line description of the machine, printed at the top of every benchmark's output.
#pragma once

#include <fstream>
#include <string>
#include <thread>

namespace larder::bench {

/// "AMD EPYC, 2 cores".
inline std::string machine_description() {
    std::ifstream cpuinfo("/proc/cpuinfo");
    std::string line;
    std::string model = "unknown CPU";
    while (std::getline(cpuinfo, line)) {
        if (line.rfind("model name", 0) == 0) {
            const auto colon = line.find(':');
            if (colon != std::string::npos) model = line.substr(colon + 2);
            break;
        }
    }
    return model + ", " + std::to_string(std::thread::hardware_concurrency()) + " cores";
}

}  // namespace larder::bench
