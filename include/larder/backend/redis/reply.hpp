// RedisReply: an owned copy of one RESP2 reply, returned by RedisBackend::command(). It
// outlives the connection that read it, so callers never hold hiredis memory.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

namespace larder {

struct RedisReply {
    enum class Type { nil, integer, string, status, error, array };

    Type type = Type::nil;
    std::int64_t integer = 0;
    /// The bytes of a string, status or error reply.
    std::string str;
    std::vector<RedisReply> elements;

    [[nodiscard]] bool is_nil() const noexcept { return type == Type::nil; }
    [[nodiscard]] bool is_integer() const noexcept { return type == Type::integer; }
    [[nodiscard]] bool is_string() const noexcept { return type == Type::string; }
    [[nodiscard]] bool is_status() const noexcept { return type == Type::status; }
    [[nodiscard]] bool is_error() const noexcept { return type == Type::error; }
    [[nodiscard]] bool is_array() const noexcept { return type == Type::array; }

    friend bool operator==(const RedisReply&, const RedisReply&) = default;
};

}  // namespace larder
