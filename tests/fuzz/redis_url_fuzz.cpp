// Fuzz target: the Redis URL parser (redis_detail::parse_url, behind RedisOptions::from_url)
// and redact_url. Checked, besides "no crash":
//  - parse_url returns or throws ConfigError, nothing else, and its message is printable
//    and quotes nothing from the URL but a scheme that is plainly a word;
//  - what it returns is usable: a host or a socket path (not both), a port from 1 to
//    65535, a database from 0;
//  - redact_url takes anything and never throws; for a redis:// URL that parses, the
//    redacted URL parses to the same place, as the same user, with the password "***";
//  - round trip: a URL written from parts built from the input (user, password and path
//    percent-encoded where they must be, and at random where they may be) parses back to
//    exactly those parts.
#include <larder/backend/redis/url.hpp>

#include <cstddef>
#include <cstdint>
#include <optional>
#include <string>
#include <string_view>

#include "fuzz_support.hpp"

namespace {

using larder::fuzz::check;
using larder::redis_detail::UrlParts;

bool same(const UrlParts& a, const UrlParts& b) {
    return a.host == b.host && a.port == b.port && a.unix_socket == b.unix_socket &&
           a.user == b.user && a.password == b.password && a.db == b.db;
}

std::optional<UrlParts> parse(std::string_view url) {
    try {
        return larder::redis_detail::parse_url(url);
    } catch (const larder::ConfigError& e) {
        // "invalid Redis URL: <why> (expected ...)": <why> is fixed text, or names a
        // scheme that is a word, never anything else taken from the URL.
        const std::string_view what = e.what();
        constexpr std::string_view head = "invalid Redis URL: ";
        check(what.starts_with(head));
        const auto quote = what.find('\'');
        if (quote != std::string_view::npos) {
            constexpr std::string_view scheme_head = "invalid Redis URL: unsupported scheme '";
            check(what.starts_with(scheme_head));
            const auto close = what.find('\'', scheme_head.size());
            check(close != std::string_view::npos);
            const std::string_view scheme =
                what.substr(scheme_head.size(), close - scheme_head.size());
            check(larder::redis_detail::word_scheme(scheme));
            check(url.find("://") != std::string_view::npos &&
                  larder::redis_detail::lower(url.substr(0, url.find("://"))) == scheme);
        }
        for (const char c : what) check(c >= 0x20 && c < 0x7f);
        return std::nullopt;
    }
}

void usable(const UrlParts& p) {
    check(p.host.empty() != p.unix_socket.empty());
    check(!p.port || (*p.port >= 1 && *p.port <= 65535));
    check(!p.db || *p.db >= 0);
    check(p.unix_socket.empty() || (p.unix_socket.size() >= 2 && !p.port));
}

// Parsing a URL, then parsing what redact_url makes of it.
void parsed(std::string_view url) {
    const std::string redacted = larder::redact_url(url);
    const auto parts = parse(url);
    if (!parts) return;
    usable(*parts);
    if (!larder::redis_detail::lower(url.substr(0, url.find("://"))).starts_with("redis")) {
        return;  // unix://: redact_url hides everything up to the last '@', even in a path
    }
    const auto again = parse(redacted);
    check(again.has_value());
    UrlParts expected = *parts;
    const std::string_view rest = url.substr(url.find("://") + 3);
    if (rest.find('@') != std::string_view::npos) expected.password = "***";
    check(same(*again, expected));
}

// Percent-encodes every byte in `always`, '%', and any other byte when the input says so.
std::string encode(std::string_view s, std::string_view always, larder::fuzz::Input& in) {
    static constexpr char hex[] = "0123456789ABCDEF";
    std::string out;
    for (const char c : s) {
        const auto u = static_cast<unsigned char>(c);
        if (c == '%' || always.find(c) != std::string_view::npos || u < 0x20 || u >= 0x7f ||
            in.flag()) {
            out += '%';
            out += hex[u >> 4];
            out += hex[u & 0xf];
        } else {
            out += c;
        }
    }
    return out;
}

// A URL written from parts, parsed back.
void written(larder::fuzz::Input& in) {
    UrlParts p;
    std::string url;
    const std::uint8_t shape = in.byte();
    const bool unix_socket = (shape & 1) != 0;
    url = unix_socket ? ((shape & 2) ? "UNIX://" : "unix://")
                      : ((shape & 2) ? "Redis://" : "redis://");

    std::string userinfo;
    switch ((shape >> 2) % 4) {
        case 0:
            break;
        case 1:  // a password alone, without ':'
            p.password = in.text(32);
            userinfo = encode(p.password, ":", in) + "@";
            break;
        case 2:  // ":password"
            p.password = in.text(32);
            userinfo = ":" + encode(p.password, "", in) + "@";
            break;
        default:  // "user:password"
            p.user = in.text(16);
            p.password = in.text(32);
            userinfo = encode(p.user, ":", in) + ":" + encode(p.password, "", in) + "@";
            break;
    }
    // unix:///... is a path without a userinfo: a userinfo cannot start with a raw '/'.
    if (unix_socket && userinfo.starts_with('/')) userinfo.replace(0, 1, "%2F");
    url += userinfo;

    if (unix_socket) {
        p.unix_socket = "/" + std::string(in.text(48));
        if (p.unix_socket.size() < 2) p.unix_socket += "s";
        // '?' and '#' end the path; '@' would be read as the end of a userinfo.
        url += "/" + encode(std::string_view(p.unix_socket).substr(1), "?#@", in);
        if (shape & 0x10) {
            p.db = static_cast<int>(in.integral<std::uint32_t>() & 0x7fffffff);
            url += "?db=" + std::to_string(*p.db);
        }
    } else {
        if (shape & 0x10) {  // [IPv6], with a zone at times
            const std::string_view digits = "0123456789abcdefABCDEF:.";
            std::string host;
            for (const char c : in.text(39))
                host += digits[static_cast<unsigned char>(c) % digits.size()];
            if (host.empty()) host = "::1";
            p.host = host;
            url += "[" + host;
            if (in.flag()) {
                std::string zone;
                for (const char c : in.text(15)) {
                    const auto u = static_cast<unsigned char>(c);
                    zone += u > 0x20 && u < 0x7f && c != ':' && c != '%' && c != '/' && c != '@' &&
                                    c != '?' && c != '#' && c != '[' && c != ']'
                                ? c
                                : 'z';
                }
                if (zone.empty()) zone = "eth0";
                p.host += "%" + zone;
                url += "%25" + encode(zone, "", in);
            }
            url += "]";
        } else {
            std::string host;
            for (const char c : in.text(40)) {
                const auto u = static_cast<unsigned char>(c);
                host += u > 0x20 && u < 0x7f && c != ':' && c != '/' && c != '@' && c != '?' &&
                                c != '#' && c != '[' && c != ']'
                            ? c
                            : 'h';
            }
            if (host.empty()) host = "localhost";
            p.host = host;
            url += host;
        }
        if (shape & 0x20) {
            p.port = 1 + in.integral<std::uint16_t>() % 65535;
            url += ":" + std::to_string(*p.port);
        }
        if (shape & 0x40) {
            p.db = static_cast<int>(in.integral<std::uint32_t>() & 0x7fffffff);
            url += (shape & 0x80) ? "?db=" + std::to_string(*p.db) : "/" + std::to_string(*p.db);
        }
    }

    const auto back = parse(url);
    check(back.has_value() && same(*back, p));
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
    parsed(std::string_view(reinterpret_cast<const char*>(data), size));
    larder::fuzz::Input in(data, size);
    written(in);
    return 0;
}
