// Metrics: a cache and its Redis backend report to PrometheusMetrics - latency histograms
// of loads and Redis calls, and their counters - served as http://127.0.0.1:<port>/metrics
// for Prometheus to scrape. Any HTTP server of yours does the same with metrics.text().
//
//   metrics [redis://127.0.0.1:6379] [port, 0: any free one] [scrapes to serve, 0: no end]
#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <larder/backend/redis.hpp>
#include <larder/larder.hpp>
#include <larder/metrics/prometheus.hpp>

#include <cstdio>
#include <cstdlib>
#include <string>

int listen_on_loopback(int port) {
    const int fd = ::socket(AF_INET, SOCK_STREAM, 0);
    sockaddr_in addr{};
    addr.sin_family = AF_INET;
    addr.sin_port = htons(static_cast<std::uint16_t>(port));
    addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    if (fd < 0 || ::bind(fd, reinterpret_cast<sockaddr*>(&addr), sizeof addr) != 0 ||
        ::listen(fd, 16) != 0) {
        std::perror("listen");
        std::exit(1);
    }
    return fd;
}

int main(int argc, char** argv) {
    const char* url = argc > 1 ? argv[1] : "redis://127.0.0.1:6379";
    const int port = argc > 2 ? std::atoi(argv[2]) : 9464;
    const int scrapes = argc > 3 ? std::atoi(argv[3]) : 0;

    larder::PrometheusMetrics metrics;  // declared first: it outlives what reports to it
    larder::RedisOptions options = larder::RedisOptions::from_url(url);
    options.name = "main";
    options.metrics = &metrics;
    larder::RedisBackend redis(options);
    larder::CacheAside<std::string, larder::RedisBackend> prices(
        redis, {.key_prefix = "example-price:", .name = "prices", .metrics = &metrics});
    metrics.add("main", redis);
    metrics.add("prices", prices);

    prices.invalidate("eur");  // start cold: one load, then hits
    for (int i = 0; i < 10; ++i) {
        prices.get("eur", [] { return std::optional<std::string>("1.08"); });
    }
    std::printf("loads: %llu, hits: %llu\n", static_cast<unsigned long long>(prices.stats().loads),
                static_cast<unsigned long long>(prices.stats().hits));

    const int server = listen_on_loopback(port);
    sockaddr_in bound{};
    socklen_t len = sizeof bound;
    ::getsockname(server, reinterpret_cast<sockaddr*>(&bound), &len);
    std::printf("serving http://127.0.0.1:%d/metrics\n", ntohs(bound.sin_port));
    std::fflush(stdout);

    for (int served = 0; scrapes == 0 || served < scrapes; ++served) {
        const int client = ::accept(server, nullptr, nullptr);
        if (client < 0) continue;
        char request[4096];
        (void)::recv(client, request, sizeof request, 0);  // any request gets the metrics
        const std::string body = metrics.text();
        const std::string response = "HTTP/1.0 200 OK\r\nContent-Type: " +
                                     std::string(larder::PrometheusMetrics::content_type) +
                                     "\r\nContent-Length: " + std::to_string(body.size()) +
                                     "\r\n\r\n" + body;
        (void)::send(client, response.data(), response.size(), MSG_NOSIGNAL);
        ::close(client);
    }
    ::close(server);
}
