"""`report`: the tables of a procurement report as pandas DataFrames, and the words that summarise them.

For every selected model × GPU the planner (`planner.plan`, the same search as `subprof plan`) picks the best
configuration that fits the GPU's driver-reported memory minus a safety margin. From those plans come: the fit
matrix, the memory breakdown per method at its recommended configuration, and the hours and cost of a token
budget (tokens / predicted tokens/s × catalogue or user price). Result files add measured tables: `bench` rows
(estimated vs measured peak), `proj` rows (projection-update timings, ratio to SVD) and `burst` rows (loss
curves). Nothing here is measured: every predicted number comes from `memory`, `planner` and `throughput`.
`summary_lines` turns the tables into sentences and `assumptions` states what they rest on; `write_csv` writes the
tables. The HTML page that draws them is `report_html`.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import pandas as pd

from subprof.catalog import Budget, GpuSpec, ModelConfig, load_model
from subprof.errors import SubprofError
from subprof.measure import comparable_peak
from subprof.memory import Estimate, TrainConfig, estimate
from subprof.methods.base import MethodSpec
from subprof.planner import Candidate, Plan, PlanRequest, plan, ranks_for
from subprof.units import fmt_count

GIB = 2**30
FIT_CLASSES = ("nothing fits", "low-rank only", "full-rank AdamW fits")


@dataclass(kw_only=True, slots=True)
class ReportRequest:
    """What the report covers. `prices` overrides catalogue USD/h per GPU key."""

    models: list[ModelConfig]
    gpus: list[GpuSpec]
    methods: list[tuple[MethodSpec, int | None]]
    seq: int = 256
    dtype: str = "bf16"
    tokens: int = 10**10
    margin: float = 0.05
    utilization: float = 0.4
    prices: dict[str, float] = field(default_factory=dict)
    bench_rows: list[dict] = field(default_factory=list)
    proj_rows: list[dict] = field(default_factory=list)
    burst_rows: list[dict] = field(default_factory=list)

    def __post_init__(self) -> None:
        if not self.models:
            raise SubprofError("--models is empty; give e.g. 1b,7b")
        if not self.gpus:
            raise SubprofError("--gpus is empty; give e.g. 4090,a100-80gb or all")
        if self.tokens <= 0:
            raise SubprofError(f"--tokens must be positive, got {self.tokens}")
        for key, usd in self.prices.items():
            if not (usd > 0 and math.isfinite(usd)):
                raise SubprofError(f"--price {key}={usd}: a price must be a positive number of USD per hour")

    def price(self, gpu: GpuSpec) -> tuple[float, str]:
        """USD per GPU-hour and where it came from."""
        if gpu.key in self.prices:
            return self.prices[gpu.key], "--price"
        return gpu.price_per_hour, gpu.sources.get("price", "catalogue (no source given)")


@dataclass(kw_only=True, slots=True)
class Cell:
    model: ModelConfig
    gpu: GpuSpec
    plan: Plan


@dataclass(kw_only=True, slots=True)
class Report:
    request: ReportRequest
    cells: list[Cell]
    tables: dict[str, pd.DataFrame]
    summary: list[str]
    assumptions: list[str]

    def to_json(self) -> dict:
        """Every table as a list of records (NaN → null), with the summary and the assumptions."""
        return {"summary": self.summary, "assumptions": self.assumptions,
                "tables": {name: _records(df) for name, df in self.tables.items()}}


def _records(df: pd.DataFrame) -> list[dict]:
    return [{k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in row.items()}
            for row in df.astype(object).to_dict(orient="records")]


# ------------------------------------------------------------------------------------------------------- planning


def plan_cells(req: ReportRequest, on_cell: Callable[[str], None] | None = None) -> list[Cell]:
    """One `plan` per model × GPU: the GPU's full memory as budget, its TFLOP/s and bandwidth for tokens/s."""
    cells = []
    for model in req.models:
        for gpu in req.gpus:
            budget = Budget(gpu.memory_bytes, f"{gpu.name}: {gpu.memory_bytes / GIB:.2f} GiB", gpu)
            result = plan(PlanRequest(model=model, budget=budget, methods=req.methods, seq=req.seq, dtype=req.dtype,
                                      margin=req.margin, gpu=gpu, utilization=req.utilization))
            cells.append(Cell(model=model, gpu=gpu, plan=result))
            if on_cell is not None:
                on_cell(f"{model.name} on {gpu.name}")
    return cells


