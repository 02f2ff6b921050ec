"""Which quality model `plan` and `report` rank by: the fitted model (`subprof.plan.quality`) alone, or — with
`--probe FILE` — the same model with the user's measured rank curve put in.

A probe (`subprof probe`) measures E(r), the share of gradient energy a rank-r basis keeps, on the user's model
and data. The model's rank term is (r/r₀)^(−p) − (d/r₀)^(−p); the probe gives its own exponent p_probe, fitted to
the lost energy 1 − E(r) ≈ k·(r^(−p) − d^(−p)) over its measured ranks (least squares in log space). The plan uses

    p = exp((1 − w)·ln p_fit + w·ln p_probe),     w = min(1, steps / 2000) · (½ for a proxy model)

— a probe counts by what it can show: 200 steps of a proxy move p a twentieth of the way, a 2,000-step probe of
the target model replaces it. Staleness curves of a short probe describe early training (the basis drifts fastest
then) and are reported by `probe`, not used here. `plan --burst` moves the per-method offsets the same way, by
what its bursts measured on the user's model (`with_bursts`). Pure Python, no torch.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

from subprof.config import TrainConfig
from subprof.errors import SubprofError
from subprof.methods import REGISTRY
from subprof.plan.quality import METHOD_PREFIX, FittedQuality, QualityModel, fitted_quality

if TYPE_CHECKING:
    from subprof.plan.probe_curves import ProbeRun

FULL_WEIGHT_STEPS = 2000  # a probe this long (on the target model) sets the rank exponent alone
PROXY_WEIGHT = 0.5


def rank_exponent(energy: dict[int, float], side: int) -> float | None:
    """p with 1 − E(r) ≈ k·(r^(−p) − d^(−p)) over the measured ranks below d (golden-section search on p, k by least
    squares in log space); None with fewer than two usable points."""
    pts = [(r, 1.0 - e) for r, e in sorted(energy.items()) if r < side and 1.0 - e > 1e-6]
    if len(pts) < 2:
        return None

    def sse(p: float) -> float:
        logs = [(math.log(lost), math.log(r ** -p - side ** -p)) for r, lost in pts]
        k = sum(a - b for a, b in logs) / len(logs)
        return sum((a - b - k) ** 2 for a, b in logs)

    lo, hi = 0.01, 8.0
    for _ in range(80):
        m1, m2 = lo + (hi - lo) * 0.382, lo + (hi - lo) * 0.618
        lo, hi = (lo, m2) if sse(m1) < sse(m2) else (m1, hi)
    return (lo + hi) / 2


def probe_weight(run: ProbeRun) -> float:
    h = run.header
    w = min(1.0, float(h.get("steps") or 0) / FULL_WEIGHT_STEPS)
    return w * (PROXY_WEIGHT if h.get("target_model") not in (None, h.get("model")) else 1.0)


def with_probe(base: FittedQuality, run: ProbeRun, label: str) -> FittedQuality:
    """The fitted model with the rank exponent moved towards the probe's by the probe's weight."""
    p_probe = rank_exponent(run.energy_curve(None), run.side(None))
    if p_probe is None:
        raise SubprofError(f"--probe {label!r}: the probe has fewer than two measured ranks below the weights' side; "
                           "rerun `subprof probe` with more --ranks")
    w = probe_weight(run)
    p_fit = base.values["p"]
    p = math.exp((1 - w) * math.log(p_fit) + w * math.log(p_probe))
    h = run.header
    note = (f"probe {label}: {h.get('model')}, {h.get('steps')} steps on {h.get('corpus')} — its rank curve "
            f"gives p = {p_probe:.3g} against the fitted {p_fit:.3g}; weighted {w:.2f} by what it can show "
            f"(steps / {FULL_WEIGHT_STEPS}" + (", halved for a proxy model" if w and h.get("target_model") not in
                                               (None, h.get("model")) else "") + f"): p = {p:.3g}")
    if not run.finished:
        note += " (the probe run is unfinished: its rows so far are used)"
    return replace(base, source=f"{base.source} with the rank curve of probe {label}", notes=[note, *base.notes],
                   values={**base.values, "p": p}, _memo={})


def probe_quality(path: str) -> FittedQuality:
    """`plan --probe FILE`: the newest finished probe run in FILE in the fitted model."""
    from subprof.plan.probe_curves import ProbeRun  # with --probe only: a plan without one does without
    from subprof.results import read_result_files

    rows = read_result_files([path], "--probe")
    return with_probe(fitted_quality(), ProbeRun.from_rows(rows, f"--probe {str(path)!r}"), str(path))


def default_quality() -> QualityModel:
    return fitted_quality()


# ------------------------------------------------------------------------------------------------ bursts
@dataclass(frozen=True, kw_only=True, slots=True)
class BurstRun:
    """One finished burst as the quality model reads it: the configuration trained (the proxy's, with the gap it
    ran at), its optimizer batch in tokens, its validation loss, its steps, and whether it stood in for a larger
    target model."""

    config: TrainConfig
    tokens_per_step: int
    val_loss: float
    steps: int
    proxy: bool


def burst_weight(runs: list[BurstRun]) -> float:
    """What a set of bursts can show, as a probe: min(1, steps / 2000), halved when a proxy stood in."""
    steps = min(r.steps for r in runs)
    return min(1.0, steps / FULL_WEIGHT_STEPS) * (PROXY_WEIGHT if any(r.proxy for r in runs) else 1.0)


def with_bursts(base: FittedQuality, runs: list[BurstRun]) -> tuple[FittedQuality, dict[str, float]]:
    """The fitted model with the offsets the bursts can separate moved by what they measured on the user's model.

    The bursts are one within-table group: loss_i = μ + S(N)·(g_i + δ_k(i)), k = a run's (method, base). With a
    full-rank Adam run among them it is the anchor (the reference, offset 0); else the first run (the plan's
    pick). δ_k is the mean of (loss_i / S − g_i) over k's runs minus the anchor's; it moves the method's offset
    when k differs from the anchor by its method alone, the base optimizer's when by its base alone (a run that
    differs in both cannot say which, and moves nothing). The move is w·δ_k, w = `burst_weight` — 100 steps of a
    proxy move an offset a fortieth of the way; the rank and gap terms stay (a burst's few refreshes cannot fit
    them). Returns the model and the raw δ per parameter moved (g units)."""
    ok = [r for r in runs if math.isfinite(r.val_loss)]
    resid: dict[tuple[str, str], list[float]] = {}
    for r in ok:
        s = base.scale(r.config.model)
        key = (r.config.method, r.config.base)
        resid.setdefault(key, []).append(r.val_loss / s - base.g(r.config, r.tokens_per_step))
    if len(resid) < 2:
        return base, {}
    mean = {k: sum(x) / len(x) for k, x in resid.items()}
    anchor = next((k for k in mean if not REGISTRY[k[0]].project and k[1] == "adamw"),
                  (ok[0].config.method, ok[0].config.base))
    raw = {}
    for (method, opt), m in mean.items():
        if (method, opt) == anchor:
            continue
        if opt == anchor[1] and REGISTRY[method].project:
            raw[METHOD_PREFIX + method] = m - mean[anchor]
        elif method == anchor[0] and anchor[1] == "adamw":
            raw[(f"base:{opt}" if REGISTRY[method].project else f"full:{opt}")] = m - mean[anchor]
    if not raw:  # every other run differs from the anchor in method and base at once
        note = (f"bursts: no offset moved — each run differs from {'+'.join(anchor)} in both method and base "
                "optimizer, so a difference cannot be told to either")
        return replace(base, notes=[note, *base.notes], _memo={}), {}
    w = burst_weight(ok)
    values = dict(base.values)
    for name, d in raw.items():
        values[name] = values.get(name, 0.0) + w * d
    moved = ", ".join(f"{name} {w * d:+.3g}" for name, d in sorted(raw.items()))
    proxy = any(r.proxy for r in ok)
    note = (f"bursts ({min(r.steps for r in ok)} steps" + (", a proxy model" if proxy else "")
            + f") moved offsets against {'+'.join(anchor)} by weight {w:.3g} (steps / {FULL_WEIGHT_STEPS}"
            + (", halved for a proxy" if proxy else "") + f"): {moved} (g units)")
    return replace(base, source=f"{base.source} with the method terms of this plan's bursts", notes=[note, *base.notes],
                   values=values, _memo={}), raw
