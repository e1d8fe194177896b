// A minimal RESP2/RESP3 client for the test support: encode a command, read a reply with a
// deadline, run a pipeline on a fresh loopback connection. No hiredis, so tests can check
// larder's own Redis client against an independent one.
#pragma once

#include <charconv>
#include <chrono>
#include <cstddef>
#include <cstdint>
#include <stdexcept>
#include <string>
#include <string_view>
#include <vector>

#include "posix_io.hpp"

namespace larder::test {

// A decoded RESP2/RESP3 reply. RESP3 maps keep keys and values interleaved in `elements`; sets
// and pushes become arrays, verbatim strings become bulk strings without their format prefix.
struct RespReply {
    enum class Type {
        status,
        error,
        integer,
        bulk,
        nil,
        array,
        map,
        boolean,
        double_value,
        big_number
    };

    Type type = Type::nil;
    std::string text{};
    long long integer = 0;
    std::vector<RespReply> elements{};

    bool is_error() const noexcept { return type == Type::error; }

    // Rendering close to redis-cli's raw mode so tests can compare against plain strings.
    std::string render() const {
        switch (type) {
            case Type::status:
            case Type::bulk:
            case Type::double_value:
            case Type::big_number:
                return text;
            case Type::error:
                return "-" + text;
            case Type::integer:
                return std::to_string(integer);
            case Type::boolean:
                return integer != 0 ? "true" : "false";
            case Type::nil:
                return "(nil)";
            case Type::array:
            case Type::map:
                break;
        }
        std::string out;
        for (std::size_t i = 0; i < elements.size(); ++i) {
            if (i != 0) {
                out += '\n';
            }
            out += elements[i].render();
        }
        return out;
    }
};

namespace detail {

inline void append_command(std::string& out, const std::vector<std::string>& args) {
    // Always an array of bulk strings: inline commands would mangle binary payloads.
    out += '*';
    out += std::to_string(args.size());
    out += "\r\n";
    for (const std::string& arg : args) {
        out += '$';
        out += std::to_string(arg.size());
        out += "\r\n";
        out += arg;
        out += "\r\n";
    }
}

class RespReader {
public:
    RespReader(int fd, Clock::time_point deadline) : fd_(fd), deadline_(deadline) {}

    RespReply read() { return read_value(0); }

private:
    static constexpr int max_depth = 64;

    void fill() {
        char chunk[16384];
        for (;;) {
            const ssize_t n = ::recv(fd_, chunk, sizeof chunk, 0);
            if (n > 0) {
                buffer_.append(chunk, static_cast<std::size_t>(n));
                return;
            }
            if (n == 0) {
                throw std::runtime_error("connection closed by server");
            }
            if (errno == EINTR) {
                continue;
            }
            if (errno != EAGAIN && errno != EWOULDBLOCK) {
                throw std::runtime_error("recv failed: " + errno_message(errno));
            }
            if (!wait_for_fd(fd_, POLLIN, deadline_)) {
                throw std::runtime_error("timed out waiting for reply");
            }
        }
    }

    std::string line() {
        for (;;) {
            const std::size_t end = buffer_.find("\r\n", pos_);
            if (end != std::string::npos) {
                std::string out = buffer_.substr(pos_, end - pos_);
                pos_ = end + 2;
                return out;
            }
            compact();
            fill();
        }
    }

    std::string exact(std::size_t n) {
        while (buffer_.size() - pos_ < n + 2) {
            compact();
            fill();
        }
        std::string out = buffer_.substr(pos_, n);
        if (buffer_.compare(pos_ + n, 2, "\r\n") != 0) {
            throw std::runtime_error("malformed RESP bulk terminator");
        }
        pos_ += n + 2;
        return out;
    }

    void compact() {
        buffer_.erase(0, pos_);
        pos_ = 0;
    }

    static long long parse_integer(const std::string& s) {
        long long value = 0;
        const auto [end, ec] = std::from_chars(s.data(), s.data() + s.size(), value);
        if (ec != std::errc{} || end != s.data() + s.size()) {
            throw std::runtime_error("malformed RESP integer: " + s);
        }
        return value;
    }

    RespReply read_value(int depth) {
        if (depth > max_depth) {
            throw std::runtime_error("RESP reply nested too deeply");
        }
        const std::string header = line();
        if (header.empty()) {
            throw std::runtime_error("empty RESP header");
        }
        const char kind = header[0];
        const std::string body = header.substr(1);
        RespReply reply;
        switch (kind) {
            case '+':
                reply.type = RespReply::Type::status;
                reply.text = body;
                return reply;
            case '-':
                reply.type = RespReply::Type::error;
                reply.text = body;
                return reply;
            case ':':
                reply.type = RespReply::Type::integer;
                reply.integer = parse_integer(body);
                return reply;
            case '_':
                return reply;
            case '#':
                reply.type = RespReply::Type::boolean;
                reply.integer = body == "t" ? 1 : 0;
                return reply;
            case ',':
                reply.type = RespReply::Type::double_value;
                reply.text = body;
                return reply;
            case '(':
                reply.type = RespReply::Type::big_number;
                reply.text = body;
                return reply;
            case '$':
            case '=':
            case '!': {
                const long long len = parse_integer(body);
                if (len < 0) {
                    return reply;
                }
                reply.text = exact(static_cast<std::size_t>(len));
                reply.type = kind == '!' ? RespReply::Type::error : RespReply::Type::bulk;
                if (kind == '=' && reply.text.size() >= 4) {
                    reply.text.erase(0, 4);
                }
                return reply;
            }
            case '*':
            case '~':
            case '>':
            case '%': {
                const long long count = parse_integer(body);
                if (count < 0) {
                    return reply;
                }
                const long long items = kind == '%' ? count * 2 : count;
                reply.type = kind == '%' ? RespReply::Type::map : RespReply::Type::array;
                for (long long i = 0; i < items; ++i) {
                    reply.elements.push_back(read_value(depth + 1));
                }
                return reply;
            }
            case '|': {
                // Attributes are out-of-band metadata; the actual reply follows them.
                const long long count = parse_integer(body);
                for (long long i = 0; i < count * 2; ++i) {
                    read_value(depth + 1);
                }
                return read_value(depth + 1);
            }
            default:
                throw std::runtime_error("unknown RESP type byte in: " + header);
        }
    }

    int fd_;
    Clock::time_point deadline_;
    std::string buffer_;
    std::size_t pos_ = 0;
};

// Runs the commands pipelined on one fresh connection and returns one reply per command.
inline std::vector<RespReply> execute_pipeline(int port,
                                               const std::vector<std::vector<std::string>>& cmds,
                                               std::chrono::milliseconds timeout) {
    const Clock::time_point deadline = Clock::now() + timeout;
    UniqueFd fd = connect_loopback(port, deadline);
    std::string request;
    for (const auto& cmd : cmds) {
        append_command(request, cmd);
    }
    send_all(fd.get(), request, deadline);
    RespReader reader(fd.get(), deadline);
    std::vector<RespReply> replies;
    replies.reserve(cmds.size());
    for (std::size_t i = 0; i < cmds.size(); ++i) {
        replies.push_back(reader.read());
    }
    return replies;
}

}  // namespace detail

}  // namespace larder::test