def _max_lowrank_rank(p: Plan) -> int | None:
    ranks = [c.config.rank for c in p.candidates if c.config.spec.project]
    return max(ranks) if ranks else None


def _fit_class(p: Plan) -> int:
    if "adamw" in p.best_per_method:
        return 2
    return 1 if p.candidates else 0


def fit_matrix(cells: list[Cell]) -> pd.DataFrame:
    """One row per model × GPU: the recommended configuration, its peaks against usable memory, tokens/s."""
    rows = []
    for cell in cells:
        p, rec = cell.plan, cell.plan.recommendation
        row = {"model": cell.model.name, "gpu": cell.gpu.key, "gpu_name": cell.gpu.name,
               "gpu_memory_label": cell.gpu.memory_label, "gpu_memory_bytes": cell.gpu.memory_bytes,
               "usable_bytes": p.request.usable_bytes, "fit": FIT_CLASSES[_fit_class(p)],
               "max_lowrank_rank": _max_lowrank_rank(p), "methods_fitting": ",".join(p.best_per_method)}
        adamw = p.best_per_method.get("adamw")
        row["adamw_config"] = adamw.config.label() if adamw else None
        row["adamw_batch"] = adamw.config.batch if adamw else None
        if rec is not None:
            c = rec.config
            row.update(config=c.label(), method=c.method, rank=c.rank, update_gap=c.update_gap,
                       state_bits=c.state_bits, layerwise=c.layerwise, checkpointing=c.checkpointing, batch=c.batch,
                       estimated_peak_allocated_bytes=rec.estimate.peak_allocated_bytes,
                       device_used_bytes=rec.estimate.device_used_bytes,
                       tokens_per_s=round(rec.throughput.tokens_per_s, 1))
        else:
            row.update(config="nothing fits", method=None, rank=None, update_gap=None, state_bits=None,
                       layerwise=None, checkpointing=None, batch=None, estimated_peak_allocated_bytes=None,
                       device_used_bytes=None, tokens_per_s=None)
        rows.append(row)
    df = pd.DataFrame(rows)
    for col in ("estimated_peak_allocated_bytes", "device_used_bytes", "usable_bytes", "gpu_memory_bytes"):
        df[col.replace("_bytes", "_gib")] = df[col].astype(float) / GIB
    return df


def _leanest(model: ModelConfig, spec: MethodSpec, forced_bits: int | None, req: ReportRequest) -> TrainConfig:
    """A method's smallest configuration: lowest rank, 8-bit states if it has them, per-layer, checkpointing,
    batch 1 — what is shown for a method that does not fit."""
    bits = forced_bits or min(spec.state_bits_supported)
    return TrainConfig(model=model, method=spec.name, rank=ranks_for(model)[0] if spec.project else None,
                       state_bits=bits, layerwise=True, dtype=req.dtype, batch=1, seq=req.seq, checkpointing=True)


def breakdown_gpu(cells: list[Cell], model: ModelConfig) -> Cell:
    """The cell whose breakdown is drawn for a model: the smallest selected GPU where any configuration fits
    (the interesting constraint), else the largest selected GPU."""
    own = sorted((c for c in cells if c.model is model), key=lambda c: c.gpu.memory_bytes)
    fitting = [c for c in own if c.plan.candidates]
    return fitting[0] if fitting else own[-1]


