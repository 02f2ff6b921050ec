"""Activation checkpointing modes and loss kinds: the two vocabularies `--checkpointing` and `--loss` accept, parsed
once for every command. Pure data, no torch.

Checkpointing (what each decoder layer keeps for backward):
- `none`: every activation (the default);
- `full`: only the layer's input; the whole layer is recomputed in backward;
- `selective`: torchtitan's op-level selective checkpointing — inside every layer the outputs of the matmuls are
  saved except every second one, and attention's outputs; everything else is recomputed
  (torchtitan `parallelisms/parallelize_llama.py` `_save_list` and `_custom_policy`, commit 9dec370, the setting
  of its published Llama 3.1 8B benchmark);
- `every:K`: full checkpointing of every K-th decoder layer (layers K−1, 2K−1, …, as torchtitan's layer-level
  `selective_ac_option = "K"` counts them); `every:1` is `full`.

Loss (the logits and cross-entropy at the end of the forward):
- `full`: the whole logits tensor, upcast to fp32 (transformers' `logits.float()` + cross-entropy);
- `chunked`: torchtitan's `ChunkedLossWrapper` — lm_head + cross-entropy + backward one chunk of tokens at a time
  (`CHUNKED_LOSS_CHUNKS` chunks), their hidden-state gradients gathered in one fp32 buffer; pure torch, traced;
- `fused`: Liger Kernel's fused linear cross-entropy (a Triton kernel: logits of a few tokens at a time, their
  gradient computed in place during the forward); modelled from its source, not traced.
"""

from __future__ import annotations

from subprof.errors import SubprofError

CHECKPOINTING_MODES = ("none", "full", "selective", "every:K")
CHECKPOINTING_HELP = ("Activation checkpointing: none, full (every decoder layer recomputed), selective "
                      "(torchtitan's op-level policy: save the matmul outputs except every second one, and "
                      "attention's) or every:K (full checkpointing of every K-th layer).")
LOSS_KINDS = ("full", "chunked", "fused")
LOSS_HELP = ("Logits and loss: full (the whole fp32 logits, as transformers computes them), chunked (torchtitan's "
             "chunked cross-entropy: lm_head + loss over 8 chunks of tokens) or fused (Liger Kernel's fused linear "
             "cross-entropy; modelled, not traced).")
CHUNKED_LOSS_CHUNKS = 8  # torchtitan ChunkedLossWrapper.Config.num_chunks default
FUSED_NOT_TRACED = ("--loss fused is Liger Kernel's Triton kernel: it runs only on CUDA with liger-kernel installed; "
                    "its memory is modelled from the kernel's source, not traced")


def parse_checkpointing(value: str | bool | None) -> str:
    """The canonical mode: `none`, `full`, `selective` or `every:K` (K ≥ 2). Booleans are the old vocabulary
    (results rows and profiles written before the modes: True read as `full`); `every:1` is `full`."""
    if value is None or value is False:
        return "none"
    if value is True:
        return "full"
    text = str(value).strip().lower()
    if text in ("none", "full", "selective"):
        return text
    if text.startswith("every:"):
        k = text.split(":", 1)[1]
        if k.isdigit() and int(k) >= 1:
            return "full" if int(k) == 1 else f"every:{int(k)}"
    raise SubprofError(f"--checkpointing {value!r} unknown: use none, full, selective or every:K with K ≥ 1 "
                       f"(e.g. every:2)")


def checkpoint_every(mode: str) -> int | None:
    """K of `every:K`; 1 for `full`; None for `none` and `selective` (no layer is recomputed whole)."""
    if mode == "full":
        return 1
    if mode.startswith("every:"):
        return int(mode.split(":", 1)[1])
    return None


def checkpointed_layers(mode: str, layers: int) -> int:
    """Decoder layers recomputed whole in backward: all for `full`, ⌊L/K⌋ for `every:K`, none otherwise."""
    k = checkpoint_every(mode)
    return layers // k if k else 0


def is_checkpointed_layer(mode: str, index: int) -> bool:
    """Whether decoder layer `index` (0-based) is checkpointed whole: torchtitan counts layers from 1 and wraps
    those whose count is a multiple of K."""
    k = checkpoint_every(mode)
    return bool(k) and (index + 1) % k == 0


def check_loss(kind: str) -> str:
    """`kind` if it is a loss kind, else a one-line error naming them."""
    if kind not in LOSS_KINDS:
        raise SubprofError(f"--loss {kind!r} unknown: use {', '.join(LOSS_KINDS)}")
    return kind
