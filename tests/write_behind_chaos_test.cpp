// WriteBehind over ChaosBackend: the decorator serves WriteBehind with a queue in process
// memory and its cached copies written through it, so an injected fault reaches the cache
// but never loses an acknowledged write.
#include <larder/backend/chaos.hpp>
#include <larder/backend/memory.hpp>
#include <larder/core/clock.hpp>
#include <larder/core/error.hpp>
#include <larder/policy/write_behind.hpp>

#include <concepts>
#include <map>
#include <optional>
#include <span>
#include <string>

#include "support/catch.hpp"

using namespace std::chrono_literals;

namespace {

using Chaos = larder::ChaosBackend<larder::MemoryBackend>;
using ChaosWriteBehind = larder::WriteBehind<std::string, Chaos>;

static_assert(std::same_as<ChaosWriteBehind::store_type, larder::MemoryWriteBehindStore<Chaos>>);
static_assert(!ChaosWriteBehind::store_type::durable);

// A write-behind cache over the decorator, flushed by hand into `database`.
struct Rig {
    larder::ManualClock clock;
    larder::MemoryBackend store{{.clock = &clock}};
    Chaos chaos{store};
    std::map<std::string, std::string> database;
    ChaosWriteBehind wb{chaos,
                        [this](std::span<const larder::DirtyEntry<std::string>> batch) {
                            for (const auto& e : batch) database[e.key] = e.value;
                            return larder::BatchResult{};
                        },
                        options()};

    larder::WriteBehindOptions options() {
        larder::WriteBehindOptions o;
        o.name = "chaos";
        o.start_flusher = false;  // flush() drives it
        o.cache.clock = &clock;
        return o;
    }
};

}  // namespace

TEST_CASE("WriteBehind over ChaosBackend: a failed read leaves the put unflushed, not lost",
          "[write_behind][chaos][memory]") {
    Rig rig;
    auto& chaos = rig.chaos;
    auto& database = rig.database;
    auto& wb = rig.wb;
    auto load = [&]() -> std::optional<std::string> {
        auto it = database.find("k");
        if (it == database.end()) return std::nullopt;
        return it->second;
    };

    database["k"] = "old";
    (void)wb.put("k", "new");
    REQUIRE(chaos.calls().set == 1);  // the cached copy went through the decorator
    REQUIRE(database["k"] == "old");

    chaos.fail_next(1);
    REQUIRE(wb.get("k", load) == "new");  // the read failed; the queue answered, not the loader
    REQUIRE(chaos.injected_failures() == 1);
    REQUIRE(database["k"] == "old");
    REQUIRE(wb.queue_stats().pending == 1);

    (void)wb.flush();
    REQUIRE(database["k"] == "new");
    REQUIRE(wb.queue_stats().pending == 0);
    REQUIRE(wb.get("k", load) == "new");
}

TEST_CASE("WriteBehind over ChaosBackend: a put whose cached copy fails is not acknowledged",
          "[write_behind][chaos][memory]") {
    Rig rig;
    auto& chaos = rig.chaos;
    auto& database = rig.database;
    auto& wb = rig.wb;

    (void)wb.put("k", "first");
    chaos.fail_next(1);
    REQUIRE_THROWS_AS(wb.put("k", "second"), larder::BackendError);
    (void)wb.flush();
    REQUIRE(database["k"] == "first");
    REQUIRE(wb.queue_stats().pending == 0);
}
