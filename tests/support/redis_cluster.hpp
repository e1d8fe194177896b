// A Redis Cluster on loopback for tests: `primaries` redis-servers with cluster mode on
// and as many replicas of each as asked, each on a free port with its own temporary
// directory, the 16384 slots split evenly between the primaries (CLUSTER ADDSLOTSRANGE),
// the nodes joined with CLUSTER MEET and the replicas attached with CLUSTER REPLICATE (what
// redis-cli --cluster create does, without its prompts). Ready once every node reports
// cluster_state:ok and every replica is in sync; every server stops with the object.
#pragma once

#include <algorithm>
#include <chrono>
#include <cstddef>
#include <functional>
#include <memory>
#include <stdexcept>
#include <string>
#include <string_view>
#include <thread>
#include <utility>
#include <vector>

#include "redis_server.hpp"

namespace larder::test {

class RedisCluster {
public:
    static constexpr int slots = 16384;

    /// `primaries` nodes share the slots; each gets `replicas_per_primary` replicas
    /// (CLUSTER REPLICATE), which take over when it fails.
    explicit RedisCluster(std::size_t primaries = 3, std::size_t replicas_per_primary = 0) {
        if (primaries == 0) throw std::invalid_argument("RedisCluster needs a node");
        const std::size_t total = primaries * (1 + replicas_per_primary);
        for (std::size_t i = 0; i < total; ++i) {
            // The bus on its own free port: by default it is the port + 10000, which a free
            // port above 55535 does not have. A node timeout of 2 s: a killed primary is
            // replaced within a few seconds, and a slow machine does not fail nodes over.
            bus_ports_.push_back(detail::pick_free_loopback_port());
            nodes_.push_back(std::make_unique<RedisServer>(RedisServerOptions{
                .extra_args = {"--cluster-enabled", "yes", "--cluster-node-timeout", "2000",
                               "--cluster-port", std::to_string(bus_ports_.back()),
                               "--cluster-replica-validity-factor", "0"}}));
        }
        primaries_ = primaries;
        const int per_node = slots / static_cast<int>(primaries);
        for (std::size_t i = 0; i < primaries; ++i) {
            const int first = static_cast<int>(i) * per_node;
            const int last = i + 1 == primaries ? slots - 1 : first + per_node - 1;
            expect_ok(nodes_[i]->query({"CLUSTER", "ADDSLOTSRANGE", std::to_string(first),
                                        std::to_string(last)}),
                      "CLUSTER ADDSLOTSRANGE");
        }
        for (std::size_t i = 1; i < total; ++i) {
            expect_ok(nodes_[i]->query({"CLUSTER", "MEET", nodes_[0]->host(),
                                        std::to_string(nodes_[0]->port()),
                                        std::to_string(bus_ports_[0])}),
                      "CLUSTER MEET");
        }
        wait_until([&] { return every_node_knows(total); }, "the nodes did not meet");
        for (std::size_t i = primaries; i < total; ++i) {
            const std::string primary_id = id_of(*nodes_[(i - primaries) % primaries]);
            // A replica must have heard of its primary through the bus first.
            wait_until(
                [&] {
                    return !nodes_[i]->query({"CLUSTER", "REPLICATE", primary_id}).is_error();
                },
                "CLUSTER REPLICATE");
        }
        wait_until([&] { return ready(); }, "the cluster did not become ready");
        // A node learns of the other primaries' replicas by gossip: until then its slot map
        // leaves them out, and a client that asks it would not read from them.
        wait_until([&] { return every_map_names_replicas(replicas_per_primary); },
                   "a slot map still leaves replicas out");
    }

    /// Primaries (as started: a failover does not renumber them).
    [[nodiscard]] std::size_t size() const noexcept { return primaries_; }
    [[nodiscard]] RedisServer& node(std::size_t i) { return *nodes_.at(i); }
    [[nodiscard]] const RedisServer& node(std::size_t i) const { return *nodes_.at(i); }
    /// Every server, primaries first.
    [[nodiscard]] std::size_t servers() const noexcept { return nodes_.size(); }
    /// The replica of primary `i` (the first, when there are several).
    [[nodiscard]] RedisServer& replica_of(std::size_t i) { return *nodes_.at(primaries_ + i); }

    /// Every seed as "host:port".
    [[nodiscard]] std::vector<std::pair<std::string, int>> addresses() const {
        std::vector<std::pair<std::string, int>> out;
        for (const auto& n : nodes_) out.emplace_back(n->host(), n->port());
        return out;
    }

    /// The cluster slot of `key` (CLUSTER KEYSLOT: hash tags included).
    [[nodiscard]] int slot_of(std::string_view key) const {
        const auto running = std::find_if(nodes_.begin(), nodes_.end(),
                                          [](const auto& n) { return n->is_running(); });
        if (running == nodes_.end()) throw std::runtime_error("RedisCluster: no node is running");
        const RespReply r = (*running)->query({"CLUSTER", "KEYSLOT", std::string(key)});
        if (r.type != RespReply::Type::integer) {
            throw std::runtime_error("CLUSTER KEYSLOT: " + r.render());
        }
        return static_cast<int>(r.integer);
    }

    /// The index of the primary that served `key`'s slot when the cluster started.
    [[nodiscard]] std::size_t owner_of(std::string_view key) const {
        const int per_node = slots / static_cast<int>(primaries_);
        return std::min(primaries_ - 1, static_cast<std::size_t>(slot_of(key) / per_node));
    }

