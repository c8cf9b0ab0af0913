#!/usr/bin/env bash
# A second Docker engine of our own, reachable only over TLS on 127.0.0.1: the remote engine the
# tests run against. Everything it owns lives under DIR (certificates, data root, exec root, pid
# file, its log) and on a bridge and address pool of its own, so it never touches the host's
# engine. Needs root.
#
#   scripts/engines/dockerd-tls.sh start DIR [PORT]   certificates, engine, DIR/env to source
#   scripts/engines/dockerd-tls.sh stop DIR           stops it; fails if a process, mount or
#                                                     network of it is left behind
#   scripts/engines/dockerd-tls.sh bad-certs DIR      DIR/bad: a client certificate of another CA
#
# DIR/env sets DOCKER_HOST=tcp://127.0.0.1:PORT, DOCKER_TLS_VERIFY=1 and DOCKER_CERT_PATH, which
# both the docker CLI and boxdelegate read.
set -euo pipefail

cmd=${1:-}
dir=${2:-}
[ -n "$cmd" ] && [ -n "$dir" ] || {
    echo "usage: $0 start DIR [PORT] | stop DIR | bad-certs DIR" >&2
    exit 2
}
port=${3:-23760}
# The engine's own bridge and pools, apart from the host engine's 172.17-31 ranges.
bridge=bdtls0
bridge_cidr=10.213.0.1/24
pool=10.214.0.0/16

ca() { # ca DIR NAME: a certificate authority
    openssl req -x509 -newkey rsa:2048 -nodes -days 2 -subj "/CN=$2" \
        -keyout "$1/ca-key.pem" -out "$1/ca.pem" 2>/dev/null
}

leaf() { # leaf CADIR OUTDIR CN EXT: a key and a certificate signed by CADIR's authority
    openssl req -newkey rsa:2048 -nodes -subj "/CN=$3" \
        -keyout "$2/key.pem" -out "$2/req.csr" 2>/dev/null
    printf '%s\n' "$4" >"$2/ext.cnf"
    openssl x509 -req -in "$2/req.csr" -CA "$1/ca.pem" -CAkey "$1/ca-key.pem" \
        -CAcreateserial -days 2 -extfile "$2/ext.cnf" -out "$2/cert.pem" 2>/dev/null
    cp "$1/ca.pem" "$2/ca.pem"
    rm -f "$2/req.csr" "$2/ext.cnf"
    chmod 600 "$2/key.pem"
}

# forward_rules -I|-D: accept forwarding to and from this engine's addresses (or stop doing so).
forward_rules() {
    local chain=FORWARD
    iptables -S DOCKER-USER >/dev/null 2>&1 && chain=DOCKER-USER
    for net in 10.213.0.0/24 "$pool"; do
        for side in -s -d; do
            if [ "$1" = -I ]; then
                iptables -C "$chain" "$side" "$net" -j ACCEPT 2>/dev/null ||
                    iptables -I "$chain" "$side" "$net" -j ACCEPT
            else
                while iptables -D "$chain" "$side" "$net" -j ACCEPT 2>/dev/null; do :; done
            fi
        done
    done
    # Its default bridge reaches out through the host (an install step fetches packages), as
    # the host engine's own does; its other networks stay without a way out.
    local nat=(POSTROUTING -s 10.213.0.0/24 ! -o "$bridge" -j MASQUERADE)
    if [ "$1" = -I ]; then
        iptables -t nat -C "${nat[@]}" 2>/dev/null || iptables -t nat -I "${nat[@]}"
    else
        while iptables -t nat -D "${nat[@]}" 2>/dev/null; do :; done
    fi
}

