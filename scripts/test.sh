#!/usr/bin/env bash
# Runs every test of the workspace: unit tests, the stack's scenario tests and the
# end-to-end tests in real network namespaces (rootful and rootless).
#
# Usage (as root, on Debian with a Rust toolchain):  scripts/test.sh [cargo test args...]
#   e.g. scripts/test.sh rootless            only tests whose name contains "rootless"
#        scripts/test.sh -- --nocapture      show the bulk-transfer rates
#   RSLIRP_BIN=/usr/bin/slirp4netns scripts/test.sh --test e2e_tcp
#                                            run the end-to-end tests against another binary
#   RSLIRP_SKIP_APT=1                        skip apt-get (offline re-runs)
#
# Root is needed because the end-to-end tests create network namespaces, a bind mount and
# the unprivileged user the rootless tests run as. Their traffic stays on loopback and in
# namespaces they create: nothing reaches the machine's network or resolver.
set -euo pipefail

if [[ $(id -u) -ne 0 ]]; then
    echo "scripts/test.sh must run as root (try: sudo $0 $*)" >&2
    exit 1
fi

cd "$(dirname "$0")/.."

# Everything the tests and tools around them use, installed only where missing and never in
# place of what the machine has (scripts/lib/packages.sh). slirp4netns and passt are there to
# compare against (RSLIRP_BIN=/usr/bin/slirp4netns, the benches); rootlesskit (with uidmap
# and a busybox for its test: the static one does as well) is a real client of the control
# socket; tcpdump reads the --pcap captures back; gcc/libc6-dev link Rust.
PACKAGES=(
    iproute2 iputils-ping procps util-linux passwd
    ncat socat iperf3 jq udhcpc "dnsmasq-base|dnsmasq-base-lua" curl python3 tcpdump iptables
    traceroute
    slirp4netns passt
    rootlesskit uidmap "busybox|busybox-static"
    gcc libc6-dev pkg-config ca-certificates
)
# shellcheck source=scripts/lib/packages.sh
source scripts/lib/packages.sh
ensure_packages "${PACKAGES[@]}"

# The account the rootless end-to-end tests run rslirp and the container namespace as.
if ! id -u rslirp-e2e >/dev/null 2>&1; then
    useradd --system --no-create-home --shell /usr/sbin/nologin rslirp-e2e
fi
# Rootless rslirp opens the tun device as that user (Debian ships it 0666; some images don't).
chmod 666 /dev/net/tun

# Under sudo, PATH is reset and may miss the toolchain: look where rustup puts it, for root
# and then for the user who called sudo (using that user's toolchain settings).
if ! command -v cargo >/dev/null 2>&1; then
    if [[ -x /root/.cargo/bin/cargo ]]; then
        export PATH="/root/.cargo/bin:$PATH"
    elif [[ -n ${SUDO_USER:-} ]]; then
        user_home=$(getent passwd "$SUDO_USER" | cut -d: -f6)
        if [[ -x $user_home/.cargo/bin/cargo ]]; then
            export PATH="$user_home/.cargo/bin:$PATH"
            export CARGO_HOME="${CARGO_HOME:-$user_home/.cargo}"
            export RUSTUP_HOME="${RUSTUP_HOME:-$user_home/.rustup}"
        fi
    fi
fi
if ! command -v cargo >/dev/null 2>&1; then
    echo "cargo not found: install a Rust toolchain (https://rustup.rs) first" >&2
    exit 1
fi

cargo build --release
# --no-fail-fast: report every failing test binary, not just the first (still exits non-zero).
log=$(mktemp)
trap 'rm -f "$log"' EXIT
status=0
cargo test --workspace --release --no-fail-fast "$@" 2>&1 | tee "$log" || status=$?
# One closing line over all test binaries (cargo prints one per binary).
awk '/^test result:/ { p += $4; f += $6; i += $8 }
     END { printf "tests: %d passed, %d failed, %d skipped\n", p, f, i }' "$log"
exit "$status"
