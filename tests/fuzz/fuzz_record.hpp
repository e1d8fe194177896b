// What the fuzz targets decode into: a record shaped like real cached rows (integers, a
// double, a bool, strings, a list, an optional, a map and a schemaless part), so that
// nlohmann's conversions into each kind of field run on hostile input.
//
// Its integer fields are std::int64_t on purpose: a float read into a narrower integer
// field (or a negative float into an unsigned one) is converted by nlohmann's static_cast,
// which the codec cannot check without the field's type (docs/codecs.md, "Numbers"). The
// fuzzer tests what the codec guarantees; narrow whole values (decode<int>, decode<
// std::uint8_t>) are checked exactly and are fuzzed below.
#pragma once

#include <larder/codec/json.hpp>
#include <larder/core/error.hpp>

#include <cstddef>
#include <cstdint>
#include <map>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "fuzz_support.hpp"

namespace larder::fuzz {

struct Record {
    std::int64_t id = 0;
    std::int64_t count = 0;
    double score = 0;
    bool active = false;
    std::string name;
    std::vector<std::string> roles;
    std::map<std::string, std::int64_t> quotas;
    std::optional<std::int64_t> parent;
    nlohmann::json extra;
    bool operator==(const Record&) const = default;
};

inline void to_json(nlohmann::json& j, const Record& r) {
    j = nlohmann::json{{"id", r.id},         {"count", r.count}, {"score", r.score},
                       {"active", r.active}, {"name", r.name},   {"roles", r.roles},
                       {"quotas", r.quotas}, {"extra", r.extra}};
    if (r.parent) j["parent"] = *r.parent;
}

inline void from_json(const nlohmann::json& j, Record& r) {
    j.at("id").get_to(r.id);
    j.at("count").get_to(r.count);
    j.at("score").get_to(r.score);
    j.at("active").get_to(r.active);
    j.at("name").get_to(r.name);
    j.at("roles").get_to(r.roles);
    j.at("quotas").get_to(r.quotas);
    j.at("extra").get_to(r.extra);
    if (const auto it = j.find("parent"); it != j.end() && !it->is_null()) {
        r.parent = it->get<std::int64_t>();
    }
}

inline Record sample_record() {
    return Record{.id = 4242,
                  .count = -7,
                  .score = 97.25,
                  .active = true,
                  .name = "Ada Lovelace",
                  .roles = {"reader", "writer"},
                  .quotas = {{"daily", 100}, {"burst", -1}},
                  .parent = 17,
                  .extra = nlohmann::json{{"tags", {1, 2.5, "x", nullptr, true}}}};
}

/// A decode either returns or throws CodecError; anything else escaping is a finding.
template <class F>
bool decodes(F&& f) {
    return returns_or_throws<larder::CodecError>(std::forward<F>(f));
}

}  // namespace larder::fuzz
