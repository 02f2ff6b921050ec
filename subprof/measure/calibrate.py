"""`subprof calibrate`: measure this GPU once — a fixed sweep, one fresh process per case — and fit a calibration
record that estimate, plan, bench and report then use for this GPU.

The sweep, in order (a case runs only while the time budget allows; the rest are `skipped` rows that `--resume`
runs later):
1. the device probe (`subprof.measure.device`): CUDA context, cuBLAS workspace, bf16 matmul, SVD and fp32 GEMM rates;
2. training steps (`bench`'s cuda backend, 3 steps each) on 60m, 350m and 1b (`--quick`: 60m and 350m) at two
   micro-batches: adamw at 16 and 8 bits, galore at 16 and 8 bits, ori at 16 bits, and galore 8-bit per-layer with
   checkpointing — the configurations whose estimate does not fit the device are left out (they would only OOM),
   an OOM that happens anyway is a row;
3. projection-update timings (`subprof proj`) on the largest model's weight shapes at ranks 128 and 512.
Then `subprof.plan.fit` fits the GPU-side terms on the training rows and the record is written beside the rows, with
the device, driver, CUDA, torch and date, the measured rates and the leave-one-out error. Rows are appended as they
come: Ctrl-C or an OOM loses nothing; `--resume` reads the rows file and runs only what is missing.

Tests run the same sweep with `backend="trace"` (the cuda worker replaced by the trace worker at the process
boundary), so the case list, the budget and the resume logic are exercised without a GPU.
"""

from __future__ import annotations

import statistics
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from subprof.catalog import find_gpu, load_model
from subprof.config import TrainConfig
from subprof.errors import SubprofError
from subprof.measure.case import KEY_FIELDS, Case
from subprof.measure.runner import estimate_fields, run_case, run_worker
from subprof.plan.calibration import DEFAULT, Calibration
from subprof.plan.fit import errors, fit
from subprof.results import FINAL_STATUSES, ResultLog, case_key, now_iso

QUICK_MODELS = ("60m", "350m")
FULL_MODELS = ("60m", "350m", "1b")
MICRO_BATCHES = {"60m": (8, 32), "350m": (4, 16), "1b": (2, 8), "tiny": (1, 2)}
# (method, rank, state bits, per-layer, checkpointing); rank None: full rank; the rank is capped per model
CONFIGS = (("adamw", None, 16, False, False), ("adamw", None, 8, False, False), ("galore", 256, 16, False, False),
           ("galore", 256, 8, False, False), ("ori", 256, 16, False, False), ("galore", 256, 8, True, True))
PRIOR_CASE_S = {"60m": 20.0, "350m": 30.0, "1b": 60.0}  # expected seconds per case before any is measured
FIT_LIMIT = 0.9  # leave out configurations whose estimated device memory exceeds 90% of the device
FLAG_PCT = 3.0  # rows whose estimate misses by more than this are flagged


@dataclass(kw_only=True, slots=True)
class Sweep:
    """What one calibration runs, and where it writes."""

    out: Path
    quick: bool = False
    budget_s: float = 480.0
    backend: str = "cuda"
    models: tuple[str, ...] | None = None
    configs: tuple[tuple, ...] = CONFIGS
    timeout: float = 600.0
    proj_device: str | None = None  # where projection timings run (None: the sweep's GPU; tests: "cpu")
    device_memory: int | None = None  # bytes; None: read from the device probe
    gpu: str | None = None  # catalogue key; None: from the device name
    rows: list[dict] = field(default_factory=list)

    @property
    def model_names(self) -> tuple[str, ...]:
        return self.models or (QUICK_MODELS if self.quick else FULL_MODELS)


