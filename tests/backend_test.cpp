// The Backend conformance suite (<larder/testing/backend_conformance.hpp>), run on every
// backend of the library, so a strategy that works on one works on all. Each run has its
// backend's tags ([memory]; [redis]; [redis][cluster]), which tests/CMakeLists.txt turns
// into ctest labels.
#include <larder/testing/backend_conformance.hpp>

#include "support/backends.hpp"

LARDER_BACKEND_CONFORMANCE_TESTS(larder::test::MemoryFixture, "[memory]");

#if defined(LARDER_TEST_REDIS_BACKEND)
LARDER_BACKEND_CONFORMANCE_TESTS(larder::test::RedisFixture, "[redis]");
LARDER_BACKEND_CONFORMANCE_TESTS(larder::test::RedisClusterFixture, "[redis][cluster]");
#endif
