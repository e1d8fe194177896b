// Command-line parsing shared by larder-lab and larder-check: CLI11, with error messages
// that never repeat an argument that may hold a password.
#pragma once

#include <CLI/CLI.hpp>

#include <string>
#include <string_view>

#include "lab.hpp"

namespace lab {

/// Sets up `app` for the flags the caller adds: --help is the caller's own flag (each tool
/// prints its own text), a flag given twice keeps its last value, and unknown arguments
/// are left to parse_flags(): CLI11's own message would repeat them, and they may be a URL
/// or a password given without its flag.
inline void configure(CLI::App& app) {
    app.set_help_flag();
    app.allow_extras();
    app.option_defaults()->multi_option_policy(CLI::MultiOptionPolicy::TakeLast);
}

/// A switch: a flag that takes no value (--flag=value is an error, not a value).
inline CLI::Option* add_switch(CLI::App& app, const std::string& names, std::function<void()> set,
                               const std::string& help) {
    return app.add_flag_callback(names, std::move(set), help)->disable_flag_override();
}

/// Parses argv into the flags of `app`; throws UsageError naming what is wrong. `hint`
/// follows the message about an argument that is not a flag.
inline void parse_flags(CLI::App& app, int argc, char** argv, std::string_view hint = {}) {
    try {
        app.parse(argc, argv);
    } catch (const CLI::ArgumentMismatch& e) {
        throw UsageError(e.what());  // a flag's name and counts, never a value
    } catch (const CLI::ParseError& e) {
        throw UsageError("the arguments do not parse (" + e.get_name() + ")");
    }
    const auto extras = app.remaining();
    if (extras.empty()) return;
    const std::string_view arg = extras.front();
    if (arg.starts_with("-")) {
        // A flag's name is repeated (its value is not: --pass=...).
        throw UsageError("unknown flag " + shown(arg.substr(0, arg.find('=')), word_chars));
    }
    int index = 1;
    while (index < argc && arg != argv[index]) ++index;
    throw UsageError("argument " + std::to_string(index) + " is not a flag; got " +
                     shown(arg, word_chars) + (hint.empty() ? "" : " (" + std::string(hint) + ")"));
}

}  // namespace lab
