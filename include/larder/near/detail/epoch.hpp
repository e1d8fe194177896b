// Epoch-based reclamation (Fraser 2004, as in crossbeam-epoch) for structures whose readers
// must neither lock nor write memory that another core reads. A reader announces the epoch
// it started in by writing its own cache-line-sized slot; a writer unlinks a node, stamps
// it with the current epoch and frees it once the global epoch has moved two steps past the
// stamp, which cannot happen while any reader that might still see the node is inside.
//
// One domain serves the whole process (like crossbeam's default collector): a thread owns
// one slot whichever structures it reads, the slot goes back to a free list when the thread
// exits, and slots are never freed (their number is the peak number of threads).
//
// Why it is safe, in terms of the single total order S of seq_cst operations. The structure
// using the domain stores its links and loads them in read sections with seq_cst (plain
// loads on x86 and AArch64), and stamps a node with retire_epoch() after unlinking it.
//  1. A read section pins epoch g (a load of the epoch, then an exchange on its slot)
//     before its link loads in S. A node's `next` keeps pointing at what was linked when
//     the node itself was unlinked, so any node the section reaches was still linked after
//     the pin: its unlink, and the stamp r loaded after that, follow the pin in S, so r >= g.
//  2. Freeing needs an advance from r + 1 to r + 2, whose scan must read 0 or r + 1 in the
//     reader's slot. That scan follows its own load of r + 1, hence the pin, in S, so it
//     cannot read a value older than the pin; it does not read g either, so it read the
//     reader's later unpin or re-pin. Both are release stores made after the section's
//     accesses: those happen before the advance, and before every free that depends on it.
// Standalone fences are never used, so ThreadSanitizer sees every edge.
//
// The pin's exchange is a full fence (about 7 ns on x86, and it stalls the loads behind it).
// On Linux the domain moves that cost to the writers instead: readers pin with a plain
// store, and an advance first runs membarrier(MEMBARRIER_CMD_PRIVATE_EXPEDITED), which
// makes every running thread of the process execute a full fence (as liburcu's "memb"
// flavour and folly's asymmetric fences do). Each reader's pin is then either visible to
// the scan, or ordered after the fence, so that its loads see every unlink made before the
// advance: the argument above holds with the fence in place of the exchange. The mode is
// chosen once per process, before the first read section; define
// LARDER_EPOCH_NO_MEMBARRIER to always use the exchange.
#pragma once

#include <pthread.h>

#include <atomic>
#include <cstddef>
#include <cstdint>

#if defined(__linux__) && !defined(LARDER_EPOCH_NO_MEMBARRIER)
#include <linux/membarrier.h>
#include <sys/syscall.h>
#include <unistd.h>
#if defined(__NR_membarrier)
#define LARDER_EPOCH_HAVE_MEMBARRIER 1
#endif
#endif

namespace larder::detail {

struct alignas(64) EpochSlot {
    /// The epoch this thread's read section started in; 0 outside read sections.
    std::atomic<std::uint64_t> epoch{0};
    std::atomic<bool> in_use{true};
    EpochSlot* next = nullptr;  // immutable once the slot is published
    std::size_t index = 0;      // dense, stable: 0 for the first slot made, 1 for the next...
};

/// Per-thread state. Trivially constructible and destructible, so reaching it costs one
/// thread-pointer-relative load; the slot is handed back by a separate thread_local object.
struct EpochThreadState {
    EpochSlot* slot = nullptr;
    unsigned depth = 0;  // nesting of read sections (a visit() callback may read again)
};

inline thread_local constinit EpochThreadState epoch_thread_state{};

class EpochDomain {
public:
    constexpr EpochDomain() noexcept = default;
    EpochDomain(const EpochDomain&) = delete;
    EpochDomain& operator=(const EpochDomain&) = delete;

    /// Writer side, after unlinking a node with a seq_cst store (so that no read section
    /// that starts later can reach it): the epoch to stamp it with.
    [[nodiscard]] std::uint64_t retire_epoch() const noexcept {
        return epoch_.load(std::memory_order_seq_cst);
    }

