"""What a method stores, as pure data: the declaration that both the memory model and the optimizer read.

A subspace method keeps, per projected weight W (m × n, torch's out × in), a few tensors whose shapes are functions
of (m, n, r), and holds a transient workspace while it updates its projection. `MethodSpec` declares both; the
optimizer code (`subprof.optim`, torch) allocates exactly what is declared, and a test holds the declared bytes
equal to the bytes found in `optimizer.state`. No torch here: `plan` and `estimate` must start in well under 0.5 s.

Projection convention (GaLore "std", METHODS.md): if m ≥ n, P is n × r and R = G·P is m × r; if m < n, P is
m × r and R = Pᵀ·G is r × n. So moments on R hold r·max(m, n) numbers and P holds min(m, n)·r.

Per rank under FSDP2 (the end of this file): which dim of each declared tensor follows the weight's sharded dim
(`TensorSpec.axes`), how a projected weight is sharded (`weight_sharding`) and what a method communicates per step
and per refresh (`MethodSpec.comms`). The per-rank memory model, the communication model, the distributed trace
and the distributed optimizer all read these.
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
# unprojected tensors up to this many values are stepped together in one foreach pass (`SubspaceAdamW.step`),
# larger ones alone
FOREACH_NUMEL = 1 << 20


class Dtype(Enum):
    """How a declared tensor's element type is chosen."""

    STATE = "state"  # follows state_bits: 32 → fp32, 16 → bf16, 8 → blockwise 8-bit
    PARAM = "param"  # the weight's own dtype (bf16 in pure-bf16 training, fp32 with mixed precision)
    FP32 = "fp32"  # always fp32 (e.g. the SVD input upcast, small factors)
    FP64 = "fp64"  # always fp64 (e.g. a Gram matrix all-reduced for an accurate eigendecomposition)


class Role(Enum):
    """Which memory component a tensor is reported under."""

    MOMENT = "optimizer_states"
    PROJECTION = "projection_matrices"
    WORKSPACE = "projection_workspace"


