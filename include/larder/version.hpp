// The version of this copy of larder. It matches project(VERSION) in CMakeLists.txt (a
// test checks), so code can tell which larder it was built against.
#pragma once

#define LARDER_VERSION_MAJOR 0
#define LARDER_VERSION_MINOR 1
#define LARDER_VERSION_PATCH 0
#define LARDER_VERSION_STRING "0.1.0"

namespace larder {

/// "major.minor.patch", as LARDER_VERSION_STRING.
inline constexpr const char* version = LARDER_VERSION_STRING;

}  // namespace larder
