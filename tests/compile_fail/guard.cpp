// A guard whose lease_wait returns the wait as a duration, not a larder::LeaseWait.
// expect: larder: a StampedeGuard needs larder::LeaseWait lease_wait()
#include <larder/backend/memory.hpp>
#include <larder/policy/cache_aside.hpp>

#include <optional>
#include <string>

struct PatientGuard {
    bool refresh_early(const larder::FreshHit&) { return false; }
    larder::Millis lease_wait() { return larder::Millis{100}; }
    bool refresh_in_background() { return false; }
};

int main() {
    larder::MemoryBackend backend;
    larder::CacheAside<std::string, larder::MemoryBackend, PatientGuard> cache(backend);
    (void)cache.get("1", [] { return std::optional<std::string>("v"); });
}
