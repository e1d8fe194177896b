// A strict reader of the Prometheus text exposition format (0.0.4), for tests: it checks
// what a scraper relies on (HELP and TYPE once per metric, before its samples; the samples
// of one metric together; label syntax and escapes; numbers; histogram buckets ascending,
// cumulative, ending in +Inf = _count) and gives the samples back.
#pragma once

#include <cmath>
#include <cstdlib>
#include <map>
#include <set>
#include <stdexcept>
#include <string>
#include <string_view>
#include <vector>

namespace larder::test {

struct PromSample {
    std::string name;  ///< as written: with _bucket, _sum, _count
    std::map<std::string, std::string> labels;
    double value = 0;
};

struct PromText {
    std::map<std::string, std::string> type;  ///< metric -> counter, histogram, ...
    std::map<std::string, std::string> help;
    std::vector<PromSample> samples;

    /// The value of the one sample named `name` with exactly these labels; throws if none.
    [[nodiscard]] double value(const std::string& name,
                               const std::map<std::string, std::string>& labels) const {
        for (const auto& s : samples) {
            if (s.name == name && s.labels == labels) return s.value;
        }
        throw std::runtime_error("no sample " + name);
    }
    [[nodiscard]] bool has(const std::string& name,
                           const std::map<std::string, std::string>& labels) const {
        for (const auto& s : samples) {
            if (s.name == name && s.labels == labels) return true;
        }
        return false;
    }
};

namespace prom_detail {

[[noreturn]] inline void bad(const std::string& line, const std::string& why) {
    throw std::runtime_error("bad exposition line '" + line + "': " + why);
}

inline bool name_char(char c, bool first) {
    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || c == '_' || c == ':' ||
           (!first && c >= '0' && c <= '9');
}

inline std::string read_name(const std::string& line, std::size_t& at) {
    const std::size_t start = at;
    while (at < line.size() && name_char(line[at], at == start)) ++at;
    if (at == start) bad(line, "expected a name at " + std::to_string(start));
    return line.substr(start, at - start);
}

inline double read_number(const std::string& line, std::string_view text) {
    if (text == "+Inf") return INFINITY;
    if (text == "-Inf") return -INFINITY;
    if (text == "NaN") return NAN;
    const std::string s(text);
    char* end = nullptr;
    const double v = std::strtod(s.c_str(), &end);
    if (s.empty() || end != s.c_str() + s.size()) bad(line, "not a number: " + s);
    return v;
}

// The metric a sample belongs to: a histogram's _bucket, _sum and _count are its own.
inline std::string family_of(const std::string& name,
                             const std::map<std::string, std::string>& type) {
    for (std::string_view suffix : {"_bucket", "_sum", "_count"}) {
        if (name.size() > suffix.size() && name.ends_with(suffix)) {
            const std::string base = name.substr(0, name.size() - suffix.size());
            if (auto it = type.find(base); it != type.end() && it->second == "histogram")
                return base;
        }
    }
    return name;
}

}  // namespace prom_detail

/// Parses `text`, or throws std::runtime_error naming the first line that breaks the format.
inline PromText parse_prometheus(const std::string& text) {
    using namespace prom_detail;
    PromText out;
    if (!text.empty() && text.back() != '\n')
        bad(text.substr(text.rfind('\n') + 1), "no final newline");
    std::set<std::string> finished;  // metrics whose samples ended
    std::string current;
    std::size_t pos = 0;
    while (pos < text.size()) {
        const std::size_t nl = text.find('\n', pos);
        const std::string line = text.substr(pos, nl - pos);
        pos = nl + 1;
        if (line.empty()) bad(line, "empty line");
        if (line.starts_with("# HELP ") || line.starts_with("# TYPE ")) {
            std::size_t at = 7;
            const std::string name = read_name(line, at);
            if (at >= line.size() || line[at] != ' ') bad(line, "expected a space after the name");
            const std::string rest = line.substr(at + 1);
            auto& map = line[2] == 'H' ? out.help : out.type;
            if (!map.emplace(name, rest).second) bad(line, "declared twice");
            if (line[2] == 'T' && rest != "counter" && rest != "gauge" && rest != "histogram" &&
                rest != "summary" && rest != "untyped") {
                bad(line, "unknown type");
            }
            if (out.samples.size() > 0 && finished.count(name)) bad(line, "after its samples");
            continue;
        }
        if (line[0] == '#') bad(line, "a comment that is neither HELP nor TYPE");
        PromSample s;
        std::size_t at = 0;
        s.name = read_name(line, at);
        if (at < line.size() && line[at] == '{') {
            ++at;
            while (at < line.size() && line[at] != '}') {
                const std::string key = read_name(line, at);
                if (line.compare(at, 2, "=\"") != 0) bad(line, "expected =\" after " + key);
                at += 2;
                std::string value;
                for (;; ++at) {
                    if (at >= line.size()) bad(line, "unterminated label value");
                    const char c = line[at];
                    if (c == '"') break;
                    if (c == '\\') {
                        if (++at >= line.size()) bad(line, "dangling backslash");
                        const char e = line[at];
                        if (e == 'n') {
                            value.push_back('\n');
                        } else if (e == '\\' || e == '"') {
                            value.push_back(e);
                        } else {
                            bad(line, "unknown escape");
                        }
                    } else {
                        value.push_back(c);
                    }
                }
                ++at;  // the closing quote
                if (!s.labels.emplace(key, value).second) bad(line, "label " + key + " twice");
                if (at < line.size() && line[at] == ',') ++at;
            }
            if (at >= line.size()) bad(line, "unterminated label set");
            ++at;  // }
        }
        if (at >= line.size() || line[at] != ' ') bad(line, "expected a space before the value");
        s.value = read_number(line, std::string_view(line).substr(at + 1));
        const std::string family = family_of(s.name, out.type);
        if (!out.type.count(family)) bad(line, "no TYPE before the sample");
        if (family != current) {
            if (finished.count(family)) bad(line, "the samples of " + family + " are not together");
            if (!current.empty()) finished.insert(current);
            current = family;
        }
        out.samples.push_back(std::move(s));
    }
    // Histograms: per series, buckets ascending by le, cumulative, +Inf last and = _count.
    for (const auto& [name, type] : out.type) {
        if (type != "histogram") continue;
        std::map<std::map<std::string, std::string>, std::vector<std::pair<double, double>>>
            buckets;
        for (const auto& s : out.samples) {
            if (s.name != name + "_bucket") continue;
            auto labels = s.labels;
            const auto le = labels.find("le");
            if (le == labels.end()) bad(s.name, "a bucket without le");
            const double bound = read_number(s.name, le->second);
            labels.erase(le);
            buckets[labels].emplace_back(bound, s.value);
        }
        for (const auto& [labels, series] : buckets) {
            for (std::size_t i = 1; i < series.size(); ++i) {
                if (!(series[i].first > series[i - 1].first)) bad(name, "le not ascending");
                if (series[i].second < series[i - 1].second) bad(name, "buckets not cumulative");
            }
            if (series.empty() || !std::isinf(series.back().first)) bad(name, "no +Inf bucket");
            if (series.back().second != out.value(name + "_count", labels)) {
                bad(name, "+Inf bucket differs from _count");
            }
            (void)out.value(name + "_sum", labels);
        }
    }
    return out;
}

}  // namespace larder::test
