// larder-check: runs caching compositions under faults in several OS processes, records
// every operation, and checks the history against larder's guarantees (docs/check.md).
//
//   larder-check [--seed N] [--sample N | --configs SPEC,...] [--backend memory|redis|both]
//                [--processes N] [--threads N] [--keys N] [--duration SECONDS]
//                [--faults LIST|none] [--long] [--log] [--list] [--help]
//
// The parent process owns the database (rows in shared memory), starts a private
// redis-server, starts the worker processes (this program again, with --worker), injects
// faults on a schedule drawn from the seed, and afterwards merges the workers' logs and
// checks them (history.hpp: the definitions larder-lab counts with).
#include <fcntl.h>
#include <signal.h>
#include <spawn.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cinttypes>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <functional>
#include <iostream>
#include <map>
#include <memory>
#include <mutex>
#include <random>
#include <set>
#include <sstream>
#include <string>
#include <string_view>
#include <thread>
#include <vector>

#include "cli.hpp"
#include "history.hpp"
#include "lab.hpp"
#if defined(LARDER_LAB_HAVE_REDIS)
#include "../../tests/support/redis_server.hpp"
#include "../../tests/support/tcp_proxy.hpp"
#endif

extern char** environ;

namespace {

using namespace lab;
using history::Kind;
using history::Op;
using history::Violation;

// ---- faults ------------------------------------------------------------------------------

enum class Fault {
    redis_pause,
    redis_stop,
    redis_restart,
    db_down,
    db_outage,
    slow_loader,
    worker_stop,
    worker_kill,
    bus_disconnect,
    net_blackhole,
    net_slow,
    net_reset,
    clock_step
};

struct FaultEntry {
    std::string_view name;
    std::string_view about;
    Fault fault;
    bool needs_private_redis;
    bool needs_two_workers = false;  ///< it stops or kills a worker while another runs on
    Millis needs_run{0};             ///< only in runs at least this long
    bool needs_l1 = false;           ///< only in compositions with an L1
};

/// How long a db-outage lasts: longer than a write-behind entry's five attempts take
/// (200 ms doubling: about 3 s), so an outage that cost attempts would dead-letter.
constexpr Millis outage_length{3500};

constexpr FaultEntry fault_table[] = {
    {"redis-pause", "CLIENT PAUSE ALL: every command waits", Fault::redis_pause, true},
    {"redis-stop", "SIGSTOP, then SIGCONT: the server stops answering, connections stay open",
     Fault::redis_stop, true},
    {"redis-restart",
     "SIGKILL and a restart on the same port (with AOF, fsync always: acknowledged data "
     "survives)",
     Fault::redis_restart, true},
    {"db-down", "the database refuses every read and write", Fault::db_down, false},
    {"db-outage",
     "the database refuses everything for 3.5 s, longer than a write-behind entry's retries "
     "(once per run, in runs of 5 s or more)",
     Fault::db_outage, false, false, Millis{5000}},
    {"slow-loader", "database reads take 20-200 ms longer", Fault::slow_loader, false},
    {"worker-stop",
     "SIGSTOP of a worker process for 0.3-1.5 s, then SIGCONT: its flusher's claims expire "
     "and another takes them over",
     Fault::worker_stop, true, true},
    {"worker-kill",
     "SIGKILL of a worker process (at most one per run, never the first): what it "
     "acknowledged must survive it",
     Fault::worker_kill, true, true},
    {"bus-disconnect",
     "CLIENT KILL TYPE pubsub: every L1 bus loses its subscription and resubscribes, "
     "replaying what it missed or starting its L1 over",
     Fault::bus_disconnect, true, false, Millis{0}, true},
    {"net-blackhole",
     "the loopback proxy between the workers and Redis stops moving bytes, connections open "
     "(a partition: every command runs into its timeout)",
     Fault::net_blackhole, true},
    {"net-slow", "the proxy holds every chunk 5-50 ms in both directions", Fault::net_slow, true},
    {"net-reset", "the proxy resets every connection (RST) on both sides", Fault::net_reset, true},
    {"clock-step",
     "one worker's wall clock (every larder::Clock of its compositions) steps 0.5-3 s forward "
     "or back, and back again after 0.3-1.5 s",
     Fault::clock_step, false},
};

std::string fault_name(Fault f) {
    for (const auto& e : fault_table) {
        if (e.fault == f) return std::string(e.name);
    }
    return "?";
}

// ---- the shared memory of one run ----------------------------------------------------------

/// The stampede round after the convergence pass: every thread of every worker reads one
/// row at the moment its cached copy expires, and the database reads they cause are
/// counted against the guard's promise (docs/check.md).
struct Stampede {
    std::atomic<std::int64_t> at_ns{0};  ///< when to read (CLOCK_MONOTONIC); 0: not yet
    std::atomic<bool> skipped{false};    ///< worker 0 could not set the round up
    std::atomic<std::uint64_t> row{0};
    std::atomic<std::uint64_t> loads{0};  ///< database reads of the row the round caused
    std::atomic<std::uint32_t> done{0};   ///< workers that took part
};

/// Every erase a worker sends, journaled before it is sent: a killed worker's log is
/// lost, and a delete it sent may still have landed (what a read that finds no row needs
/// to be explained).
struct EraseJournal {
    struct Entry {
        std::int64_t start_ns;
        std::uint64_t key;
        std::uint64_t version;  ///< 0: an entry its writer did not finish
    };
    static constexpr std::size_t capacity = std::size_t{1} << 17;
    std::atomic<std::uint64_t> size{0};  ///< entries claimed, may exceed capacity
    Entry entries[capacity];

    void add(std::uint64_t key, std::uint64_t version, std::int64_t start_ns) {
        const std::uint64_t at = size.fetch_add(1);
        if (at >= capacity) return;  // the check reports the overflow
        entries[at].start_ns = start_ns;
        entries[at].key = key;
        std::atomic_ref<std::uint64_t>(entries[at].version).store(version);
    }
    /// The journal as erases that failed (no acknowledgement is known).
    [[nodiscard]] std::vector<Op> sent() const {
        std::vector<Op> out;
        const auto n = std::min<std::uint64_t>(size.load(), capacity);
        for (std::uint64_t i = 0; i < n; ++i) {
            Op op;
            op.kind = Kind::write;
            op.erase = true;
            op.key = entries[i].key;
            op.version = entries[i].version;
            op.start_ns = op.end_ns = entries[i].start_ns;
            out.push_back(op);
        }
        return out;
    }
};

/// The wall clock of each worker process: the system's, stepped by clock-step. Monotonic
/// time (steady_clock) does not step, so only what larder reads through a larder::Clock
/// moves.
struct WallClocks {
    static constexpr std::size_t max_processes = 64;
    std::atomic<std::int64_t> step_ms[max_processes] = {};

    class Clock final : public larder::Clock {
    public:
        explicit Clock(const std::atomic<std::int64_t>& step) : step_(step) {}
        [[nodiscard]] larder::TimePoint now() const noexcept override {
            return larder::SystemClock::instance().now() +
                   larder::Millis{step_.load(std::memory_order_relaxed)};
        }

