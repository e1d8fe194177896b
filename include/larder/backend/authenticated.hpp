// Authenticated<B>: a Backend decorator that seals everything written through it with an
// HMAC-SHA256 bound to the key it is stored under, and verifies it on every read. Whoever
// can write to the shared store but does not hold the secret can then no longer plant
// values, "not found" entries, leases, tag versions or write-behind queue entries: what
// fails verification reads as corrupt bytes (a miss, counted in corrupt_values), which
// the policies replace. docs/authenticated-entries.md has the threat model. Link with
// larder::crypto (OpenSSL's libcrypto).
//
// Stored bytes: the payload, then a 39-byte trailer
//
//   tag[32]  HMAC-SHA256(secret[key_id], "larder.auth.v1" || key_id || len(key) || key ||
//                        payload), len(key) as u64 little-endian
//   key_id   u32 little-endian
//   magic    0xA5 0x1A 0x01
//
// `key` is the key as the store sees it (RedisBackend's key_prefix included), so a value
// copied to another key, or to another tenant's prefix, fails verification.
//
// Bytes that fail verification are handed to the policy in a *rejected form*: a marker
// unique to this decorator, then the raw stored bytes. The marker is not an envelope, not
// a number and not a sealed value, so every reader counts the entry as corrupt; when the
// policy then replaces "exactly the bytes it read" with compare_and_set (or deletes them
// with compare_and_delete), the decorator sees its marker in `expected` and compares with
// the raw bytes behind it. The marker holds 128 random bits drawn per decorator and is
// never stored, so no stored or caller-supplied bytes can be mistaken for it.
#pragma once

#include <array>
#include <atomic>
#include <charconv>
#include <cstdint>
#include <cstring>
#include <limits>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "larder/backend/backend.hpp"
#include "larder/backend/write_behind_store.hpp"
#include "larder/core/error.hpp"
#include "larder/core/random.hpp"
#include "larder/crypto/hmac.hpp"

namespace larder {

struct AuthenticationOptions {
    /// Every key accepted on read. Ids are stored with the values: never reuse one for a
    /// different secret.
    std::vector<MacKey> keys{};
    /// The key that seals new writes; must be one of `keys`.
    std::uint32_t write_key_id = 0;
};

/// What failed verification since the decorator was made.
struct AuthenticationStats {
    /// Stored bytes read back that were not sealed by an accepted key for their key.
    std::uint64_t rejected_reads = 0;
    /// Claimed write-behind entries that failed verification and were dead-lettered
    /// instead of reaching the batch writer.
    std::uint64_t rejected_queue_entries = 0;
};

namespace auth_detail {

inline constexpr std::string_view domain = "larder.auth.v1";
inline constexpr std::array<unsigned char, 3> magic{0xA5, 0x1A, 0x01};
inline constexpr std::size_t trailer_size = crypto::hmac_sha256_size + 4 + magic.size();

inline void put_u32(char* out, std::uint32_t v) {
    for (int i = 0; i < 4; ++i) out[i] = static_cast<char>((v >> (8 * i)) & 0xFF);
}
inline std::uint32_t get_u32(const char* p) {
    std::uint32_t v = 0;
    for (int i = 0; i < 4; ++i) v |= std::uint32_t{static_cast<unsigned char>(p[i])} << (8 * i);
    return v;
}
inline void put_u64(char* out, std::uint64_t v) {
    for (int i = 0; i < 8; ++i) out[i] = static_cast<char>((v >> (8 * i)) & 0xFF);
}

}  // namespace auth_detail

template <Backend B>
class Authenticated {
public:
    using inner_type = B;

    /// `inner` is borrowed and must outlive this object. Throws ConfigError on a bad
    /// keyring (no keys, a duplicate id, a secret under 16 bytes, an unknown write key).
    Authenticated(B& inner, const AuthenticationOptions& options)
        : inner_(inner),
          keyring_(std::make_shared<const crypto::Keyring>(options.keys, options.write_key_id)) {
        const Token t = random_token();
        marker_.assign("\xFFlarder.unverified:", 19);
        char bytes[16];
        std::memcpy(bytes, t.data(), sizeof bytes);
        marker_.append(bytes, sizeof bytes);
    }

