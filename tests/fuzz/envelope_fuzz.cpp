// Fuzz target: envelope::parse, the first thing every read does with the bytes it finds
// under a key (docs/FORMAT.md). Checked, besides "no crash":
//  - what parse returns lies inside the input: the tag records right after the header,
//    the payload right after them and up to the end; a lease's payload is its 16 bytes;
//  - for_each_tag walks exactly the tag records parse accepted, and no further;
//  - bytes that parse are written back byte for byte by write_header, write_tag and the
//    payload (but for the reserved field, which parse ignores and write_header zeroes, and
//    a zero nonce, which write_header replaces);
//  - the other way round: a header, tags and payload built from the input, written and
//    parsed, come back unchanged; so does a lease made by make_lease.
#include <larder/core/envelope.hpp>

#include <chrono>
#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "fuzz_support.hpp"

namespace {

using larder::fuzz::check;
namespace envelope = larder::envelope;

bool same_header(const larder::EnvelopeHeader& a, const larder::EnvelopeHeader& b) {
    return a.kind == b.kind && a.codec == b.codec && a.written_at == b.written_at &&
           a.fresh_until == b.fresh_until && a.grace_until == b.grace_until &&
           a.recompute_time == b.recompute_time && a.version == b.version && a.nonce == b.nonce &&
           a.flags == b.flags;
}

std::vector<std::pair<std::string_view, std::uint64_t>> tags_of(const larder::EnvelopeView& v) {
    std::vector<std::pair<std::string_view, std::uint64_t>> out;
    envelope::for_each_tag(
        v, [&](std::string_view name, std::uint64_t version) { out.emplace_back(name, version); });
    return out;
}

// Whatever parse accepts.
void parsed(std::string_view bytes) {
    const auto v = envelope::parse(bytes);
    if (!v) return;
    check(bytes.size() >= envelope::header_size);
    check(v->tags.data() == bytes.data() + envelope::header_size);
    check(v->payload.data() == v->tags.data() + v->tags.size());
    check(v->payload.data() + v->payload.size() == bytes.data() + bytes.size());
    check(v->header.kind != larder::EntryKind::lease || v->payload.size() == 16);

    const auto tags = tags_of(*v);
    check(tags.size() == v->tag_count);
    std::size_t walked = 0;
    for (const auto& [name, version] : tags) {
        check(name.data() >= v->tags.data() && name.data() + name.size() <= v->payload.data());
        walked += 4 + name.size() + 8;
    }
    check(walked == v->tags.size());

    std::string again;
    envelope::write_header(again, v->header, v->tag_count);
    for (const auto& [name, version] : tags) envelope::write_tag(again, name, version);
    again.append(v->payload);
    check(again.size() == bytes.size());
    std::string expected(bytes);
    expected.replace(36, 4, std::string(4, '\0'));  // reserved: written as zero
    if (v->header.nonce == 0) expected.replace(48, 8, again.substr(48, 8));  // drawn anew
    check(again == expected);
}

// A well-formed envelope from the input, written, then parsed.
void written(larder::fuzz::Input& in) {
    using larder::TimePoint;
    larder::EnvelopeHeader h;
    h.kind = static_cast<larder::EntryKind>(1 + in.byte() % 3);
    h.codec = in.byte();
    h.flags = in.byte();
    h.written_at = TimePoint{larder::Millis{in.integral<std::int64_t>()}};
    h.fresh_until = TimePoint{larder::Millis{in.integral<std::int64_t>()}};
    h.grace_until = TimePoint{larder::Millis{in.integral<std::int64_t>()}};
    h.recompute_time = std::chrono::microseconds{in.integral<std::uint32_t>()};
    h.version = in.integral<std::uint64_t>();
    h.nonce = in.integral<std::uint64_t>() | 1;
    std::vector<std::pair<std::string, std::uint64_t>> tags(in.byte() % 8);
    for (auto& [name, version] : tags) {
        name = in.text(64);
        version = in.integral<std::uint64_t>();
    }
    const std::string_view payload =
        h.kind == larder::EntryKind::lease ? in.take(16) : in.text(255);

    std::string bytes;
    envelope::write_header(bytes, h, static_cast<std::uint16_t>(tags.size()));
    for (const auto& [name, version] : tags) envelope::write_tag(bytes, name, version);
    bytes.append(payload);

    const auto v = envelope::parse(bytes);
    check(v.has_value() == (h.kind != larder::EntryKind::lease || payload.size() == 16));
    if (!v) return;
    check(same_header(v->header, h));
    check(v->payload == payload);
    const auto back = tags_of(*v);
    check(back.size() == tags.size());
    for (std::size_t i = 0; i < tags.size(); ++i) {
        check(back[i].first == tags[i].first && back[i].second == tags[i].second);
    }

    const larder::Token token{in.integral<std::uint64_t>(), in.integral<std::uint64_t>()};
    const std::uint8_t flags = in.byte();
    const std::string lease = envelope::make_lease(token, h.written_at, flags);
    const auto l = envelope::parse(lease);
    check(l && l->header.kind == larder::EntryKind::lease && l->header.flags == flags &&
          l->header.written_at == h.written_at && l->header.nonce == (token[0] | 1) &&
          l->tag_count == 0 && l->payload.size() == 16 &&
          envelope::detail::get<std::uint64_t>(l->payload.data()) == token[0] &&
          envelope::detail::get<std::uint64_t>(l->payload.data() + 8) == token[1]);
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
    const std::string_view bytes(reinterpret_cast<const char*>(data), size);
    parsed(bytes);
    // The same bytes behind a valid magic and version, so that mutations reach past the
    // first three checks without having to find them.
    if (size >= 3) {
        std::string framed(bytes);
        framed[0] = static_cast<char>(envelope::magic[0]);
        framed[1] = static_cast<char>(envelope::magic[1]);
        framed[2] = static_cast<char>(envelope::format_version);
        parsed(framed);
    }
    larder::fuzz::Input in(data, size);
    written(in);
    return 0;
}