@dataclass(frozen=True, kw_only=True, slots=True)
class TensorSpec:
    """One tensor: a name as it appears in `optimizer.state[p]`, a shape rule (m, n, r) → shape, a dtype rule.

    `axes` (m, n, r) → one label per dim: "m" or "n" when that dim runs along the weight's rows or columns (so it is
    sharded when the weight is sharded on that side), None otherwise. Left out, it follows the shape rule:
    `moment_shape` names its long side, `full_shape` both sides, every other rule (P, r×r factors, the SVD's
    factors) none — such a tensor is whole on every rank that holds it."""

    name: str
    shape: ShapeRule
    dtype: Dtype
    role: Role
    axes: "AxesRule | None" = None

    def numel(self, m: int, n: int, r: int) -> int:
        return math.prod(self.shape(m, n, r))

    def nbytes(self, m: int, n: int, r: int, *, state_bits: int, param_bytes: int) -> int:
        return tensor_bytes(self.numel(m, n, r), self.dtype, state_bits=state_bits, param_bytes=param_bytes)

    def shard_dim(self, m: int, n: int, r: int, weight_dim: int) -> int | None:
        """The dim of this tensor that follows the weight's sharded dim (0: rows "m", 1: columns "n"), or None when
        the tensor is whole on every rank that holds it."""
        side = "m" if weight_dim == 0 else "n"
        axes = (self.axes or _SHAPE_AXES.get(self.shape, replicated))(m, n, r)
        return next((i for i, label in enumerate(axes) if label == side), None)

    def rank_numel(self, m: int, n: int, r: int, shard: "WeightShard") -> int:
        """Values rank 0 holds when the weight is sharded as `shard`: the dim that follows the sharded side is cut
        to ⌈length / ranks⌉ (torch.chunk: rank 0 gets a full chunk, so it holds the most); other tensors whole."""
        shape = list(self.shape(m, n, r))
        dim = self.shard_dim(m, n, r, shard.dim) if shard.ranks > 1 else None
        if dim is not None:
            shape[dim] = -(-shape[dim] // shard.ranks)
        return math.prod(shape)

    def rank_nbytes(self, m: int, n: int, r: int, shard: "WeightShard", *, state_bits: int,
                    param_bytes: int) -> int:
        """Bytes on rank 0 (8-bit states quantise the local shard in blocks of 256, as `nbytes` does the whole)."""
        return tensor_bytes(self.rank_numel(m, n, r, shard), self.dtype, state_bits=state_bits,
                            param_bytes=param_bytes)


def tensor_bytes(numel: int, dtype: Dtype, *, state_bits: int, param_bytes: int) -> int:
    """Bytes of one tensor of `numel` values under a dtype rule.

    8-bit: numel + 4·⌈numel/256⌉ (uint8 codes + fp32 absmax per block), fp32 below 4096 values (bitsandbytes).
    """
    if dtype is Dtype.FP32:
        return 4 * numel
    if dtype is Dtype.FP64:
        return 8 * numel
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

# --- base optimizers: where a layout's base moments go (the bases themselves: `subprof.methods.bases`) -------------
BASE_MOMENTS = "base_moments"
# name → `bases.BaseSpec`, filled by `subprof.methods.bases` (imported by the method files that list bases), so that
# this module, which every declaration imports, imports none of them
BASES: dict[str, Any] = {}


def base_moments(shape: ShapeRule, axes: "AxesRule | None" = None) -> TensorSpec:
    """The placeholder a method declares for its base's moments on a tensor of `shape` (`expand` fills it in)."""
    return TensorSpec(name=BASE_MOMENTS, shape=shape, dtype=Dtype.STATE, role=Role.MOMENT, axes=axes)


def expand(states: tuple[TensorSpec, ...], base: str) -> tuple[TensorSpec, ...]:
    """`states` with every `base_moments` placeholder replaced by the base's tensors of that shape."""
    out: list[TensorSpec] = []
    for t in states:
        out += BASES[base].moments(t.shape, t.axes or _SHAPE_AXES.get(t.shape, replicated)) \
            if t.name == BASE_MOMENTS else [t]
    return tuple(out)


def base_step_workspace(states: tuple[TensorSpec, ...], base: str) -> tuple[TensorSpec, ...]:
    """The base's extra step workspace for each placeholder among `states`."""
    return tuple(w for t in states if t.name == BASE_MOMENTS
                 for w in BASES[base].step_workspace(t.shape, t.axes or _SHAPE_AXES.get(t.shape, replicated)))
_LAYOUTS: dict[tuple, StateLayout] = {}  # MethodSpec.layout_for's cache
CommRule = Callable[[Mapping[str, Any]], "tuple[CommSpec, ...]"]
REFRESH_COSTS = ("svd", "gemm", "none")
# "scaled": the projection only estimates a scaling of the full-rank gradient (APOLLO, APOLLO-Mini)
SUBSPACE_KINDS = ("svd", "tracked", "random", "scaled")


@dataclass(frozen=True, kw_only=True, slots=True)
class QualityTraits:
    """What the quality model (`subprof.plan.quality`) reads of a method besides its subspace kind: whether Adam's
    moments are carried into the new basis at a refresh (SubTrack++'s projection-aware Adam, SUMO's Q_newᵀQ_old m),
    whether the gradient outside the subspace is added back (Fira-style recovery, SUMO's residual) and whether the
    update is orthogonalised (SUMO). Each changes what a refresh or a low rank costs. `moment_decay`: the per-step
    decay of the method's own slowest moment where it keeps one instead of its base's (SUMO's momentum μ); None:
    the base's (`BaseSpec.moment_decay`, Adam's β₂ for AdamW)."""

    moment_transfer: bool = False
    recovery: bool = False
    orthogonalised: bool = False
    moment_decay: float | None = None


def traits_from_options(options: Mapping[str, Any]) -> QualityTraits:
    """The common case: the rule's `moment_transfer` and `recovery` options (None/absent: off)."""
    return QualityTraits(moment_transfer=bool(options.get("moment_transfer")), recovery=bool(options.get("recovery")))


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
      steps at each update: OSD, Ori, SubTrack), "random" (drawn or walked without the gradient: GrassJump,
      GrassWalk) or "scaled" (the projection only estimates a scaling of the full-rank gradient: APOLLO).
    - `refresh_cost`: what a projection update costs — "svd" (a decomposition of G), "gemm" (products with G:
      streaming and geodesic updates, random draws) or "none" — and `refresh_flops(m, n, r)` how much.
    - defaults: the update gap and the gaps `plan` searches, the scale α, the state precisions it supports.
    - `timing_options`: rule options used when `proj` times one update; `timing_variants`: further named timed
      forms (name → options), e.g. OSD's autograd form.
    - `variants`: named alternatives to the defaults (name → options), each a documented deviation or the
      authors' other setting; tests run every one (declared bytes == `optimizer.state`).
    - `bases`: the base optimizers (`subprof.methods.bases`) it runs, chosen by the option "base" that every
      method has (default "adamw"); a layout's `base_moments` placeholder becomes the base's tensors.
    - `default_lr` and `lr_source`: the peak learning rate the method's authors publish for LLaMA pretraining at
      the small end (60m–350m), and where it comes from; used when no lr is given (burst) and as the centre of a
      burst's lr grid.
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
    update_gaps: tuple[int, ...] = (50, 100, 200, 500, 1000)
    default_scale: float = 0.25
    default_lr: float = 1e-3
    lr_source: str = ""
    paper: str = ""
    state_bits_supported: tuple[int, ...] = (32, 16, 8)
    timing_options: Mapping[str, Any] = field(default_factory=dict)
    timing_variants: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    variants: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    comms: "tuple[CommSpec, ...] | CommRule" = ()
    traits: Callable[[Mapping[str, Any]], QualityTraits] = traits_from_options
    fixed_rank: int | None = None  # a method that runs at one rank whatever is asked (APOLLO-Mini: 1)
    # base optimizers its moments may run (`subprof.methods.bases`; option "base", the first is the default)
    bases: tuple[str, ...] = ("adamw",)

    def __post_init__(self) -> None:
        if self.refresh_cost not in REFRESH_COSTS:
            raise ValueError(f"{self.name}: refresh_cost must be one of {REFRESH_COSTS}, got {self.refresh_cost!r}")
        if self.subspace not in SUBSPACE_KINDS:
            raise ValueError(f"{self.name}: subspace must be one of {SUBSPACE_KINDS}, got {self.subspace!r}")
        if self.project and self.rule is None:
            raise ValueError(f"{self.name}: a projected method needs its rule class")
        if self.default_lr <= 0:
            raise ValueError(f"{self.name}: default_lr must be positive, got {self.default_lr}")
        for name, options in self.variants.items():
            unknown = sorted(set(options) - set(self.option_defaults))
            if unknown:
                raise ValueError(f"{self.name}: variant {name!r} sets unknown option(s) {', '.join(unknown)}")

    # --- options ------------------------------------------------------------------------------------------------
    @property
    def option_defaults(self) -> dict[str, Any]:
        """The rule's options with their defaults (`ProjectionRule.defaults`), and "base" (every method's)."""
        return {"base": self.bases[0], **(getattr(self.rule, "defaults", {}) or {})}

    def resolve_options(self, options: Mapping[str, Any] | None = None) -> dict[str, Any]:
        """`options` over the defaults; an unknown option is a ValueError naming the known ones."""
        options = dict(options or {})
        known = self.option_defaults
        unknown = sorted(set(options) - set(known))
        if unknown:
            raise ValueError(f"{self.name}: unknown option(s) {', '.join(unknown)}; known: "
                             f"{', '.join(sorted(known)) or 'none'}")
        resolved = {**known, **options}
        if resolved["base"] not in self.bases:
            raise ValueError(f"{self.name} runs base optimizer(s) {', '.join(self.bases)}; got {resolved['base']!r}")
        return resolved

    def rule_options(self, options: Mapping[str, Any] | None = None) -> dict[str, Any]:
        """The options its rule takes: `options` without "base" (the optimizer's, not the rule's)."""
        return {k: v for k, v in (options or {}).items() if k != "base"}

    def base_of(self, options: Mapping[str, Any] | None = None) -> str:
        return (options or {}).get("base") or self.bases[0]

    def layout_for(self, options: Mapping[str, Any] | None = None) -> StateLayout:
        """The declared tensors under these options, the base's moments in place of `base_moments` (cached per
        method and options: `plan` asks for them thousands of times)."""
        key = (id(self), repr(sorted((options or {}).items())))
        if key not in _LAYOUTS:
            resolved = self.resolve_options(options)
            layout = self.layout if isinstance(self.layout, StateLayout) else self.layout(resolved)
            base = resolved["base"]
            _LAYOUTS[key] = StateLayout(states=expand(layout.states, base), workspace=layout.workspace,
                                        step_workspace=layout.step_workspace + base_step_workspace(layout.states,
                                                                                                   base))
        return _LAYOUTS[key]

    @property
    def periodic(self) -> bool:
        """A projected method whose subspace moves once every `update_gap` steps (its published gap is > 1:
        GaLore, SUMO, SubTrack++, GrassWalk …), not every step (OSD, Ori)."""
        return self.project and self.default_update_gap > 1

    def quality_traits(self, options: Mapping[str, Any] | None = None) -> QualityTraits:
        """The quality model's traits under these options (`traits` of the resolved options)."""
        return self.traits(self.resolve_options(options)) if self.project else QualityTraits()

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

    # --- per rank under FSDP2 (see the end of this file) ----------------------------------------------------------
    def weight_shard(self, m: int, n: int, ranks: int) -> "WeightShard":
        """How FSDP2 shards one of this method's projected weights over `ranks`: projected methods on the long side
        (so R, its moments and the update stay local), full-rank baselines on dim 0 (FSDP2's default)."""
        return weight_sharding(m, n, ranks, long_side=self.project)

    def rank_state_bytes(self, m: int, n: int, r: int, *, ranks: int, state_bits: int, param_bytes: int,
                         options: Mapping[str, Any] | None = None) -> dict[str, int]:
        """`state_bytes` on rank 0 when the weight is sharded over `ranks` (1: identical to `state_bytes`)."""
        shard = self.weight_shard(m, n, ranks)
        out: dict[str, int] = {}
        for t in self.layout_for(options).states:
            out[t.role.value] = out.get(t.role.value, 0) + t.rank_nbytes(m, n, r, shard, state_bits=state_bits,
                                                                          param_bytes=param_bytes)
        return out

    def rank_step_workspace_bytes(self, m: int, n: int, r: int, *, ranks: int, state_bits: int, param_bytes: int,
                                  options: Mapping[str, Any] | None = None) -> int:
        """The step workspace on rank 0, plus the receive buffers of the step's gathers."""
        shard = self.weight_shard(m, n, ranks)
        local = sum(t.rank_nbytes(m, n, r, shard, state_bits=state_bits, param_bytes=param_bytes)
                    for t in self.layout_for(options).step_workspace)
        return local + self._receive_bytes(m, n, r, shard, (When.STEP,), param_bytes, options)

    def rank_workspace_bytes(self, m: int, n: int, r: int, *, ranks: int, state_bits: int, param_bytes: int,
                             options: Mapping[str, Any] | None = None) -> int:
        """The refresh workspace on the rank that refreshes. A refresh that gathers the gradient (an SVD) runs on
        the whole gathered G at its owner rank: the whole declared workspace + the gathered G; otherwise the
        declared tensors are cut as their axes say."""
        shard = self.weight_shard(m, n, ranks)
        whole = WeightShard(dim=shard.dim, ranks=1) if self.gathers_at_refresh(m, n, ranks, options) else shard
        declared = sum(t.rank_nbytes(m, n, r, whole, state_bits=state_bits, param_bytes=param_bytes)
                       for t in self.layout_for(options).workspace)
        return declared + self._receive_bytes(m, n, r, shard, (When.REFRESH, When.FIRST), param_bytes, options)

    def comms_for(self, options: Mapping[str, Any] | None = None) -> "tuple[CommSpec, ...]":
        """The declared collectives under these options (`comms` may be a function of them, like `layout`)."""
        resolved = self.resolve_options(options)
        own = self.comms if isinstance(self.comms, tuple) else self.comms(resolved)
        base = BASES[resolved["base"]]
        return own + (base.comms if self.project else base.plain_comms)

    def gathers_at_refresh(self, m: int, n: int, ranks: int, options: Mapping[str, Any] | None = None) -> bool:
        """Whether a refresh needs the whole gradient of the weight on one rank (ranks > 1 and a declared GATHER)."""
        if ranks <= 1:
            return False
        shard = self.weight_shard(m, n, ranks)
        return any(c.op is Collective.GATHER and c.when is not When.STEP and c.applies(m, n, shard)
                   for c in self.comms_for(options))

    def comm_bytes(self, m: int, n: int, r: int, *, ranks: int, when: "When", param_bytes: int,
                   options: Mapping[str, Any] | None = None) -> dict[str, int]:
        """Payload bytes per collective kind for one weight at `when` (the whole tensor each collective moves; the
        wire bytes each rank sends follow from the algorithm, `subprof.plan.comm`). Nothing when ranks == 1: the
        whole gradient is on every rank (one GPU, or DDP after its all-reduce)."""
        out: dict[str, int] = {}
        if ranks <= 1:
            return out
        shard = self.weight_shard(m, n, ranks)
        for c in self.comms_for(options):
            if c.when is when and c.applies(m, n, shard):
                out[c.op.value] = out.get(c.op.value, 0) + c.nbytes(m, n, r, param_bytes=param_bytes)
        return out

    def _receive_bytes(self, m: int, n: int, r: int, shard: "WeightShard", whens: tuple["When", ...],
                       param_bytes: int, options: Mapping[str, Any] | None) -> int:
        """New memory a gather or all-gather hands its receiver: the whole tensor."""
        if shard.ranks <= 1:
            return 0
        return sum(c.nbytes(m, n, r, param_bytes=param_bytes) for c in self.comms_for(options)
                   if c.when in whens and c.op in (Collective.GATHER, Collective.ALL_GATHER) and c.applies(m, n, shard))

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