    /// The epoch now; nodes stamped with e may be freed once this is >= e + 2.
    [[nodiscard]] std::uint64_t epoch() const noexcept {
        return epoch_.load(std::memory_order_acquire);
    }

    /// Reader side: the epoch a read section announces. Sequentially consistent (a plain
    /// load on x86 and AArch64) so that it is ordered with the writers' stamps.
    [[nodiscard]] std::uint64_t epoch_for_reader() const noexcept {
        return epoch_.load(std::memory_order_seq_cst);
    }

    /// Moves the global epoch one step if no reader is still inside an older epoch.
    /// Costs a pass over the slots (one per thread alive at the peak), plus a membarrier
    /// call in the asymmetric mode (microseconds); never blocks.
    bool try_advance() noexcept {
        const bool asymmetric = asymmetric_mode();
        std::uint64_t e = epoch_.load(std::memory_order_seq_cst);
        if (asymmetric && !fence_all_threads()) return false;
        for (EpochSlot* s = slots_.load(std::memory_order_seq_cst); s; s = s->next) {
            const std::uint64_t pinned = s->epoch.load(std::memory_order_seq_cst);
            if (pinned != 0 && pinned != e) return false;
        }
        return epoch_.compare_exchange_strong(e, e + 1, std::memory_order_seq_cst);
    }

    /// Whether read sections pin with a plain store (writers fence for them). Valid in a
    /// thread that has claimed its slot; fixed for the life of the process.
    [[nodiscard]] bool readers_pin_lightly() const noexcept {
        return asymmetric_.load(std::memory_order_relaxed);
    }

    /// The calling thread's slot, claimed on first use.
    EpochSlot* slot_for_this_thread() {
        EpochSlot* s = epoch_thread_state.slot;
        return s ? s : claim_slot();
    }

    /// Slots ever made: the peak number of threads that read at the same time.
    [[nodiscard]] std::size_t slot_count() const noexcept {
        return slot_count_.load(std::memory_order_relaxed);
    }

    [[nodiscard]] static EpochDomain& global() noexcept;

private:
    struct SlotReturner {
        SlotReturner() = default;
        SlotReturner(const SlotReturner&) = delete;
        SlotReturner& operator=(const SlotReturner&) = delete;
        ~SlotReturner() {
            EpochSlot* s = epoch_thread_state.slot;
            if (!s) return;
            epoch_thread_state.slot = nullptr;
            s->epoch.store(0, std::memory_order_release);
            s->in_use.store(false, std::memory_order_release);
        }
    };

    // Decided once, before any thread's first read section (claim_slot runs first).
    bool asymmetric_mode() noexcept {
        static const bool on = [this] {
            const bool ok = register_membarrier();
            asymmetric_.store(ok, std::memory_order_relaxed);
            return ok;
        }();
        return on;
    }

    static bool register_membarrier() noexcept {
#if defined(LARDER_EPOCH_HAVE_MEMBARRIER)
        const long supported = syscall(__NR_membarrier, MEMBARRIER_CMD_QUERY, 0, 0);
        if (supported < 0 || !(supported & MEMBARRIER_CMD_PRIVATE_EXPEDITED)) return false;
        return syscall(__NR_membarrier, MEMBARRIER_CMD_REGISTER_PRIVATE_EXPEDITED, 0, 0) == 0;
#else
        return false;
#endif
    }

    // False if the kernel refused (a child after fork() may need to register again): the
    // advance is then skipped, which delays freeing but never frees early.
    static bool fence_all_threads() noexcept {
#if defined(LARDER_EPOCH_HAVE_MEMBARRIER)
        if (syscall(__NR_membarrier, MEMBARRIER_CMD_PRIVATE_EXPEDITED, 0, 0) == 0) return true;
        return register_membarrier() &&
               syscall(__NR_membarrier, MEMBARRIER_CMD_PRIVATE_EXPEDITED, 0, 0) == 0;
#else
        return false;
#endif
    }

