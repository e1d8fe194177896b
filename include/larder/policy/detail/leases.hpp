// A loader's lease: the bytes a loader puts on a key it is about to fill, so that one
// caller across all processes loads it while the others wait or serve what they have.
// This file takes, extends, ends and fences leases, and hears when another's ends; when
// to take one is the read path's decision.
//
// A fill replaces exactly its own lease (compare-and-set), so an invalidation (which
// deletes the lease) or a newer writer wins over a load in flight.
#pragma once

#include <chrono>
#include <cstdint>
#include <optional>
#include <span>
#include <string>
#include <string_view>

#include "larder/backend/backend.hpp"
#include "larder/backend/lease_notices.hpp"
#include "larder/core/envelope.hpp"
#include "larder/core/error.hpp"
#include "larder/core/random.hpp"
#include "larder/core/stats.hpp"
#include "larder/policy/detail/keeper.hpp"
#include "larder/policy/detail/lease_keeper.hpp"
#include "larder/policy/detail/tag_versions.hpp"

namespace larder::detail {

template <Backend B>
class Leases {
public:
    /// `notices`: the backend's, when lease ends are to be heard (a guard that waits on
    /// another loader's lease, on a backend that announces them); null otherwise.
    Leases(Keeper& keeper, B& backend, const Clock& clock, Millis ttl, Millis max_load_time,
           StripedCounters<StatsSnapshot>& stats, LeaseNotices* notices)
        : backend_(backend),
          clock_(clock),
          ttl_(ttl),
          stats_(stats),
          notices_(notices),
          keeper_(keeper, backend, ttl, max_load_time) {}

    /// The lease bytes when this caller now holds `key`; nullopt otherwise, with
    /// *contended set when someone else got there first (rather than the store failing).
    /// `replacing` is what a read found there (expired, corrupt or no longer admitted
    /// bytes): the lease replaces exactly those, or nothing when it is null.
    std::optional<std::string> take(const std::string& key, const std::string* replacing,
                                    bool* contended = nullptr) {
        std::string lease = envelope::make_lease(random_token(), clock_.now());
        try {
            const bool taken = replacing ? backend_.compare_and_set(key, *replacing, lease, ttl_)
                                         : backend_.set_if_absent(key, lease, ttl_);
            if (taken) return lease;
            if (contended) *contended = true;
        } catch (const BackendError&) {
            stats_.add<&StatsSnapshot::backend_errors>();
        }
        return std::nullopt;
    }

    /// Extends the lease while the returned hold lives (a loader slower than the TTL).
    [[nodiscard]] Keeper::Hold hold(const std::string& key, const std::string& lease) {
        return keeper_.hold(key, lease);
    }

    /// Leases extended so far.
    [[nodiscard]] std::uint64_t extensions() const { return keeper_.extensions(); }

    /// Replaces the lease with `value` (a fill), announcing its end where the backend can.
    /// false when the lease is no longer there. Throws BackendError.
    bool replace(const std::string& key, const std::string& lease, std::string_view value,
                 Millis ttl) {
        if constexpr (NotifiesLeaseEnds<B>) {
            return backend_.replace_lease(key, lease, value, ttl);
        } else {
            return backend_.compare_and_set(key, lease, value, ttl);
        }
    }

    /// Deletes the lease (if still there), announcing its end. Throws BackendError.
    bool end(const std::string& key, const std::string& lease) {
        if constexpr (NotifiesLeaseEnds<B>) {
            return backend_.release_lease(key, lease);
        } else {
            return backend_.compare_and_delete(key, lease);
        }
    }

    /// end() that cannot fail: a lease the store did not delete expires by itself.
    void release(const std::string& key, const std::optional<std::string>& lease) noexcept {
        if (!lease) return;
        try {
            end(key, *lease);
        } catch (const BackendError&) {
            stats_.add<&StatsSnapshot::backend_errors>();
        } catch (...) {
        }
    }

    /// Where lease ends heard so far stand, taken before a read that may find a lease.
    [[nodiscard]] LeaseNotices::Mark mark() const noexcept {
        return notices_ ? notices_->mark() : LeaseNotices::Mark{};
    }

    /// Whether the end of the lease `bytes` will be announced to this process: a loader's
    /// lease (a writer's marker is not), found while notices were being heard since `m`.
    [[nodiscard]] bool announced(const std::string& bytes, const LeaseNotices::Mark& m) const {
        if (notices_ == nullptr || !notices_->listening_since(m)) return false;
        const auto env = envelope::parse(bytes);
        return env && (env->header.flags & envelope::flag_write_marker) == 0;
    }

    /// Waits until the end of `key`'s lease is heard after `since`, or `until`; only
    /// when announced() said it would be.
    void wait_for_end(std::string_view key, const LeaseNotices::Mark& since,
                      std::chrono::steady_clock::time_point until) {
        notices_->wait_for_end(key, since, until);
    }

    /// The fence a lease found in the store gives: a loader's lease, with the tag versions
    /// and the bump counter read beside it: two readers with equal fences saw no
    /// invalidation between them. A writer's marker gives none: the write it fences is
    /// under way, so two readers seeing it prove nothing about what either may load.
    static std::optional<std::string> fence(const std::string& lease,
                                            std::span<const TagVersion> stamp,
                                            std::uint64_t bumps) {
        const auto env = envelope::parse(lease);
        if (!env || (env->header.flags & envelope::flag_write_marker) != 0) return std::nullopt;
        return fence_of(lease, stamp, bumps);
    }

    /// What a leader waiting on `lease` publishes: its fence, or for a writer's marker one
    /// that matches nothing, so that readers do not wait for a load they could not share.
    static std::string waiting_fence(const std::string& lease, std::span<const TagVersion> stamp,
                                     std::uint64_t bumps) {
        return fence(lease, stamp, bumps).value_or(std::string(1, '\0'));
    }

    /// The fence of a lease this caller took.
    static std::string fence_of(const std::string& lease, std::span<const TagVersion> stamp,
                                std::uint64_t bumps) {
        std::string out = lease;
        for (const auto& t : stamp) envelope::detail::put<std::uint64_t>(out, t.version);
        envelope::detail::put<std::uint64_t>(out, bumps);
        return out;
    }

private:
    B& backend_;
    const Clock& clock_;
    const Millis ttl_;
    StripedCounters<StatsSnapshot>& stats_;
    LeaseNotices* const notices_;
    LeaseKeeper<B> keeper_;
};

}  // namespace larder::detail
