// The Keeper: one thread that runs every held task (lease and claim extensions) each
// period until its Hold goes; releasing a Hold waits for a run of its task in progress.
#include <larder/policy/detail/keeper.hpp>

#include <atomic>
#include <chrono>
#include <latch>
#include <optional>
#include <stdexcept>
#include <thread>

#include "support/catch.hpp"
#include "support/eventually.hpp"

using namespace std::chrono_literals;
using larder::detail::Keeper;
using larder::test::eventually;

TEST_CASE("A Keeper runs tasks of different periods on one thread, until released", "[keeper]") {
    Keeper keeper;
    std::atomic<int> fast{0};
    std::atomic<int> slow{0};
    std::atomic<bool> other_thread{false};
    std::thread::id first_thread;
    std::atomic<bool> first_seen{false};
    auto on_thread = [&] {
        if (!first_seen.exchange(true)) {
            first_thread = std::this_thread::get_id();
        } else if (std::this_thread::get_id() != first_thread) {
            other_thread = true;
        }
    };
    std::optional<Keeper::Hold> fast_hold(keeper.hold(5ms, [&] {
        on_thread();
        ++fast;
    }));
    {
        const auto slow_hold = keeper.hold(20ms, [&] {
            on_thread();
            ++slow;
        });
        REQUIRE(eventually([&] { return fast >= 3 && slow >= 2; }));
    }
    const int slow_at_release = slow;
    REQUIRE(eventually([&] { return fast >= slow_at_release + 10; }));
    CHECK(slow == slow_at_release);  // released: never run again
    CHECK_FALSE(other_thread);
    fast_hold.reset();
    const int fast_at_release = fast;
    std::this_thread::sleep_for(30ms);
    CHECK(fast == fast_at_release);
}

TEST_CASE("Releasing a Hold waits for the run of its task in progress", "[keeper]") {
    Keeper keeper;
    std::latch started(1);
    std::latch go(1);
    std::atomic<bool> task_done{false};
    std::atomic<int> runs{0};
    std::optional<Keeper::Hold> hold(keeper.hold(1ms, [&] {
        if (++runs == 1) {
            started.count_down();
            go.wait();
            task_done = true;
        }
    }));
    started.wait();
    std::atomic<bool> released{false};
    std::thread releaser([&] {
        hold.reset();
        released = true;
    });
    // The task is blocked on `go`: a release that did not wait for it would return now,
    // and whatever the task uses could be destroyed under it.
    std::this_thread::sleep_for(50ms);
    CHECK_FALSE(released);
    go.count_down();
    releaser.join();
    CHECK(released);
    CHECK(task_done);
}

TEST_CASE("A task that throws does not stop the Keeper's other tasks", "[keeper]") {
    Keeper keeper;
    std::atomic<int> thrown{0};
    std::atomic<int> ran{0};
    const auto bad = keeper.hold(1ms, [&] {
        ++thrown;
        throw std::runtime_error("the store is down");
    });
    const auto good = keeper.hold(1ms, [&] { ++ran; });
    REQUIRE(eventually([&] { return thrown >= 3 && ran >= 3; }));
}

TEST_CASE("A Keeper task with a huge period neither overflows nor runs at once", "[keeper]") {
    Keeper keeper;
    std::atomic<int> runs{0};
    std::atomic<int> other{0};
    const auto forever = keeper.hold(larder::Millis::max(), [&] { ++runs; });
    const auto often = keeper.hold(1ms, [&] { ++other; });
    REQUIRE(eventually([&] { return other >= 5; }));
    CHECK(runs == 0);
}
