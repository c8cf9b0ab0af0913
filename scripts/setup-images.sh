#!/usr/bin/env bash
# Makes sure the engine has boxdelegate's base image (built from Debian packages when absent,
# no registry needed) and, optionally, toolchain images and the codex image:
#   scripts/setup-images.sh [python rust codex …]   (codex is fetched with the python image: name python first)
#
# Needs root (debootstrap) the first time only. BOXDELEGATE points at the binary to use
# (default: target/release/boxdelegate, then target/debug/boxdelegate, then PATH).
set -euo pipefail
cd "$(dirname "$0")/.."

bd=${BOXDELEGATE:-}
if [ -z "$bd" ]; then
    for c in target/release/boxdelegate target/debug/boxdelegate; do
        if [ -x "$c" ]; then bd=$c; break; fi
    done
fi
bd=${bd:-boxdelegate}

base=${BOXDELEGATE_BASE_IMAGE:-boxdelegate/base:bookworm}
if docker image inspect "$base" >/dev/null 2>&1; then
    echo "base image $base: present"
else
    echo "base image $base: absent, building it from Debian packages"
    if ! command -v debootstrap >/dev/null 2>&1; then
        if [ "$(id -u)" -eq 0 ] && command -v apt-get >/dev/null 2>&1; then
            apt-get update -qq && apt-get install -y -qq debootstrap >/dev/null
        else
            echo "error: debootstrap is missing; install it (apt-get install debootstrap) and run again as root" >&2
            exit 1
        fi
    fi
    tmp=$(mktemp -d)
    trap 'rm -rf "$tmp"' EXIT
    images/base/build-from-debian.sh "$tmp/base.tar"
    "$bd" image import base "$tmp/base.tar"
fi

for name in "$@"; do
    tag="boxdelegate/$name:bookworm"
    # The codex image is tagged by the Codex CLI version, not by the Debian release.
    [ "$name" = codex ] && tag="boxdelegate/codex:${CODEX_VERSION:-0.163.0}"
    if docker image inspect "$tag" >/dev/null 2>&1; then
        echo "toolchain image $tag: present"
    else
        echo "toolchain image $tag: absent, building it"
        if [ "$name" = codex ]; then
            "$bd" -q image build codex --codex-version "${CODEX_VERSION:-0.163.0}"
        else
            "$bd" -q image build "$name"
        fi
    fi
done
