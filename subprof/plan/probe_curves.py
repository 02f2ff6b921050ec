"""Curves from `subprof probe` rows: captured energy against rank, staleness against gap, per layer type — and the
few numbers read off them (the rank that reaches a share, the gap where a stale basis falls below a share, the
effective rotation rate). Pure Python (plan must not import torch); used by `probe`'s summary, `plan --probe`
(`subprof.plan.evidence`) and `report --probe`.

Definitions are those of `subprof.train.subspace` (which writes the rows). Aggregation: a curve averages its rows
weighted by the weight's size m·n (Adam's step moves every element alike, so a weight's share counts by its size),
over all sampled steps and layers of the chosen type(s).

Between measured ranks and gaps, curves are interpolated linearly in log(rank) / log(gap); s(0) = 1 by definition.
Beyond the largest measured gap, staleness follows a stretched exponential fitted to the measured points,

    s(k) = f + (1 − f) · exp(−(k/τ)^β),   f = (r/d) / E(r),

whose floor f is what an unrelated (random) r-dimensional basis would capture relative to the fresh one; τ and β
(0.25 … 2) by least squares. A refresh every T steps holds, on average over its interval, S̄(T) = (1/T) Σ_{k<T} s(k)
of the fresh basis's share.
"""

from __future__ import annotations

import bisect
import math
import statistics
from dataclasses import dataclass, field
from functools import cached_property

from subprof.errors import SubprofError

TYPES = ("q", "k", "v", "o", "gate", "up", "down")
LEVELS_ENERGY = (0.5, 0.8, 0.9)
LEVELS_STALE = (0.9, 0.8)
EXACT_SUM_STEPS = 64  # S̄(T) sums s(k) exactly up to here, integrates beyond


@dataclass(kw_only=True)
class ProbeRun:
    """One probe run's rows, split by kind. `header` is its `probe_run` row, `end` its `probe_end` row (None while
    unfinished)."""

    header: dict
    energy: list[dict] = field(default_factory=list)
    stale: list[dict] = field(default_factory=list)
    tracking: list[dict] = field(default_factory=list)
    end: dict | None = None
    _memo: dict = field(default_factory=dict, repr=False)  # curves are read many times by plan: computed once

    def _once(self, key: tuple, compute):
        if key not in self._memo:
            self._memo[key] = compute()
        return self._memo[key]

    @classmethod
    def from_rows(cls, rows: list[dict], source: str = "probe rows") -> "ProbeRun":
        """The newest finished run in `rows` (else the newest unfinished one); a one-line error without any."""
        runs: dict[str, ProbeRun] = {}
        order: list[str] = []
        for row in rows:
            kind, run_id = row.get("kind"), row.get("run_id")
            if not str(kind).startswith("probe") or run_id is None:
                continue
            if kind == "probe_run":
                if run_id not in runs:
                    order.append(run_id)
                    runs[run_id] = cls(header=row)
                continue
            run = runs.get(run_id)
            if run is None:
                continue
            if kind == "probe_energy":
                run.energy.append(row)
            elif kind == "probe_stale":
                run.stale.append(row)
            elif kind == "probe_tracking":
                run.tracking.append(row)
            elif kind == "probe_end":
                run.end = row
        if not order:
            raise SubprofError(f"{source} holds no `subprof probe` rows (write some with `subprof probe --out ...`)")
        finished = [r for r in order if runs[r].end is not None and runs[r].energy]
        chosen = runs[(finished or order)[-1]]
        if not chosen.energy:
            raise SubprofError(f"{source}: the probe run has no energy rows yet (interrupted before its first "
                               "sampled step); rerun it with --resume")
        return chosen

    # --- what was measured -------------------------------------------------------------------------------------
    @property
    def model(self) -> str:
        return str(self.header.get("model"))

    @property
    def finished(self) -> bool:
        return self.end is not None

    @cached_property
    def ranks(self) -> list[int]:
        return sorted({int(r) for row in self.energy for r in row["energy"]})

    @cached_property
    def gaps(self) -> list[int]:
        return sorted({int(row["gap"]) for row in self.stale})

    @cached_property
    def types(self) -> list[str]:
        found = {row["type"] for row in self.energy}
        return [t for t in TYPES if t in found] + sorted(found - set(TYPES))

    def side(self, layer_type: str | None = None) -> int:
        """The projected side d of that type's weights (the smallest, if they differ)."""
        return self._once(("side", layer_type),
                          lambda: min(int(r["side"]) for r in self._rows(self.energy, layer_type)))

    def decompositions(self) -> list[str]:
        return sorted({row.get("svd", "exact") for row in self.energy})

    def _rows(self, rows: list[dict], layer_type: str | None) -> list[dict]:
        picked = [r for r in rows if layer_type is None or r["type"] == layer_type]
        if not picked:
            raise SubprofError(f"the probe has no rows for layer type {layer_type!r}")
        return picked

    # --- curves ----------------------------------------------------------------------------------------------
    def energy_curve(self, layer_type: str | None = None) -> dict[int, float]:
        """{rank: E(rank)}, size-weighted mean over weights and sampled steps."""
        return self._once(("energy", layer_type), lambda: _weighted(self._rows(self.energy, layer_type), "energy"))

    def staleness_curve(self, rank: int, layer_type: str | None = None) -> dict[int, float]:
        """{gap: s(gap)} at `rank` (one of the probe's ranks below d)."""
        return self._once(("staleness", rank, layer_type),
                          lambda: _by_gap(self._rows(self.stale, layer_type), "staleness", rank))

    def drift_curve(self, rank: int, layer_type: str | None = None) -> dict[int, float]:
        return _by_gap(self._rows(self.stale, layer_type), "drift", rank)

    def knee(self, layer_type: str | None = None) -> float:
        """Median over weights and steps of the count of above-average directions."""
        return statistics.median(int(r["knee"]) for r in self._rows(self.energy, layer_type))

    def stale_ranks(self, layer_type: str | None = None) -> list[int]:
        def compute() -> list[int]:
            rows = self._rows(self.stale, layer_type) if self.stale else []
            return sorted({int(r) for row in rows for r in row["staleness"]})
        return self._once(("stale_ranks", layer_type), compute)

    def tracking_ratio(self) -> float | None:
        """Mean over rows of (share captured by the method's own basis) / (share of the fresh top-r basis)."""
        vals = [r["tracking"] for r in self.tracking if r.get("tracking") is not None]
        return statistics.fmean(vals) if vals else None


