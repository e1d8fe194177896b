// Parsing of Redis connection URLs: redis://[[user]:password@]host[:port][/db] and
// unix://[[user]:password@]/path/to/socket[?db=N], and redact_url, which makes any such URL
// safe to print. Kept apart from the options so that the grammar and its error messages can
// be read (and tested) on their own.
//
// A URL usually carries a password, so no message here repeats any part of a URL that could
// hold one: not the URL, not its userinfo, not a query parameter or scheme that is not
// plainly a word.
#pragma once

#include <charconv>
#include <climits>
#include <optional>
#include <string>
#include <string_view>

#include "larder/core/error.hpp"

namespace larder::redis_detail {

/// What a URL said; fields it did not mention keep their RedisOptions defaults.
struct UrlParts {
    std::string host;
    std::optional<int> port;
    std::string unix_socket;
    std::string user;
    std::string password;
    std::optional<int> db;
};

// Messages never repeat the URL itself: it may carry a password.
[[noreturn]] inline void bad_url(std::string_view why) {
    throw ConfigError("invalid Redis URL: " + std::string(why) +
                      " (expected redis://[user[:password]@]host[:port][/db] or "
                      "unix://[user[:password]@]/path[?db=N])");
}

inline int hex_digit(char c) {
    if (c >= '0' && c <= '9') return c - '0';
    if (c >= 'a' && c <= 'f') return c - 'a' + 10;
    if (c >= 'A' && c <= 'F') return c - 'A' + 10;
    return -1;
}

// Userinfo and paths may be percent-encoded, so that a password can hold '@', ':' or '/'.
inline std::string percent_decode(std::string_view s, std::string_view what) {
    std::string out;
    out.reserve(s.size());
    for (std::size_t i = 0; i < s.size(); ++i) {
        if (s[i] != '%') {
            out.push_back(s[i]);
            continue;
        }
        const bool complete = i + 2 < s.size();
        const int hi = complete ? hex_digit(s[i + 1]) : -1;
        const int lo = complete ? hex_digit(s[i + 2]) : -1;
        if (hi < 0 || lo < 0) bad_url("bad percent-encoding in the " + std::string(what));
        out.push_back(static_cast<char>(hi * 16 + lo));
        i += 2;
    }
    return out;
}

inline int parse_decimal(std::string_view s, long long max, std::string_view what) {
    long long value = 0;
    const auto [end, ec] = std::from_chars(s.data(), s.data() + s.size(), value);
    if (s.empty() || s.front() == '-' || s.front() == '+' || ec != std::errc{} ||
        end != s.data() + s.size() || value > max) {
        bad_url(std::string(what) + " must be a number from 0 to " + std::to_string(max));
    }
    return static_cast<int>(value);
}

// "user:password" is an ACL user, ":password" a password alone, and a userinfo without ':'
// is a password too, as redis-cli and Lettuce read it (docs/redis.md, "URLs"): read as a
// user name, a password would be sent as one and printed in "authentication failed as user".
inline void split_userinfo(std::string_view userinfo, UrlParts& out) {
    const auto colon = userinfo.find(':');
    if (colon == std::string_view::npos) {
        out.password = percent_decode(userinfo, "password");
        return;
    }
    out.user = percent_decode(userinfo.substr(0, colon), "user name");
    out.password = percent_decode(userinfo.substr(colon + 1), "password");
}

// A scheme is named in a message only when it is plainly a word (http, tcp, redis-sentinel),
// never text that could be a piece of a password a malformed URL put in the wrong place.
inline bool word_scheme(std::string_view s) {
    if (s.empty() || s.size() > 16) return false;
    for (char c : s) {
        if (!((c >= 'a' && c <= 'z') || c == '+' || c == '-' || c == '.')) return false;
    }
    return true;
}

inline std::optional<int> parse_query(std::string_view query) {
    std::optional<int> db;
    while (!query.empty()) {
        const auto amp = query.find('&');
        const std::string_view param = query.substr(0, amp);
        query = amp == std::string_view::npos ? std::string_view{} : query.substr(amp + 1);
        if (param.empty()) continue;
        const auto eq = param.find('=');
        const std::string_view name = param.substr(0, eq);
        // Not named: in a URL that lost its host and '@', the "query" is part of a password.
        if (name != "db") bad_url("unknown query parameter (db=N is the only one)");
        if (eq == std::string_view::npos) bad_url("db needs a value");
        if (db) bad_url("db given twice");
        db = parse_decimal(param.substr(eq + 1), INT_MAX, "db");
    }
    return db;
}

inline bool valid_host_char(char c) {
    const auto u = static_cast<unsigned char>(c);
    return u > 0x20 && u < 0x7f && c != '/' && c != '@' && c != '?' && c != '#' && c != '[' &&
           c != ']';
}

inline void parse_authority(std::string_view authority, UrlParts& out) {
    std::string ipv6;
    std::string_view host;
    std::string_view port;
    bool has_port = false;
    if (!authority.empty() && authority.front() == '[') {
        const auto close = authority.find(']');
        if (close == std::string_view::npos) bad_url("unterminated IPv6 address");
        // A zone is written %25eth0 (RFC 6874); getaddrinfo wants fe80::1%eth0.
        ipv6 = percent_decode(authority.substr(1, close - 1), "IPv6 address");
        host = ipv6;
        const std::string_view after = authority.substr(close + 1);
        if (!after.empty()) {
            if (after.front() != ':') bad_url("unexpected text after the IPv6 address");
            port = after.substr(1);
            has_port = true;
        }
        const auto zone = host.find('%');
        for (char c : host.substr(0, zone)) {
            if (hex_digit(c) < 0 && c != ':' && c != '.') bad_url("bad IPv6 address");
        }
        if (zone != std::string_view::npos) {
            for (char c : host.substr(zone + 1)) {
                if (!valid_host_char(c) || c == ':' || c == '%') bad_url("bad IPv6 zone");
            }
        }
    } else {
        const auto colon = authority.find(':');
        if (colon != std::string_view::npos && authority.find(':', colon + 1) != authority.npos) {
            bad_url("an IPv6 address must be written in brackets, e.g. [::1]");
        }
        host = authority.substr(0, colon);
        if (colon != std::string_view::npos) {
            port = authority.substr(colon + 1);
            has_port = true;
        }
        for (char c : host) {
            if (!valid_host_char(c)) bad_url("bad character in the host name");
        }
    }
    if (host.empty()) bad_url("missing host");
    out.host = std::string(host);
    if (has_port) {
        const int p = parse_decimal(port, 65535, "port");
        if (p == 0) bad_url("port must be a number from 1 to 65535");
        out.port = p;
    }
}

inline std::string lower(std::string_view s) {
    std::string out(s);
    for (char& c : out) {
        if (c >= 'A' && c <= 'Z') c = static_cast<char>(c - 'A' + 'a');
    }
    return out;
}

// Splits "path?query" and refuses a fragment; called only on what follows the userinfo.
inline std::string_view split_query(std::string_view& rest) {
    if (rest.find('#') != std::string_view::npos) bad_url("fragments are not allowed");
    std::string_view query;
    if (const auto q = rest.find('?'); q != std::string_view::npos) {
        query = rest.substr(q + 1);
        rest = rest.substr(0, q);
    }
    return query;
}

/// Throws ConfigError on anything it does not understand, rather than guessing.
///
/// The userinfo ends at the LAST '@' (at the last "@/" for unix://), before any query or
/// path is looked at: a password may then hold a raw '@', '?', '/', '#' or ':' and still
/// parse, instead of leaking into the query, the path or the host where a message would
/// name it. No part of the URL after that '@' can contain one, since neither a host, a
/// port, a database number nor db=N has an '@'.
inline UrlParts parse_url(std::string_view url) {
    const auto scheme_end = url.find("://");
    if (scheme_end == std::string_view::npos) bad_url("missing scheme");
    const std::string scheme = lower(url.substr(0, scheme_end));
    std::string_view rest = url.substr(scheme_end + 3);

    UrlParts out;
    if (scheme == "redis") {
        if (const auto at = rest.rfind('@'); at != std::string_view::npos) {
            split_userinfo(rest.substr(0, at), out);
            rest = rest.substr(at + 1);
        }
        const std::optional<int> query_db = parse_query(split_query(rest));
        const auto slash = rest.find('/');
        parse_authority(rest.substr(0, slash), out);
        std::string_view path = slash == std::string_view::npos ? "" : rest.substr(slash + 1);
        if (!path.empty()) {
            if (path.find('/') != std::string_view::npos) {
                bad_url("the path must be a database number, e.g. /2");
            }
            out.db = parse_decimal(path, INT_MAX, "the database in the path");
        }
        if (query_db) {
            if (out.db) bad_url("db given twice");
            out.db = query_db;
        }
    } else if (scheme == "unix") {
        if (rest.empty() || rest.front() != '/') {
            const auto at = rest.rfind("@/");
            if (at == std::string_view::npos) {
                bad_url("a unix socket URL needs an absolute path: unix:///path/to/redis.sock");
            }
            split_userinfo(rest.substr(0, at), out);
            rest = rest.substr(at + 1);
        }
        const std::optional<int> query_db = parse_query(split_query(rest));
        out.unix_socket = percent_decode(rest, "socket path");
        if (out.unix_socket.size() < 2) bad_url("missing socket path");
        out.db = query_db;
    } else if (scheme == "rediss") {
        bad_url("TLS (rediss://) is not supported");
    } else {
        bad_url(word_scheme(scheme) ? "unsupported scheme '" + scheme + "'"
                                    : std::string("unsupported scheme"));
    }
    return out;
}

}  // namespace larder::redis_detail

