// A Redis Cluster on loopback for tests: `primaries` redis-servers with cluster mode on,
// each on a free port with its own temporary directory, the 16384 slots split evenly
// between them (CLUSTER ADDSLOTSRANGE) and the nodes joined with CLUSTER MEET. Ready once
// every node reports cluster_state:ok; every server stops with the object.
#pragma once

#include <chrono>
#include <cstddef>
#include <memory>
#include <stdexcept>
#include <string>
#include <string_view>
#include <thread>
#include <vector>

#include "redis_server.hpp"

namespace larder::test {

class RedisCluster {
public:
    static constexpr int slots = 16384;

    explicit RedisCluster(std::size_t primaries = 3) {
        if (primaries == 0) throw std::invalid_argument("RedisCluster needs a node");
        for (std::size_t i = 0; i < primaries; ++i) {
            // The bus on its own free port: by default it is the port + 10000, which a free
            // port above 55535 does not have.
            bus_ports_.push_back(detail::pick_free_loopback_port());
            nodes_.push_back(std::make_unique<RedisServer>(RedisServerOptions{
                .extra_args = {"--cluster-enabled", "yes", "--cluster-node-timeout", "5000",
                               "--cluster-port", std::to_string(bus_ports_.back())}}));
        }
        const int per_node = slots / static_cast<int>(primaries);
        for (std::size_t i = 0; i < primaries; ++i) {
            const int first = static_cast<int>(i) * per_node;
            const int last = i + 1 == primaries ? slots - 1 : first + per_node - 1;
            expect_ok(nodes_[i]->query({"CLUSTER", "ADDSLOTSRANGE", std::to_string(first),
                                        std::to_string(last)}),
                      "CLUSTER ADDSLOTSRANGE");
        }
        for (std::size_t i = 1; i < primaries; ++i) {
            expect_ok(nodes_[i]->query({"CLUSTER", "MEET", nodes_[0]->host(),
                                        std::to_string(nodes_[0]->port()),
                                        std::to_string(bus_ports_[0])}),
                      "CLUSTER MEET");
        }
        wait_until_ok(std::chrono::seconds(30));
    }

    [[nodiscard]] std::size_t size() const noexcept { return nodes_.size(); }
    [[nodiscard]] RedisServer& node(std::size_t i) { return *nodes_.at(i); }

    /// The cluster slot of `key` (CLUSTER KEYSLOT: hash tags included).
    [[nodiscard]] int slot_of(std::string_view key) const {
        const RespReply r = nodes_.front()->query({"CLUSTER", "KEYSLOT", std::string(key)});
        if (r.type != RespReply::Type::integer) {
            throw std::runtime_error("CLUSTER KEYSLOT: " + r.render());
        }
        return static_cast<int>(r.integer);
    }

    /// The index of the node that serves `key`'s slot.
    [[nodiscard]] std::size_t owner_of(std::string_view key) const {
        const int per_node = slots / static_cast<int>(nodes_.size());
        return std::min(nodes_.size() - 1, static_cast<std::size_t>(slot_of(key) / per_node));
    }

    /// A key made of `prefix` and a number that node `i` serves.
    [[nodiscard]] std::string key_on(std::size_t i, std::string_view prefix) const {
        for (int n = 0; n < 100'000; ++n) {
            std::string key = std::string(prefix) + std::to_string(n);
            if (owner_of(key) == i) return key;
        }
        throw std::runtime_error("RedisCluster: no key found for node " + std::to_string(i));
    }

private:
    static void expect_ok(const RespReply& r, std::string_view what) {
        if (r.is_error()) throw std::runtime_error(std::string(what) + ": " + r.render());
    }

    void wait_until_ok(std::chrono::seconds bound) {
        const auto deadline = std::chrono::steady_clock::now() + bound;
        for (;;) {
            bool all_ok = true;
            for (const auto& n : nodes_) {
                const RespReply r = n->query({"CLUSTER", "INFO"});
                if (r.text.find("cluster_state:ok") == std::string::npos ||
                    r.text.find("cluster_known_nodes:" + std::to_string(nodes_.size())) ==
                        std::string::npos) {
                    all_ok = false;
                    break;
                }
            }
            if (all_ok) return;
            if (std::chrono::steady_clock::now() > deadline) {
                throw std::runtime_error("RedisCluster: the cluster did not become ready");
            }
            std::this_thread::sleep_for(std::chrono::milliseconds(50));
        }
    }

    std::vector<int> bus_ports_;
    std::vector<std::unique_ptr<RedisServer>> nodes_;
};

}  // namespace larder::test
