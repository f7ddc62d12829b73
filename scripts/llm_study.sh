#!/usr/bin/env bash
# The language-model study (README "Language models"): Llama-3.2-1B, Llama-3.1-8B and Llama-3.1-70B in
# bfloat16 on simulated H100 and H200 cards, sequence 512/2048/8192, batch 1..16: FPS vs GPS vs Wanda
# selection, the inference floor, full vs sparse fine-tuning steps; then the largest batch of each
# series that fits each card (--max-batch). Resumable: run it again and measured cells are skipped.
#
#   scripts/llm_study.sh                      # everything (estimate: ~3 h on 2 cores, most of it 70B)
#   MODELS=hf:llama-3.2-1b,hf:llama-3.1-8b SELECTORS=fps,wanda scripts/llm_study.sh   # a part
#
# The two cards share the SM90 kernels, allocator and cuBLAS workspace, so their predicted peaks are
# the same bytes: the sweep runs on sim:h100 only; the max-batch search, which depends on the card's
# memory, runs on both (CARDS= skips it).
set -euo pipefail
cd "$(dirname "$0")/.."
FPS=${FPS:-fps-profile}
MODELS=${MODELS:-hf:llama-3.2-1b,hf:llama-3.1-8b,hf:llama-3.1-70b}
SELECTORS=${SELECTORS:-fps,gps,wanda}
SEQ_LENS=${SEQ_LENS:-512,2048,8192}
BATCH_SIZES=${BATCH_SIZES:-1,2,4,8,16}
MAX_BATCH_SEQ_LENS=${MAX_BATCH_SEQ_LENS:-2048}
CARDS=${CARDS-h100 h200}  # CARDS= (empty) skips the max-batch search

$FPS sweep --device sim:h100 --model "$MODELS" --selector "$SELECTORS" --dtype bfloat16 \
    --batch-size "$BATCH_SIZES" --seq-len "$SEQ_LENS" --timeout 1800 \
    --out results/llm-sim-h100.jsonl --plots plots/llm --no-progress
for card in $CARDS; do
    $FPS sweep --device "sim:$card" --model "$MODELS" --selector "$SELECTORS" --dtype bfloat16 \
        --batch-size 1 --seq-len "$MAX_BATCH_SEQ_LENS" --max-batch --timeout 1800 \
        --out "results/llm-maxbatch-sim-$card.jsonl" --no-progress | tee "results/llm-maxbatch-sim-$card.md"
done
