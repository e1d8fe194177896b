// HMAC-SHA256 through OpenSSL's libcrypto (EVP_MAC), and the keyring that Authenticated
// uses: several keys accepted on read, one used on write, each with a numeric id stored
// beside the MAC so that keys can be rotated without a flag day. Link with larder::crypto.
#pragma once

#include <openssl/core_names.h>
#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/params.h>

#include <array>
#include <atomic>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "larder/core/error.hpp"

namespace larder {

/// One HMAC key. The id is stored with every sealed value; ids must be unique within a
/// keyring and must never be reused for a different secret.
struct MacKey {
    std::uint32_t id = 0;
    /// Random bytes; at least 16 (32 recommended, the size of SHA-256's output).
    std::string secret{};
};

namespace crypto {

inline constexpr std::size_t hmac_sha256_size = 32;
using HmacTag = std::array<unsigned char, hmac_sha256_size>;

namespace detail {

inline EVP_MAC* hmac_algorithm() {
    // Fetched once: EVP_MAC_fetch looks the algorithm up in the provider tables, which is
    // far slower than the MAC of a small value.
    static EVP_MAC* mac = EVP_MAC_fetch(nullptr, "HMAC", nullptr);
    if (!mac) throw Error("larder: OpenSSL provides no HMAC");
    return mac;
}

struct CtxFree {
    void operator()(EVP_MAC_CTX* c) const noexcept { EVP_MAC_CTX_free(c); }
};
using CtxPtr = std::unique_ptr<EVP_MAC_CTX, CtxFree>;

// The per-thread working contexts, each already keyed: re-initialising a keyed context
// with the same key (EVP_MAC_init with no key) costs two SHA-256 block copies, where a
// fresh context costs allocations and the key schedule. Keyed by a serial number that is
// never reused, so a context can never be picked up by a later key at the same address.
struct ThreadContexts {
    struct Slot {
        std::uint64_t serial = 0;
        CtxPtr ctx{};
    };
    std::array<Slot, 8> slots{};
    std::size_t next = 0;
};

inline ThreadContexts& thread_contexts() {
    thread_local ThreadContexts contexts;
    return contexts;
}

inline std::uint64_t next_serial() {
    static std::atomic<std::uint64_t> serial{0};
    return serial.fetch_add(1, std::memory_order_relaxed) + 1;
}

}  // namespace detail

/// An HMAC-SHA256 key, ready to use from any thread.
class HmacKey {
public:
    explicit HmacKey(std::string_view secret) : serial_(detail::next_serial()) {
        if (secret.size() < 16) throw ConfigError("larder: a MAC secret needs at least 16 bytes");
        proto_.reset(EVP_MAC_CTX_new(detail::hmac_algorithm()));
        if (!proto_) throw Error("larder: EVP_MAC_CTX_new failed");
        char digest[] = "SHA256";
        const OSSL_PARAM params[] = {
            OSSL_PARAM_construct_utf8_string(OSSL_MAC_PARAM_DIGEST, digest, 0),
            OSSL_PARAM_construct_end()};
        if (EVP_MAC_init(proto_.get(), reinterpret_cast<const unsigned char*>(secret.data()),
                         secret.size(), params) != 1) {
            throw Error("larder: EVP_MAC_init(HMAC-SHA256) failed");
        }
    }

    HmacKey(const HmacKey&) = delete;
    HmacKey& operator=(const HmacKey&) = delete;

    /// The MAC of the concatenation of `parts`.
    template <std::size_t N>
    [[nodiscard]] HmacTag mac(const std::array<std::string_view, N>& parts) const {
        EVP_MAC_CTX* ctx = context();
        for (std::string_view p : parts) {
            if (!p.empty() && EVP_MAC_update(ctx, reinterpret_cast<const unsigned char*>(p.data()),
                                             p.size()) != 1) {
                throw Error("larder: EVP_MAC_update failed");
            }
        }
        HmacTag out{};
        std::size_t len = 0;
        if (EVP_MAC_final(ctx, out.data(), &len, out.size()) != 1 || len != out.size()) {
            throw Error("larder: EVP_MAC_final failed");
        }
        return out;
    }

private:
    // This thread's context for this key, reset to the start of a MAC.
    EVP_MAC_CTX* context() const {
        auto& tc = detail::thread_contexts();
        for (auto& slot : tc.slots) {
            if (slot.serial == serial_) {
                if (EVP_MAC_init(slot.ctx.get(), nullptr, 0, nullptr) != 1) {
                    throw Error("larder: EVP_MAC_init failed");
                }
                return slot.ctx.get();
            }
        }
        // A copy of the keyed prototype: EVP_MAC_CTX_dup reads it only, so threads may
        // copy it concurrently.
        detail::CtxPtr fresh(EVP_MAC_CTX_dup(proto_.get()));
        if (!fresh) throw Error("larder: EVP_MAC_CTX_dup failed");
        auto& slot = tc.slots[tc.next];
        tc.next = (tc.next + 1) % tc.slots.size();
        slot.serial = serial_;
        slot.ctx = std::move(fresh);
        return slot.ctx.get();
    }

    std::uint64_t serial_;
    detail::CtxPtr proto_;
};

/// Constant-time comparison of two MACs.
[[nodiscard]] inline bool equal(const unsigned char* a, const unsigned char* b,
                                std::size_t n) noexcept {
    return CRYPTO_memcmp(a, b, n) == 0;
}

/// Keys by id: every key verifies, the write key also signs. Immutable once built.
class Keyring {
public:
    Keyring(const std::vector<MacKey>& keys, std::uint32_t write_key_id) {
        if (keys.empty()) throw ConfigError("larder: a keyring needs at least one key");
        for (const auto& k : keys) {
            for (const auto& e : entries_) {
                if (e.id == k.id) {
                    throw ConfigError("larder: key id " + std::to_string(k.id) +
                                      " appears twice in the keyring");
                }
            }
            entries_.push_back(Entry{k.id, std::make_unique<HmacKey>(k.secret)});
        }
        for (std::size_t i = 0; i < entries_.size(); ++i) {
            if (entries_[i].id == write_key_id) write_ = i;
        }
        if (write_ == npos) {
            throw ConfigError("larder: the write key id " + std::to_string(write_key_id) +
                              " is not in the keyring");
        }
        // The write key first: compare operations try the keys in this order.
        if (write_ != 0) {
            std::swap(entries_[0], entries_[write_]);
            write_ = 0;
        }
    }

    [[nodiscard]] std::uint32_t write_id() const noexcept { return entries_[write_].id; }
    [[nodiscard]] const HmacKey& write_key() const noexcept { return *entries_[write_].key; }

    /// The key with this id; nullptr when it is not (or no longer) accepted.
    [[nodiscard]] const HmacKey* find(std::uint32_t id) const noexcept {
        for (const auto& e : entries_) {
            if (e.id == id) return e.key.get();
        }
        return nullptr;
    }

    [[nodiscard]] std::size_t size() const noexcept { return entries_.size(); }
    /// The i-th key (0 is the write key).
    [[nodiscard]] std::uint32_t id_at(std::size_t i) const noexcept { return entries_[i].id; }
    [[nodiscard]] const HmacKey& key_at(std::size_t i) const noexcept { return *entries_[i].key; }

private:
    static constexpr std::size_t npos = static_cast<std::size_t>(-1);
    struct Entry {
        std::uint32_t id;
        std::unique_ptr<HmacKey> key;
    };
    std::vector<Entry> entries_;
    std::size_t write_ = npos;
};

}  // namespace crypto
}  // namespace larder
