// The stored format: a fixed little-endian header, optional tag versions, then the codec's
// bytes. It lets a reader tell a value from a cached "not found" and from another loader's
// lease, carries what the guards need (write time, recompute time, write version), and
// lets any bytes this cache did not write be recognised as foreign. docs/FORMAT.md is the
// specification; keep the two in step.
#pragma once

#include <array>
#include <bit>
#include <cstdint>
#include <cstring>
#include <iterator>
#include <optional>
#include <string>
#include <string_view>

#include "larder/core/clock.hpp"
#include "larder/core/random.hpp"

namespace larder {

enum class EntryKind : std::uint8_t {
    value = 1,      ///< a cached value; the payload is the codec's bytes
    not_found = 2,  ///< a cached "the database has no such row" (negative caching)
    lease = 3,      ///< a loader holds the key; the payload is its 16-byte token
};

/// Metadata written in front of every stored value.
struct EnvelopeHeader {
    EntryKind kind = EntryKind::value;
    std::uint8_t codec = 0;
    TimePoint written_at{};
    /// Until when the value is fresh (the writer's clock); the epoch means "while stored".
    TimePoint fresh_until{};
    /// Until when the value may be served stale (fail-safe grace); the epoch means "while
    /// stored". Never before fresh_until.
    TimePoint grace_until{};
    /// How long the value took to compute (XFetch's delta), saturating at ~71 minutes.
    std::chrono::microseconds recompute_time{0};
    /// A writer-supplied version (write-through ordering); 0 when none.
    std::uint64_t version = 0;
    /// Unique per write: two writes of equal values never store equal bytes, so a
    /// compare-and-set against the bytes of one can never succeed against the other.
    /// write_header draws a random one when this is 0.
    std::uint64_t nonce = 0;
    /// Bit flags; see envelope::flag_*.
    std::uint8_t flags = 0;
};

/// A parsed envelope; views into the stored bytes, so it must not outlive them.
struct EnvelopeView {
    EnvelopeHeader header;
    std::uint16_t tag_count = 0;
    std::string_view tags{};     ///< tag_count records of {u32 length, name, u64 version}
    std::string_view payload{};  ///< the codec's bytes (a lease's token)
};

namespace envelope {

inline constexpr std::array<unsigned char, 2> magic{0xCA, 0xCE};
inline constexpr std::uint8_t format_version = 3;
inline constexpr std::size_t header_size = 56;
/// A lease taken by a writer (WriteThrough's marker), not by a loader: seeing it proves
/// nothing about writes, since the write it fences is in progress.
inline constexpr std::uint8_t flag_write_marker = 0x01;

namespace detail {

// Little-endian on the wire whatever the host; one copy on a little-endian host.
template <class U>
void put(std::string& out, U v) {
    if constexpr (std::endian::native == std::endian::little) {
        char bytes[sizeof(U)];
        std::memcpy(bytes, &v, sizeof(U));
        out.append(bytes, sizeof(U));
    } else {
        for (std::size_t i = 0; i < sizeof(U); ++i) {
            out.push_back(static_cast<char>(static_cast<std::uint64_t>(v) >> (8 * i) & 0xFF));
        }
    }
}

template <class U>
U get(const char* p) {
    if constexpr (std::endian::native == std::endian::little) {
        U v;
        std::memcpy(&v, p, sizeof(U));
        return v;
    } else {
        std::uint64_t v = 0;
        for (std::size_t i = 0; i < sizeof(U); ++i) {
            v |= static_cast<std::uint64_t>(static_cast<unsigned char>(p[i])) << (8 * i);
        }
        return static_cast<U>(v);
    }
}

inline std::int64_t ms(TimePoint t) {
    return t.time_since_epoch().count();
}

}  // namespace detail

/// Appends the header (no tags) to `out`; tag records, then the payload, follow.
inline void write_header(std::string& out, const EnvelopeHeader& h, std::uint16_t tag_count = 0) {
    out.push_back(static_cast<char>(magic[0]));
    out.push_back(static_cast<char>(magic[1]));
    out.push_back(static_cast<char>(format_version));
    out.push_back(static_cast<char>(h.kind));
    out.push_back(static_cast<char>(h.codec));
    out.push_back(static_cast<char>(h.flags));
    detail::put<std::uint16_t>(out, tag_count);
    detail::put<std::int64_t>(out, detail::ms(h.written_at));
    detail::put<std::int64_t>(out, detail::ms(h.fresh_until));
    detail::put<std::int64_t>(out, detail::ms(h.grace_until));
    const auto us = h.recompute_time.count();
    detail::put<std::uint32_t>(
        out, static_cast<std::uint32_t>(us < 0 ? 0 : (us > 0xFFFFFFFF ? 0xFFFFFFFF : us)));
    detail::put<std::uint32_t>(out, 0);  // reserved
    detail::put<std::uint64_t>(out, h.version);
    std::uint64_t nonce = h.nonce;
    while (nonce == 0) nonce = random_token()[0];
    detail::put<std::uint64_t>(out, nonce);
}

/// Appends one tag record; call tag_count times right after write_header.
inline void write_tag(std::string& out, std::string_view name, std::uint64_t version) {
    detail::put<std::uint32_t>(out, static_cast<std::uint32_t>(name.size()));
    out.append(name);
    detail::put<std::uint64_t>(out, version);
}

/// Appends the header and a record for each of `tags` (each with a `name` and a
/// `version`): what every envelope starts with; the payload follows.
template <class Tags>
requires requires(const Tags& tags) {
    std::size(tags);
    tags.begin()->name;
    tags.begin()->version;
}
void write_header(std::string& out, const EnvelopeHeader& h, const Tags& tags) {
    write_header(out, h, static_cast<std::uint16_t>(std::size(tags)));
    for (const auto& t : tags) write_tag(out, t.name, t.version);
}

/// Parses stored bytes. Anything that is not a well-formed envelope of a known format
/// version gives nullopt: the caller counts it as corrupt and treats it as a miss.
[[nodiscard]] inline std::optional<EnvelopeView> parse(std::string_view bytes) noexcept {
    if (bytes.size() < header_size || static_cast<unsigned char>(bytes[0]) != magic[0] ||
        static_cast<unsigned char>(bytes[1]) != magic[1] ||
        static_cast<std::uint8_t>(bytes[2]) != format_version) {
        return std::nullopt;
    }
    const char* p = bytes.data();
    EnvelopeView v;
    const auto kind = static_cast<std::uint8_t>(p[3]);
    if (kind < 1 || kind > 3) return std::nullopt;
    v.header.kind = static_cast<EntryKind>(kind);
    v.header.codec = static_cast<std::uint8_t>(p[4]);
    v.header.flags = static_cast<std::uint8_t>(p[5]);
    v.tag_count = detail::get<std::uint16_t>(p + 6);
    v.header.written_at = TimePoint{Millis{detail::get<std::int64_t>(p + 8)}};
    v.header.fresh_until = TimePoint{Millis{detail::get<std::int64_t>(p + 16)}};
    v.header.grace_until = TimePoint{Millis{detail::get<std::int64_t>(p + 24)}};
    v.header.recompute_time = std::chrono::microseconds{detail::get<std::uint32_t>(p + 32)};
    v.header.version = detail::get<std::uint64_t>(p + 40);
    v.header.nonce = detail::get<std::uint64_t>(p + 48);

    std::size_t pos = header_size;
    for (std::uint16_t i = 0; i < v.tag_count; ++i) {
        if (bytes.size() - pos < 4) return std::nullopt;
        const std::size_t len = detail::get<std::uint32_t>(p + pos);
        if (bytes.size() - pos - 4 < len + 8) return std::nullopt;
        pos += 4 + len + 8;
    }
    v.tags = bytes.substr(header_size, pos - header_size);
    v.payload = bytes.substr(pos);
    if (v.header.kind == EntryKind::lease && v.payload.size() != 16) return std::nullopt;
    return v;
}

/// Calls fn(name, version) for every tag record of a parsed envelope.
template <class Fn>
void for_each_tag(const EnvelopeView& v, Fn&& fn) {
    const char* p = v.tags.data();
    for (std::uint16_t i = 0; i < v.tag_count; ++i) {
        const std::size_t len = detail::get<std::uint32_t>(p);
        fn(std::string_view(p + 4, len), detail::get<std::uint64_t>(p + 4 + len));
        p += 4 + len + 8;
    }
}

/// The bytes of a lease: a header of kind lease and the holder's token. Unique per holder,
/// so compare-and-set / compare-and-delete against them fence out everybody else.
[[nodiscard]] inline std::string make_lease(const Token& token, TimePoint now,
                                            std::uint8_t flags = 0) {
    std::string out;
    out.reserve(header_size + 16);
    write_header(
        out,
        EnvelopeHeader{
            .kind = EntryKind::lease, .written_at = now, .nonce = token[0] | 1, .flags = flags});
    detail::put<std::uint64_t>(out, token[0]);
    detail::put<std::uint64_t>(out, token[1]);
    return out;
}

}  // namespace envelope
}  // namespace larder
