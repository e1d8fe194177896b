// The invalidation bus: how a write in one process reaches the in-process caches (L1) of
// every other. A bus carries short messages on one channel to every subscriber, and tells
// subscribers when it may have lost messages (the subscription dropped) and when it is
// back, so that an L1 that cannot know what it missed can stop serving and start over.
//
// Messages (what Near understands; a bus may carry others, which are ignored):
//   "k" + a stored key   the key changed: an entry's, or a version key's
//   "v" + a version key  a tag's or entity's version was bumped
//   "*"                  anything may have changed (the store was flushed)
//
// RedisBus (<larder/near/redis_bus.hpp>) uses Redis pub/sub on a dedicated connection
// with its own thread; RedisTrackingBus (<larder/near/redis_tracking_bus.hpp>) has Redis
// itself report every write to a key, by anyone (client-side caching); MemoryBus connects caches
// inside one process (and tests). A user can write another (a message broker, a sidecar) against
// the InvalidationBus concept.
#pragma once

#include <atomic>
#include <concepts>
#include <condition_variable>
#include <cstdint>
#include <functional>
#include <iostream>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <string_view>
#include <utility>

namespace larder {

/// What a subscriber hears. Handlers run on the bus's thread: keep them short.
struct BusHandlers {
    std::function<void(std::string_view message)> on_message;
    /// Messages may be missed from now on.
    std::function<void()> on_lost;
    /// Subscribed (again). Whatever was published while lost is unknown.
    std::function<void()> on_restored;
    /// Subscribed again, and every message published while lost has been delivered (a bus
    /// that keeps a log replays it): what a subscriber held is as good as before the loss.
    /// Unset, on_restored is called instead.
    std::function<void()> on_resumed{};
};

/// Keeps a subscription alive; unsubscribes when destroyed.
class BusSubscription {
public:
    BusSubscription() = default;
    explicit BusSubscription(std::function<void()> cancel) : cancel_(std::move(cancel)) {}
    BusSubscription(BusSubscription&& other) noexcept : cancel_(std::exchange(other.cancel_, {})) {}
    BusSubscription& operator=(BusSubscription&& other) noexcept {
        if (this != &other) {
            reset();
            cancel_ = std::exchange(other.cancel_, {});
        }
        return *this;
    }
    BusSubscription(const BusSubscription&) = delete;
    BusSubscription& operator=(const BusSubscription&) = delete;
    ~BusSubscription() { reset(); }

    void reset() {
        if (cancel_) std::exchange(cancel_, {})();
    }

private:
    std::function<void()> cancel_;
};

template <class B>
concept InvalidationBus = requires(B& bus, std::string_view message, BusHandlers handlers) {
    /// Sends to every subscriber, in every process. Throws BackendError when it cannot.
    bus.publish(message);
    /// on_restored is called once the subscription is live (at once when it already is).
    { bus.subscribe(std::move(handlers)) } -> std::same_as<BusSubscription>;
    /// Whether messages are being received right now.
    { bus.connected() } -> std::convertible_to<bool>;
};

namespace detail {

/// The subscriber list the buses share: handlers by id, fanned out under a lock. The
/// connection state changes under the same lock (transition), so a subscriber added while
/// it changes hears either "restored" at once or the change itself - never neither, which
/// would leave an L1 that missed a drop serving, or a live one disabled for good.
class Subscribers {
public:
    /// Adds the handlers, and calls on_restored at once if `live()` (read under the lock).
    template <class Live>
    std::uint64_t add(BusHandlers handlers, Live&& live) {
        std::lock_guard lock(mutex_);
        const auto id = next_++;
        auto h = std::make_shared<BusHandlers>(std::move(handlers));
        handlers_.emplace(id, h);
        if (live() && h->on_restored) h->on_restored();
        return id;
    }

    enum class State { lost, restored, resumed };

    /// Runs `change` (the bus's state becomes `state`) and tells every subscriber: a loss
    /// is told before the change, so that no L1 still serves once the bus says it is
    /// disconnected; a restore after it, so that a restored L1 finds the bus live.
    template <class Change>
    void transition(Change&& change, State state) {
        std::lock_guard lock(mutex_);
        if (state != State::lost) change();
        for (auto& [id, h] : handlers_) {
            const auto& handler = state == State::lost                       ? h->on_lost
                                  : state == State::resumed && h->on_resumed ? h->on_resumed
                                                                             : h->on_restored;
            if (handler) handler();
        }
        if (state == State::lost) change();
    }

