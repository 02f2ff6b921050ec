"""`report`: the tables of a procurement report as pandas DataFrames, and the words that summarise them.

For every selected model × GPU the planner (`planner.plan`, the same search as `subprof plan`) picks the best
configuration that fits the GPU's driver-reported memory minus a safety margin. From those plans come: the fit
matrix, the memory breakdown per method at its recommended configuration, and the hours and cost of a token
budget (tokens / predicted tokens/s × catalogue or user price). Result files add measured tables: `bench` rows
(estimated vs measured peak), `proj` rows (projection-update timings, ratio to SVD) and `burst` rows (loss
curves). Nothing here is measured: every predicted number comes from `memory`, `planner` and `throughput`.
`summary_lines` turns the tables into sentences; `render_html` (plotly, imported there) draws the page.
"""

from __future__ import annotations

import datetime as _dt
import html
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import pandas as pd

from subprof.catalog import Budget, GpuSpec, ModelConfig, load_model
from subprof.errors import SubprofError
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


def _num(row: dict, *keys: str, scale: float = 1.0) -> float | None:
    for key in keys:
        value = row.get(key)
        if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
            return float(value) * scale
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
    """Estimated vs measured peak allocated per bench row; error % = (estimated − measured) / measured · 100.
    As `subprof bench` compares (`cli_bench.comparable_peak`): a trace sees tensors only, so a trace row's
    measured peak gets the estimate's calibrated CUDA-runtime term added back."""
    out = []
    for r in rows:
        measured = _num(r, "peak_allocated_bytes") or _num(r, "peak_allocated_gib", scale=GIB)
        if measured is not None and r.get("backend") == "trace":
            measured += _num(r, "estimated_cuda_runtime_bytes") or 0
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
                    "peak_allocated_bytes": round(measured) if measured is not None else None, "estimate_source": source if est is not None else None,
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


# ------------------------------------------------------------------------------------------------------ the page

COMPONENT_COLORS = {
    "weights": "#1f4e79", "gradients": "#2e86c1", "optimizer_states": "#e67e22", "projection_matrices": "#8e44ad",
    "projection_workspace": "#c39bd3", "activations": "#27ae60", "logits_loss": "#82e0aa",
    "optimizer_temporaries": "#f5b041", "autocast_cache": "#d4ac0d", "cuda_runtime": "#7f8c8d",
    "allocator_reserve": "#bdc3c7", "cuda_context": "#566573",
}
FIT_COLORS = ("#f5b7b1", "#fad7a0", "#abebc6")
PLOT_CONFIG = {"displaylogo": False, "responsive": True, "modeBarButtonsToRemove": ["lasso2d", "select2d"]}


def _layout(fig, title: str, height: int) -> None:
    fig.update_layout(title={"text": title, "x": 0, "xanchor": "left", "font": {"size": 15}}, height=height,
                      template="plotly_white", margin={"l": 60, "r": 20, "t": 60, "b": 50},
                      font={"family": "system-ui, -apple-system, Segoe UI, Roboto, Helvetica, Arial, sans-serif",
                            "size": 12}, legend={"orientation": "h", "y": -0.15})


