#!/bin/sh
# Traced steps (FakeTensorMode + MemTracker, the real transformers class of each family) of the small decoder
# configs in profiles/measured/families/ (h 512, I 1376, 4 layers, 8 heads / 4 key-value heads, V 8192; head_dim 96
# for Qwen3 and Gemma; a 128-token window for Mistral, Phi-3, Gemma 2/3): profiles/measured/families_trace.jsonl
# (tests/test_families_memory.py holds the estimate to them within 2%). Not named trace_*.jsonl: those are the
# LLaMA-preset sweeps tests/test_trace_agreement.py reads.
set -e
OUT=profiles/measured/families_trace.jsonl
run() {
  fam=$1
  shift
  subprof bench --backend trace --model "profiles/measured/families/$fam.json" --methods adamw --batch 4 --seq 256 \
    --steps 2 --threads 1 --out "$OUT" --resume "$@"
}
for fam in llama mistral qwen2 qwen3 gemma gemma2 gemma3_text phi3 olmo2 olmo3 granite smollm3; do
  for dtype in bf16 mixed; do run "$fam" --dtype "$dtype"; done
done
for fam in llama mistral qwen2 qwen3 gemma2 phi3; do
  for ck in full selective; do run "$fam" --checkpointing "$ck"; done
done
