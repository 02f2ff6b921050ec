"""The quality model: the predicted validation-loss gap to full-rank AdamW of a low-rank configuration, in nats,

    Δ = S(N) · g(configuration),      S(N) = exp(a + b·ln(N / 10⁸))      (N: the model's parameters)

with g a sum of terms that follow the mechanisms (docs/quality.md derives each):

    rank       Σ_w share_w · ((r_w/r₀)^(−p) − (d_w/r₀)^(−p))   the subspace leaves gradient out: the tail, from rank r
                                                               to the side d, of a gradient spectrum decaying like a
                                                               power of the singular index (σᵢ² ∝ i^−(1+p)), the same
                                                               at every width — what a rank leaves out follows the
                                                               rank far more than the width, so the same r/d leaves
                                                               out less of a wider matrix; 0 at full rank; r₀ = 16
               × (1 − ω)   with recovery (Fira, SUMO's residual, SubTrack++, GrassWalk/Jump add the rest back)
               × ε         for scaled full-rank updates (APOLLO: the projection only estimates a scaling)
    staleness  c_s · (T·tokens per step/131,072 − T₀) / 1000   the basis ages between refreshes; drift follows the
                                                               tokens trained (131,072 = 512 × 256, GaLore's batch)
    refresh    c_r · (M_β(T) · (κ if moments are carried) − M_β(T₀))   a refresh leaves the moments in the old basis
                                                               (GaLore keeps them) until they decay; M_β(T) =
                                                               (1 − β^T) / (T·(1 − β)) is the share of an interval of T
                                                               steps they stay misaligned, β the decay of the slowest
                                                               moment (Adam's β₂ = 0.999: M = 0.95 at T = 100, 0.63 at
                                                               1,000, so rarer refreshes pay less until T ≫ 1/(1 − β);
                                                               SUMO's one momentum, μ = 0.95, is realigned within ~20
                                                               steps and pays almost none); moment transfer pays κ;
                                                               trackers that move every step (T₀ = 1) pay none
               (staleness is 0 at the published setting — T₀ and GaLore's batch — and so is the refresh term of a
               method that keeps its moments, so what that setting costs sits in the method terms; against a
               staleness that grows with T the gap has an optimum, earlier the faster the moments decay)
    method     δ_kind + δ_method                               trackers (OSD, Ori, SubTrack) rotate every step instead
                                                               of refreshing; per-method terms the tables single out
    base       δ_base + δ_P (full rank: δ_full,base)           Lion/Adafactor on the moments, OSD's optimizer of P,
                                                               full-rank Lion/Adafactor, each against Adam
    bias       − β nats for a paper's own method (outside S)   authors tune what they propose; fitted, not believed

T is the update gap in optimizer steps and T₀ the method's published gap. A tracker that moves every step (OSD, Ori:
T₀ = 1) pays no refresh term — its g steps between moves count as staleness only; SubTrack++ moves its basis every
T₀ = 200 steps along a geodesic and pays the refresh term like an SVD method, less with its moment transfer.
Full-rank AdamW (and 8-bit AdamW) is g = 0. The coefficients are fitted once to
within-table differences of published tables and our own long CPU runs (`subprof.plan.quality_fit`, written to
`profiles/evidence/quality_fit.json`; all coefficients at once, each pulled towards its mechanism default, the free
offsets towards 0); within one table every row shares S and the table's own baseline, so the
ordering of configurations depends on g alone and leave-one-table-out measures exactly that. `plan` ranks by −Δ and
treats candidates whose g differ by less than the cross-validated error σ_g as indistinguishable (the band,
S(N)·σ_g nats). Pure Python, no torch.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field, replace
from functools import cache, lru_cache
from pathlib import Path

from subprof.catalog import ModelConfig, load_model
from subprof.config import TrainConfig
from subprof.errors import SubprofError
from subprof.methods import REGISTRY
from subprof.methods.bases import BASES as BASE_SPECS
from subprof.methods.spec import QualityTraits
from subprof.plan.published import TableRow, evidence_dir

REF_TOKENS = 512 * 256  # tokens per optimizer step of the GaLore/OSD recipes: the unit of the staleness interval
REF_GAP = 200  # GaLore's default update gap: a row or configuration without its own gap is read at it
REF_PARAMS = 1e8
RANK_UNIT = 16  # r₀, the rank the rank term counts in: it sets that term's size against the others' priors (chosen by
# leave-one-table-out among 8, 16, 32 and 128 on the 2026-12-07 evidence; docs/quality.md lists each figure)
ADAM_BETA2 = 0.999  # a Setting's moment decay when none is given (full rank: no refresh term reads it)
FIT_FILE = "quality_fit.json"
COMMAND = "python -m subprof.plan.quality_fit"
UNIT = "−(predicted validation-loss gap to full-rank AdamW, nats)"

FULL_RANK = ("adamw", "adamw8bit")
# Methods of published tables that subprof does not train, with what the model reads of them (the others are
# read from their MethodSpec: subspace kind and traits).
EVIDENCE_ONLY: dict[str, tuple[str, QualityTraits]] = {
    "q-galore": ("svd", QualityTraits()),  # GaLore with an INT4 projection and adaptive gaps (arXiv 2407.08296)
}
# Row variants that are a configuration the model can place: name → traits replacing the method's.
VARIANTS: dict[str, QualityTraits | None] = {
    "": None, "8bit": None, "subtrack++": None, "half-rank": None, "channel": None,
    "grassmannian-only": QualityTraits(),
    "grassmannian+projection-aware": QualityTraits(moment_transfer=True),
    "grassmannian+recovery-scaling": QualityTraits(recovery=True),
}
# The optimizer run on the (projected) moments, as tables print it → the base the model scores; Adam in any form is
# the reference (no term). OSD's optimizer of P likewise (`P_OPTIMIZERS`; "sgd" has no row with a rank).
BASES = {"": "adamw", "adam": "adamw", "adamw": "adamw", "adamw8bit": "adamw", "lion": "lion",
         "adafactor": "adafactor"}
P_OPTIMIZERS = {"": "adam", "adam": "adam", "adamw": "adam", "adamw8bit": "adam", "lion": "lion",
                "adafactor": "adafactor", "sgd": "sgd"}
FULL_RANK_BASES = {"lion": "lion", "adafactor": "adafactor"}  # full-rank rows printed under their optimizer's name


# ------------------------------------------------------------------------------------------------ parameters
# name → (transform, default): "exp" keeps a coefficient positive, "sigmoid" in (0, 1), "id" free (ridge to 0).
SHAPE = {
    "p": ("exp", 1.0), "recovery": ("sigmoid", 0.5), "scaled_rank": ("sigmoid", 0.2), "stale": ("exp", 0.1),
    "refresh": ("exp", 1.0), "transfer": ("exp", 0.5), "own": ("exp", 0.02),
    "kind:tracked": ("id", 0.0), "kind:random": ("id", 0.0), "kind:scaled": ("id", 0.0),
    # base optimizers: on the projected moments, in full rank (each against Adam), and OSD's optimizer of P
    "base:lion": ("id", 0.0), "base:adafactor": ("id", 0.0), "full:lion": ("id", 0.0), "full:adafactor": ("id", 0.0),
    "popt:lion": ("id", 0.0), "popt:adafactor": ("id", 0.0), "popt:sgd": ("id", 0.0),
}
METHOD_PREFIX = "method:"
REFERENCE_METHOD = "galore"  # the method every other one is measured against: no offset of its own


def method_parameters() -> list[str]:
    """One free offset per method the model knows (registered low-rank methods and the evidence-only ones)."""
    names = sorted(({n for n, s in REGISTRY.items() if s.project} | set(EVIDENCE_ONLY)) - {REFERENCE_METHOD})
    return [METHOD_PREFIX + n for n in names]


def transform(kind: str, raw: float) -> float:
    """From the fit's unconstrained coordinate (clamped: a wandering simplex must not overflow)."""
    raw = max(-30.0, min(30.0, raw))
    if kind == "exp":
        return math.exp(raw)
    if kind == "sigmoid":
        return 1.0 / (1.0 + math.exp(-raw))
    return raw


