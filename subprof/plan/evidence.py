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
   (a probe on a proxy maps ranks by that ratio). L, a tracker's lag in update intervals, is measured when the probe
   ran that method (`probe --method ori`: its basis's share over the fresh one, solved for the refresh interval
   that gives the same mean); otherwise it is calibrated on the same curves to a published gap closure (Ori: "up
   to 69.3%" of the gap to full rank closed against GaLore at T = 200, matched at r/d = 1/16 — our reading of
   "very low rank"), else 1.

2. **Published results** (no probe): the predicted validation-loss gap to full-rank AdamW in nats,

       Δ(candidate) = A(N) · (1 − q_ref(candidate)),

   with q_ref the captured-energy model above on the committed reference probe (`profiles/measured/probe_*.jsonl`,
   the largest model probed; it gives the shape in rank and gap, and the trackers' lag from Ori's closure), and
   A(N) = exp(a + b·ln N) fitted by least squares to GaLore's Table 2 gaps ln(ppl / full-rank ppl) at 60M–1B, each
   divided by the energy q_ref says GaLore loses there (N the model's parameters; at the paper's token budgets).
   The data with citations, and what could not be found, live in `profiles/evidence/*.toml`; published comparisons
   without a full-rank figure (OSD against GaLore) are checked against the prior's ordering and reported.

What captured energy does not see (stated in every plan's notes): recovery terms that add back the residual (Fira,
SubTrack++, GrassWalk), the optimizer's own basis effects (Adam in a rotated basis), and differences in learning
rate. 8-bit states and per-layer stepping do not change the subspace and are not scored. Pure Python, no torch.
"""

from __future__ import annotations

import json
import math
import tomllib
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path

from subprof.catalog import ModelConfig, load_model, profiles_dir
from subprof.config import TrainConfig
from subprof.errors import SubprofError
from subprof.methods import REGISTRY
from subprof.plan.probe_curves import ProbeRun, StalenessModel, energy_at, interp_log, staleness_floor
from subprof.results import read_result_files, read_rows

TYPE_OF = {"q_proj": "q", "k_proj": "k", "v_proj": "v", "o_proj": "o", "gate_proj": "gate", "up_proj": "up",
           "down_proj": "down"}
LOW_RANK_FRACTION = 1 / 16  # where a published "at very low rank" closure is matched
PROBE_TOLERANCE = 0.01  # captured-share differences below this are within a 200-step probe's sampling spread
PRIOR_TOLERANCE = 0.001  # nats: a fifth of the smallest published GaLore gap (1B, 0.005 nats)


# ------------------------------------------------------------------------------------------------ published data


@dataclass(frozen=True, kw_only=True, slots=True)
class PublishedResult:
    model: str
    rank: int | None = None
    update_gap: int | None = None
    tokens: float | None = None
    ppl: float | None = None
    full_rank_ppl: float | None = None
    versus_method: str | None = None
    versus_ppl: float | None = None
    versus_update_gap: int | None = None
    gap_closure: float | None = None
    qualifier: str = ""
    note: str = ""


@dataclass(frozen=True, kw_only=True, slots=True)
class EvidenceFile:
    """One paper's numbers (`profiles/evidence/<name>.toml`)."""

    path: str
    method: str
    also: tuple[str, ...]
    title: str
    citation: str
    url: str
    read: str
    how_found: str
    results: tuple[PublishedResult, ...]
    not_found: tuple[dict, ...]

    @property
    def methods(self) -> tuple[str, ...]:
        return (self.method, *self.also)


def evidence_dir() -> Path:
    return profiles_dir() / "evidence"


