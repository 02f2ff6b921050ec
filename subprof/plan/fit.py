"""Fitting a `Calibration` from real GPU rows: the GPU-side terms of the memory model, each a one-line estimator.

A row is a `subprof bench --backend cuda` row (or a `subprof calibrate` row, or one of the H100 reference rows): its
configuration plus the measured `peak_allocated`, `peak_reserved` and NVML device-used memory. With M the model-side
estimate of the row's configuration (the memory model with no GPU-side terms) and L its logits bytes:

    cuda_runtime_allocated  = mean(peak_allocated − M)                       (what torch allocates beyond tensors)
    reserve_per_logits_byte = Σ L·(reserved − peak) / Σ L²                   (least squares through the origin)
    cuda_context            = mean(device_used − reserved)                   (nvidia-smi beyond torch's reserve)

Each is fitted on the rows that carry its inputs. Leave-one-out: every row's peak is predicted by a fit without it;
the worst |error| is stored in the record. Pure Python, no torch.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Iterable

from subprof.config import TrainConfig
from subprof.errors import SubprofError
from subprof.plan.calibration import Calibration
from subprof.plan.memory import estimate, logits_bytes
from subprof.results import normalize, number

GIB = 2**30
NONE = Calibration(source="model side only", cuda_runtime_allocated_bytes=0, cuda_context_bytes=0,
                   reserve_per_logits_byte=0.0)


def measured(row: dict, key: str) -> float | None:
    """`<key>_bytes`, else `<key>_gib` · 2^30 (the H100 reference rows' unit); None without a finite one."""
    value = number(row, f"{key}_bytes")
    if value is None and number(row, f"{key}_gib") is not None:
        value = number(row, f"{key}_gib") * GIB
    return value


def usable_rows(rows: Iterable[dict]) -> list[tuple[dict, TrainConfig]]:
    """The `ok` rows measured on a GPU, with their configurations (rows of unknown models are skipped)."""
    out = []
    for row in map(normalize, rows):
        if row.get("status", "ok") != "ok" or row.get("backend", "cuda") != "cuda":
            continue
        if measured(row, "peak_allocated") is None:
            continue
        try:
            out.append((row, TrainConfig.from_dict(row)))
        except (SubprofError, KeyError, TypeError, ValueError):
            continue
    return out


def _fit(pairs: list[tuple[dict, TrainConfig]]) -> tuple[int, float, int | None]:
    """(runtime bytes, reserve slope, context bytes or None) from the rows."""
    residuals, xy, xx, gaps = [], 0.0, 0.0, []
    for row, config in pairs:
        peak = measured(row, "peak_allocated")
        residuals.append(peak - estimate(config, NONE).peak_allocated_bytes)
        reserved = measured(row, "peak_reserved")
        if reserved is not None:
            logits = logits_bytes(config)
            xy += logits * (reserved - peak)
            xx += logits * logits
            used = measured(row, "device_used") or measured(row, "nvml_used")
            if used is not None:
                gaps.append(used - reserved)
    runtime = int(round(sum(residuals) / len(residuals)))
    slope = xy / xx if xx else 0.0
    context = int(round(sum(gaps) / len(gaps))) if gaps else None
    return runtime, slope, context


def fit(rows: Iterable[dict], *, source: str, base: Calibration, **record: object) -> Calibration:
    """A calibration fitted on `rows` (terms without rows to fit them keep `base`'s values; `record` adds
    identification: gpu, device_name, driver, cuda, torch, date, measured rates)."""
    pairs = usable_rows(rows)
    if not pairs:
        raise SubprofError("no measured GPU rows to fit a calibration on (status ok, backend cuda, with a peak)")
    runtime, slope, context = _fit(pairs)
    fitted = replace(base, source=source, cuda_runtime_allocated_bytes=runtime,
                     reserve_per_logits_byte=slope if slope else base.reserve_per_logits_byte,
                     cuda_context_bytes=context if context is not None else base.cuda_context_bytes,
                     rows=len(pairs), **record)
    return replace(fitted, leave_one_out_error_pct=leave_one_out(pairs, fitted))


def leave_one_out(pairs: list[tuple[dict, TrainConfig]], calibration: Calibration) -> float | None:
    """The worst |error| (%) of a row's peak allocated predicted by a fit on the other rows (None below 2 rows)."""
    if len(pairs) < 2:
        return None
    worst = 0.0
    for i, (row, config) in enumerate(pairs):
        runtime, _, _ = _fit(pairs[:i] + pairs[i + 1:])
        predicted = estimate(config, replace(calibration, cuda_runtime_allocated_bytes=runtime)).peak_allocated_bytes
        worst = max(worst, abs(predicted / measured(row, "peak_allocated") - 1) * 100)
    return round(worst, 2)


def errors(rows: Iterable[dict], calibration: Calibration) -> list[dict]:
    """Per usable row: estimated vs measured peak allocated under `calibration`, with the error in %."""
    out = []
    for row, config in usable_rows(rows):
        est = estimate(config, calibration).peak_allocated_bytes
        peak = measured(row, "peak_allocated")
        out.append({"config": config.label(), "model": config.model.name, "batch": config.batch,
                    "estimated_peak_allocated_bytes": est, "peak_allocated_bytes": int(peak),
                    "error_pct": round(100 * (est - peak) / peak, 2)})
    return out