def untransform(kind: str, value: float) -> float:
    if kind == "exp":
        return math.log(value)
    if kind == "sigmoid":
        return math.log(value / (1.0 - value))
    return value


def kinds() -> dict[str, str]:
    out = {k: t for k, (t, _) in SHAPE.items()}
    out.update({k: "id" for k in method_parameters()})
    return out


# ------------------------------------------------------------------------------------------------ settings
@dataclass(frozen=True, kw_only=True, slots=True)
class Setting:
    """What the model reads of one configuration: method, subspace kind, traits, the rank kept and the side of each
    projected weight with its share of the projected parameters, update gap, tokens per optimizer step, and
    whether the row is its paper's own method."""

    method: str
    kind: str  # "full" | "svd" | "tracked" | "random" | "scaled"
    traits: QualityTraits = QualityTraits()
    shares: tuple[tuple[float, int, int], ...] = ()  # (share of projected parameters, rank kept, side d)
    update_gap: int | None = None
    tokens_per_step: int | None = None
    own: bool = False
    rank: int | None = None
    default_gap: int = REF_GAP  # the method's published gap: 1 for trackers that move every step (OSD, Ori)
    base: str = "adamw"  # the optimizer of the (projected) moments (`BASES` values)
    p_optimizer: str = "adam"  # OSD's optimizer of P (`P_OPTIMIZERS` values)
    moment_decay: float = ADAM_BETA2  # the decay of the slowest moment a refresh leaves in the old basis

    @property
    def key(self) -> tuple:
        """Equal keys: the same configuration (the model predicts the same)."""
        return (self.method, self.kind, self.traits, self.rank, self.update_gap, self.tokens_per_step,
                self.default_gap, self.base, self.p_optimizer, self.moment_decay)

    @property
    def parameters(self) -> tuple[str, ...]:
        """The free offsets this setting reads (the fit frees only those some row reads)."""
        if self.kind == "full":
            return (f"full:{self.base}",) if self.base != "adamw" else ()
        return (f"kind:{self.kind}", METHOD_PREFIX + self.method) + \
            ((f"base:{self.base}",) if self.base != "adamw" else ()) + \
            ((f"popt:{self.p_optimizer}",) if self.p_optimizer != "adam" else ())


