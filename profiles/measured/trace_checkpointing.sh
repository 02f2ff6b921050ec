#!/bin/sh
# Traced steps (FakeTensorMode + MemTracker) for each activation-checkpointing mode and traced loss kind:
# profiles/measured/trace_checkpointing.jsonl (tests/test_checkpointing.py holds the model to them within 2%).
set -e
OUT=profiles/measured/trace_checkpointing.jsonl
for ck in none full selective every:2; do
  for loss in full chunked; do
    subprof bench --backend trace --model 60m --methods adamw --batch 8 --seq 256 --steps 2 \
      --checkpointing "$ck" --loss "$loss" --out "$OUT" --resume
    subprof bench --backend trace --model 1b --methods adamw --batch 8 --seq 512 --steps 2 \
      --checkpointing "$ck" --loss "$loss" --out "$OUT" --resume
  done
done
