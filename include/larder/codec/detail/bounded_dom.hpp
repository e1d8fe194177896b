// The one decode path of JsonCodec and MsgPackCodec: nlohmann's parsers driven through
// their SAX interface into a DOM builder that enforces DecodeLimits while it builds, so
// a hostile document is refused in the same single pass that would have parsed it.
//
// Why not nlohmann::json::parse / from_msgpack: the MessagePack reader recurses once per
// nesting level and has no limit (100,000 bytes of 0x91 overflow any stack), and every
// DOM nlohmann builds is later copied, compared or converted by code that recurses too.
// Why not a counting pre-scan followed by the ordinary parse: it reads every byte twice;
// building under the limit costs one depth comparison per array or object.
//
// The builder is iterative; the only recursion left is the MessagePack reader's, and it
// stops at max_depth + 1 frames because start_array / start_object refuse the level
// before the reader descends into it.
#pragma once

#include <cmath>
#include <concepts>
#include <cstddef>
#include <limits>
#include <nlohmann/json.hpp>
#include <string>
#include <string_view>
#include <type_traits>
#include <utility>
#include <vector>

#include "larder/core/codec.hpp"
#include "larder/core/error.hpp"

namespace larder::detail {

class BoundedDomBuilder {
public:
    using json = nlohmann::json;
    using number_integer_t = json::number_integer_t;
    using number_unsigned_t = json::number_unsigned_t;
    using number_float_t = json::number_float_t;
    using string_t = json::string_t;
    using binary_t = json::binary_t;

    BoundedDomBuilder(json& root, const DecodeLimits& limits) : root_(root), limits_(limits) {}

    bool null() { return put(nullptr); }
    bool boolean(bool v) { return put(v); }
    bool number_integer(number_integer_t v) { return put(v); }
    bool number_unsigned(number_unsigned_t v) { return put(v); }
    bool number_float(number_float_t v, const string_t& /*text*/) {
        // -2^63 and 2^63 are exact doubles; NaN fails both comparisons.
        if (limits_.reject_floats_beyond_int64 && !(v >= -0x1p63 && v < 0x1p63)) {
            return fail("a float that fits no 64-bit integer");
        }
        return put(v);
    }
    bool string(string_t& v) { return put(std::move(v)); }
    bool binary(binary_t& v) { return put(std::move(v)); }

    // The declared element count is the input's claim, never trusted for a reservation:
    // a five-byte MessagePack header can announce four billion elements.
    bool start_object(std::size_t /*declared*/) { return open(json::value_t::object); }
    bool start_array(std::size_t /*declared*/) { return open(json::value_t::array); }
    bool end_object() { return close(); }
    bool end_array() { return close(); }

    bool key(string_t& k) {
        // A repeated key keeps the last value, as nlohmann's own parser does.
        member_ = &stack_.back()->get_ref<json::object_t&>()[std::move(k)];
        return true;
    }

    bool parse_error(std::size_t /*position*/, const std::string& /*token*/,
                     const json::exception& e) {
        return fail(e.what());
    }

    /// Why the parse stopped; empty when the SAX parse ended without a reason of ours
    /// (nlohmann reports truncated input through parse_error, so this is rare).
    [[nodiscard]] const std::string& error() const { return error_; }

private:
    template <class V>
    bool put(V&& v) {
        place(std::forward<V>(v));
        return true;
    }

    // Where a new value goes: the root, the end of the open array, or the member whose
    // key came last. Returns the stored value (stable until its parent array grows, and
    // it does not grow while the value is open).
    template <class V>
    json* place(V&& v) {
        if (stack_.empty()) {
            root_ = json(std::forward<V>(v));
            return &root_;
        }
        json& parent = *stack_.back();
        if (parent.is_array()) {
            auto& items = parent.get_ref<json::array_t&>();
            items.emplace_back(std::forward<V>(v));
            return &items.back();
        }
        *member_ = json(std::forward<V>(v));
        return member_;
    }

    bool open(json::value_t kind) {
        if (stack_.size() >= limits_.max_depth) {
            return fail("nested deeper than " + std::to_string(limits_.max_depth) + " levels");
        }
        stack_.push_back(place(kind));
        return true;
    }

    bool close() {
        stack_.pop_back();
        return true;
    }

    bool fail(std::string why) {
        error_ = std::move(why);
        return false;
    }

    json& root_;
    const DecodeLimits& limits_;
    std::vector<json*> stack_;
    json* member_ = nullptr;
    std::string error_;
};

/// Parses `bytes` (JSON text or MessagePack) under `limits`; throws CodecError naming
/// `codec` on anything it refuses.
inline nlohmann::json parse_bounded(std::string_view bytes, nlohmann::json::input_format_t format,
                                    const DecodeLimits& limits, const char* codec) {
    if (bytes.size() > limits.max_bytes) {
        throw CodecError(std::string(codec) + ": " + std::to_string(bytes.size()) +
                         " bytes, over the decode limit of " + std::to_string(limits.max_bytes));
    }
    nlohmann::json root;
    BoundedDomBuilder builder(root, limits);
    const char* first = bytes.data();
    bool ok = false;
    try {
        ok = nlohmann::json::sax_parse(first, first + bytes.size(), &builder, format);
    } catch (const nlohmann::json::exception& e) {
        throw CodecError(std::string(codec) + ": " + e.what());
    }
    if (!ok) {
        throw CodecError(std::string(codec) + ": " +
                         (builder.error().empty() ? "unreadable input" : builder.error()));
    }
    return root;
}

// An arithmetic T read as the whole value: here the target type is known, so a number
// that does not fit it is refused exactly (nlohmann would static_cast it: wrapped, or
// undefined for a float). Fields inside user types are beyond reach; see docs/codecs.md.
template <class T>
void check_fits(const nlohmann::json& j) {
    if constexpr (std::is_arithmetic_v<T> && !std::same_as<T, bool>) {
        bool fits = true;
        if (const auto* i = j.get_ptr<const nlohmann::json::number_integer_t*>()) {
            fits = std::is_floating_point_v<T> || std::in_range<T>(*i);
        } else if (const auto* u = j.get_ptr<const nlohmann::json::number_unsigned_t*>()) {
            fits = std::is_floating_point_v<T> || std::in_range<T>(*u);
        } else if (const auto* f = j.get_ptr<const nlohmann::json::number_float_t*>()) {
            if constexpr (std::is_floating_point_v<T>) {
                fits = !std::isfinite(*f) ||
                       std::fabs(*f) <= static_cast<double>(std::numeric_limits<T>::max());
            } else {
                // The truncated value must lie in [min, max]; the bounds are powers of two,
                // exact as doubles. NaN fails every comparison.
                const double t = std::trunc(*f);
                const double top = std::ldexp(1.0, std::numeric_limits<T>::digits);
                const double bottom = std::is_signed_v<T> ? -top : 0.0;
                fits = t >= bottom && t < top;
            }
        }
        if (!fits) throw CodecError("number out of range of the target type");
    }
}

}  // namespace larder::detail
