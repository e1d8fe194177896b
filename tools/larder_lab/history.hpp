// What larder-lab counts and larder-check proves, defined once: a stale read, a lost write,
// and the checks over a history of operations that use those definitions. The lab counts
// online (an atomic per row holds the newest acknowledged version); the checker records
// every operation, with its start and end, in every process, and checks afterwards.
#pragma once

#include <algorithm>
#include <cstdint>
#include <cstdio>
#include <map>
#include <span>
#include <string>
#include <vector>

namespace lab::history {

/// A stale read: it returned an older version of its row than `floor`, the newest version
/// whose write was acknowledged (the write call returned) before the read started - not
/// counting writes acknowledged within the staleness window the composition documents
/// (see floor_at). Reads that failed are not reads of a version and never stale.
[[nodiscard]] constexpr bool is_stale(std::uint64_t seen, std::uint64_t floor) noexcept {
    return seen < floor;
}

/// Lost writes of a row: writers take turns and their versions rise, so after the final
/// flush the acknowledged writes the database lacks are those above the version it holds
/// (at most newest - held of them: a write that failed left a gap).
[[nodiscard]] constexpr std::uint64_t lost_writes(std::uint64_t newest_acknowledged,
                                                  std::uint64_t in_database) noexcept {
    return newest_acknowledged > in_database ? newest_acknowledged - in_database : 0;
}

/// final_read: a read after quiescence (every process done, faults healed, staleness
/// windows over), which must return the database's row. invalidate: the cached copies of
/// a row dropped, the database unchanged (it moves no floor).
enum class Kind : std::uint8_t { read, write, final_read, invalidate };

/// One operation as a process logged it (fixed size: written raw to a per-process file).
struct Op {
    std::int64_t start_ns = 0;  ///< steady_clock (CLOCK_MONOTONIC, one for all processes)
    std::int64_t end_ns = 0;
    std::uint64_t key = 0;
    /// read: the version returned (0: none); write: the version acknowledged (0: the call
    /// failed, so nothing was acknowledged; an erase that failed keeps the version it was
    /// sent with, which may have landed).
    std::uint64_t version = 0;
    std::uint32_t process = 0;
    std::uint32_t thread = 0;
    std::uint32_t instance = 0;  ///< the application instance (cache object) in the process
    Kind kind = Kind::read;
    bool batch = false;   ///< a read that was one row of a get_many
    bool modify = false;  ///< a write that was a read-modify-write (write-behind's modify)
    bool ok = false;      ///< the call returned (a read that threw is not ok)
    bool wrong = false;   ///< a read that returned an unparsable value or another row's
    bool erase = false;   ///< a write that deleted the row (write-behind's erase)
    /// A read that found no row; a read-modify-write whose change was applied to none.
    bool absent = false;
    /// A read-modify-write: the version its change was applied to (0: unparsable).
    std::uint64_t base = 0;
};

/// A broken guarantee and the operations that show it.
struct Violation {
    std::string guarantee;
    std::string detail;
    std::vector<Op> slice;  ///< the operations on the row around it, in start order
};

/// Sorts `ops` by `less`, then makes each version the largest up to it: a binary search by
/// time then finds the newest version of everything before.
template <class Less>
void sort_with_running_max(std::vector<Op>& ops, Less less) {
    std::sort(ops.begin(), ops.end(), less);
    for (std::size_t i = 1; i < ops.size(); ++i) {
        ops[i].version = std::max(ops[i].version, ops[i - 1].version);
    }
}

/// Per row: acknowledged writes sorted by end, with the running maximum of their versions,
/// so the floor of a read is one binary search.
class Floors {
public:
    explicit Floors(std::span<const Op> ops) {
        for (const Op& op : ops) {
            if (op.kind == Kind::write && op.ok && op.version > 0) rows_[op.key].push_back(op);
        }
        for (auto& [key, writes] : rows_) {
            sort_with_running_max(writes,
                                  [](const Op& a, const Op& b) { return a.end_ns < b.end_ns; });
        }
    }