    Authenticated(const Authenticated&) = delete;
    Authenticated& operator=(const Authenticated&) = delete;

    [[nodiscard]] B& inner() noexcept { return inner_; }
    [[nodiscard]] const B& inner() const noexcept { return inner_; }

    [[nodiscard]] AuthenticationStats auth_stats() const noexcept {
        return AuthenticationStats{rejected_reads_.load(std::memory_order_relaxed),
                                   rejected_queue_entries_.load(std::memory_order_relaxed)};
    }

    // ---- the Backend concept --------------------------------------------------------

    std::optional<StoredValue> get(std::string_view key) {
        auto v = inner_.get(key);
        if (v) v->bytes = open(key, std::move(v->bytes));
        return v;
    }

    std::vector<std::optional<StoredValue>> get_many(std::span<const std::string> keys) {
        auto out = inner_.get_many(keys);
        open_all(keys, out);
        return out;
    }

    void set(std::string_view key, std::string_view value, Millis ttl) {
        inner_.set(key, seal(key, value), ttl);
    }

    /// Bytes that fail verification count as absent: a planted lease or sibling (which
    /// callers take with set_if_absent and never read) would otherwise block its key for
    /// good. They are replaced only by a compare-and-set on exactly those bytes.
    bool set_if_absent(std::string_view key, std::string_view value, Millis ttl) {
        const std::string sealed = seal(key, value);
        for (int attempt = 0; attempt < 3; ++attempt) {
            if (inner_.set_if_absent(key, sealed, ttl)) return true;
            const auto held = inner_.get(key);
            if (!held) continue;  // gone meanwhile: try again
            if (verify(key, held->bytes)) return false;
            rejected_reads_.fetch_add(1, std::memory_order_relaxed);
            if (inner_.compare_and_set(key, held->bytes, sealed, ttl)) return true;
        }
        return false;
    }

    bool compare_and_set(std::string_view key, std::string_view expected, std::string_view value,
                         Millis ttl) {
        const std::string sealed = seal(key, value);
        return compare(key, expected, [&](std::string_view stored) {
            return inner_.compare_and_set(key, stored, sealed, ttl);
        });
    }

    bool compare_and_delete(std::string_view key, std::string_view expected) {
        return compare(key, expected, [&](std::string_view stored) {
            return inner_.compare_and_delete(key, stored);
        });
    }

    bool compare_and_expire(std::string_view key, std::string_view expected, Millis ttl) {
        return compare(key, expected, [&](std::string_view stored) {
            return inner_.compare_and_expire(key, stored, ttl);
        });
    }

    bool del(std::string_view key) { return inner_.del(key); }

    /// INCRBY on a sealed decimal: read, verify, compare-and-set, until no other writer
    /// came between (the store cannot add to bytes it cannot verify). A missing key counts
    /// from 0, the remaining TTL is kept (to the millisecond), and a value that is not a
    /// sealed integer throws BackendError, as INCRBY on a non-integer does. No policy
    /// calls it; it is built on the compare operations alone, so Authenticated<B> has the
    /// Increments capability whether B has it or not.
    std::int64_t increment(std::string_view key, std::int64_t delta) {
        for (int round = 0; round < 1000; ++round) {
            const auto current = get(key);
            if (!current) {
                if (set_if_absent(key, std::to_string(delta), no_expiry)) return delta;
                continue;
            }
            std::int64_t value = 0;
            const char* end = current->bytes.data() + current->bytes.size();
            const auto [ptr, ec] = std::from_chars(current->bytes.data(), end, value);
            if (ec != std::errc{} || ptr != end || current->bytes.empty()) {
                throw BackendError(
                    "Authenticated::increment: the value of the key is not a "
                    "sealed integer");
            }
            if ((delta > 0 && value > std::numeric_limits<std::int64_t>::max() - delta) ||
                (delta < 0 && value < std::numeric_limits<std::int64_t>::min() - delta)) {
                throw BackendError("Authenticated::increment: increment would overflow");
            }
            const std::int64_t next = value + delta;
            // A key that expires between the read and the write gets 1 ms, not "forever".
            const Millis ttl = current->ttl ? std::max(*current->ttl, Millis{1}) : no_expiry;
            if (compare_and_set(key, current->bytes, std::to_string(next), ttl)) return next;
        }
        throw BackendError("Authenticated::increment: too many concurrent writers on the key");
    }

