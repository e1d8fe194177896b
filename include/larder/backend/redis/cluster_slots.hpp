// Redis Cluster's key space: the map from slots to the nodes that serve them, as CLUSTER
// SLOTS reports it (a key's slot is keys::slot). A pure function over a reply: no I/O, so
// it is tested on its own.
#pragma once

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "larder/backend/redis/reply.hpp"
#include "larder/core/error.hpp"

namespace larder {

/// How many slots a Redis Cluster splits its keys into.
inline constexpr std::uint16_t cluster_slot_count = 16384;

/// A node as CLUSTER SLOTS names it.
struct ClusterNode {
    std::string host{};
    int port = 0;
    std::string id{};  ///< empty where the server does not say

    friend bool operator==(const ClusterNode&, const ClusterNode&) = default;
};

/// Slots [first, last] and the nodes that serve them.
struct SlotRange {
    std::uint16_t first = 0;
    std::uint16_t last = 0;
    ClusterNode primary;
    std::vector<ClusterNode> replicas;
};

/// Which node serves which slot. Built from a CLUSTER SLOTS reply; a reply that is not one
/// (a wrong shape, a slot out of range, overlapping ranges, a port that is no port) is a
/// BackendError, never a crash or a wrong route.
class SlotMap {
public:
    SlotMap() = default;

    /// `answered_by`: the host of the node that sent the reply, for the nodes it names
    /// with an empty, "?" or nil address (a node that does not know its own address, or
    /// cluster-preferred-endpoint-type unknown-endpoint).
    [[nodiscard]] static SlotMap from_cluster_slots(const RedisReply& reply,
                                                    std::string_view answered_by) {
        if (!reply.is_array()) fail("the reply is not an array");
        SlotMap map;
        for (const RedisReply& entry : reply.elements) {
            if (!entry.is_array() || entry.elements.size() < 3) fail("a range is not an array");
            SlotRange range;
            range.first = slot(entry.elements[0]);
            range.last = slot(entry.elements[1]);
            if (range.first > range.last) fail("a range ends before it starts");
            range.primary = node(entry.elements[2], answered_by);
            for (std::size_t i = 3; i < entry.elements.size(); ++i) {
                range.replicas.push_back(node(entry.elements[i], answered_by));
            }
            map.ranges_.push_back(std::move(range));
        }
        std::sort(map.ranges_.begin(), map.ranges_.end(),
                  [](const SlotRange& a, const SlotRange& b) { return a.first < b.first; });
        for (std::size_t i = 1; i < map.ranges_.size(); ++i) {
            if (map.ranges_[i].first <= map.ranges_[i - 1].last) fail("two ranges overlap");
        }
        return map;
    }

    /// The range that holds `slot`, or nullptr when no node serves it.
    [[nodiscard]] const SlotRange* range_of(std::uint16_t slot) const noexcept {
        const auto after =
            std::upper_bound(ranges_.begin(), ranges_.end(), slot,
                             [](std::uint16_t s, const SlotRange& r) { return s < r.first; });
        if (after == ranges_.begin()) return nullptr;
        const SlotRange& r = *(after - 1);
        return slot <= r.last ? &r : nullptr;
    }

    /// The primary that serves `slot`, or nullptr.
    [[nodiscard]] const ClusterNode* primary_of(std::uint16_t slot) const noexcept {
        const SlotRange* r = range_of(slot);
        return r ? &r->primary : nullptr;
    }

    /// Whether every slot has a primary (a cluster that is all up).
    [[nodiscard]] bool covers_every_slot() const noexcept {
        std::uint32_t next = 0;
        for (const SlotRange& r : ranges_) {
            if (r.first != next) return false;
            next = std::uint32_t{r.last} + 1;
        }
        return next == cluster_slot_count;
    }

    [[nodiscard]] const std::vector<SlotRange>& ranges() const noexcept { return ranges_; }

private:
    [[noreturn]] static void fail(const char* why) {
        throw BackendError(std::string("redis CLUSTER SLOTS: ") + why);
    }

    static std::uint16_t slot(const RedisReply& r) {
        if (!r.is_integer() || r.integer < 0 || r.integer >= cluster_slot_count) {
            fail("a slot is not a number from 0 to 16383");
        }
        return static_cast<std::uint16_t>(r.integer);
    }

    static ClusterNode node(const RedisReply& r, std::string_view answered_by) {
        // A nil address: Redis 7 with cluster-preferred-endpoint-type unknown-endpoint.
        if (!r.is_array() || r.elements.size() < 2 ||
            !(r.elements[0].is_string() || r.elements[0].is_nil()) || !r.elements[1].is_integer()) {
            fail("a node is not [address, port, ...]");
        }
        if (r.elements[1].integer <= 0 || r.elements[1].integer > 65535) {
            fail("a node's port is not a port");
        }
        ClusterNode n;
        n.host = r.elements[0].str;
        if (n.host.empty() || n.host == "?") n.host = std::string(answered_by);
        if (n.host.find('\0') != std::string::npos) fail("a node's address holds a NUL");
        n.port = static_cast<int>(r.elements[1].integer);
        if (r.elements.size() > 2 && r.elements[2].is_string()) n.id = r.elements[2].str;
        return n;
    }

    std::vector<SlotRange> ranges_;  // sorted by first slot, disjoint
};

}  // namespace larder
