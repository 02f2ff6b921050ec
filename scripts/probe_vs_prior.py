"""Does the probe order (method, rank, gap) the way measured validation loss does — more often than the old
hand-set prior did? Pairwise concordance over bursts at equal learning rate (README, "Probe: what it measures").

For every pair of burst configurations of one model (same steps, batch, seq, lr, seed) whose validation losses
differ by more than `--tie` nats, each predictor either orders the pair as the losses do (agree), the other way
(disagree), or scores both the same (tie: no prediction). Predictors: the removed hand-set prior (reproduced below
exactly as it stood in subprof/plan/planner.py before the evidence issue), the published-results prior and the
model's own probe (`subprof.plan.evidence`). Two cuts: every low-rank configuration (method, rank, gap), and GaLore's
(rank, gap) alone.

    python scripts/probe_vs_prior.py \
        --burst profiles/measured/burst_cpu_2026-11-23.jsonl profiles/measured/burst_cpu_probe_2026-12-01.jsonl \
        --probe tiny=profiles/measured/probe_cpu_tiny_2026-12-01.jsonl \
        --probe 20m=profiles/measured/probe_cpu_20m_2026-12-01.jsonl \
        --json profiles/measured/ordering_agreement_2026-12-01.json

(`burst_cpu_2026-12-01.jsonl` is another experiment — every method at its own learning-rate grid — and is not an
equal-lr comparison.)
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import os

from subprof.catalog import load_model
from subprof.config import TrainConfig
from subprof.plan.evidence import probe_quality, published_prior
from subprof.results import read_rows

OLD_BONUS = {"osd": 1.0, "ori": 1.0, "subtrack": 0.5, "sumo": 0.5}  # the removed MethodSpec.quality_prior values


def old_prior(c: TrainConfig) -> float:
    """planner.quality_prior as it stood: log2(rank) + streaming bonus (full at rank ≤ width/8, half above), −0.25
    per doubling of an SVD gap beyond 200, −0.1 for 8-bit states; full rank log2(width) + 2."""
    width = min(min(s.m, s.n) for s in c.model.linear_shapes())  # the smallest weight side, as it stood
    if not c.spec.project:
        score = math.log2(width) + 2.0
    else:
        bonus = OLD_BONUS.get(c.method, 0.0)
        score = math.log2(c.rank) + (bonus if c.rank * 8 <= width else bonus / 2)
        if c.update_gap > 200:
            score -= 0.25 * math.log2(c.update_gap / 200)
    return score - (0.1 if c.state_bits == 8 else 0.0)


def configs(rows: list[dict]) -> dict[tuple, list[tuple[TrainConfig, float]]]:
    """Finished bursts grouped by (model, steps, batch, seq, lr, seed): [(config, validation loss)]."""
    groups: dict[tuple, list] = {}
    for r in rows:
        if r.get("kind") != "burst" or r.get("status") != "ok" or r.get("val_loss") is None:
            continue
        key = (r["model"], r["steps"], r["batch"], r["seq"], r["lr"], r["seed"])
        cfg = TrainConfig(model=load_model(r["model"]), method=r["method"], rank=r["rank"],
                          update_gap=r["update_gap"], dtype=r.get("dtype", "fp32"), batch=r["batch"], seq=r["seq"])
        groups.setdefault(key, []).append((cfg, r["val_loss"]))
    return groups


def concordance(pairs: list[tuple[tuple[TrainConfig, float], tuple[TrainConfig, float]]], score, tie: float) -> dict:
    out = {"agree": 0, "disagree": 0, "tie": 0, "pairs": 0}
    for (a, la), (b, lb) in pairs:
        if abs(la - lb) <= tie:
            continue
        out["pairs"] += 1
        sa, sb = score(a), score(b)
        if math.isclose(sa, sb, rel_tol=1e-9, abs_tol=1e-12):
            out["tie"] += 1
        elif (sa > sb) == (la < lb):
            out["agree"] += 1
        else:
            out["disagree"] += 1
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--burst", nargs="+", required=True)
    ap.add_argument("--probe", action="append", default=[], help="MODEL=probe.jsonl")
    ap.add_argument("--tie", type=float, default=0.02, help="loss differences at or below this are not counted "
                    "(seed-to-seed shifts of the committed tiny bursts: 0.01–0.04)")
    ap.add_argument("--json")
    args = ap.parse_args()
    rows = [r for path in args.burst for r in read_rows(path)]
    probes = {k: probe_quality(v) for k, v in (p.split("=", 1) for p in args.probe)}
    prior = published_prior()
    report = []
    for key, items in sorted(configs(rows).items(), key=lambda kv: str(kv[0])):
        low = [x for x in items if x[0].spec.project]  # equal lr: the low-rank runs of the group
        pairs = list(itertools.combinations(low, 2))
        if not pairs:
            continue
        entry = {"group": dict(zip(("model", "steps", "batch", "seq", "lr", "seed"), key)), "configs": len(low)}
        cuts = {"all": pairs, "galore": [p for p in pairs if p[0][0].method == p[1][0].method == "galore"]}
        for cut, chosen in cuts.items():
            entry[cut] = {"old_prior": concordance(chosen, old_prior, args.tie),
                          "published_prior": concordance(chosen, prior.quality, args.tie)}
            if key[0] in probes:
                entry[cut]["probe"] = concordance(chosen, probes[key[0]].quality, args.tie)
        entry["losses"] = [{"config": c.label(), "val_loss": round(v, 4), "old_prior": round(old_prior(c), 3),
                            "published_prior": round(prior.quality(c), 6),
                            **({"probe": round(probes[key[0]].quality(c), 4)} if key[0] in probes else {})}
                           for c, v in sorted(low, key=lambda x: x[1])]
        report.append(entry)
    for e in report:
        g = e["group"]
        print(f"{g['model']} {g['steps']} steps lr {g['lr']} seed {g['seed']}: {e['configs']} configurations")
        for cut in ("all", "galore"):
            for name, c in e[cut].items():
                print(f"  {cut:6s} {name:16s} agree {c['agree']:3d}  disagree {c['disagree']:3d}  tie {c['tie']:3d}  "
                      f"(of {c['pairs']} pairs apart by > {args.tie} nats)")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"burst_files": [os.path.basename(p) for p in args.burst],
                       "probe_files": {k: os.path.basename(v) for k, v in (p.split("=", 1) for p in args.probe)},
                       "tie_nats": args.tie, "groups": report}, f, indent=1)


if __name__ == "__main__":
    main()
