// The flusher of a WriteBehind: claims ready entries from the queue, hands them to the
// batch writer, and settles each with the store - acknowledged, retried with backoff,
// deferred (the whole batch failed: an outage, which costs no entry an attempt) or
// dead-lettered - while its ClaimKeeper keeps the claims alive. It is the only code that
// talks to the batch writer. WriteBehind runs it on its flusher thread, from flush(), and
// for the final drain.
#pragma once

#include <algorithm>
#include <atomic>
#include <chrono>
#include <concepts>
#include <cstdint>
#include <functional>
#include <limits>
#include <mutex>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "larder/backend/write_behind_store.hpp"
#include "larder/core/envelope.hpp"
#include "larder/core/error.hpp"
#include "larder/core/log.hpp"
#include "larder/core/random.hpp"
#include "larder/core/stats.hpp"
#include "larder/policy/detail/keeper.hpp"
#include "larder/policy/detail/write_claims.hpp"
#include "larder/policy/write_behind_types.hpp"

namespace larder::detail {

/// A queued delete: the envelope a read of the key finds until it is flushed.
[[nodiscard]] inline bool is_tombstone(std::string_view bytes) noexcept {
    const auto env = envelope::parse(bytes);
    return env && env->header.kind == EntryKind::not_found;
}

template <class T, class Store>
class WriteBehindFlusher {
public:
    using Entry = DirtyEntry<T>;
    using BatchWriter = std::function<BatchResult(std::span<const Entry>)>;

    /// What the flusher asks of its cache.
    struct Cache {
        /// The caller's key of a queued (stored) key; nullopt when it is not this cache's.
        std::function<std::optional<std::string_view>(std::string_view)> key_of;
        /// The caller's key of a queued key, for messages.
        std::function<std::string(std::string_view)> user_key;
        /// The value of queued bytes; nullopt (and why) when they cannot be decoded.
        std::function<std::optional<T>(std::string_view, std::string*)> decode;
        std::function<void(LogLevel, const std::string&)> log;
    };

    /// Everything borrowed must outlive the flusher; `options` are the WriteBehind's.
    WriteBehindFlusher(const WriteBehindOptions& options, Store& store, BatchWriter writer,
                       StripedCounters<WriteBehindStats>& counters, Keeper& keeper, Cache cache)
        : options_(options),
          store_(store),
          writer_(std::move(writer)),
          counters_(counters),
          claims_(keeper, store, options.claim_ttl),
          cache_(std::move(cache)) {
        if (!writer_) throw ConfigError("WriteBehind: a batch writer is required");
    }

    WriteBehindFlusher(const WriteBehindFlusher&) = delete;
    WriteBehindFlusher& operator=(const WriteBehindFlusher&) = delete;