namespace larder {

/// `url` with its password replaced by "***", for logs and messages: the user name, host,
/// port, path and db stay, so the line still says where and as whom.
///
///   redis://app:s3cret@cache:6379/2  ->  redis://app:***@cache:6379/2
///   redis://:s3cret@cache            ->  redis://:***@cache
///   redis://s3cret@cache             ->  redis://:***@cache   (no ':': a password, as parsed)
///   unix://app:s3cret@/run/redis.sock?db=1  ->  unix://app:***@/run/redis.sock?db=1
///
/// It takes any text, well-formed or not, and only ever removes: the userinfo is found as
/// the parser finds it (up to the last '@'); without an '@', a "port" that is not digits is
/// replaced (a URL that lost its host); every query parameter other than db=N and any
/// fragment are replaced too, since other clients' URLs carry e.g. ?password=.
[[nodiscard]] inline std::string redact_url(std::string_view url) {
    std::string out;
    out.reserve(url.size() + 4);
    std::string_view rest = url;
    if (const auto sep = url.find("://"); sep != std::string_view::npos) {
        out.append(url.substr(0, sep + 3));
        rest = url.substr(sep + 3);
    }
    if (const auto at = rest.rfind('@'); at != std::string_view::npos) {
        const std::string_view userinfo = rest.substr(0, at);
        const auto colon = userinfo.find(':');
        if (colon != std::string_view::npos) out.append(userinfo.substr(0, colon));
        out.append(":***@");
        rest = rest.substr(at + 1);
    } else {
        // No '@': "redis://user:s3cret" or "redis://:s3cret" lost their host, and what looks
        // like a port is the password. A port is digits; anything else there is hidden.
        const std::string_view authority = rest.substr(0, rest.find_first_of("/?#"));
        const auto colon = authority.rfind(':');
        const auto bracket = authority.rfind(']');
        if (colon != std::string_view::npos &&
            (bracket == std::string_view::npos || colon > bracket) &&
            authority.find_first_not_of("0123456789", colon + 1) != std::string_view::npos) {
            out.append(authority.substr(0, colon + 1));
            out.append("***");
            rest = rest.substr(authority.size());
        }
    }
    std::string_view fragment;
    if (const auto hash = rest.find('#'); hash != std::string_view::npos) {
        fragment = rest.substr(hash);
        rest = rest.substr(0, hash);
    }
    const auto q = rest.find('?');
    out.append(rest.substr(0, q));
    if (q != std::string_view::npos) {
        std::string_view query = rest.substr(q + 1);
        char sep = '?';
        while (!query.empty()) {
            const auto amp = query.find('&');
            const std::string_view param = query.substr(0, amp);
            query = amp == std::string_view::npos ? std::string_view{} : query.substr(amp + 1);
            if (param.empty()) continue;
            out.push_back(sep);
            sep = '&';
            const bool db = param.size() > 3 && param.substr(0, 3) == "db=" &&
                            param.find_first_not_of("0123456789", 3) == std::string_view::npos;
            out.append(db ? param : std::string_view("***"));
        }
    }
    if (!fragment.empty()) out.append("#***");
    return out;
}

}  // namespace larder
