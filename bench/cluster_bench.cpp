// Redis Cluster: larder's RedisClusterBackend against the hiredis code a user would write by
// hand for the same reads on the same cluster: one redisContext per primary, each key routed
// by its slot, every node's pipeline sent before any reply is read. Both sides send the same
// commands (GET + PTTL per key), so the ratio is the cost of larder's routing, pools,
// breakers and decoding. Interleaved A/B windows (bench/support/report.hpp), one thread.
//
//   cluster_bench [--rounds N]      (default 20 rounds of 2 x 100 ms per comparison)
//
// Starts its own cluster of three primaries on loopback (tests/support/redis_cluster.hpp)
// and stops it at the end.

#include <benchmark/benchmark.h>
#include <hiredis/hiredis.h>

#include <array>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <memory>
#include <optional>
#include <span>
#include <stdexcept>
#include <string>
#include <vector>

#include "../tests/support/redis_cluster.hpp"
#include "larder/backend/redis_cluster.hpp"
#include "larder/larder.hpp"
#include "support/report.hpp"

namespace {

using larder::RedisClusterBackend;

/// The hand-written client: a context per primary, a slot -> node table read once.
class HandRoutedCluster {
public:
    explicit HandRoutedCluster(larder::test::RedisCluster& cluster) {
        for (std::size_t i = 0; i < cluster.size(); ++i) {
            const timeval timeout{1, 0};
            redisContext* c = redisConnectWithTimeout(cluster.node(i).host().c_str(),
                                                      cluster.node(i).port(), timeout);
            if (c == nullptr || c->err != 0) throw std::runtime_error("peer: cannot connect");
            contexts_.push_back(c);
            ports_.push_back(cluster.node(i).port());
        }
        auto* slots = static_cast<redisReply*>(redisCommand(contexts_[0], "CLUSTER SLOTS"));
        if (slots == nullptr || slots->type != REDIS_REPLY_ARRAY) {
            throw std::runtime_error("peer: CLUSTER SLOTS failed");
        }
        for (std::size_t r = 0; r < slots->elements; ++r) {
            const redisReply* range = slots->element[r];
            const auto port = static_cast<int>(range->element[2]->element[1]->integer);
            std::size_t node = 0;
            while (ports_[node] != port) ++node;
            for (long long s = range->element[0]->integer; s <= range->element[1]->integer; ++s) {
                node_of_slot_[static_cast<std::size_t>(s)] = static_cast<std::uint8_t>(node);
            }
        }
        freeReplyObject(slots);
    }
    HandRoutedCluster(const HandRoutedCluster&) = delete;
    HandRoutedCluster& operator=(const HandRoutedCluster&) = delete;
    ~HandRoutedCluster() {
        for (redisContext* c : contexts_) redisFree(c);
    }

    /// GET + PTTL per key, appended to each key's node, then every reply read, values
    /// copied out in the caller's order.
    std::size_t read(std::span<const std::string> keys, std::vector<std::string>& out) {
        out.assign(keys.size(), std::string());
        order_.clear();
        for (std::size_t i = 0; i < keys.size(); ++i) {
            const std::string& k = keys[i];
            const std::uint8_t node = node_of_slot_[larder::keys::slot(k)];
            const char* get_argv[2] = {"GET", k.data()};
            const char* pttl_argv[2] = {"PTTL", k.data()};
            const std::size_t get_lens[2] = {3, k.size()};
            const std::size_t pttl_lens[2] = {4, k.size()};
            redisAppendCommandArgv(contexts_[node], 2, get_argv, get_lens);
            redisAppendCommandArgv(contexts_[node], 2, pttl_argv, pttl_lens);
            order_.push_back(node);
        }
        // Flush every node's buffer before reading from any.
        for (std::size_t n = 0; n < contexts_.size(); ++n) {
            int done = 0;
            while (!done) {
                if (redisBufferWrite(contexts_[n], &done) != REDIS_OK) {
                    throw std::runtime_error("peer: write failed");
                }
            }
        }
        std::size_t found = 0;
        for (std::size_t i = 0; i < keys.size(); ++i) {
            void* value = nullptr;
            void* ttl = nullptr;
            redisContext* c = contexts_[order_[i]];
            if (redisGetReply(c, &value) != REDIS_OK || redisGetReply(c, &ttl) != REDIS_OK) {
                throw std::runtime_error("peer: read failed");
            }
            const auto* v = static_cast<redisReply*>(value);
            if (v->type == REDIS_REPLY_STRING) {
                out[i].assign(v->str, v->len);
                ++found;
            }
            freeReplyObject(value);
            freeReplyObject(ttl);
        }
        return found;
    }

private:
    std::vector<redisContext*> contexts_;
    std::vector<int> ports_;
    std::array<std::uint8_t, larder::cluster_slot_count> node_of_slot_{};
    std::vector<std::uint8_t> order_;
};

int rounds_from(int argc, char** argv) {
    for (int i = 1; i + 1 < argc; ++i) {
        if (std::strcmp(argv[i], "--rounds") == 0) return std::max(2, std::atoi(argv[i + 1]));
    }
    return 20;
}

}  // namespace

