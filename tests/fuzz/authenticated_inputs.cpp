// The fixed inputs of the authenticated target: values sealed with each of the target's keys
// (the input is a key's length and bytes, a key id byte, then the stored bytes), and
// trailers that are cut short or name keys the keyring does not hold.
#include <larder/backend/authenticated.hpp>
#include <larder/backend/memory.hpp>

#include <string>
#include <string_view>

#include "fuzz_support.hpp"

namespace {

std::string input(std::string_view key, std::string_view stored) {
    return std::string(1, static_cast<char>(key.size())) + std::string(key) + '\0' +
           std::string(stored);
}

}  // namespace

larder::fuzz::ReplayInputs larder::fuzz::replay_inputs() {
    larder::MemoryBackend store;
    larder::Authenticated<larder::MemoryBackend> sealed(
        store, larder::AuthenticationOptions{.keys = {{1, "fuzz-secret-one-0123456789abcdef"},
                                                      {7, "fuzz-secret-seven-0123456789abcd"}},
                                             .write_key_id = 1});
    ReplayInputs in;
    for (const std::string_view key : {"", "app:k:user:42"}) {
        for (const std::string_view value : {"", "v", "{\"id\":42}"}) {
            sealed.compare(key, value, [&](std::string_view stored) {
                in.valid.push_back(input(key, stored));
                return false;
            });
        }
    }
    const std::string good = sealed.seal("k", "value");
    for (std::size_t cut = 1; cut <= larder::auth_detail::trailer_size; ++cut) {
        in.hostile.push_back(input("k", good.substr(0, good.size() - cut)));
    }
    std::string unknown_id = good;
    unknown_id[unknown_id.size() - 7] = '\x02';
    in.hostile.push_back(input("k", unknown_id));
    std::string bad_magic = good;
    bad_magic.back() = '\x02';
    in.hostile.push_back(input("k", bad_magic));
    std::string flipped = good;
    flipped[0] ^= 1;
    in.hostile.push_back(input("k", flipped));
    in.hostile.push_back(input("other", good));
    in.hostile.push_back(input("k", std::string(larder::auth_detail::trailer_size, '\0')));
    in.hostile.emplace_back();
    return in;
}