    // ---- optional capabilities, forwarded where the inner backend has them -----------

    std::optional<StoredValue> get_value(std::string_view key) requires ValueOnlyReads<B> {
        auto v = inner_.get_value(key);
        if (v) v->bytes = open(key, std::move(v->bytes));
        return v;
    }

    std::vector<std::optional<StoredValue>> get_many_values(
        std::span<const std::string> keys) requires ValueOnlyReads<B> {
        auto out = inner_.get_many_values(keys);
        open_all(keys, out);
        return out;
    }

    [[nodiscard]] std::uint64_t evictions() const noexcept requires requires(const B& b) {
        { b.evictions() } -> std::convertible_to<std::uint64_t>;
    }
    { return inner_.evictions(); }

    // ---- sealing, for the write-behind store decorator and for tools ------------------

    /// `value` with its trailer, as stored under `key`.
    [[nodiscard]] std::string seal(std::string_view key, std::string_view value) const {
        return seal_with(0, key, value);
    }

    /// The payload of `stored` when it verifies for `key`, else the rejected form (which
    /// the compare operations map back to `stored`). Counts rejections.
    [[nodiscard]] std::string open(std::string_view key, std::string stored) const {
        if (verify(key, stored)) {
            stored.resize(stored.size() - auth_detail::trailer_size);
            return stored;
        }
        rejected_reads_.fetch_add(1, std::memory_order_relaxed);
        std::string out;
        out.reserve(marker_.size() + stored.size());
        out.append(marker_).append(stored);
        return out;
    }

    /// Whether `bytes` are what open() returns for stored bytes that failed verification.
    [[nodiscard]] bool is_rejected(std::string_view bytes) const noexcept {
        return bytes.starts_with(marker_);
    }

    /// Calls op(stored) with each stored form `expected` can have, until one returns
    /// true: the raw bytes behind a rejected form, else `expected` sealed with each
    /// accepted key, the write key first. (A value read under an older key is sealed
    /// with that key, and an HMAC is deterministic, so one of them is what is stored.)
    template <class Op>
    bool compare(std::string_view key, std::string_view expected, Op&& op) const {
        if (is_rejected(expected)) return op(expected.substr(marker_.size()));
        for (std::size_t i = 0; i < keyring_->size(); ++i) {
            if (op(std::string_view(seal_with(i, key, expected)))) return true;
        }
        return false;
    }

    void count_rejected_queue_entry() const noexcept {
        rejected_queue_entries_.fetch_add(1, std::memory_order_relaxed);
    }

private:
    // The key the MAC is bound to: the store's own name for it where the backend has one
    // (RedisBackend's key_prefix), so that tenants with distinct prefixes cannot swap
    // entries even with one shared secret.
    std::string bound_key(std::string_view key) const {
        if constexpr (requires(const B& b) {
                          { b.stored_key(key) } -> std::convertible_to<std::string>;
                      }) {
            return inner_.stored_key(key);
        } else {
            return std::string(key);
        }
    }

    crypto::HmacTag tag(const crypto::HmacKey& k, std::uint32_t id, std::string_view key,
                        std::string_view payload) const {
        const std::string bound = bound_key(key);
        char header[12];
        auth_detail::put_u32(header, id);
        auth_detail::put_u64(header + 4, bound.size());
        return k.mac(std::array<std::string_view, 4>{
            auth_detail::domain, std::string_view(header, sizeof header), bound, payload});
    }