def cases(sweep: Sweep) -> list[Case]:
    """The training cases, smallest model first, each configuration at two micro-batches; configurations whose
    estimate does not fit the device are left out."""
    out = []
    for name in sweep.model_names:
        model = load_model(name)
        for method, rank, bits, layerwise, ckpt in sweep.configs:
            for batch in MICRO_BATCHES.get(name, (2, 8)):
                config = TrainConfig(model=model, method=method, state_bits=bits, layerwise=layerwise,
                                     checkpointing=ckpt, batch=batch, seq=256 if name != "tiny" else 16,
                                     rank=None if rank is None else min(rank, model.rank_limit() // 4))
                if sweep.device_memory is not None and not _fits(config, sweep.device_memory):
                    continue
                out.append(Case(config=config, backend=sweep.backend, steps=3))
    return out


def _fits(config: TrainConfig, device_memory: int) -> bool:
    from subprof.plan.memory import estimate

    return estimate(config).device_used_bytes <= FIT_LIMIT * device_memory


def run(sweep: Sweep, *, resume: bool = False, progress: Any = None,
        on_row: Callable[[dict], None] = lambda row: None) -> dict:
    """The sweep (module docstring); returns {"rows", "record", "errors", "record_path"}. Rows go to
    `<out>/calibrate_<gpu>.jsonl` as they come."""
    t0 = time.perf_counter()
    sweep.out.mkdir(parents=True, exist_ok=True)
    device = _device_row(sweep, resume)
    if sweep.backend == "cuda" and device.get("status") != "ok":
        raise SubprofError(f"the device probe failed: {device.get('error')}")
    sweep.device_memory = sweep.device_memory or device.get("total_memory_bytes")
    gpu = sweep.gpu or _gpu_key(device)
    log = ResultLog(sweep.out / f"calibrate_{gpu or 'device'}.jsonl", resume=resume)
    if device.get("resumed") is None:
        log.append(device)
    done = {case_key(r, KEY_FIELDS): r for r in log.existing if r.get("status") in FINAL_STATUSES}
    todo = cases(sweep)
    walls: dict[str, list[float]] = {}
    rows = [device]
    for case in todo:
        name = case.config.model.name
        old = done.get(case.key())
        if old is not None:
            rows.append(old)
        elif time.perf_counter() - t0 + _expected_s(name, walls) > sweep.budget_s:
            row = {**case.row_fields(), "status": "skipped", "error": "time budget", "date": now_iso()}
            log.append(row)
            rows.append(row)
        else:
            row = run_case(case, timeout=sweep.timeout)
            row.update(estimate_fields(case))
            log.append(row)
            rows.append(row)
            walls.setdefault(name, []).append(float(row.get("wall_s") or 0.0))
        on_row(rows[-1])
        if progress is not None:
            progress.advance(case.label())
    rows += _timings(sweep, log, t0)
    sweep.rows = rows
    return _record(sweep, rows, device, gpu)


def _expected_s(model: str, walls: dict[str, list[float]]) -> float:
    return statistics.median(walls[model]) if walls.get(model) else PRIOR_CASE_S.get(model, 10.0)


def _device_row(sweep: Sweep, resume: bool) -> dict:
    """The device probe's row: measured in a fresh process (cuda), or a stand-in naming the backend (tests). With
    `resume`, an earlier probe of the same rows file is reused."""
    if sweep.backend != "cuda":
        return {"kind": "device", "status": "ok", "device_name": f"{sweep.backend} (no GPU: the sweep's logic only)",
                "total_memory_bytes": sweep.device_memory, "date": now_iso()}
    if resume:
        for path in sweep.out.glob("calibrate_*.jsonl"):
            from subprof.results import read_rows

            probe = [r for r in read_rows(path) if r.get("kind") == "device" and r.get("status") == "ok"]
            if probe:
                return {**probe[-1], "resumed": True}
    return run_worker("subprof.measure.device", "{}", timeout=sweep.timeout,
                      base={"kind": "device", "date": now_iso()})


def _gpu_key(device: dict) -> str | None:
    gpu = find_gpu(str(device.get("device_name", "")))
    return gpu.key if gpu is not None else None


def _timings(sweep: Sweep, log: ResultLog, t0: float) -> list[dict]:
    """Projection-update timings on the largest model's shapes (skipped when the budget is spent)."""
    from subprof.measure.model import torch_threads
    from subprof.measure.timing import run_proj

    if time.perf_counter() - t0 > sweep.budget_s:
        return []
    device = sweep.proj_device or "cuda"
    model = load_model(sweep.model_names[-1])
    with torch_threads(None):
        result = run_proj(model, [128, 512], ["svd", "rsvd", "galore", "osd", "ori"], device=device, repeats=5,
                          warmup=1, log=log)
    return result["rows"]


def _record(sweep: Sweep, rows: list[dict], device: dict, gpu: str | None) -> dict:
    """Fit the record on this sweep's GPU rows and write it; on another backend, report the rows only."""
    training = [r for r in rows if r.get("kind") not in ("device", "proj", "proj_per_step")]
    if sweep.backend != "cuda":
        return {"rows": rows, "record": None, "record_path": None, "errors": [],
                "note": f"backend {sweep.backend}: no GPU rows to fit"}
    date = now_iso()
    record = fit(training, source=f"subprof calibrate on {device.get('device_name')}", base=DEFAULT, gpu=gpu,
                 device_name=device.get("device_name"), driver=device.get("driver"), cuda=device.get("cuda"),
                 torch=device.get("torch"), date=date, svd_flops_per_s=device.get("svd_flops_per_s"),
                 gemm_fp32_flops_per_s=device.get("gemm_fp32_flops_per_s"),
                 matmul_bf16_flops_per_s=device.get("matmul_bf16_flops_per_s"))
    path = sweep.out / f"calibration_{gpu or 'device'}_{date[:10]}.json"
    write_record(record, path)
    return {"rows": rows, "record": record.to_dict(), "record_path": str(path),
            "errors": [dict(e, flagged=abs(e["error_pct"]) > FLAG_PCT) for e in errors(training, record)]}


def write_record(record: Calibration, path: Path) -> None:
    import json

    path.write_text(json.dumps({"kind": "calibration", **record.to_dict()}, indent=2) + "\n")


def fit_rows(rows: list[dict], out: Path) -> dict:
    """A record fitted on rows measured elsewhere (`bench --backend cuda` rows of one GPU), written to `out`."""
    gpu_rows = [r for r in rows if r.get("backend", "cuda") == "cuda" and r.get("status", "ok") == "ok"]
    names = sorted({str(r.get("device")) for r in gpu_rows if r.get("device")})
    if len(names) > 1:
        raise SubprofError(f"the rows come from {len(names)} different GPUs ({', '.join(names)}): give one GPU's rows")
    name = names[0] if names else None
    gpu = find_gpu(name) if name else None
    first = gpu_rows[0] if gpu_rows else {}
    date = now_iso()
    record = fit(rows, source=f"fitted on {len(gpu_rows)} rows of {name or 'an unnamed GPU'}", base=DEFAULT,
                 gpu=gpu.key if gpu else None, device_name=name, driver=first.get("driver"), cuda=first.get("cuda"),
                 torch=first.get("torch"), date=date)
    path = out / f"calibration_{record.gpu or 'device'}_{date[:10]}.json"
    out.mkdir(parents=True, exist_ok=True)
    write_record(record, path)
    return {"rows": rows, "record": record.to_dict(), "record_path": str(path),
            "errors": [dict(e, flagged=abs(e["error_pct"]) > FLAG_PCT) for e in errors(rows, record)]}