def _weighted(rows: list[dict], field_name: str) -> dict[int, float]:
    sums: dict[int, float] = {}
    weights: dict[int, float] = {}
    for row in rows:
        w = float(row["m"]) * float(row["n"])
        for r, v in row[field_name].items():
            if v is None:
                continue
            sums[int(r)] = sums.get(int(r), 0.0) + w * float(v)
            weights[int(r)] = weights.get(int(r), 0.0) + w
    return {r: sums[r] / weights[r] for r in sorted(sums)}


def _by_gap(rows: list[dict], field_name: str, rank: int) -> dict[int, float]:
    key = str(rank)
    sums: dict[int, float] = {}
    weights: dict[int, float] = {}
    for row in rows:
        v = row[field_name].get(key)
        if v is None:
            continue
        w = float(row["m"]) * float(row["n"])
        g = int(row["gap"])
        sums[g] = sums.get(g, 0.0) + w * float(v)
        weights[g] = weights.get(g, 0.0) + w
    return {g: sums[g] / weights[g] for g in sorted(sums)}


# ------------------------------------------------------------------------------------------------ interpolation


def interp_log(points: dict[int, float], x: float) -> float:
    """Piecewise-linear in log(x) through `points`; constant beyond the ends."""
    xs = sorted(points)
    if not xs:
        raise ValueError("no points to interpolate")
    if x <= xs[0]:
        return points[xs[0]]
    if x >= xs[-1]:
        return points[xs[-1]]
    for lo, hi in zip(xs, xs[1:]):
        if lo <= x <= hi:
            t = (math.log(x) - math.log(lo)) / (math.log(hi) - math.log(lo))
            return points[lo] + t * (points[hi] - points[lo])
    return points[xs[-1]]


