"""Tables of measured result files for the report: `bench` rows (estimated vs measured peak, with the error rule of
`subprof.results`), `proj` rows (projection-update timings, ratio to SVD) and `burst` rows (loss curves, summary).
Torch-free: the rows are plain JSON.
"""

from __future__ import annotations

import math

import pandas as pd

from subprof.config import TrainConfig
from subprof.errors import SubprofError
from subprof.plan.memory import estimate
from subprof.results import comparable_estimate, comparable_peak, error_pct, normalize, number

GIB = 2**30


def _num(row: dict, *keys: str) -> float | None:
    """The first of `keys` that holds a finite number, as a float."""
    for key in keys:
        value = number(row, key)
        if value is not None:
            return float(value)
    return None


def with_estimate(row: dict) -> tuple[dict, str | None]:
    """The row (in today's schema) with the analytic estimate of its configuration when it does not carry one, and
    where the estimate came from ("row", "recomputed", or None when the configuration cannot be read)."""
    row = normalize(row)
    if row.get("estimated_peak_allocated_bytes") is not None:
        return row, "row"
    try:
        est = estimate(TrainConfig.from_dict(row))
    except (SubprofError, KeyError, TypeError, ValueError):
        return row, None
    return {**row, "estimated_peak_allocated_bytes": est.peak_allocated_bytes,
            "estimated_cuda_runtime_bytes": est.components["cuda_runtime"]}, "recomputed"


def over_budget(row: dict) -> bool:
    """A row that ran to the end and was then judged over its `--budget` (`measure.runner.Budget.apply`: status
    "oom" beside a measured peak and the device use it implies): a measurement, not a failure."""
    return (row.get("status") == "oom" and number(row, "budget_device_used_bytes") is not None
            and comparable_peak(row) is not None)


def bench_table(rows: list[dict]) -> pd.DataFrame:
    """Estimated vs measured peak allocated per bench row, compared like with like (`subprof.results`: a trace or CPU
    row against the model-side estimate, a GPU row against the full one); error % = (estimated − measured) /
    measured · 100 (`results.error_pct`), also for rows measured to the end and judged over their budget
    (verdict "over budget"); the verdict of any other row is its status."""
    out = []
    for raw in rows:
        r, source = with_estimate(raw)
        measured, est = comparable_peak(r), comparable_estimate(r)
        over = over_budget(r)
        out.append({"model": r.get("model"), "method": r.get("method"), "implementation": r.get("implementation"),
                    "rank": r.get("rank"), "update_gap": r.get("update_gap"), "batch": r.get("batch"),
                    "seq": r.get("seq"), "state_bits": r.get("state_bits"), "layerwise": r.get("layerwise"),
                    "backend": r.get("backend", "not stated"), "device": r.get("device_name") or r.get("device"),
                    "status": r.get("status", "ok"), "verdict": "over budget" if over else r.get("status", "ok"),
                    "estimated_peak_allocated_bytes": round(est) if est is not None else None,
                    "peak_allocated_bytes": round(measured) if measured is not None else None,
                    "estimate_source": source if est is not None else None,
                    "estimated_gib": est / GIB if est is not None else None,
                    "measured_gib": measured / GIB if measured is not None else None,
                    "error_pct": error_pct({**r, "status": "ok"} if over else r)})
    return pd.DataFrame(out)


def _shape_text(shape: object) -> str:
    if isinstance(shape, (list, tuple)) and len(shape) == 2:
        return f"{shape[0]}×{shape[1]}"
    return str(shape) if shape is not None else "?"


def proj_table(rows: list[dict]) -> pd.DataFrame:
    """Projection-update timings; ratio_to_svd = SVD median / method median on the same shape, device, dtype
    (and rank where SVD was timed at that rank)."""
    out = [{"model": r.get("model"), "method": str(r.get("method", "?")), "shape": _shape_text(r.get("shape")),
            "rank": r.get("rank"), "median_ms": _num(r, "median_ms"), "spread_ms": _num(r, "spread_ms"),
            "device": r.get("device", "?"), "dtype": r.get("dtype", "?")} for r in rows]
    df = pd.DataFrame(out, columns=["model", "method", "shape", "rank", "median_ms", "spread_ms", "device", "dtype"])
    df = df[df["median_ms"].notna()].reset_index(drop=True)
    svd = df[df["method"] == "svd"]
    exact = {(s.shape, s.rank, s.device, s.dtype): s.median_ms for s in svd.itertuples()}
    loose = {(s.shape, s.device, s.dtype): s.median_ms for s in svd.itertuples()}
    ratios = []
    for r in df.itertuples():
        ref = exact.get((r.shape, r.rank, r.device, r.dtype)) or loose.get((r.shape, r.device, r.dtype))
        ratios.append(ref / r.median_ms if ref and r.median_ms else None)
    df["ratio_to_svd"] = ratios
    return df


_LOSS_KEYS = {"train": ("train_loss", "train_losses", "losses", "loss"),
              "validation": ("val_curve", "val_loss", "val_losses", "validation_loss", "eval_loss")}
