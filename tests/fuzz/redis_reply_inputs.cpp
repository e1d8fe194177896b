// The fixed inputs of the redis_reply target: replies a server sends to each command the
// backend and the buses read, and replies that claim more than they hold.
#include <string>

#include "fuzz_support.hpp"

larder::fuzz::ReplayInputs larder::fuzz::replay_inputs() {
    ReplayInputs in;
    in.valid = {
        "$5\r\nvalue\r\n:60000\r\n",                                 // GET + PTTL
        "$5\r\nvalue\r\n:-1\r\n",                                    // no expiry
        "$-1\r\n:-2\r\n",                                            // absent
        "*3\r\n$1\r\na\r\n$-1\r\n$0\r\n\r\n",                        // MGET
        "+OK\r\n",                                                   // SET NX
        ":1\r\n",                                                    // DEL, INCRBY, PUBLISH
        "-ERR wrong number of arguments\r\n",                        // an error reply
        "-NOAUTH Authentication required.\r\n",                      // not logged in
        "-LOADING Redis is loading the dataset\r\n",                 // unavailable
        "*3\r\n$7\r\nmessage\r\n$4\r\nchan\r\n$9\r\nkapp:user\r\n",  // RedisBus
        "*3\r\n$7\r\nmessage\r\n$20\r\n__redis__:invalidate\r\n*2\r\n$1\r\na\r\n$1\r\nb\r\n",
        "*3\r\n$7\r\nmessage\r\n$20\r\n__redis__:invalidate\r\n*-1\r\n",  // a flush
        "*2\r\n$4\r\npong\r\n$0\r\n\r\n",                                 // PING
        "*3\r\n:1\r\n*0\r\n*1\r\n$1\r\nk\r\n",                            // a script
    };
    in.hostile = {
        "*2147483647\r\n",
        "*2147483648\r\n",
        "*-2\r\n",
        "$2147483647\r\nabc",
        "$-2\r\n",
        "$3\r\nabcd\r\n",
        ":9223372036854775807\r\n",
        ":-9223372036854775808\r\n",
        ":99999999999999999999\r\n",
        ":\r\n",
        ":1x\r\n",
        "*1\r\n*1\r\n*1\r\n*1\r\n*1\r\n*1\r\n*1\r\n:1\r\n",
        "*1\r\n*1\r\n*1\r\n*1\r\n*1\r\n*1\r\n*1\r\n*1\r\n:1\r\n",
        "*3\r\n:7\r\n:1\r\n:2\r\n",
        "*3\r\n$7\r\nmessage\r\n:1\r\n:2\r\n",
        "*3\r\n$7\r\nmessage\r\n$1\r\nc\r\n*2\r\n:1\r\n*0\r\n",
        "*3\r\n$7\r\nmessage\r\n$1\r\nc\r\n-ERR x\r\n",
        "?unknown\r\n",
        "+no end",
        std::string("$1\r\n\0\r\n:0\r\n", 12),
        "\r\n",
    };
    return in;
}