    std::string seal_with(std::size_t key_index, std::string_view key,
                          std::string_view value) const {
        const std::uint32_t id = keyring_->id_at(key_index);
        const crypto::HmacTag t = tag(keyring_->key_at(key_index), id, key, value);
        std::string out;
        out.reserve(value.size() + auth_detail::trailer_size);
        out.append(value);
        out.append(reinterpret_cast<const char*>(t.data()), t.size());
        char id_bytes[4];
        auth_detail::put_u32(id_bytes, id);
        out.append(id_bytes, sizeof id_bytes);
        out.append(reinterpret_cast<const char*>(auth_detail::magic.data()),
                   auth_detail::magic.size());
        return out;
    }

    bool verify(std::string_view key, std::string_view stored) const {
        using namespace auth_detail;
        if (stored.size() < trailer_size) return false;
        const char* trailer = stored.data() + stored.size() - trailer_size;
        if (std::memcmp(trailer + crypto::hmac_sha256_size + 4, magic.data(), magic.size()) != 0) {
            return false;
        }
        const std::uint32_t id = get_u32(trailer + crypto::hmac_sha256_size);
        const crypto::HmacKey* k = keyring_->find(id);
        if (!k) return false;  // an unknown or retired key
        const crypto::HmacTag expected =
            tag(*k, id, key, stored.substr(0, stored.size() - trailer_size));
        return crypto::equal(expected.data(), reinterpret_cast<const unsigned char*>(trailer),
                             expected.size());
    }

    void open_all(std::span<const std::string> keys, std::vector<std::optional<StoredValue>>& out) {
        for (std::size_t i = 0; i < out.size() && i < keys.size(); ++i) {
            if (out[i]) out[i]->bytes = open(keys[i], std::move(out[i]->bytes));
        }
    }

    B& inner_;
    std::shared_ptr<const crypto::Keyring> keyring_;
    std::string marker_;
    mutable std::atomic<std::uint64_t> rejected_reads_{0};
    mutable std::atomic<std::uint64_t> rejected_queue_entries_{0};
};

/// The write-behind queue of Authenticated<B>: B's own store, with every queued value
/// sealed for its key (the same bytes Authenticated<B> writes, so the cached copy the
/// store writes beside the queue reads back through the decorator). A claimed entry that
/// fails verification is dead-lettered here and never returned, so a planted entry never
/// reaches the batch writer, whatever its key; it is counted in
/// AuthenticationStats::rejected_queue_entries and listed by list_dead.
template <Backend B>
class AuthenticatedWriteBehindStore {
public:
    using inner_store_type = write_behind_store_t<B>;

    AuthenticatedWriteBehindStore(Authenticated<B>& backend, WriteBehindStoreOptions options = {})
        : auth_(backend), inner_(backend.inner(), std::move(options)) {}

    AuthenticatedWriteBehindStore(const AuthenticatedWriteBehindStore&) = delete;
    AuthenticatedWriteBehindStore& operator=(const AuthenticatedWriteBehindStore&) = delete;

    [[nodiscard]] inner_store_type& inner() noexcept { return inner_; }

    PutOutcome put(std::string_view key, std::string_view bytes, std::size_t max_pending) {
        return inner_.put(key, auth_.seal(key, bytes), max_pending);
    }

    PutOutcome put_if(std::string_view key, std::string_view bytes, std::string_view expected,
                      std::size_t max_pending) {
        const std::string sealed = auth_.seal(key, bytes);
        PutOutcome out{.status = PutStatus::conflict};
        auth_.compare(key, expected, [&](std::string_view stored) {
            out = inner_.put_if(key, sealed, stored, max_pending);
            return out.status != PutStatus::conflict;
        });
        return out;
    }

    std::optional<CurrentValue> read_current(std::string_view key) {
        auto c = inner_.read_current(key);
        if (c) c->bytes = auth_.open(key, std::move(c->bytes));
        return c;
    }

