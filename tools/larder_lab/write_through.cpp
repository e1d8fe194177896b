// write-through in the lab: a write stores the database row and then the cached value
// (WriteThrough::put, or Near::put with an L1); reads are CacheAside's.
#include <memory>
#include <optional>
#include <span>
#include <stdexcept>
#include <string>
#include <vector>

#include <larder/policy/write_through.hpp>

#include "subjects.hpp"

namespace lab {
namespace {

/// A write the database refused as older than the row it holds.
struct Superseded : std::runtime_error {
    Superseded() : std::runtime_error("the row holds a newer version") {}
};

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
                stores_.backend(i),
                larder::WriteThroughOptions{.cache = read_options(o),
                                            .write_lease_ttl = o.lease_ttl},
                make_guard<G>(o));
            if (spec.l1) in.near = std::make_unique<L1>(*in.policy, stores_.bus(), l1_options(o));
            instances_.push_back(std::move(in));
        }
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
        const std::uint64_t v = issuer_.draw(k);  // racing the row's other writers
        const std::string value = FakeDb::make_value(k, v, db_.value_size());
        // The row's version goes back to the policy, so an older write can never replace
        // a newer cached value. A fenced write that finds the row newer has no version to
        // return (the row's is not this value's): it throws, and put leaves a miss
        // (docs/write-paths.md). Writers of a row race, so that happens.
        auto db_write = [&]() -> std::uint64_t {
            const std::pair<std::size_t, std::uint64_t> row{k, v};
            if (db_.write_rows({&row, 1}) == 0) throw Superseded();
            return v;
        };
        const std::string key = key_name(k);
        if (in.near) {
            (void)in.near->put(key, value, db_write);
        } else {
            (void)in.policy->put(key, value, db_write);
        }
        issuer_.acknowledged(k, v);
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
