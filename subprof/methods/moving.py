"""Adam on a moving subspace: the two pieces SubTrack++ adds to GaLore-style Adam, shared by SubTrack, GrassWalk /
GrassJump and SUMO — the projection-aware moment rotation and the recovery of the gradient outside the subspace.

Moment rotation (SubTrack++, criticalml-uw/SubTrack@94f2b65 `low_rank_torch/adamw.py` L178-214; the change of
basis of LDAdam, IST-DASLab/LDAdam `ldadamw.py`), with C = P_newᵀ P_old (r×r) when P moves:
    left  (R = PᵀG, moments r×n):  m ← C m,   v ← s·|C∘C (v − m∘m) + (C m)∘(C m)|
    right (R = G P, moments m×r):  m ← m Cᵀ,  v ← s·|(v − m∘m)(C∘C)ᵀ + (m Cᵀ)∘(m Cᵀ)|
`moment_transfer="reference"`: s = 1 − β₂ as the SubTrack++ code multiplies (so v shrinks ~1000× at β₂ = 0.999 and
the next steps are up to ~30× larger until v recovers); "unscaled": s = 1 (LDAdam's form; exact for an unchanged
subspace); None: the moments stay as they are (GaLore).

Recovery scaling (Fira, xichen-fy/Fira@5c28b13 `optimizer_torch/fira_adamw.py` L120-153; SubTrack++ `adamw.py`
L216-246, the same arithmetic):
    E = (G − a·P PᵀG) ⊙ s,   s = ‖N‖/(‖R‖ + 1e-8) along R's rank axis (one factor per row of G when m ≥ n, per
    column otherwise; N the low-rank Adam update, R the low-rank gradient), then the norm-growth limiter:
    E ← E / (max(‖E‖_F/(prev + 1e-8), γ)/γ), prev ← ‖E‖_F after limiting (the first step is not limited)
`recovery="reference"`: a = α, the projector's scale, as the code's `project_back` includes it (the term is then
about 3× the exact complement at α = 0.25); "exact": a = 1, the exact complement G − PPᵀG (the SubTrack++ paper's
Λ); None: off. γ = `growth_limit` = 1.01 (hard-coded in Fira, `norm_growth_limit` in SubTrack++). The optimizer
adds lr·f·E, f Adam's bias correction, not multiplied by α again — as both codes do.
"""

from __future__ import annotations

from typing import Any

from subprof.methods.lazy import torch
from subprof.methods.rule import LOCAL, ProjectionRule, right_side
from subprof.methods.spec import Dtype, Role, TensorSpec, full_shape

Tensor = Any

MOMENT_TRANSFERS = ("reference", "unscaled", None)
RECOVERIES = ("reference", "exact", None)
# the named variants every rule built on `MovingSubspaceRule` offers (`MethodSpec.variants`)
MOVING_VARIANTS = {
    "exact-recovery": {"recovery": "exact"},
    "no-recovery": {"recovery": None},
    "unscaled-rotation": {"moment_transfer": "unscaled"},
    "no-rotation": {"moment_transfer": None},
}
# recovery: the residual G − a·P PᵀG (m×n, in the gradient's dtype), held through the step
RECOVERY_WORKSPACE = (TensorSpec(name="residual", shape=full_shape, dtype=Dtype.PARAM, role=Role.WORKSPACE),)


def choice(name: str, value: Any, allowed: tuple) -> Any:
    """`value` if it is one of `allowed` (False counts as None: off), else a ValueError naming them."""
    value = None if value is False else value
    if value not in allowed:
        raise ValueError(f"{name} must be one of {', '.join(repr(a) for a in allowed)}; got {value!r}")
    return value


def _read(rule: ProjectionRule, state: dict, name: str) -> Tensor | None:
    """A moment as an fp32 tensor, or None before the optimizer created it."""
    if name not in state:
        return None
    return rule.read_moment(state, name)


def rotate_moments(rule: ProjectionRule, state: dict, p_old: Tensor, p_new: Tensor, shape: tuple[int, ...],
                   *, second: bool, shrink: float = 1.0) -> None:
    """Carry exp_avg (and exp_avg_sq when `second`) from the basis p_old into p_new (both d×r, fp32), as the module
    docstring states; `shrink` is the factor s on v (1 − β₂ for the SubTrack++ code, 1 for LDAdam's form)."""
    c = p_new.T @ p_old
    right = right_side(shape)
    m = _read(rule, state, "exp_avg")
    if m is None:
        return
    m_new = m @ c.T if right else c @ m
    if second:
        v = _read(rule, state, "exp_avg_sq")
        if v is not None:
            centred = v - m.square()
            v_new = centred @ c.square().T if right else c.square() @ centred
            del centred
            v_new.addcmul_(m_new, m_new).abs_()
            if shrink != 1.0:
                v_new.mul_(shrink)
            rule.write_moment(state, "exp_avg_sq", v_new)
    rule.write_moment(state, "exp_avg", m_new)


