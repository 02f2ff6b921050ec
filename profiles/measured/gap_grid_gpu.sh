#!/usr/bin/env bash
# The refresh-interval grid on a GPU (issue 22): the CPU grid (gap_grid.sh) at LLaMA-60M, long enough for several
# refreshes at the largest gap: GaLore and SUMO at ranks 64 and 128 × T = 50, 200, 500, and AdamW, 3,000 steps of
# 64 × 256 tokens each (~1 minute per case on an H100; 13 cases). Resumable: run it again to finish what a time
# limit cut (`--resume` skips finished cases); rows append to profiles/measured/gap_grid_gpu_<date>.jsonl, which
# the quality model reads as a table (`python -m subprof.plan.quality_fit` refits with it).
#   bash profiles/measured/gap_grid_gpu.sh [DATE]
# On the lent GPU machine (no bitsandbytes or galore-torch there): pip install --no-deps -e . first.
set -euo pipefail
cd "$(dirname "$0")/../.."
DATE=${1:-$(date +%F)}
OUT=profiles/measured/gap_grid_gpu_$DATE.jsonl
COMMON=(--model 60m --steps 3000 --batch 64 --seq 256 --eval-every 500 --device cuda --dtype bf16 --resume --out "$OUT")
subprof burst --methods galore,sumo --ranks 64,128 --update-gaps 50,200,500 "${COMMON[@]}"
subprof burst --methods adamw "${COMMON[@]}"
