// A loopback server that answers like a Redis Sentinel, for what real sentinels do not
// produce on demand: a switchover that keeps the old primary's clients connected, hostile
// answers, a sentinel that never answers, garbage on the +switch-master channel.
//
// Each command is answered by `answer(argv)` with raw RESP ("" sends nothing); push()
// sends raw RESP to every connection that has sent SUBSCRIBE. One thread; stopped and
// joined by the destructor.
#pragma once

#include <arpa/inet.h>
#include <netinet/in.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <atomic>
#include <charconv>
#include <functional>
#include <mutex>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

namespace larder::test {

class FakeSentinel {
public:
    using Answer = std::function<std::string(const std::vector<std::string>& argv)>;

    explicit FakeSentinel(Answer answer) : answer_(std::move(answer)) {
        listener_ = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
        sockaddr_in a{};
        a.sin_family = AF_INET;
        a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
        socklen_t len = sizeof a;
        if (listener_ < 0 || ::bind(listener_, reinterpret_cast<sockaddr*>(&a), sizeof a) != 0 ||
            ::listen(listener_, 16) != 0 ||
            ::getsockname(listener_, reinterpret_cast<sockaddr*>(&a), &len) != 0) {
            if (listener_ >= 0) ::close(listener_);
            throw std::runtime_error("FakeSentinel: cannot listen on loopback");
        }
        port_ = ntohs(a.sin_port);
        thread_ = std::thread([this] { serve(); });
    }
    FakeSentinel(const FakeSentinel&) = delete;
    FakeSentinel& operator=(const FakeSentinel&) = delete;
    ~FakeSentinel() {
        stop_ = true;
        thread_.join();
        ::close(listener_);
    }

    [[nodiscard]] int port() const noexcept { return port_; }

    /// Raw RESP to every subscriber, sent by the server's thread.
    void push(std::string raw) {
        std::lock_guard lock(mutex_);
        pushes_.push_back(std::move(raw));
    }

    [[nodiscard]] std::size_t subscribers() const {
        std::lock_guard lock(mutex_);
        return subscribers_.size();
    }

    static std::string bulk(std::string_view s) {
        return "$" + std::to_string(s.size()) + "\r\n" + std::string(s) + "\r\n";
    }
    /// SENTINEL get-master-addr-by-name's answer.
    static std::string address(std::string_view host, std::string_view port) {
        return "*2\r\n" + bulk(host) + bulk(port);
    }
    static std::string subscribed() {
        return "*3\r\n" + bulk("subscribe") + bulk("+switch-master") + ":1\r\n";
    }
    /// A message on +switch-master.
    static std::string announcement(std::string_view text) {
        return "*3\r\n" + bulk("message") + bulk("+switch-master") + bulk(text);
    }

private:
    struct Client {
        int fd;
        std::string in;
    };

    // One complete command from the front of `in` (RESP arrays of bulk strings), or false.
    static bool take_command(std::string& in, std::vector<std::string>& argv) {
        argv.clear();
        std::size_t at = 0;
        auto number = [&](char kind, long& n) {
            if (at >= in.size() || in[at] != kind) return false;
            const auto end = in.find("\r\n", at);
            if (end == std::string::npos) return false;
            if (std::from_chars(in.data() + at + 1, in.data() + end, n).ec != std::errc{}) {
                return false;
            }
            at = end + 2;
            return true;
        };
        long count = 0;
        if (!number('*', count)) return false;
        for (long i = 0; i < count; ++i) {
            long len = 0;
            if (!number('$', len) || in.size() < at + static_cast<std::size_t>(len) + 2) {
                return false;
            }
            argv.push_back(in.substr(at, static_cast<std::size_t>(len)));
            at += static_cast<std::size_t>(len) + 2;
        }
        in.erase(0, at);
        return true;
    }

    void serve() {
        std::vector<Client> clients;
        while (!stop_) {
            {
                std::lock_guard lock(mutex_);
                for (const auto& raw : pushes_) {
                    for (int fd : subscribers_)
                        (void)::send(fd, raw.data(), raw.size(), MSG_NOSIGNAL);
                }
                pushes_.clear();
            }
            std::vector<pollfd> fds{{listener_, POLLIN, 0}};
            for (const auto& c : clients) fds.push_back({c.fd, POLLIN, 0});
            ::poll(fds.data(), fds.size(), 20);
            if ((fds[0].revents & POLLIN) != 0) {
                const int fd = ::accept4(listener_, nullptr, nullptr, SOCK_CLOEXEC);
                if (fd >= 0) clients.push_back({fd, {}});
            }
            for (std::size_t i = 1; i < fds.size(); ++i) {
                if (fds[i].revents == 0) continue;
                Client& c = clients[i - 1];
                char buf[4096];
                const ssize_t n = ::recv(c.fd, buf, sizeof buf, 0);
                if (n <= 0) {
                    std::lock_guard lock(mutex_);
                    std::erase(subscribers_, c.fd);
                    ::close(c.fd);
                    c.fd = -1;
                    continue;
                }
                c.in.append(buf, static_cast<std::size_t>(n));
                std::vector<std::string> argv;
                while (take_command(c.in, argv)) {
                    if (!argv.empty() && argv[0] == "SUBSCRIBE") {
                        std::lock_guard lock(mutex_);
                        subscribers_.push_back(c.fd);
                    }
                    const std::string out = answer_(argv);
                    if (!out.empty()) (void)::send(c.fd, out.data(), out.size(), MSG_NOSIGNAL);
                }
            }
            std::erase_if(clients, [](const Client& c) { return c.fd < 0; });
        }
        for (const auto& c : clients) ::close(c.fd);
    }

    const Answer answer_;
    int listener_ = -1;
    int port_ = 0;
    std::atomic<bool> stop_{false};
    mutable std::mutex mutex_;
    std::vector<int> subscribers_;
    std::vector<std::string> pushes_;
    std::thread thread_;  // last: it uses everything above
};

}  // namespace larder::test
