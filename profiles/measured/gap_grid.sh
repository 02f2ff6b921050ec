#!/usr/bin/env bash
# The refresh-interval grid on the CPU (issue 22): does a rarer subspace refresh train better, and where is the
# optimum? Tiny LLaMA (2.9M parameters) on the stdlib corpus, 1,000 steps of 8 × 256 tokens, one thread per stream,
# each method at its published lr (1e-2; AdamW 1e-3), validation loss every 250 steps. Two streams run side by side
# (one per core), each appending to its own file as each case finishes (--resume skips finished cases); the quality
# model reads both files as one table. As run on 2026-12-06 (~15–20 min a case beside other work on 2 cores):
# GaLore and SUMO at rank 8 × T = 10, 50, 250 (seed 0) and T = 50, 250 (seed 1), AdamW, OSD at rank 8.
# Rank 32 was started and stopped for time: no row. Second session (started 2026-12-06, same grid date so the
# runs are one table): GaLore rank 32 × T = 10, 50, 250 (stream c); SUMO rank 32 (stream d) was stopped for time
# before its first case finished: no row. Third session (2026-12-07, same grid date): SUMO rank 32 × T = 10, 50, 250
# (stream d, alone on one core; `--resume` skips cases already in a file), and Ori at rank 8, moving every step
# (stream e). `bash profiles/measured/gap_grid.sh [DATE] [r32]` reruns the rank-32 part and Ori.
#   bash profiles/measured/gap_grid.sh [DATE]
set -euo pipefail
cd "$(dirname "$0")/../.."
DATE=${1:-$(date +%F)}
OUT=profiles/measured
COMMON=(--model tiny --steps 1000 --batch 8 --seq 256 --threads 1 --eval-every 250 --device cpu --resume)
(subprof burst --methods galore --ranks 8 --update-gaps 10,50,250 "${COMMON[@]}" --out "$OUT/gap_grid_cpu_a_$DATE.jsonl"
 subprof burst --methods adamw "${COMMON[@]}" --out "$OUT/gap_grid_cpu_a_$DATE.jsonl"
 subprof burst --methods galore --ranks 8 --update-gaps 50,250 --seed 1 "${COMMON[@]}" --out "$OUT/gap_grid_cpu_a_$DATE.jsonl") &
(subprof burst --methods sumo --ranks 8 --update-gaps 10,50,250 "${COMMON[@]}" --out "$OUT/gap_grid_cpu_b_$DATE.jsonl"
 subprof burst --methods sumo --ranks 8 --update-gaps 50,250 --seed 1 "${COMMON[@]}" --out "$OUT/gap_grid_cpu_b_$DATE.jsonl"
 subprof burst --methods osd --ranks 8 "${COMMON[@]}" --out "$OUT/gap_grid_cpu_b_$DATE.jsonl") &
wait
if [ "${2:-}" = r32 ]; then
  (subprof burst --methods galore --ranks 32 --update-gaps 10,50,250 "${COMMON[@]}" --out "$OUT/gap_grid_cpu_c_$DATE.jsonl") &
  (subprof burst --methods sumo --ranks 32 --update-gaps 10,50,250 "${COMMON[@]}" --out "$OUT/gap_grid_cpu_d_$DATE.jsonl"
   subprof burst --methods ori --ranks 8 "${COMMON[@]}" --out "$OUT/gap_grid_cpu_e_$DATE.jsonl") &
  wait
fi
