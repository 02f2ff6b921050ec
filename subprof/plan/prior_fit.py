"""Fitting the published-results prior (`subprof.plan.evidence.PublishedPrior`), done once and committed:

    python -m subprof.plan.prior_fit          # rewrites profiles/evidence/prior_fit.json

reads the evidence files (`profiles/evidence/*.toml`) and the reference probe (the committed probe of the largest
model, `profiles/measured/probe_*.jsonl`), calibrates the trackers' lag to Ori's published closure, fits
A(N) = exp(a + b·ln N) to GaLore's Table 2 gaps, checks the published comparisons without a full-rank figure, and
writes what `plan` reads: a, b, L, the notes, the reference probe's curves reduced to what the energy model reads
and its S̄ at every refresh interval plan searches (34 kB instead of the 2.6 MB probe), with the SHA-256 of every
input. `tests/test_evidence.py` refits and
requires the same numbers, so a changed input without a rewritten fit fails there. Pure Python."""

from __future__ import annotations

import hashlib
import json
import math
from pathlib import Path

from subprof.catalog import load_model, profiles_dir
from subprof.errors import SubprofError
from subprof.methods import REGISTRY
from subprof.plan.evidence import (PRIOR_SOURCE, PRIOR_TOLERANCE, PRIOR_UNIT, ProbeQuality, PublishedPrior,
                                   calibrate_tracker_lag, prior_fit_path, train_config)
from subprof.plan.probe_curves import ProbeRun
from subprof.plan.published import EvidenceFile, evidence_dir, load_published
from subprof.results import read_rows

COMMAND = "python -m subprof.plan.prior_fit"


def fit_prior(evidence: list[EvidenceFile], reference: ProbeQuality, reference_label: str) -> PublishedPrior:
    """A(N) from every result with a full-rank perplexity; the trackers' lag from a published gap closure."""
    lag_note = calibrate_tracker_lag(reference, evidence)
    points = []
    used = []
    for ev in evidence:
        for res in ev.results:
            if res.full_rank_ppl and res.ppl and res.rank:
                model = load_model(res.model)
                lost = 1.0 - reference.captured(train_config(model, ev.method, res.rank, res.update_gap))
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
    prior = PublishedPrior(source=PRIOR_SOURCE, unit=PRIOR_UNIT, tolerance=PRIOR_TOLERANCE, reference=reference,
                           a=a, b=b, reference_label=reference_label)
    notes = [f"scale: GaLore-vs-full-rank gaps of {'; '.join(used)} fitted as Δ = exp({a:.2f} {b:+.3f}·ln N) "
             f"× lost energy share ({len(points)} points)",
             f"shape in rank and gap: {reference.source}"]
    if lag_note:
        notes.append(lag_note)
    for ev in evidence:
        for res in ev.results:
            if res.versus_ppl and res.ppl and res.versus_method and res.rank:
                model = load_model(res.model)
                ours = prior.gap_nats(train_config(model, ev.method, res.rank, res.update_gap))
                theirs = prior.gap_nats(train_config(model, res.versus_method, res.rank, res.versus_update_gap))
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


def fit_published_prior() -> PublishedPrior:
    """The prior fitted now from the committed inputs (what `plan` would read from a freshly written file)."""
    path = reference_probe_path()
    label = f"profiles/measured/{path.name}"
    reference = ProbeQuality.from_run(ProbeRun.from_rows(read_rows(path), path.name), label)
    return fit_prior(load_published(), reference, label)


def prior_fit_data() -> dict:
    """The content of `profiles/evidence/prior_fit.json`: the fit, the command that wrote it and its inputs."""
    root = profiles_dir()
    inputs = [reference_probe_path(), *sorted(evidence_dir().glob("*.toml"))]
    return {"written_by": COMMAND,
            "inputs": {f"profiles/{p.relative_to(root).as_posix()}": hashlib.sha256(p.read_bytes()).hexdigest()
                       for p in inputs},
            **fit_published_prior().to_fit()}


def write_prior_fit(path: Path | None = None) -> Path:
    path = path or prior_fit_path()
    path.write_text(json.dumps(prior_fit_data(), indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
    return path


if __name__ == "__main__":
    print(f"wrote {write_prior_fit()}")
