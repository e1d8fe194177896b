// Redis Sentinel on loopback for tests: a primary, a replica of it, and three sentinels
// that monitor it (quorum 2, a primary is down after 1 s without an answer), each a
// redis-server on a free port with its own temporary directory. Ready once every sentinel
// knows the replica and the other sentinels, so that a failover can happen; every server
// stops with the object.
#pragma once

#include <chrono>
#include <memory>
#include <stdexcept>
#include <string>
#include <string_view>
#include <thread>
#include <vector>

#include "larder/backend/redis/options.hpp"
#include "redis_server.hpp"

namespace larder::test {

class RedisSentinelGroup {
public:
    static constexpr std::string_view master_name = "larder-primary";

    RedisSentinelGroup() {
        primary_ = std::make_unique<RedisServer>();
        replica_ = std::make_unique<RedisServer>(RedisServerOptions{
            .extra_args = {"--replicaof", primary_->host(), std::to_string(primary_->port())}});
        wait_until([&] { return linked(*replica_); }, "the replica did not sync");
        const std::string config = "sentinel monitor " + std::string(master_name) + " " +
                                   primary_->host() + " " + std::to_string(primary_->port()) +
                                   " 2\n"
                                   "sentinel down-after-milliseconds " +
                                   std::string(master_name) +
                                   " 1000\n"
                                   "sentinel failover-timeout " +
                                   std::string(master_name) + " 5000\n";
        for (int i = 0; i < 3; ++i) {
            sentinels_.push_back(std::make_unique<RedisServer>(
                RedisServerOptions{.extra_args = {"--sentinel"}, .config_file_contents = config}));
        }
        wait_until([&] { return ready(); }, "the sentinels did not find each other");
    }

    [[nodiscard]] RedisServer& primary() { return *primary_; }
    [[nodiscard]] RedisServer& replica() { return *replica_; }
    [[nodiscard]] RedisServer& sentinel(std::size_t i) { return *sentinels_.at(i); }

    /// SentinelOptions naming every sentinel and the monitored primary.
    [[nodiscard]] SentinelOptions options() const {
        SentinelOptions o;
        for (const auto& s : sentinels_) o.sentinels.push_back({s->host(), s->port()});
        o.master_name = std::string(master_name);
        return o;
    }

    /// The port of the primary the first sentinel that answers names.
    [[nodiscard]] int named_primary_port() const {
        for (const auto& s : sentinels_) {
            if (!s->is_running()) continue;
            const RespReply r =
                s->query({"SENTINEL", "get-master-addr-by-name", std::string(master_name)});
            if (r.elements.size() == 2) return std::stoi(r.elements[1].text);
        }
        return 0;
    }

private:
    static bool linked(const RedisServer& replica) {
        return replica.query({"INFO", "replication"}).text.find("master_link_status:up") !=
               std::string::npos;
    }

    bool ready() const {
        for (const auto& s : sentinels_) {
            const RespReply replicas = s->query({"SENTINEL", "replicas", std::string(master_name)});
            const RespReply others = s->query({"SENTINEL", "sentinels", std::string(master_name)});
            if (replicas.elements.size() != 1 || others.elements.size() != 2) return false;
        }
        return true;
    }

    template <class Predicate>
    static void wait_until(Predicate done, std::string_view what) {
        const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(60);
        while (!done()) {
            if (std::chrono::steady_clock::now() > deadline) {
                throw std::runtime_error("RedisSentinelGroup: " + std::string(what));
            }
            std::this_thread::sleep_for(std::chrono::milliseconds(50));
        }
    }

    std::unique_ptr<RedisServer> primary_;
    std::unique_ptr<RedisServer> replica_;
    std::vector<std::unique_ptr<RedisServer>> sentinels_;
};

}  // namespace larder::test
