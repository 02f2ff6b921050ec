"""What a method stores, as pure data: the declaration that both the memory model and the optimizer read.

A subspace method keeps, per projected weight W (m × n, torch's out × in), a few tensors whose shapes are functions
of (m, n, r), and holds a transient workspace while it updates its projection. `MethodSpec` declares both; the
optimizer code (`subprof.optim`, torch) allocates exactly what is declared, and a test holds the declared bytes
equal to the bytes found in `optimizer.state`. No torch here: `plan` and `estimate` must start in well under 0.5 s.

Projection convention (GaLore "std", METHODS.md): if m ≥ n, P is n × r and R = G·P is m × r; if m < n, P is
m × r and R = Pᵀ·G is r × n. So moments on R hold r·max(m, n) numbers and P holds min(m, n)·r.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from enum import Enum
from typing import Any, Callable, Mapping

Shape = tuple[int, ...]
ShapeRule = Callable[[int, int, int], Shape]

# 8-bit states (bitsandbytes-style blockwise quantisation): one uint8 code per value plus one fp32 absmax per
# block of 256 values; tensors under 4096 values stay in 32-bit (bitsandbytes' `min_8bit_size`).
QUANT_BLOCK = 256
QUANT_MIN_NUMEL = 4096


class Dtype(Enum):
    """How a declared tensor's element type is chosen."""

    STATE = "state"  # follows state_bits: 32 → fp32, 16 → bf16, 8 → blockwise 8-bit
    PARAM = "param"  # the weight's own dtype (bf16 in pure-bf16 training, fp32 with mixed precision)
    FP32 = "fp32"  # always fp32 (e.g. the SVD input upcast, small factors)


class Role(Enum):
    """Which memory component a tensor is reported under."""

    MOMENT = "optimizer_states"
    PROJECTION = "projection_matrices"
    WORKSPACE = "projection_workspace"


@dataclass(frozen=True, kw_only=True, slots=True)
class TensorSpec:
    """One tensor: a name as it appears in `optimizer.state[p]`, a shape rule (m, n, r) → shape, a dtype rule."""

    name: str
    shape: ShapeRule
    dtype: Dtype
    role: Role

    def numel(self, m: int, n: int, r: int) -> int:
        return math.prod(self.shape(m, n, r))

    def nbytes(self, m: int, n: int, r: int, *, state_bits: int, param_bytes: int) -> int:
        return tensor_bytes(self.numel(m, n, r), self.dtype, state_bits=state_bits, param_bytes=param_bytes)


def tensor_bytes(numel: int, dtype: Dtype, *, state_bits: int, param_bytes: int) -> int:
    """Bytes of one tensor of `numel` values under a dtype rule.

    8-bit: numel + 4·⌈numel/256⌉ (uint8 codes + fp32 absmax per block), fp32 below 4096 values (bitsandbytes).
    """
    if dtype is Dtype.FP32:
        return 4 * numel
    if dtype is Dtype.PARAM:
        return param_bytes * numel
    if state_bits == 8:
        if numel < QUANT_MIN_NUMEL:
            return 4 * numel
        return numel + 4 * math.ceil(numel / QUANT_BLOCK)
    return numel * state_bits // 8


# --- shape rules shared by the methods (GaLore "std" side selection) -------------------------------------------


def moment_shape(m: int, n: int, r: int) -> Shape:
    """R = G·P (m × r) when m ≥ n, else R = Pᵀ·G (r × n)."""
    return (m, r) if m >= n else (r, n)


def basis_shape(m: int, n: int, r: int) -> Shape:
    """P: n × r when m ≥ n (right side), else m × r (left side)."""
    return (n, r) if m >= n else (m, r)


def full_shape(m: int, n: int, r: int) -> Shape:
    return (m, n)



@dataclass(frozen=True, kw_only=True, slots=True)
class StateLayout:
    """What one projected weight keeps between steps (`states`), what a refresh of P allocates on top
    (`workspace`) and what an ordinary step allocates on top (`step_workspace`)."""

    states: tuple[TensorSpec, ...]
    workspace: tuple[TensorSpec, ...] = ()
    step_workspace: tuple[TensorSpec, ...] = ()


LayoutRule = Callable[[Mapping[str, Any]], StateLayout]
REFRESH_COSTS = ("svd", "gemm", "none")
SUBSPACE_KINDS = ("svd", "tracked", "random")