def fig_fit_matrix(fit: pd.DataFrame):
    """GPU × model heatmap coloured by fit class; the best configuration and its memory written in each cell."""
    import plotly.graph_objects as go

    gpus = fit.drop_duplicates("gpu").sort_values("gpu_memory_bytes")
    models = list(dict.fromkeys(fit["model"]))
    z, text, hover = [], [], []
    for g in gpus.itertuples():
        zr, tr, hr = [], [], []
        for m in models:
            r = fit[(fit["gpu"] == g.gpu) & (fit["model"] == m)].iloc[0]
            zr.append(FIT_CLASSES.index(r["fit"]))
            if r["method"] is None or pd.isna(r["device_used_gib"]):
                tr.append("nothing fits")
                hr.append(f"{m} on {g.gpu_name}: nothing fits {r['usable_gib']:.1f} GiB usable")
                continue
            tr.append(f"{r['config']} · batch {int(r['batch'])}<br>{r['device_used_gib']:.1f} / "
                      f"{r['usable_gib']:.1f} GiB · {r['tokens_per_s']:,.0f} tok/s")
            hr.append(f"<b>{m} on {g.gpu_name}</b> ({r['fit']})<br>method {r['method']}, rank {r['rank'] or 'full'}, "
                      f"update gap {r['update_gap'] or '–'}, {int(r['state_bits'])}-bit states<br>per-layer "
                      f"{r['layerwise']}, checkpointing {r['checkpointing']}, micro-batch {int(r['batch'])}<br>"
                      f"peak allocated {r['estimated_peak_allocated_gib']:.2f} GiB, device used "
                      f"{r['device_used_gib']:.2f} GiB of {r['usable_gib']:.2f} GiB usable<br>"
                      f"predicted {r['tokens_per_s']:,.0f} tokens/s")
        z.append(zr), text.append(tr), hover.append(hr)
    scale = [[0, FIT_COLORS[0]], [1 / 3, FIT_COLORS[0]], [1 / 3, FIT_COLORS[1]], [2 / 3, FIT_COLORS[1]],
             [2 / 3, FIT_COLORS[2]], [1, FIT_COLORS[2]]]
    ylabels = [f"{g.gpu_name} ({g.gpu_memory_label})" for g in gpus.itertuples()]
    fig = go.Figure(go.Heatmap(z=z, x=models, y=ylabels, text=text, texttemplate="%{text}", customdata=hover,
                               hovertemplate="%{customdata}<extra></extra>", colorscale=scale, zmin=-0.5,
                               zmax=2.5, showscale=False, xgap=3, ygap=3, textfont={"size": 11}))
    _layout(fig, "Best configuration per GPU × model: device memory used / usable, predicted tokens/s",
            90 + 46 * len(gpus))
    fig.update_yaxes(autorange="reversed")
    fig.update_xaxes(side="top")
    fig.update_layout(margin={"t": 80, "l": 160})
    return fig


def fig_breakdown(df: pd.DataFrame, model: str):
    """Horizontal stacked bars: the components alive at each method's peak, adding up to device used, against
    the GPU's usable memory (dashed line)."""
    import plotly.graph_objects as go

    d = df[df["model"] == model]
    heads = d.drop_duplicates("method")
    labels = {r.method: f"{r.config} · b{r.batch} · {r.device_used_bytes / GIB:.1f} GiB" + ("" if r.fits else " ✗")
              for r in heads.itertuples()}
    fig = go.Figure()
    for comp in _component_order(d["component"]):
        part = d[d["component"] == comp]
        fig.add_bar(y=[labels[m] for m in part["method"]], x=part["gib"], orientation="h",
                    name=comp.replace("_", " "), marker_color=COMPONENT_COLORS.get(comp),
                    hovertemplate="%{y}<br>" + comp.replace("_", " ") + ": %{x:.2f} GiB<extra></extra>")
    usable, gpu = d["usable_bytes"].iloc[0] / GIB, d["gpu_name"].iloc[0]
    fig.add_vline(x=usable, line_dash="dash", line_color="#c0392b", line_width=2)
    fig.add_scatter(x=[None], y=[None], mode="lines", line={"dash": "dash", "color": "#c0392b"},
                    name=f"usable {usable:.1f} GiB")
    _layout(fig, f"{model} on {gpu}: device memory at the peak phase (✗ = does not fit)", 150 + 34 * len(heads))
    fig.update_layout(barmode="stack", xaxis_title="GiB (2^30 B)", legend={"y": -0.25, "traceorder": "normal"},
                      margin={"l": 340, "r": 30, "b": 90})
    fig.update_yaxes(autorange="reversed")
    return fig


def _component_order(components) -> list[str]:
    """Stack order: model state first (weights, gradients, optimizer, projection), then transient, then runtime."""
    order = list(COMPONENT_COLORS)
    return sorted(dict.fromkeys(components), key=lambda c: order.index(c) if c in order else len(order))


def fig_cost(cost: pd.DataFrame, model: str):
    """Horizontal bars of USD for the token budget per GPU, labelled with hours and price."""
    import plotly.graph_objects as go

    d = cost[cost["model"] == model].copy()
    d["sort"] = d["cost_usd"].astype(float).fillna(float("inf"))
    d = d.sort_values("sort")
    text = [f"${c:,.0f} · {h:,.0f} h · ${p:.2f}/h · {cfg}" if pd.notna(c) else "does not fit"
            for c, h, p, cfg in zip(d["cost_usd"], d["hours"], d["usd_per_hour"], d["config"])]
    fig = go.Figure(go.Bar(y=d["gpu_name"], x=d["cost_usd"].astype(float).fillna(0), orientation="h", text=text,
                           textposition="outside", marker_color="#2e86c1", cliponaxis=False,
                           customdata=d["config"], hovertemplate="%{y}: %{text}<br>%{customdata}<extra></extra>"))
    _layout(fig, f"{model}: USD for {fmt_count(d['tokens'].iloc[0])} tokens on one GPU (indicative prices)",
            110 + 30 * len(d))
    fig.update_yaxes(autorange="reversed")
    fig.update_layout(xaxis_title="USD", margin={"r": 420, "l": 110})
    return fig


