# shellcheck shell=bash
# Sourced by scripts/test.sh and benches/compare.sh: installs the Debian packages a script
# needs that the machine does not have yet, and nothing else. It never removes or replaces
# a package the machine has:
#   - a package counts as present when it, or one of its alternatives, is installed
#     ("busybox|busybox-static": a machine with the static busybox keeps it; installing
#     `busybox` there would make apt remove `busybox-static`, which container root
#     filesystems may rely on);
#   - apt-get runs with --no-remove, so a conflict with what is installed aborts the
#     install instead of removing anything;
#   - the installed packages are listed before and after, and any that went missing is an
#     error that names it.
# It says what it is about to install before it does.

# Whether Debian package $1 is installed (not merely known, half-installed or removed).
package_installed() {
    [[ $(dpkg-query -W -f='${db:Status-Status}' "$1" 2>/dev/null) == installed ]]
}

# Every installed package, one per line, sorted.
installed_packages() {
    dpkg-query -W -f='${db:Status-Status} ${Package}\n' | awk '$1 == "installed" { print $2 }' | sort
}

# ensure_packages SPEC...: SPEC is a package name or alternatives "a|b|c" (any one installed
# will do; otherwise the first is installed). RSLIRP_SKIP_APT=1 only reports what is missing.
ensure_packages() {
    local missing=() spec alt found
    local -a alternatives
    for spec in "$@"; do
        found=
        IFS='|' read -ra alternatives <<<"$spec"
        for alt in "${alternatives[@]}"; do
            if package_installed "$alt"; then
                found=1
                break
            fi
        done
        [[ -n $found ]] || missing+=("${alternatives[0]}")
    done
    if ((${#missing[@]} == 0)); then
        echo "setup: every package needed is installed"
        return 0
    fi
    if [[ ${RSLIRP_SKIP_APT:-0} == 1 ]]; then
        echo "setup: RSLIRP_SKIP_APT=1, not installing the missing ${missing[*]}" >&2
        return 0
    fi
    echo "setup: installing ${missing[*]} (apt-get; nothing installed will be removed)"
    local before after gone
    before=$(installed_packages)
    export DEBIAN_FRONTEND=noninteractive
    apt-get update
    apt-get install -y --no-install-recommends --no-remove "${missing[@]}"
    after=$(installed_packages)
    gone=$(comm -23 <(printf '%s\n' "$before") <(printf '%s\n' "$after"))
    if [[ -n $gone ]]; then
        echo "setup: these packages were removed, which must never happen: $gone" >&2
        return 1
    fi
}
