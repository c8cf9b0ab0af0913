#!/usr/bin/env bash
# build-from-debian.sh — build the boxdelegate base root filesystem WITHOUT a
# container registry.
#
# Usage:
#   images/base/build-from-debian.sh OUT.tar [--mirror URL] [--security-mirror URL]
#                                    [--suite bookworm] [--no-upgrade]
#
# This is the air-gapped / no-registry alternative to images/base/Containerfile
# (which needs `FROM debian:bookworm-slim`, i.e. a reachable registry). It only
# needs a Debian package mirror (deb.debian.org by default, or --mirror URL).
#
# What it does:
#   1. `debootstrap --variant=minbase` a Debian <suite> (default bookworm) amd64
#      root filesystem with git, ca-certificates, procps and inotify-tools (the
#      agent container's change watcher) into a temp dir
#      (removed on exit, whatever happens).
#   2. Writes /etc/apt/sources.list for <suite>, <suite>-updates and
#      <suite>-security and (unless --no-upgrade) applies pending updates, so the
#      image contains current security fixes.
#   3. Creates the non-root user `box` (uid/gid 1000, home /home/box, bash) and
#      the directories /work and /deps owned by 1000:1000, mode 0755.
#   4. Slims the tree the way debian:*-slim does (no docs except copyright
#      files, no man pages, no locales) and drops apt lists/caches, logs and
#      host-specific files so the result is small and as reproducible as
#      practical: if SOURCE_DATE_EPOCH is set, mtimes are clamped to it and two
#      builds against the same mirror state are byte-identical.
#   5. Writes a tar of the root filesystem to OUT.tar (numeric owners, sorted).
#
# It deliberately does NOT call docker. Turn the tarball into the base image with
#
#   boxdelegate image import base OUT.tar
#
# which runs `docker import` and sets USER box, WORKDIR /work, ENV HOME=/home/box
# and tags the result boxdelegate/base:bookworm. (Plain docker equivalent:
#   docker import --change 'USER box' --change 'WORKDIR /work' \
#     --change 'ENV HOME=/home/box' OUT.tar boxdelegate/base:bookworm )
#
# Requirements: run as root on a Linux host with debootstrap installed
# (`apt-get install debootstrap`) and network access to the mirror. The temp dir
# ($TMPDIR, default /var/tmp) must not be mounted noexec/nodev.
set -euo pipefail

prog=$(basename "$0")
args="$*"

die() {
    echo "$prog: error: $*" >&2
    exit 1
}

usage() {
    cat >&2 <<EOF
usage: $prog OUT.tar [--mirror URL] [--security-mirror URL] [--suite SUITE] [--no-upgrade]

  --mirror URL           Debian mirror (default http://deb.debian.org/debian)
  --security-mirror URL  security mirror (default http://deb.debian.org/debian-security)
  --suite SUITE          Debian suite (default bookworm)
  --no-upgrade           do not apply <suite>-updates/<suite>-security updates
EOF
    exit 2
}

out=""
mirror="http://deb.debian.org/debian"
security_mirror="http://deb.debian.org/debian-security"
suite="bookworm"
arch="amd64"
upgrade=1
include="git,ca-certificates,procps,inotify-tools"

while [ $# -gt 0 ]; do
    case "$1" in
        --mirror)
            [ $# -ge 2 ] || usage
            mirror=$2
            shift 2
            ;;
        --mirror=*)
            mirror=${1#*=}
            shift
            ;;
        --security-mirror)
            [ $# -ge 2 ] || usage
            security_mirror=$2
            shift 2
            ;;
        --security-mirror=*)
            security_mirror=${1#*=}
            shift
            ;;
        --suite)
            [ $# -ge 2 ] || usage
            suite=$2
            shift 2
            ;;
        --suite=*)
            suite=${1#*=}
            shift
            ;;
        --no-upgrade)
            upgrade=0
            shift
            ;;
        -h | --help)
            usage
            ;;
        -*)
            echo "$prog: unknown option: $1" >&2
            usage
            ;;
        *)
            [ -z "$out" ] || usage
            out=$1
            shift
            ;;
    esac