def fig_bench(bench: pd.DataFrame):
    import plotly.graph_objects as go

    d = bench.dropna(subset=["estimated_gib", "measured_gib"])
    fig = go.Figure()
    for method, part in d.groupby("method", sort=False):
        fig.add_scatter(x=part["measured_gib"], y=part["estimated_gib"], mode="markers+text", name=str(method),
                        text=[f"{e:+.1f}%" if pd.notna(e) else s for e, s in zip(part["error_pct"], part["status"])],
                        textposition="top center", marker={"size": 9})
    top = float(max(d["measured_gib"].max(), d["estimated_gib"].max()) * 1.05) if len(d) else 1.0
    fig.add_scatter(x=[0, top], y=[0, top], mode="lines", line={"dash": "dot", "color": "#888"},
                    name="estimate = measured")
    _layout(fig, "Estimated vs measured peak allocated (GiB); labels: estimate error in %", 480)
    fig.update_layout(xaxis_title="measured GiB", yaxis_title="estimated GiB")
    return fig


def fig_proj(proj: pd.DataFrame):
    import plotly.graph_objects as go

    d = proj.copy()
    d["case"] = d["shape"] + " r" + d["rank"].astype(str) + " · " + d["device"].astype(str)
    fig = go.Figure()
    for method, part in d.groupby("method", sort=False):
        fig.add_bar(x=part["case"], y=part["median_ms"], name=str(method),
                    text=[f"{r:,.0f}×" if pd.notna(r) else "" for r in part["ratio_to_svd"]], textposition="outside")
    _layout(fig, "Projection-update time per method (median ms, log scale); labels: SVD time / method time", 480)
    fig.update_layout(barmode="group", yaxis_type="log", yaxis_title="ms (log)")
    return fig


def fig_burst(burst: pd.DataFrame):
    import plotly.express as px
    import plotly.graph_objects as go

    fig = go.Figure()
    palette = px.colors.qualitative.D3 + px.colors.qualitative.Set2
    for i, config in enumerate(dict.fromkeys(burst["config"])):
        for kind, dash in (("train", "solid"), ("validation", "dash")):
            part = burst[(burst["config"] == config) & (burst["kind"] == kind)]
            if len(part):
                fig.add_scatter(x=part["step"], y=part["loss"], mode="lines+markers" if kind == "validation"
                                else "lines", name=f"{config} ({kind})", line={"dash": dash,
                                "color": palette[i % len(palette)]}, legendgroup=config)
    _layout(fig, "Burst loss curves: training (solid) and validation (dashed)", 520)
    fig.update_layout(xaxis_title="step", yaxis_title="loss", legend={"orientation": "v", "y": 1, "x": 1.02})
    return fig


