// What larder-lab prints: the results table (text or Markdown), one JSON object, and an
// SVG of read latency and database load over time. No dependency beyond nlohmann_json.
#include <larder/version.hpp>
#include <nlohmann/json.hpp>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <numeric>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "bench/support/machine.hpp"  // what the numbers were measured with, as the benchmarks say it
#include "lab.hpp"

namespace lab {
namespace {

std::string fmt(const char* format, double v) {
    char buf[64];
    std::snprintf(buf, sizeof buf, format, v);
    return buf;
}

std::string grouped(std::uint64_t v) {
    std::string digits = std::to_string(v);
    std::string out;
    for (std::size_t i = 0; i < digits.size(); ++i) {
        if (i > 0 && (digits.size() - i) % 3 == 0) out += ',';
        out += digits[i];
    }
    return out;
}

std::string ms(double v) {
    return v == std::floor(v) ? fmt("%.0f", v) : fmt("%.3g", v);
}

/// A column of the table: its title, and its cell for one configuration. `repeats`: shown
/// only when a configuration ran more than once.
struct Column {
    const char* title;
    std::string (*cell)(const ConfigResult&);
    bool repeats = false;
};

std::string quartiles(const Spread& s, const char* format) {
    return fmt(format, s.q1) + "-" + fmt(format, s.q3);
}

std::uint64_t total(const ConfigResult& c, std::uint64_t RunResult::*field) {
    std::uint64_t sum = 0;
    for (const auto& r : c.runs) sum += r.*field;
    return sum;
}

const Column columns[] = {
    {"runs", [](const ConfigResult& c) { return std::to_string(c.runs.size()); }, true},
    {"ops/s",
     [](const ConfigResult& c) {
         return grouped(static_cast<std::uint64_t>(c.throughput().median));
     }},
    {"ops/s q1-q3", [](const ConfigResult& c) { return quartiles(c.throughput(), "%.0f"); }, true},
    {"p50 us",
     [](const ConfigResult& c) { return fmt("%.1f", c.typical().read_latency.quantile_us(0.50)); }},
    {"p99 us", [](const ConfigResult& c) { return fmt("%.1f", c.read_p99_us().median); }},
    {"p99 q1-q3", [](const ConfigResult& c) { return quartiles(c.read_p99_us(), "%.1f"); }, true},
    {"p999 us",
     [](const ConfigResult& c) {
         return fmt("%.1f", c.typical().read_latency.quantile_us(0.999));
     }},
    {"hit %", [](const ConfigResult& c) { return fmt("%.1f", c.typical().hit_ratio() * 100); }},
    {"DB reads", [](const ConfigResult& c) { return grouped(c.typical().db_reads); }},
    {"DB writes", [](const ConfigResult& c) { return grouped(c.typical().db_writes); }},
    // Correctness: every run counts, warm-up included.
    {"stale", [](const ConfigResult& c) { return grouped(total(c, &RunResult::stale_reads)); }},
    {"lost", [](const ConfigResult& c) { return grouped(total(c, &RunResult::lost_writes)); }},
};

std::string xml(std::string_view s) {
    std::string out;
    for (char c : s) {
        switch (c) {
            case '&':
                out += "&amp;";
                break;
            case '<':
                out += "&lt;";
                break;
            case '>':
                out += "&gt;";
                break;
            case '"':
                out += "&quot;";
                break;
            default:
                out += c;
        }
    }
    return out;
}

/// 1, 2 or 5 times a power of ten, at least v / 5: a tick step for an axis up to v.
double tick_step(double v) {
    if (v <= 0) return 1;
    const double raw = v / 5;
    const double p = std::pow(10.0, std::floor(std::log10(raw)));
    for (double m : {1.0, 2.0, 5.0, 10.0}) {
        if (m * p >= raw) return m * p;
    }
    return 10 * p;
}

std::string tick_label(double v) {
    if (v >= 1e6) return fmt("%gM", v / 1e6);
    if (v >= 1e4) return fmt("%gk", v / 1e3);
    return fmt("%g", v);
}

const char* const palette[] = {"#1f77b4", "#d62728", "#2ca02c", "#ff7f0e",
                               "#9467bd", "#8c564b", "#e377c2", "#17becf"};

}  // namespace

Spread spread_of(std::vector<double> values) {
    if (values.empty()) return {};
    std::sort(values.begin(), values.end());
    auto at = [&](double q) {
        const double pos = q * static_cast<double>(values.size() - 1);
        const auto lo = static_cast<std::size_t>(pos);
        const std::size_t hi = std::min(lo + 1, values.size() - 1);
        return values[lo] + (values[hi] - values[lo]) * (pos - static_cast<double>(lo));
    };
    return {at(0.5), at(0.25), at(0.75)};
}

const RunResult& ConfigResult::typical() const {
    std::vector<std::size_t> order(runs.size());
    std::iota(order.begin(), order.end(), std::size_t{0});
    std::sort(order.begin(), order.end(), [&](std::size_t a, std::size_t b) {
        return runs[a].throughput() < runs[b].throughput();
    });
    return runs.at(order.at((order.size() - 1) / 2));
}

Spread ConfigResult::throughput() const {
    std::vector<double> v;
    for (const auto& r : runs) v.push_back(r.throughput());
    return spread_of(std::move(v));
}

Spread ConfigResult::read_p99_us() const {
    std::vector<double> v;
    for (const auto& r : runs) v.push_back(r.read_latency.quantile_us(0.99));
    return spread_of(std::move(v));
}

RunInfo run_info(const std::string& redis_version) {
    RunInfo info;
    info.library = larder::version;
    info.commit = larder::bench::build_commit();
    info.compiler = larder::bench::compiler();
    info.cpu = larder::bench::cpu_model();
    info.cores = std::thread::hardware_concurrency();
    info.redis = redis_version;
    return info;
}

std::string describe_run_info(const RunInfo& info) {
    std::string out = "larder " + info.library + " (commit " + info.commit + "), " + info.compiler +
                      ", " + info.cpu + ", " + std::to_string(info.cores) + " cores";
    if (!info.redis.empty()) out += ", Redis " + info.redis;
    return out;
}

std::string describe_workload(const Options& o, const std::string& backend) {
    std::ostringstream s;
    s << grouped(o.keys) << " keys, Zipf " << fmt("%.2f", o.skew) << ", "
      << fmt("%g", o.write_ratio * 100) << "% writes, " << o.value_size << " B values, "
      << o.threads << " threads in " << o.instances << " instance" << (o.instances > 1 ? "s" : "")
      << ", " << fmt("%g", o.duration_s) << " s";
    if (o.max_ops) s << " or " << grouped(o.max_ops) << " ops";
    s << " after " << fmt("%g", std::round(o.warmup_s * 10) / 10) << " s of warm-up";
    if (o.repeat > 1) s << ", " << o.repeat << " runs each (median and quartiles)";
    s << "; loader " << ms(o.loader_latency_ms) << " ms, DB write " << ms(o.write_latency_ms())
      << " ms";
    if (o.db_write_capacity > 0) s << " at most " << fmt("%g", o.db_write_capacity) << " rows/s";
    s << "; TTL " << o.ttl.count() << " ms";
    if (o.ttl_jitter.count() > 0) s << " + up to " << o.ttl_jitter.count() << " ms jitter";
    s << "; backend " << backend;
    return s.str();
}

std::string render_table(const std::vector<ConfigResult>& results, bool markdown) {
    const bool repeated = std::any_of(results.begin(), results.end(),
                                      [](const ConfigResult& c) { return c.runs.size() > 1; });
    std::vector<const Column*> shown_columns;
    for (const auto& c : columns) {
        if (repeated || !c.repeats) shown_columns.push_back(&c);
    }
    std::vector<std::vector<std::string>> rows;
    std::vector<std::string> head{"configuration"};
    for (const Column* c : shown_columns) head.emplace_back(c->title);
    rows.push_back(head);
    for (const auto& c : results) {
        const bool interrupted = std::any_of(c.runs.begin(), c.runs.end(),
                                             [](const RunResult& r) { return r.interrupted; });
        std::vector<std::string> row{c.runs.front().config + (interrupted ? " (interrupted)" : "")};
        for (const Column* col : shown_columns) row.push_back(col->cell(c));
        rows.push_back(row);
    }
    std::vector<std::size_t> width(head.size(), 0);
    for (const auto& row : rows) {
        for (std::size_t i = 0; i < row.size(); ++i) width[i] = std::max(width[i], row[i].size());
    }
    std::ostringstream out;
    for (std::size_t r = 0; r < rows.size(); ++r) {
        const auto& row = rows[r];
        for (std::size_t i = 0; i < row.size(); ++i) {
            const std::string pad(width[i] - row[i].size(), ' ');
            if (markdown) {
                out << (i == 0 ? "| " : " | ") << (i == 0 ? row[i] + pad : pad + row[i]);
            } else {
                out << (i == 0 ? "" : "  ") << (i == 0 ? row[i] + pad : pad + row[i]);
            }
        }
        out << (markdown ? " |\n" : "\n");
        if (markdown && r == 0) {
            for (std::size_t i = 0; i < row.size(); ++i) {
                out << (i == 0 ? "|" : "|") << std::string(width[i] + 1, '-')
                    << (i == 0 ? "-" : ":");
            }
            out << "|\n";
        }
    }
    bool any_notes = false;
    for (const auto& c : results) {
        for (std::size_t k = 0; k < c.runs.size(); ++k) {
            const RunResult& r = c.runs[k];
            if (r.notes.empty() && !r.wrong_values && !r.read_errors && !r.write_errors) continue;
            if (!any_notes) out << "\n";
            any_notes = true;
            const std::string who =
                (markdown ? "- " : "") + r.config +
                (c.runs.size() > 1 ? " (run " + std::to_string(k + 1) + ")" : "");
            for (const auto& n : r.notes) out << who << ": " << n << "\n";
            if (r.wrong_values || r.read_errors || r.write_errors) {
                out << who << ": " << r.read_errors << " read errors, " << r.write_errors
                    << " write errors, " << r.wrong_values << " wrong values\n";
            }
        }
    }
    return out.str();
}

std::string render_json(const Options& o, const std::string& backend, const RunInfo& info,
                        const std::vector<ConfigResult>& results) {
    using Json = nlohmann::ordered_json;
    Json meta{{"library_version", info.library}, {"commit", info.commit},
              {"compiler", info.compiler},       {"cpu", info.cpu},
              {"host_cores", info.cores},        {"redis_version", info.redis}};
    Json workload{{"keys", o.keys},
                  {"skew", o.skew},
                  {"write_ratio", o.write_ratio},
                  {"value_size", o.value_size},
                  {"threads", o.threads},
                  {"instances", o.instances},
                  {"duration_s", o.duration_s},
                  {"warmup_s", std::round(o.warmup_s * 10) / 10},
                  {"repeat", o.repeat},
                  {"max_ops", o.max_ops},
                  {"loader_latency_ms", o.loader_latency_ms},
                  {"db_write_latency_ms", o.write_latency_ms()},
                  {"db_write_capacity", o.db_write_capacity},
                  {"ttl_ms", o.ttl.count()},
                  {"ttl_jitter_ms", o.ttl_jitter.count()},
                  {"seed", o.seed}};
    // Dividing by a power of ten gives the double nearest the decimal: 0.6545, not
    // 0.6545000000000001.
    auto round = [](double v, double unit) {
        const double scale = std::round(1 / unit);
        return std::round(v * scale) / scale;
    };
    auto spread = [&](const Spread& x, double unit) {
        return Json{{"median", round(x.median, unit)},
                    {"q1", round(x.q1, unit)},
                    {"q3", round(x.q3, unit)}};
    };
    // One run's figures; the timeline only for the typical run (it is what the SVG draws).
    auto run_json = [&](const RunResult& r, bool with_timeline) {
        Json j{
            {"throughput_ops", round(r.throughput(), 0.1)},
            {"p50_us", round(r.read_latency.quantile_us(0.50), 0.01)},
            {"p99_us", round(r.read_latency.quantile_us(0.99), 0.01)},
            {"p999_us", round(r.read_latency.quantile_us(0.999), 0.01)},
            {"hit_ratio", round(r.hit_ratio(), 0.0001)},
            {"db_reads", r.db_reads},
            {"db_writes", r.db_writes},
            {"stale_reads", r.stale_reads},
            {"lost_writes", r.lost_writes},
            {"lost_rows", r.lost_rows},
            {"ops", r.ops},
            {"reads", r.reads},
            {"writes", r.writes},
            {"warmup_s", round(r.warmup_seconds, 0.001)},
            {"seconds", round(r.seconds, 0.001)},
            {"write_p50_us", round(r.write_latency.quantile_us(0.50), 0.01)},
            {"write_p99_us", round(r.write_latency.quantile_us(0.99), 0.01)},
            {"l1_hits", r.counts.l1_hits},
            {"cache_errors", r.counts.backend_errors},
            {"read_errors", r.read_errors},
            {"write_errors", r.write_errors},
            {"wrong_values", r.wrong_values},
            {"drain_s", round(r.drain_seconds, 0.001)},
            {"interrupted", r.interrupted},
            {"notes", r.notes},
        };
        if (!with_timeline) return j;
        Json t{{"t_s", Json::array()},
               {"ops_per_s", Json::array()},
               {"read_p99_us", Json::array()},
               {"db_reads_per_s", Json::array()},
               {"db_writes_per_s", Json::array()}};
        for (const auto& x : r.timeline) {
            t["t_s"].push_back(round(x.t_s, 0.001));
            t["ops_per_s"].push_back(round(x.ops_per_s, 1));
            t["read_p99_us"].push_back(round(x.read_p99_us, 0.1));
            t["db_reads_per_s"].push_back(round(x.db_reads_per_s, 1));
            t["db_writes_per_s"].push_back(round(x.db_writes_per_s, 1));
        }
        j["timeline"] = t;
        return j;
    };
    Json list = Json::array();
    for (const auto& c : results) {
        // The typical run's figures at the top level, then the spread over the runs, and
        // every run.
        Json entry{{"config", c.runs.front().config}};
        entry.update(run_json(c.typical(), true));
        entry["stale_reads_all_runs"] = total(c, &RunResult::stale_reads);
        entry["lost_writes_all_runs"] = total(c, &RunResult::lost_writes);
        entry["spread"] = Json{{"runs", c.runs.size()},
                               {"throughput_ops", spread(c.throughput(), 0.1)},
                               {"p99_us", spread(c.read_p99_us(), 0.01)}};
        Json runs = Json::array();
        for (const auto& r : c.runs) runs.push_back(run_json(r, false));
        entry["runs"] = runs;
        list.push_back(entry);
    }
    Json out{{"meta", meta}, {"workload", workload}, {"backend", backend}, {"results", list}};
    return out.dump() + "\n";  // one line: made for jq and scripts
}

std::string render_svg(const Options& o, const std::string& backend, const RunInfo& info,
                       const std::vector<ConfigResult>& configs) {
    // Each configuration's typical run (the median throughput of its repeats).
    std::vector<const RunResult*> results;
    for (const auto& c : configs) results.push_back(&c.typical());
    constexpr double width = 960, left = 80, right = 30, top = 86, panel = 230, gap = 80;
    constexpr double plot_w = width - left - right;
    const double legend_rows = static_cast<double>((results.size() + 2) / 3);
    const double height = top + 2 * panel + gap + 60 + 18 * legend_rows;

    // The time axis ends where the longest run ended, not at the next round tick.
    double t_top = 0.1, warmup = 0, lat_max = 0, db_max = 0;
    for (const RunResult* r : results) {
        t_top = std::max(t_top, r->warmup_seconds + r->seconds);
        warmup = std::max(warmup, r->warmup_seconds);
        for (const auto& x : r->timeline) {
            lat_max = std::max(lat_max, x.read_p99_us);
            db_max = std::max({db_max, x.db_reads_per_s, x.db_writes_per_s});
        }
    }
    const bool in_ms = lat_max >= 1000;
    const double lat_unit = in_ms ? 1000 : 1;
    const double lat_step = tick_step(lat_max / lat_unit);
    const double lat_top = std::max(lat_step, std::ceil(lat_max / lat_unit / lat_step) * lat_step);
    const double db_step = tick_step(db_max);
    const double db_top = std::max(db_step, std::ceil(db_max / db_step) * db_step);
    const double t_step = tick_step(t_top);

    std::ostringstream s;
    s << "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"" << width << "\" height=\"" << height
      << "\" viewBox=\"0 0 " << width << " " << height
      << "\" font-family=\"sans-serif\" font-size=\"12\">\n"
      << "<rect width=\"100%\" height=\"100%\" fill=\"white\"/>\n"
      << "<text x=\"" << left << "\" y=\"22\" font-size=\"15\" font-weight=\"bold\">larder-lab: "
      << xml(results.size() == 1 ? results.front()->config : "comparison") << "</text>\n";
    // The workload and what ran it, in lines of at most ~140 characters, broken after "; ".
    const std::string about = describe_workload(o, backend) + "; " + describe_run_info(info);
    double line_y = 40;
    for (std::size_t start = 0; start < about.size(); line_y += 15) {
        std::size_t end = about.size();
        if (end - start > 140) {
            const std::size_t cut = about.rfind("; ", start + 140);
            end = cut != std::string::npos && cut > start ? cut + 1 : start + 140;
        }
        s << "<text x=\"" << left << "\" y=\"" << line_y << "\" font-size=\"11\" fill=\"#444\">"
          << xml(about.substr(start, end - start)) << "</text>\n";
        start = end;
        while (start < about.size() && about[start] == ' ') ++start;
    }

    auto x_of = [&](double t) { return left + plot_w * t / t_top; };
    auto draw_panel = [&](double y0, const std::string& title, double y_top, double y_step,
                          auto&& value, double unit, bool with_writes) {
        auto y_of = [&](double v) {
            return y0 + panel - panel * std::min(v / unit, y_top) / y_top;
        };
        auto clip_x = [&](double t) { return std::min(x_of(t), left + plot_w); };
        s << "<text x=\"" << left << "\" y=\"" << y0 - 8 << "\" font-weight=\"bold\">" << xml(title)
          << "</text>\n";
        // grid and y ticks
        for (double v = 0; v <= y_top + y_step / 2; v += y_step) {
            const double y = y0 + panel - panel * v / y_top;
            s << "<line x1=\"" << left << "\" y1=\"" << y << "\" x2=\"" << left + plot_w
              << "\" y2=\"" << y << "\" stroke=\"#e4e4e4\"/>\n"
              << "<text x=\"" << left - 6 << "\" y=\"" << y + 4 << "\" text-anchor=\"end\">"
              << tick_label(v) << "</text>\n";
        }
        // the warm-up, not measured
        if (warmup > 0) {
            s << "<rect x=\"" << left << "\" y=\"" << y0 << "\" width=\"" << x_of(warmup) - left
              << "\" height=\"" << panel << "\" fill=\"#000\" fill-opacity=\"0.05\"/>\n"
              << "<text x=\"" << left + 3 << "\" y=\"" << y0 + panel - 6
              << "\" fill=\"#777\" font-size=\"10\">warm-up (not measured)</text>\n";
        }
        // x ticks, none past the end of the run
        for (double t = 0; t <= t_top * (1 + 1e-9); t += t_step) {
            s << "<line x1=\"" << x_of(t) << "\" y1=\"" << y0 + panel << "\" x2=\"" << x_of(t)
              << "\" y2=\"" << y0 + panel + 5 << "\" stroke=\"#333\"/>\n"
              << "<text x=\"" << x_of(t) << "\" y=\"" << y0 + panel + 18
              << "\" text-anchor=\"middle\">" << fmt("%g", t) << "</text>\n";
        }
        // TTL marks: where entries filled at the start would expire
        const double ttl_s = static_cast<double>(o.ttl.count()) / 1000;
        for (double t = ttl_s; ttl_s > 0 && t < t_top && t / ttl_s < 50; t += ttl_s) {
            s << "<line x1=\"" << x_of(t) << "\" y1=\"" << y0 << "\" x2=\"" << x_of(t) << "\" y2=\""
              << y0 + panel << "\" stroke=\"#999\" stroke-dasharray=\"2,4\"/>\n"
              << "<text x=\"" << x_of(t) + 3 << "\" y=\"" << y0 + 12
              << "\" fill=\"#777\" font-size=\"10\">TTL</text>\n";
        }
        // axes
        s << "<line x1=\"" << left << "\" y1=\"" << y0 << "\" x2=\"" << left << "\" y2=\""
          << y0 + panel << "\" stroke=\"#333\"/>\n"
          << "<line x1=\"" << left << "\" y1=\"" << y0 + panel << "\" x2=\"" << left + plot_w
          << "\" y2=\"" << y0 + panel << "\" stroke=\"#333\"/>\n"
          << "<text x=\"" << left + plot_w / 2 << "\" y=\"" << y0 + panel + 34
          << "\" text-anchor=\"middle\" fill=\"#444\">time (s)</text>\n";
        for (std::size_t i = 0; i < results.size(); ++i) {
            const char* color = palette[i % std::size(palette)];
            for (int series = 0; series < (with_writes ? 2 : 1); ++series) {
                s << "<polyline fill=\"none\" stroke=\"" << color << "\" stroke-width=\"1.5\""
                  << (series == 1 ? " stroke-dasharray=\"5,3\"" : "") << " points=\"";
                for (const auto& x : results[i]->timeline) {
                    const double v = series == 0 ? value(x) : x.db_writes_per_s;
                    s << fmt("%.1f", clip_x(x.t_s)) << "," << fmt("%.1f", y_of(v)) << " ";
                }
                s << "\"/>\n";
            }
        }
    };

    draw_panel(
        top, std::string("p99 read latency per 100 ms (") + (in_ms ? "ms" : "us") + ")", lat_top,
        lat_step, [](const Sample& x) { return x.read_p99_us; }, lat_unit, false);
    draw_panel(
        top + panel + gap, "database load: reads/s (solid), rows written/s (dashed)", db_top,
        db_step, [](const Sample& x) { return x.db_reads_per_s; }, 1.0, true);

    // legend
    const double legend_y = top + 2 * panel + gap + 52;
    for (std::size_t i = 0; i < results.size(); ++i) {
        const double x = left + static_cast<double>(i % 3) * (plot_w / 3);
        const double y = legend_y + 18 * static_cast<double>(i / 3);
        s << "<line x1=\"" << x << "\" y1=\"" << y - 4 << "\" x2=\"" << x + 24 << "\" y2=\""
          << y - 4 << "\" stroke=\"" << palette[i % std::size(palette)]
          << "\" stroke-width=\"3\"/>\n"
          << "<text x=\"" << x + 30 << "\" y=\"" << y << "\">" << xml(results[i]->config)
          << "</text>\n";
    }
    s << "</svg>\n";
    return s.str();
}

}  // namespace lab