    private:
        const std::atomic<std::int64_t>& step_;
    };
};

/// The head of a run's shared memory: the faults the database shows, how many workers
/// have finished (the convergence pass waits for all of them), the stampede round, and
/// the erase journal.
struct Control {
    DbFaults faults;
    WallClocks clocks;
    std::atomic<std::uint32_t> finished{0};
    std::atomic<bool> worker_killed{false};
    std::atomic<std::uint64_t> dead_lettered{0};  ///< write-behind entries given up on
    Stampede stampede;
    EraseJournal erases;
};

/// What every process of a run maps: the control block, the database's rows, and the
/// version rows writers take turns on.
class SharedRun {
public:
    SharedRun(const std::string& path, std::size_t keys, bool create) : keys_(keys) {
        const int fd = ::open(path.c_str(), create ? O_RDWR | O_CREAT | O_TRUNC : O_RDWR, 0600);
        if (fd < 0) throw std::runtime_error("cannot open " + path + ": " + std::strerror(errno));
        size_ = fences_offset() + keys * sizeof(DbFence);
        if (create && ::ftruncate(fd, static_cast<off_t>(size_)) != 0) {
            ::close(fd);
            throw std::runtime_error("cannot size " + path);
        }
        void* p = ::mmap(nullptr, size_, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
        ::close(fd);
        if (p == MAP_FAILED) throw std::runtime_error("cannot map " + path);
        base_ = static_cast<char*>(p);
        if (create) {
            new (base_) Control();
            for (std::size_t i = 0; i < keys; ++i) new (&rows()[i]) std::atomic<std::uint64_t>(1);
            init_version_rows(versions(), keys, true);
            init_db_fences(fences(), keys, true);
        }
    }
    SharedRun(const SharedRun&) = delete;
    SharedRun& operator=(const SharedRun&) = delete;
    ~SharedRun() { ::munmap(base_, size_); }

    Control& control() { return *reinterpret_cast<Control*>(base_); }
    DbFaults& faults() { return control().faults; }
    std::atomic<std::uint64_t>* rows() {
        return reinterpret_cast<std::atomic<std::uint64_t>*>(base_ + sizeof(Control));
    }
    VersionRow* versions() { return reinterpret_cast<VersionRow*>(base_ + versions_offset()); }
    DbFence* fences() { return reinterpret_cast<DbFence*>(base_ + fences_offset()); }

private:
    static std::size_t aligned(std::size_t offset, std::size_t alignment) {
        return (offset + alignment - 1) / alignment * alignment;
    }
    [[nodiscard]] std::size_t versions_offset() const {
        return aligned(sizeof(Control) + keys_ * sizeof(std::atomic<std::uint64_t>),
                       alignof(VersionRow));
    }
    [[nodiscard]] std::size_t fences_offset() const {
        return aligned(versions_offset() + keys_ * sizeof(VersionRow), alignof(DbFence));
    }

    std::size_t keys_;
    std::size_t size_ = 0;
    char* base_ = nullptr;
};

// ---- what one run is -------------------------------------------------------------------------

struct RunPlan {
    std::string spec;
    BackendKind backend = BackendKind::memory;
    std::size_t processes = 1;
    std::size_t threads = 3;
    std::size_t keys = 24;
    double write_ratio = 0.3;
    Millis duration{2000};
    std::uint64_t seed = 1;
    std::vector<Fault> faults;
    Millis ttl{1500};
    Millis l1_ttl{300};
};

/// The size of every value the database holds.
constexpr std::size_t value_size = 32;

/// The application instances (cache objects) a worker process runs.
std::size_t instances_per_worker(const RunPlan& plan) {
    return std::min<std::size_t>(2, plan.threads);
}

/// The lab options a worker (or the convergence pass) builds its subject with.
Options options_for(const RunPlan& plan, std::size_t instances) {
    Options o;
    o.keys = plan.keys;
    o.value_size = value_size;
    o.threads = std::max<std::size_t>(plan.threads, instances);
    o.instances = instances;
    o.loader_latency_ms = 1;
    o.db_write_latency_ms = 1;
    o.ttl = plan.ttl;
    o.l1_ttl = plan.l1_ttl;
    o.lock_wait = Millis{1000};
    o.flush_interval = Millis{50};
    o.drain_timeout = Millis{20'000};
    // Short, so that a stopped worker's claims and leases expire within the run
    // (worker-stop, and Redis faults longer than a lease): another flusher takes the
    // claims over, another reader or writer the leases, while the stopped one still holds
    // them and will go on.
    o.claim_ttl = Millis{600};
    o.lease_ttl = Millis{400};
    o.seed = plan.seed;
    o.configs = {plan.spec};
    o.progress = false;
    return o;
}

/// The longest a read that fills a copy can take from its start to the fill: a Lock
/// waiter's max_wait (options_for sets 1 s), then a load slowed by a fault.
constexpr Millis longest_fill{1500};

/// How old a read may be, by the guarantee the composition documents (docs/check.md):
/// with only a TTL, up to the TTL; with an L1, up to the L1's TTL (a bus message can be
/// lost, the L1 copy then lives out its TTL); otherwise not at all. A copy's TTL runs from
/// its fill, and the read that filled it began up to longest_fill earlier: the window
/// counts from there.
Millis staleness_window(const Spec& spec, const RunPlan& plan) {
    Millis w{0};
    if (spec.invalidator == Invalidator::ttl) w = std::max(w, plan.ttl + longest_fill);
    if (spec.l1) w = std::max(w, plan.l1_ttl + longest_fill);
    return w;
}

/// How long after quiescence the cache may still differ from the database: L1 copies a
/// lost message did not reach live out the L1's TTL. Reading before the cache's TTL ends
/// is what makes the check bite: a stale entry left by the last writes is still there.
/// With TTL-only invalidation, or after a worker was killed in the middle of a write (it
/// may have changed the database and not yet invalidated), cached copies live out the
/// TTL as well.
Millis convergence_wait(const RunPlan& plan, const Spec& spec, bool worker_killed) {
    const bool copies_outlive_writes = spec.invalidator == Invalidator::ttl || worker_killed;
    return (copies_outlive_writes ? plan.ttl : Millis{0}) + plan.l1_ttl + Millis{100};
}

std::int64_t now_ns() {
    return Clock::now().time_since_epoch().count();
}

// ---- the worker process --------------------------------------------------------------------

struct WorkerArgs {
    RunPlan plan;
    std::string dir;
    std::string redis_url;
    std::string prefix;
    std::uint32_t process = 0;
    std::uint32_t processes = 1;
};

std::unique_ptr<Subject> make_subject(const RunPlan& plan, const Options& o, const Spec& spec,
                                      FakeDb& db, const std::string& redis_url,
                                      const std::string& prefix, VersionRow* versions) {
    // --log: the library's messages (write-behind warnings) on stderr, for a failure's story.
    auto log = [](std::string_view m) {
        if (std::getenv("LARDER_CHECK_LOG") != nullptr) {
            std::fprintf(stderr, "log: %.*s\n", static_cast<int>(m.size()), m.data());
        }
    };
    RunEnv env{o, db, plan.backend, redis_url, prefix, log, versions};
    return spec.policy->make(env, spec);
}

/// Records what a read of row op.key returned: its version, no row, or that the value was
/// wrong (another row's, or not byte for byte the value of the version it names).
void record_value(Op& op, const std::optional<std::string>& value) {
    op.ok = true;
    if (!value) {
        op.absent = true;
        return;
    }
    const auto parsed = FakeDb::parse_value(*value);
    if (!parsed || parsed->key != op.key ||
        *value != FakeDb::make_value(op.key, parsed->version, value_size)) {
        op.wrong = true;
    } else {
        op.version = parsed->version;
    }
}

/// Reads row op.key through `instance`.
void read_into(Op& op, Subject& subject, std::size_t instance) {
    record_value(op, subject.read(instance, op.key));
}

/// Threads per worker in the stampede round: more than the load's, so that a guard that
/// lets readers through has many to let through.
constexpr std::size_t stampede_threads = 8;

/// Every stampede thread of this worker reads the round's row at its moment, through the
/// instances in turn. Returns the reads, logged like any other (their values are checked);
/// adds the database reads they caused to the round's count.
std::vector<Op> stampede_reads(Subject& subject, FakeDb& db, std::size_t instances,
                               std::size_t keys, std::uint32_t process, std::uint32_t first_thread,
                               Stampede& round) {
    const std::uint64_t row = round.row.load();
    const auto at = Clock::time_point(std::chrono::nanoseconds(round.at_ns.load()));
    // Lock's promise is for a reachable store: a circuit breaker a late fault opened stays
    // open without traffic, and once half-open it lets one probe through and sends every
    // other read to the loader (so does a pooled connection the fault broke). Reads of
    // another row until shortly before the round heal both.
    const std::size_t other = (row + 1) % keys;
    while (Clock::now() + Millis{200} < at) {
        for (std::size_t i = 0; i < instances; ++i) {
            try {
                (void)subject.read(i, other);
            } catch (const std::exception&) {
                // still failing: try again
            }
        }
        std::this_thread::sleep_for(Millis{50});
    }
    const std::uint64_t reads_before = db.reads();
    std::vector<Op> ops(stampede_threads);
    std::vector<std::thread> threads;
    for (std::size_t t = 0; t < stampede_threads; ++t) {
        threads.emplace_back([&, t] {
            Op& op = ops[t];
            op.process = process;
            op.thread = first_thread + static_cast<std::uint32_t>(t);
            op.instance = static_cast<std::uint32_t>(t % instances);
            op.key = row;
            std::this_thread::sleep_until(at);
            op.start_ns = now_ns();
            try {
                read_into(op, subject, op.instance);
            } catch (const std::exception&) {
                op.ok = false;
            }
            op.end_ns = now_ns();
        });
    }
    for (auto& th : threads) th.join();
    round.loads.fetch_add(db.reads() - reads_before);
    round.done.fetch_add(1);
    return ops;
}

/// Worker 0 sets the stampede round up: it drops the row's cached copies, reads the row
/// (the fill), and sets the moment the copy expires. Returns the fill's read; skips the
/// round (and says why) if that fails.
std::vector<Op> set_up_stampede(Subject& subject, const FakeDb& db, const RunPlan& plan,
                                Stampede& round) {
    Op fill;
    fill.thread = static_cast<std::uint32_t>(plan.threads);
    fill.key = plan.seed % plan.keys;
    // A row that exists: what a read finds of a deleted one is the policy's negative
    // entry, whose lifetime is not the TTL's.
    for (std::size_t i = 0; i < plan.keys && db.deleted(fill.key); ++i) {
        fill.key = (fill.key + 1) % plan.keys;
    }
    // The faults are over, but the first commands after one may still fail (a reset
    // connection, an open breaker): try for a few seconds.
    const auto give_up = Clock::now() + Millis{3000};
    for (;;) {
        fill.start_ns = now_ns();
        try {
            subject.invalidate(0, fill.key);
            read_into(fill, subject, 0);
            break;
        } catch (const std::exception& e) {
            if (Clock::now() > give_up) {
                std::fprintf(stderr, "worker 0: the stampede round's fill failed: %s\n", e.what());
                round.skipped.store(true);
                return {};
            }
            std::this_thread::sleep_for(Millis{100});
        }
    }
    fill.end_ns = now_ns();
    round.row.store(fill.key);
    // The copy's TTL runs from the fill; the margin covers a fill the read made late.
    round.at_ns.store(fill.end_ns + std::chrono::nanoseconds(plan.ttl + Millis{100}).count());
    return {fill};
}

int run_worker(const WorkerArgs& a) {
    const RunPlan& plan = a.plan;
    const Spec spec = parse_spec(plan.spec);
    SharedRun shared(a.dir + "/shared", plan.keys, false);
    const std::size_t instances = instances_per_worker(plan);
    // The process's wall clock, which clock-step moves.
    const WallClocks::Clock wall(shared.control().clocks.step_ms[a.process]);
    Options o = options_for(plan, instances);
    o.clock = &wall;
    FakeDb db(FakeDb::Settings{.keys = plan.keys,
                               .value_size = o.value_size,
                               .read_latency = Micros{1000},
                               .write_latency = Micros{1000},
                               .shared_rows = shared.rows(),
                               .shared_fences = shared.fences(),
                               .faults = &shared.faults()},
              Clock::now(), 1);
    auto subject = make_subject(plan, o, spec, db, a.redis_url, a.prefix, shared.versions());

    std::vector<std::vector<Op>> logs(plan.threads);
    const auto deadline = Clock::now() + plan.duration;
    auto work = [&](std::uint32_t t) {
        std::mt19937_64 rng(plan.seed * 0x9E3779B97F4A7C15ull + a.process * 1000 + t + 1);
        // Half the operations go to three hot rows: races on one row (a read joining a
        // load, a write between a load and its fill) need two threads on it at once.
        std::uniform_int_distribution<std::size_t> any_row(0, plan.keys - 1);
        std::uniform_int_distribution<std::size_t> hot_row(0,
                                                           std::min<std::size_t>(plan.keys, 3) - 1);
        std::bernoulli_distribution is_hot(0.5);
        auto pick = [&](auto& g) { return is_hot(g) ? hot_row(g) : any_row(g); };
        std::uniform_int_distribution<std::size_t> batch_size(2, 5);
        std::bernoulli_distribution is_write(plan.write_ratio);
        std::discrete_distribution<int> read_verb({80, 15, 5});  // get, get_many, invalidate
        // Where the policy has them, a third of the writes are read-modify-writes and a
        // sixth are erases.
        enum class WriteVerb { put, modify, erase };
        std::discrete_distribution<int> write_verb(
            {3.0, subject->modifies() ? 2.0 : 0.0, subject->erases() ? 1.0 : 0.0});
        const auto instance = static_cast<std::uint32_t>(t % instances);
        auto& log = logs[t];
        while (Clock::now() < deadline) {
            Op op;
            op.process = a.process;
            op.thread = t;
            op.instance = instance;
            op.key = pick(rng);
            const int verb = is_write(rng) ? -1 : read_verb(rng);
            op.kind = verb < 0 ? Kind::write : verb == 2 ? Kind::invalidate : Kind::read;
            const auto how =
                op.kind == Kind::write ? static_cast<WriteVerb>(write_verb(rng)) : WriteVerb::put;
            op.modify = how == WriteVerb::modify;
            op.erase = how == WriteVerb::erase;
            std::vector<std::size_t> batch;
            if (verb == 1) {
                batch.resize(batch_size(rng));
                for (auto& k : batch) k = pick(rng);
                op.batch = true;
            }
            op.start_ns = now_ns();
            std::vector<Op> rows;
            std::uint64_t sent = 0;  // an erase's version, known even if it throws
            try {
                switch (op.kind) {
                    case Kind::write:
                        if (op.modify) {
                            const auto m = subject->modify(instance, op.key);
                            op.version = m.version;
                            op.base = m.base;
                            op.absent = m.absent;
                        } else if (op.erase) {
                            op.version = subject->erase(instance, op.key, [&](std::uint64_t v) {
                                sent = v;
                                // When it is sent: after its turn came, not when the call began.
                                shared.control().erases.add(op.key, v, now_ns());
                            });
                        } else {
                            op.version = subject->write(instance, op.key);
                        }
                        op.ok = op.version > 0;
                        break;
                    case Kind::invalidate:
                        subject->invalidate(instance, op.key);
                        op.ok = true;
                        break;
                    case Kind::read:
                        if (batch.empty()) {
                            read_into(op, *subject, instance);
                        } else {
                            // One logged read per row, all with the call's start and end.
                            const auto values = subject->read_many(instance, batch);
                            for (std::size_t j = 0; j < batch.size(); ++j) {
                                Op row = op;
                                row.key = batch[j];
                                record_value(row, j < values.size() ? values[j] : std::nullopt);
                                rows.push_back(row);
                            }
                        }
                        break;
                    case Kind::final_read:
                        break;
                }
            } catch (const std::exception&) {
                op.ok = false;
                op.version = op.erase ? sent : 0;  // a failed erase may still have landed
                rows.clear();
                for (const std::size_t k : batch) {  // the rows the failed batch asked for
                    Op row = op;
                    row.key = k;
                    rows.push_back(row);
                }
            }
            op.end_ns = now_ns();
            if (rows.empty()) {
                log.push_back(op);
            } else {
                for (Op& row : rows) {
                    row.end_ns = op.end_ns;
                    log.push_back(row);
                }
            }
            // A failure is often instant (the database is down): pause, so that the run
            // spends its time on operations that can race, not on a flood of refusals.
            if (!op.ok) std::this_thread::sleep_for(Millis{2});
        }
    };
    std::vector<std::thread> threads;
    for (std::uint32_t t = 0; t < plan.threads; ++t) threads.emplace_back(work, t);
    for (auto& th : threads) th.join();
    for (const auto& note : subject->finish()) {
        std::fprintf(stderr, "worker %u: %s\n", a.process, note.c_str());
    }
    shared.control().dead_lettered.fetch_add(subject->counts().dead_lettered);
    shared.control().finished.fetch_add(1);

    // Worker 0 checks convergence: once every worker is done (write-behind drained) and
    // the cached copies a failed write could not remove have expired, it reads every row
    // once more.
    std::vector<Op> final_reads;
    if (a.process == 0) {
        const auto until = Clock::now() + Millis{60'000};
        while (shared.control().finished.load() < a.processes && Clock::now() < until) {
            std::this_thread::sleep_for(Millis{10});
        }
        std::this_thread::sleep_for(
            convergence_wait(plan, spec, shared.control().worker_killed.load()));
        for (std::size_t k = 0; k < plan.keys; ++k) {
            Op op;
            op.process = a.process;
            op.thread = static_cast<std::uint32_t>(plan.threads);
            op.key = k;
            op.kind = Kind::final_read;
            op.start_ns = now_ns();
            try {
                read_into(op, *subject, 0);
            } catch (const std::exception& e) {
                std::fprintf(stderr, "worker 0: convergence read of row %zu failed: %s\n", k,
                             e.what());
            }
            op.end_ns = now_ns();
            final_reads.push_back(op);
        }
        for (const Op& op : set_up_stampede(*subject, db, plan, shared.control().stampede)) {
            final_reads.push_back(op);
        }
    }
    // The stampede round: every worker waits for worker 0 to set it up (after its
    // convergence pass, whose reads must come before the cached copies expire).
    Stampede& round = shared.control().stampede;
    const auto until = Clock::now() + Millis{120'000};
    while (round.at_ns.load() == 0 && !round.skipped.load() && Clock::now() < until) {
        std::this_thread::sleep_for(Millis{5});
    }
    if (round.at_ns.load() != 0) {
        auto reads = stampede_reads(*subject, db, instances, plan.keys, a.process,
                                    static_cast<std::uint32_t>(plan.threads) + 1, round);
        final_reads.insert(final_reads.end(), reads.begin(), reads.end());
    }
    subject.reset();
    logs.push_back(std::move(final_reads));

    const std::string path = a.dir + "/ops." + std::to_string(a.process);
    std::ofstream out(path, std::ios::binary);
    for (const auto& log : logs) {
        out.write(reinterpret_cast<const char*>(log.data()),
                  static_cast<std::streamsize>(log.size() * sizeof(Op)));
    }
    return out ? 0 : 1;
}

// ---- the parent ------------------------------------------------------------------------------

std::vector<Op> read_log(const std::string& path) {
    std::ifstream in(path, std::ios::binary);
    std::vector<Op> ops;
    if (!in) return ops;
    in.seekg(0, std::ios::end);
    const auto size = static_cast<std::size_t>(in.tellg());
    in.seekg(0);
    ops.resize(size / sizeof(Op));
    in.read(reinterpret_cast<char*>(ops.data()),
            static_cast<std::streamsize>(ops.size() * sizeof(Op)));
    return ops;
}

pid_t spawn_worker(const std::vector<std::string>& args) {
    std::vector<char*> argv;
    for (const auto& s : args) argv.push_back(const_cast<char*>(s.c_str()));
    argv.push_back(nullptr);
    pid_t pid = -1;
    if (::posix_spawn(&pid, "/proc/self/exe", nullptr, nullptr, argv.data(), environ) != 0) {
        throw std::runtime_error("cannot start a worker process");
    }
    return pid;
}

/// Waits for every pid until `deadline`; kills what is left. Returns the workers that
/// failed, with why.
std::vector<std::string> wait_workers(std::vector<pid_t> pids, Clock::time_point deadline) {
    std::vector<std::string> failed;
    while (!pids.empty()) {
        for (auto it = pids.begin(); it != pids.end();) {
            int status = 0;
            const pid_t r = ::waitpid(*it, &status, WNOHANG);
            if (r == *it) {
                if (!WIFEXITED(status) || WEXITSTATUS(status) != 0) {
                    failed.push_back("worker " + std::to_string(*it) + " failed (status " +
                                     std::to_string(status) + ")");
                }
                it = pids.erase(it);
            } else {
                ++it;
            }
        }
        if (pids.empty()) break;
        if (Clock::now() > deadline) {
            for (pid_t p : pids) {
                ::kill(p, SIGKILL);
                ::waitpid(p, nullptr, 0);
                failed.push_back("worker " + std::to_string(p) + " did not finish in time: killed");
            }
            break;
        }
        std::this_thread::sleep_for(Millis{20});
    }
    return failed;
}

struct RunReport {
    std::string name;
    std::size_t reads = 0, writes = 0, failed_ops = 0, stale = 0, lost = 0, not_converged = 0;
    std::uint64_t stampede_loads = 0, stampede_promise = 0;
    Op slowest;  ///< the longest operation of the load (a stuck call shows here)
    std::map<std::string, int> faults;
    std::vector<Violation> violations;
    std::vector<std::string> problems;  ///< a worker that crashed or hung
    [[nodiscard]] bool ok() const { return violations.empty() && problems.empty(); }
};

class Checker {
public:
    explicit Checker(std::string self) : self_(std::move(self)) {}

    RunReport run(const RunPlan& plan) {
        const Spec spec = parse_spec(plan.spec);
        RunReport report;
        report.name =
            spec.name() + (plan.backend == BackendKind::redis ? " on redis" : " on memory");
        char pattern[] = "/tmp/larder-check-XXXXXX";
        if (::mkdtemp(pattern) == nullptr) throw std::runtime_error("mkdtemp failed");
        const std::string dir = pattern;
        struct Cleanup {
            std::string dir;
            ~Cleanup() {
                std::error_code ec;
                std::filesystem::remove_all(dir, ec);
            }
        } cleanup{dir};
        SharedRun shared(dir + "/shared", plan.keys, true);

        std::string url;
#if defined(LARDER_LAB_HAVE_REDIS)
        std::unique_ptr<larder::test::RedisServer> server;
        std::unique_ptr<larder::test::TcpProxy> proxy;
        if (plan.backend == BackendKind::redis) {
            larder::test::RedisServerOptions so;
            // Write-behind's queue lives in Redis: with fsync on every write, a restart keeps
            // every acknowledged put. (Without it, a restart loses them: docs/GUARANTEES.md.)
            so.persistence = spec.policy->name == "write-behind";
            server = std::make_unique<larder::test::RedisServer>(so);
            // The workers reach Redis through a loopback proxy, for the network faults.
            proxy = std::make_unique<larder::test::TcpProxy>("127.0.0.1", server->port());
            url = "redis://127.0.0.1:" + std::to_string(proxy->port());
        }
#endif
        const std::string prefix = "check:";

        std::vector<pid_t> pids;
        for (std::uint32_t p = 0; p < plan.processes; ++p) {
            pids.push_back(spawn_worker(worker_args(plan, dir, url, prefix, p)));
        }

        // Faults, on a schedule drawn from the seed, while the workers run.
        std::mt19937_64 rng(plan.seed ^ 0xF00DF00Dull);
        bool killed = false;
        bool outage_done = false;
        const auto end = Clock::now() + plan.duration;
        while (!plan.faults.empty()) {
            std::uniform_int_distribution<int> gap(150, 400);
            std::this_thread::sleep_for(Millis{gap(rng)});
            if (Clock::now() + Millis{700} > end) break;
            Fault f = plan.faults[std::uniform_int_distribution<std::size_t>(
                0, plan.faults.size() - 1)(rng)];
            // One kill per run, never of the last worker: later draws stop one instead.
            if (f == Fault::worker_kill && (killed || pids.size() < 2)) f = Fault::worker_stop;
            const Millis length{std::uniform_int_distribution<int>(50, 500)(rng)};
            if (f == Fault::db_outage) {
                if (outage_done || Clock::now() + outage_length + Millis{700} > end) continue;
                outage_done = true;
            }
            ++report.faults[fault_name(f)];
            if (f == Fault::worker_stop || f == Fault::worker_kill) {
                hit_worker(f, pids, killed, shared, rng);
                continue;
            }
            if (f == Fault::clock_step) {
                step_clock(shared.control().clocks, pids.size(), rng);
                continue;
            }
            inject(f, length, shared.faults(), rng
#if defined(LARDER_LAB_HAVE_REDIS)
                   ,
                   server.get(), proxy.get()
#endif
            );
        }
        report.problems = wait_workers(pids, end + Millis{60'000});

        std::vector<Op> ops;
        for (std::uint32_t p = 0; p < plan.processes; ++p) {
            auto log = read_log(dir + "/ops." + std::to_string(p));
            ops.insert(ops.end(), log.begin(), log.end());
        }
        check(plan, spec, shared, ops, report);
        return report;
    }

private:
    std::vector<std::string> worker_args(const RunPlan& plan, const std::string& dir,
                                         const std::string& url, const std::string& prefix,
                                         std::uint32_t p) const {
        return {self_,
                "--worker",
                dir,
                std::to_string(p),
                plan.spec,
                plan.backend == BackendKind::redis ? "redis" : "memory",
                url.empty() ? "-" : url,
                prefix,
                std::to_string(plan.threads),
                std::to_string(plan.keys),
                std::to_string(plan.write_ratio),
                std::to_string(plan.duration.count()),
                std::to_string(plan.seed),
                std::to_string(plan.ttl.count()),
                std::to_string(plan.l1_ttl.count()),
                std::to_string(plan.processes)};
    }

    /// Stops a worker process for a while, or kills one other than worker 0 (it checks
    /// convergence; the caller sees to one kill per run at most). A killed worker counts as
    /// finished; its log is lost, and what it acknowledged is still known from the shared
    /// version rows (see check).
    template <class Rng>
    static void hit_worker(Fault f, std::vector<pid_t>& pids, bool& killed, SharedRun& shared,
                           Rng& rng) {
        if (f == Fault::worker_kill) {
            const auto victim = std::uniform_int_distribution<std::size_t>(1, pids.size() - 1)(rng);
            ::kill(pids[victim], SIGKILL);
            ::waitpid(pids[victim], nullptr, 0);
            pids.erase(pids.begin() + static_cast<std::ptrdiff_t>(victim));
            shared.control().worker_killed.store(true);
            shared.control().finished.fetch_add(1);
            killed = true;
            return;
        }
        const pid_t who = pids[std::uniform_int_distribution<std::size_t>(0, pids.size() - 1)(rng)];
        ::kill(who, SIGSTOP);
        std::this_thread::sleep_for(Millis{std::uniform_int_distribution<int>(300, 1500)(rng)});
        ::kill(who, SIGCONT);
    }

    /// Steps one worker's wall clock forward or back (an NTP step, a VM resumed), then
    /// back to the system's. Worker indexes stay valid after a kill: a killed worker's
    /// clock steps unseen.
    template <class Rng>
    static void step_clock(WallClocks& clocks, std::size_t workers, Rng& rng) {
        auto& step =
            clocks.step_ms[std::uniform_int_distribution<std::size_t>(0, workers - 1)(rng)];
        const int by = std::uniform_int_distribution<int>(500, 3000)(rng);
        step.store(std::bernoulli_distribution(0.5)(rng) ? by : -by);
        std::this_thread::sleep_for(Millis{std::uniform_int_distribution<int>(300, 1500)(rng)});
        step.store(0);
    }

    template <class Rng>
    static void inject(Fault f, Millis length, DbFaults& db, Rng& rng
#if defined(LARDER_LAB_HAVE_REDIS)
                       ,
                       larder::test::RedisServer* server, larder::test::TcpProxy* proxy
#endif
    ) {
        switch (f) {
            case Fault::db_down:
            case Fault::db_outage: {
                const Millis down = f == Fault::db_outage ? outage_length : length;
                db.down_until_ns.store(now_ns() + std::chrono::nanoseconds(down).count());
                std::this_thread::sleep_for(down);
                return;
            }
            case Fault::slow_loader:
                db.extra_read_latency_us.store(
                    std::uniform_int_distribution<int>(20'000, 200'000)(rng));
                std::this_thread::sleep_for(length);
                db.extra_read_latency_us.store(0);
                return;
            default:
                break;
        }
#if defined(LARDER_LAB_HAVE_REDIS)
        if (!server) return;
        switch (f) {
            case Fault::redis_pause:
                (void)server->query({"CLIENT", "PAUSE", std::to_string(length.count()), "ALL"});
                std::this_thread::sleep_for(length);
                return;
            case Fault::redis_stop:
                server->pause();
                std::this_thread::sleep_for(length);
                server->resume();
                return;
            case Fault::redis_restart:
                server->kill();
                std::this_thread::sleep_for(length);
                server->restart();
                return;
            case Fault::bus_disconnect:
                (void)server->query({"CLIENT", "KILL", "TYPE", "pubsub"});
                return;
            case Fault::net_blackhole:
                proxy->blackhole(true);
                std::this_thread::sleep_for(length);
                proxy->blackhole(false);
                return;
            case Fault::net_slow:
                proxy->set_delay(Millis{std::uniform_int_distribution<int>(5, 50)(rng)});
                std::this_thread::sleep_for(length);
                proxy->set_delay(Millis{0});
                return;
            case Fault::net_reset:
                proxy->drop_all_connections();
                return;
            default:
                return;
        }
#endif
    }

    void check(const RunPlan& plan, const Spec& spec, SharedRun& shared, const std::vector<Op>& ops,
               RunReport& report) {
        for (const Op& op : ops) {
            if (op.kind == Kind::read) ++report.reads;
            if (op.kind == Kind::write) ++report.writes;
            if (!op.ok && op.kind != Kind::final_read) ++report.failed_ops;
            if (op.kind != Kind::final_read &&
                op.end_ns - op.start_ns > report.slowest.end_ns - report.slowest.start_ns) {
                report.slowest = op;
            }
        }
        // After quiescence every row read through the composition is the database's row -
        // except a row whose last write failed: it may have changed the database and not
        // reached the cache (its caller was told), whose copy then lives out its TTL.
        std::map<std::uint64_t, const Op*> last_write;
        for (const Op& op : ops) {
            if (op.kind != Kind::write) continue;
            const Op*& last = last_write[op.key];
            if (!last || op.end_ns > last->end_ns) last = &op;
        }
        std::size_t final_reads = 0;
        for (const Op& op : ops) {
            if (op.kind != Kind::final_read) continue;
            ++final_reads;
            const Row row = db_row(shared, op.key);
            if (op.ok && !op.wrong &&
                (row.deleted ? op.absent : !op.absent && op.version == row.version)) {
                continue;
            }
            const auto last = last_write.find(op.key);
            if (op.ok && !op.wrong && last != last_write.end() && !last->second->ok) continue;
            ++report.not_converged;
            if (report.violations.size() < 3) {
                report.violations.push_back(
                    {"after quiescence the cache converges to the database",
                     "row " + std::to_string(op.key) + ": the read after quiescence " +
                         (!op.ok      ? std::string("failed")
                          : op.wrong  ? std::string("returned a wrong value")
                          : op.absent ? std::string("found no row")
                                      : "returned version " + std::to_string(op.version)) +
                         ", the database " +
                         (row.deleted ? std::string("deleted it")
                                      : "has version " + std::to_string(row.version)),
                     history::slice_of(ops, op.key, 0, op.end_ns)});
            }
        }
        if (report.problems.empty() && final_reads != plan.keys) {
            report.problems.push_back("the convergence pass read " + std::to_string(final_reads) +
                                      " of " + std::to_string(plan.keys) + " rows");
        }
        check_stampede(plan, spec, shared, ops, report);
        // The checker's batch writer rejects no row, and a run shorter than the retry
        // budget (a minute) cannot use it up: nothing may be dead-lettered, whatever the
        // outages. (A killed worker's count dies with it.)
        if (const auto dead = shared.control().dead_lettered.load();
            dead > 0 && plan.duration < Millis{50'000}) {
            report.violations.push_back({"an outage of the database dead-letters nothing",
                                         std::to_string(dead) +
                                             " write-behind entries were dead-lettered; the batch "
                                             "writer rejected no row",
                                         {}});
        }
        const history::Floors floors(ops);
        const EraseJournal& journal = shared.control().erases;
        if (journal.size.load() > EraseJournal::capacity) {
            report.problems.push_back("the erase journal overflowed: shorten the run");
        }
        const history::Erases erases(journal.sent());
        const auto window = std::chrono::nanoseconds(staleness_window(spec, plan)).count();
        auto stale = history::check_reads(ops, floors, erases, window, 3, &report.stale);
        report.violations.insert(report.violations.end(), stale.begin(), stale.end());
        std::size_t lost_updates = 0;
        auto modifies = history::check_modifies(ops, erases, 3, &lost_updates);
        report.lost += lost_updates;
        report.violations.insert(report.violations.end(), modifies.begin(), modifies.end());
        // An L1 may lag other instances' writes by its window, never its own instance's
        // (docs/l1.md); with a TTL-only invalidator no write reaches any cache.
        if (spec.l1 && spec.invalidator != Invalidator::ttl) {
            std::size_t local = 0;
            auto own = history::check_local_reads(ops, erases, 3, &local);
            report.stale += local;
            report.violations.insert(report.violations.end(), own.begin(), own.end());
        }
        // Acknowledged writes reach the database (write-through at once, write-behind by
        // the final flush; cache-aside acknowledges only what the database committed).
        // A killed worker's log is lost; what it acknowledged is in the version rows.
        auto acknowledged = floors.newest();
        std::map<std::uint64_t, std::uint64_t> erase_acknowledged;
        for (const Op& op : ops) {
            if (op.kind == Kind::write && op.erase && op.ok) {
                erase_acknowledged[op.key] = std::max(erase_acknowledged[op.key], op.version);
            }
        }
        if (spec.policy->name != "cache-aside") {
            for (std::size_t k = 0; k < plan.keys; ++k) {
                const VersionRow& v = shared.versions()[k];
                if (v.issued > 1) acknowledged[k] = std::max(acknowledged[k], v.issued);
                erase_acknowledged[k] = std::max(erase_acknowledged[k], v.erase_acknowledged);
            }
        }
        for (const auto& [key, newest] : acknowledged) {
            const Row row = db_row(shared, key);
            const VersionRow& issued = shared.versions()[key];
            const bool newest_is_erase = erase_acknowledged[key] == newest;
            // A deleted row holds the newest acknowledged write if that was an erase, or if
            // an erase sent after it may have landed (its caller was not told). A row that
            // exists holds it if its version is that one's or newer (no two writes of a
            // row share a version).
            const std::uint64_t lost = row.deleted
                                           ? (newest_is_erase || issued.erase_sent > newest ? 0 : 1)
                                           : history::lost_writes(newest, row.version);
            if (lost == 0) continue;
            report.lost += lost;
            if (report.violations.size() < 6) {
                report.violations.push_back(
                    {"every acknowledged write reaches the database",
                     "row " + std::to_string(key) + ": " +
                         (newest_is_erase ? "an erase, version " : "version ") +
                         std::to_string(newest) + ", was acknowledged, the database " +
                         (row.deleted ? std::string("deleted the row")
                                      : "has version " + std::to_string(row.version)),
                     history::slice_of(ops, key, 0, std::numeric_limits<std::int64_t>::max())});
            }
        }
    }

    /// A row as the database holds it after the run.
    struct Row {
        std::uint64_t version = 0;
        bool deleted = false;
    };
    static Row db_row(SharedRun& shared, std::uint64_t key) {
        const std::uint64_t word = shared.rows()[key].load();
        return {.version = word & ~FakeDb::deleted_bit,
                .deleted = (word & FakeDb::deleted_bit) != 0};
    }

    /// The database reads of the stampede round's row, at its expiry, against what the
    /// guard promises (docs/GUARANTEES.md): with Lock one across every process. Without
    /// Lock nothing bounds them (single-flight joins only the misses of one cache object
    /// that overlap: a reader that comes after its object's load, before another object's
    /// fill, loads again), so they are only reported. None means the copy outlived its TTL.
    static void check_stampede(const RunPlan& plan, const Spec& spec, SharedRun& shared,
                               const std::vector<Op>& ops, RunReport& report) {
        const Stampede& round = shared.control().stampede;
        const std::size_t alive = plan.processes - (shared.control().worker_killed.load() ? 1 : 0);
        if (round.skipped.load() || round.done.load() != alive) {
            report.problems.push_back("the stampede round ran in " +
                                      std::to_string(round.done.load()) + " of " +
                                      std::to_string(alive) + " workers");
            return;
        }
        const std::uint64_t row = round.row.load();
        report.stampede_loads = round.loads.load();
        report.stampede_promise = spec.lock ? 1 : 0;
        const auto slice = [&] {
            return history::slice_of(ops, row, round.at_ns.load() - 1'000'000'000,
                                     std::numeric_limits<std::int64_t>::max(), 24);
        };
        if (report.stampede_loads == 0) {
            report.violations.push_back(
                {"a cached copy expires at its TTL",
                 "row " + std::to_string(row) + ": " + std::to_string(alive * stampede_threads) +
                     " reads after its copy's TTL ended, none of them loaded it",
                 slice()});
        } else if (spec.lock && report.stampede_loads > report.stampede_promise) {
            report.violations.push_back(
                {"with Lock, an expiry costs one load across every process",
                 "row " + std::to_string(row) + ": " + std::to_string(alive * stampede_threads) +
                     " reads at its expiry made " + std::to_string(report.stampede_loads) +
                     " database reads, the promise is " + std::to_string(report.stampede_promise),
                 slice()});
        }
    }

    std::string self_;
};

// ---- the command line ---------------------------------------------------------------------

struct Cli {
    std::uint64_t seed = 1;
    std::size_t sample = 8;
    std::vector<std::string> configs;
    std::string backend = "both";
    std::size_t processes = 2;
    std::size_t threads = 3;
    std::size_t keys = 24;
    double duration_s = 2;
    std::vector<Fault> faults;
    bool faults_given = false;
    bool long_mode = false;
    bool list = false;
    bool help = false;
};

std::vector<std::string> split(std::string_view s) {
    std::vector<std::string> out;
    std::size_t start = 0;
    while (start <= s.size()) {
        const auto comma = s.find(',', start);
        const auto end = comma == std::string_view::npos ? s.size() : comma;
        if (end > start) out.emplace_back(s.substr(start, end - start));
        if (comma == std::string_view::npos) break;
        start = comma + 1;
    }
    return out;
}

/// Every composition the checker knows: each policy x guards x invalidator x L1.
std::vector<std::string> matrix() {
    std::vector<std::string> out;
    for (const std::string policy : {"cache-aside", "write-through", "write-behind"}) {
        for (const std::string guard : {"", "+lock", "+xfetch", "+xfetch+lock"}) {
            for (const std::string inv : {"", "+tags", "+versions", "+ttl"}) {
                for (const std::string l1 : {"", "+l1"}) {
                    const std::string spec = policy + guard + inv + l1;
                    try {
                        (void)parse_spec(spec);
                        out.push_back(spec);
                    } catch (const UsageError&) {
                        // not a composition the policy takes
                    }
                }
            }
        }
    }
    return out;
}

std::uint64_t number(std::string_view flag, std::string_view v, std::uint64_t max) {
    std::uint64_t n = 0;
    const auto [p, ec] = std::from_chars(v.data(), v.data() + v.size(), n);
    if (ec != std::errc{} || p != v.data() + v.size() || n > max) {
        throw UsageError(std::string(flag) + ": expected a whole number up to " +
                         std::to_string(max) + ", got " + shown(v, number_chars));
    }
    return n;
}

const char* usage =
    "usage: larder-check [--seed N] [--sample N | --configs SPEC,...] [--backend "
    "memory|redis|both]\n"
    "                    [--processes N] [--threads N] [--keys N] [--duration SECONDS]\n"
    "                    [--faults LIST|none] [--long] [--log] [--list] [--help]\n"
    "\n"
    "Runs caching compositions (policy x guard x invalidator x L1, on memory or a private\n"
    "redis-server) in several OS processes under injected faults, records every operation\n"
    "with its start and end, and checks the history:\n"
    "  - no read that started after a write was acknowledged returns an older version\n"
    "    (except within the documented windows: a TTL-only composition's TTL, an L1's TTL);\n"
    "  - every read returns its own row's value, or no row only after an erase of it;\n"
    "  - a read-modify-write (write-behind's modify) builds on the newest acknowledged value;\n"
    "  - every acknowledged write reaches the database (write-behind: by the final flush;\n"
    "    an acknowledged erase leaves the row deleted);\n"
    "  - after quiescence every row read through the composition is the database's row;\n"
    "  - when a cached copy expires under a crowd of readers, the database reads stay within\n"
    "    the guard's promise (Lock: one across processes), and at least one is made.\n"
    "A failed check prints the operations around it and the command that replays the run.\n"
    "Exit status: 0 every check held, 1 a check failed, 2 bad arguments.\n"
    "\n"
    "flags:\n"
    "  --seed N           seed of the sample, the operations and the fault schedule (default 1)\n"
    "  --sample N         how many compositions to draw from the matrix (default 8)\n"
    "  --configs A,B,...  run these compositions instead of a sample (see --list)\n"
    "  --backend B        memory, redis or both (default both; memory runs one process)\n"
    "  --processes N      worker processes on redis (default 2)\n"
    "  --threads N        threads per worker process (default 3)\n"
    "  --keys N           rows (default 24: few rows, many races)\n"
    "  --duration S       seconds of load per composition (default 2)\n"
    "  --faults LIST      comma-separated, or none (default: every fault the backend allows):\n";

void print_help() {
    std::cout << usage;
    for (const auto& f : fault_table) {
        std::cout << "                       " << f.name << ": " << f.about << "\n";
    }
    std::cout << "  --long             sample 40 compositions of 5 s each\n"
                 "  --log              print the library's log messages (stderr)\n"
                 "  --list             print the matrix of compositions and exit\n"
                 "  --help             this text\n";
}

Cli parse(int argc, char** argv) {
    Cli c;
    CLI::App app("larder-check", "larder-check");
    configure(app);
    // Each value is checked as it is parsed, so the message names the flag.
    auto add = [&](const std::string& flag, const std::string& value,
                   std::function<void(std::string_view)> apply) {
        app.add_option_function<std::string>(
               flag, [apply](const std::string& v) { apply(v); }, "")
            ->type_name(value);
    };
    add("--seed", "N", [&](auto v) { c.seed = number("--seed", v, UINT64_MAX); });
    add("--sample", "N", [&](auto v) { c.sample = number("--sample", v, 10'000); });
    add("--configs", "SPEC,...", [&](auto v) {
        c.configs = split(v);
        for (const auto& s : c.configs) (void)parse_spec(s);
    });
    add("--backend", "B", [&](auto v) {
        c.backend = std::string(v);
        if (c.backend != "memory" && c.backend != "redis" && c.backend != "both") {
            throw UsageError("--backend: memory, redis or both, not " +
                             shown(c.backend, word_chars));
        }
    });
    add("--processes", "N", [&](auto v) { c.processes = number("--processes", v, 64); });
    add("--threads", "N", [&](auto v) { c.threads = number("--threads", v, 256); });
    add("--keys", "N", [&](auto v) { c.keys = number("--keys", v, 1'000'000); });
    add("--duration", "S",
        [&](auto v) { c.duration_s = static_cast<double>(number("--duration", v, 3600)); });
    add("--faults", "LIST", [&](auto v) {
        c.faults_given = true;
        c.faults.clear();
        if (v == "none") return;
        for (const auto& name : split(v)) {
            bool found = false;
            for (const auto& f : fault_table) {
                if (f.name == name) {
                    c.faults.push_back(f.fault);
                    found = true;
                }
            }
            if (!found) throw UsageError("--faults: unknown fault " + shown(name, word_chars));
        }
    });
    // the workers inherit it
    add_switch(
        app, "--log", [] { ::setenv("LARDER_CHECK_LOG", "1", 1); }, "");
    add_switch(
        app, "--long", [&] { c.long_mode = true; }, "");
    add_switch(
        app, "--list", [&] { c.list = true; }, "");
    add_switch(
        app, "-h,--help", [&] { c.help = true; }, "");
    parse_flags(app, argc, argv);
    if (c.processes == 0 || c.threads == 0 || c.keys == 0) {
        throw UsageError("--processes, --threads and --keys must be at least 1");
    }
    if (c.processes > WallClocks::max_processes) {
        throw UsageError("--processes: at most " + std::to_string(WallClocks::max_processes));
    }
    return c;
}

WorkerArgs parse_worker(int argc, char** argv) {
    if (argc != 16) throw UsageError("--worker: wrong number of arguments");
    WorkerArgs w;
    w.dir = argv[2];
    w.process = static_cast<std::uint32_t>(std::stoul(argv[3]));
    w.plan.spec = argv[4];
    w.plan.backend =
        std::string_view(argv[5]) == "redis" ? BackendKind::redis : BackendKind::memory;
    w.redis_url = std::string_view(argv[6]) == "-" ? "" : argv[6];
    w.prefix = argv[7];
    w.plan.threads = std::stoul(argv[8]);
    w.plan.keys = std::stoul(argv[9]);
    w.plan.write_ratio = std::stod(argv[10]);
    w.plan.duration = Millis{std::stoll(argv[11])};
    w.plan.seed = std::stoull(argv[12]);
    w.plan.ttl = Millis{std::stoll(argv[13])};
    w.plan.l1_ttl = Millis{std::stoll(argv[14])};
    w.processes = static_cast<std::uint32_t>(std::stoul(argv[15]));
    return w;
}

std::string replay_command(const Cli& c, const RunPlan& plan) {
    std::ostringstream out;
    out << "larder-check --seed " << plan.seed << " --configs " << plan.spec << " --backend "
        << (plan.backend == BackendKind::redis ? "redis" : "memory") << " --processes "
        << plan.processes << " --threads " << plan.threads << " --keys " << plan.keys
        << " --duration " << plan.duration.count() / 1000 << " --faults ";
    if (plan.faults.empty()) {
        out << "none";
    } else {
        for (std::size_t i = 0; i < plan.faults.size(); ++i) {
            out << (i ? "," : "") << fault_name(plan.faults[i]);
        }
    }
    (void)c;
    return out.str();
}

}  // namespace

int main(int argc, char** argv) {
    try {
        if (argc > 1 && std::string_view(argv[1]) == "--worker") {
            return run_worker(parse_worker(argc, argv));
        }
        Cli cli = parse(argc, argv);
        if (cli.help) {
            print_help();
            return 0;
        }
        const auto all = matrix();
        if (cli.list) {
            for (const auto& s : all) std::cout << s << "\n";
            return 0;
        }
        if (cli.long_mode) {
            cli.sample = std::max<std::size_t>(cli.sample, 40);
            cli.duration_s = std::max(cli.duration_s, 5.0);
        }
        std::vector<BackendKind> backends;
        if (cli.backend != "redis") backends.push_back(BackendKind::memory);
#if defined(LARDER_LAB_HAVE_REDIS)
        if (cli.backend != "memory") backends.push_back(BackendKind::redis);
#else
        if (cli.backend == "redis")
            throw UsageError("built without hiredis: --backend memory only");
#endif
        // The runs: the given compositions on every backend asked for, or a sample of the
        // matrix drawn by the seed (each composition on one backend).
        std::vector<RunPlan> plans;
        std::mt19937_64 rng(cli.seed);
        auto plan_for = [&](const std::string& spec, BackendKind b, std::uint64_t seed) {
            RunPlan p;
            p.spec = spec;
            p.backend = b;
            p.processes = b == BackendKind::redis ? cli.processes : 1;
            p.threads = cli.threads;
            p.keys = cli.keys;
            p.duration = Millis{static_cast<long long>(cli.duration_s * 1000)};
            p.seed = seed;
            for (const auto& f : fault_table) {
                const bool allowed =
                    (!f.needs_private_redis || b == BackendKind::redis) &&
                    (!f.needs_two_workers || (b == BackendKind::redis && cli.processes >= 2)) &&
                    p.duration >= f.needs_run && (!f.needs_l1 || parse_spec(spec).l1);
                const bool asked =
                    !cli.faults_given ||
                    std::find(cli.faults.begin(), cli.faults.end(), f.fault) != cli.faults.end();
                if (allowed && asked) p.faults.push_back(f.fault);
            }
            return p;
        };
        if (!cli.configs.empty()) {
            for (const auto& spec : cli.configs) {
                for (BackendKind b : backends) plans.push_back(plan_for(spec, b, cli.seed));
            }
        } else {
            std::vector<std::string> pool = all;
            std::shuffle(pool.begin(), pool.end(), rng);
            for (std::size_t i = 0; i < cli.sample && i < pool.size(); ++i) {
                plans.push_back(plan_for(pool[i], backends[i % backends.size()], cli.seed + i));
            }
        }

        Checker checker(argv[0]);
        int failures = 0;
        for (const auto& plan : plans) {
            const auto t0 = Clock::now();
            const RunReport r = checker.run(plan);
            const double s = std::chrono::duration<double>(Clock::now() - t0).count();
            std::string faults;
            for (const auto& [name, n] : r.faults) {
                faults += (faults.empty() ? "" : " ") + name + "x" + std::to_string(n);
            }
            const std::string expiry =
                std::to_string(r.stampede_loads) +
                (r.stampede_promise ? " (at most " + std::to_string(r.stampede_promise) + ")" : "");
            std::printf(
                "%-6s %-40s %5.1f s  reads %zu, writes %zu, failed %zu, stale %zu, lost %zu, "
                "loads at expiry %s, slowest %.0f ms (%s)%s%s\n",
                r.ok() ? "ok" : "FAILED", r.name.c_str(), s, r.reads, r.writes, r.failed_ops,
                r.stale, r.lost, expiry.c_str(),
                static_cast<double>(r.slowest.end_ns - r.slowest.start_ns) / 1e6,
                history::kind_name(r.slowest), faults.empty() ? "" : "; faults: ", faults.c_str());
            for (const auto& p : r.problems) std::printf("  %s\n", p.c_str());
            for (const auto& v : r.violations) std::printf("%s", history::render(v).c_str());
            if (!r.ok()) {
                ++failures;
                std::printf("  replay: %s\n", replay_command(cli, plan).c_str());
            }
            std::fflush(stdout);
        }
        std::printf("%zu compositions, %d failed\n", plans.size(), failures);
        return failures == 0 ? 0 : 1;
    } catch (const UsageError& e) {
        std::cerr << "larder-check: " << e.what() << "\n(larder-check --help lists the flags)\n";
        return 2;
    } catch (const std::exception& e) {
        std::cerr << "larder-check: " << e.what() << "\n";
        return 1;
    }
}