# HTML tables: which columns, under which header, formatted how
_G = "{:.2f}".format
_I = "{:.0f}".format
TABLE_VIEWS: dict[str, dict[str, tuple[str, Callable | None]]] = {
    "fit_matrix": {"model": ("model", None), "gpu_name": ("GPU", None), "gpu_memory_label": ("label", None),
                   "fit": ("fit", None), "config": ("best configuration", None), "batch": ("micro-batch", _I),
                   "estimated_peak_allocated_gib": ("peak alloc. GiB", _G), "device_used_gib": ("device used GiB", _G),
                   "usable_gib": ("usable GiB", _G), "max_lowrank_rank": ("max low-rank rank", _I),
                   "tokens_per_s": ("tokens/s (pred.)", "{:,.0f}".format)},
    "cost": {"model": ("model", None), "gpu_name": ("GPU", None), "config": ("configuration", None),
             "tokens_per_s": ("tokens/s (pred.)", "{:,.0f}".format), "hours": ("GPU-hours", "{:,.1f}".format),
             "usd_per_hour": ("USD/h", "{:.2f}".format), "cost_usd": ("cost USD", "{:,.0f}".format),
             "usd_per_billion_tokens": ("USD per 1B tokens", "{:,.2f}".format)},
    "gpus": {"name": ("GPU", None), "memory_label": ("label", None), "memory_gib": ("GiB (driver)", _G),
             "bf16_tflops": ("dense BF16 TFLOP/s", "{:,.0f}".format), "bandwidth_gbs": ("GB/s", "{:,.0f}".format),
             "usd_per_hour": ("USD/h", "{:.2f}".format), "price_date": ("price date", None),
             "price_source": ("price source", None)},
    "bench": {"model": ("model", None), "method": ("method", None), "rank": ("rank", _I), "batch": ("batch", _I),
              "seq": ("seq", _I), "backend": ("backend", None), "device": ("device", None),
              "status": ("status", None), "estimated_gib": ("estimated GiB", _G), "measured_gib": ("measured GiB", _G),
              "error_pct": ("error %", "{:+.1f}".format), "estimate_source": ("estimate", None)},
    "projection": {"model": ("model", None), "method": ("method", None), "shape": ("shape m×n", None),
                   "rank": ("rank", _I), "median_ms": ("median ms", "{:.4g}".format),
                   "spread_ms": ("spread ms", "{:.3g}".format), "ratio_to_svd": ("SVD ÷ method", "{:,.1f}".format),
                   "device": ("device", None), "dtype": ("dtype", None)},
    "burst_summary": {"config": ("configuration", None), "status": ("status", None), "steps": ("steps", None),
                      "final_train_loss": ("final train loss", "{:.4f}".format),
                      "val_loss": ("validation loss", "{:.4f}".format), "tokens_per_s": ("tokens/s", "{:,.0f}".format),
                      "projection_share": ("projection share", "{:.1%}".format),
                      "peak_bytes": ("peak MiB", lambda v: f"{v / 2**20:,.0f}"), "device": ("device", None),
                      "corpus": ("corpus", None)},
    "burst": {"config": ("configuration", None), "kind": ("loss", None), "step": ("step", "{:.0f}".format),
              "loss": ("value", "{:.4f}".format), "status": ("status", None)},
}


def breakdown_wide(df: pd.DataFrame) -> pd.DataFrame:
    """The long breakdown as one row per model × configuration, one GiB column per component, plus the total."""
    if not len(df):
        return df
    keys = ["model", "gpu_name", "config", "batch", "fits", "peak_phase"]
    wide = df.pivot_table(index=keys, columns="component", values="gib", aggfunc="sum", sort=False).reset_index()
    comps = _component_order(df["component"])
    wide = wide[keys + comps]
    wide["device used"] = wide[comps].sum(axis=1)
    wide["usable"] = df.groupby(keys, sort=False)["usable_bytes"].first().to_numpy() / GIB
    names = {c: c.replace("_", " ") for c in comps} | {"gpu_name": "GPU", "config": "configuration",
                                                       "peak_phase": "peak phase", "batch": "micro-batch"}
    return wide.rename(columns=names)


def html_table(df: pd.DataFrame, view: str) -> str:
    """A table as HTML with the view's headers and number formats; a view of None shows every column (floats
    as GiB with two decimals)."""
    spec = TABLE_VIEWS.get(view) or {c: (c, _G if df[c].dtype.kind == "f" else None) for c in df.columns}
    cols = {k: v for k, v in spec.items() if k in df.columns}
    shown = df[list(cols)].astype(object).where(df[list(cols)].notna(), None)
    for key, (_, fmt) in cols.items():
        shown[key] = [("–" if v is None else (fmt(v) if fmt and isinstance(v, (int, float)) else str(v)))
                      for v in shown[key]]
    shown.columns = [h for h, _ in cols.values()]
    return shown.to_html(index=False, escape=True, classes="data", border=0)


def _section(anchor: str, title: str, intro: str, body: str) -> str:
    return (f'<section id="{anchor}"><h2>{html.escape(title)}</h2><p class="intro">{html.escape(intro)}</p>'
            f"{body}</section>")


def _missing(flag: str, command: str) -> str:
    return (f'<p class="missing">Not given. Pass <code>{html.escape(flag)}</code> with rows from '
            f"<code>{html.escape(command)}</code> to compare with real runs.</p>")


def _details(title: str, table: str) -> str:
    """A data table under its figure; long ones start folded on screen and are unfolded for printing."""
    rows = table.count("<tr") - 1
    state = " open" if rows <= 16 else ""
    return (f'<details{state}><summary>{html.escape(title)} ({rows} rows)</summary><div class="scroll">{table}'
            "</div></details>")