    // `draining`: the final drain, which never dead-letters for want of time (see close()).
    FlushReport flush_ready(std::size_t max_batches,
                            std::optional<std::chrono::steady_clock::time_point> deadline,
                            const std::atomic<bool>* stop = nullptr, bool draining = false) {
        FlushReport report;
        unsigned lost_timeouts = 0;  // claims in a row whose reply never came
        for (std::size_t b = 0; b < max_batches; ++b) {
            if (deadline && std::chrono::steady_clock::now() >= *deadline) break;
            if (stop && stop->load(std::memory_order_relaxed)) break;
            ClaimBatch batch;
            std::vector<std::uint64_t> lost = lost_claims();
            const std::uint64_t token = random_token()[0] | 1;
            try {
                batch = store_.claim(
                    options_.batch_size, options_.claim_ttl,
                    ClaimOptions{.max_attempts = draining ? 0 : options_.retry.max_attempts,
                                 .budget = options_.retry.budget,
                                 .max_bytes = options_.batch_bytes,
                                 .token = token,
                                 .lost = lost});
                forget_lost_claims(lost);
                lost_timeouts = 0;
            } catch (const TimeoutError& e) {
                // The claim may have run: what it took is held under `token` until the
                // next claim releases it. The rest of the queue is not behind it, so go on
                // - unless the store keeps timing out, which is no longer about one entry.
                counters_.add<&WriteBehindStats::backend_errors>();
                remember_lost_claim(token);
                ++report.lost_claims;
                report.store_error = e.what();
                if (++lost_timeouts >= 2) break;
                continue;
            } catch (const BackendError& e) {
                counters_.add<&WriteBehindStats::backend_errors>();
                report.store_error = e.what();
                break;
            }
            report.requeued += batch.requeued;
            counters_.add<&WriteBehindStats::requeued_claims>(batch.requeued);
            for (const auto& k : batch.dead_lettered) {
                ++report.dead_lettered;
                counters_.add<&WriteBehindStats::dead_lettered>();
                announce_dead(k, 0,
                              "after " + std::to_string(options_.retry.max_attempts) +
                                  " attempts whose claims never reached a flusher",
                              false);
            }
            for (const auto& k : batch.held) {
                ++report.held;
                counters_.add<&WriteBehindStats::held>();
                announce_dead(k, 0, "its claims kept expiring", true);
            }
            if (batch.entries.empty()) {
                report.store_error.clear();  // the store answered: a lost claim is history
                break;
            }
            ++report.batches;
            report.claimed += batch.entries.size();
            report.store_error.clear();
            const bool outage = flush_batch(batch.entries, token, report, draining);
            // The database is down: the next batch would fail the same way. Its entries
            // wait out the outage backoff; the rest of the queue waits for the next flush.
            if (outage || !report.store_error.empty()) break;
            if (batch.entries.size() < options_.batch_size) break;
        }
        return report;
    }

    // At the end of a drain: entries still held by this object's lost claims go back to
    // the queue now, for the next flusher, instead of when their claims expire. A claim
    // of nothing releases them.
    void release_lost_claims() {
        const std::vector<std::uint64_t> lost = lost_claims();
        if (lost.empty()) return;
        try {
            (void)store_.claim(0, options_.claim_ttl, ClaimOptions{.lost = lost});
            forget_lost_claims(lost);
        } catch (const BackendError&) {
            counters_.add<&WriteBehindStats::backend_errors>();
        }
    }

private:
    // Tokens of this object's claims whose replies were lost, for the next claim to
    // release. Bounded: a claim older than the last few has expired by the time it would
    // be named, and expiry releases it just the same.
    std::vector<std::uint64_t> lost_claims() {
        std::lock_guard lock(lost_mutex_);
        return lost_;
    }

    void remember_lost_claim(std::uint64_t token) {
        std::lock_guard lock(lost_mutex_);
        if (lost_.size() >= 32) lost_.erase(lost_.begin());
        lost_.push_back(token);
    }

    void forget_lost_claims(const std::vector<std::uint64_t>& released) {
        if (released.empty()) return;
        std::lock_guard lock(lost_mutex_);
        std::erase_if(lost_, [&](std::uint64_t t) {
            return std::find(released.begin(), released.end(), t) != released.end();
        });
    }

    Settlement dead_letter(const ClaimedEntry& c, std::string error) const {
        return Settlement{.action = Settlement::dead,
                          .key = c.key,
                          .version = c.version,
                          .retry_after = options_.retry.max_backoff,
                          .error = std::move(error)};
    }

    // Logs a dead-lettered entry (or one kept pending because the list was full) and tells
    // the alert hook.
    void announce_dead(const std::string& full, std::uint64_t version, const std::string& error,
                       bool list_full) {
        const std::string key = cache_.user_key(full);
        if (list_full) {
            cache_.log(LogLevel::error, "dead-letter list full (max_dead " +
                                            std::to_string(options_.max_dead) + "): '" + key +
                                            "' stays pending: " + error);
        } else {
            cache_.log(LogLevel::error, "dead-lettered '" + key + "'" +
                                            (version ? " (version " + std::to_string(version) + ")"
                                                     : std::string()) +
                                            ": " + error);
        }
        if (!options_.on_dead_letter) return;
        try {
            options_.on_dead_letter(DeadLetterEvent{key, version, error, list_full});
        } catch (...) {
        }
    }

