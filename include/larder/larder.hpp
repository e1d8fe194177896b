// larder: caching strategies for C++20. This umbrella includes everything that needs no
// third-party library; add <larder/codec/json.hpp> or <larder/codec/msgpack.hpp>
// (target larder::json) for JSON codecs and <larder/backend/redis.hpp> (larder::redis).
#pragma once

#include "larder/backend/backend.hpp"
#include "larder/backend/chaos.hpp"
#include "larder/backend/memory.hpp"
#include "larder/codec/raw.hpp"
#include "larder/core/clock.hpp"
#include "larder/core/codec.hpp"
#include "larder/core/envelope.hpp"
#include "larder/core/error.hpp"
#include "larder/core/keys.hpp"
#include "larder/core/loader.hpp"
#include "larder/core/random.hpp"
#include "larder/core/stats.hpp"
#include "larder/invalidate/entity_versions.hpp"
#include "larder/invalidate/events.hpp"
#include "larder/invalidate/invalidator.hpp"
#include "larder/invalidate/tags.hpp"
#include "larder/invalidate/ttl.hpp"
#include "larder/invalidate/version_keys.hpp"
#include "larder/near/bus.hpp"
#include "larder/near/near.hpp"
#include "larder/near/near_cache.hpp"
#include "larder/policy/cache_aside.hpp"
#include "larder/policy/detail/write_paths.hpp"  // WriteThrough, WriteBehind
#include "larder/stampede/guard.hpp"
#include "larder/stampede/jitter.hpp"
#include "larder/stampede/lock.hpp"
#include "larder/stampede/single_flight.hpp"
#include "larder/stampede/xfetch.hpp"
#include "larder/version.hpp"
