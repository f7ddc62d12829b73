#!/usr/bin/env bash
# CI's performance gate: measure the baseline grids (benchmarks/baseline*.toml) now and
# compare them with the committed benchmarks/baseline.jsonl. The language-model grid needs
# the `llm` extra (transformers). Exits 1 when a sim metric (peak bytes, FLOPs) got worse,
# 2 on a bad file, 0 otherwise. Extra arguments go to `fps-profile gate`.
set -euo pipefail
cd "$(dirname "$0")/.."
fps_profile=".venv/bin/fps-profile"; [ -x "$fps_profile" ] || fps_profile="fps-profile"
tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT
for grid in benchmarks/baseline.toml benchmarks/baseline-*.toml; do  # one file, every grid
    "$fps_profile" sweep --config "$grid" --out "$tmp/current.jsonl" --no-progress >/dev/null
done
"$fps_profile" gate benchmarks/baseline.jsonl "$tmp/current.jsonl" --strict "$@"