# --- per rank under FSDP2: where each declared tensor lives and what a method communicates ------------------------
#
# FSDP2 (`torch.distributed.fsdp.fully_shard`) splits every parameter on one dim over the W ranks of its shard group
# with torch.chunk: ⌈d/W⌉ per rank, the last ranks shorter or empty. Parameters and gradients are padded to ⌈d/W⌉ on
# every rank; everything else (optimizer states made by zeros_like of the local shard) holds its own chunk, so
# rank 0 holds the most — the per-rank memory model describes rank 0.
#
# Layout assumed for projected weights (the distributed optimizer's design, /work/notes/dist_optim.md §3, §11):
# shard the weight on its LONG side — Shard(0) when m ≥ n, Shard(1) when m < n and W divides n (FSDP2 refuses
# uneven Shard(1)), else Shard(0). Then ("aligned") R = G·P or PᵀG, Adam on R and the back-projection are local, and
# R's moments are sharded like the weight (`moment_shape` names its long side). P (d×r) is replicated. A weight left
# on Shard(0) with m < n ("crossed") needs R = Σ_ranks P_localᵀ G_local, one all-reduce of r×n per step, and keeps
# R's moments whole on every rank (the all-reduced R is replicated): the declarations say both.
# Streaming updates contract G over its long side: A·P = g(gᵀP) is a sum over shards → one all-reduce of d·r + 1
# values (‖G‖² rides along). An SVD refresh needs the whole gradient of that weight on one rank: the plan assumes
# gather to an owner rank (weight index mod W) + broadcast of P (d×r) — the SVDs are spread over the ranks and only
# the owner holds G and the SVD workspace; all-gathering G to every rank would cost the same memory per rank, W×
# the SVD work and more traffic. Random bases (GrassWalk/GrassJump) come from one generator state on every rank and
# cost nothing. Payload dtypes: gradient-sized tensors in the gradient's dtype (PARAM), small factors in fp32.