def render_html(report: Report, *, title: str = "GPU procurement report: low-rank optimizer pretraining") -> str:
    """The self-contained page: plotly.js inlined once (first figure), every figure's data also as a table."""
    req, t = report.request, report.tables
    figures: list[str] = []

    def fig_html(fig) -> str:
        out = fig.to_html(full_html=False, include_plotlyjs=not figures, config=PLOT_CONFIG,
                          div_id=f"fig-{len(figures)}")
        figures.append(out)
        return f'<div class="figure">{out}</div>'

    fit = fig_html(fig_fit_matrix(t["fit_matrix"])) + _details("Fit matrix data",
                                                                html_table(t["fit_matrix"], "fit_matrix"))
    sections = [_section("fit", "Which GPU fits which model", "Each cell: the best configuration that fits, its "
                         "micro-batch, estimated device memory over usable memory, and predicted tokens/s. Green: "
                         "full-rank AdamW fits; amber: only low-rank methods fit; red: nothing fits.", fit)]
    body = "".join(fig_html(fig_breakdown(t["memory_breakdown"], m.name)) for m in req.models)
    sections.append(_section("breakdown", "Where the memory goes", "Per model, on the smallest selected GPU where "
                             "anything fits: each method at its recommended configuration (label: configuration · "
                             "micro-batch · estimated device used). Methods that do not fit there (✗) are shown at "
                             "their leanest configuration. The parts of a bar add up to device used; the dashed line "
                             "is the usable memory.",
                             body + _details("Memory breakdown data (GiB)",
                                                   html_table(breakdown_wide(t["memory_breakdown"]), "wide"))))
    body = "".join(fig_html(fig_cost(t["cost"], m.name)) for m in req.models)
    sections.append(_section("cost", f"Time and cost for {fmt_count(req.tokens)} tokens", "One GPU running the "
                             "recommended configuration of each cell; predicted throughput; indicative prices.",
                             body + _details("Cost data", html_table(t["cost"], "cost"))
                             + _details("GPU catalogue figures used", html_table(t["gpus"], "gpus"))))
    bench = t["bench"]
    body = (fig_html(fig_bench(bench)) + _details("Bench rows", html_table(bench, "bench"))) if len(bench) \
        else _missing("--bench FILE", "subprof bench")
    sections.append(_section("measured", "Estimated vs measured memory", "Peak allocated memory of real (cuda), "
                             "traced or CPU runs next to the analytic estimate; error = (estimated − measured) / "
                             "measured.", body))
    proj = t["projection"]
    body = (fig_html(fig_proj(proj)) + _details("Projection timings", html_table(proj, "projection"))) \
        if len(proj) else _missing("--proj FILE", "subprof proj")
    sections.append(_section("projection", "Projection-update timings", "Time of one projection update per method "
                             "on the model's weight shapes, measured by subprof proj; ratio to a full SVD.", body))
    burst = t["burst"]
    body = (fig_html(fig_burst(burst)) + _details("Configurations ranked by validation loss",
                                                  html_table(t["burst_summary"], "burst_summary"))
            + _details("Loss curve data", html_table(burst, "burst"))) if len(burst) \
        else _missing("--burst FILE", "subprof burst")
    sections.append(_section("burst", "Short training runs (bursts)", "Training and validation loss by step for "
                             "each configuration, measured by subprof burst.", body))
    if not figures:
        raise SubprofError("internal: the report has no figure to carry plotly.js")
    summary = "".join(f"<li>{html.escape(line)}</li>" for line in report.summary)
    assume = "".join(f"<li>{html.escape(line)}</li>" for line in report.assumptions)
    nav = "".join(f'<a href="#{a}">{n}</a>' for a, n in (("summary", "Summary"), ("fit", "Fit"),
                  ("breakdown", "Memory"), ("cost", "Cost"), ("measured", "Measured"), ("projection", "Projection"),
                  ("burst", "Bursts"), ("assumptions", "Assumptions")))
    models = ", ".join(f"{m.name} ({fmt_count(m.params)})" for m in req.models)
    meta = (f"Models {models} · {len(req.gpus)} GPUs · seq {req.seq} · {req.dtype} · generated "
            f"{_dt.datetime.now().strftime('%Y-%m-%d %H:%M')} by subprof {_version()}")
    return _PAGE.format(title=html.escape(title), meta=html.escape(meta), nav=nav, summary=summary,
                        sections="".join(sections), assumptions=assume, css=_CSS, n_figures=len(figures))


def _version() -> str:
    try:
        from importlib.metadata import version

        return version("subprof")
    except Exception:  # noqa: BLE001 — a version string must never break the report
        return "(version unknown)"


