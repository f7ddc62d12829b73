#!/usr/bin/env bash
# CI's performance gate: measure the baseline grid now and compare it with the committed
# benchmarks/baseline.jsonl. Exits 1 when a sim metric (peak bytes, FLOPs) got worse,
# 2 on a bad file, 0 otherwise. Extra arguments go to `fps-profile gate`.
set -euo pipefail
cd "$(dirname "$0")/.."
fps_profile=".venv/bin/fps-profile"; [ -x "$fps_profile" ] || fps_profile="fps-profile"
tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT
"$fps_profile" sweep --config benchmarks/baseline.toml --out "$tmp/current.jsonl" --no-progress >/dev/null
"$fps_profile" gate benchmarks/baseline.jsonl "$tmp/current.jsonl" --strict "$@"