Axes = tuple["str | None", ...]
AxesRule = Callable[[int, int, int], Axes]


def moment_axes(m: int, n: int, r: int) -> Axes:
    """R's long side: (m, r) runs along the rows when m ≥ n, (r, n) along the columns otherwise."""
    return ("m", None) if m >= n else (None, "n")


def full_axes(m: int, n: int, r: int) -> Axes:
    return ("m", "n")


def replicated(m: int, n: int, r: int) -> Axes:
    """No dim follows the weight: whole on every rank (P, r×r factors, the SVD's factors)."""
    return ()


_SHAPE_AXES: dict[Callable, AxesRule] = {moment_shape: moment_axes, full_shape: full_axes}


@dataclass(frozen=True, kw_only=True, slots=True)
class WeightShard:
    """A weight sharded on `dim` (0 rows, 1 columns) over `ranks` ranks (1: whole)."""

    dim: int
    ranks: int

    def aligned(self, m: int, n: int) -> bool:
        """Sharded on its long side (m ≥ n on rows, or m < n on columns): projecting is local."""
        return self.ranks <= 1 or (self.dim == 0) == (m >= n)


def weight_sharding(m: int, n: int, ranks: int, *, long_side: bool) -> WeightShard:
    """Shard(0), or with `long_side` Shard(1) for m < n when `ranks` divides n (module comment above)."""
    if long_side and m < n and ranks > 1 and n % ranks == 0:
        return WeightShard(dim=1, ranks=ranks)
    return WeightShard(dim=0, ranks=ranks)


