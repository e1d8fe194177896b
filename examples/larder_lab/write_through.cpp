// write-through in the lab: a write stores the database row and then the cached value
// (WriteThrough::put, or Near::put with an L1); reads are CacheAside's.
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include <larder/policy/write_through.hpp>

#include "subjects.hpp"

namespace lab {
namespace {

template <class B, class G>
class WriteThroughSubject final : public Subject {
    using Policy = larder::WriteThrough<std::string, B, G>;
    using Bus = typename Stores<B>::Bus;
    using L1 = larder::Near<Policy, Bus>;

    struct Instance {  // destroyed bottom-up: the Near before its policy
        std::unique_ptr<Policy> policy;
        std::unique_ptr<L1> near;
    };

public:
    WriteThroughSubject(const RunEnv& env, const Spec& spec)
        : db_(env.db), issuer_(env.options.keys, env.shared_versions), stores_(env, spec) {
        const Options& o = env.options;
        for (std::size_t i = 0; i < o.instances; ++i) {
            Instance in;
            in.policy = std::make_unique<Policy>(
                stores_.backend(i), larder::WriteThroughOptions{.cache = read_options(o)},
                make_guard<G>(o));
            if (spec.l1) in.near = std::make_unique<L1>(*in.policy, stores_.bus(), l1_options(o));
            instances_.push_back(std::move(in));
        }
    }

    std::optional<std::string> read(std::size_t i, std::size_t k) override {
        Instance& in = instances_[i];
        auto loader = [db = &db_, k] { return std::optional<std::string>(db->read(k)); };
        const std::string key = key_name(k);
        return in.near ? in.near->get(key, loader) : in.policy->get(key, loader);
    }

    std::uint64_t write(std::size_t i, std::size_t k) override {
        Instance& in = instances_[i];
        auto ticket = issuer_.next(k);
        const std::uint64_t v = ticket.version;
        const std::string value = FakeDb::make_value(k, v, db_.value_size());
        // The row's version goes back to the policy, so an older write can never replace
        // a newer cached value.
        auto db_write = [&]() -> std::uint64_t {
            const std::pair<std::size_t, std::uint64_t> row{k, v};
            db_.write_rows({&row, 1});
            return v;
        };
        const std::string key = key_name(k);
        if (in.near) {
            (void)in.near->put(key, value, db_write);
        } else {
            (void)in.policy->put(key, value, db_write);
        }
        ticket.acknowledged();
        return v;
    }

    CacheCounts counts() override {
        CacheCounts c;
        for (const auto& in : instances_) {
            const auto s = in.policy->stats();
            add_reads(c, s.reads);
            c.backend_errors += s.backend_errors;
            add_l1(c, in.near);
        }
        return c;
    }

private:
    FakeDb& db_;
    VersionIssuer issuer_;
    Stores<B> stores_;
    std::vector<Instance> instances_;
};

}  // namespace

std::unique_ptr<Subject> make_write_through(const RunEnv& env, const Spec& spec) {
    return build_subject<WriteThroughSubject>(env, spec);
}

}  // namespace lab
