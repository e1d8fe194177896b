// write-behind in the lab: a write stores the value in the cache and the queue
// (WriteBehind::put, or Near::put with an L1); the instances' flushers write batches to
// the fake database, fenced on each entry's queue version (DirtyEntry::version), as an
// application's UPDATE ... WHERE version < ? is. finish() drains the queue, after which
// the runner compares the database with every acknowledged write.
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <type_traits>
#include <vector>

#include <larder/policy/write_behind.hpp>
#if defined(LARDER_LAB_HAVE_REDIS)
#include <larder/backend/redis/write_behind_store.hpp>
#endif

#include "subjects.hpp"

namespace lab {
namespace {

template <class B, class G>
class WriteBehindSubject final : public Subject {
    using Policy = larder::WriteBehind<std::string, B, G>;
    using Bus = typename Stores<B>::Bus;
    using L1 = larder::Near<Policy, Bus>;
    using Entry = larder::DirtyEntry<std::string>;

    struct Instance {  // destroyed bottom-up: the Near before its policy
        std::unique_ptr<Policy> policy;
        std::unique_ptr<L1> near;
    };

public:
    WriteBehindSubject(const RunEnv& env, const Spec& spec)
        : db_(env.db),
          drain_timeout_(env.options.drain_timeout),
          issuer_(env.options.keys, env.shared_versions),
          stores_(env, spec) {
        const Options& o = env.options;
        larder::WriteBehindOptions w;
        w.name = "lab";
        w.interval = o.flush_interval;
        w.drain_timeout = o.drain_timeout;
        w.claim_ttl = o.claim_ttl;
        w.clean_ttl = o.ttl;
        w.cache = read_options(o);
        if (env.log) {
            w.cache.log.sink = [log = env.log](larder::LogLevel, std::string_view line) {
                log(line);
            };
        }
        for (std::size_t i = 0; i < o.instances; ++i) {
            Instance in;
            // Every instance flushes the one queue; a queue in process memory is shared
            // as an object, one in Redis by its name.
            std::shared_ptr<typename Policy::store_type> store;
            if (Stores<B>::queue_in_process && !instances_.empty()) {
                store = instances_.front().policy->shared_store();
            }
            in.policy = std::make_unique<Policy>(stores_.backend(i), std::move(store),
                                                 batch_writer(), w, make_guard<G>(o));
            if (spec.l1) in.near = std::make_unique<L1>(*in.policy, stores_.bus(), l1_options(o));
            instances_.push_back(std::move(in));
        }
    }

    ~WriteBehindSubject() override {
        for (auto& in : instances_) in.near.reset();
        // Any instance still holding a flusher drains through the database it borrows.
        for (auto& in : instances_) (void)in.policy->close(Millis{0});
    }

    std::optional<std::string> read(std::size_t i, std::size_t k) override {
        return read_row(instances_[i], db_, key_name(k), k);
    }

    std::vector<std::optional<std::string>> read_many(std::size_t i,
                                                      std::span<const std::size_t> ks) override {
        const std::vector<std::string> names = key_names(ks);
        return read_rows(instances_[i], db_, names, ks);
    }

    void invalidate(std::size_t i, std::size_t k) override {
        front(instances_[i], [&](auto& cache) { cache.invalidate(key_name(k)); });
    }

    std::uint64_t write(std::size_t i, std::size_t k) override {
        Instance& in = instances_[i];
        auto ticket = issuer_.next(k);
        const std::string value = FakeDb::make_value(k, ticket.version, db_.value_size());
        const std::string key = key_name(k);
        if (in.near) {
            (void)in.near->put(key, value);
        } else {
            (void)in.policy->put(key, value);
        }
        ticket.acknowledged();  // put returned
        return ticket.version;
    }

    [[nodiscard]] bool modifies() const override { return true; }

    /// WriteBehind::modify: the change replaces the value it is given by the next version,
    /// and tells which version that was.
    Modified modify(std::size_t i, std::size_t k) override {
        auto ticket = issuer_.next(k);
        const std::string next = FakeDb::make_value(k, ticket.version, db_.value_size());
        Modified m{.version = ticket.version};
        auto change = [&](std::string& value) {  // may run more than once: the last counts
            // An erased row reaches the change as T{} (docs/write-behind.md).
            const auto parsed = FakeDb::parse_value(value);
            m.base = parsed && parsed->key == k ? parsed->version : 0;
            m.absent = value.empty();
            value = next;
        };
        auto loader = [db = &db_, k] { return db->read(k); };
        front(instances_[i], [&](auto& cache) { (void)cache.modify(key_name(k), change, loader); });
        ticket.acknowledged();  // modify returned
        return m;
    }

    [[nodiscard]] bool erases() const override { return true; }

    std::uint64_t erase(std::size_t i, std::size_t k,
                        const std::function<void(std::uint64_t)>& sending) override {
        auto ticket = issuer_.next(k);
        ticket.erasing();
        sending(ticket.version);
        front(instances_[i], [&](auto& cache) { (void)cache.erase(key_name(k)); });
        ticket.acknowledged();  // erase returned
        return ticket.version;
    }

    std::vector<std::string> finish() override {
        std::vector<std::string> notes;
        // One budget for the whole drain, whichever instance flushes. An incomplete drain
        // is reported through the log (RunEnv::log).
        const auto deadline = Clock::now() + drain_timeout_;
        for (auto& in : instances_) {
            const auto left = std::chrono::duration_cast<Millis>(deadline - Clock::now());
            (void)in.policy->close(std::max(left, Millis{0}));
        }
        try {
            if (const auto dead = instances_.front().policy->queue_stats().dead) {
                notes.push_back(std::to_string(dead) + " entries dead-lettered");
            }
        } catch (const larder::BackendError& e) {
            notes.push_back(std::string("the queue could not be asked: ") + e.what());
        }
        return notes;
    }

    CacheCounts counts() override {
        CacheCounts c;
        for (auto& in : instances_) {
            const auto s = in.policy->stats();
            add_reads(c, s.reads);
            c.backend_errors += s.backend_errors;
            c.dead_lettered += s.dead_lettered;
            add_l1(c, in.near);
        }
        return c;
    }

private:
    typename Policy::BatchWriter batch_writer() {
        return [db = &db_](std::span<const Entry> batch) {
            larder::BatchResult result;
            std::vector<FakeDb::FencedRow> rows;
            rows.reserve(batch.size());
            for (std::size_t i = 0; i < batch.size(); ++i) {
                const Entry& e = batch[i];
                const auto row = FakeDb::parse_key(e.key);
                const auto parsed = FakeDb::parse_value(e.value);
                if (!row || *row >= db->keys() || (!e.erased && (!parsed || parsed->key != *row))) {
                    result.fail(i, "not a lab row");
                    continue;
                }
                rows.push_back({.key = *row,
                                .fence = e.version,
                                .version = e.erased ? 0 : parsed->version,
                                .deleted = e.erased});
            }
            db->write_fenced(rows);
            return result;
        };
    }

    FakeDb& db_;
    Millis drain_timeout_;
    VersionIssuer issuer_;
    Stores<B> stores_;
    std::vector<Instance> instances_;
};

}  // namespace

std::unique_ptr<Subject> make_write_behind(const RunEnv& env, const Spec& spec) {
    return build_subject<WriteBehindSubject>(env, spec);
}

}  // namespace lab
