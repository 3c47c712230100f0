#!/usr/bin/env bash
# Shows that the Debian package does what it promises (issue #20), on a real rootless podman:
#   1. install the package (target/debian/rslirp_*.deb, or the path given);
#   2. run a container with `--network slirp4netns:port_handler=slirp4netns,...` and a port
#      published on 127.0.0.1: the network helper podman started must be rslirp (/proc/PID/exe),
#      the container must reach a server on the host's loopback (10.0.2.2) and the published
#      port must reach the container's server;
#   3. purge the package: the same container must run on Debian's slirp4netns again, whose
#      /usr/bin/slirp4netns must be the very file it was before.
#
# Usage (as root, on Debian 12 or later):  scripts/podman-check.sh [PATH/TO/rslirp_*.deb]
# The image is imported from the machine's static busybox (no registry), and every connection
# stays on loopback or inside the container; only apt may reach out, to install podman, runc
# and the like when missing (scripts/lib/packages.sh: never removes a package). Rootless podman runs as the user
# rslirp-podman (created with a home and subordinate ids if missing). Everything the check
# starts is stopped on exit, and the container storage of that user is reset.
set -euo pipefail

if [[ $(id -u) -ne 0 ]]; then
    echo "scripts/podman-check.sh must run as root" >&2
    exit 1
fi
cd "$(dirname "$0")/.."

fail() {
    echo "podman-check: FAILED: $*" >&2
    exit 1
}

deb=${1:-}
if [[ -z $deb ]]; then
    debs=(target/debian/rslirp_*.deb)
    [[ -e ${debs[0]} ]] || fail "no target/debian/rslirp_*.deb: run cargo deb first"
    deb=${debs[-1]}
fi
[[ -f $deb ]] || fail "no package at $deb"
deb=$(realpath "$deb")

# shellcheck source=scripts/lib/packages.sh
source scripts/lib/packages.sh
ensure_packages podman runc slirp4netns uidmap python3 curl "busybox-static|busybox"

busybox=$(command -v busybox) || fail "no busybox"
if ldd "$busybox" >/dev/null 2>&1; then
    fail "$busybox is linked dynamically: the image needs a static one (busybox-static)"
fi

user=rslirp-podman
if ! id -u "$user" >/dev/null 2>&1; then
    useradd --create-home --shell /usr/sbin/nologin "$user"
fi
uid=$(id -u "$user")
home=$(getent passwd "$user" | cut -d: -f6)
# Subordinate ids for the container's user namespace (useradd adds them on most systems).
for file in /etc/subuid /etc/subgid; do
    grep -q "^$user:" "$file" || echo "$user:1065536:65536" >>"$file"
done
runtime_dir=/run/user/$uid
install -d -m 700 -o "$user" -g "$user" "$runtime_dir"
# No systemd here (nor in CI): cgroups through the file system (rootless runc goes without
# when it may not write there), events to a file, and the vfs storage driver, which needs
# neither fuse-overlayfs nor kernel support. runc, because crun refuses to start on a cgroup
# "hybrid" host whose cgroup2 has a controller (this machine: "cgroups in hybrid mode not
# supported"), and runc does not take podman's cgroups = "disabled".
install -d -o "$user" -g "$user" "$home/.config" "$home/.config/containers"
cat >"$home/.config/containers/containers.conf" <<'EOF'
[engine]
cgroup_manager = "cgroupfs"
events_logger = "file"
runtime = "runc"
EOF
cat >"$home/.config/containers/storage.conf" <<'EOF'
[storage]
driver = "vfs"
EOF
chown "$user:" "$home/.config/containers/containers.conf" "$home/.config/containers/storage.conf"

as_user() {
    # From / : the user may not read the checkout's directory.
    (cd / && runuser -u "$user" -- env -i PATH=/usr/local/bin:/usr/bin:/bin HOME="$home" \
        XDG_RUNTIME_DIR="$runtime_dir" "$@")
}
podman_user() {
    # Each podman command is bounded: a hang fails the check instead of blocking CI.
    as_user timeout 120 podman "$@"
}

work=$(mktemp -d)
chmod 755 "$work"
server_pid=
installed=
image=localhost/rslirp-podman-check:latest
name=rslirp-podman-check
cleanup() {
    set +e
    podman_user rm --force --time 0 "$name" >/dev/null 2>&1
    podman_user rmi --force "$image" >/dev/null 2>&1
    [[ -n $server_pid ]] && kill "$server_pid" 2>/dev/null && wait "$server_pid" 2>/dev/null
    # The rootless pause process podman leaves behind to keep its user namespace.
    local pause
    pause=$(cat "$runtime_dir/libpod/tmp/pause.pid" 2>/dev/null)
    [[ -n $pause ]] && kill "$pause" 2>/dev/null
    rm -rf "$work"
    # The package, if the check installed it and stopped before purging it.
    if [[ -n $installed ]] && package_installed rslirp; then
        apt-get purge -y rslirp >/dev/null
    fi
}
trap cleanup EXIT

