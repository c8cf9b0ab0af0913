#!/usr/bin/env bash
# Rewrites every result block of docs/benchmark.md (between `<!-- bench-render: FILE -->` and
# `<!-- /bench-render -->`) with `bench --render FILE`. Usage: scripts/bench-page.sh
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
cargo build --release --quiet --bin bench
page=docs/benchmark.md
out=$(mktemp)
in_block=
while IFS= read -r line; do
    if [ -n "$in_block" ]; then
        [ "$line" = "<!-- /bench-render -->" ] || continue
        in_block=
    fi
    printf '%s\n' "$line" >> "$out"
    case "$line" in
    "<!-- bench-render: "*" -->")
        file=${line#<!-- bench-render: }
        file=${file% -->}
        { echo '```text'; target/release/bench --render "$file"; echo '```'; } >> "$out"
        in_block=1
        ;;
    esac
done < "$page"
mv "$out" "$page"
echo "rewrote $page"