def _device_parts(est: Estimate) -> dict[str, int]:
    """Components alive in the peak phase, plus allocator reserve and CUDA context: they add up to device used."""
    parts = {k: v for k, v in est.phases[est.peak_phase].items() if v and k != "cuda_runtime"}
    parts["cuda_runtime"] = est.phases[est.peak_phase].get("cuda_runtime", 0)
    parts["allocator_reserve"] = est.reserved_bytes - est.peak_allocated_bytes
    parts["cuda_context"] = est.device_used_bytes - est.reserved_bytes
    return parts


def memory_breakdown(req: ReportRequest, cells: list[Cell]) -> pd.DataFrame:
    """Long table (model, gpu, method, component, bytes): each method at its recommended configuration on the
    breakdown GPU of each model, or at its leanest configuration when it does not fit there."""
    rows = []
    for model in req.models:
        cell = breakdown_gpu(cells, model)
        for spec, forced in req.methods:
            cand: Candidate | None = cell.plan.best_per_method.get(spec.name)
            est = cand.estimate if cand is not None else estimate(_leanest(model, spec, forced, req))
            for comp, nbytes in _device_parts(est).items():
                rows.append({"model": model.name, "gpu": cell.gpu.key, "gpu_name": cell.gpu.name,
                             "usable_bytes": cell.plan.request.usable_bytes, "method": spec.name,
                             "config": est.config.label(), "batch": est.config.batch, "fits": cand is not None,
                             "peak_phase": est.peak_phase, "component": comp, "bytes": int(nbytes),
                             "gib": nbytes / GIB, "device_used_bytes": est.device_used_bytes})
    return pd.DataFrame(rows)


def cost_table(req: ReportRequest, cells: list[Cell]) -> pd.DataFrame:
    """hours = tokens / tokens_per_s / 3600 on one GPU at the recommended configuration; cost = hours × USD/h."""
    rows = []
    for cell in cells:
        rec = cell.plan.recommendation
        usd, source = req.price(cell.gpu)
        row = {"model": cell.model.name, "gpu": cell.gpu.key, "gpu_name": cell.gpu.name,
               "usd_per_hour": usd, "price_source": source, "tokens": req.tokens,
               "config": rec.config.label() if rec else "nothing fits", "batch": rec.config.batch if rec else None,
               "tokens_per_s": None, "hours": None, "cost_usd": None, "usd_per_billion_tokens": None}
        if rec is not None:
            tps = rec.throughput.tokens_per_s
            hours = req.tokens / tps / 3600
            row.update(tokens_per_s=round(tps, 1), hours=hours, cost_usd=hours * usd,
                       usd_per_billion_tokens=1e9 / tps / 3600 * usd)
        rows.append(row)
    return pd.DataFrame(rows)


def gpu_table(req: ReportRequest) -> pd.DataFrame:
    """The catalogue figures the report used, with the source of each price."""
    rows = []
    for g in req.gpus:
        usd, source = req.price(g)
        rows.append({"gpu": g.key, "name": g.name, "memory_label": g.memory_label, "memory_bytes": g.memory_bytes,
                     "memory_gib": g.memory_bytes / GIB, "bf16_tflops": g.bf16_tflops,
                     "bandwidth_gbs": g.bandwidth_gbs, "usd_per_hour": usd,
                     "price_date": "--price" if g.key in req.prices else price_date(source),
                     "price_source": source})
    return pd.DataFrame(rows)


# ----------------------------------------------------------------------------------------------- result files


def _num(row: dict, *keys: str) -> float | None:
    for key in keys:
        value = row.get(key)
        if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
            return float(value)
    return None


def _recomputed_estimate(row: dict) -> float | None:
    """The analytic estimate of a bench row's configuration when the row does not carry one."""
    try:
        cfg = TrainConfig(model=load_model(str(row["model"])), method=str(row["method"]), rank=row.get("rank"),
                          update_gap=row.get("update_gap"), state_bits=row.get("state_bits"),
                          layerwise=bool(row.get("layerwise", False)), dtype=row.get("dtype", "bf16"),
                          batch=int(row.get("batch", 8)), seq=int(row.get("seq", 256)),
                          checkpointing=bool(row.get("checkpointing", False)))
    except (SubprofError, KeyError, TypeError, ValueError):
        return None
    return float(estimate(cfg).peak_allocated_bytes)