_CSS = """
:root{--ink:#1c2833;--muted:#5d6d7e;--line:#d5d8dc;--accent:#1f4e79;--bg:#f8f9fa}
*{box-sizing:border-box}
body{margin:0;font:14px/1.5 system-ui,-apple-system,"Segoe UI",Roboto,Helvetica,Arial,sans-serif;color:var(--ink);
 background:var(--bg)}
header{background:var(--accent);color:#fff;padding:22px 40px 14px}
header h1{margin:0 0 4px;font-size:24px;font-weight:600}
header .meta{opacity:.85;font-size:13px}
nav{position:sticky;top:0;z-index:10;background:#fff;border-bottom:1px solid var(--line);padding:8px 40px}
nav a{color:var(--accent);text-decoration:none;margin-right:18px;font-weight:500}
main{max-width:1240px;margin:0 auto;padding:10px 40px 40px}
section{background:#fff;border:1px solid var(--line);border-radius:6px;padding:18px 24px;margin:18px 0}
h2{margin:0 0 6px;font-size:19px;color:var(--accent)}
p.intro{color:var(--muted);margin:0 0 10px}
#summary ul{margin:6px 0 0;padding-left:20px} #summary li{margin:4px 0;font-size:15px}
#assumptions li{margin:4px 0;color:#34495e}
.missing{color:var(--muted);font-style:italic}
details{margin:10px 0} summary{cursor:pointer;color:var(--accent);font-weight:500}
.scroll{overflow-x:auto}
table.data{border-collapse:collapse;font-size:12px;margin-top:6px;width:100%}
table.data th{background:#eaf2f8;text-align:left;padding:4px 8px;border-bottom:2px solid var(--line)}
table.data td{padding:3px 8px;border-bottom:1px solid #eee;font-variant-numeric:tabular-nums}
table.data tr:nth-child(even) td{background:#fbfcfc}
code{background:#eef2f5;padding:1px 4px;border-radius:3px}
#js-error{display:none;background:#fdedec;color:#922b21;padding:10px 40px}
footer{color:var(--muted);font-size:12px;text-align:center;padding:10px}
@media print{
 body{background:#fff;font-size:11px} header{background:#fff;color:#000;padding:0 0 8px;border-bottom:2px solid #000}
 nav,.modebar-container,#js-error{display:none!important} main{max-width:none;padding:0}
 section{border:none;padding:0;margin:14px 0;break-inside:avoid-page} .figure{break-inside:avoid}
 details>summary{display:none} details:not([open])>*{display:block} table.data{font-size:9px}
 tr{break-inside:avoid} a{color:#000}
}
"""

_PAGE = """<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width, initial-scale=1">
<title>{title}</title>
<style>{css}</style>
<script>
window.addEventListener("error", function (e) {{
  var n = Number(document.documentElement.getAttribute("data-js-errors") || 0) + 1;
  document.documentElement.setAttribute("data-js-errors", String(n));
  var box = document.getElementById("js-error");
  if (box) {{ box.style.display = "block"; box.textContent = "A figure failed to draw (" + e.message +
    "); the tables below each figure hold the same data."; }}
}});
window.addEventListener("beforeprint", function () {{
  document.querySelectorAll("details").forEach(function (d) {{ d.open = true; }});
}});
window.addEventListener("load", function () {{
  var drawn = document.querySelectorAll(".plotly-graph-div .main-svg").length ? Array.prototype.filter.call(
    document.querySelectorAll(".plotly-graph-div"), function (d) {{ return d.querySelector(".main-svg"); }}).length : 0;
  document.documentElement.setAttribute("data-figures-drawn", String(drawn));
}});
</script>
</head><body data-figures="{n_figures}">
<header><h1>{title}</h1><div class="meta">{meta}</div></header>
<div id="js-error"></div>
<nav>{nav}</nav>
<main>
<section id="summary"><h2>Summary</h2><ul>{summary}</ul></section>
{sections}
<section id="assumptions"><h2>Assumptions</h2><ul>{assumptions}</ul></section>
</main>
<footer>Generated offline by subprof; predictions are estimates, measured sections show only rows from the files
given. Every figure's data is also in the table below it.</footer>
</body></html>
"""


def write_html(report: Report, path: str | Path) -> Path:
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(render_html(report), encoding="utf-8")
    except OSError as exc:
        raise SubprofError(f"cannot write {str(path)!r}: {exc.strerror or exc}") from None
    return path


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
