"""One forward and backward of a causal LM under a loss kind (`subprof.modes`): the step every backend runs.

- `full`: transformers' own loss (`model(input_ids, labels).loss`: the whole logits, `logits.float()`, then
  cross-entropy), then `loss.backward()`;
- `chunked`: torchtitan's `ChunkedLossWrapper` (torchtitan/components/loss.py): the decoder without lm_head, its
  hidden states detached and split into `CHUNKED_LOSS_CHUNKS` chunks of tokens; per chunk lm_head, fp32 upcast,
  cross-entropy and an immediate backward, each chunk's hidden-state gradient copied into one fp32 buffer
  (`GradAccumulator`); then backward through the decoder from that buffer. Pure torch, so a trace sees every
  tensor it allocates;
- `fused`: Liger Kernel's fused linear cross-entropy is a Triton kernel, which neither runs on the CPU nor on fake
  tensors; `LigerFusedLinearCrossEntropyLoss` is used when installed (CUDA), and a trace refuses it (its memory is
  modelled from the kernel's source: `subprof.plan.memory.logits_bytes`).
Torch-only module.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from subprof.errors import SubprofError
from subprof.modes import CHUNKED_LOSS_CHUNKS, FUSED_NOT_TRACED



def forward_backward(model: torch.nn.Module, ids: torch.Tensor, loss: str, context) -> torch.Tensor:
    """Forward (under `context`, e.g. autocast) and backward of one micro-batch with next-token labels `ids`;
    returns the detached loss."""
    if loss == "full":
        with context:
            out = model(input_ids=ids, labels=ids).loss
        out.backward()
        return out.detach()
    if loss == "chunked":
        return _chunked(model, ids, context)
    return _fused(model, ids, context)


def _shifted_labels(ids: torch.Tensor) -> torch.Tensor:
    """Next-token labels aligned with every position (the last position ignored), as transformers shifts them."""
    return F.pad(ids[:, 1:], (0, 1), value=-100).reshape(-1)


def _chunked(model: torch.nn.Module, ids: torch.Tensor, context) -> torch.Tensor:
    """torchtitan's ChunkedLossWrapper on a transformers causal LM (module docstring)."""
    with context:
        hidden = model.model(input_ids=ids).last_hidden_state.flatten(0, 1)  # (tokens, h)
    tokens = hidden.shape[0]
    if tokens % CHUNKED_LOSS_CHUNKS:
        raise SubprofError(f"--loss chunked splits batch × seq = {tokens} tokens into {CHUNKED_LOSS_CHUNKS} equal "
                           f"chunks: use a multiple of {CHUNKED_LOSS_CHUNKS}")
    labels = _shifted_labels(ids).split(tokens // CHUNKED_LOSS_CHUNKS)
    chunks = [c.contiguous().detach().requires_grad_(True) for c in hidden.split(tokens // CHUNKED_LOSS_CHUNKS)]
    grad = torch.zeros_like(hidden, dtype=torch.float32)
    valid = max((ids.shape[1] - 1) * ids.shape[0], 1)
    total = hidden.new_zeros((), dtype=torch.float32)
    start = 0
    for chunk, label in zip(chunks, labels):
        with context:
            logits = F.linear(chunk, model.lm_head.weight)  # lm_head's op (a module call per chunk: MemTracker refuses)
        part = F.cross_entropy(logits.float(), label, ignore_index=-100, reduction="sum") / valid
        total = total + part.detach()
        part.backward()
        grad[start:start + chunk.shape[0]] = chunk.grad
        start += chunk.shape[0]
        chunk.grad = None
        del logits, part
    del chunks
    hidden.backward(grad.to(hidden.dtype))
    return total


def _fused(model: torch.nn.Module, ids: torch.Tensor, context) -> torch.Tensor:
    """Liger Kernel's fused linear cross-entropy on the decoder's hidden states (CUDA only)."""
    if ids.device.type != "cuda":
        raise SubprofError(FUSED_NOT_TRACED)
    try:
        from liger_kernel.transformers import LigerFusedLinearCrossEntropyLoss
    except ImportError:
        raise SubprofError("--loss fused needs liger-kernel (pip install liger-kernel)") from None
    with context:
        hidden = model.model(input_ids=ids).last_hidden_state.flatten(0, 1)
        out = LigerFusedLinearCrossEntropyLoss()(model.lm_head.weight, hidden, _shifted_labels(ids))
    out.backward()
    return out.detach()