    // The delay after the `streak`-th batch in a row that failed as a whole.
    [[nodiscard]] Millis outage_delay(std::uint32_t streak) const {
        return detail::retry_delay(streak, options_.retry.first_backoff,
                                   options_.retry.max_outage_backoff);
    }

    // The entry has been waiting longer than the retry budget (on the store's clock, which
    // dirty_since is on: Redis's, not this host's).
    [[nodiscard]] bool out_of_time(const ClaimedEntry& c) const {
        return c.waited >= options_.retry.budget;
    }

    // A row the writer rejected: retried, or dead-lettered once it has used both its
    // attempts and the time budget - never by the final drain, which leaves it pending.
    Settlement rejected(const ClaimedEntry& c, const std::string& error, bool draining) const {
        const std::uint32_t attempt = c.attempts + 1;
        if (!draining && attempt >= options_.retry.max_attempts && out_of_time(c)) {
            return dead_letter(c, error);
        }
        return Settlement{.action = Settlement::retry,
                          .key = c.key,
                          .version = c.version,
                          .retry_after = detail::retry_delay(attempt, options_.retry.first_backoff,
                                                             options_.retry.max_backoff),
                          .error = error};
    }

    // Writes one claimed batch and settles it. Returns true when the writer failed as a
    // whole (an outage): its entries are deferred, at no cost to their attempts.
    bool flush_batch(const std::vector<ClaimedEntry>& claimed, std::uint64_t token,
                     FlushReport& report, bool draining) {
        std::vector<Settlement> settlements;
        settlements.reserve(claimed.size());
        std::vector<Entry> entries;
        std::vector<std::size_t> source;  // entries[i] is claimed[source[i]]
        for (std::size_t i = 0; i < claimed.size(); ++i) {
            const ClaimedEntry& c = claimed[i];
            // Only this cache's own puts queue keys of its namespace: anything else was
            // planted in the store, and never reaches the writer.
            const auto key = cache_.key_of(c.key);
            if (!key) {
                settlements.push_back(dead_letter(c, "the queued key is not one of this cache's"));
                continue;
            }
            if constexpr (std::default_initializable<T>) {
                if (is_tombstone(c.value)) {
                    entries.push_back(Entry{std::string(*key), T{}, c.version, c.attempts + 1,
                                            c.dirty_since, /*erased=*/true});
                    source.push_back(i);
                    continue;
                }
            }
            std::string why;
            std::optional<T> value = cache_.decode(c.value, &why);
            if (!value) {
                settlements.push_back(dead_letter(c, "the queued value cannot be decoded: " + why));
                continue;
            }
            entries.push_back(Entry{std::string(*key), std::move(*value), c.version, c.attempts + 1,
                                    c.dirty_since});
            source.push_back(i);
        }

        bool outage = false;
        if (!entries.empty()) {
            std::vector<const BatchResult::Failure*> failed(entries.size(), nullptr);
            BatchResult result;
            std::string batch_error;
            {
                std::vector<std::string> keys;
                keys.reserve(source.size());
                for (std::size_t i : source) keys.push_back(claimed[i].key);
                auto hold = claims_.hold(std::move(keys), token);
                counters_.add<&WriteBehindStats::batches>();
                try {
                    result = writer_(std::span<const Entry>(entries));
                } catch (const std::exception& e) {
                    outage = true;
                    batch_error = e.what();
                } catch (...) {
                    outage = true;
                    batch_error = "the batch writer threw a non-standard exception";
                }
            }
            if (outage) {
                counters_.add<&WriteBehindStats::failed_batches>();
                if (batch_error.empty()) batch_error = "the batch writer failed";
                const Millis delay =
                    outage_delay(outage_streak_.fetch_add(1, std::memory_order_relaxed) + 1);
                if (report.errors.size() < 16) report.errors.push_back("batch: " + batch_error);
                for (std::size_t j = 0; j < entries.size(); ++j) {
                    const ClaimedEntry& c = claimed[source[j]];
                    settlements.push_back(Settlement{.action = Settlement::defer,
                                                     .key = c.key,
                                                     .version = c.version,
                                                     .retry_after = delay,
                                                     .error = batch_error});
                }
            } else {
                outage_streak_.store(0, std::memory_order_relaxed);
                for (const auto& f : result.failures()) {
                    if (f.index < entries.size() && !failed[f.index]) failed[f.index] = &f;
                }
                for (std::size_t j = 0; j < entries.size(); ++j) {
                    const ClaimedEntry& c = claimed[source[j]];
                    const BatchResult::Failure* f = failed[j];
                    if (!f) {
                        settlements.push_back(Settlement{
                            .action = Settlement::ack, .key = c.key, .version = c.version});
                        continue;
                    }
                    const std::string error = f->error.empty() ? "failed (no message)" : f->error;
                    if (report.errors.size() < 16)
                        report.errors.push_back(entries[j].key + ": " + error);
                    if (f->stale) {
                        ++report.stale;
                        counters_.add<&WriteBehindStats::stale>();
                        settlements.push_back(dead_letter(
                            c, "refused as stale (the database holds a newer version): " + error));
                    } else {
                        settlements.push_back(rejected(c, error, draining));
                    }
                }
            }
        }

        for (Settlement& s : settlements) s.token = token;
        std::vector<SettleResult> results;
        try {
            results = store_.settle(settlements, options_.clean_ttl);
        } catch (const BackendError& e) {
            // Whatever the settle did not remove is still held under `token`: this object's
            // next claim releases it (the entries are written again, fenced by version), so
            // it does not wait out claim_ttl - nor does a drain stuck behind it.
            counters_.add<&WriteBehindStats::backend_errors>();
            remember_lost_claim(token);
            report.store_error = e.what();
            return outage;
        }
        for (std::size_t k = 0; k < settlements.size() && k < results.size(); ++k) {
            const Settlement& s = settlements[k];
            switch (results[k]) {
                case SettleResult::superseded:
                    ++report.superseded;
                    counters_.add<&WriteBehindStats::superseded>();
                    continue;
                case SettleResult::lost:
                    // Another flusher holds it now (or will): it writes the entry again, so a
                    // database write fenced by the version keeps the later of the two.
                    ++report.forfeited;
                    counters_.add<&WriteBehindStats::forfeited>();
                    continue;
                case SettleResult::held:
                    ++report.held;
                    counters_.add<&WriteBehindStats::held>();
                    announce_dead(s.key, s.version, s.error, true);
                    continue;
                case SettleResult::gone:
                    continue;
                case SettleResult::done:
                    break;
            }
            switch (s.action) {
                case Settlement::ack:
                    ++report.flushed;
                    counters_.add<&WriteBehindStats::flushed>();
                    break;
                case Settlement::retry:
                    ++report.retried;
                    counters_.add<&WriteBehindStats::retried>();
                    break;
                case Settlement::defer:
                    ++report.deferred;
                    counters_.add<&WriteBehindStats::deferred>();
                    break;
                case Settlement::dead:
                    ++report.dead_lettered;
                    counters_.add<&WriteBehindStats::dead_lettered>();
                    announce_dead(s.key, s.version, s.error, false);
                    break;
            }
        }
        return outage;
    }

    const WriteBehindOptions& options_;
    Store& store_;
    BatchWriter writer_;
    StripedCounters<WriteBehindStats>& counters_;
    ClaimKeeper<Store> claims_;
    Cache cache_;
    std::atomic<std::uint32_t> outage_streak_{0};  // batches in a row that failed as a whole
    std::mutex lost_mutex_;
    std::vector<std::uint64_t> lost_;  // see lost_claims()
};

}  // namespace larder::detail