def bench_table(rows: list[dict]) -> pd.DataFrame:
    """Estimated vs measured peak allocated per bench row; error % = (estimated − measured) / measured · 100, the
    measured peak read as `subprof bench` reads it (`measure.comparable_peak`: a trace row gets the estimate's
    calibrated CUDA-runtime term added back)."""
    out = []
    for r in rows:
        measured = comparable_peak(r)
        est, source = _num(r, "estimated_peak_allocated_bytes"), "row"
        if est is None:
            est, source = _recomputed_estimate(r), "recomputed"
        ok = r.get("status", "ok") == "ok" and measured is not None and est is not None
        out.append({"model": r.get("model"), "method": r.get("method"), "rank": r.get("rank"),
                    "update_gap": r.get("update_gap"), "batch": r.get("batch"), "seq": r.get("seq"),
                    "state_bits": r.get("state_bits"), "layerwise": r.get("layerwise"),
                    "backend": r.get("backend", "not stated"), "device": r.get("device_name") or r.get("device"),
                    "status": r.get("status", "ok"),
                    "estimated_peak_allocated_bytes": round(est) if est is not None else None,
                    "peak_allocated_bytes": round(measured) if measured is not None else None,
                    "estimate_source": source if est is not None else None,
                    "estimated_gib": est / GIB if est is not None else None,
                    "measured_gib": measured / GIB if measured is not None else None,
                    "error_pct": 100 * (est - measured) / measured if ok and measured else None})
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
                    "update_gap": r.get("update_gap"), "status": r.get("status", "ok"),
                    "steps": r.get("steps_done", r.get("steps")),
                    "final_train_loss": _num(r, "final_train_loss") if not isinstance(train, (int, float))
                    else float(train), "val_loss": _num(r, "val_loss"), "tokens_per_s": _num(r, "tokens_per_s"),
                    "projection_share": _num(r, "projection_share"),
                    "peak_bytes": _num(r, "peak_allocated_bytes", "peak_tracked_bytes"),
                    "device": r.get("device"), "corpus": r.get("corpus") or r.get("corpus_name")})
    df = pd.DataFrame(out, columns=["config", "model", "method", "rank", "update_gap", "status", "steps",
                                    "final_train_loss", "val_loss", "tokens_per_s", "projection_share",
                                    "peak_bytes", "device", "corpus"])
    return df.sort_values("val_loss", na_position="last", kind="stable").reset_index(drop=True)


# ---------------------------------------------------------------------------------------------------- in words


def _names(df: pd.DataFrame) -> str:
    return ", ".join(df["gpu_name"])


