#!/usr/bin/env bash
# Rebuilds vendor/smoltcp from the published smoltcp crate and the patch series in
# vendor/smoltcp-patches/ (see its README.md), or checks that the vendored copy is exactly that.
#
# Usage:  scripts/vendor-smoltcp.sh [--check] [VERSION]
#   VERSION   the smoltcp release to start from (default: the one vendored now); for an
#             upgrade, give the new one, then read what each patch says and whether the
#             release has the fix already (drop the patch then).
#   --check   build the copy in a temporary directory and compare it with vendor/smoltcp;
#             exits 1 if they differ. Changes nothing.
# Needs cargo with access to the crates registry (it fetches the .crate file).
set -euo pipefail
cd "$(dirname "$0")/.."

check=0
if [[ ${1:-} == --check ]]; then
    check=1
    shift
fi
version=${1:-$(sed -n 's/^version = "\(.*\)"$/\1/p' vendor/smoltcp/Cargo.toml | head -1)}
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

# Fetch the crate through cargo (its registry cache, or the network), as a dependency of a
# throwaway package.
mkdir -p "$work/fetch/src"
printf '[package]\nname = "fetch"\nversion = "0.0.0"\nedition = "2021"\n\n[dependencies]\nsmoltcp = "=%s"\n' \
    "$version" >"$work/fetch/Cargo.toml"
touch "$work/fetch/src/lib.rs"
cargo fetch --quiet --manifest-path "$work/fetch/Cargo.toml"
crate=$(find "${CARGO_HOME:-$HOME/.cargo}/registry/cache" -name "smoltcp-$version.crate" | head -1)
[[ -n $crate ]] || { echo "smoltcp-$version.crate not found after cargo fetch" >&2; exit 1; }

tar xzf "$crate" -C "$work"
copy="$work/smoltcp-$version"
# Files of the published archive that a path dependency does not use.
rm -f "$copy/.cargo_vcs_info.json" "$copy/Cargo.lock"
for patch in vendor/smoltcp-patches/*.patch; do
    echo "applying $(basename "$patch")"
    patch --quiet --forward -p1 -d "$copy" <"$patch"
done

if ((check)); then
    if diff -r "$copy" vendor/smoltcp >/dev/null; then
        echo "vendor/smoltcp is smoltcp $version with vendor/smoltcp-patches applied"
    else
        diff -r "$copy" vendor/smoltcp | head -40 >&2
        echo "vendor/smoltcp differs from smoltcp $version + vendor/smoltcp-patches" >&2
        exit 1
    fi
else
    rm -rf vendor/smoltcp
    cp -r "$copy" vendor/smoltcp
    echo "vendor/smoltcp is now smoltcp $version with vendor/smoltcp-patches applied"
fi
