#!/usr/bin/env bash
# The default GPU grid in one call: ViT-S/B/L x batch 1..128 x float32 and bfloat16,
# every phase, FPS, GPS, magnitude and random, on the first CUDA GPU; then the figures,
# the report, and the simulator's predictions for the same card next to the measurements.
#
#   scripts/gpu_sweep.sh [OUT_DIR]      (default results/gpu-<card>)
#
# Resumable: run it again after an interruption and it measures only what is missing.
set -euo pipefail
cd "$(dirname "$0")/.."
fps=".venv/bin/fps-profile"; [ -x "$fps" ] || fps="fps-profile"
py=".venv/bin/python"; [ -x "$py" ] || py="python3"
card=$("$py" -c 'import torch; print(torch.cuda.get_device_name(0).replace(" ", "-"))')
out="${1:-results/gpu-${card}}"
mkdir -p "$out"
grid=(--selector fps,gps,magnitude,random
      --model vit_small_patch16_224,vit_base_patch16_224,vit_large_patch16_224
      --batch-size 1,2,4,8,16,32,64,128 --dtype float32,bfloat16)

"$fps" sweep "${grid[@]}" --device cuda --repeats 5 --out "$out/cuda.jsonl"
case "$card" in
  *H200*) target=sim:h200 ;; *A100*) target=sim:a100 ;; *) target=sim:h100 ;;
esac
"$fps" sweep "${grid[@]}" --device "$target" --out "$out/sim.jsonl" --no-progress > /dev/null
"$fps" plot "$out/cuda.jsonl" --out "$out/plots"
"$fps" report "$out/cuda.jsonl" --out "$out/report.md"
"$py" -m fps_profile.analysis.compare "$out/cuda.jsonl" "$out/sim.jsonl" > "$out/sim-vs-cuda.md"
tail -n 1 "$out/sim-vs-cuda.md"
echo "rows: $out/cuda.jsonl (measured), $out/sim.jsonl (predicted for $target); report: $out/report.md; sim vs cuda: $out/sim-vs-cuda.md"
