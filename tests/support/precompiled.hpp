// The headers most test files include, compiled once per build (target_precompile_headers
// in tests/CMakeLists.txt): parsing them was over half of a test file's compile time.
// Every test file still includes what it uses; this list only makes that cheap.
#pragma once

#include <algorithm>
#include <atomic>
#include <chrono>
#include <map>
#include <mutex>
#include <optional>
#include <set>
#include <span>
#include <string>
#include <string_view>
#include <thread>
#include <vector>

#include <larder/backend/chaos.hpp>
#include <larder/larder.hpp>
#include <larder/near/near.hpp>
#include <larder/policy/write_behind.hpp>
#include <larder/policy/write_through.hpp>
#if defined(LARDER_TEST_HAVE_JSON)
#include <larder/codec/json.hpp>
#endif
#if defined(LARDER_TEST_HAVE_REDIS)
#include <larder/backend/redis.hpp>
#include <larder/backend/redis/write_behind_store.hpp>
#include <larder/near/redis_bus.hpp>
#endif

#include "support/catch.hpp"
