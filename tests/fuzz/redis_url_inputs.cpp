// The fixed inputs of the redis_url target: each form of URL, and the ways a URL goes wrong
// (bad percent-encoding, numbers out of range, a password where a host should be).
#include <string>

#include "fuzz_support.hpp"

larder::fuzz::ReplayInputs larder::fuzz::replay_inputs() {
    ReplayInputs in;
    in.valid = {
        "redis://localhost",
        "redis://app:s3cret@cache.internal:6380/2",
        "redis://:p%40ss%3Aw%2Fd@10.0.0.1",
        "redis://s3cret@cache?db=3",
        "redis://us%3Aer:pa@ss:w/rd?#@[::1]:6379",
        "redis://[fe80::1%25eth0]:7000/0",
        "REDIS://Host-1.example:65535/2147483647",
        "unix:///run/redis/redis.sock",
        "unix://app:s3cret@/run/redis.sock?db=1",
        "unix://:pw@/tmp/a%20b.sock",
    };
    in.hostile = {
        "",
        "://",
        "redis://",
        "redis://@",
        "redis://:@",
        "redis://host:0",
        "redis://host:65536",
        "redis://host:-1",
        "redis://host:+80",
        "redis://host:99999999999999999999",
        "redis://host/2147483648",
        "redis://host/-0",
        "redis://host/1/2",
        "redis://host?db=1&db=2",
        "redis://host/1?db=2",
        "redis://host?db",
        "redis://host?password=s3cret",
        "redis://host#frag",
        "redis://::1",
        "redis://[::1",
        "redis://[::1]x",
        "redis://[g::1]",
        "redis://[::1%25]",
        "redis://[::1%25a:b]",
        "redis://[]",
        "redis://user:s3cret",
        "redis://:s3cret",
        "redis://%",
        "redis://%4@host",
        "redis://%zz@host",
        "redis://a%@host",
        "rediss://host",
        "http://host",
        "S3CRET-NOT-A-WORD://host",
        "unix://",
        "unix:///",
        "unix://relative.sock",
        "unix://user:pw@relative",
        "unix:///sock?db=x",
        "unix:///sock%",
        "unix:///path@x",
        "unix://u:p@/sock@x",
        std::string("redis://\0host", 13),
        std::string("redis://ho\x7fst"),
        std::string(1000, '@'),
        "redis://" + std::string(5000, 'a') + ":" + std::string(5000, '9'),
    };
    return in;
}