def energy_at(curve: dict[int, float], rank: float, side: int) -> float:
    """E(rank) from a measured curve: log-interpolated between measured ranks; below the smallest, proportional to
    rank (E(0) = 0); above the largest, linear towards E(d) = 1. Measured shares are clipped to [0, 1] (a sum of
    float σ² over ‖G‖² can land a few ulps above 1)."""
    pts = {r: min(1.0, max(0.0, v)) for r, v in curve.items() if r < side}
    pts[side] = 1.0
    lo = min(pts)
    if rank <= 0:
        return 0.0
    if rank >= side:
        return 1.0
    if rank < lo:
        return pts[lo] * rank / lo
    below = max(r for r in pts if r <= rank)
    above = min(r for r in pts if r >= rank)
    if above == side and below != side:
        t = (rank - below) / (side - below)
        return pts[below] + t * (1.0 - pts[below])
    return interp_log({below: pts[below], above: pts[above]}, rank)


def rank_reaching(curve: dict[int, float], level: float, side: int) -> float | None:
    """The (interpolated) rank where E first reaches `level`; None if the measured ranks never do."""
    pts = sorted(curve.items())
    prev_r, prev_v = 0, 0.0
    for r, v in pts:
        if v >= level:
            if r == prev_r or v == prev_v:
                return float(r)
            if prev_r == 0:
                return r * level / v
            t = (level - prev_v) / (v - prev_v)
            return math.exp(math.log(prev_r) + t * (math.log(r) - math.log(prev_r)))
        prev_r, prev_v = r, v
    return None


def gap_below(curve: dict[int, float], level: float) -> float | None:
    """The (log-interpolated) gap where staleness first falls below `level`; None if no measured gap does."""
    prev_g, prev_v = 0, 1.0
    for g, v in sorted(curve.items()):
        if v < level:
            if prev_g == 0:
                return g * (1 - level) / (1 - v) if v < 1 else float(g)
            t = (prev_v - level) / (prev_v - v)
            return math.exp(math.log(prev_g) + t * (math.log(g) - math.log(prev_g)))
        prev_g, prev_v = g, v
    return None


# ------------------------------------------------------------------------------------------------ staleness model


@dataclass(kw_only=True)
class StalenessModel:
    """s(k): the measured points (log-interpolated, s(0) = 1), a stretched exponential beyond the last one."""

    points: tuple[tuple[int, float], ...]
    floor: float
    tau: float
    beta: float
    _prefix: list[float] = field(default_factory=lambda: [0.0], repr=False)  # Σ_{k<n} s(k), grown on demand

    @classmethod
    def fit(cls, curve: dict[int, float], floor: float) -> "StalenessModel":
        floor = min(max(floor, 0.0), 0.999)
        pts = tuple(sorted((int(g), min(max(float(v), floor), 1.0)) for g, v in curve.items()))
        best = (math.inf, 1e9, 1.0)
        for beta in (0.25, 0.35, 0.5, 0.7, 1.0, 1.4, 2.0):
            # for fixed β, log(−log((s − f)/(1 − f))) = β log k − β log τ: τ from the mean over points
            logs = [(g, (v - floor) / (1 - floor)) for g, v in pts if 1e-6 < (v - floor) / (1 - floor) < 1 - 1e-9]
            if not logs:
                continue
            log_tau = statistics.fmean(math.log(g) - math.log(-math.log(u)) / beta for g, u in logs)
            tau = math.exp(log_tau)
            err = sum((floor + (1 - floor) * math.exp(-((g / tau) ** beta)) - v) ** 2 for g, v in pts)
            if err < best[0]:
                best = (err, tau, beta)
        return cls(points=pts, floor=floor, tau=best[1], beta=best[2])

    def at(self, gap: float) -> float:
        """s(gap): linear from s(0) = 1 to the first measured gap, log-interpolated between measured gaps, and
        beyond the last one the fitted shape scaled to pass through it: f + (s_last − f)·(m(k) − f)/(m(k_last) − f)."""
        if gap <= 0 or not self.points:
            return 1.0
        first_gap, first_v = self.points[0]
        if gap < first_gap:
            return 1.0 + (first_v - 1.0) * gap / first_gap
        last_gap, last_v = self.points[-1]
        if gap <= last_gap:
            i = bisect.bisect_left(self.points, (gap, -1.0))
            hi_g, hi_v = self.points[i]
            if hi_g == gap or i == 0:
                return hi_v
            lo_g, lo_v = self.points[i - 1]
            t = (math.log(gap) - math.log(lo_g)) / (math.log(hi_g) - math.log(lo_g))
            return lo_v + t * (hi_v - lo_v)
        ref = self._tail_ref
        if ref <= 1e-12:
            return last_v
        return self.floor + (last_v - self.floor) * (self._model(gap) - self.floor) / ref

    @cached_property
    def _tail_ref(self) -> float:
        """m(k_last) − f: the fitted shape's excess at the last measured gap (the tail is scaled by it)."""
        return self._model(self.points[-1][0]) - self.floor

    def _model(self, gap: float) -> float:
        return self.floor + (1 - self.floor) * math.exp(-((gap / self.tau) ** self.beta))

    def _sum_below(self, n: int) -> float:
        """Σ_{k<n} s(k), from prefix sums kept up to the largest n asked so far."""
        while len(self._prefix) <= n:
            k = len(self._prefix) - 1
            self._prefix.append(self._prefix[-1] + self.at(k))
        return self._prefix[n]

    def mean_over(self, interval: float) -> float:
        """S̄(T) = (1/T) Σ_{k=0}^{T−1} s(k) (T may be fractional: the mean of s over [0, T) on a unit grid). Beyond
        the first 64 steps the sum is the integral ∫ s over [63.5, T − 0.5] (midpoint rule; s is smooth there),
        by the trapezoid rule on a 64-point log grid."""
        if interval <= 1:
            return 1.0
        n = int(math.floor(interval))
        if n <= EXACT_SUM_STEPS:
            return (self._sum_below(n) + (interval - n) * self.at(n)) / interval
        lo, hi = EXACT_SUM_STEPS - 0.5, interval - 0.5
        grid = [lo * (hi / lo) ** (i / 64) for i in range(65)]
        s = [self.at(x) for x in grid]  # each grid point once (plan reads hundreds of these)
        tail = sum((grid[i + 1] - grid[i]) * (s[i] + s[i + 1]) / 2 for i in range(64))
        return (self._sum_below(EXACT_SUM_STEPS) + tail) / interval