def recovery_term(state: dict, grad: Tensor, r_grad: Tensor, r_update: Tensor, projector: Tensor, *,
                  alpha: float, growth_limit: float, ctx: Any = LOCAL) -> Tensor:
    """Fira's recovery term E (module docstring), in G's dtype; keeps the limited norm in state["recovery_norm"] (a
    0-d fp32 tensor on G's device, so the limiter needs no host sync; scalars are not declared memory). Sharded
    (`ctx`): E is this rank's shard (the scale factors run along R's rank axis, so they are local) and ‖E‖ is summed
    over the ranks (one value)."""
    shape = ctx.shape(grad)
    right = right_side(shape)
    p = projector.to(grad.dtype)
    r = r_grad.to(grad.dtype)
    residual = ctx.project_back(r, p, shape)  # one m×n tensor: the declared step workspace
    residual.mul_(-alpha).add_(grad)
    axis = 1 if right else 0  # the rank axis of R / N
    # norms accumulated in fp32 without an fp32 copy of N or R (bitwise `torch.norm` on fp32 tensors)
    factor = (torch.linalg.vector_norm(r_update, dim=axis, dtype=torch.float32)
              / (torch.linalg.vector_norm(r_grad, dim=axis, dtype=torch.float32) + 1e-8))
    residual.mul_((factor[:, None] if right else factor[None, :]).to(grad.dtype))
    return limit_growth(state, "recovery_norm", residual, ctx.norm(residual), growth_limit)


def limit_growth(state: dict, key: str, t: Tensor, norm: Tensor, growth_limit: float) -> Tensor:
    """Fira's norm-growth limiter on `t` (in place), `norm` = ‖t‖_F (0-d fp32, summed over the ranks when sharded):
    t ← t / (max(‖t‖/(prev + 1e-8), γ)/γ), prev ← ‖t‖ after limiting, kept in state[key] (0-d, on t's device: no
    host read); the first call only records the norm. Fira and APOLLO (`subprof.methods.apollo`) alike."""
    previous = state.get(key)
    if previous is not None:
        limiter = torch.clamp(norm / (previous + 1e-8), min=growth_limit) / growth_limit
        t.div_(limiter.to(t.dtype))
        norm = norm / limiter
    state[key] = norm
    return t


class MovingSubspaceRule(ProjectionRule):
    """A rule whose P moves between refreshes without resetting Adam: options `moment_transfer` ("reference" |
    "unscaled" | None), `recovery` ("reference" | "exact" | None) and `growth_limit` (γ, 1.01)."""

    def __init__(self, *, rank: int, update_gap: int, **options: Any) -> None:
        super().__init__(rank=rank, update_gap=update_gap, **options)
        self.moment_transfer = choice("moment_transfer", self.options["moment_transfer"], MOMENT_TRANSFERS)
        self.recovery = choice("recovery", self.options["recovery"], RECOVERIES)
        self.growth_limit = float(self.options["growth_limit"])
        if self.growth_limit < 1.0:
            raise ValueError(f"growth_limit must be ≥ 1, got {self.growth_limit}")

    def transfer(self, state: dict, p_old: Tensor, p_new: Tensor, shape: tuple[int, ...]) -> None:
        """Rotate Adam's moments from p_old into p_new as `moment_transfer` says (nothing when None)."""
        if self.moment_transfer is None:
            return
        shrink = 1.0 - self.betas[1] if self.moment_transfer == "reference" else 1.0
        rotate_moments(self, state, p_old, p_new, shape, second=True, shrink=shrink)

    def recovery_term(self, state: dict, grad: Tensor, r_grad: Tensor, r_update: Tensor, *,
                      scale: float = 1.0) -> Tensor | None:
        """The out-of-subspace term (None when `recovery` is None)."""
        if self.recovery is None:
            return None
        alpha = scale if self.recovery == "reference" else 1.0
        return recovery_term(state, grad, r_grad, r_update, state["projector"], alpha=alpha,
                             growth_limit=self.growth_limit, ctx=self.ctx)


def recovery_workspace(options: dict) -> tuple[TensorSpec, ...]:
    """The step workspace recovery adds (the m×n residual) unless it is off."""
    return RECOVERY_WORKSPACE if choice("recovery", options["recovery"], RECOVERIES) is not None else ()