def load_published(folder: Path | None = None) -> list[EvidenceFile]:
    """Every evidence file, validated: a registered method, a citation with a URL, results with known fields."""
    out = []
    for path in sorted((folder or evidence_dir()).glob("*.toml")):
        try:
            data = tomllib.loads(path.read_text(encoding="utf-8"))
        except (OSError, tomllib.TOMLDecodeError) as exc:
            raise SubprofError(f"evidence file {path.name}: {exc}") from None
        src = data.get("source", {})
        missing = [k for k in ("method", "title", "citation", "url", "read", "how_found") if not src.get(k)]
        if missing:
            raise SubprofError(f"evidence file {path.name}: [source] lacks {', '.join(missing)}")
        for name in [src["method"], *src.get("also", [])]:
            if name not in REGISTRY:
                raise SubprofError(f"evidence file {path.name}: method {name!r} is not registered")
        try:
            results = tuple(PublishedResult(**r) for r in data.get("result", []))
        except TypeError as exc:
            raise SubprofError(f"evidence file {path.name}: {exc}") from None
        out.append(EvidenceFile(path=path.name, method=src["method"], also=tuple(src.get("also", [])),
                                title=src["title"], citation=src["citation"], url=src["url"], read=src["read"],
                                how_found=" ".join(src["how_found"].split()), results=results,
                                not_found=tuple(data.get("not_found", []))))
    return out


# ------------------------------------------------------------------------------------------------ quality models


@dataclass(kw_only=True)
class QualityModel:
    """What `plan` ranks by: `quality(config)`, higher is better, in `unit`; `source` says which evidence."""

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
    """Predicted captured gradient-energy share from one probe run."""

    run: ProbeRun
    tracker_lag: float = 1.0  # L for trackers the probe did not run (from a published gap closure, else 1)
    _shares: dict = field(default_factory=dict, repr=False)
    _models: dict = field(default_factory=dict, repr=False)
    _lags: dict = field(default_factory=dict, repr=False)

    @classmethod
    def from_run(cls, run: ProbeRun, label: str) -> "ProbeQuality":
        h = run.header
        where = f"{run.model}" + (f" (proxy for {h.get('target_model')})" if h.get("target_model") != run.model
                                   else "")
        source = (f"probe {label}: {where}, {h.get('method')} for {h.get('steps')} steps on {h.get('corpus')}, "
                  f"{h.get('device')}, {str(h.get('date', ''))[:10]}")
        notes = [f"read at the candidate's rank-to-side ratio r/d on the {run.model} curves of each layer type "
                 "(a probe of another model stands in for the target by that ratio)"]
        if not run.finished:
            notes.append("the probe run is unfinished: its rows so far are used")
        if not run.stale:
            notes.append("the probe has no staleness rows: every refresh interval counts as fresh")
        elif run.gaps:
            notes.append(f"staleness measured at gaps {', '.join(map(str, run.gaps))}; longer intervals follow the "
                         "fitted stretched exponential")
        notes.append("captured energy does not credit recovery terms (Fira-style), Adam's basis effects or "
                     "learning-rate differences; random subspaces (GrassWalk/GrassJump) score r/d")
        return cls(source=source, unit="predicted share of gradient energy kept (1 = full rank)",
                   tolerance=PROBE_TOLERANCE, notes=notes, run=run)

    def quality(self, config: TrainConfig) -> float:
        return self.captured(config)

    def captured(self, config: TrainConfig) -> float:
        """The size-weighted mean over the target model's projected weights of the candidate's captured share."""
        spec = config.spec
        if not spec.project:
            return 1.0
        key = (config.model, spec.name, config.rank, config.update_gap)
        if key not in self._shares:
            self._shares[key] = self._captured(config.model, spec, config.rank, config.update_gap)
        return self._shares[key]

    def _captured(self, model: ModelConfig, spec, rank: int, update_gap: int) -> float:
        total = weights = 0.0
        for s in model.linear_shapes():
            d = min(s.m, s.n)
            r = min(rank, d)
            kind = TYPE_OF.get(s.name.split(".")[-1])
            share = 1.0 if r >= d else self._share(kind, r / d, update_gap, spec.subspace, spec.name)
            w = s.count * s.m * s.n
            total += w * share
            weights += w
        return total / weights

    def _share(self, kind: str | None, fraction: float, gap: int, subspace: str, method: str) -> float:
        key = (kind, round(fraction, 9), gap, subspace, method)
        if key not in self._shares:
            self._shares[key] = self._compute_share(kind, fraction, gap, subspace, method)
        return self._shares[key]

    def _compute_share(self, kind: str | None, fraction: float, gap: int, subspace: str, method: str) -> float:
        if subspace == "random":
            return fraction
        kind = kind if kind in self.run.types else None
        side = self.run.side(kind)
        rank = fraction * side
        energy = energy_at(self.run.energy_curve(kind), rank, side)
        interval = float(gap) * (self.lag(method) if subspace == "tracked" else 1.0)
        return energy * self.mean_staleness(kind, rank, interval)

    def staleness_model(self, kind: str | None, rank: int) -> StalenessModel:
        key = (kind, rank)
        if key not in self._models:
            side = self.run.side(kind)
            energy = energy_at(self.run.energy_curve(kind), rank, side)
            self._models[key] = StalenessModel.fit(self.run.staleness_curve(rank, kind),
                                                   staleness_floor(rank, side, energy))
        return self._models[key]

    def mean_staleness(self, kind: str | None, rank: float, interval: float) -> float:
        """S̄ over `interval` steps at a (fractional) probe rank: log-interpolated between the measured ranks."""
        measured = [r for r in self.run.stale_ranks(kind) if r < self.run.side(kind)]
        if not measured or interval <= 1:
            return 1.0
        below = [r for r in measured if r <= rank] or measured[:1]
        above = [r for r in measured if r >= rank] or measured[-1:]
        near = {below[-1], above[0]}  # only the bracketing ranks matter for the interpolation
        return interp_log({r: self.staleness_model(kind, r).mean_over(interval) for r in near}, rank)

    def lag(self, method: str) -> float:
        """A tracker's lag L: measured when the probe ran `method` and recorded its tracking — the interval x with
        S̄(x) equal to the measured tracking ratio, over the probed update gap (bisection on log x) — else
        `tracker_lag`."""
        if method in self._lags:
            return self._lags[method]
        h = self.run.header
        ratio = self.run.tracking_ratio() if h.get("method") == method else None
        lag = self.tracker_lag
        if ratio is not None and h.get("rank") and h.get("update_gap"):
            rank = min(int(h["rank"]), self.run.side(None) - 1)
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

    def quality(self, config: TrainConfig) -> float:
        return -self.gap_nats(config)

    def gap_nats(self, config: TrainConfig) -> float:
        """Δ = A(N) · (1 − q_ref): exp(a + b·ln N) times the energy the reference model says the candidate loses."""
        if not config.spec.project:
            return 0.0
        lost = 1.0 - self.reference.captured(config)
        return math.exp(self.a + self.b * math.log(config.model.params)) * lost