class Collective(Enum):
    ALL_REDUCE = "all_reduce"
    ALL_GATHER = "all_gather"
    GATHER = "gather"  # to the weight's owner rank
    BROADCAST = "broadcast"  # from the weight's owner rank


class When(Enum):
    STEP = "step"  # every optimizer step
    REFRESH = "refresh"  # every update_gap steps (step 0 too, unless the method declares a FIRST: then that)
    FIRST = "first"  # once, at the first step (an SVD initialisation), in place of that step's refresh


@dataclass(frozen=True, kw_only=True, slots=True)
class CommSpec:
    """One collective a method issues per projected weight when the weight is sharded (FSDP/HSDP shard group).
    `shape` is the whole tensor moved; `layout` says for which placement it is needed: "aligned", "crossed" or
    "any" (`WeightShard.aligned`)."""

    name: str
    op: Collective
    shape: ShapeRule
    dtype: Dtype
    when: When
    layout: str = "any"

    def __post_init__(self) -> None:
        if self.layout not in ("aligned", "crossed", "any"):
            raise ValueError(f"{self.name}: layout must be aligned, crossed or any, got {self.layout!r}")
        if self.dtype is Dtype.STATE:
            raise ValueError(f"{self.name}: a collective's dtype is PARAM, FP32 or FP64")

    def applies(self, m: int, n: int, shard: WeightShard) -> bool:
        if self.layout == "any":
            return True
        return shard.aligned(m, n) == (self.layout == "aligned")

    def nbytes(self, m: int, n: int, r: int, *, param_bytes: int) -> int:
        return tensor_bytes(math.prod(self.shape(m, n, r)), self.dtype, state_bits=32, param_bytes=param_bytes)


