#!/usr/bin/env bash
# Podman's Docker-compatible API, rootful, on a socket of our own: the second engine kind the
# tests run against. Installs podman from Debian's packages when absent (needs root).
#
#   scripts/engines/podman.sh start DIR   the service, DIR/env to source (DOCKER_HOST)
#   scripts/engines/podman.sh stop DIR    stops it; fails if a container of it is left
#
# The containers' default limits are the service's own hard limits: Podman asks for more open
# files and processes than a restricted host (a container, a CI sandbox) may grant, and runc
# then refuses to start anything ("error setting rlimits … operation not permitted").
set -euo pipefail

cmd=${1:-}
dir=${2:-}
[ -n "$cmd" ] && [ -n "$dir" ] || {
    echo "usage: $0 start DIR | stop DIR" >&2
    exit 2
}

# Where Docker also runs it sets the FORWARD policy to DROP, and with br_netfilter bridged
# traffic passes through it: an internal Podman network (the proxy policy) then carries
# nothing between its own containers. Allow traffic bridged within a Podman bridge.
bridged=(DOCKER-USER -i podman+ -o podman+ -m physdev --physdev-is-bridged -j ACCEPT)
allow_bridged() {
    iptables -L DOCKER-USER -n >/dev/null 2>&1 || return 0
    if [ "$1" = -I ]; then
        iptables -C "${bridged[@]}" 2>/dev/null || iptables -I "${bridged[@]}"
    else
        while iptables -D "${bridged[@]}" 2>/dev/null; do :; done
    fi
}

start() {
    if ! command -v podman >/dev/null 2>&1; then
        apt-get update -qq
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq podman catatonit >/dev/null
    fi
    mkdir -p "$dir"
    dir=$(cd "$dir" && pwd)
    local nofile nproc
    nofile=$(ulimit -Hn)
    nproc=$(ulimit -Hu)
    # runc sets the process limit from the service's own, which may sit below the shell's.
    [ "$nproc" = unlimited ] && nproc=$(cat /proc/sys/kernel/pid_max)
    [ "$nproc" -gt "$(cat /proc/sys/kernel/pid_max)" ] && nproc=$(cat /proc/sys/kernel/pid_max)
    [ "$nofile" = unlimited ] && nofile=1048576
    cat >"$dir/containers.conf" <<EOF
[containers]
default_ulimits = ["nofile=$nofile:$nofile", "nproc=$nproc:$nproc"]
EOF
    allow_bridged -I
    local sock="$dir/podman.sock"
    CONTAINERS_CONF="$dir/containers.conf" \
        podman system service --time=0 "unix://$sock" >"$dir/service.log" 2>&1 &
    echo $! >"$dir/service.pid"
    cat >"$dir/env" <<EOF
export DOCKER_HOST=unix://$sock
export CONTAINERS_CONF=$dir/containers.conf
unset DOCKER_TLS_VERIFY DOCKER_CERT_PATH
EOF
    for _ in $(seq 1 300); do
        if [ -S "$sock" ] && curl -sf --unix-socket "$sock" http://podman/_ping >/dev/null; then
            echo "podman of $dir: serving the Docker API on unix://$sock ($(podman --version))"
            return
        fi
        sleep 0.2
    done
    echo "error: podman's service did not answer on unix://$sock within 60 s; its log:" >&2
    tail -20 "$dir/service.log" >&2
    exit 1
}

stop() {
    dir=$(cd "$dir" && pwd)
    local left=0
    if [ -n "$(podman ps -aq)" ]; then
        echo "error: podman containers are left:" >&2
        podman ps -a >&2
        left=1
    fi
    if [ -s "$dir/service.pid" ]; then
        local pid
        pid=$(cat "$dir/service.pid")
        kill "$pid" 2>/dev/null || true
        for _ in $(seq 1 150); do
            kill -0 "$pid" 2>/dev/null || break
            sleep 0.2
        done
    fi
    allow_bridged -D
    [ "$left" -eq 0 ] || exit 1
    rm -rf "$dir"
    echo "podman of $dir: stopped"
}

case "$cmd" in
start) start ;;
stop) stop ;;
*)
    echo "usage: $0 start DIR | stop DIR" >&2
    exit 2
    ;;
esac