@dataclass(frozen=True, kw_only=True, slots=True)
class MethodSpec:
    """Everything the rest of subprof needs to know about a method; nothing outside `subprof.methods` names one.

    - `layout`: the declared tensors, or a function of the method's options (resolved with the rule's defaults)
      when an option changes memory (e.g. recovery on/off). The optimizer allocates exactly this; the memory
      model, the planner and the trace read it.
    - `rule`: the `ProjectionRule` subclass (torch) that updates P; None for full-rank baselines (`project=False`,
      every weight keeps `layout.states` of its own shape).
    - `subspace`: what P is, for the quality model (`subprof.plan.evidence`) — "svd" (the fresh top-r singular
      subspace at each refresh: GaLore, SUMO), "tracked" (moved towards the gradient's top subspace by incremental
      steps at each update: OSD, Ori, SubTrack) or "random" (drawn or walked without the gradient: GrassJump,
      GrassWalk).
    - `refresh_cost`: what a projection update costs — "svd" (a decomposition of G), "gemm" (products with G:
      streaming and geodesic updates, random draws) or "none" — and `refresh_flops(m, n, r)` how much.
    - defaults: the update gap and the gaps `plan` searches, the scale α, the state precisions it supports.
    - `timing_options`: rule options used when `proj` times one update; `timing_variants`: further named timed
      forms (name → options), e.g. OSD's autograd form.
    """

    name: str
    title: str
    summary: str
    project: bool
    layout: StateLayout | LayoutRule
    rule: type | None = None
    refresh_cost: str = "none"
    subspace: str = "svd"
    refresh_flops: Callable[[int, int, int], float] = field(default=lambda m, n, r: 0.0)
    default_update_gap: int = 200
    update_gaps: tuple[int, ...] = (50, 200, 500)
    default_scale: float = 0.25
    paper: str = ""
    state_bits_supported: tuple[int, ...] = (32, 16, 8)
    timing_options: Mapping[str, Any] = field(default_factory=dict)
    timing_variants: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.refresh_cost not in REFRESH_COSTS:
            raise ValueError(f"{self.name}: refresh_cost must be one of {REFRESH_COSTS}, got {self.refresh_cost!r}")
        if self.subspace not in SUBSPACE_KINDS:
            raise ValueError(f"{self.name}: subspace must be one of {SUBSPACE_KINDS}, got {self.subspace!r}")
        if self.project and self.rule is None:
            raise ValueError(f"{self.name}: a projected method needs its rule class")

    # --- options ------------------------------------------------------------------------------------------------
    @property
    def option_defaults(self) -> dict[str, Any]:
        """The rule's options with their defaults (`ProjectionRule.defaults`); none for full-rank baselines."""
        return dict(getattr(self.rule, "defaults", {}) or {})

    def resolve_options(self, options: Mapping[str, Any] | None = None) -> dict[str, Any]:
        """`options` over the defaults; an unknown option is a ValueError naming the known ones."""
        options = dict(options or {})
        known = self.option_defaults
        unknown = sorted(set(options) - set(known))
        if unknown:
            raise ValueError(f"{self.name}: unknown option(s) {', '.join(unknown)}; known: "
                             f"{', '.join(sorted(known)) or 'none'}")
        return {**known, **options}

    def layout_for(self, options: Mapping[str, Any] | None = None) -> StateLayout:
        """The declared tensors under these options."""
        if isinstance(self.layout, StateLayout):
            if options:
                self.resolve_options(options)  # still reject unknown options
            return self.layout
        return self.layout(self.resolve_options(options))

    # --- bytes ----------------------------------------------------------------------------------------------------
    def state_bytes(self, m: int, n: int, r: int, *, state_bits: int, param_bytes: int,
                    options: Mapping[str, Any] | None = None) -> dict[str, int]:
        """Bytes kept between steps for one projected weight, by role (optimizer_states, projection_matrices)."""
        out: dict[str, int] = {}
        for t in self.layout_for(options).states:
            out[t.role.value] = out.get(t.role.value, 0) + t.nbytes(m, n, r, state_bits=state_bits,
                                                                     param_bytes=param_bytes)
        return out

    def workspace_bytes(self, m: int, n: int, r: int, *, state_bits: int, param_bytes: int,
                        options: Mapping[str, Any] | None = None) -> int:
        """Transient bytes while P is refreshed (e.g. a full SVD's fp32 copy and factors)."""
        return sum(t.nbytes(m, n, r, state_bits=state_bits, param_bytes=param_bytes)
                   for t in self.layout_for(options).workspace)

    def step_workspace_bytes(self, m: int, n: int, r: int, *, state_bits: int, param_bytes: int,
                             options: Mapping[str, Any] | None = None) -> int:
        """Transient bytes of an ordinary step on one weight (projected gradient, back-projected update, …)."""
        return sum(t.nbytes(m, n, r, state_bits=state_bits, param_bytes=param_bytes)
                   for t in self.layout_for(options).step_workspace)

    def gaps(self) -> tuple[int, ...]:
        """Update gaps `plan` searches (one `(0,)` placeholder for full-rank baselines)."""
        return self.update_gaps if self.project else (0,)

    def timed_updates(self) -> dict[str, dict[str, Any]]:
        """What `proj` times for this method: its own name (with `timing_options`) and each named variant."""
        if self.rule is None:
            return {}
        return {self.name: dict(self.timing_options),
                **{k: {**self.timing_options, **v} for k, v in self.timing_variants.items()}}


def svd_flops(m: int, n: int, r: int) -> float:
    """Dense SVD of an m×n matrix (thin, with vectors): ~ 4·m·n·k + 8·k³ flops with k = min(m, n)
    (Golub & Van Loan §8.6; used only to amortise refresh cost in throughput predictions)."""
    k = min(m, n)
    return 4.0 * m * n * k + 8.0 * k**3


def two_gemm_flops(m: int, n: int, r: int) -> float:
    """The floor of a streaming update: G(GᵀP), two m×n×r GEMMs = 4·m·n·r flops."""
    return 4.0 * m * n * r