    void remove(std::uint64_t id) {
        std::lock_guard lock(mutex_);
        handlers_.erase(id);
    }
    void message(std::string_view m) {
        each([&](BusHandlers& h) {
            if (h.on_message) h.on_message(m);
        });
    }

private:
    // Handlers are called under the lock, so that a subscription being cancelled is never
    // called after remove() returns.
    template <class F>
    void each(F&& f) {
        std::lock_guard lock(mutex_);
        for (auto& [id, h] : handlers_) f(*h);
    }

    // Recursive: a handler may publish on the same bus (Near sends its outbox when the
    // bus is back), and a bus in one process delivers that message right away.
    std::recursive_mutex mutex_;
    std::map<std::uint64_t, std::shared_ptr<BusHandlers>> handlers_;
    std::uint64_t next_ = 0;
};

/// The state a bus that listens on a thread of its own shares with its callers: the
/// subscribers, whether the subscription is live, why it last failed, how often it was made.
class ListenerState {
public:
    BusSubscription subscribe(BusHandlers handlers) {
        const auto id = subscribers_.add(std::move(handlers), [this] { return connected_.load(); });
        return BusSubscription([this, id] { subscribers_.remove(id); });
    }

    /// The listener's thread: the subscription is live (or lost), and every subscriber
    /// hears it before wait_connected() returns. `also` runs first, under the same lock.
    /// `resumed`: nothing published while it was lost went unheard (a replayed log).
    template <class Also>
    void set_connected(bool on, Also&& also, bool resumed = false) {
        using State = Subscribers::State;
        subscribers_.transition(
            [&] {
                also();
                std::lock_guard lock(mutex_);
                connected_.store(on);
                if (on) {
                    last_error_.clear();
                    subscriptions_.fetch_add(1);
                }
            },
            !on       ? State::lost
            : resumed ? State::resumed
                      : State::restored);
        {
            std::lock_guard lock(mutex_);
            announced_ = on;
        }
        cv_.notify_all();
    }
    void set_connected(bool on) {
        set_connected(on, [] {});
    }

    void message(std::string_view m) { subscribers_.message(m); }

    void set_error(std::string why) {
        std::lock_guard lock(mutex_);
        last_error_ = std::move(why);
    }

    /// Why the subscription failed or was refused: kept for last_error(), and told to
    /// `on_error` (stderr when unset). `on_error` must not throw; if it does, it is ignored.
    void report(const std::string& why,
                const std::function<void(std::string_view)>& on_error) noexcept {
        try {
            set_error(why);
            if (on_error) {
                on_error(why);
            } else {
                std::cerr << "larder: " << why << '\n';
            }
        } catch (...) {
        }
    }

    [[nodiscard]] std::string last_error() const {
        std::lock_guard lock(mutex_);
        return last_error_;
    }

    [[nodiscard]] bool connected() const noexcept { return connected_.load(); }
    [[nodiscard]] std::uint64_t subscriptions() const noexcept { return subscriptions_.load(); }

    /// Until live and every subscriber has been told so, or `timeout`; whether that happened.
    template <class Duration>
    bool wait_connected(Duration timeout) {
        std::unique_lock lock(mutex_);
        return cv_.wait_for(lock, timeout, [&] { return announced_; });
    }

private:
    Subscribers subscribers_;
    std::atomic<bool> connected_{false};
    std::atomic<std::uint64_t> subscriptions_{0};
    mutable std::mutex mutex_;
    std::string last_error_;
    bool announced_ = false;
    std::condition_variable cv_;
};

}  // namespace detail

/// A bus inside one process: publish() delivers synchronously to every subscriber.
class MemoryBus {
public:
    MemoryBus() = default;
    MemoryBus(const MemoryBus&) = delete;
    MemoryBus& operator=(const MemoryBus&) = delete;

    void publish(std::string_view message) { subscribers_.message(message); }

    BusSubscription subscribe(BusHandlers handlers) {
        const auto id = subscribers_.add(std::move(handlers), [] { return true; });
        return BusSubscription([this, id] { subscribers_.remove(id); });
    }

    [[nodiscard]] bool connected() const noexcept { return true; }

private:
    detail::Subscribers subscribers_;
};

static_assert(InvalidationBus<MemoryBus>);

}  // namespace larder
