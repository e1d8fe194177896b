// CLIENT LIST, read by tests that kill one chosen connection of a redis-server they started.
#pragma once

#include <sstream>
#include <string>
#include <vector>

#include "support/redis_server.hpp"

namespace larder::test {

/// The ids CLIENT LIST shows for clients of `type` whose line contains `needle`.
inline std::vector<std::string> client_ids(const RedisServer& server, const std::string& type,
                                           const std::string& needle) {
    std::vector<std::string> ids;
    std::istringstream lines(server.command({"CLIENT", "LIST", "TYPE", type}));
    for (std::string line; std::getline(lines, line);) {
        if (line.find(needle) == std::string::npos) continue;
        const auto at = line.find("id=");
        if (at == std::string::npos) continue;
        ids.push_back(line.substr(at + 3, line.find(' ', at) - at - 3));
    }
    return ids;
}

}  // namespace larder::test
