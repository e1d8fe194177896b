// RedisClusterTrackingBus: RedisTrackingBus on a Redis Cluster. Each node tracks the reads
// made on it and tells only a subscriber connected to it, so this bus runs one
// RedisTrackingBus per node the cluster backend calls (RedisClusterBackend::watch_nodes),
// delivers what any of them hears, and is connected only while every one of them is.
//
// The nodes change with the cluster: a node that starts serving (a promoted replica, a
// slot's new owner, an ASK target) gets its bus before any call reaches it, and the bus
// reports a loss until that node's subscriber is live. A node the slot map no longer names
// (it died, or gave all its slots away) is dropped: its bus stops, with a "*" that starts
// every L1 over, because writes to what was read from it may now happen where nobody
// tracked the read. So a dead primary turns L1 off everywhere until the map stops naming
// it, about one cluster failover window. See docs/tracking.md and docs/cluster.md.
#pragma once

#include <algorithm>
#include <condition_variable>
#include <cstdint>
#include <memory>
#include <mutex>
#include <string>
#include <string_view>
#include <thread>
#include <vector>

#include "larder/backend/redis_cluster.hpp"
#include "larder/near/bus.hpp"
#include "larder/near/redis_tracking_bus.hpp"

namespace larder {

class RedisClusterTrackingBus {
public:
    /// `backend` must outlive the bus; one tracking bus per backend (ConfigError). The
    /// options are every node bus's (RedisTrackingOptions).
    explicit RedisClusterTrackingBus(RedisClusterBackend& backend,
                                     RedisTrackingOptions options = {})
        : options_(RedisTrackingBus::validated(std::move(options))), backend_(backend) {
        reaper_ = std::thread([this] { reap(); });
        try {
            backend_.watch_nodes([this](RedisBackend& node, bool serving) {
                if (serving) {
                    add(node);
                } else {
                    retire(node);
                }
            });
        } catch (...) {
            stop();
            throw;
        }
    }

    RedisClusterTrackingBus(const RedisClusterTrackingBus&) = delete;
    RedisClusterTrackingBus& operator=(const RedisClusterTrackingBus&) = delete;

    ~RedisClusterTrackingBus() {
        backend_.watch_nodes(nullptr);
        stop();
    }

    /// Does nothing: each node reports the writes made on it. Never throws.
    void publish(std::string_view) noexcept {}

    BusSubscription subscribe(BusHandlers handlers) {
        return state_.subscribe(std::move(handlers));
    }

    /// Every node the backend calls has a live subscriber.
    [[nodiscard]] bool connected() const noexcept { return state_.connected(); }

    /// Blocks until connected and every subscriber has been told so, or `timeout` passes.
    bool wait_connected(Millis timeout) { return state_.wait_connected(timeout); }

    /// The nodes tracked now ("host:port").
    [[nodiscard]] std::vector<std::string> nodes() const {
        std::lock_guard lock(mutex_);
        std::vector<std::string> out;
        for (const NodeBus& n : buses_) {
            out.push_back(n.node->options().host + ":" + std::to_string(n.node->options().port));
        }
        return out;
    }

    /// Times every node was live at once (1 + the restores after a loss or a node change).
    [[nodiscard]] std::uint64_t subscriptions() const noexcept { return state_.subscriptions(); }

    /// Keys delivered as "k" messages by the nodes tracked now.
    [[nodiscard]] std::uint64_t keys_invalidated() const {
        std::lock_guard lock(mutex_);
        std::uint64_t sum = 0;
        for (const NodeBus& n : buses_) sum += n.bus->keys_invalidated();
        return sum;
    }

    /// Nodes dropped because the slot map stopped naming them (each started L1 over).
    [[nodiscard]] std::uint64_t nodes_dropped() const {
        std::lock_guard lock(mutex_);
        return dropped_;
    }

    /// Why the nodes not live now last failed, one "host:port: why" each, ";"-separated.
    [[nodiscard]] std::string last_error() const {
        std::lock_guard lock(mutex_);
        std::string out;
        for (const NodeBus& n : buses_) {
            if (n.connected) continue;
            if (!out.empty()) out += "; ";
            out += n.node->options().host + ":" + std::to_string(n.node->options().port) + ": " +
                   n.bus->last_error();
        }
        return out;
    }

private:
    struct NodeBus {
        RedisBackend* node = nullptr;
        std::uint64_t id = 0;
        std::unique_ptr<RedisTrackingBus> bus;
        BusSubscription subscription;
        bool connected = false;
    };