    /// The floor of a read of `key` that started at `start_ns`, given a staleness window:
    /// the newest version acknowledged before start_ns - window_ns. Returns the write that
    /// set it (version 0 when none).
    [[nodiscard]] Op floor_at(std::uint64_t key, std::int64_t start_ns,
                              std::int64_t window_ns) const {
        const auto it = rows_.find(key);
        if (it == rows_.end()) return {};
        const auto& writes = it->second;
        const std::int64_t before = start_ns - window_ns;
        const auto upper =
            std::lower_bound(writes.begin(), writes.end(), before,
                             [](const Op& w, std::int64_t t) { return w.end_ns < t; });
        if (upper == writes.begin()) return {};
        return *(upper - 1);
    }

    /// The newest acknowledged version of every row written.
    [[nodiscard]] std::map<std::uint64_t, std::uint64_t> newest() const {
        std::map<std::uint64_t, std::uint64_t> out;
        for (const auto& [key, writes] : rows_) out[key] = writes.back().version;
        return out;
    }

private:
    std::map<std::uint64_t, std::vector<Op>> rows_;
};

/// Per row: every erase sent (acknowledged or not: one that failed may have landed), each
/// with the moment it was sent (an Op whose start_ns is that moment, from the erase
/// journal every process writes before it sends one). A read may find no row only if an
/// erase at least as new as its floor had been sent before it returned.
class Erases {
public:
    explicit Erases(std::span<const Op> sent) {
        for (const Op& op : sent) {
            if (op.kind == Kind::write && op.erase && op.version > 0) {
                by_time_[op.key].push_back(op);
                versions_[op.key].push_back(op.version);
            }
        }
        for (auto& [key, erases] : by_time_) {
            sort_with_running_max(erases,
                                  [](const Op& a, const Op& b) { return a.start_ns < b.start_ns; });
        }
        for (auto& [key, versions] : versions_) std::sort(versions.begin(), versions.end());
    }

    /// The newest version of an erase of `key` sent before `t_ns` (0: none).
    [[nodiscard]] std::uint64_t newest_sent_before(std::uint64_t key, std::int64_t t_ns) const {
        const auto it = by_time_.find(key);
        if (it == by_time_.end()) return 0;
        const auto& erases = it->second;
        const auto upper =
            std::lower_bound(erases.begin(), erases.end(), t_ns,
                             [](const Op& e, std::int64_t t) { return e.start_ns < t; });
        return upper == erases.begin() ? 0 : (upper - 1)->version;
    }

    /// Whether an operation that found no row of `key`, and ended at `end_ns`, may have:
    /// an erase at least as new as `floor` (and any erase at all) was sent before.
    [[nodiscard]] bool explain_absence(std::uint64_t key, std::int64_t end_ns,
                                       std::uint64_t floor) const {
        const std::uint64_t newest = newest_sent_before(key, end_ns);
        return newest > 0 && newest >= floor;
    }