    // After fork() the child has one thread, the one that forked: every other slot belongs
    // to a thread that does not exist there, and one pinned in a read section at the fork
    // would stop the child's epoch for good (nothing ever freed again).
    static void release_slots_after_fork() noexcept {
        EpochSlot* own = epoch_thread_state.slot;
        for (EpochSlot* s = global_epoch_domain_slots(); s; s = s->next) {
            if (s == own) continue;
            s->epoch.store(0, std::memory_order_relaxed);
            s->in_use.store(false, std::memory_order_relaxed);
        }
    }

    static EpochSlot* global_epoch_domain_slots() noexcept;

    EpochSlot* claim_slot() {
        (void)asymmetric_mode();
        static const bool fork_handler = [] {
            return pthread_atfork(nullptr, nullptr, &release_slots_after_fork) == 0;
        }();
        (void)fork_handler;
        // Constructed on the first call in each thread; its destructor runs at thread exit.
        // A read from a thread_local destructor that runs after it claims a slot again,
        // which then stays taken: one slot lost, never an unsafe free (it reads 0 when idle).
        thread_local SlotReturner returner;
        (void)returner;

        EpochSlot* s = nullptr;
        for (EpochSlot* c = slots_.load(std::memory_order_acquire); c; c = c->next) {
            bool free = false;
            if (!c->in_use.load(std::memory_order_relaxed) &&
                c->in_use.compare_exchange_strong(free, true, std::memory_order_acquire)) {
                s = c;
                break;
            }
        }
        if (!s) {
            s = new EpochSlot;  // in_use from the start; never deleted (reachable from slots_)
            s->index = slot_count_.fetch_add(1, std::memory_order_relaxed);
            EpochSlot* head = slots_.load(std::memory_order_relaxed);
            do {
                s->next = head;
            } while (!slots_.compare_exchange_weak(head, s, std::memory_order_seq_cst,
                                                   std::memory_order_relaxed));
        }
        epoch_thread_state.slot = s;
        return s;
    }

    alignas(64) std::atomic<std::uint64_t> epoch_{1};  // read by every read section
    std::atomic<bool> asymmetric_{false};              // likewise; set once
    alignas(64) std::atomic<EpochSlot*> slots_{nullptr};
    std::atomic<std::size_t> slot_count_{0};
};

// constinit and trivially destructible: usable from any static initializer or destructor,
// and from threads that outlive main().
inline constinit EpochDomain global_epoch_domain{};

inline EpochDomain& EpochDomain::global() noexcept {
    return global_epoch_domain;
}

inline EpochSlot* EpochDomain::global_epoch_domain_slots() noexcept {
    return global_epoch_domain.slots_.load(std::memory_order_acquire);
}

/// A read section. Nodes reachable when it starts stay allocated until it ends. Cost: two
/// stores to the thread's own slot (no shared write); without membarrier, the first is an
/// exchange (a full fence).
class EpochGuard {
public:
    EpochGuard() {
        EpochThreadState& st = epoch_thread_state;
        EpochSlot* s = st.slot ? st.slot : EpochDomain::global().slot_for_this_thread();
        if (st.depth++ == 0) {
            const std::uint64_t e = global_epoch_domain.epoch_for_reader();
            if (global_epoch_domain.readers_pin_lightly()) {
                // Ordered against the structure's loads by the advancing writer's membarrier;
                // the compiler must not move those loads above it either.
                s->epoch.store(e, std::memory_order_release);
                std::atomic_signal_fence(std::memory_order_seq_cst);
            } else {
                // A seq_cst read-modify-write on this thread's own line: a full fence.
                s->epoch.exchange(e, std::memory_order_seq_cst);
            }
        }
        slot_ = s;
    }

    ~EpochGuard() {
        EpochThreadState& st = epoch_thread_state;
        if (--st.depth == 0) slot_->epoch.store(0, std::memory_order_release);
    }

    EpochGuard(const EpochGuard&) = delete;
    EpochGuard& operator=(const EpochGuard&) = delete;

    /// The calling thread's dense slot index: a key for per-thread counters.
    [[nodiscard]] std::size_t thread_index() const noexcept { return slot_->index; }

private:
    EpochSlot* slot_;
};

}  // namespace larder::detail