_CURVE_KEYS = ("curve", "history", "log", "evals", "points")


def _burst_label(r: dict) -> str:
    if r.get("label"):
        return str(r["label"])
    parts = [str(r.get("model", "")), str(r.get("method", "?"))]
    if r.get("rank"):
        parts.append(f"r{r['rank']}")
    if r.get("update_gap") and r["update_gap"] != 1:
        parts.append(f"T{r['update_gap']}")
    return " ".join(p for p in parts if p)


def _points(value: object, every: float) -> list[tuple[float, float]]:
    """A curve as (step, loss): from [loss, …] (step = index · every), [[step, loss], …] or [{step, loss}, …]."""
    pts = []
    if not isinstance(value, list):
        return pts
    for i, item in enumerate(value):
        if isinstance(item, (int, float)) and not isinstance(item, bool):
            pts.append(((i + 1) * every, float(item)))
        elif isinstance(item, (list, tuple)) and len(item) >= 2:
            pts.append((float(item[0]), float(item[1])))
        elif isinstance(item, dict) and "step" in item:
            loss = _num(item, "loss", "value")
            if loss is not None:
                pts.append((float(item["step"]), loss))
    return pts


def burst_labels(rows: list[dict]) -> list[str]:
    """One distinct label per burst row: its configuration, plus the learning rate (then a counter) on clashes."""
    labels = [_burst_label(r) for r in rows]
    if len(set(labels)) < len(labels):
        labels = [f"{lab} lr{r['lr']:g}" if isinstance(r.get("lr"), (int, float)) else lab
                  for lab, r in zip(labels, rows)]
    seen: dict[str, int] = {}
    out = []
    for lab in labels:
        seen[lab] = seen.get(lab, 0) + 1
        out.append(lab if seen[lab] == 1 else f"{lab} #{seen[lab]}")
    return out


def burst_table(rows: list[dict]) -> pd.DataFrame:
    """Long table (config, kind, step, loss) from burst rows, whatever curve layout they use (`train_loss` per
    step and `val_curve` [[step, loss], …] as `subprof burst` writes them, or lists of dicts, or one row per
    step); non-finite losses are dropped (a diverged run stops there)."""
    out = []
    for r, label in zip(rows, burst_labels(rows)):
        status = r.get("status", "ok")
        found = False
        for kind, keys in _LOSS_KEYS.items():
            for key in keys:
                every = _num(r, "eval_every" if kind == "validation" else "log_every") or 1.0
                for step, loss in _points(r.get(key), every):
                    out.append({"config": label, "kind": kind, "step": step, "loss": loss, "status": status})
                    found = True
                if found and kind == "validation":
                    break
        for key in _CURVE_KEYS:
            items = r.get(key)
            for item in items if isinstance(items, list) else []:
                if not isinstance(item, dict) or "step" not in item:
                    continue
                for kind, keys in _LOSS_KEYS.items():
                    loss = _num(item, *keys)
                    if loss is not None:
                        out.append({"config": label, "kind": kind, "step": float(item["step"]), "loss": loss,
                                    "status": status})
                        found = True
        step = _num(r, "step", "steps")
        if not found and step is not None:
            for kind, keys in _LOSS_KEYS.items():
                loss = _num(r, *keys)
                if loss is not None:
                    out.append({"config": label, "kind": kind, "step": step, "loss": loss, "status": status})
    df = pd.DataFrame(out, columns=["config", "kind", "step", "loss", "status"])
    df = df.loc[df["loss"].astype(float).map(math.isfinite).astype(bool).to_numpy()]
    return df.drop_duplicates().sort_values(["config", "kind", "step"], kind="stable").reset_index(drop=True)


def burst_summary(rows: list[dict]) -> pd.DataFrame:
    """One line per burst configuration, ranked by final validation loss, with speed and memory beside it."""
    out = []
    for r, label in zip(rows, burst_labels(rows)):
        train = r.get("train_loss")
        out.append({"config": label, "model": r.get("model"), "method": r.get("method"), "rank": r.get("rank"),
                    "update_gap": r.get("update_gap"), "lr": _num(r, "lr"), "status": r.get("status", "ok"),
                    "steps": r.get("steps_done", r.get("steps")),
                    "final_train_loss": _num(r, "final_train_loss") if not isinstance(train, (int, float))
                    else float(train), "val_loss": _num(r, "val_loss"), "tokens_per_s": _num(r, "tokens_per_s"),
                    "projection_share": _num(r, "projection_share"),
                    "peak_bytes": _num(r, "peak_allocated_bytes", "peak_tracked_bytes"),
                    "device": r.get("device"), "corpus": r.get("corpus") or r.get("corpus_name")})
    df = pd.DataFrame(out, columns=["config", "model", "method", "rank", "update_gap", "lr", "status", "steps",
                                    "final_train_loss", "val_loss", "tokens_per_s", "projection_share",
                                    "peak_bytes", "device", "corpus"])
    return df.sort_values("val_loss", na_position="last", kind="stable").reset_index(drop=True)


# ---------------------------------------------------------------------------------------------------- in words


