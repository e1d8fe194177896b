# Shared helpers for scripts/demo, scripts/test, scripts/fuzz and .ci/run. Source it, do not
# run it.
#
#   source "$(dirname "${BASH_SOURCE[0]}")/lib/setup.sh"
#   larder_cd_root
#   larder_ensure_packages "${LARDER_TEST_PACKAGES[@]}"

# Packages needed to configure and build larder with its examples and tools.
LARDER_DEMO_PACKAGES=(g++ cmake make libhiredis-dev libssl-dev nlohmann-json3-dev catch2 libsqlite3-dev libcli11-dev libspdlog-dev pkg-config)
# ... plus what the test suite needs (the [redis] tests start their own redis-server; the
# packaging tests build a consumer with the other compiler too).
LARDER_TEST_PACKAGES=("${LARDER_DEMO_PACKAGES[@]}" redis-server redis-tools clang-14)
# What scripts/fuzz needs: clang with libFuzzer and the sanitizer runtimes (libclang-rt is
# only recommended by clang, and recommends are not installed), and the libraries the
# targets parse for (hiredis, nlohmann_json, libcrypto). No Catch2: the fuzz preset builds
# no tests.
LARDER_FUZZ_PACKAGES=(g++ clang-14 libclang-rt-14-dev libfuzzer-14-dev cmake make libhiredis-dev
    nlohmann-json3-dev libssl-dev pkg-config)
# What the sanitizer presets (asan, tsan) need: the test suite's packages, built with clang 14
# and its sanitizer runtimes.
LARDER_SANITIZER_PACKAGES=("${LARDER_TEST_PACKAGES[@]}" clang-14 libclang-rt-14-dev)

export DEBIAN_FRONTEND=noninteractive

# Repository root (this file lives in <root>/scripts/lib).
LARDER_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"

larder_log() {
    printf '==> %s\n' "$*" >&2
}

larder_die() {
    printf 'error: %s\n' "$*" >&2
    exit 1
}

larder_cd_root() {
    cd "${LARDER_ROOT}"
}

# Default parallelism for `cmake --build` (also used by `cmake --workflow`).
larder_set_build_parallelism() {
    local jobs
    jobs="$(nproc 2>/dev/null || echo 2)"
    export CMAKE_BUILD_PARALLEL_LEVEL="${CMAKE_BUILD_PARALLEL_LEVEL:-${jobs}}"
}

# Sets SUDO to "" when running as root, else to "sudo" (which must exist).
larder_init_sudo() {
    if [[ "${EUID:-$(id -u)}" -eq 0 ]]; then
        SUDO=""
    elif command -v sudo >/dev/null 2>&1; then
        SUDO="sudo"
    else
        larder_die "not running as root and sudo is not installed; install: $*"
    fi
}

# Runs a command as root (directly when root, else through sudo).
larder_as_root() {
    if [[ -n "${SUDO}" ]]; then
        "${SUDO}" "$@"
    else
        "$@"
    fi
}

larder_package_installed() {
    local status
    status="$(dpkg-query -W -f='${Status}' "$1" 2>/dev/null)" || return 1
    [[ "${status}" == "install ok installed" ]]
}

# Installs the given Debian/Ubuntu packages that are not installed yet.
# `apt-get update` runs at most once per script run, and only if something is missing.
LARDER_APT_UPDATED="${LARDER_APT_UPDATED:-0}"
larder_ensure_packages() {
    local missing=() pkg
    if ! command -v dpkg-query >/dev/null 2>&1; then
        larder_log "dpkg-query not found: not a Debian/Ubuntu system, assuming dependencies are installed"
        return 0
    fi
    for pkg in "$@"; do
        if ! larder_package_installed "${pkg}"; then
            missing+=("${pkg}")
        fi
    done
    if [[ ${#missing[@]} -eq 0 ]]; then
        return 0
    fi
    larder_init_sudo "${missing[@]}"
    larder_log "installing missing packages: ${missing[*]}"
    if [[ "${LARDER_APT_UPDATED}" != 1 ]]; then
        larder_as_root env DEBIAN_FRONTEND=noninteractive apt-get update
        LARDER_APT_UPDATED=1
        export LARDER_APT_UPDATED
    fi
    larder_as_root env DEBIAN_FRONTEND=noninteractive \
        apt-get install -y --no-install-recommends "${missing[@]}"
}