free_port() {
    python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

# The "outside world" the container reaches: a web server on the host's loopback, seen from
# the container as 10.0.2.2 (allow_host_loopback=true). Its answer is a fresh token.
mkdir "$work/www"
token="rslirp-podman-check-$RANDOM$RANDOM"
echo "$token" >"$work/www/token"
outbound_port=$(free_port)
python3 -m http.server --bind 127.0.0.1 --directory "$work/www" "$outbound_port" \
    >"$work/server.log" 2>&1 &
server_pid=$!

# The image: the static busybox and its applets, imported from a tarball (no registry).
# (busybox-static 1.35's `wget -T` crashes, SIGSEGV: the timeout comes from `timeout`.)
mkdir -p "$work/rootfs/bin" "$work/rootfs/www" "$work/rootfs/tmp"
cp "$busybox" "$work/rootfs/bin/busybox"
for applet in sh wget httpd cat echo sleep timeout; do
    ln -s busybox "$work/rootfs/bin/$applet"
done
tar -C "$work/rootfs" -cf "$work/rootfs.tar" .
chmod 644 "$work/rootfs.tar"
podman_user system migrate
podman_user import --change 'CMD ["/bin/sh"]' "$work/rootfs.tar" "$image" >/dev/null

# check_helper WANT_EXE: runs the container, finds the network helper podman started for it,
# checks that its executable is WANT_EXE, that the container fetched the host's token through
# it and that the published port serves that token back.
check_helper() {
    local want_exe=$1 forward_port exe got helper_pid=
    forward_port=$(free_port)
    podman_user rm --force --time 0 "$name" >/dev/null 2>&1 || true
    podman_user run -d --name "$name" \
        --network "slirp4netns:port_handler=slirp4netns,allow_host_loopback=true" \
        -p "127.0.0.1:$forward_port:80" "$image" \
        sh -c "timeout 10 wget -q -O /www/fetched http://10.0.2.2:$outbound_port/token 2>/www/err \
                   || echo \"outbound fetch failed: \$(cat /www/err)\" >/www/fetched
               exec httpd -f -p 80 -h /www" >/dev/null

    # The helper: the user's process podman started with slirp4netns's command line (its
    # control socket in podman's run directory, the tap), whatever the binary is named.
    # The oldest such process: rslirp has a child of its own with the same command line.
    helper_pid=$(pgrep -o -u "$user" -f -- "--api-socket $runtime_dir/libpod/.* tap0\$" || true)
    [[ -n $helper_pid ]] || fail "no network helper (slirp4netns command line) for the container"
    exe=$(readlink "/proc/$helper_pid/exe")
    echo "podman-check: the container's network helper: $(tr '\0' ' ' <"/proc/$helper_pid/cmdline")"
    echo "podman-check: its executable: $exe"
    [[ $exe == "$want_exe" ]] || fail "the helper runs $exe, expected $want_exe"

    got=
    for _ in $(seq 1 50); do
        got=$(curl -sf --max-time 2 "http://127.0.0.1:$forward_port/fetched" || true)
        [[ -n $got ]] && break
        sleep 0.2
    done
    [[ $got == "$token" ]] ||
        fail "through 127.0.0.1:$forward_port the container answered '$got', expected '$token'"
    echo "podman-check: 127.0.0.1:$forward_port -> container port 80 works, and the container" \
        "fetched http://10.0.2.2:$outbound_port/token from the host ($exe)"
    podman_user rm --force --time 0 "$name" >/dev/null
}

slirp4netns_sum=$(sha256sum /usr/bin/slirp4netns)
package_installed rslirp && apt-get purge -y rslirp

echo "podman-check: installing $deb"
installed=1
apt-get install -y --no-install-recommends --no-remove "$deb"
dropin=/etc/containers/containers.conf.d/50-rslirp.conf
grep -q '^network_cmd_path = "/usr/bin/rslirp"' "$dropin" ||
    fail "$dropin does not set network_cmd_path to /usr/bin/rslirp"
MANPAGER=cat man rslirp 2>/dev/null | grep -q "drop-in slirp4netns" || fail "man rslirp shows no page"
MANPAGER=cat man rslirpctl 2>/dev/null | grep -q "RSLIRP_API_SOCKET" ||
    fail "man rslirpctl shows no page"
echo "podman-check: man rslirp and man rslirpctl show their pages"
check_helper /usr/bin/rslirp

echo "podman-check: purging the package"
apt-get purge -y rslirp
[[ ! -e $dropin ]] || fail "$dropin outlived the package"
[[ $(sha256sum /usr/bin/slirp4netns) == "$slirp4netns_sum" ]] ||
    fail "/usr/bin/slirp4netns changed"
package_installed slirp4netns || fail "the slirp4netns package went missing"
check_helper /usr/bin/slirp4netns

echo "podman-check: OK (rslirp through the package, slirp4netns again after the purge)"
