#!/usr/bin/env bash
# The bundled example, end to end: build boxdelegate, make the images it needs (from Debian
# packages, no registry), copy examples/hello-python into a fresh git repository, and delegate
# its unit. Usage: scripts/demo.sh [WORKDIR]   (default: a new temporary directory)
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"

echo "== building boxdelegate (release)"
cargo build --release --locked --quiet
bd="$root/target/release/boxdelegate"

echo "== images"
BOXDELEGATE="$bd" scripts/setup-images.sh python

work=${1:-$(mktemp -d -t boxdelegate-demo.XXXXXX)}
mkdir -p "$work"
echo "== example repository in $work"
cp -R examples/hello-python/. "$work/"
cd "$work"
export GIT_CONFIG_GLOBAL=/dev/null GIT_CONFIG_NOSYSTEM=1
if [ ! -d .git ]; then
    git init -q -b main
    git add -A
    git -c user.name=demo -c user.email=demo@example.com commit -q -m "hello-python example"
fi

echo "== boxdelegate doctor"
"$bd" doctor

echo "== boxdelegate image build (dependency image + unit image)"
"$bd" image build

echo "== boxdelegate run --unit add-goodbye"
"$bd" run --unit add-goodbye

echo "== the landed commit"
git log -1 --stat boxdelegate/add-goodbye

echo "== boxdelegate verify --commit boxdelegate/add-goodbye (what CI would re-check)"
"$bd" verify --commit boxdelegate/add-goodbye

echo "demo finished: the example repository is in $work"
