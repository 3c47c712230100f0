#!/usr/bin/env bash
# The side-by-side benchmark in one command: slirp4netns, pasta and rslirp, rootless, each
# case repeated and interleaved; prints medians and ratios to slirp4netns (about 7 minutes).
#
# Usage (as root, on Debian with a Rust toolchain):  benches/compare.sh
#   RSLIRP_BENCH_REPS=1 RSLIRP_BENCH_CASES=latency,memory benches/compare.sh   a quick look
#   (all knobs: the top of benches/compare/main.rs; the method: docs/performance.md)
#
# Root is needed for the network namespaces and the unprivileged user the helpers run as.
# All traffic stays inside namespaces the benchmark creates and removes again.
set -euo pipefail

if [[ $(id -u) -ne 0 ]]; then
    echo "benches/compare.sh must run as root (try: sudo $0)" >&2
    exit 1
fi
cd "$(dirname "$0")/.."

# What the benchmark runs; installed only when missing, never in place of what the machine
# has (scripts/lib/packages.sh), so offline re-runs work.
# shellcheck source=scripts/lib/packages.sh
source scripts/lib/packages.sh
ensure_packages iperf3 slirp4netns passt iproute2 util-linux strace

# The rootless side: the same account the end-to-end tests use.
if ! id -u rslirp-e2e >/dev/null 2>&1; then
    useradd --system --no-create-home --shell /usr/sbin/nologin rslirp-e2e
fi
chmod 666 /dev/net/tun

# Under sudo, PATH may miss the toolchain of root or of the calling user.
if ! command -v cargo >/dev/null 2>&1; then
    for home in /root "$(getent passwd "${SUDO_USER:-root}" | cut -d: -f6)"; do
        if [[ -x $home/.cargo/bin/cargo ]]; then
            export PATH="$home/.cargo/bin:$PATH"
            break
        fi
    done
fi
command -v cargo >/dev/null 2>&1 || { echo "cargo not found: install Rust first" >&2; exit 1; }

# Builds rslirp (release settings) and the harness, then runs it; it skips itself
# unless RSLIRP_BENCH_COMPARE is set.
RSLIRP_BENCH_COMPARE=1 exec cargo bench --quiet --bench compare