def _model_lines(req: ReportRequest, model: ModelConfig, fit: pd.DataFrame, cost: pd.DataFrame) -> list[str]:
    f = fit[fit["model"] == model.name].sort_values("gpu_memory_bytes")
    head = f"{model.name} ({fmt_count(model.params)} parameters, seq {req.seq}, {req.dtype})"
    lines = []
    full = f[f["fit"] == FIT_CLASSES[2]]
    if len(full):
        first = full.iloc[0]
        lines.append(f"{head}: full-rank AdamW fits from {first['gpu_memory_gib']:.0f} GiB up "
                     f"({first['gpu_name']}, {first['gpu_memory_label']}, as {first['adamw_config']} at micro-batch "
                     f"{int(first['adamw_batch'])}) — {len(full)} of {len(f)} selected GPUs.")
    else:
        lines.append(f"{head}: full-rank AdamW fits none of the {len(f)} selected GPUs.")
    low = f[f["fit"] == FIT_CLASSES[1]]
    for (label, rank), group in low.groupby(["gpu_memory_label", "max_lowrank_rank"], sort=False):
        rec = group.iloc[0]
        lines.append(f"{model.name} fits a {label} card ({_names(group)}) only with a low-rank method at rank ≤ "
                     f"{int(rank)}; recommended: {rec['config']}, micro-batch {int(rec['batch'])}, "
                     f"{rec['device_used_gib']:.1f} of {rec['usable_gib']:.1f} GiB usable.")
    none = f[f["fit"] == FIT_CLASSES[0]]
    if len(none):
        lines.append(f"{model.name} does not fit {_names(none)} with any searched configuration (every method, "
                     f"rank ≥ {ranks_for(model)[0]}, 8-bit states, per-layer updates, checkpointing, batch 1).")
    c = cost[(cost["model"] == model.name) & cost["cost_usd"].notna()]
    if len(c):
        cheap = c.loc[c["cost_usd"].astype(float).idxmin()]
        fast = c.loc[c["hours"].astype(float).idxmin()]
        text = (f"{model.name}, {fmt_count(req.tokens)} tokens: cheapest per token: {cheap['gpu_name']} at "
                f"${cheap['cost_usd']:,.0f} ({cheap['hours']:,.0f} GPU-hours at ${cheap['usd_per_hour']:.2f}/h, "
                f"{cheap['config']})")
        if fast["gpu"] != cheap["gpu"]:
            text += (f"; fastest: {fast['gpu_name']} at {fast['hours']:,.0f} hours for "
                     f"${fast['cost_usd']:,.0f}")
        lines.append(text + ".")
    return lines


def summary_lines(req: ReportRequest, tables: dict[str, pd.DataFrame]) -> list[str]:
    """The summary sentences, each computed from the tables."""
    lines = []
    for model in req.models:
        lines += _model_lines(req, model, tables["fit_matrix"], tables["cost"])
    bench = tables.get("bench")
    if bench is not None and len(bench):
        err = bench["error_pct"].dropna().astype(float)
        if len(err):
            lines.append(f"Estimate vs measured peak allocated: median |error| {err.abs().median():.1f}%, worst "
                         f"{err.abs().max():.1f}% over {len(err)} measured rows (backend: "
                         f"{', '.join(sorted(set(bench['backend'].astype(str))))}).")
        failed = bench[bench["status"] != "ok"]
        if len(failed):
            lines.append(f"{len(failed)} bench rows did not finish: "
                         + ", ".join(f"{k} {v}" for k, v in failed["status"].value_counts().items()) + ".")
    proj = tables.get("projection")
    if proj is not None and proj["ratio_to_svd"].notna().any():
        is_method = ~proj["method"].str.contains("svd|floor|gemm", case=False)
        fast = proj[is_method].dropna(subset=["ratio_to_svd"])
        if len(fast):
            top = fast.loc[fast["ratio_to_svd"].astype(float).idxmax()]
            lines.append(f"Projection updates: {top['method']} at {top['shape']} rank {top['rank']} took "
                         f"{top['median_ms']:.3g} ms, {top['ratio_to_svd']:,.0f}× faster than a full SVD "
                         f"({top['device']}, {top['dtype']}).")
    burst = tables.get("burst")
    if burst is not None and len(burst):
        val = burst[burst["kind"] == "validation"]
        use = val if len(val) else burst[burst["kind"] == "train"]
        last = use.sort_values("step").groupby("config").tail(1)
        best = last.loc[last["loss"].idxmin()]
        lines.append(f"Bursts: lowest final {'validation' if len(val) else 'training'} loss {best['loss']:.3f} "
                     f"for {best['config']} at step {best['step']:.0f} (of {last['config'].nunique()} "
                     f"configurations).")
    return lines


def price_date(source: str) -> str:
    """The first date a price source states ("late 2025", "2026-01"), or "undated"."""
    m = re.search(r"(?:(?:early|mid|late|Q[1-4])\s+)?20\d\d(?:-\d\d)?", source)
    return m.group(0) if m else "undated"