done

[ -n "$out" ] || usage
mirror=${mirror%/}
security_mirror=${security_mirror%/}

# --- preflight -------------------------------------------------------------
[ "$(id -u)" -eq 0 ] || die "must be run as root (debootstrap and chroot need it); try: sudo $0 $args"
export PATH="$PATH:/usr/sbin:/sbin"
command -v debootstrap >/dev/null 2>&1 ||
    die "debootstrap not found; install it with: apt-get install debootstrap"
command -v tar >/dev/null 2>&1 || die "tar not found"
[ -e "/usr/share/debootstrap/scripts/$suite" ] ||
    die "this debootstrap does not know suite '$suite' (upgrade debootstrap)"

out_dir=$(dirname -- "$out")
[ -d "$out_dir" ] || die "output directory does not exist: $out_dir"
out=$(cd -- "$out_dir" && pwd)/$(basename -- "$out")

# --- temp dir + cleanup ------------------------------------------------------
work=$(mktemp -d "${TMPDIR:-/var/tmp}/boxdelegate-base.XXXXXX")
root="$work/rootfs"
mkdir "$root"

cleanup() {
    local rc=$?
    # Never rm -rf through a live mount.
    for m in "$root/proc" "$root/sys" "$root/dev/pts"; do
        if mountpoint -q "$m" 2>/dev/null; then
            umount -l "$m" || true
        fi
    done
    rm -rf --one-file-system "$work"
    rm -f "$out.partial"
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

in_root() {
    LC_ALL=C.UTF-8 DEBIAN_FRONTEND=noninteractive DEBCONF_NONINTERACTIVE_SEEN=true \
        PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
        chroot "$root" "$@"
}

# --- 1. debootstrap ----------------------------------------------------------
echo "$prog: debootstrap $suite ($arch) from $mirror into $root" >&2
debootstrap --variant=minbase --arch="$arch" --include="$include" \
    "$suite" "$root" "$mirror"

# --- 2. apt sources + updates ------------------------------------------------
cat >"$root/etc/apt/sources.list" <<EOF
deb $mirror $suite main
deb $mirror $suite-updates main
deb $security_mirror $suite-security main
EOF

# Docker-style apt configuration (same as the official debian images).
cat >"$root/etc/apt/apt.conf.d/docker-clean" <<'EOF'
DPkg::Post-Invoke { "rm -f /var/cache/apt/archives/*.deb /var/cache/apt/archives/partial/*.deb /var/cache/apt/*.bin || true"; };
APT::Update::Post-Invoke { "rm -f /var/cache/apt/archives/*.deb /var/cache/apt/archives/partial/*.deb /var/cache/apt/*.bin || true"; };
Dir::Cache::pkgcache "";
Dir::Cache::srcpkgcache "";
EOF
cat >"$root/etc/apt/apt.conf.d/docker-no-languages" <<'EOF'
Acquire::Languages "none";
EOF
cat >"$root/etc/apt/apt.conf.d/docker-autoremove-suggests" <<'EOF'
Apt::AutoRemove::SuggestsImportant "false";
EOF
# Containers never start services.
cat >"$root/usr/sbin/policy-rc.d" <<'EOF'
#!/bin/sh
exit 101
EOF
chmod 0755 "$root/usr/sbin/policy-rc.d"

# Slim: keep future package installs free of docs/man/locales (like *-slim).
mkdir -p "$root/etc/dpkg/dpkg.cfg.d"
cat >"$root/etc/dpkg/dpkg.cfg.d/docker" <<'EOF'
# boxdelegate base: drop docs, man pages and translations (like debian:*-slim)
path-exclude /usr/share/doc/*
path-include /usr/share/doc/*/copyright
path-exclude /usr/share/man/*
path-exclude /usr/share/groff/*
path-exclude /usr/share/info/*
path-exclude /usr/share/lintian/*
path-exclude /usr/share/linda/*
path-exclude /usr/share/locale/*
path-include /usr/share/locale/locale.alias
EOF

if [ "$upgrade" -eq 1 ]; then
    echo "$prog: applying $suite-updates / $suite-security updates" >&2
    mount -t proc proc "$root/proc"
    in_root apt-get update
    in_root apt-get -y -o Dpkg::Options::=--force-confold dist-upgrade
    in_root apt-get -y autoremove --purge
    umount "$root/proc"
fi

# --- 3. user box + /work /deps -----------------------------------------------
in_root groupadd --gid 1000 box
in_root useradd --uid 1000 --gid 1000 --create-home --home-dir /home/box \
    --shell /bin/bash --comment "boxdelegate" box
install -d -o 1000 -g 1000 -m 0755 "$root/work" "$root/deps"
chown 1000:1000 "$root/home/box"
chmod 0755 "$root/home/box"

# Reproducibility: shadow's "last password change" is today's date; pin it.
if [ -n "${SOURCE_DATE_EPOCH:-}" ]; then
    days=$((SOURCE_DATE_EPOCH / 86400))
    sed -i -E "s/^([^:]*:[^:]*:)[0-9]*:/\1$days:/" "$root/etc/shadow"
fi

# --- 4. slim + scrub -----------------------------------------------------------
# Docs (except copyright), man pages, translations of the already installed packages.
find "$root/usr/share/doc" -mindepth 1 -not -name copyright -not -type d -delete 2>/dev/null || true
find "$root/usr/share/doc" -mindepth 1 -type d -empty -delete 2>/dev/null || true
rm -rf "$root/usr/share/man/"* "$root/usr/share/groff/"* "$root/usr/share/info/"* \
    "$root/usr/share/lintian/"* "$root/usr/share/linda/"*
find "$root/usr/share/locale" -mindepth 1 -maxdepth 1 -not -name locale.alias \
    -exec rm -rf {} + 2>/dev/null || true

# apt lists/caches, dpkg backups, debconf backups, logs.
rm -rf "$root/var/lib/apt/lists/"*
mkdir -p "$root/var/lib/apt/lists/partial"
rm -rf "$root/var/cache/apt/"*.bin "$root/var/cache/apt/archives/"*.deb \
    "$root/var/cache/apt/archives/partial/"*
rm -f "$root/var/cache/debconf/"*-old "$root/var/lib/dpkg/"*-old
rm -f "$root/var/cache/ldconfig/aux-cache"
find "$root/var/log" -type f -delete
rm -rf "$root/tmp/"* "$root/var/tmp/"* "$root/root/.bash_history" "$root/debootstrap"

# Host-specific files: docker supplies hostname/hosts/resolv.conf at runtime.
: >"$root/etc/hostname"
: >"$root/etc/resolv.conf"
printf '127.0.0.1\tlocalhost\n::1\t\tlocalhost ip6-localhost ip6-loopback\n' >"$root/etc/hosts"
# systemd's "first boot" marker: an empty machine-id, not the build host's.
if [ -e "$root/etc/machine-id" ]; then
    : >"$root/etc/machine-id"
fi
rm -f "$root/var/lib/dbus/machine-id"

# --- 5. tarball ----------------------------------------------------------------
# posix format without atime/ctime + sorted names: with SOURCE_DATE_EPOCH set,
# two builds from the same mirror state give byte-identical tarballs.
tar_opts=(--numeric-owner --xattrs --xattrs-include='*' --acls --sort=name
    --format=posix --pax-option='exthdr.name=%d/PaxHeaders/%f,delete=atime,delete=ctime'
    --exclude='./dev/*' --exclude='./proc/*' --exclude='./sys/*')
if [ -n "${SOURCE_DATE_EPOCH:-}" ]; then
    tar_opts+=(--mtime="@$SOURCE_DATE_EPOCH" --clamp-mtime)
fi
echo "$prog: writing $out" >&2
tar "${tar_opts[@]}" -C "$root" -cf "$out.partial" .
mv -f "$out.partial" "$out"
echo "$prog: done: $out ($(du -h "$out" | cut -f1))" >&2
echo "$prog: import it with: boxdelegate image import base $out" >&2
