// codec_bench: JsonCodec, MsgPackCodec and RawCodec on a ~200-byte record, against the
// nlohmann calls a user writes by hand (json(u).dump() / json::parse(s).get<User>(), and
// json::to_msgpack / json::from_msgpack). Raw stores a pre-serialized string of the
// JSON's size (what a user who serializes by hand caches).
// Encode appends to a reused buffer, as a fill appends after the envelope header; decode
// reads from a view of the stored bytes, as a hit does. The codecs decode under their
// DecodeLimits (depth, size, float range); the hand-written peers have no limits, so the
// decode ratios are the limits' cost on a hit. The Reject benchmarks time the refusal of
// a 100 KB payload nested 100,000 deep, which the peers cannot survive at all.
#include <benchmark/benchmark.h>

#include <cstdint>
#include <cstdio>
#include <string>
#include <string_view>
#include <vector>

#include "larder/codec/json.hpp"
#include "larder/codec/msgpack.hpp"
#include "larder/codec/raw.hpp"
#include "larder/core/error.hpp"
#include "support/report.hpp"

namespace {

struct User {
    std::int64_t id = 0;
    std::string name;
    std::string email;
    std::string city;
    std::int64_t created_at = 0;
    bool active = true;
    std::vector<std::string> roles;
    double score = 0;
};
NLOHMANN_DEFINE_TYPE_NON_INTRUSIVE(User, id, name, email, city, created_at, active, roles, score)

const User& sample() {
    static const User user{
        .id = 4242,
        .name = "Ada Lovelace-Byron",
        .email = "ada.lovelace@analytical-engine.example.org",
        .city = "London, Marylebone",
        .created_at = 1'700'000'042'000,
        .active = true,
        .roles = {"reader", "writer", "reviewer"},
        .score = 97.25,
    };
    return user;
}

template <class Codec, class T>
std::string encoded(const T& value) {
    std::string out;
    Codec{}.encode(value, out);
    return out;
}

const std::string& raw_value() {
    static const std::string value = encoded<larder::JsonCodec>(sample());  // same size
    return value;
}

template <class Codec, class T>
void encode_loop(benchmark::State& state, const T& value) {
    const Codec codec;
    std::string out;
    for (auto _ : state) {
        out.clear();
        codec.encode(value, out);
        benchmark::DoNotOptimize(out.data());
    }
    larder::bench::report_ops(state);
    state.counters["bytes"] = static_cast<double>(out.size());
}

template <class Codec, class T>
void decode_loop(benchmark::State& state, const std::string& bytes) {
    const Codec codec;
    for (auto _ : state) {
        T value = codec.template decode<T>(std::string_view(bytes));
        benchmark::DoNotOptimize(value);
    }
    larder::bench::report_ops(state);
    state.counters["bytes"] = static_cast<double>(bytes.size());
}

void BM_Encode_Json(benchmark::State& s) {
    encode_loop<larder::JsonCodec>(s, sample());
}
void BM_Encode_MsgPack(benchmark::State& s) {
    encode_loop<larder::MsgPackCodec>(s, sample());
}
void BM_Encode_Raw(benchmark::State& s) {
    encode_loop<larder::RawCodec>(s, raw_value());
}

void BM_Decode_Json(benchmark::State& s) {
    static const std::string bytes = encoded<larder::JsonCodec>(sample());
    decode_loop<larder::JsonCodec, User>(s, bytes);
}
void BM_Decode_MsgPack(benchmark::State& s) {
    static const std::string bytes = encoded<larder::MsgPackCodec>(sample());
    decode_loop<larder::MsgPackCodec, User>(s, bytes);
}
void BM_Decode_Raw(benchmark::State& s) {
    decode_loop<larder::RawCodec, std::string>(s, raw_value());
}

template <class Codec>
void reject_loop(benchmark::State& state, const std::string& bytes) {
    const Codec codec;
    for (auto _ : state) {
        try {
            benchmark::DoNotOptimize(codec.template decode<User>(std::string_view(bytes)));
            state.SkipWithError("a 100,000-deep payload decoded");
            break;
        } catch (const larder::CodecError&) {
        }
    }
    larder::bench::report_ops(state);
}
void BM_Reject_Json_Deep(benchmark::State& s) {
    static const std::string bytes = std::string(100'000, '[') + std::string(100'000, ']');
    reject_loop<larder::JsonCodec>(s, bytes);
}
void BM_Reject_MsgPack_Deep(benchmark::State& s) {
    static const std::string bytes = std::string(100'000, '\x91') + '\xc0';
    reject_loop<larder::MsgPackCodec>(s, bytes);
}

// The hand-written peers: what get_user/update_user over hiredis do with nlohmann today.
void BM_Peer_Encode_NlohmannDump(benchmark::State& state) {
    for (auto _ : state) {
        std::string out = nlohmann::json(sample()).dump();
        benchmark::DoNotOptimize(out.data());
    }
    larder::bench::report_ops(state);
}
void BM_Peer_Encode_NlohmannToMsgPack(benchmark::State& state) {
    for (auto _ : state) {
        std::vector<std::uint8_t> out = nlohmann::json::to_msgpack(nlohmann::json(sample()));
        benchmark::DoNotOptimize(out.data());
    }
    larder::bench::report_ops(state);
}
void BM_Peer_Decode_NlohmannParse(benchmark::State& state) {
    static const std::string bytes = nlohmann::json(sample()).dump();
    for (auto _ : state) {
        User u = nlohmann::json::parse(bytes).get<User>();
        benchmark::DoNotOptimize(u);
    }
    larder::bench::report_ops(state);
}
void BM_Peer_Decode_NlohmannFromMsgPack(benchmark::State& state) {
    static const std::vector<std::uint8_t> bytes =
        nlohmann::json::to_msgpack(nlohmann::json(sample()));
    for (auto _ : state) {
        User u = nlohmann::json::from_msgpack(bytes).get<User>();
        benchmark::DoNotOptimize(u);
    }
    larder::bench::report_ops(state);
}

BENCHMARK(BM_Peer_Encode_NlohmannDump);
BENCHMARK(BM_Peer_Encode_NlohmannToMsgPack);
BENCHMARK(BM_Peer_Decode_NlohmannParse);
BENCHMARK(BM_Peer_Decode_NlohmannFromMsgPack);
BENCHMARK(BM_Encode_Json);
BENCHMARK(BM_Encode_MsgPack);
BENCHMARK(BM_Encode_Raw);
BENCHMARK(BM_Decode_Json);
BENCHMARK(BM_Decode_MsgPack);
BENCHMARK(BM_Decode_Raw);
BENCHMARK(BM_Reject_Json_Deep);
BENCHMARK(BM_Reject_MsgPack_Deep);

}  // namespace

int main(int argc, char** argv) {
    larder::bench::initialize(argc, argv);
    if (benchmark::ReportUnrecognizedArguments(argc, argv)) return 1;
    std::printf("record: JSON %zu bytes, MessagePack %zu bytes, raw %zu bytes; %s\n",
                encoded<larder::JsonCodec>(sample()).size(),
                encoded<larder::MsgPackCodec>(sample()).size(), raw_value().size(),
                larder::bench::machine_description().c_str());
    std::fflush(stdout);

    larder::bench::RecordingReporter reporter;
    benchmark::RunSpecifiedBenchmarks(&reporter);

    const auto& r = reporter;
    larder::bench::print_ratio_table(
        "Codecs against the same nlohmann calls made by hand, and against raw bytes:",
        {
            {"JsonCodec encode / hand-written dump()", r.spread("BM_Encode_Json"),
             r.spread("BM_Peer_Encode_NlohmannDump"), 0},
            {"JsonCodec decode / hand-written parse()", r.spread("BM_Decode_Json"),
             r.spread("BM_Peer_Decode_NlohmannParse"), 0},
            {"MsgPackCodec encode / hand-written to_msgpack", r.spread("BM_Encode_MsgPack"),
             r.spread("BM_Peer_Encode_NlohmannToMsgPack"), 0},
            {"MsgPackCodec decode / hand-written from_msgpack", r.spread("BM_Decode_MsgPack"),
             r.spread("BM_Peer_Decode_NlohmannFromMsgPack"), 0},
            {"JSON encode / raw encode", r.spread("BM_Encode_Json"), r.spread("BM_Encode_Raw"), 0},
            {"MessagePack encode / raw encode", r.spread("BM_Encode_MsgPack"),
             r.spread("BM_Encode_Raw"), 0},
            {"JSON decode / raw decode", r.spread("BM_Decode_Json"), r.spread("BM_Decode_Raw"), 0},
            {"MessagePack decode / raw decode", r.spread("BM_Decode_MsgPack"),
             r.spread("BM_Decode_Raw"), 0},
            {"MessagePack encode / JSON encode", r.spread("BM_Encode_MsgPack"),
             r.spread("BM_Encode_Json"), 0},
            {"MessagePack decode / JSON decode", r.spread("BM_Decode_MsgPack"),
             r.spread("BM_Decode_Json"), 0},
        });
    benchmark::Shutdown();
    return 0;
}