    // The backend tells it, under its own lock, before the node serves a call. (The
    // backend's lock also keeps retire() and the destructor out meanwhile.)
    void add(RedisBackend& node) {
        RedisTrackingBus* bus = nullptr;
        std::uint64_t id = 0;
        {
            std::unique_lock lock(mutex_);
            if (find(node) != buses_.end()) return;
            // Dropped a moment ago and not yet stopped: it never stopped tracking either,
            // so it is taken back - as live as it is now. (What it said while dropped was
            // not heard; from now on it is.)
            const auto retired = std::find_if(retired_.begin(), retired_.end(),
                                              [&](const NodeBus& n) { return n.node == &node; });
            if (retired != retired_.end()) {
                NodeBus back = std::move(*retired);
                retired_.erase(retired);
                back.connected = back.bus->connected();
                buses_.push_back(std::move(back));
                recompute();
                return;
            }
            // Being stopped: wait, since the node takes one bus at a time.
            reaped_.wait(lock, [&] { return reaping_ != &node; });
            NodeBus added;
            added.node = &node;
            added.id = id = next_id_++;
            added.bus = std::make_unique<RedisTrackingBus>(node, options_);
            bus = added.bus.get();
            buses_.push_back(std::move(added));
            // Not live yet: a loss for every subscriber before the first call reaches it.
            recompute();
        }
        // Outside mutex_: the handlers take it, under the node bus's own lock.
        BusSubscription subscription = bus->subscribe(BusHandlers{
            .on_message = [this](std::string_view m) { state_.message(m); },
            .on_lost = [this, id] { set_connected(id, false); },
            .on_restored = [this, id] { set_connected(id, true); },
        });
        std::lock_guard lock(mutex_);
        const auto it = std::find_if(buses_.begin(), buses_.end(),
                                     [&](const NodeBus& n) { return n.id == id; });
        if (it != buses_.end()) it->subscription = std::move(subscription);
    }

    // The slot map stopped naming the node: its bus stops, on the reaper's thread (it may
    // be waiting on a connect to a dead node).
    void retire(RedisBackend& node) {
        std::lock_guard lock(mutex_);
        const auto it = find(node);
        if (it == buses_.end()) return;
        retired_.push_back(std::move(*it));
        buses_.erase(it);
        ++dropped_;
        state_.message("*");
        recompute();
        reap_.notify_one();
    }

    void set_connected(std::uint64_t id, bool on) {
        std::lock_guard lock(mutex_);
        const auto it = std::find_if(buses_.begin(), buses_.end(),
                                     [&](const NodeBus& n) { return n.id == id; });
        if (it == buses_.end()) return;  // retired: what it says no longer counts
        it->connected = on;
        recompute();
    }

    // Under mutex_.
    void recompute() {
        const bool live =
            !buses_.empty() &&
            std::all_of(buses_.begin(), buses_.end(), [](const NodeBus& n) { return n.connected; });
        if (live != state_.connected()) state_.set_connected(live);
    }

    std::vector<NodeBus>::iterator find(const RedisBackend& node) {
        return std::find_if(buses_.begin(), buses_.end(),
                            [&](const NodeBus& n) { return n.node == &node; });
    }

    void reap() {
        std::unique_lock lock(mutex_);
        for (;;) {
            reap_.wait(lock, [&] { return stopping_ || !retired_.empty(); });
            if (retired_.empty()) return;
            NodeBus bus = std::move(retired_.front());
            retired_.erase(retired_.begin());
            reaping_ = bus.node;
            lock.unlock();
            bus.subscription.reset();  // its handlers may be waiting for mutex_
            bus.bus.reset();
            lock.lock();
            reaping_ = nullptr;
            reaped_.notify_all();
        }
    }

    // The reaper stops the retired buses, then the live ones go, outside mutex_.
    void stop() {
        {
            std::lock_guard lock(mutex_);
            stopping_ = true;
            for (NodeBus& n : buses_) retired_.push_back(std::move(n));
            buses_.clear();
        }
        reap_.notify_one();
        reaper_.join();
    }

    const RedisTrackingOptions options_;
    RedisClusterBackend& backend_;
    mutable std::mutex mutex_;
    std::condition_variable reap_;    // retired_ or stopping_ changed
    std::condition_variable reaped_;  // reaping_ changed
    std::vector<NodeBus> buses_;      // the nodes tracked now
    std::vector<NodeBus> retired_;    // to be stopped by the reaper
    const RedisBackend* reaping_ = nullptr;
    std::uint64_t next_id_ = 0;
    std::uint64_t dropped_ = 0;
    bool stopping_ = false;
    detail::ListenerState state_;
    std::thread reaper_;
};

static_assert(InvalidationBus<RedisClusterTrackingBus>);

}  // namespace larder