    std::optional<std::string> unflushed_value(std::string_view key) {
        auto v = inner_.unflushed_value(key);
        if (v) v = auth_.open(key, std::move(*v));
        return v;
    }

    ClaimBatch claim(std::size_t max, Millis claim_ttl) { return claim(max, claim_ttl, {}); }

    ClaimBatch claim(std::size_t max, Millis claim_ttl, const ClaimOptions& options) {
        ClaimBatch out;
        ClaimOptions round_options = options;
        // A batch thinned by rejected entries is topped up, so that planted entries do not
        // make a flusher that stops at a short batch fall behind. The top-ups carry the
        // same token (one claim to release if a reply is lost), and lost claims are
        // released by the first round only.
        for (int round = 0; round < 4 && out.entries.size() < max; ++round) {
            const std::size_t want = max - out.entries.size();
            ClaimBatch batch = inner_.claim(want, claim_ttl, round_options);
            round_options.lost = {};
            out.requeued += batch.requeued;
            out.dead_lettered.insert(out.dead_lettered.end(), batch.dead_lettered.begin(),
                                     batch.dead_lettered.end());
            out.held.insert(out.held.end(), batch.held.begin(), batch.held.end());
            const std::size_t got = batch.entries.size();
            std::vector<Settlement> rejected;
            for (auto& e : batch.entries) {
                std::string opened = auth_.open(e.key, std::move(e.value));
                if (auth_.is_rejected(opened)) {
                    auth_.count_rejected_queue_entry();
                    rejected.push_back(Settlement{
                        .action = Settlement::dead,
                        .key = e.key,
                        .version = e.version,
                        .error = "larder: the queued value failed authentication (not sealed "
                                 "with an accepted key for this key)",
                        .token = options.token});
                    continue;
                }
                e.value = std::move(opened);
                out.entries.push_back(std::move(e));
            }
            if (!rejected.empty()) {
                // A store failure here leaves the claims to expire; they come back and are
                // rejected again.
                (void)inner_.settle(rejected, Millis{0});
            }
            if (rejected.empty() || got < want) break;
        }
        return out;
    }

    std::size_t extend(std::span<const std::string> keys, Millis claim_ttl, std::uint64_t token) {
        return inner_.extend(keys, claim_ttl, token);
    }

    std::vector<SettleResult> settle(std::span<const Settlement> settlements, Millis clean_ttl) {
        return inner_.settle(settlements, clean_ttl);
    }

    std::vector<DeadRecord> list_dead(std::size_t limit) {
        auto out = inner_.list_dead(limit);
        for (auto& d : out) d.value = auth_.open(d.key, std::move(d.value));
        return out;
    }

    RedriveResult redrive(std::string_view key) { return inner_.redrive(key); }
    bool discard_dead(std::string_view key) { return inner_.discard_dead(key); }
    QueueStats stats() { return inner_.stats(); }
    std::vector<std::string> pending_keys(std::size_t limit) { return inner_.pending_keys(limit); }
    EvictionRisk eviction_risk() { return inner_.eviction_risk(); }
    Persistence persistence() { return inner_.persistence(); }

    static constexpr bool durable = inner_store_type::durable;

private:
    Authenticated<B>& auth_;
    inner_store_type inner_;
};

/// WriteBehind<T, Authenticated<B>> queues through B's store, sealed. (For RedisBackend,
/// include <larder/backend/redis/write_behind_store.hpp> as well.)
template <class B>
struct write_behind_store_for<Authenticated<B>> {
    using type = AuthenticatedWriteBehindStore<B>;
};

static_assert(Backend<Authenticated<MemoryBackend>>);
static_assert(Increments<Authenticated<MemoryBackend>>);
static_assert(ValueOnlyReads<Authenticated<MemoryBackend>> == ValueOnlyReads<MemoryBackend>);
static_assert(WriteBehindStore<AuthenticatedWriteBehindStore<MemoryBackend>>);

}  // namespace larder
