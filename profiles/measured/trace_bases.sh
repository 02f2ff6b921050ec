#!/usr/bin/env bash
# The traced rows of the base optimizers (issue 25), profiles/measured/trace_bases_2.14.1.jsonl, 2026-12-06
# (torch 2.14.1, transformers 5.25.0, 2-core CPU, FakeTensorMode + MemTracker: a trace, not a GPU measurement).
set -euo pipefail
OUT=${OUT:-profiles/measured/trace_bases_2.14.1.jsonl}
for base in lion adafactor; do
  for b in 32 1; do
    subprof bench --model 60m --methods galore,adamw --ranks 128 --base $base --backend trace --batch $b --steps 3 \
      --threads 1 --out "$OUT" --resume --json > /dev/null
  done
  for b in 8 1; do
    subprof bench --model 1b --methods galore,adamw --ranks 512 --base $base --backend trace --batch $b --steps 3 \
      --threads 1 --out "$OUT" --resume --json > /dev/null
  done
done
for m in "60m 128" "1b 512"; do
  set -- $m
  subprof bench --model $1 --methods galore --ranks $2 --base lion --state-bits 8 --backend trace --batch 1 --steps 3 \
    --threads 1 --out "$OUT" --resume --json > /dev/null
done
