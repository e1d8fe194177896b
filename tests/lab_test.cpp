// larder-lab's reports: the metadata, warm-up and spread every report carries, the naive
// baseline, and an SVG whose time axis ends with the run. Runs the binary the build made,
// on the memory backend.
#if defined(LARDER_TEST_LARDER_LAB) && defined(LARDER_TEST_HAVE_JSON)

#include <larder/version.hpp>
#include <nlohmann/json.hpp>

#include <unistd.h>
#include <cstdio>
#include <fstream>
#include <regex>
#include <sstream>
#include <string>
#include <vector>

#include "support/catch.hpp"
#include "support/larder_lab.hpp"

using larder::test::run_lab;
using Json = nlohmann::json;

namespace {

/// The last line of the output that parses as a JSON object (progress goes to stderr,
/// which run_lab joins in).
Json json_of(const std::string& output) {
    std::istringstream lines(output);
    Json found;
    for (std::string line; std::getline(lines, line);) {
        if (line.empty() || line.front() != '{') continue;
        found = Json::parse(line, nullptr, false);
    }
    REQUIRE(found.is_object());
    return found;
}

}  // namespace

TEST_CASE("larder-lab --json carries the build, the machine, the warm-up and the spread", "[lab]") {
    const auto run = run_lab({"--compare", "naive,cache-aside", "--keys", "200", "--duration",
                              "0.3", "--warmup", "0.2", "--repeat", "3", "--json", "--quiet"});
    REQUIRE(run.status == 0);
    const Json j = json_of(run.output);

    const Json& meta = j.at("meta");
    CHECK(meta.at("library_version") == LARDER_VERSION_STRING);
    CHECK_FALSE(meta.at("commit").get<std::string>().empty());
    CHECK_FALSE(meta.at("compiler").get<std::string>().empty());
    CHECK(meta.at("host_cores").get<unsigned>() > 0);
    CHECK(meta.at("redis_version") == "");  // the memory backend
    CHECK(j.at("workload").at("warmup_s") == 0.2);
    CHECK(j.at("workload").at("repeat") == 3);

    REQUIRE(j.at("results").size() == 2);
    CHECK(j.at("results")[0].at("config") == "naive");
    for (const Json& r : j.at("results")) {
        INFO(r.at("config"));
        const Json& spread = r.at("spread");
        CHECK(spread.at("runs") == 3);
        CHECK(r.at("runs").size() == 3);
        const Json& ops = spread.at("throughput_ops");
        CHECK(ops.at("q1").get<double>() <= ops.at("median").get<double>());
        CHECK(ops.at("median").get<double>() <= ops.at("q3").get<double>());
        CHECK(ops.at("median").get<double>() > 0);
        for (const Json& one : r.at("runs")) {
            CHECK(one.at("warmup_s").get<double>() >= 0.2);
            CHECK(one.at("seconds").get<double>() >= 0.3);
            CHECK(one.at("reads").get<std::uint64_t>() + one.at("writes").get<std::uint64_t>() ==
                  one.at("ops").get<std::uint64_t>());
        }
        // The typical run's figures sit at the top level: its throughput is the median.
        CHECK(r.at("throughput_ops") == ops.at("median"));
    }
}

// 100 rows read uniformly by 8 threads, no writes: the warm-up loads every row, so what is
// measured after it is all hits. Without a warm-up the loads are counted.
TEST_CASE("larder-lab leaves the warm-up out of hit ratio and database reads", "[lab]") {
    const std::vector<std::string> workload{
        "--config",      "cache-aside", "--keys",     "100", "--skew", "0",
        "--write-ratio", "0",           "--duration", "0.3", "--json", "--quiet"};
    auto with = [&](const char* warmup) {
        auto args = workload;
        args.insert(args.end(), {"--warmup", warmup});
        const auto run = run_lab(args);
        REQUIRE(run.status == 0);
        return json_of(run.output).at("results").at(0);
    };
    const Json warmed = with("0.5");
    CHECK(warmed.at("db_reads") == 0);
    CHECK(warmed.at("hit_ratio") == 1.0);
    // The warm-up ran, and loaded: its slices are on the timeline.
    const Json& t = warmed.at("timeline");
    REQUIRE(t.at("t_s").size() > 0);
    CHECK(t.at("t_s")[0].get<double>() <= 0.1 + 1e-9);
    CHECK(t.at("db_reads_per_s")[0].get<double>() > 0);

    const Json cold = with("0");
    CHECK(cold.at("db_reads").get<std::uint64_t>() >= 100);
    CHECK(cold.at("hit_ratio").get<double>() < 1.0);
}

TEST_CASE("larder-lab's SVG time axis ends where the run ended", "[lab]") {
    char path[] = "/tmp/larder-lab-test-XXXXXX.svg";
    const int fd = mkstemps(path, 4);
    REQUIRE(fd >= 0);
    close(fd);
    const auto run = run_lab({"--compare", "naive,cache-aside", "--keys", "200", "--duration",
                              "0.6", "--warmup", "0.3", "--json", "--quiet", "--svg", path});
    REQUIRE(run.status == 0);
    const Json j = json_of(run.output);
    double end_s = 0;
    for (const Json& r : j.at("results")) {
        end_s = std::max(end_s, r.at("warmup_s").get<double>() + r.at("seconds").get<double>());
        // Whole 100 ms slices only: none past the end of its run.
        for (const Json& t : r.at("timeline").at("t_s")) {
            CHECK(t.get<double>() <=
                  r.at("warmup_s").get<double>() + r.at("seconds").get<double>() + 1e-6);
        }
    }
    std::ifstream in(path);
    const std::string svg((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
    std::remove(path);
    CHECK(svg.find("warm-up (not measured)") != std::string::npos);
    // Time ticks are the labels centred under the axis; none is past the end of the run.
    const std::regex tick(R"re(text-anchor="middle">([0-9.]+)</text>)re");
    int ticks = 0;
    for (std::sregex_iterator it(svg.begin(), svg.end(), tick), end; it != end; ++it) {
        ++ticks;
        CHECK(std::stod((*it)[1]) <= end_s + 1e-6);
    }
    CHECK(ticks > 0);
}

TEST_CASE("larder-lab's naive baseline takes no components", "[lab]") {
    const auto run = run_lab({"--config", "naive+lock"});
    CHECK(run.status == 2);
    CHECK(run.output.find("naive takes no components") != std::string::npos);
}

#endif
