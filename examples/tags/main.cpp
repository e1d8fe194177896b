// Cache tags: every entry read with a tag is dropped by one invalidate_tag, however many
// there are, without the cache keeping a list of them (a tag is one version key).
//
//   tags [redis://127.0.0.1:6379]
#include <larder/backend/redis.hpp>
#include <larder/larder.hpp>

#include <cstdio>
#include <optional>
#include <string>

int main(int argc, char** argv) {
    const char* url = argc > 1 ? argv[1] : "redis://127.0.0.1:6379";
    larder::RedisBackend redis(larder::RedisOptions::from_url(url));
    // Tags is the default invalidator: the tags a read names are stamped on what it caches.
    larder::CacheAside<std::string, larder::RedisBackend> posts(redis,
                                                                {.key_prefix = "example-post:"});

    int loads = 0;
    auto post_loader = [&](std::string title) {
        return [&loads, title] {
            ++loads;
            return std::optional<std::string>(title);
        };
    };
    // Posts 1 and 2 are by user 7; post 3 by user 9.
    auto read_all = [&] {
        posts.get("1", {"author:7"}, post_loader("Hello"));
        posts.get("2", {"author:7", "topic:cpp"}, post_loader("Templates"));
        posts.get("3", {"author:9"}, post_loader("Redis"));
    };

    for (const char* id : {"1", "2", "3"}) posts.invalidate(id);  // start cold on every run

    read_all();
    std::printf("first pass loads: %d\n", loads);
    loads = 0;
    read_all();
    std::printf("second pass loads: %d\n", loads);  // all hits

    // User 7 renamed themselves: every cached post of theirs must go, and only those.
    posts.invalidate_tag("author:7");
    loads = 0;
    read_all();
    std::printf("after invalidate_tag(author:7) loads: %d\n", loads);  // posts 1 and 2

    loads = 0;
    posts.get("3", {"author:9"}, post_loader("Redis"));
    std::printf("post 3 after invalidate_tag: %s\n", loads == 0 ? "hit" : "miss");
    posts.invalidate_tag("topic:cpp");
    posts.get("2", {"author:7", "topic:cpp"}, post_loader("Templates"));
    std::printf("post 2 after invalidate_tag(topic:cpp): %s\n", loads == 1 ? "miss" : "hit");
}
