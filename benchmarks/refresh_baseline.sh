#!/usr/bin/env bash
# Re-measure the gate baseline (benchmarks/baseline.jsonl) from its grids, benchmarks/baseline*.toml.
# Run it after a change that is meant to alter the sim figures, and commit the new file
# with that change. A sweep resumes into an existing file, so the old one is replaced
# only once the new one is complete.
set -euo pipefail
cd "$(dirname "$0")/.."
fps_profile=".venv/bin/fps-profile"; [ -x "$fps_profile" ] || fps_profile="fps-profile"
tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT
for grid in benchmarks/baseline.toml benchmarks/baseline-*.toml; do  # one file, every grid
    "$fps_profile" sweep --config "$grid" --out "$tmp/baseline.jsonl" --no-progress >/dev/null
done
mv "$tmp/baseline.jsonl" benchmarks/baseline.jsonl
echo "wrote benchmarks/baseline.jsonl ($(wc -l < benchmarks/baseline.jsonl) rows)"
