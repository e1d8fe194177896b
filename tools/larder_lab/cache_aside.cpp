// cache-aside in the lab: reads through CacheAside (or Near over it), writes that change
// the database and then invalidate the way the spec says (the key, an entity tag, a
// version key, or nothing at all).
#include <array>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <vector>

#include "subjects.hpp"

namespace lab {
namespace {

template <class B, class G>
class CacheAsideSubject final : public Subject {
    using Policy = larder::CacheAside<std::string, B, G>;
    using Bus = typename Stores<B>::Bus;
    using L1 = larder::Near<Policy, Bus>;

    // Destroyed bottom-up: the Near (it unsubscribes from the bus) before its policy, and
    // every instance before the stores they borrow.
    struct Instance {
        std::unique_ptr<Policy> policy;
        std::unique_ptr<L1> near;
        std::unique_ptr<larder::VersionKeys<B>> versions;
    };

public:
    CacheAsideSubject(const RunEnv& env, const Spec& spec)
        : db_(env.db), invalidator_(spec.invalidator), stores_(env, spec) {
        const Options& o = env.options;
        for (std::size_t i = 0; i < o.instances; ++i) {
            Instance in;
            in.policy =
                std::make_unique<Policy>(stores_.backend(i), read_options(o), make_guard<G>(o));
            if (spec.l1) in.near = std::make_unique<L1>(*in.policy, stores_.bus(), l1_options(o));
            if (invalidator_ == Invalidator::versions) {
                // Longer than any entry lives: a version that expires only moves readers on.
                in.versions = std::make_unique<larder::VersionKeys<B>>(
                    stores_.backend(i),
                    larder::VersionKeyOptions{.ttl = 4 * o.ttl + Millis{60'000}});
            }
            instances_.push_back(std::move(in));
        }
    }

    std::optional<std::string> read(std::size_t i, std::size_t k) override {
        Instance& in = instances_[i];
        auto loader = [db = &db_, k] { return db->read(k); };
        std::string key = key_name(k);
        switch (invalidator_) {
            case Invalidator::tags: {
                if (i % 2 == 1) {
                    // Odd instances let the loader name the tag (LoadContext::tags), as a
                    // loader that knows the row's team does, and pass none themselves: they
                    // read entries the others stamped without naming the tags to check.
                    auto tagging = [db = &db_, k](larder::LoadContext& context) {
                        context.tags = {entity_tag(k)};
                        return db->read(k);
                    };
                    return in.near ? in.near->get(key, tagging) : in.policy->get(key, tagging);
                }
                const std::array<std::string, 1> tags{entity_tag(k)};
                const std::span<const std::string> t(tags);
                return in.near ? in.near->get(key, t, loader) : in.policy->get(key, t, loader);
            }
            case Invalidator::versions:
                key = in.versions->key(key);
                break;
            case Invalidator::event:
            case Invalidator::ttl:
                break;
        }
        return read_row(in, db_, key, k);
    }

    std::vector<std::optional<std::string>> read_many(std::size_t i,
                                                      std::span<const std::size_t> ks) override {
        Instance& in = instances_[i];
        std::vector<std::string> names = key_names(ks);
        if (invalidator_ == Invalidator::versions) {
            for (auto& n : names) n = in.versions->key(n);
        }
        if (invalidator_ == Invalidator::tags) {
            std::vector<std::vector<std::string>> tags;
            for (const std::size_t k : ks) tags.push_back({entity_tag(k)});
            return read_rows(in, db_, names, ks, tags);
        }
        return read_rows(in, db_, names, ks);
    }

    void invalidate(std::size_t i, std::size_t k) override {
        Instance& in = instances_[i];
        const std::string key = key_name(k);
        switch (invalidator_) {
            case Invalidator::tags:
                front(in, [&](auto& cache) { cache.invalidate_tag(entity_tag(k)); });
                break;
            case Invalidator::versions:
                (void)in.versions->bump(key);
                break;
            case Invalidator::event:
            case Invalidator::ttl:
                front(in, [&](auto& cache) { cache.invalidate(key); });
                break;
        }
    }

    std::uint64_t write(std::size_t i, std::size_t k) override {
        Instance& in = instances_[i];
        std::uint64_t version = 0;
        auto commit = [&] { version = db_.commit(k); };
        const std::string key = key_name(k);
        switch (invalidator_) {
            case Invalidator::event:
                if (in.near) {
                    in.near->invalidate_after(key, commit);
                } else {
                    in.policy->invalidate_after(key, commit);
                }
                break;
            case Invalidator::tags:
                commit();
                front(in, [&](auto& cache) { cache.invalidate_tag(entity_tag(k)); });
                break;
            case Invalidator::versions:
                commit();
                (void)in.versions->bump(key);  // a new key: no L1 message needed
                break;
            case Invalidator::ttl:
                commit();  // the cached copy lives out its TTL
                break;
        }
        return version;
    }

    CacheCounts counts() override {
        CacheCounts c;
        for (const auto& in : instances_) {
            add_reads(c, in.policy->stats());
            add_l1(c, in.near);
        }
        return c;
    }

private:
    static std::string entity_tag(std::size_t k) { return "row:" + key_name(k); }

    FakeDb& db_;
    Invalidator invalidator_;
    Stores<B> stores_;
    std::vector<Instance> instances_;
};

}  // namespace

std::unique_ptr<Subject> make_cache_aside(const RunEnv& env, const Spec& spec) {
    return build_subject<CacheAsideSubject>(env, spec);
}

}  // namespace lab
