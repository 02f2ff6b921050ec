#!/usr/bin/env bash
# The traced per-rank sweep behind profiles/measured/rank_trace_<torch>.jsonl (one rank of a data-parallel job on
# a fake process group: `subprof bench --backend trace --world-size N`). One process at a time, niced; resumable.
#   bash profiles/measured/rank_trace.sh                      # adamw and 8-bit adamw
#   METHODS=galore,ori bash profiles/measured/rank_trace.sh   # low-rank methods (the distributed optimizer)
#   METHODS=osd STEPS=3 bash profiles/measured/rank_trace.sh  # OSD's projector moments appear at its second
#                                                             # optimizer step: a third step sees its whole state
# About 15 minutes on 2 CPU cores for the default methods; < 1 GiB of host memory per case.
set -euo pipefail
METHODS=${METHODS:-adamw,adamw8bit}
RANKS=${RANKS:-512}
STEPS=${STEPS:-2}
TORCH=$(python -c "import torch; print(torch.__version__.split('+')[0])")
OUT=${OUT:-profiles/measured/rank_trace_${TORCH}.jsonl}
bench() { nice -n 10 subprof bench --backend trace --seq 256 --steps "$STEPS" --methods "$METHODS" --ranks "$RANKS" \
          --out "$OUT" --resume --timeout 1200 "$@"; }
# the grid: model × world size, FSDP2 (reshard after forward)
for world in 2 8 64; do
  bench --model 60m --batch 8 --world-size "$world"
  bench --model 1b --batch 4 --world-size "$world"
  bench --model 7b --batch 2 --world-size "$world"
done
# the other strategies, mixed precision, checkpointing and per-layer updates at 8 ranks
bench --model 1b --batch 4 --world-size 8 --strategy fsdp-no-reshard
bench --model 1b --batch 4 --world-size 8 --strategy ddp
bench --model 1b --batch 4 --world-size 8 --nodes 2 --strategy hsdp
bench --model 7b --batch 1 --world-size 8 --strategy fsdp-no-reshard
bench --model 7b --batch 1 --world-size 8
bench --model 60m --batch 8 --world-size 8 --dtype mixed
bench --model 1b --batch 8 --world-size 8 --checkpointing
bench --model 1b --batch 4 --world-size 8 --layerwise