def staleness_floor(rank: int, side: int, energy: float) -> float:
    """What an unrelated r-dimensional basis captures relative to the fresh top-r one: (r/d) / E(r)."""
    return min(1.0, (rank / side) / energy) if energy > 0 else 1.0


def rotation_rate(curve: dict[int, float], rank: int, side: int, energy: float) -> float | None:
    """The effective angular speed ω (rad/step) of the top-r subspace read off a staleness curve.

    For a subspace whose principal angles to its earlier self all grow as θ = ωk, a stale basis captures
    cos²θ of the signal and r/d of the rest, so with ŝ = (s − f)/(1 − f) (f = `staleness_floor`):
    cos²θ = ρ + (1 − ρ)·ŝ, ρ = r/d. ω is the least-squares slope of θ(k) through the origin over the gaps where
    0.05 < ŝ < 0.98 (where θ is neither lost in round-off nor saturated)."""
    f = staleness_floor(rank, side, energy)
    rho = rank / side
    num = den = 0.0
    for gap, s in curve.items():
        shat = (s - f) / (1 - f) if f < 1 else 0.0
        if not 0.05 < shat < 0.98:
            continue
        cos2 = min(1.0, max(0.0, rho + (1 - rho) * shat))
        theta = math.acos(math.sqrt(cos2))
        num += gap * theta
        den += gap * gap
    return num / den if den else None


# ------------------------------------------------------------------------------------------------ summary


def probe_summary(run: ProbeRun) -> dict:
    """Per layer type (and "all"): the side d, the knee, E at each rank, the rank reaching 50/80/90% of the energy,
    and per rank the staleness curve, the gap where it falls below 90/80% and the effective rotation rate."""
    out: dict[str, dict] = {}
    for kind in [*run.types, None]:
        side = run.side(kind)
        curve = run.energy_curve(kind)
        entry: dict = {"side": side, "knee": run.knee(kind), "energy": curve,
                       **{f"rank_at_{round(level * 100)}": rank_reaching(curve, level, side)
                          for level in LEVELS_ENERGY}, "staleness": {}}
        for rank in (r for r in run.stale_ranks(kind) if r < side):
            stale = run.staleness_curve(rank, kind)
            entry["staleness"][rank] = {
                "curve": stale, "drift": run.drift_curve(rank, kind),
                **{f"gap_below_{round(level * 100)}": gap_below(stale, level) for level in LEVELS_STALE},
                "rotation_rate": rotation_rate(stale, rank, side, energy_at(curve, rank, side))}
        out[kind or "all"] = entry
    return out
