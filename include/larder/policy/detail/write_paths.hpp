// Both write policies, for the umbrella <larder/larder.hpp>. Neither needs a third-party
// library; write-behind on Redis also needs <larder/backend/redis/write_behind_store.hpp>.
#pragma once

#include "larder/policy/write_behind.hpp"
#include "larder/policy/write_through.hpp"
