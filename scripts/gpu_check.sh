#!/usr/bin/env bash
# The short GPU check: about 7 minutes on one H100/H200, from a fresh copy of the repository,
# with no network and nothing installed (it runs from the source tree).
#
#   scripts/gpu_check.sh OUTDIR             on the first CUDA GPU
#   scripts/gpu_check.sh --dry-run OUTDIR   the same steps on the CPU, a tiny grid (about a minute)
#
# Writes to OUTDIR, flat, 8 files: measured.jsonl (cuda rows), sim.jsonl (sim:<this card>),
# report.md, env.json, probes.json (reduction scratch), pytest.log, figure.png, check.log.
# Exit 0 when every CUDA test passes, every cell was measured and sim is within 3% median /
# 8% worst; 1 otherwise (the reasons are printed); 2 when a requirement is missing.
# Overrides: PYTHON (default python3), GPU_CHECK_GRID, GPU_CHECK_BATCHES, GPU_CHECK_REPEATS (timed
# runs per cell), GPU_CHECK_SIM_JOBS (processes predicting the sim rows: 4), GPU_CHECK_SECONDS (no cell starts after that many seconds of measuring: 300 on a
# GPU, leaving room for the tests and the report).
set -uo pipefail
cd "$(dirname "$0")/.."
dry=0
if [ "${1:-}" = "--dry-run" ]; then dry=1; shift; fi
[ $# -eq 1 ] || { echo "usage: scripts/gpu_check.sh [--dry-run] OUTDIR" >&2; exit 2; }
out="$1"
mkdir -p "$out" || exit 2
py="${PYTHON:-python3}"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1 PYTHONWARNINGS=ignore
if [ $dry = 1 ]; then
  device=cpu
  grid="${GPU_CHECK_GRID:-float32:test_vit}"
  batches="${GPU_CHECK_BATCHES:-1,2}"
  seconds="${GPU_CHECK_SECONDS:-600}"
  repeats="${GPU_CHECK_REPEATS:-1}"
  sim_jobs="${GPU_CHECK_SIM_JOBS:-1}"
else
  device=cuda
  grid="${GPU_CHECK_GRID:-float32:vit_small_patch16_224,vit_base_patch16_224,vit_large_patch16_224 bfloat16:vit_base_patch16_224}"
  batches="${GPU_CHECK_BATCHES:-1,16,64}"
  seconds="${GPU_CHECK_SECONDS:-300}"
  repeats="${GPU_CHECK_REPEATS:-3}"
  sim_jobs="${GPU_CHECK_SIM_JOBS:-4}"
fi

check() {
  local target tests k pids=() tmp
  echo "gpu-check: $device, grid '$grid', batches $batches, ${seconds}s to measure; $("$py" -V 2>&1)"
  rm -f "$out"/{measured.jsonl,sim.jsonl,report.md,env.json,probes.json,pytest.log,figure.png}
  target=$(timeout 300 "$py" -m fps_profile.gpucheck prepare "$device" "$out") || return 2
  echo "gpu-check: predicting with $target"
  tmp=$(mktemp -d)
  for ((k = 0; k < sim_jobs; k++)); do  # the sim runs on the CPUs while the GPU measures
    "$py" -m fps_profile.gpucheck measure "$target" "$tmp/sim-$k.jsonl" --grid "$grid" --batch-size "$batches" \
      --seconds "$seconds" --repeats "$repeats" --part "$k/$sim_jobs" &
    pids+=($!)
  done
  timeout 300 "$py" -m pytest -m cuda -q -p no:cacheprovider $(grep -l "mark.cuda" tests/*.py) \
    > "$out/pytest.log" 2>&1
  tests=$?
  echo "gpu-check: tests: $(tail -n 1 "$out/pytest.log")"
  "$py" -m fps_profile.gpucheck measure "$device" "$out/measured.jsonl" --grid "$grid" --batch-size "$batches" \
    --seconds "$seconds" --repeats "$repeats"
  wait "${pids[@]}"
  cat "$tmp"/sim-*.jsonl > "$out/sim.jsonl" 2>/dev/null
  rm -rf "$tmp"
  "$py" -m fps_profile.gpucheck report "$out" --tests-rc $tests
  local rc=$?
  echo "gpu-check: ${SECONDS}s"
  return $rc
}

check 2>&1 | tee "$out/check.log"
exit "${PIPESTATUS[0]}"