start() {
    mkdir -p "$dir"/{ca,server,client,data,exec}
    dir=$(cd "$dir" && pwd)
    if [ -s "$dir/dockerd.pid" ] && kill -0 "$(cat "$dir/dockerd.pid")" 2>/dev/null; then
        echo "engine of $dir: already running"
        return
    fi
    ca "$dir/ca" boxdelegate-test-ca
    leaf "$dir/ca" "$dir/server" 127.0.0.1 \
        "subjectAltName=IP:127.0.0.1,DNS:localhost
extendedKeyUsage=serverAuth"
    leaf "$dir/ca" "$dir/client" boxdelegate-test-client "extendedKeyUsage=clientAuth"

    if ! ip link show "$bridge" >/dev/null 2>&1; then
        ip link add "$bridge" type bridge
        ip addr add "$bridge_cidr" dev "$bridge"
        ip link set "$bridge" up
    fi
    # The host engine drops forwarded traffic by default (bridged frames pass the FORWARD chain);
    # let this engine's own addresses through, in the chain the host engine leaves to users.
    forward_rules -I
    echo '{}' >"$dir/daemon.json"
    # iptables off: the host engine owns the host's chains; this one must not rewrite them. Its
    # internal networks still have no route out (no gateway), which is what isolation needs.
    dockerd --config-file "$dir/daemon.json" \
        --data-root "$dir/data" --exec-root "$dir/exec" --pidfile "$dir/dockerd.pid" \
        --host "tcp://127.0.0.1:$port" \
        --tlsverify --tlscacert "$dir/server/ca.pem" --tlscert "$dir/server/cert.pem" \
        --tlskey "$dir/server/key.pem" \
        --bridge "$bridge" --iptables=false --ip-masq=false --ip-forward=false \
        --default-address-pool "base=$pool,size=24" \
        --storage-driver overlay2 >"$dir/dockerd.log" 2>&1 &
    cat >"$dir/env" <<EOF
export DOCKER_HOST=tcp://127.0.0.1:$port
export DOCKER_TLS_VERIFY=1
export DOCKER_CERT_PATH=$dir/client
EOF
    # shellcheck disable=SC1091
    . "$dir/env"
    for _ in $(seq 1 300); do
        if docker version >/dev/null 2>&1; then
            echo "engine of $dir: listening on $DOCKER_HOST ($(docker version --format '{{.Server.Version}}'))"
            return
        fi
        sleep 0.2
    done
    echo "error: the engine of $dir did not answer on $DOCKER_HOST within 60 s; its log:" >&2
    tail -20 "$dir/dockerd.log" >&2
    exit 1
}

stop() {
    dir=$(cd "$dir" && pwd)
    local pid=
    [ -s "$dir/dockerd.pid" ] && pid=$(cat "$dir/dockerd.pid")
    if [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null; then
        kill "$pid"
        for _ in $(seq 1 300); do
            kill -0 "$pid" 2>/dev/null || break
            sleep 0.2
        done
        if kill -0 "$pid" 2>/dev/null; then
            echo "error: dockerd $pid of $dir did not stop within 60 s" >&2
            exit 1
        fi
    fi
    local left=0
    # A containerd or shim it started and that outlived it.
    if pgrep -f -- "$dir/exec" >/dev/null; then
        echo "error: processes of $dir are left:" >&2
        pgrep -af -- "$dir/exec" >&2
        left=1
    fi
    if grep -q -- "$dir" /proc/mounts; then
        echo "error: mounts under $dir are left:" >&2
        grep -- "$dir" /proc/mounts >&2
        left=1
    fi
    # Networks it made on its pool: a bridge with an address there.
    if ip -br addr | grep -q "10\.214\."; then
        echo "error: a network of $dir is left:" >&2
        ip -br addr | grep "10\.214\." >&2
        left=1
    fi
    if ip link show "$bridge" >/dev/null 2>&1; then
        ip link del "$bridge"
    fi
    forward_rules -D
    [ "$left" -eq 0 ] || exit 1
    rm -rf "$dir"
    echo "engine of $dir: stopped, nothing left"
}

bad_certs() {
    mkdir -p "$dir/bad/ca" "$dir/bad/client"
    ca "$dir/bad/ca" another-ca
    leaf "$dir/bad/ca" "$dir/bad/client" intruder "extendedKeyUsage=clientAuth"
    # The client trusts the right server CA: only its own certificate is wrong.
    cp "$dir/client/ca.pem" "$dir/bad/client/ca.pem"
    echo "$dir/bad/client"
}

case "$cmd" in
start) start ;;
stop) stop ;;
bad-certs) bad_certs ;;
*)
    echo "usage: $0 start DIR [PORT] | stop DIR | bad-certs DIR" >&2
    exit 2
    ;;
esac
