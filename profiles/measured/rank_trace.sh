#!/usr/bin/env bash
# The traced per-rank sweep behind profiles/measured/rank_trace_<torch>.jsonl (one rank of a data-parallel job on
# a fake process group: `subprof bench --backend trace --world-size N`). One process at a time, niced; resumable.
#   bash profiles/measured/rank_trace.sh                      # adamw and 8-bit adamw (today)
#   METHODS=adamw,adamw8bit,galore,ori,osd bash profiles/measured/rank_trace.sh   # once the distributed optimizer
#                                                             # (issue 15) steps FSDP2 parameters
# About 15 minutes on 2 CPU cores for the default methods; < 1 GiB of host memory per case.
set -euo pipefail
METHODS=${METHODS:-adamw,adamw8bit}
RANKS=${RANKS:-512}
TORCH=$(python -c "import torch; print(torch.__version__.split('+')[0])")
OUT=${OUT:-profiles/measured/rank_trace_${TORCH}.jsonl}
bench() { nice -n 10 subprof bench --backend trace --seq 256 --steps 2 --methods "$METHODS" --ranks "$RANKS" \
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
