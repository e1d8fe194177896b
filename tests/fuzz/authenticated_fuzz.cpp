// Fuzz target: the seal of Authenticated<B> (include/larder/backend/authenticated.hpp),
// which every read through the decorator opens: the payload, then a trailer of an
// HMAC-SHA256 tag, a key id and a magic. The input is a store key and stored bytes, as they
// are and behind a trailer with a valid magic and key id, so that mutations reach the tag
// check. Checked, besides "no crash":
//  - open throws nothing; it returns a payload, or the rejected form: the decorator's
//    marker, then the stored bytes as they were;
//  - stored bytes open to a payload only when they are that payload sealed for that key
//    by an accepted key (HMACs are deterministic: compare() offers exactly those forms);
//  - round trip: a payload sealed for a key opens to it under that key, and is rejected
//    under any other key.
#include <larder/backend/authenticated.hpp>
#include <larder/backend/memory.hpp>

#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "fuzz_support.hpp"

namespace {

using larder::fuzz::check;
using Sealed = larder::Authenticated<larder::MemoryBackend>;

// Two accepted keys, id 1 sealing new writes; the corpus is sealed with them.
Sealed& decorator() {
    static larder::MemoryBackend store;
    static Sealed sealed(
        store, larder::AuthenticationOptions{.keys = {{1, "fuzz-secret-one-0123456789abcdef"},
                                                      {7, "fuzz-secret-seven-0123456789abcd"}},
                                             .write_key_id = 1});
    return sealed;
}

// Every stored form of `payload` under `key` (one per accepted key).
std::vector<std::string> sealed_forms(Sealed& s, std::string_view key, std::string_view payload) {
    std::vector<std::string> forms;
    s.compare(key, payload, [&](std::string_view stored) {
        forms.emplace_back(stored);
        return false;
    });
    return forms;
}

void opened(Sealed& s, std::string_view key, std::string_view stored) {
    const std::string out = s.open(key, std::string(stored));
    if (s.is_rejected(out)) {
        // The rejected form: compare() maps it back to exactly the stored bytes.
        std::vector<std::string> back;
        s.compare(key, out, [&](std::string_view raw) {
            back.emplace_back(raw);
            return false;
        });
        check(back.size() == 1 && back[0] == stored);
        return;
    }
    check(out.size() + larder::auth_detail::trailer_size == stored.size() &&
          stored.starts_with(out));
    if (s.is_rejected(out)) return;  // see below
    bool found = false;
    for (const auto& form : sealed_forms(s, key, out)) found = found || form == stored;
    check(found);
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
    Sealed& s = decorator();
    larder::fuzz::Input in(data, size);
    const std::string key(in.text(32));
    const std::uint8_t id = in.byte();
    const std::string_view stored = in.rest();

    opened(s, key, stored);
    // Behind a trailer with a valid magic and an accepted (or not) key id.
    std::string framed(stored);
    framed.append(larder::crypto::hmac_sha256_size, '\0');
    char id_bytes[4];
    larder::auth_detail::put_u32(id_bytes, (id & 1) ? 1 : (id & 2) ? 7 : id);
    framed.append(id_bytes, 4);
    for (const unsigned char m : larder::auth_detail::magic) framed.push_back(static_cast<char>(m));
    opened(s, key, framed);

    // Sealed, then opened: under its key, and under another. A payload that starts with
    // the decorator's marker is outside the contract (128 random bits per decorator, never
    // stored: only code that reads this process's memory can write them, as libFuzzer's
    // comparison tracing does), so compare() is not asked about one.
    const std::string sealed = s.seal(key, stored);
    check(s.open(key, sealed) == stored);
    check(s.is_rejected(s.open(key + "x", sealed)));
    if (s.is_rejected(stored)) return 0;
    for (const auto& form : sealed_forms(s, key, stored)) check(s.open(key, form) == stored);
    return 0;
}