    /// A key made of `prefix` and a number that primary `i` serves.
    [[nodiscard]] std::string key_on(std::size_t i, std::string_view prefix) const {
        for (int n = 0; n < 100'000; ++n) {
            std::string key = std::string(prefix) + std::to_string(n);
            if (owner_of(key) == i) return key;
        }
        throw std::runtime_error("RedisCluster: no key found for node " + std::to_string(i));
    }

    /// Deletes every key on every primary that is running.
    void flush_all() {
        for (std::size_t i = 0; i < nodes_.size(); ++i) {
            if (!nodes_[i]->is_running()) continue;
            const RespReply role = nodes_[i]->query({"ROLE"});
            if (!role.elements.empty() && role.elements[0].text == "master") {
                expect_ok(nodes_[i]->query({"FLUSHALL"}), "FLUSHALL");
            }
        }
    }

    /// Moves `slot` and its keys from server `from` to server `to` as redis-cli --cluster
    /// reshard does: IMPORTING at the target, MIGRATING at the source, MIGRATE in batches,
    /// then SETSLOT NODE everywhere. `between_batches` runs after each batch (a test's
    /// chance to look at a slot half moved).
    void move_slot(int slot, std::size_t from, std::size_t to,
                   const std::function<void()>& between_batches = {}) {
        RedisServer& source = *nodes_.at(from);
        RedisServer& target = *nodes_.at(to);
        const std::string s = std::to_string(slot);
        const std::string source_id = id_of(source);
        const std::string target_id = id_of(target);
        expect_ok(target.query({"CLUSTER", "SETSLOT", s, "IMPORTING", source_id}), "IMPORTING");
        expect_ok(source.query({"CLUSTER", "SETSLOT", s, "MIGRATING", target_id}), "MIGRATING");
        for (;;) {
            const RespReply keys = source.query({"CLUSTER", "GETKEYSINSLOT", s, "10"});
            if (keys.elements.empty()) break;
            std::vector<std::string> migrate{
                "MIGRATE", target.host(), std::to_string(target.port()), "", "0", "5000", "KEYS"};
            for (const auto& k : keys.elements) migrate.push_back(k.text);
            expect_ok(source.query(migrate), "MIGRATE");
            if (between_batches) between_batches();
        }
        // The target first, so that the slot is never owned by no one.
        expect_ok(target.query({"CLUSTER", "SETSLOT", s, "NODE", target_id}), "SETSLOT NODE");
        expect_ok(source.query({"CLUSTER", "SETSLOT", s, "NODE", target_id}), "SETSLOT NODE");
        for (const auto& n : nodes_) {
            if (n.get() == &source || n.get() == &target || !n->is_running()) continue;
            (void)n->query({"CLUSTER", "SETSLOT", s, "NODE", target_id});
        }
    }

    /// Blocks until every running node reports cluster_state:ok.
    void wait_until_ok() {
        wait_until([&] { return ready(); }, "the cluster did not become ready");
    }

    [[nodiscard]] static std::string id_of(const RedisServer& server) {
        const RespReply r = server.query({"CLUSTER", "MYID"});
        if (r.is_error()) throw std::runtime_error("CLUSTER MYID: " + r.render());
        return r.text;
    }

private:
    static void expect_ok(const RespReply& r, std::string_view what) {
        if (r.is_error()) throw std::runtime_error(std::string(what) + ": " + r.render());
    }

    bool every_node_knows(std::size_t total) const {
        for (const auto& n : nodes_) {
            const RespReply r = n->query({"CLUSTER", "INFO"});
            if (r.text.find("cluster_known_nodes:" + std::to_string(total)) == std::string::npos) {
                return false;
            }
        }
        return true;
    }

    bool every_map_names_replicas(std::size_t replicas) const {
        for (const auto& n : nodes_) {
            const RespReply r = n->query({"CLUSTER", "SLOTS"});
            if (r.elements.empty()) return false;
            for (const auto& range : r.elements) {
                // [first, last, primary, replica...]
                if (range.elements.size() < 3 + replicas) return false;
            }
        }
        return true;
    }

    // Every running node sees the cluster ok, and every replica is in sync.
    bool ready() const {
        for (std::size_t i = 0; i < nodes_.size(); ++i) {
            if (!nodes_[i]->is_running()) continue;
            if (nodes_[i]->query({"CLUSTER", "INFO"}).text.find("cluster_state:ok") ==
                std::string::npos) {
                return false;
            }
            const std::string replication = nodes_[i]->query({"INFO", "replication"}).text;
            if (replication.find("role:slave") != std::string::npos &&
                replication.find("master_link_status:up") == std::string::npos) {
                return false;
            }
        }
        return true;
    }

    template <class Predicate>
    static void wait_until(Predicate done, std::string_view what) {
        const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(60);
        while (!done()) {
            if (std::chrono::steady_clock::now() > deadline) {
                throw std::runtime_error("RedisCluster: " + std::string(what));
            }
            std::this_thread::sleep_for(std::chrono::milliseconds(50));
        }
    }

    std::size_t primaries_ = 0;
    std::vector<int> bus_ports_;
    std::vector<std::unique_ptr<RedisServer>> nodes_;  // primaries, then replicas
};

}  // namespace larder::test