@lru_cache(maxsize=4096)
def rank_shares(model: ModelConfig, rank: int) -> tuple[tuple[float, int, int], ...]:
    """(share of projected parameters, min(r, d), d) over the model's projected weights (d: the smaller side),
    merged by (rank kept, side)."""
    total, by_side = 0.0, {}
    for s in model.linear_shapes():
        d = min(s.m, s.n)
        w = float(s.count * s.m * s.n)
        key = (min(rank, d), d)
        by_side[key] = by_side.get(key, 0.0) + w
        total += w
    return tuple((w / total, r, d) for (r, d), w in sorted(by_side.items()))


def method_kind(method: str) -> tuple[str, QualityTraits] | None:
    """(kind, traits) of a method name, or None when the model does not know it."""
    if method in FULL_RANK:
        return "full", QualityTraits()
    if method in EVIDENCE_ONLY:
        return EVIDENCE_ONLY[method]
    spec = REGISTRY.get(method)
    if spec is None:
        return None
    if not spec.project:
        return "full", QualityTraits()
    return spec.subspace, spec.quality_traits()


def default_gap(method: str) -> int:
    spec = REGISTRY.get(method)
    return spec.default_update_gap if spec is not None and spec.project else REF_GAP


def moment_decay(traits: QualityTraits, base: str) -> float:
    """The decay of the slowest moment a refresh leaves in the old basis: the method's own (SUMO's momentum), else
    its base optimizer's declared one (`BaseSpec.moment_decay`)."""
    return traits.moment_decay if traits.moment_decay is not None else BASE_SPECS[base].moment_decay


def misaligned(gap: int, beta: float) -> float:
    """M_β(T): the mean weight, over the T steps between two refreshes, that a moment decaying by β per step still
    gives its contents from before the last refresh, (1 − β^T) / (T·(1 − β)) — 1 when T ≪ 1/(1 − β), 1/(T(1 − β))
    when T ≫ it."""
    return (1.0 - beta ** gap) / (gap * (1.0 - beta)) if beta > 0 else 1.0 / gap


def setting_of_row(row: TableRow) -> Setting | None:
    """A published or measured row as a Setting; None when the model cannot place it (a method or optimizer it
    has no term for, an ablation variant, a model the catalog lacks, a projected row without its rank)."""
    if row.variant not in VARIANTS:
        return None
    try:  # the scale S(N) reads the model's size: a row on a model the catalog lacks is not placed
        model = load_model(row.model)
    except SubprofError:
        return None
    if row.method in FULL_RANK_BASES:
        return Setting(method="adamw", kind="full", base=FULL_RANK_BASES[row.method])
    known = method_kind(row.method)
    if known is None or row.base not in BASES or row.p_optimizer not in P_OPTIMIZERS:
        return None
    kind, traits = known
    if VARIANTS[row.variant] is not None:
        traits = VARIANTS[row.variant]
    if kind == "full":
        return Setting(method="adamw", kind="full", base=BASES[row.base])
    if not row.rank:
        return None
    gap = row.update_gap or default_gap(row.method)
    base = BASES[row.base]
    return Setting(method=row.method, kind=kind, traits=traits, shares=rank_shares(model, int(row.rank)),
                   update_gap=int(gap), tokens_per_step=row.tokens_per_step, own=row.own, rank=int(row.rank),
                   default_gap=default_gap(row.method), base=base, p_optimizer=P_OPTIMIZERS[row.p_optimizer],
                   moment_decay=moment_decay(traits, base))


