"""Constants of the memory model that tensors alone do not give, each with where it comes from.

Model-side constants (what torch allocates) were checked against traced steps; GPU-side constants (CUDA context,
allocator reserve, CUDA runtime allocations) come from the real H100 rows in
`profiles/measured/h100_reference.jsonl` (torch 2.11.0+cu130, transformers 5.17.0, NVIDIA H100 80GB HBM3).
`tests/test_calibration.py` refits the GPU-side constants from that file, so they cannot drift from it silently.
They are stated per GPU and torch version; on another GPU/driver the context size differs (300 MB–1.3 GB), so
`bench --backend cuda` rows are how a user checks their own device.
"""

from __future__ import annotations

# Cross-entropy over V logits per token at its backward peak: fp32 log_softmax output + its incoming gradient +
# the fp32 input gradient = 3 · 4 B · V (see memory.logits_bytes).
LOGITS_BYTES_PER_VOCAB_TOKEN = 12

# Allocations the CUDA runtime makes through torch's caching allocator that a CPU trace cannot see (cuBLAS/cuBLASLt
# workspaces, kernel-choice differences): the mean of (measured peak − model-side estimate) over the four H100
# rows = 82.5, 86.4, 111.9, 155.8 MiB → 109 MiB. Refitted by tests/test_calibration.py.
CUDA_RUNTIME_ALLOCATED_BYTES = 109 * 2**20

# nvidia-smi "used" minus torch's peak reserved, H100 rows: 1.22, 1.31, 1.22, 1.31 GiB → mean 1.265 GiB.
CUDA_CONTEXT_BYTES = int(1.265 * 2**30)

# Reserved − allocated grows with the big transient logits blocks that the caching allocator keeps:
# least-squares slope through the origin of (reserved − peak) on logits_bytes over the H100 rows = 0.48
# (per row 0.48, 0.50, 0.59, 0.37: ± 0.2 GiB at these sizes). Used for device_used only, never for the peak.
RESERVE_PER_LOGITS_BYTE = 0.48


def reserved_bytes(peak_allocated: int, logits: int) -> int:
    """reserved ≈ peak allocated + 0.48 · logits_loss bytes (H100 fit above)."""
    return int(peak_allocated + RESERVE_PER_LOGITS_BYTE * logits)


def device_used_bytes(peak_allocated: int, logits: int) -> int:
    """What nvidia-smi shows for a step whose `torch.cuda.max_memory_allocated()` is `peak_allocated`: the reserved
    memory (`reserved_bytes`) plus the CUDA context. `plan` holds this against budget × (1 − margin), and so does
    `bench --gpu-mem` for a traced peak (plus `CUDA_RUNTIME_ALLOCATED_BYTES`, which a trace cannot see)."""
    return reserved_bytes(peak_allocated, logits) + CUDA_CONTEXT_BYTES