int main(int argc, char** argv) {
    const int rounds = rounds_from(argc, argv);
    larder::test::RedisCluster cluster(3);
    larder::RedisClusterOptions o;
    for (const auto& [host, port] : cluster.addresses()) o.seeds.push_back({host, port, ""});
    o.node.command_timeout = std::chrono::seconds(1);
    o.node.pool_wait_timeout = std::chrono::seconds(1);
    RedisClusterBackend backend(o);
    HandRoutedCluster peer(cluster);

    const std::string value(200, 'v');
    std::vector<std::string> batch;
    for (int i = 0; i < 100; ++i) batch.push_back("user:" + std::to_string(100000 + i));
    for (const auto& k : batch) backend.set(k, value, std::chrono::hours(1));

    // The tagged hit: an entry and its tag version, on two different primaries.
    using Cache = larder::CacheAside<std::string, RedisClusterBackend>;
    Cache cache(backend, {.ttl = std::chrono::hours(1)});
    std::string entry;
    std::string tag;
    for (int i = 0; entry.empty() || tag.empty(); ++i) {
        const std::string k = "profile:" + std::to_string(i);
        const std::string t = "team:" + std::to_string(i);
        if (cluster.owner_of(cache.full_key(k)) != cluster.owner_of(cache.tag_key(t))) {
            entry = k;
            tag = t;
        }
    }
    const std::vector<std::string> tags{tag};
    std::uint64_t loads = 0;
    auto loader = [&] {
        ++loads;
        return std::optional<std::string>(value);
    };
    (void)cache.get(entry, tags, loader);
    const std::vector<std::string> tagged_keys{cache.full_key(entry), cache.tag_key(tag)};

    std::printf("cluster of 3 primaries on loopback (private, started by this program); %s\n",
                larder::bench::machine_description().c_str());
    std::vector<std::string> out;
    auto pair = [&](const std::function<void(int)>& hand, const std::function<void(int)>& lib) {
        return larder::bench::run_paired(1, rounds, std::chrono::milliseconds(100), hand, lib);
    };
    const auto many = pair([&](int) { benchmark::DoNotOptimize(peer.read(batch, out)); },
                           [&](int) { benchmark::DoNotOptimize(backend.get_many(batch)); });
    const auto tagged =
        pair([&](int) { benchmark::DoNotOptimize(peer.read(tagged_keys, out)); },
             [&](int) { benchmark::DoNotOptimize(cache.get(entry, tags, loader)); });
    const std::vector<std::string> one{batch.front()};
    const auto single = pair([&](int) { benchmark::DoNotOptimize(peer.read(one, out)); },
                             [&](int) { benchmark::DoNotOptimize(backend.get(batch.front())); });
    larder::bench::print_paired_table(
        "RedisClusterBackend against hand-routed hiredis, interleaved A/B (" +
            std::to_string(rounds) + " rounds):",
        {
            {"get_many(100) over 3 nodes / hand-routed", many, 0},
            {"tagged hit, tag on another node / hand-routed", tagged, 0},
            {"get (GET+PTTL) / hand-routed", single, 0},
        });
    if (loads != 1)
        std::printf("warning: %llu loads: some hits were not hits\n",
                    static_cast<unsigned long long>(loads));
    return 0;
}
