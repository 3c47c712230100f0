#!/usr/bin/env bash
# Build rslirp, start a container-like namespace (user + network namespace, as rootless
# podman/rootlesskit make), connect it with rslirp, show that it works, then open a shell
# inside it (when run from a terminal). Everything started here is stopped on exit.
# Needs: a Rust toolchain, iproute2, util-linux (unshare, nsenter), iputils-ping.
set -euo pipefail
cd "$(dirname "$0")/.."

cargo build --release --quiet
bin=target/release/rslirp

unshare --user --map-root-user --net sleep infinity &
ns_pid=$!
rslirp_pid=
cleanup() {
    [ -n "$rslirp_pid" ] && kill "$rslirp_pid" 2>/dev/null && wait "$rslirp_pid" 2>/dev/null
    kill "$ns_pid" 2>/dev/null
    wait "$ns_pid" 2>/dev/null || true
}
trap cleanup EXIT
# Wait until unshare has entered the new namespaces.
for _ in $(seq 50); do
    [ "$(readlink /proc/$ns_pid/ns/net)" != "$(readlink /proc/self/ns/net)" ] && break
    sleep 0.1
done

ready=$(mktemp -u)
mkfifo "$ready"
"$bin" --configure --mtu=65520 --ready-fd=3 "$ns_pid" tap0 3>"$ready" &
rslirp_pid=$!
if ! timeout 10 head -c1 "$ready" | grep -q 1; then
    rm -f "$ready"
    echo "rslirp did not become ready" >&2
    exit 1
fi
rm -f "$ready"

inside() { nsenter --target "$ns_pid" --user --net --preserve-credentials -- "$@"; }
echo "== rslirp (pid $rslirp_pid) serves the namespace of pid $ns_pid"
inside ip -brief address show tap0
inside ip route
inside ping -c 2 -W 2 10.0.2.2
if [ -t 0 ]; then
    echo "== a shell inside the namespace; 10.0.2.2 is the host's 127.0.0.1. Exit to stop."
    inside "${SHELL:-/bin/sh}" || true
fi