    /// Whether an erase of `key` was sent with a version in [from, to).
    [[nodiscard]] bool sent_between(std::uint64_t key, std::uint64_t from, std::uint64_t to) const {
        const auto it = versions_.find(key);
        if (it == versions_.end()) return false;
        const auto at = std::lower_bound(it->second.begin(), it->second.end(), from);
        return at != it->second.end() && *at < to;
    }

private:
    std::map<std::uint64_t, std::vector<Op>> by_time_;
    std::map<std::uint64_t, std::vector<std::uint64_t>> versions_;
};

/// The operations on `key` that overlap [from_ns, to_ns], in start order, at most `limit`
/// (the ones nearest to_ns): the history a reader needs to see a violation.
inline std::vector<Op> slice_of(std::span<const Op> ops, std::uint64_t key, std::int64_t from_ns,
                                std::int64_t to_ns, std::size_t limit = 12) {
    std::vector<Op> out;
    for (const Op& op : ops) {
        if (op.key == key && op.end_ns >= from_ns && op.start_ns <= to_ns) out.push_back(op);
    }
    std::sort(out.begin(), out.end(),
              [](const Op& a, const Op& b) { return a.start_ns < b.start_ns; });
    if (out.size() > limit) out.erase(out.begin(), out.end() - static_cast<std::ptrdiff_t>(limit));
    return out;
}

/// The violation of an operation that saw less than `floor`, a write acknowledged before it
/// started: "row k: <who> that started t ms after version f was acknowledged <saw>".
inline Violation behind_floor(std::span<const Op> ops, const Op& op, const Op& floor,
                              const char* guarantee, const char* who, const std::string& saw) {
    char after[32];
    std::snprintf(after, sizeof after, "%.3f",
                  static_cast<double>(op.start_ns - floor.end_ns) / 1e6);
    return {guarantee,
            "row " + std::to_string(op.key) + ": " + who + " that started " + after +
                " ms after version " + std::to_string(floor.version) + " was acknowledged " + saw,
            slice_of(ops, op.key, std::min(floor.start_ns, op.start_ns), op.end_ns)};
}

/// Every read that returned an older version than the floor its start gives it (or no
/// row, where no erase that new explains it), and every read that returned a wrong value.
inline std::vector<Violation> check_reads(std::span<const Op> ops, const Floors& floors,
                                          const Erases& erases, std::int64_t window_ns,
                                          std::size_t max_reported,
                                          std::size_t* stale_count = nullptr,
                                          const char* guarantee = "no stale read") {
    std::vector<Violation> out;
    std::size_t stale = 0;
    auto wrong = [&](const Op& op, const char* what) {
        ++stale;
        if (out.size() < max_reported) {
            out.push_back({"a read returns its row's value", what,
                           slice_of(ops, op.key, op.start_ns - 1'000'000'000, op.end_ns)});
        }
    };
    for (const Op& op : ops) {
        if (op.kind != Kind::read || !op.ok) continue;
        if (op.wrong) {
            wrong(op, "the read returned an unparsable value or another row's");
            continue;
        }
        // No window for a read that found no row: no copy of "no row" outlives a write
        // (an L1 keeps none, and a put replaces the store's tombstone).
        const Op floor = floors.floor_at(op.key, op.start_ns, op.absent ? 0 : window_ns);
        if (op.absent) {
            if (erases.explain_absence(op.key, op.end_ns, floor.version)) continue;
            if (erases.newest_sent_before(op.key, op.end_ns) == 0) {
                wrong(op, "the read found no row, and no erase of it had been sent");
                continue;
            }
        } else if (!is_stale(op.version, floor.version)) {
            continue;
        }
        ++stale;
        if (out.size() < max_reported) {
            out.push_back(behind_floor(ops, op, floor, guarantee, "a read",
                                       op.absent
                                           ? "found no row (an older erase's)"
                                           : "returned version " + std::to_string(op.version)));
        }
    }
    if (stale_count) *stale_count = stale;
    return out;
}

/// Every read-modify-write that did not build on the write before it: its change was
/// applied to a lost value. Writers of a row take turns and their versions rise in the
/// order they ran (write-behind's writers in the lab), so a modify with version V ran
/// after every write below V had returned; it must build on the newest acknowledged one
/// or a newer one (a write that failed may have landed), or, if it found no row, follow an
/// erase sent since that write.
inline std::vector<Violation> check_modifies(std::span<const Op> ops, const Erases& erases,
                                             std::size_t max_reported,
                                             std::size_t* lost_count = nullptr) {
    std::map<std::uint64_t, std::vector<const Op*>> acknowledged;  // by version
    for (const Op& op : ops) {
        if (op.kind == Kind::write && op.ok && op.version > 0) acknowledged[op.key].push_back(&op);
    }
    for (auto& [key, writes] : acknowledged) {
        std::sort(writes.begin(), writes.end(),
                  [](const Op* a, const Op* b) { return a->version < b->version; });
    }
    std::vector<Violation> out;
    std::size_t lost = 0;
    for (const Op& op : ops) {
        if (op.kind != Kind::write || !op.modify || !op.ok) continue;
        const auto& writes = acknowledged[op.key];
        const auto next =
            std::lower_bound(writes.begin(), writes.end(), op.version,
                             [](const Op* w, std::uint64_t v) { return w->version < v; });
        if (next == writes.begin()) continue;  // no acknowledged write before it is known
        const Op& before = **(next - 1);
        if (op.absent ? erases.sent_between(op.key, before.version, op.version)
                      : op.base >= before.version) {
            continue;
        }
        ++lost;
        if (out.size() < max_reported) {
            out.push_back(
                {"a read-modify-write builds on the newest acknowledged value",
                 "row " + std::to_string(op.key) + ": the modify that wrote version " +
                     std::to_string(op.version) + ", after version " +
                     std::to_string(before.version) + " was acknowledged, " +
                     (op.absent ? std::string("found no row")
                                : "changed version " + std::to_string(op.base)),
                 slice_of(ops, op.key, std::min(before.start_ns, op.start_ns), op.end_ns)});
        }
    }
    if (lost_count) *lost_count = lost;
    return out;
}

/// Every read that returned an older version than the newest write its own application
/// instance (same process, same cache object) had acknowledged before it started: a
/// local write is seen at once, whatever window other instances are allowed.
inline std::vector<Violation> check_local_reads(std::span<const Op> ops, const Erases& erases,
                                                std::size_t max_reported,
                                                std::size_t* stale_count = nullptr) {
    std::map<std::pair<std::uint32_t, std::uint32_t>, std::vector<Op>> by_instance;
    for (const Op& op : ops) {
        if ((op.kind == Kind::read && !op.wrong) || op.kind == Kind::write) {
            by_instance[{op.process, op.instance}].push_back(op);
        }
    }
    std::vector<Violation> out;
    std::size_t stale = 0;
    for (const auto& [instance, own] : by_instance) {
        std::size_t n = 0;
        auto found = check_reads(own, Floors(own), erases, 0,
                                 max_reported - std::min(max_reported, out.size()), &n,
                                 "a read sees its own instance's acknowledged writes");
        stale += n;
        out.insert(out.end(), found.begin(), found.end());
    }
    if (stale_count) *stale_count = stale;
    return out;
}

inline const char* kind_name(const Op& op) {
    switch (op.kind) {
        case Kind::write:
            return op.erase ? "erase" : op.modify ? "modify" : "write";
        case Kind::read:
            return op.batch ? "many" : "read";
        case Kind::final_read:
            return "final";
        case Kind::invalidate:
            return "inval";
    }
    return "?";
}

/// Renders a violation: the guarantee, what happened, and the slice as a table with times
/// relative to its first operation.
inline std::string render(const Violation& v) {
    std::string out = "  broke: " + v.guarantee + "\n  " + v.detail + "\n";
    if (v.slice.empty()) return out;
    const std::int64_t t0 = v.slice.front().start_ns;
    out += "     start ms    end ms  process.thread  op      version\n";
    for (const Op& op : v.slice) {
        std::string version = !op.ok && !op.erase ? "failed"
                              : !op.ok   ? "failed (sent " + std::to_string(op.version) + ")"
                              : op.wrong ? "wrong value"
                              : op.absent && op.kind != Kind::write ? "no row"
                                                                    : std::to_string(op.version);
        if (op.ok && op.modify) {
            version +=
                op.absent ? " (changed no row)" : " (changed " + std::to_string(op.base) + ")";
        }
        char line[200];
        std::snprintf(line, sizeof line, "  %10.3f %9.3f  %7u.%-7u  %-6s  %s\n",
                      static_cast<double>(op.start_ns - t0) / 1e6,
                      static_cast<double>(op.end_ns - t0) / 1e6, op.process, op.thread,
                      kind_name(op), version.c_str());
        out += line;
    }
    return out;
}

}  // namespace lab::history
