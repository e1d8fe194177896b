// Logging through spdlog: a larder::Logger is a level and a sink, and this sink hands each
// message to an spdlog logger. The cache's Redis is away (a port where nothing listens),
// so the log shows what a caller is not told: failed connects, then the circuit breaker
// opening - while every read still answers, from the loader.
//
//   logging_spdlog [port on 127.0.0.1 with no Redis; default: a free one]
#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <spdlog/sinks/stdout_sinks.h>
#include <spdlog/spdlog.h>
#include <larder/backend/redis.hpp>
#include <larder/larder.hpp>

#include <cstdlib>
#include <memory>

larder::Logger to_spdlog(std::shared_ptr<spdlog::logger> logger) {
    return {.level = larder::LogLevel::debug,  // spdlog's own level filters
            .sink = [logger](larder::LogLevel level, std::string_view message) {
                static constexpr spdlog::level::level_enum levels[] = {
                    spdlog::level::debug, spdlog::level::info, spdlog::level::warn,
                    spdlog::level::err, spdlog::level::off};
                logger->log(levels[static_cast<int>(level)], "{}", message);
            }};
}

int free_loopback_port() {  // bound, then closed: nothing listens there afterwards
    const int fd = ::socket(AF_INET, SOCK_STREAM, 0);
    sockaddr_in addr{};
    addr.sin_family = AF_INET;
    addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    socklen_t len = sizeof addr;
    ::bind(fd, reinterpret_cast<sockaddr*>(&addr), len);
    ::getsockname(fd, reinterpret_cast<sockaddr*>(&addr), &len);
    ::close(fd);
    return ntohs(addr.sin_port);
}

int main(int argc, char** argv) {
    auto logger = spdlog::stdout_logger_mt("larder");
    logger->set_pattern("%l: %v");
    logger->set_level(spdlog::level::info);  // debug would add every failed read

    larder::RedisBackend redis({.host = "127.0.0.1",
                                .port = argc > 1 ? std::atoi(argv[1]) : free_loopback_port(),
                                .name = "main",
                                .log = to_spdlog(logger)});
    larder::CacheAside<std::string, larder::RedisBackend> prices(
        redis, {.name = "prices", .log = to_spdlog(logger)});

    int loads = 0;
    for (int i = 0; i < 8; ++i) {
        prices.get("eur", [&] {
            ++loads;
            return std::optional<std::string>("1.08");
        });
    }
    logger->info("8 reads answered, {} from the loader; the breaker is {}", loads,
                 redis.breaker_state() == larder::BreakerState::open ? "open" : "closed");
}
