// The fixed inputs of the envelope target: envelopes of each kind, and headers whose tag
// count and tag lengths claim more than the bytes hold.
#include <larder/core/envelope.hpp>

#include <cstdint>
#include <string>
#include <vector>

#include "fuzz_support.hpp"

namespace {

namespace envelope = larder::envelope;

std::string header(larder::EntryKind kind, std::uint16_t tag_count) {
    std::string out;
    envelope::write_header(
        out,
        larder::EnvelopeHeader{.kind = kind,
                               .codec = 1,
                               .written_at = larder::TimePoint{larder::Millis{1'700'000'000'000}},
                               .version = 7,
                               .nonce = 0x0123456789abcdef},
        tag_count);
    return out;
}

std::string u32(std::uint32_t v) {
    std::string out;
    envelope::detail::put<std::uint32_t>(out, v);
    return out;
}

}  // namespace

larder::fuzz::ReplayInputs larder::fuzz::replay_inputs() {
    using larder::EntryKind;
    ReplayInputs in;
    std::string tagged = header(EntryKind::value, 2);
    envelope::write_tag(tagged, "user:42", 3);
    envelope::write_tag(tagged, "", 0xffffffffffffffff);
    tagged += R"({"id":42})";
    in.valid.push_back(tagged);
    in.valid.push_back(header(EntryKind::value, 0) + "payload");
    in.valid.push_back(header(EntryKind::not_found, 0));
    in.valid.push_back(envelope::make_lease(larder::Token{1, 2}, larder::TimePoint{}, 1));

    for (const std::uint16_t count : {1, 2, 255, 65535}) {
        in.hostile.push_back(header(EntryKind::value, count));
        in.hostile.push_back(header(EntryKind::value, count) + u32(0));
        in.hostile.push_back(header(EntryKind::value, count) + u32(0) + std::string(8, 'v'));
    }
    for (const std::uint32_t len : {1u, 8u, 0x7fffffffu, 0xfffffff7u, 0xfffffff8u, 0xffffffffu}) {
        in.hostile.push_back(header(EntryKind::value, 1) + u32(len) + std::string(16, 'x'));
    }
    for (int kind = 0; kind < 256; kind += 51) {
        std::string h = header(EntryKind::value, 0);
        h[3] = static_cast<char>(kind);
        in.hostile.push_back(h);
    }
    for (const std::size_t token : {0, 15, 17, 32}) {
        in.hostile.push_back(header(EntryKind::lease, 0) + std::string(token, 't'));
    }
    std::string version = header(EntryKind::value, 0);
    version[2] = static_cast<char>(envelope::format_version + 1);
    in.hostile.push_back(version);
    in.hostile.push_back(header(EntryKind::value, 0).substr(0, envelope::header_size - 1));
    in.hostile.emplace_back("\xca\xce");
    in.hostile.emplace_back();
    return in;
}
