// Waiting for something another thread or process will do, with a bound, instead of a
// fixed sleep: fast when it happens, a clear failure when it does not.
#pragma once

#include <chrono>
#include <thread>

namespace larder::test {

/// Polls pred() every millisecond until it holds (true) or `bound` passes (false).
template <class Pred>
bool eventually(Pred pred, std::chrono::milliseconds bound = std::chrono::seconds(5)) {
    const auto deadline = std::chrono::steady_clock::now() + bound;
    while (!pred()) {
        if (std::chrono::steady_clock::now() > deadline) return false;
        std::this_thread::sleep_for(std::chrono::milliseconds(1));
    }
    return true;
}

}  // namespace larder::test