def _config(model: ModelConfig, method: str, rank: int, gap: int | None) -> TrainConfig:
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
                _config(model, res.versus_method, rank, res.versus_update_gap)))

            def lost_at(lag: float) -> float:
                quality.tracker_lag = lag
                quality._shares.clear()
                quality._lags.clear()
                return 1.0 - quality.captured(_config(model, ev.method, rank, own_gap))

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
            quality._shares.clear()
            quality._lags.clear()
            return (f"trackers (OSD, Ori, SubTrack) not measured by this probe: lag from {ev.method}'s published "
                    f"closure ({res.qualifier} {res.gap_closure:.1%} of the gap against {res.versus_method} "
                    f"T{res.versus_update_gap}, {ev.citation}), matched at r/d = 1/16 on {res.model}: {how} — a "
                    f"tracker updating every g steps counts as an SVD refreshed every g·L steps")
    return None


def fit_prior(evidence: list[EvidenceFile], reference: ProbeQuality, reference_label: str) -> PublishedPrior:
    """A(N) from every result with a full-rank perplexity; the trackers' lag from a published gap closure."""
    lag_note = calibrate_tracker_lag(reference, evidence)
    points = []
    used = []
    for ev in evidence:
        for res in ev.results:
            if res.full_rank_ppl and res.ppl and res.rank:
                model = load_model(res.model)
                lost = 1.0 - reference.captured(_config(model, ev.method, res.rank, res.update_gap))
                gap = math.log(res.ppl / res.full_rank_ppl)
                if lost > 0 and gap > 0:
                    points.append((math.log(model.params), math.log(gap / lost)))
        if any(r.full_rank_ppl for r in ev.results):
            used.append(ev.citation)
    if not points:
        raise SubprofError("no published result with a full-rank perplexity in profiles/evidence: cannot fit")
    if len(points) == 1:
        a, b = points[0][1], 0.0
    else:
        mx = sum(x for x, _ in points) / len(points)
        my = sum(y for _, y in points) / len(points)
        sxx = sum((x - mx) ** 2 for x, _ in points)
        b = sum((x - mx) * (y - my) for x, y in points) / sxx if sxx else 0.0
        a = my - b * mx
    prior = PublishedPrior(source="published results (profiles/evidence) with the reference probe's rank and gap "
                           "shape", unit="−(predicted validation-loss gap to full-rank AdamW, nats)",
                           tolerance=PRIOR_TOLERANCE, reference=reference, a=a, b=b)
    notes = [f"scale: GaLore-vs-full-rank gaps of {'; '.join(used)} fitted as Δ = exp({a:.2f} {b:+.3f}·ln N) "
             f"× lost energy share ({len(points)} points)",
             f"shape in rank and gap: {reference_label}"]
    if lag_note:
        notes.append(lag_note)
    for ev in evidence:
        for res in ev.results:
            if res.versus_ppl and res.ppl and res.versus_method and res.rank:
                model = load_model(res.model)
                ours = prior.gap_nats(_config(model, ev.method, res.rank, res.update_gap))
                theirs = prior.gap_nats(_config(model, res.versus_method, res.rank, res.versus_update_gap))
                agree = (ours < theirs) == (res.ppl < res.versus_ppl)
                notes.append(f"check: {ev.method} vs {res.versus_method} on {res.model} r{res.rank} ({ev.citation}: "
                             f"ppl {res.ppl} vs {res.versus_ppl}) — this prior orders them "
                             f"{'the same way' if agree else 'the other way'}")
    covered = {m for ev in evidence for m in ev.methods if any(r.full_rank_ppl or r.gap_closure for r in ev.results)}
    missing = [m for m, spec in REGISTRY.items() if spec.project and m not in covered]
    if missing:
        notes.append(f"no usable published numbers for {', '.join(missing)} (profiles/evidence/*.toml says what "
                     "could not be found): the energy model alone")
    notes.append("captured energy does not credit recovery terms, Adam's basis effects or learning rates; "
                 "8-bit states and per-layer stepping are not scored")
    prior.notes = notes
    return prior


def reference_probe_path() -> Path:
    """The committed probe of the largest model (`profiles/measured/probe_*.jsonl`)."""
    best: tuple[int, Path] | None = None
    for path in sorted((profiles_dir() / "measured").glob("probe_*.jsonl")):
        with open(path, encoding="utf-8") as f:
            first = f.readline()  # a probe file starts with its `probe_run` header
        try:
            row = json.loads(first)
        except json.JSONDecodeError:
            continue
        if row.get("kind") == "probe_run" and row.get("model") == row.get("target_model"):
            size = int(row.get("params") or 0)
            if best is None or size > best[0]:
                best = (size, path)
    if best is None:
        raise SubprofError("no committed probe in profiles/measured/probe_*.jsonl: the published prior needs one")
    return best[1]


@cache
def published_prior() -> PublishedPrior:
    path = reference_probe_path()
    run = ProbeRun.from_rows(read_rows(path), str(path.name))
    reference = ProbeQuality.from_run(run, f"profiles/measured/{path.name}")
    return fit_prior(load_published(), reference, reference.source)


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

