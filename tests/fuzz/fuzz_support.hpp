// What every fuzz target shares: invariant checks that stop the run where they fail, the
// "only these exceptions" rule, and a reader that turns fuzz bytes into structured values.
// No dependency beyond the standard library, so any target can use it.
#pragma once

#include <cstddef>
#include <cstdint>
#include <cstring>
#include <string>
#include <string_view>
#include <vector>

namespace larder::fuzz {

/// Invariants that must hold for any input, not only "does not crash". A trap, not an
/// exception: nothing in the code under test can catch it, and libFuzzer saves the input.
inline void check(bool ok) {
    if (!ok) __builtin_trap();
}

/// Runs f: true if it returned, false if it threw an E. Any other exception escapes, and
/// an exception escaping LLVMFuzzerTestOneInput aborts the run: a finding.
template <class E, class F>
bool returns_or_throws(F&& f) {
    try {
        f();
        return true;
    } catch (const E&) {
        return false;
    }
}

/// Reads structured values off the front of the fuzz bytes; past the end it yields zeros
/// and empty strings, so a target never needs to check what is left.
class Input {
public:
    Input(const std::uint8_t* data, std::size_t size)
        : bytes_(reinterpret_cast<const char*>(data), size) {}
    explicit Input(std::string_view bytes) : bytes_(bytes) {}

    [[nodiscard]] bool empty() const noexcept { return bytes_.empty(); }
    [[nodiscard]] std::size_t size() const noexcept { return bytes_.size(); }

    std::uint8_t byte() noexcept {
        if (bytes_.empty()) return 0;
        const auto b = static_cast<std::uint8_t>(bytes_.front());
        bytes_.remove_prefix(1);
        return b;
    }

    bool flag() noexcept { return (byte() & 1) != 0; }

    /// Little-endian, from up to sizeof(U) bytes.
    template <class U>
    U integral() noexcept {
        std::uint64_t v = 0;
        for (std::size_t i = 0; i < sizeof(U); ++i) v |= std::uint64_t{byte()} << (8 * i);
        U out;
        std::memcpy(&out, &v, sizeof(U));  // little-endian hosts only, as libFuzzer's
        return out;
    }

    /// Up to n bytes.
    std::string_view take(std::size_t n) noexcept {
        const auto out = bytes_.substr(0, n);
        bytes_.remove_prefix(out.size());
        return out;
    }

    /// A string whose length (0 to max) is the next byte.
    std::string_view text(std::size_t max = 255) noexcept { return take(byte() % (max + 1)); }

    std::string_view rest() noexcept { return take(bytes_.size()); }

private:
    std::string_view bytes_;
};

/// Inputs the replay driver (replay_main.cpp) feeds a target besides its corpus and the
/// random ones. Each target's <target>_inputs.cpp defines replay_inputs().
struct ReplayInputs {
    /// Well-formed inputs: replayed, then every truncation of each, and mutated copies.
    std::vector<std::string> valid;
    /// Replayed as they are.
    std::vector<std::string> hostile;
};

ReplayInputs replay_inputs();

}  // namespace larder::fuzz
