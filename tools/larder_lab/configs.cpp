// The configuration grammar and its two tables. A spec is a policy followed by
// components, joined with '+':
//
//   spec        := policy { "+" component }
//   policy      := "cache-aside" | "write-through" | "write-behind" | "naive"
//   component   := guard | invalidator | "l1"
//   guard       := "lock" | "xfetch"                       (either, both, or neither)
//   invalidator := "event" | "tags" | "versions" | "ttl"   (at most one; cache-aside only)
//
// naive, the hand-written baseline, takes no components.
//
// Adding a policy is one row in `policies` (and its adapter, a make_* function).
#include <algorithm>
#include <sstream>
#include <string>
#include <string_view>
#include <vector>

#include "lab.hpp"

namespace lab {
namespace {

constexpr PolicyEntry policies[] = {
    {"cache-aside",
     "read through the cache; a write changes the database, then invalidates (CacheAside)", true,
     true, &make_cache_aside},
    {"write-through",
     "a write changes the database, then stores the new value in the cache (WriteThrough)", false,
     true, &make_write_through},
    {"write-behind",
     "a write stores the value in the cache and a durable queue; flushers write the "
     "database in batches later (WriteBehind)",
     false, true, &make_write_behind},
    {"naive",
     "the baseline: cache-aside written by hand over the same store (get; on a miss load and "
     "set; a write changes the database, then deletes the key), with no lease, fence or guard",
     false, false, &make_naive},
};

struct ComponentEntry {
    std::string_view name;
    std::string_view about;
    bool is_invalidator;
    void (*apply)(Spec&);
};

constexpr ComponentEntry components[] = {
    {"lock", "stampede guard: wait for the loader that holds the lease (larder::Lock)", false,
     [](Spec& s) { s.lock = true; }},
    {"xfetch", "stampede guard: refresh hot entries early, probabilistically (larder::XFetch)",
     false, [](Spec& s) { s.xfetch = true; }},
    {"l1", "typed in-process cache in front of the policy, kept coherent by a bus (larder::Near)",
     false, [](Spec& s) { s.l1 = true; }},
    {"event", "invalidator (the default): a write deletes the key", true,
     [](Spec& s) { s.invalidator = Invalidator::event; }},
    {"tags", "invalidator: entries carry an entity tag; a write invalidates the tag", true,
     [](Spec& s) { s.invalidator = Invalidator::tags; }},
    {"versions", "invalidator: version keys; a write bumps the row's version", true,
     [](Spec& s) { s.invalidator = Invalidator::versions; }},
    {"ttl", "invalidator: none; a write leaves the cached copy to its TTL (shows stale reads)",
     true, [](Spec& s) { s.invalidator = Invalidator::ttl; }},
};

std::string_view invalidator_name(Invalidator i) {
    switch (i) {
        case Invalidator::event:
            return "event";
        case Invalidator::tags:
            return "tags";
        case Invalidator::versions:
            return "versions";
        case Invalidator::ttl:
            return "ttl";
    }
    return "?";
}

std::string policy_names() {
    std::string out;
    for (const auto& p : policies) out.append(out.empty() ? "" : ", ").append(p.name);
    return out;
}

std::string component_names() {
    std::string out;
    for (const auto& c : components) out.append(out.empty() ? "" : ", ").append(c.name);
    return out;
}

/// `text` wrapped at 88 columns, every line indented by `indent` spaces.
std::string wrapped(std::string_view text, std::size_t indent) {
    std::string out(indent, ' ');
    std::size_t col = indent;
    std::size_t start = 0;
    while (start < text.size()) {
        std::size_t end = text.find(' ', start);
        if (end == std::string_view::npos) end = text.size();
        const auto word = text.substr(start, end - start);
        if (col > indent && col + 1 + word.size() > 88) {
            out += "\n" + std::string(indent, ' ');
            col = indent;
        } else if (col > indent) {
            out += ' ';
            ++col;
        }
        out += word;
        col += word.size();
        start = end + 1;
    }
    return out + "\n";
}

}  // namespace

std::string Spec::name() const {
    std::string out(policy ? policy->name : "?");
    if (xfetch) out += "+xfetch";
    if (lock) out += "+lock";
    if (invalidator != Invalidator::event) out.append("+").append(invalidator_name(invalidator));
    if (l1) out += "+l1";
    return out;
}

Spec parse_spec(std::string_view text) {
    const std::string quoted = shown(text, word_chars);
    std::vector<std::string_view> parts;
    for (std::size_t start = 0;;) {
        const std::size_t plus = text.find('+', start);
        parts.push_back(text.substr(start, plus == std::string_view::npos ? plus : plus - start));
        if (plus == std::string_view::npos) break;
        start = plus + 1;
    }
    for (const auto part : parts) {
        if (part.empty()) {
            throw UsageError("configuration " + quoted +
                             ": an empty part (a stray '+'?); write e.g. cache-aside+lock");
        }
    }
    Spec spec;
    for (const auto& p : policies) {
        if (p.name == parts.front()) spec.policy = &p;
    }
    if (!spec.policy) {
        throw UsageError("configuration " + quoted + ": unknown policy " +
                         shown(parts.front(), word_chars) + " (policies: " + policy_names() +
                         "; see --list)");
    }
    if (!spec.policy->takes_components && parts.size() > 1) {
        throw UsageError("configuration " + quoted + ": " + std::string(spec.policy->name) +
                         " takes no components: it is the hand-written baseline");
    }
    std::vector<std::string_view> seen;
    bool have_invalidator = false;
    for (std::size_t i = 1; i < parts.size(); ++i) {
        const auto part = parts[i];
        const ComponentEntry* found = nullptr;
        for (const auto& c : components) {
            if (c.name == part) found = &c;
        }
        if (!found) {
            throw UsageError("configuration " + quoted + ": unknown component " +
                             shown(part, word_chars) + " (components: " + component_names() +
                             "; see --list)");
        }
        if (std::find(seen.begin(), seen.end(), part) != seen.end()) {
            throw UsageError("configuration " + quoted + ": '" + std::string(part) +
                             "' appears twice");
        }
        seen.push_back(part);
        if (found->is_invalidator) {
            if (!spec.policy->takes_invalidator) {
                throw UsageError("configuration " + quoted + ": " + std::string(spec.policy->name) +
                                 " takes no invalidator: its writes store the new value");
            }
            if (have_invalidator) {
                throw UsageError("configuration " + quoted +
                                 ": at most one invalidator "
                                 "(event, tags, versions, ttl)");
            }
            have_invalidator = true;
        }
        found->apply(spec);
    }
    return spec;
}

std::string describe_configurations() {
    std::ostringstream out;
    out << "Configurations are  POLICY[+COMPONENT...]  (components in any order).\n\npolicies:\n";
    for (const auto& p : policies) out << "  " << p.name << "\n" << wrapped(p.about, 6);
    out << "\ncomponents:\n";
    for (const auto& c : components) out << "  " << c.name << "\n" << wrapped(c.about, 6);
    out << "\nguards: none, lock, xfetch, or xfetch+lock; invalidators (cache-aside only): one of\n"
           "event (default), tags, versions, ttl; l1 with any of them.\n\nall configurations:\n";
    for (const auto& p : policies) {
        if (!p.takes_components) continue;  // listed last
        const std::vector<std::string_view> invalidators =
            p.takes_invalidator ? std::vector<std::string_view>{"", "+tags", "+versions", "+ttl"}
                                : std::vector<std::string_view>{""};
        for (const auto inv : invalidators) {
            out << " ";
            for (const std::string_view guard : {"", "+lock", "+xfetch", "+xfetch+lock"}) {
                out << " " << p.name << guard << inv;
            }
            out << "\n";
        }
    }
    out << "  (each also with +l1)\n";
    for (const auto& p : policies) {
        if (!p.takes_components) out << "  " << p.name << "  (takes no components)\n";
    }
    return out.str();
}

}  // namespace lab
