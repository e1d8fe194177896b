// Logger: where a cache or a backend says what it cannot return to a caller - a
// background refresh that failed, the circuit breaker opening, a Sentinel failover
// followed, a write-behind entry dead-lettered. Every policy takes one in
// CacheAsideOptions::log, RedisBackend and RedisClusterBackend in RedisOptions::log.
//
// Level-filtered before anything is formatted: a message below `level` costs one
// comparison. The sink is called from whichever thread saw the event, possibly while the
// object that logs holds a lock of its own: it must not call back into that object.
// Exceptions it throws are swallowed (a log line is never worth a failed call).
// An adapter to spdlog, or to anything else, is a lambda (docs/logging.md).
#pragma once

#include <cstdint>
#include <exception>
#include <functional>
#include <iostream>
#include <string>
#include <string_view>
#include <type_traits>

namespace larder {

enum class LogLevel : std::uint8_t { debug, info, warn, error, off };

[[nodiscard]] constexpr std::string_view to_string(LogLevel level) noexcept {
    switch (level) {
        case LogLevel::debug:
            return "debug";
        case LogLevel::info:
            return "info";
        case LogLevel::warn:
            return "warn";
        case LogLevel::error:
            return "error";
        case LogLevel::off:
            return "off";
    }
    return "?";
}

struct Logger {
    /// Messages below this level are dropped unformatted; LogLevel::off drops them all.
    LogLevel level = LogLevel::warn;
    /// Empty: "larder <level>: <message>" on std::cerr.
    std::function<void(LogLevel, std::string_view)> sink{};

    [[nodiscard]] bool enabled(LogLevel at) const noexcept {
        return at >= level && level != LogLevel::off;
    }

    /// Logs what `make()` returns (anything convertible to std::string_view) at `at`;
    /// make is called only when the level is enabled.
    template <class Make>
    void operator()(LogLevel at, Make&& make) const noexcept {
        if (!enabled(at)) return;
        try {
            if constexpr (std::is_convertible_v<Make, std::string_view>) {
                emit(at, std::string_view(make));
            } else {
                const auto message = make();
                emit(at, std::string_view(message));
            }
        } catch (...) {
            // Formatting or the sink failed: the event is lost, the caller's call is not.
        }
    }

private:
    void emit(LogLevel at, std::string_view message) const {
        if (sink) {
            sink(at, message);
        } else {
            std::string line = "larder ";
            line.append(to_string(at)).append(": ").append(message).push_back('\n');
            std::cerr << line << std::flush;
        }
    }
};

namespace detail {

/// The message of the exception in flight (call it in a catch block), for a log line.
[[nodiscard]] inline std::string current_exception_message() {
    try {
        throw;
    } catch (const std::exception& e) {
        return e.what();
    } catch (...) {
        return "an exception that is not a std::exception";
    }
}

}  // namespace detail

}  // namespace larder
