// Events<Bus>: every invalidation made through the policy is published on an invalidation
// bus, for whoever keeps copies the store cannot reach (an L1 of its own, another
// service's cache). Messages are the ones Near understands: "k" + the stored key of an
// invalidated entry, "v" + the stored key of a bumped version (bus.hpp). Publishing is best effort:
// a bus that cannot publish (BackendError) does not fail the write that already happened.
#pragma once

#include <atomic>
#include <cstdint>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "larder/core/error.hpp"
#include "larder/invalidate/invalidator.hpp"
#include "larder/near/bus.hpp"

namespace larder {

template <InvalidationBus Bus>
class Events {
public:
    /// The bus is borrowed: it must outlive the policy.
    explicit Events(Bus& bus) : bus_(&bus) {}
    Events(const Events& other) : bus_(other.bus_) {}

    void versions_of(std::string_view, std::span<const std::string>, std::vector<std::string>&) {}
    void invalidated(std::string_view key) { publish('k', key); }
    void bumped(std::string_view version_key) { publish('v', version_key); }

    /// Messages the bus refused.
    [[nodiscard]] std::uint64_t failed() const noexcept { return failed_.load(); }

private:
    void publish(char kind, std::string_view body) {
        std::string message(1, kind);
        message.append(body);
        try {
            bus_->publish(message);
        } catch (const BackendError&) {
            failed_.fetch_add(1, std::memory_order_relaxed);
        }
    }

    Bus* bus_;
    std::atomic<std::uint64_t> failed_{0};
};

}  // namespace larder