def setting_of_config(config: TrainConfig, tokens_per_step: int | None = None) -> Setting:
    """A planned configuration as a Setting (`tokens_per_step`: the optimizer batch; default micro-batch ×
    accumulation × sequence)."""
    tokens = tokens_per_step or config.batch * config.accumulation * config.seq
    try:
        fixed = _fixed_setting(config.model, config.method, config.rank, tuple(sorted(config.method_options.items())))
    except TypeError:  # an unhashable option value: built uncached
        fixed = _fixed_setting.__wrapped__(config.model, config.method, config.rank,
                                           tuple(config.method_options.items()))
    if fixed.kind == "full":
        return fixed
    return replace(fixed, update_gap=int(config.update_gap), tokens_per_step=tokens)


@lru_cache(maxsize=4096)
def _fixed_setting(model: ModelConfig, method: str, rank: int | None, options: tuple) -> Setting:
    """What a configuration's Setting reads besides its update gap and optimizer batch (cached: `plan` scores each
    configuration at every gap and micro-batch)."""
    spec = REGISTRY[method]
    opts = dict(options)
    base = BASES.get(str(opts.get("base") or ""), "adamw")
    if not spec.project:
        return Setting(method="adamw", kind="full", base=base)
    traits = spec.quality_traits(opts)
    return Setting(method=spec.name, kind=spec.subspace, traits=traits, shares=rank_shares(model, int(rank)),
                   rank=int(rank), default_gap=spec.default_update_gap, base=base,
                   p_optimizer=P_OPTIMIZERS.get(str(opts.get("projector_optimizer") or ""), "adam"),
                   moment_decay=moment_decay(traits, base))


# ------------------------------------------------------------------------------------------------ the terms
def terms(s: Setting, v: dict[str, float]) -> dict[str, float]:
    """Each term of g for a setting under parameter values `v` (transformed: the model's own units)."""
    if s.kind == "full":
        return {"base": v.get(f"full:{s.base}", 0.0)} if s.base != "adamw" else {}
    rank = sum(w * ((r / RANK_UNIT) ** -v["p"] - (d / RANK_UNIT) ** -v["p"]) for w, r, d in s.shares)
    if s.kind == "scaled":
        rank *= v["scaled_rank"]
    elif s.traits.recovery:
        rank *= 1.0 - v["recovery"]
    gap = s.update_gap or REF_GAP
    out = {"rank": rank, "staleness": v["stale"] * (gap * (s.tokens_per_step or REF_TOKENS) / REF_TOKENS
                                                    - s.default_gap) / 1000.0}
    if s.default_gap > 1:
        carried = v["transfer"] if s.traits.moment_transfer else 1.0
        out["refresh"] = v["refresh"] * (misaligned(gap, s.moment_decay) * carried
                                         - misaligned(s.default_gap, s.moment_decay))
    out["method"] = v.get(f"kind:{s.kind}", 0.0) + v.get(METHOD_PREFIX + s.method, 0.0)
    if s.base != "adamw" or s.p_optimizer != "adam":
        out["base"] = v.get(f"base:{s.base}", 0.0) + v.get(f"popt:{s.p_optimizer}", 0.0)
    return out


def g_value(s: Setting, v: dict[str, float]) -> float:
    """g: the sum of `terms`."""
    return sum(terms(s, v).values())


# ------------------------------------------------------------------------------------------------ the fitted model
@dataclass(kw_only=True)
class QualityModel:
    """What `plan` ranks by: `quality(config)`, higher is better, in `unit`; `source` says which evidence;
    `band(model)` is the width within which candidates cannot be told apart."""

    source: str
    unit: str
    notes: list[str] = field(default_factory=list)

    def quality(self, config: TrainConfig, tokens_per_step: int | None = None) -> float:
        raise NotImplementedError

    def band(self, model: ModelConfig) -> float:
        raise NotImplementedError

    def evidence_kind(self, method: str, base: str = "adamw") -> str:
        raise NotImplementedError

    def describe(self) -> dict:
        return {"source": self.source, "unit": self.unit, "notes": list(self.notes)}


