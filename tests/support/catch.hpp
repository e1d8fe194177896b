// Single include point for Catch2 so test sources build against either major version: Debian 12
// ships Catch2 v2 (one catch.hpp header), newer distributions and package managers ship v3 (split
// headers). The build defines LARDER_CATCH2_V3 when it finds v3.
#pragma once

#if defined(LARDER_CATCH2_V3)
#include <catch2/catch_all.hpp>
#else
#include <catch2/catch.hpp>
#endif
