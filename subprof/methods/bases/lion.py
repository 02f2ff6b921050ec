"""Lion (Chen et al. 2023, "Symbolic Discovery of Optimization Algorithms", arXiv 2302.06675, Algorithm 2), as
lion-pytorch (lucidrains, `lion_pytorch/lion_pytorch.py` `update_fn`) and the OSD authors' `GaLoreLion`
(kyleliang919/Online-Subspace-Descent@e694775 `galore_torch/galore_lion.py`, the runs of OSD's Table 2):

    c = β₁m + (1−β₁)g;   U = sign(c);   m ← β₂m + (1−β₂)g          β = (0.9, 0.99)
    projected: m lives on R; U = sign(back(c)) — GaLoreLion takes the sign of the back-projected interpolation, so
    the update is ±lr in every entry of W and the scale α (applied before the sign there) has no effect.

One moment per tensor (half of Adam's). Default lr 1e-4: lion-pytorch's and GaLoreLion's default, inside the
paper's advice of an lr 3–10× smaller than AdamW's (§5, "Hyperparameter tuning").
Deviations:
- decoupled weight decay after the update (GaLoreLion's order; lion-pytorch decays first: the two differ by
  O(lr²·λ) per step).
- 8 bits (bitsandbytes' `Lion8bit` keeps the same one blockwise 8-bit moment: uint8 codes + fp32 absmax per 256
  values): the moment is dequantised, updated in fp32 and requantised here, rather than in bitsandbytes' fused kernel,
  because a projected step needs c before the sign. Same bytes; arithmetic ours.
"""

from __future__ import annotations

from typing import Any

from subprof.methods.bases.declaration import BaseSpec
from subprof.methods.moments import init_state_moment, read_state_moment, uses_8bit, write_state_moment
from subprof.methods.spec import Dtype, Role, TensorSpec

Tensor = Any
BETAS = (0.9, 0.99)  # lion-pytorch's and GaLoreLion's defaults


class LionUpdate:
    """Lion's direction c (the sign is taken by `finish`, after any back-projection)."""

    defaults: dict[str, Any] = {"betas": BETAS}
    decay_first = False
    lr_inside = False  # U is a direction; the optimizer multiplies by lr

    def direction(self, state: dict, grad: Tensor, group: dict, step: int, **_: Any) -> Tensor:
        """c = β₁m + (1−β₁)g (a new tensor); m ← β₂m + (1−β₂)g in place (GaLoreLion's arithmetic and order)."""
        beta1, beta2 = {**self.defaults, **(group.get("base_options") or {})}["betas"]
        bits = group["state_bits"]
        if "exp_avg" not in state:
            init_state_moment(state, "exp_avg", grad, bits)
        if uses_8bit(grad.numel(), bits):
            m = read_state_moment(state, "exp_avg")
            c = m.mul(beta1).add_(grad, alpha=1.0 - beta1)
            write_state_moment(state, "exp_avg", m.mul_(beta2).add_(grad, alpha=1.0 - beta2), bits)
            return c
        m = state["exp_avg"]
        c = m.mul(beta1).add_(grad, alpha=1.0 - beta1)
        m.mul_(beta2).add_(grad, alpha=1.0 - beta2)
        return c

    def step_factor(self, state: dict, group: dict, step: int) -> float:
        return 1.0

    def finish(self, full: Tensor, scale: float) -> Tensor:
        """sign(back(c)); α has no effect (module docstring)."""
        return full.sign_()


def moments(shape, axes) -> tuple[TensorSpec, ...]:
    return (TensorSpec(name="exp_avg", shape=shape, dtype=Dtype.STATE, role=Role.MOMENT, axes=axes),)


def plain_temporary_bytes(numel: int, state_bits: int, param_bytes: int) -> int:
    """c (the moment's or the gradient's wider dtype); at 8 bits c and the dequantised fp32 moment, and the new codes
    and absmax while they are requantised (traced: 60m batch 1, the embedding's step is the peak)."""
    if state_bits == 8:
        return 9 * numel + 4 * -(-numel // 256) if numel >= 4096 else 4 * numel
    return numel * max(param_bytes, state_bits // 8)


SPEC = BaseSpec(
    name="lion",
    title="Lion",
    paper="Chen et al. 2023, arXiv 2302.06675",
    moments=moments,
    default_lr=1e-4,
    lr_source="lion-pytorch and OSD's GaLoreLion default (lr=1e-4); Chen et al. 2023 §5: 3–10× below AdamW's",
    state_bits_supported=(32, 16, 8),
    plain_temporary_bytes=plain_temporary_bytes,
    update=LionUpdate,
    moment_decay=BETAS[1],  # its one moment m ← β₂m + (1−β₂)g
)