def assumptions(req: ReportRequest) -> list[str]:
    """Every assumption behind the numbers, stated on the page."""
    from subprof.throughput import BANDWIDTH_EFFICIENCY

    catalogue = [price_date(g.sources.get("price", "")) for g in req.gpus if g.key not in req.prices]
    dates = ", ".join(f"{d} ({catalogue.count(d)} GPU{'s' if catalogue.count(d) > 1 else ''})"
                      for d in dict.fromkeys(catalogue))
    over = ", ".join(f"{k} ${v:.2f}/h" for k, v in req.prices.items())
    return [
        "Units: GiB = 2^30 bytes, GB = 10^9 bytes. GPU memory is the total the driver reports (nvidia-smi), in "
        "GiB; the datasheet label (e.g. \"24 GB\") is decimal. Byte counts in the CSV/JSON tables are integers.",
        f"Fit: estimated device memory (peak reserved by PyTorch's allocator + CUDA context) ≤ GPU memory × "
        f"(1 − {req.margin:.0%} safety margin), on one GPU — no multi-GPU sharding, offloading or tensor "
        f"parallelism.",
        f"Training: LLaMA pretraining, sequence length {req.seq}, dtype {req.dtype}; micro-batch = the largest "
        f"power of two that fits; methods searched: {', '.join(s.name for s, _ in req.methods)} over rank × "
        f"update gap × state bits × per-layer updates × activation checkpointing.",
        "Best configuration per cell: ranked by a stated quality prior (full rank best, then higher rank at equal "
        "method, every-step streaming refresh ahead of a stale SVD at low rank, 8-bit states slightly behind), then "
        "by predicted tokens/s. It is a prior, not a measured loss; `subprof burst` measures losses.",
        f"Throughput is predicted, not measured: model FLOPs at {req.utilization:.0%} of each GPU's dense BF16 "
        f"TFLOP/s, the optimizer step at {BANDWIDTH_EFFICIENCY:.0%} of datasheet memory bandwidth, projection "
        "refreshes scaled from H100 timings in proportion to TFLOP/s. No data loading, evaluation, checkpoint "
        "saving or restarts are counted.",
        f"Time and cost: hours = {fmt_count(req.tokens)} tokens / predicted tokens/s / 3600 on one GPU; cost = "
        "hours × price. Prices are indicative on-demand cloud USD per GPU-hour from the catalogue "
        f"(profiles/gpus.toml); price dates as their sources state them: {dates or 'none used'}. They vary by "
        "provider, region and month and were not checked live" + (f"; overridden with --price: {over}" if over
        else "") + ".",
        "GPU figures (memory, bandwidth, TFLOP/s) come from vendor datasheets as cited in the catalogue; none of "
        "them was measured by subprof. Memory estimates come from subprof's analytic model (calibrated on H100 "
        "measurements); the measured sections show real rows only when result files are given.",
    ]


def build_report(req: ReportRequest, on_cell: Callable[[str], None] | None = None) -> Report:
    """Plan every model × GPU cell, then derive every table, the summary and the assumptions."""
    cells = plan_cells(req, on_cell)
    tables = {
        "fit_matrix": fit_matrix(cells),
        "memory_breakdown": memory_breakdown(req, cells),
        "cost": cost_table(req, cells),
        "gpus": gpu_table(req),
        "bench": bench_table(req.bench_rows),
        "projection": proj_table(req.proj_rows),
        "burst": burst_table(req.burst_rows),
        "burst_summary": burst_summary(req.burst_rows),
    }
    return Report(request=req, cells=cells, tables=tables, summary=summary_lines(req, tables),
                  assumptions=assumptions(req))


def write_csv(report: Report, folder: str | Path) -> list[Path]:
    """One CSV per table: `<folder>/<table>.csv`."""
    folder = Path(folder)
    out = []
    try:
        folder.mkdir(parents=True, exist_ok=True)
        for name, df in report.tables.items():
            out.append(folder / f"{name}.csv")
            df.to_csv(out[-1], index=False)
    except OSError as exc:
        raise SubprofError(f"cannot write CSV files to {str(folder)!r}: {exc.strerror or exc}") from None
    return out