def _dr_plus_one(m: int, n: int, r: int) -> Shape:
    return (min(m, n) * r + 1,)


def _long_r_plus_one(m: int, n: int, r: int) -> Shape:
    return (max(m, n) * r + 1,)


# R = Σ P_localᵀ G_local on a crossed weight: every step, in G's dtype; R's moments are then whole on every rank
CROSSED_PROJECTION = CommSpec(name="projected_gradient", op=Collective.ALL_REDUCE, shape=moment_shape,
                              dtype=Dtype.PARAM, when=When.STEP, layout="crossed")
# an SVD of the whole gradient at its owner, P broadcast back
SVD_GATHER = CommSpec(name="gradient", op=Collective.GATHER, shape=full_shape, dtype=Dtype.PARAM,
                      when=When.REFRESH)
SVD_BROADCAST = CommSpec(name="projector", op=Collective.BROADCAST, shape=basis_shape, dtype=Dtype.PARAM,
                         when=When.REFRESH)
SVD_REFRESH_COMMS = (SVD_GATHER, SVD_BROADCAST, CROSSED_PROJECTION)
# A·P = g(gᵀP) and ‖G‖² at each P update (every update_gap steps; the streaming methods' default gap is 1): one
# all-reduce of d·r + 1 fp32 values when aligned; crossed: gᵀP (N·r + 1) is the sum, then the rows of g(gᵀP) are
# all-gathered (d·r). Ori's Oja++ moves only its active columns (r/2 at first): d·r + 1 is its bound
STREAMING_COMMS = (
    CommSpec(name="covariance_product", op=Collective.ALL_REDUCE, shape=_dr_plus_one, dtype=Dtype.FP32,
             when=When.REFRESH, layout="aligned"),
    CommSpec(name="gradient_t_projector", op=Collective.ALL_REDUCE, shape=_long_r_plus_one, dtype=Dtype.FP32,
             when=When.REFRESH, layout="crossed"),
    CommSpec(name="covariance_rows", op=Collective.ALL_GATHER, shape=basis_shape, dtype=Dtype.FP32,
             when=When.REFRESH, layout="crossed"),
    CROSSED_PROJECTION,
)
# SVD at step 0 only (SubTrack's initialisation; OSD/Ori with init="svd")
SVD_FIRST_COMMS = (CommSpec(name="gradient", op=Collective.GATHER, shape=full_shape, dtype=Dtype.PARAM,
                            when=When.FIRST),
                   CommSpec(name="projector", op=Collective.BROADCAST, shape=basis_shape, dtype=Dtype.PARAM,
                            when=When.FIRST))
# the norm of the recovery residual (its growth limiter), summed over shards: one value per step
RECOVERY_NORM = CommSpec(name="recovery_norm", op=Collective.ALL_REDUCE, shape=lambda m, n, r: (1,),
                         dtype=Dtype.FP32, when=When.STEP)
# Once per optimizer step for the whole optimizer (not per weight) when parameters are sharded: the index of the
# first non-finite gradient, agreed over the ranks (all-reduce MIN of one int64), so every rank raises or skips alike.
# Per-layer updates agree per parameter instead, on ‖G‖² (one fp32 value per trainable parameter, all-reduced per
# FSDP unit), which also gives the lagged clipping's global norm.
NONFINITE_AGREEMENT = CommSpec(name="nonfinite_index", op=Collective.ALL_REDUCE, shape=lambda m, n, r: (1,),
                               dtype=Dtype.FP64, when=When.STEP)
LAYERWISE_GRAD_NORM = CommSpec(name="grad_norm_sq", op=Collective.ALL_REDUCE, shape=lambda m, n, r: (1,),
                               dtype=Dtype.FP32, when=When.STEP)
