// naive in the lab: the cache-aside a user writes by hand, the baseline every larder
// configuration is measured against. A read GETs the key; on a miss it loads the row and
// SETs it with the TTL. A write changes the database, then deletes the key. No lease, no
// fence against a fill racing a write, no single flight, no guard: what the table shows
// against it (database reads, stale reads, tail latency) is what larder saves.
#include <memory>
#include <optional>
#include <string>

#include "subjects.hpp"

namespace lab {
namespace {

template <class B>
class NaiveSubject final : public Subject {
public:
    NaiveSubject(const RunEnv& env, const Spec& spec)
        : db_(env.db), ttl_(env.options.ttl), stores_(env, spec) {}

    std::optional<std::string> read(std::size_t i, std::size_t k) override {
        B& cache = stores_.backend(i);
        const std::string key = key_name(k);
        if (auto cached = cache.get(key)) {
            hits_.fetch_add(1, std::memory_order_relaxed);
            return std::move(cached->bytes);
        }
        misses_.fetch_add(1, std::memory_order_relaxed);
        auto row = db_.read(k);
        if (row) cache.set(key, *row, ttl_);
        return row;
    }

    std::uint64_t write(std::size_t i, std::size_t k) override {
        const std::uint64_t version = db_.commit(k);
        (void)stores_.backend(i).del(key_name(k));
        return version;
    }

    void invalidate(std::size_t i, std::size_t k) override {
        (void)stores_.backend(i).del(key_name(k));
    }

    CacheCounts counts() override {
        return CacheCounts{.hits = hits_.load(), .misses = misses_.load()};
    }

private:
    FakeDb& db_;
    const Millis ttl_;
    Stores<B> stores_;
    std::atomic<std::uint64_t> hits_{0};
    std::atomic<std::uint64_t> misses_{0};
};

}  // namespace

std::unique_ptr<Subject> make_naive(const RunEnv& env, const Spec& spec) {
    switch (env.backend) {
        case BackendKind::memory:
            return std::make_unique<NaiveSubject<larder::MemoryBackend>>(env, spec);
        case BackendKind::redis:
#if defined(LARDER_LAB_HAVE_REDIS)
            return std::make_unique<NaiveSubject<larder::RedisBackend>>(env, spec);
#else
            break;
#endif
    }
    throw UsageError("this larder-lab was built without hiredis: only --backend memory");
}

}  // namespace lab
