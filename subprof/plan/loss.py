"""Memory of the logits and loss by loss kind (`subprof.modes`): `chunked` (torchtitan's chunked cross-entropy,
traced) and `fused` (Liger Kernel's fused linear cross-entropy, modelled from its source). The full logits' term is
`plan.memory.logits_bytes`. Time: every kind computes each logit once in forward and its gradient once (lm_head's
three matmuls, 6·V·h FLOPs per token), so the throughput model charges them alike. Pure Python.
"""

from __future__ import annotations

from subprof.config import TrainConfig
from subprof.modes import CHUNKED_LOSS_CHUNKS


def _compute_bytes(c: TrainConfig) -> int:
    """Bytes of a logit as lm_head's matmul outputs it: bf16 under pure bf16 and autocast, fp32 in fp32."""
    return 4 if c.dtype == "fp32" else 2


def _hidden_bytes(c: TrainConfig) -> int:
    """Bytes of an element of the final hidden states (the residual stream's dtype: fp32 under `mixed`)."""
    return 2 if c.dtype == "bf16" else 4


def chunked_loss_bytes(c: TrainConfig) -> int:
    """`chunked` at its peak, in the backward of a chunk after the first (torchtitan `ChunkedLossWrapper`, n =
    `CHUNKED_LOSS_CHUNKS` chunks of t = T/n tokens): the chunk's logits as lm_head output them (b_c·V·t, held until
    the chunk's backward ends) + the cross-entropy backward's three fp32 tensors as for the full logits (12·V·t) +
    lm_head's weight gradient as the chunk's matmul backward produces it, in the compute dtype (b_c·V·h: under
    `mixed` the bf16 product, not yet the fp32 master's) + the
    fp32 hidden-state gradient buffer and the chunk gradients copied into it (12·h·T, fitted). Checked against traced
    steps (`tests/test_memory.py`, profiles/measured/trace_checkpointing.jsonl)."""
    m, T = c.model, c.tokens
    t = -(-T // CHUNKED_LOSS_CHUNKS)
    b_c = _compute_bytes(c)
    return (b_c + 12) * m.vocab * t + b_c * m.vocab * m.hidden + 12 * m.hidden * T


def fused_chunk_tokens(c: TrainConfig) -> int:
    """Tokens per chunk of Liger's kernel: next_pow2(⌈T / ⌈V/h⌉⌉), which keeps a chunk's logits near T·h."""
    m, T = c.model, c.tokens
    inc = -(-m.vocab // m.hidden)
    return 1 << max(-(-T // inc) - 1, 0).bit_length()


def fused_loss_bytes(c: TrainConfig) -> int:
    """`fused` at its peak, inside the forward's chunk loop (Liger Kernel `ops/fused_linear_cross_entropy.py`,
    `fused_linear_cross_entropy_forward`; modelled, not traced — a Triton kernel): the input gradient it fills
    during the forward (b_hidden·T·h, `zeros_like(_input)`) + lm_head's gradient (b_param·V·h, `zeros_like(weight)`)
    + the fp32 per-token loss (4·T) + one chunk's logits, whose gradient the kernel writes in place (b_c·V·t) + that
    chunk's input-gradient product (b_c·t·h) + the weight-gradient update: in place (`addmm(out_dtype=fp32)`) when the
    gradient is fp32 and the logits bf16 (`mixed` on CUDA, torch ≥ 2.8); else `mm(grad_logits.t(), x).float()`
    materialises V·h at b_c and, from bf16, its fp32 copy (pure bf16: 6·V·h; fp32: 4·V·h)."""
    m, T = c.model, c.tokens
    t = fused_chunk_tokens(c)
    b_c = _compute_bytes(c)
    update = 0 if c.dtype == "mixed" else (b_c + (4 if b_c == 2 else 0)) * m.vocab * m.hidden
    return (_hidden_bytes(c) * T * m.hidden + c.param_bytes * m.vocab * m.hidden + 4 * T + b_c * m.vocab * t
            + b_c * t * m.hidden + update)


def loss_kind_bytes(c: TrainConfig) -> int:
    """logits_loss for the `chunked` and `fused` loss kinds."""
    return chunked_loss_bytes(c) if c.loss == "chunked" else fused_loss_bytes(c)
