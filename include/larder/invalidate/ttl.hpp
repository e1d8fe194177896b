// Ttl: a TTL per key, decided from the key. Without it every entry gets the policy's `ttl`
// option; with it, the rule's answer, where it has one (nullopt: the option):
//
//   Ttl sessions([](std::string_view key) -> std::optional<larder::Millis> {
//       if (key.starts_with("session:")) return std::chrono::minutes(1);
//       return std::nullopt;
//   });
#pragma once

#include <functional>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "larder/invalidate/invalidator.hpp"

namespace larder {

class Ttl {
public:
    using Rule = std::function<std::optional<Millis>(std::string_view key)>;

    Ttl() = default;
    explicit Ttl(Rule rule) : rule_(std::move(rule)) {}

    [[nodiscard]] std::optional<Millis> ttl_for(std::string_view key) {
        return rule_ ? rule_(key) : std::nullopt;
    }
    void versions_of(std::string_view, std::span<const std::string>, std::vector<std::string>&) {}
    void invalidated(std::string_view) {}
    void bumped(std::string_view) {}

private:
    Rule rule_;
};

static_assert(TtlInvalidator<Ttl>);

}  // namespace larder
