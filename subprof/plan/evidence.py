"""The quality side of `plan`: how good a candidate's subspace is, from measured evidence instead of a hand-set
score. Two sources, and every plan says which it used:

1. **A probe** (`plan --probe FILE`, rows of `subprof probe`): the predicted share of gradient energy the
   candidate's projection keeps, per projected weight, averaged by weight size over the target model's weights:

       svd      (fresh top-r basis every T steps: GaLore, SUMO)      q = E(r) · S̄(T)
       tracked  (incremental steps every g steps: OSD, Ori, SubTrack) q = E(r) · S̄(g · L)
       random   (no gradient information: GrassWalk, GrassJump)       q = r / d
       full rank                                                      q = 1

   E(r) is the probe's energy curve and S̄(T) = (1/T) Σ_{k<T} s(k) its staleness averaged over a refresh interval
   (`subprof.plan.probe_curves`), both read per layer type at the same rank-to-side ratio r/d as on the target
   (a probe on a proxy maps ranks by that ratio). A tracker's update gap g is scored like a refresh interval
   stretched by its lag L (in update intervals): OSD/Ori at g = 1, 2, 5, 10 keep S̄(L), S̄(2L), S̄(5L), S̄(10L).
   L is measured when the probe ran that method (`probe --method ori`: its basis's share over the fresh one,
   solved for the refresh interval that gives the same mean); otherwise it is calibrated on the same curves to a
   published gap closure (Ori: "up to 69.3%" of the gap to full rank closed against GaLore at T = 200, matched at
   r/d = 1/16 — our reading of "very low rank"), else 1.

2. **Published results** (no probe): the predicted validation-loss gap to full-rank AdamW in nats,

       Δ(candidate) = A(N) · (1 − q_ref(candidate)),

   with q_ref the captured-energy model above on the committed reference probe (`profiles/measured/probe_*.jsonl`,
   the largest model probed; it gives the shape in rank and gap, and the trackers' lag from Ori's closure), and
   A(N) = exp(a + b·ln N) fitted by least squares to GaLore's Table 2 gaps ln(ppl / full-rank ppl) at 60M–1B, each
   divided by the energy q_ref says GaLore loses there (N the model's parameters; at the paper's token budgets).
   The fit is done once and committed, `profiles/evidence/prior_fit.json` (A(N), L, the notes, the reference
   probe's curves reduced to what q_ref reads and S̄ at the intervals plan searches), written by
   `python -m subprof.plan.prior_fit`; `plan` only reads it. The data with citations, and what could not be found, live in `profiles/evidence/*.toml`.

What captured energy does not see (stated in every plan's notes): recovery terms that add back the residual (Fira,
SubTrack++, GrassWalk), the optimizer's own basis effects (Adam in a rotated basis), and differences in learning
rate. 8-bit states and per-layer stepping do not change the subspace and are not scored. Pure Python, no torch.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path

from subprof.catalog import ModelConfig, load_model
from subprof.config import TrainConfig
from subprof.errors import SubprofError
from subprof.methods import REGISTRY
from subprof.plan.probe_curves import ProbeRun, StalenessModel, energy_at, interp_log, staleness_floor
from subprof.plan.published import EvidenceFile, evidence_dir, load_published
from subprof.results import read_result_files

TYPE_OF = {"q_proj": "q", "k_proj": "k", "v_proj": "v", "o_proj": "o", "gate_proj": "gate", "up_proj": "up",
           "down_proj": "down"}
LOW_RANK_FRACTION = 1 / 16  # where a published "at very low rank" closure is matched
PROBE_TOLERANCE = 0.01  # captured-share differences below this are within a 200-step probe's sampling spread
PRIOR_TOLERANCE = 0.001  # nats: a fifth of the smallest published GaLore gap (1B, 0.005 nats)
PRIOR_FIT = "prior_fit.json"  # in profiles/evidence/, written by `python -m subprof.plan.prior_fit`
PRIOR_SOURCE = "published results (profiles/evidence) with the reference probe's rank and gap shape"
PRIOR_UNIT = "−(predicted validation-loss gap to full-rank AdamW, nats)"
ALL = "all"  # the JSON key of the all-weights curves (layer type None)


@dataclass(kw_only=True)
class ProbeCurves:
    """What the quality model reads off one probe run, per layer type (None: all weights): the projected side d, the
    energy curve {r: E(r)} and the staleness curves {r: {k: s(k)}} at the measured ranks below d; with the run's
    header, whether it finished, its gaps and its method's measured tracking ratio. Built from a run, or from the
    committed prior fit (`to_dict`/`from_dict`: JSON, keys as strings)."""

    header: dict
    finished: bool
    types: list[str]
    gaps: list[int]
    sides: dict[str | None, int]
    energy: dict[str | None, dict[int, float]]
    staleness: dict[str | None, dict[int, dict[int, float]]]
    tracking: float | None = None

    @classmethod
    def from_run(cls, run: ProbeRun) -> "ProbeCurves":
        kinds = [*run.types, None]
        stale = {k: {r: run.staleness_curve(r, k) for r in run.stale_ranks(k) if r < run.side(k)} if run.stale
                 else {} for k in kinds}
        return cls(header=dict(run.header), finished=run.finished, types=list(run.types), gaps=list(run.gaps),
                   sides={k: run.side(k) for k in kinds}, energy={k: run.energy_curve(k) for k in kinds},
                   staleness=stale, tracking=run.tracking_ratio())

    @property
    def model(self) -> str:
        return str(self.header.get("model"))

    def to_dict(self) -> dict:
        return {"header": self.header, "finished": self.finished, "types": self.types, "gaps": self.gaps,
                "tracking": self.tracking,
                "kinds": {k or ALL: {"side": self.sides[k],
                                     "energy": {str(r): e for r, e in self.energy[k].items()},
                                     "staleness": {str(r): {str(g): s for g, s in c.items()}
                                                   for r, c in self.staleness[k].items()}}
                          for k in self.sides}}

    @classmethod
    def from_dict(cls, data: dict) -> "ProbeCurves":
        kinds = {(None if k == ALL else k): v for k, v in data["kinds"].items()}
        return cls(header=data["header"], finished=data["finished"], types=data["types"], gaps=data["gaps"],
                   tracking=data["tracking"], sides={k: int(v["side"]) for k, v in kinds.items()},
                   energy={k: {int(r): e for r, e in v["energy"].items()} for k, v in kinds.items()},
                   staleness={k: {int(r): {int(g): s for g, s in c.items()} for r, c in v["staleness"].items()}
                              for k, v in kinds.items()})


# ------------------------------------------------------------------------------------------------ quality models


@dataclass(kw_only=True)
class QualityModel:
    """What `plan` ranks by: `quality(config)`, higher is better, in `unit`; `source` says which evidence;
    differences below `tolerance` are within what it can tell apart (the planner's band width)."""

    source: str
    unit: str
    tolerance: float
    notes: list[str] = field(default_factory=list)

    def quality(self, config: TrainConfig) -> float:
        raise NotImplementedError

    def describe(self) -> dict:
        return {"source": self.source, "unit": self.unit, "tolerance": self.tolerance, "notes": list(self.notes)}


@dataclass(kw_only=True)
class ProbeQuality(QualityModel):
    """Predicted captured gradient-energy share from one probe run's curves."""

    curves: ProbeCurves
    tracker_lag: float = 1.0  # L for trackers the probe did not run (from a published gap closure, else 1)
    _captured: dict = field(default_factory=dict, repr=False)  # (model, method, rank, gap) → share
    _shares: dict = field(default_factory=dict, repr=False)  # (type, r/d, interval, subspace) → share
    _means: dict = field(default_factory=dict, repr=False)  # (type, probe rank, interval) → S̄: lag-independent
    _models: dict = field(default_factory=dict, repr=False)
    _lags: dict = field(default_factory=dict, repr=False)

    @classmethod
    def from_run(cls, run: ProbeRun, label: str) -> "ProbeQuality":
        return cls.from_curves(ProbeCurves.from_run(run), label)

    @classmethod
    def from_curves(cls, curves: ProbeCurves, label: str) -> "ProbeQuality":
        h = curves.header
        where = f"{curves.model}" + (f" (proxy for {h.get('target_model')})" if h.get("target_model") != curves.model
                                     else "")
        source = (f"probe {label}: {where}, {h.get('method')} for {h.get('steps')} steps on {h.get('corpus')}, "
                  f"{h.get('device')}, {str(h.get('date', ''))[:10]}")
        notes = [f"read at the candidate's rank-to-side ratio r/d on the {curves.model} curves of each layer type "
                 "(a probe of another model stands in for the target by that ratio)"]
        if not curves.finished:
            notes.append("the probe run is unfinished: its rows so far are used")
        if not any(curves.staleness.values()):
            notes.append("the probe has no staleness rows: every refresh interval counts as fresh")
        elif curves.gaps:
            notes.append(f"staleness measured at gaps {', '.join(map(str, curves.gaps))}; longer intervals follow the "
                         "fitted stretched exponential")
        notes.append("captured energy does not credit recovery terms (Fira-style), Adam's basis effects or "
                     "learning-rate differences; random subspaces (GrassWalk/GrassJump) score r/d")
        return cls(source=source, unit="predicted share of gradient energy kept (1 = full rank)",
                   tolerance=PROBE_TOLERANCE, notes=notes, curves=curves)

    def quality(self, config: TrainConfig) -> float:
        return self.captured(config)

    def captured(self, config: TrainConfig) -> float:
        """The size-weighted mean over the target model's projected weights of the candidate's captured share."""
        spec = config.spec
        if not spec.project:
            return 1.0
        key = (config.model, spec.name, config.rank, config.update_gap)
        if key not in self._captured:
            self._captured[key] = self._captured_share(config.model, spec, config.rank, config.update_gap)
        return self._captured[key]

    def forget_lag(self) -> None:
        """Drop what depends on the trackers' lag (after `tracker_lag` changes); S̄ per interval stays valid."""
        self._captured.clear()
        self._shares.clear()
        self._lags.clear()

    def _captured_share(self, model: ModelConfig, spec, rank: int, update_gap: int) -> float:
        interval = float(update_gap) * (self.lag(spec.name) if spec.subspace == "tracked" else 1.0)
        total = weights = 0.0
        for s in model.linear_shapes():
            d = min(s.m, s.n)
            r = min(rank, d)
            kind = TYPE_OF.get(s.name.split(".")[-1])
            share = 1.0 if r >= d else self._share(kind, r / d, interval, spec.subspace)
            w = s.count * s.m * s.n
            total += w * share
            weights += w
        return total / weights

    def _share(self, kind: str | None, fraction: float, interval: float, subspace: str) -> float:
        key = (kind, round(fraction, 9), interval, subspace)
        if key not in self._shares:
            if subspace == "random":
                self._shares[key] = fraction
            else:
                kind = kind if kind in self.curves.types else None
                side = self.curves.sides[kind]
                rank = fraction * side
                energy = energy_at(self.curves.energy[kind], rank, side)
                self._shares[key] = energy * self.mean_staleness(kind, rank, interval)
        return self._shares[key]

    def staleness_model(self, kind: str | None, rank: int) -> StalenessModel:
        key = (kind, rank)
        if key not in self._models:
            side = self.curves.sides[kind]
            energy = energy_at(self.curves.energy[kind], rank, side)
            self._models[key] = StalenessModel.fit(self.curves.staleness[kind][rank],
                                                   staleness_floor(rank, side, energy))
        return self._models[key]

    def mean_staleness(self, kind: str | None, rank: float, interval: float) -> float:
        """S̄ over `interval` steps at a (fractional) probe rank: log-interpolated between the measured ranks."""
        measured = sorted(self.curves.staleness[kind])
        if not measured or interval <= 1:
            return 1.0
        below = [r for r in measured if r <= rank] or measured[:1]
        above = [r for r in measured if r >= rank] or measured[-1:]
        near = {below[-1], above[0]}  # only the bracketing ranks matter for the interpolation
        return interp_log({r: self._mean(kind, r, interval) for r in near}, rank)

    def _mean(self, kind: str | None, rank: int, interval: float) -> float:
        key = (kind, rank, interval)
        if key not in self._means:
            self._means[key] = self.staleness_model(kind, rank).mean_over(interval)
        return self._means[key]

    def lag(self, method: str) -> float:
        """A tracker's lag L: measured when the probe ran `method` and recorded its tracking — the interval x with
        S̄(x) equal to the measured tracking ratio, over the probed update gap (bisection on log x) — else
        `tracker_lag`."""
        if method in self._lags:
            return self._lags[method]
        h = self.curves.header
        ratio = self.curves.tracking if h.get("method") == method else None
        lag = self.tracker_lag
        if ratio is not None and h.get("rank") and h.get("update_gap"):
            rank = min(int(h["rank"]), self.curves.sides[None] - 1)
            mean = lambda x: self.mean_staleness(None, rank, x)  # noqa: E731
            if ratio >= 1.0:
                lag = 0.0
            else:
                lo, hi = 1.0, 1e5
                if mean(hi) > ratio:
                    lag = hi / h["update_gap"]
                else:
                    for _ in range(24):
                        mid = math.sqrt(lo * hi)
                        lo, hi = (mid, hi) if mean(mid) > ratio else (lo, mid)
                    lag = math.sqrt(lo * hi) / h["update_gap"]
            self.notes.append(f"{method}: measured tracking {ratio:.3f} of the fresh basis's share at gap "
                              f"{h['update_gap']} ≈ an SVD refreshed every {lag * h['update_gap']:.1f} steps "
                              f"(lag L = {lag:.2f})")
        self._lags[method] = lag
        return lag


@dataclass(kw_only=True)
class PublishedPrior(QualityModel):
    """Predicted loss gap to full rank (nats, negated as quality) from published results and a reference probe."""

    reference: ProbeQuality
    a: float
    b: float
    reference_label: str = ""
    _gaps: dict = field(default_factory=dict, repr=False)  # (model, method, rank, gap) → Δ: plan asks ~10× each

    def quality(self, config: TrainConfig) -> float:
        return -self.gap_nats(config)

    def gap_nats(self, config: TrainConfig) -> float:
        """Δ = A(N) · (1 − q_ref): exp(a + b·ln N) times the energy the reference model says the candidate loses."""
        key = (config.model, config.method, config.rank, config.update_gap)
        if key not in self._gaps:
            lost = 1.0 - self.reference.captured(config) if config.spec.project else 0.0
            self._gaps[key] = math.exp(self.a + self.b * math.log(config.model.params)) * lost
        return self._gaps[key]

    def to_fit(self) -> dict:
        """What was fitted, as committed in `profiles/evidence/prior_fit.json`; with S̄ of the reference probe
        tabulated at every refresh interval `plan` searches (`searched_intervals`), which `from_fit` seeds the
        memo with — the same numbers, computed once."""
        ref = self.reference
        means = {k or ALL: {str(r): {repr(x): ref._mean(k, r, x) for x in self.searched_intervals()}
                            for r in sorted(c)} for k, c in ref.curves.staleness.items()}
        return {"a": self.a, "b": self.b, "tracker_lag": ref.tracker_lag, "notes": list(self.notes),
                "reference": {"label": self.reference_label, "curves": ref.curves.to_dict(),
                              "staleness_means": means}}

    def searched_intervals(self) -> list[float]:
        """The refresh intervals of every gap the registry's projected methods search: T for an SVD refresh, g·L for
        a tracker (L the reference's lag), above one step."""
        out = {float(g) * (self.reference.lag(s.name) if s.subspace == "tracked" else 1.0)
               for s in REGISTRY.values() if s.project for g in s.gaps()}
        return sorted(x for x in out if x > 1)

    @classmethod
    def from_fit(cls, data: dict) -> "PublishedPrior":
        ref = data["reference"]
        reference = ProbeQuality.from_curves(ProbeCurves.from_dict(ref["curves"]), ref["label"])
        reference.tracker_lag = float(data["tracker_lag"])
        reference._means.update({((None if k == ALL else k), int(r), float(x)): s
                                 for k, per_rank in ref["staleness_means"].items()
                                 for r, per_interval in per_rank.items() for x, s in per_interval.items()})
        return cls(source=PRIOR_SOURCE, unit=PRIOR_UNIT, tolerance=PRIOR_TOLERANCE, notes=list(data["notes"]),
                   reference=reference, a=float(data["a"]), b=float(data["b"]), reference_label=ref["label"])


def train_config(model: ModelConfig, method: str, rank: int, gap: int | None) -> TrainConfig:
    """A published result's configuration (bf16, each weight at min(rank, m, n))."""
    rank = min(rank, model.rank_limit())
    return TrainConfig(model=model, method=method, rank=rank, update_gap=gap, dtype="bf16")


def calibrate_tracker_lag(quality: ProbeQuality, evidence: list[EvidenceFile]) -> str | None:
    """Set `quality.tracker_lag` from a published gap closure of a tracked method against an SVD-refresh one:
    the lag L at which (1 − q(tracker at gap·L)) = (1 − closure)·(1 − q(versus at its gap)) at r/d = 1/16 on the
    result's model (bisection). Returns the note saying what was done (None without such a result)."""
    for ev in evidence:
        for res in ev.results:
            spec = REGISTRY[ev.method]
            if res.gap_closure is None or not res.versus_method or spec.subspace != "tracked":
                continue
            model = load_model(res.model)
            rank = max(1, round(LOW_RANK_FRACTION * model.rank_limit()))
            own_gap = res.update_gap or spec.default_update_gap
            target = (1.0 - res.gap_closure) * (1.0 - quality.captured(
                train_config(model, res.versus_method, rank, res.versus_update_gap)))

            def lost_at(lag: float) -> float:
                quality.tracker_lag = lag
                quality.forget_lag()
                return 1.0 - quality.captured(train_config(model, ev.method, rank, own_gap))

            if lost_at(0.0) >= target:
                lag, how = 0.0, "the energy model cannot reach that closure even with a fresh basis every step: L = 0"
            elif lost_at(1e4) <= target:
                lag, how = 1e4, "the energy model closes more even with L = 10⁴: L = 10⁴"
            else:
                lo, hi = 1e-3, 1e4
                for _ in range(24):  # log-bisection over 10⁷: 24 halvings pin L to 0.1%
                    mid = math.sqrt(lo * hi)
                    lo, hi = (mid, hi) if lost_at(mid) < target else (lo, mid)
                lag, how = math.sqrt(lo * hi), f"L = {math.sqrt(lo * hi):.2f}"
            quality.tracker_lag = lag
            quality.forget_lag()
            return (f"trackers (OSD, Ori, SubTrack) not measured by this probe: lag from {ev.method}'s published "
                    f"closure ({res.qualifier} {res.gap_closure:.1%} of the gap against {res.versus_method} "
                    f"T{res.versus_update_gap}, {ev.citation}), matched at r/d = 1/16 on {res.model}: {how} — a "
                    f"tracker updating every g steps counts as an SVD refreshed every g·L steps")
    return None


def prior_fit_path() -> Path:
    return evidence_dir() / PRIOR_FIT


@cache
def published_prior() -> PublishedPrior:
    """The committed fit (`profiles/evidence/prior_fit.json`): read, not refitted — `plan` answers in well under a
    second. `python -m subprof.plan.prior_fit` rewrites it from the evidence files and the reference probe."""
    path = prior_fit_path()
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        return PublishedPrior.from_fit(data)
    except (OSError, json.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
        raise SubprofError(f"the published-results prior {path} is missing or unreadable ({exc}); rewrite it with "
                           "`python -m subprof.plan.prior_fit`") from None


def probe_quality(path: str | Path) -> ProbeQuality:
    """`plan --probe FILE`: the newest finished probe run in FILE."""
    rows = read_result_files([path], "--probe")
    quality = ProbeQuality.from_run(ProbeRun.from_rows(rows, f"--probe {str(path)!r}"), str(path))
    note = calibrate_tracker_lag(quality, load_published())
    if note:
        quality.notes.insert(0, note)
    return quality


def default_quality() -> QualityModel:
    return published_prior()
