"""Hugging Face Trainer's low-rank optimizers (`TrainingArguments(optim=...)`) as subprof plans them (`--methods
hf:NAME`, `estimate --method hf:NAME`). Pure data, no torch.

What transformers 5.25 builds for each name (`trainer_optimizer.py`: `_get_galore_optimizer`,
`_get_apollo_optimizer`, `_setup_low_rank_optimizer`):
- `galore_*`: galore-torch's `GaLoreAdamW` / `GaLoreAdamW8bit` / `GaLoreAdafactor` with `optim_args` rank 128,
  update_proj_gap 200, scale 0.25, proj_type std — subprof's `galore` (bit-for-bit golden against `GaLoreAdamW`);
  `_8bit`: bitsandbytes' 8-bit states;
- `apollo_*`: apollo-torch's `APOLLOAdamW`, rank 128, proj random, scale_type channel, update_proj_gap 200, scale 1
  — subprof's `apollo` with `projector="stored"` (apollo-torch keeps P between refreshes);
- the projected weights are the `nn.Linear` modules `optim_target_modules` names; modelled: the decoder layers'
  linears (HF's documented `[r".*.attn.*", r".*.mlp.*"]`); `"all-linear"` would project lm_head too, which is not;
  everything else runs in the same optimizer class unprojected (plain AdamW), as subprof's methods do;
- `_layerwise`: one optimizer per parameter stepped in `register_post_accumulate_grad_hook` — subprof's per-layer
  updates. transformers refuses it with gradient accumulation ("Layerwise {name} does not support gradient
  accumulation!") and under DDP ("Layer-wise {name} does not support DDP at this time"): `hf_refusal`.
The rank and update gap are `optim_args` a Trainer user sets freely: `plan` searches them, `estimate` takes HF's
defaults unless given.
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass, field
from typing import Any

from subprof.errors import SubprofError
from subprof.methods import get_method

PREFIX = "hf:"


@dataclass(frozen=True, kw_only=True, slots=True)
class HfOptimizer:
    """One `TrainingArguments.optim` name and how subprof runs it."""

    name: str
    method: str
    package: str
    layerwise: bool = False
    state_bits: int | None = None  # None: the states follow the weights' dtype (the package's zeros_like)
    options: dict[str, Any] = field(default_factory=dict)
    rank: int = 128  # transformers' default `optim_args` rank
    update_gap: int = 200  # transformers' default update_proj_gap
    note: str = ""

    @property
    def key(self) -> str:
        return PREFIX + self.name

    def to_dict(self) -> dict:
        return {"hf_optim": self.name, "package": self.package, "method": self.method, "layerwise": self.layerwise,
                "state_bits": self.state_bits, "method_options": dict(self.options), "note": self.note}


_CLONE = ("galore-torch's 8-bit step clones each projected weight while stepping it (`p.saved_data`): one more weight "
          "in the step, not counted")


def _entries() -> dict[str, HfOptimizer]:
    out = {}
    for lw in (False, True):
        tail = "_layerwise" if lw else ""
        for e in (HfOptimizer(name="galore_adamw" + tail, method="galore", package="galore-torch GaLoreAdamW",
                              layerwise=lw),
                  HfOptimizer(name="galore_adamw_8bit" + tail, method="galore", package="galore-torch GaLoreAdamW8bit",
                              layerwise=lw, state_bits=8, note=_CLONE),
                  HfOptimizer(name="galore_adafactor" + tail, method="galore", package="galore-torch GaLoreAdafactor",
                              layerwise=lw, options={"base": "adafactor"}),
                  HfOptimizer(name="apollo_adamw" + tail, method="apollo", package="apollo-torch APOLLOAdamW",
                              layerwise=lw, options={"projector": "stored"})):
            out[e.name] = e
    return out


HF_OPTIMIZERS: dict[str, HfOptimizer] = _entries()


def is_hf(text: str) -> bool:
    return text.strip().lower().startswith(PREFIX)


def resolve_hf(text: str) -> HfOptimizer:
    """`hf:galore_adamw_layerwise` → its entry; one line for a name transformers does not have as a low-rank
    optimizer, or one subprof cannot run yet (its method or options missing)."""
    name = text.strip().lower().removeprefix(PREFIX)
    entry = HF_OPTIMIZERS.get(name)
    if entry is None:
        close = difflib.get_close_matches(name, list(HF_OPTIMIZERS), n=2, cutoff=0.5)
        hint = f"did you mean {', '.join(PREFIX + c for c in close)}?" if close else \
            f"known: {', '.join(PREFIX + n for n in HF_OPTIMIZERS)}"
        raise SubprofError(f"{text.strip()!r} is not a Trainer low-rank optimizer subprof models; {hint}")
    try:
        get_method(entry.method).resolve_options(entry.options)
    except ValueError:
        raise SubprofError(f"{entry.key} runs {entry.package}, a {entry.method} step on an "
                           f"{entry.options.get('base', 'other')} base; subprof's {entry.method} has no base-optimizer "
                           f"option yet (base={entry.options.get('base')!r}): plan hf:galore_adamw instead") from None
    return entry


def hf_refusal(entry: HfOptimizer, *, accumulation: int = 1, gpus: int = 1, strategy: str = "ddp") -> str | None:
    """transformers' own refusal of this run, in its words, or None: layer-wise variants refuse gradient
    accumulation and DDP. subprof models the non-layer-wise ones on several GPUs under DDP only (the packages
    project whole 2-D weights; FSDP hands them shards)."""
    if entry.layerwise and accumulation > 1:
        return (f"{entry.key}: transformers refuses it — \"Layerwise {entry.name} does not support gradient "
                f"accumulation!\" (use accumulation 1, or {PREFIX}{entry.name.removesuffix('_layerwise')})")
    if entry.layerwise and gpus > 1:
        return (f"{entry.key}: transformers refuses it — \"Layer-wise {entry.name} does not support DDP at this "
                f"time\" (plan it on one GPU, or {PREFIX}{entry.name.removesuffix('_layerwise')})")
    if gpus > 1 and strategy != "ddp":
        return (f"{entry.key}: {entry.package} projects whole 2-D weights, which FSDP hands it in shards; subprof "
                f"models it data-parallel under DDP only: add --strategy ddp")
    return None


def split_methods(text: str) -> tuple[str, list[HfOptimizer]]:
    """`--methods` as (subprof's own names, comma-joined; the `hf:` entries resolved)."""
    parts = [p.strip() for p in text.split(",") if p.strip()]
    hf = [resolve_hf(p) for p in parts if is_hf(p)]
    return ",".join(p for p in parts if not is_hf(p)), hf
