// larder-lab: measure caching strategies on your workload instead of arguing about them.
//
//   larder-lab [--config SPEC | --compare SPEC,SPEC,...] [--backend memory|redis|URL]
//              [workload flags] [--json | --markdown] [--svg FILE]
//
// Runs each configuration (policy x guard x invalidator x L1) on the same synthetic
// workload against a fake database that stamps a version into every value, and prints
// throughput, read latency, hit ratio, database load, stale reads and lost writes.
// See docs/lab.md; `larder-lab --help` and `larder-lab --list` for the details.
#include <signal.h>
#include <unistd.h>

#include <cerrno>
#include <charconv>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <iostream>
#include <optional>
#include <sstream>
#include <string>
#include <string_view>
#include <vector>

#include <larder/core/error.hpp>
#if defined(LARDER_LAB_HAVE_REDIS)
#include "redis_tools.hpp"
#endif
#include "cli.hpp"
#include "lab.hpp"

namespace lab {
namespace {

// ---- flags ----------------------------------------------------------------------------

std::uint64_t whole(std::string_view flag, std::string_view v, std::uint64_t lo, std::uint64_t hi) {
    std::uint64_t out = 0;
    const auto [end, ec] = std::from_chars(v.data(), v.data() + v.size(), out);
    if (v.empty() || ec != std::errc{} || end != v.data() + v.size() || out < lo || out > hi) {
        throw UsageError(std::string(flag) + ": expected a whole number from " +
                         std::to_string(lo) + " to " + std::to_string(hi) + ", got " +
                         shown(v, number_chars));
    }
    return out;
}

double number(std::string_view flag, std::string_view v, double lo, double hi) {
    const std::string s(v);
    char* end = nullptr;
    errno = 0;
    const double out = std::strtod(s.c_str(), &end);
    if (s.empty() || end != s.c_str() + s.size() || errno != 0 || !(out >= lo && out <= hi)) {
        std::ostringstream range;
        range << lo << " to " << hi;
        throw UsageError(std::string(flag) + ": expected a number from " + range.str() + ", got " +
                         shown(s, number_chars));
    }
    return out;
}

Millis millis(std::string_view flag, std::string_view v, std::uint64_t lo, std::uint64_t hi) {
    return Millis{static_cast<Millis::rep>(whole(flag, v, lo, hi))};
}

std::vector<std::string> split_commas(std::string_view flag, std::string_view v) {
    std::vector<std::string> out;
    for (std::size_t start = 0;;) {
        const std::size_t comma = v.find(',', start);
        const auto part = v.substr(start, comma == std::string_view::npos ? comma : comma - start);
        if (part.empty()) {
            throw UsageError(std::string(flag) + ": an empty configuration in " +
                             shown(v, word_chars) + " (write e.g. cache-aside,cache-aside+lock)");
        }
        out.emplace_back(part);
        if (comma == std::string_view::npos) break;
        start = comma + 1;
    }
    return out;
}

struct Cli {
    Options options;
    bool help = false;
    bool list = false;
    bool markdown = false;
    bool config_given = false;
    bool compare_given = false;
};

struct Flag {
    std::string_view name;
    std::string_view value;  ///< empty: a switch
    std::string_view help;
    void (*apply)(Cli&, std::string_view flag, std::string_view value);
};

constexpr std::uint64_t max_keys = 10'000'000;

const Flag flags[] = {
    // what to run
    {"--config", "SPEC", "the configuration to run (default cache-aside); see --list",
     [](Cli& c, auto, auto v) {
         c.options.configs = {std::string(v)};
         c.config_given = true;
     }},
    {"--compare", "A,B,...", "run several configurations on the same workload, side by side",
     [](Cli& c, auto f, auto v) {
         c.options.configs = split_commas(f, v);
         c.compare_given = true;
     }},
    {"--backend", "memory|redis|URL",
     "the cache store: memory (default), redis (a private redis-server this program starts "
     "and stops), or redis://[user:pass@]host:port[/db] / unix:///path (an existing one)",
     [](Cli& c, auto f, auto v) {
         if (v == "memory") {
             c.options.backend = BackendKind::memory;
             c.options.redis_url.clear();
             return;
         }
#if defined(LARDER_LAB_HAVE_REDIS)
         c.options.backend = BackendKind::redis;
         if (v == "redis") {
             c.options.redis_url.clear();
             return;
         }
         if (v.starts_with("redis://") || v.starts_with("unix://")) {
             try {
                 (void)larder::RedisOptions::from_url(v);
             } catch (const larder::ConfigError& e) {
                 throw UsageError(std::string(f) + ": " + e.what());
             }
             c.options.redis_url = std::string(v);
             return;
         }
         throw UsageError(std::string(f) +
                          ": expected memory, redis, or a redis:// or unix:// URL, got " +
                          shown(v, word_chars));
#else
         throw UsageError(std::string(f) + " " + shown(v, word_chars) +
                          ": this larder-lab was built without hiredis; only memory is available");
#endif
     }},
    {"--list", "", "print the configurations and exit", [](Cli& c, auto, auto) { c.list = true; }},
    // the workload
    {"--keys", "N", "rows in the database (default 10000)",
     [](Cli& c, auto f, auto v) { c.options.keys = whole(f, v, 1, max_keys); }},
    {"--skew", "S", "Zipf skew of the keys read and written; 0 is uniform (default 0.99)",
     [](Cli& c, auto f, auto v) { c.options.skew = number(f, v, 0, 5); }},
    {"--write-ratio", "R", "fraction of operations that are writes, 0 to 1 (default 0.05)",
     [](Cli& c, auto f, auto v) { c.options.write_ratio = number(f, v, 0, 1); }},
    {"--value-size", "BYTES", "size of every value (default 256)",
     [](Cli& c, auto f, auto v) { c.options.value_size = whole(f, v, 1, 1 << 20); }},
    {"--threads", "N", "worker threads (default 8)",
     [](Cli& c, auto f, auto v) { c.options.threads = whole(f, v, 1, 256); }},
    {"--instances", "N",
     "application instances simulated in this process, each with its own policy object, "
     "single-flight and L1; threads are spread over them (default 4)",
     [](Cli& c, auto f, auto v) { c.options.instances = whole(f, v, 1, 64); }},
    {"--duration", "SECONDS", "length of each run, after its warm-up (default 5, at most 3600)",
     [](Cli& c, auto f, auto v) { c.options.duration_s = number(f, v, 0.1, 3600); }},
    {"--warmup", "SECONDS",
     "run this long first and leave it out of throughput, latency, hit ratio and database "
     "load (stale reads and lost writes still count); whole tenths (default 1, 0 for none)",
     [](Cli& c, auto f, auto v) { c.options.warmup_s = number(f, v, 0, 600); }},
    {"--repeat", "N",
     "run each configuration N times, interleaved (A B A B ...), and report the median and "
     "quartiles of throughput and p99 (default 1)",
     [](Cli& c, auto f, auto v) { c.options.repeat = whole(f, v, 1, 100); }},
    {"--ops", "N", "stop each run after N operations (if the duration is not up first)",
     [](Cli& c, auto f, auto v) { c.options.max_ops = whole(f, v, 1, 1'000'000'000'000); }},
    {"--loader-latency-ms", "MS", "time the database takes to answer a read (default 2)",
     [](Cli& c, auto f, auto v) { c.options.loader_latency_ms = number(f, v, 0, 10'000); }},
    {"--db-write-latency-ms", "MS", "time a database write takes (default: the loader latency)",
     [](Cli& c, auto f, auto v) { c.options.db_write_latency_ms = number(f, v, 0, 10'000); }},
    {"--db-write-capacity", "ROWS_PER_S",
     "rows per second the database can write (a token bucket); 0 is unlimited (default 0)",
     [](Cli& c, auto f, auto v) { c.options.db_write_capacity = number(f, v, 0, 1e9); }},
    {"--seed", "N", "seed of the key and operation sequence (default 42)",
     [](Cli& c, auto f, auto v) { c.options.seed = whole(f, v, 0, ~std::uint64_t{0}); }},
    // the cache
    {"--ttl-ms", "MS", "time to live of cached values (default 30000)",
     [](Cli& c, auto f, auto v) { c.options.ttl = millis(f, v, 1, 86'400'000); }},
    {"--ttl-jitter-ms", "MS", "up to this much random extra TTL per entry (default 0)",
     [](Cli& c, auto f, auto v) { c.options.ttl_jitter = millis(f, v, 0, 86'400'000); }},
    {"--l1-ttl-ms", "MS", "the L1's own TTL (default: the TTL, at most 1000)",
     [](Cli& c, auto f, auto v) { c.options.l1_ttl = millis(f, v, 1, 86'400'000); }},
    {"--l1-entries", "N", "entries the L1 of each instance holds (default 10000)",
     [](Cli& c, auto f, auto v) { c.options.l1_entries = whole(f, v, 1, max_keys); }},
    {"--xfetch-beta", "B", "XFetch's beta: > 1 refreshes earlier (default 1)",
     [](Cli& c, auto f, auto v) { c.options.xfetch_beta = number(f, v, 0, 100); }},
    {"--lock-wait-ms", "MS", "longest a Lock waiter waits for the loader (default 2000)",
     [](Cli& c, auto f, auto v) { c.options.lock_wait = millis(f, v, 1, 600'000); }},
    {"--flush-interval-ms", "MS", "how often write-behind flushers run (default 100)",
     [](Cli& c, auto f, auto v) { c.options.flush_interval = millis(f, v, 1, 600'000); }},
    {"--drain-timeout-ms", "MS",
     "longest the final write-behind flush may take before what is left counts as lost "
     "(default 10000)",
     [](Cli& c, auto f, auto v) { c.options.drain_timeout = millis(f, v, 0, 600'000); }},
    // output
    {"--json", "", "print one JSON object instead of the table",
     [](Cli& c, auto, auto) { c.options.json = true; }},
    {"--markdown", "", "print the table as Markdown",
     [](Cli& c, auto, auto) { c.markdown = true; }},
    {"--svg", "FILE", "draw read latency and database load over time into FILE",
     [](Cli& c, auto, auto v) { c.options.svg_path = std::string(v); }},
    {"--quiet", "", "no progress on stderr",
     [](Cli& c, auto, auto) { c.options.progress = false; }},
    {"--help", "", "this text", [](Cli& c, auto, auto) { c.help = true; }},
};

std::string usage() {
    std::ostringstream out;
    out << "usage: larder-lab [--config SPEC | --compare SPEC,SPEC,...] [--backend "
           "memory|redis|URL]\n"
           "                  [workload and cache flags] [--json | --markdown] [--svg FILE]\n\n"
           "Runs caching configurations on a synthetic workload against a fake database and\n"
           "prints throughput, read latency, hit ratio, database load, stale reads and lost\n"
           "writes. Progress goes to stderr, results to stdout.\n\n"
           "SPEC is a policy and components joined with '+':\n"
           "  policy       cache-aside | write-through | write-behind | naive (the\n"
           "               hand-written baseline, with no components)\n"
           "  guard        lock | xfetch            (none, either, or both)\n"
           "  invalidator  event | tags | versions | ttl   (cache-aside only; default event)\n"
           "  l1           an in-process L1 (larder::Near) in front of the policy\n"
           "  e.g. cache-aside, cache-aside+lock, cache-aside+xfetch+lock, cache-aside+tags+l1,\n"
           "       write-through+lock, write-behind. --list prints them all.\n\nflags:\n";
    for (const auto& f : flags) {
        std::string head = "  " + std::string(f.name);
        if (!f.value.empty()) head += " " + std::string(f.value);
        out << head;
        // wrap the help text at 96 columns, indented under the flag
        const std::size_t indent = 30;
        std::size_t col = head.size();
        if (col + 2 > indent) {
            out << "\n";
            col = 0;
        }
        out << std::string(indent - col, ' ');
        col = indent;
        std::istringstream words{std::string(f.help)};
        bool first = true;
        for (std::string w; words >> w;) {
            if (!first && col + 1 + w.size() > 96) {
                out << "\n" << std::string(indent, ' ');
                col = indent;
                first = true;
            }
            out << (first ? "" : " ") << w;
            col += w.size() + (first ? 0 : 1);
            first = false;
        }
        out << "\n";
    }
    out << "\nExit status: 0 done, 1 a run failed, 2 bad arguments or setup, 130 interrupted.\n";
    return out.str();
}

Cli parse(int argc, char** argv) {
    Cli cli;
    CLI::App app("larder-lab", "larder-lab");
    configure(app);
    for (const Flag& f : flags) {
        const std::string names = f.name == "--help" ? "-h,--help" : std::string(f.name);
        if (f.value.empty()) {
            add_switch(
                app, names, [&cli, &f] { f.apply(cli, f.name, {}); }, std::string(f.help));
        } else {
            app.add_option_function<std::string>(
                   names, [&cli, &f](const std::string& v) { f.apply(cli, f.name, v); },
                   std::string(f.help))
                ->type_name(std::string(f.value));
        }
    }
    parse_flags(app, argc, argv, "a Redis URL goes after --backend");
    const Options& o = cli.options;
    if (cli.config_given && cli.compare_given) {
        throw UsageError("--config and --compare: give one of them");
    }
    if (o.instances > o.threads) {
        throw UsageError("--instances " + std::to_string(o.instances) + " is more than --threads " +
                         std::to_string(o.threads) + ": every instance needs a thread");
    }
    if (o.json && cli.markdown) throw UsageError("--json and --markdown: give one of them");
    return cli;
}

std::string backend_label(const Options& o, const std::string& url) {
    if (o.backend == BackendKind::memory) return "memory";
#if defined(LARDER_LAB_HAVE_REDIS)
    const auto r = larder::RedisOptions::from_url(url);  // never print a password
    const std::string where =
        r.unix_socket.empty() ? r.host + ":" + std::to_string(r.port) : r.unix_socket;
    return std::string(o.redis_url.empty() ? "redis (private redis-server on " : "redis (") +
           where + (r.db ? "/" + std::to_string(r.db) : "") + ")";
#else
    (void)url;
    return "redis";
#endif
}

extern "C" void on_signal(int) {
    interrupted.store(true);
}

void install_signals() {
    struct sigaction sa {};
    sa.sa_handler = on_signal;
    sigemptyset(&sa.sa_mask);
    sa.sa_flags = SA_RESETHAND;  // a second Ctrl-C ends the program at once
    sigaction(SIGINT, &sa, nullptr);
    sigaction(SIGTERM, &sa, nullptr);
    struct sigaction ignore {};
    ignore.sa_handler = SIG_IGN;
    sigemptyset(&ignore.sa_mask);
    sigaction(SIGPIPE, &ignore, nullptr);
}

int run(const Cli& cli) {
    const Options& o = cli.options;
    std::vector<Spec> specs;
    for (const auto& text : o.configs) specs.push_back(parse_spec(text));

    install_signals();
    const Zipf zipf(o.keys, o.skew);
    std::string url = o.redis_url;
#if defined(LARDER_LAB_HAVE_REDIS)
    std::optional<PrivateRedis> server;
    if (o.backend == BackendKind::redis) {
        if (url.empty()) {
            server.emplace();
            url = server->url();
        }
        check_redis(url);
    }
#endif
    const std::string backend = backend_label(o, url);
    std::string redis_server_version;
#if defined(LARDER_LAB_HAVE_REDIS)
    if (o.backend == BackendKind::redis) redis_server_version = redis_version(url);
#endif
    const RunInfo info = run_info(redis_server_version);
    Progress progress(o.progress);
    if (o.progress) {
        std::fprintf(stderr, "larder-lab: %s\n", describe_workload(o, backend).c_str());
    }

    // Repeats interleaved (A B, A B, ...): drift in the machine lands on every
    // configuration alike. Each run starts over on a fresh store and database.
    std::vector<ConfigResult> results(specs.size());
    const std::size_t runs = specs.size() * o.repeat;
    for (std::size_t n = 0; n < runs && !interrupted.load(); ++n) {
        const std::size_t i = n % specs.size();
        const Target target{
            o.backend, url,
            "larder-lab:" + std::to_string(::getpid()) + ":" + std::to_string(n) + ":"};
        results[i].runs.push_back(run_config(o, specs[i], zipf, target, progress, n, runs));
#if defined(LARDER_LAB_HAVE_REDIS)
        if (o.backend == BackendKind::redis) delete_keys(url, target.key_prefix);
#endif
    }
    std::erase_if(results, [](const ConfigResult& r) { return r.runs.empty(); });

    if (o.json) {
        std::cout << render_json(o, backend, info, results);
    } else {
        std::cout << "\n"
                  << describe_workload(o, backend) << "\n"
                  << describe_run_info(info) << "\n\n"
                  << render_table(results, cli.markdown);
    }
    std::cout.flush();
    if (!o.svg_path.empty() && !results.empty()) {
        std::ofstream out(o.svg_path, std::ios::binary | std::ios::trunc);
        out << render_svg(o, backend, info, results);
        out.close();
        if (!out) {
            std::fprintf(stderr, "larder-lab: cannot write %s: %s\n", o.svg_path.c_str(),
                         std::strerror(errno));
            return 1;
        }
        if (o.progress) std::fprintf(stderr, "larder-lab: wrote %s\n", o.svg_path.c_str());
    }
    return interrupted.load() ? 130 : 0;
}

}  // namespace
}  // namespace lab

int main(int argc, char** argv) {
    lab::Cli cli;
    try {
        cli = lab::parse(argc, argv);
        if (cli.help) {
            std::cout << lab::usage();
            return 0;
        }
        if (cli.list) {
            std::cout << lab::describe_configurations();
            return 0;
        }
        for (const auto& text : cli.options.configs) (void)lab::parse_spec(text);
    } catch (const lab::UsageError& e) {
        std::cerr << "larder-lab: " << e.what() << "\n(larder-lab --help lists the flags)\n";
        return 2;
    }
    try {
        return lab::run(cli);
    } catch (const lab::UsageError& e) {
        std::cerr << "larder-lab: " << e.what() << "\n";
        return 2;
    } catch (const std::exception& e) {
        std::cerr << "\nlarder-lab: error: " << e.what() << "\n";
        return 1;
    }
}