@dataclass(kw_only=True)
class FittedQuality(QualityModel):
    """Δ = S(N)·g from the committed fit; `sigma_g`: the leave-one-table-out error of g (the band's width)."""

    values: dict[str, float]
    a: float
    b: float
    sigma_g: float
    scale_sd: float  # residual SD of ln S across tables: how far a table's magnitude strays from S(N)
    validation: dict = field(default_factory=dict)
    evidence_rows: dict = field(default_factory=dict)  # method → {"rows", "tables", "independent"} seen
    _memo: dict = field(default_factory=dict, repr=False)

    def scale(self, model: ModelConfig) -> float:
        key = ("scale", model)
        if key not in self._memo:
            self._memo[key] = math.exp(self.a + self.b * math.log(model.params / REF_PARAMS))
        return self._memo[key]

    def g(self, config: TrainConfig, tokens_per_step: int | None = None) -> float:
        key = (config.model, config.method, config.rank, config.update_gap,
               tokens_per_step or config.batch * config.accumulation * config.seq,
               tuple(sorted(config.method_options.items())))
        if key not in self._memo:
            self._memo[key] = g_value(setting_of_config(config, tokens_per_step), self.values)
        return self._memo[key]

    def gap_nats(self, config: TrainConfig, tokens_per_step: int | None = None) -> float:
        return self.scale(config.model) * self.g(config, tokens_per_step)

    def quality(self, config: TrainConfig, tokens_per_step: int | None = None) -> float:
        return -self.gap_nats(config, tokens_per_step)

    def band(self, model: ModelConfig) -> float:
        return self.scale(model) * self.sigma_g

    def evidence_kind(self, method: str, base: str = "adamw") -> str:
        """What the method's quality rests on: "reference" (full-rank Adam), "one table" (a Lion/Adafactor base:
        OSD's Table 6 alone), "independent" (some row is another paper's re-run or our own run), "own paper" (only
        its authors' tables: claims they tuned) or "none" (its kind's terms alone)."""
        if BASES.get(base, base) != "adamw":
            return "one table"
        if method in FULL_RANK or not REGISTRY[method].project:
            return "reference"
        rows = self.evidence_rows.get(method)
        if not rows:
            return "none"
        return "independent" if rows.get("independent", rows["rows"]) else "own paper"

    def describe(self) -> dict:
        return {**super().describe(), "sigma_g": self.sigma_g, "scale": {"a": self.a, "b": self.b,
                                                                        "sd_ln": self.scale_sd},
                "validation": self.validation}


def fit_path() -> Path:
    return evidence_dir() / FIT_FILE


def from_fit(data: dict) -> FittedQuality:
    v = data["values"]
    val = data.get("validation", {})
    notes = [f"fitted to {data['fitted_to']['rows']} rows in {data['fitted_to']['groups']} within-table groups of "
             f"{data['fitted_to']['tables']} tables (profiles/evidence/tables, profiles/measured/gap_grid_*); "
             f"leave-one-table-out: {val.get('all', {}).get('agree_share', float('nan')):.0%} of "
             f"{val.get('all', {}).get('pairs', 0)} within-table orderings as published "
             f"({val.get('gap', {}).get('agree_share', float('nan')):.0%} of the update-gap pairs)",
             f"candidates within S(N)·σ_g = S(N)·{data['sigma_g']:.3g} of each other are ranked by speed "
             "(σ_g: the cross-validated error of g)",
             "8-bit states and per-layer stepping are not scored (no table separates them); Lion/Adafactor bases "
             "rest on one table (OSD Table 6, LLaMA-60M)",
             "methods without a published table row (" + (", ".join(sorted(
                 n for n, s in REGISTRY.items() if s.project and n not in data.get("evidence_rows", {}))) or "none")
             + ") are scored by their kind's terms alone: marked ? in the tables"]
    return FittedQuality(source="published tables and long CPU runs (profiles/evidence/quality_fit.json)", unit=UNIT,
                         notes=notes, values={k: float(x) for k, x in v.items()},
                         a=float(data["a"]), b=float(data["b"]), sigma_g=float(data["sigma_g"]),
                         scale_sd=float(data["scale_sd"]), validation=val,
                         evidence_rows=dict(data.get("evidence_rows", {})))


@cache
def fitted_quality() -> FittedQuality:
    """The committed fit, read (not refitted): `plan` answers in well under a second."""
    path = fit_path()
    try:
        return from_fit(json.loads(path.read_text(encoding="utf-8")))
    except (OSError, json.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
        raise SubprofError(f"the quality fit {path} is missing or unreadable ({exc}); rewrite it with "
                           f"`{COMMAND}`") from None
