"""The GPU-side terms of the memory model, and where they come from: a `Calibration`.

A trace (and the model-side formulas fitted on traces) sees tensors only. What a real GPU adds is calibrated from
real rows: CUDA runtime allocations through torch's allocator (cuBLAS/cuBLASLt workspaces, kernel-choice
differences), the allocator's reserve over the peak (it keeps the big transient logits blocks), and the CUDA context
(nvidia-smi's "used" beyond torch's reserved memory). A calibration may also carry measured rates (SVD, fp32 GEMM,
bf16 matmul) that replace the scaled H100 figures in the throughput model.

`DEFAULT` is the fit on the real H100 rows in `profiles/measured/h100_reference.jsonl` (torch 2.11.0+cu130,
transformers 5.17.0, NVIDIA H100 80GB HBM3; `tests/test_calibration.py` refits it from that file with
`subprof.plan.fit`). `subprof calibrate` measures another GPU and writes a record (`calibration_<gpu>_<date>.json`)
that `calibration_for` picks up when the target GPU matches, or `--calibration FILE` names. Every output says which
calibration it used. Pure Python, no torch.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, fields
from functools import cache
from pathlib import Path

from subprof.catalog import profiles_dir
from subprof.errors import SubprofError

# Cross-entropy over V logits per token at its backward peak: fp32 log_softmax output + its incoming gradient +
# the fp32 input gradient = 3 · 4 B · V (see memory.logits_bytes). Model-side: checked on traces, not calibrated.
LOGITS_BYTES_PER_VOCAB_TOKEN = 12
RECORD_GLOB = "calibration_*.json"


@dataclass(frozen=True, kw_only=True, slots=True)
class Calibration:
    """The GPU-side constants (bytes are integers) and, optionally, measured rates (FLOP/s)."""

    source: str
    cuda_runtime_allocated_bytes: int
    cuda_context_bytes: int
    reserve_per_logits_byte: float
    gpu: str | None = None  # the catalogue GPU it was measured on (None: the default, used for any GPU)
    device_name: str | None = None
    driver: str | None = None
    cuda: str | None = None
    torch: str | None = None
    date: str | None = None
    rows: int = 0
    svd_flops_per_s: float | None = None
    gemm_fp32_flops_per_s: float | None = None
    matmul_bf16_flops_per_s: float | None = None
    leave_one_out_error_pct: float | None = None  # worst |error| of a row's peak predicted without that row

    def reserved_bytes(self, peak_allocated: int, logits: int) -> int:
        """reserved ≈ peak allocated + reserve_per_logits_byte · logits_loss bytes."""
        return int(peak_allocated + self.reserve_per_logits_byte * logits)

    def device_used_bytes(self, peak_allocated: int, logits: int) -> int:
        """What nvidia-smi shows for a step whose `torch.cuda.max_memory_allocated()` is `peak_allocated`: the reserved
        memory plus the CUDA context. `plan` holds this against budget × (1 − margin), and so does `bench --gpu-mem`
        for a traced peak (plus `cuda_runtime_allocated_bytes`, which a trace cannot see)."""
        return self.reserved_bytes(peak_allocated, logits) + self.cuda_context_bytes

    def describe(self) -> str:
        return self.source

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict, source: str | None = None) -> "Calibration":
        known = {f.name for f in fields(cls)}
        values = {k: v for k, v in data.items() if k in known}
        if source is not None:
            values["source"] = source
        try:
            return cls(**values)
        except TypeError as exc:
            raise SubprofError(f"calibration record {source or ''}: {exc}") from None


DEFAULT = Calibration(
    source="H100 reference rows (profiles/measured/h100_reference.jsonl: NVIDIA H100 80GB HBM3, torch 2.11)",
    # mean of (measured peak − model-side estimate) over the four H100 rows = 82.5, 86.4, 111.9, 155.8 MiB
    cuda_runtime_allocated_bytes=109 * 2**20,
    # nvidia-smi "used" minus torch's peak reserved: 1.22, 1.31, 1.22, 1.31 GiB → mean 1.265 GiB
    cuda_context_bytes=int(1.265 * 2**30),
    # least-squares slope through the origin of (reserved − peak) on logits bytes (per row 0.48, 0.50, 0.59, 0.37)
    reserve_per_logits_byte=0.48,
    device_name="NVIDIA H100 80GB HBM3", torch="2.11.0+cu130", rows=4,
)


def load(path: str | Path) -> Calibration:
    """A calibration record written by `subprof calibrate`."""
    path = Path(path)
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise SubprofError(f"--calibration {str(path)!r}: no such file (write one with `subprof calibrate`)") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise SubprofError(f"--calibration {str(path)!r} is not a calibration record: {exc}") from None
    if not isinstance(data, dict) or data.get("kind") != "calibration":
        raise SubprofError(f"--calibration {str(path)!r} is not a calibration record (written by `subprof "
                           f"calibrate`)")
    return Calibration.from_dict(data, source=f"{path} ({data.get('device_name')}, torch {data.get('torch')}, "
                                              f"{str(data.get('date', ''))[:10]})")


def record_dirs() -> list[Path]:
    """Where records are looked for: the shipped `profiles/measured/` and `./profiles/measured/` (the default
    `--out` of `subprof calibrate` in a checkout)."""
    dirs = [profiles_dir() / "measured", Path.cwd() / "profiles" / "measured"]
    return list(dict.fromkeys(d.resolve() for d in dirs if d.is_dir()))


@cache
def _records() -> tuple[tuple[str, str, Path], ...]:
    """(gpu key, date, path) of every record found, newest last."""
    found = []
    for folder in record_dirs():
        for path in folder.glob(RECORD_GLOB):
            try:
                data = json.loads(path.read_text())
            except (OSError, ValueError):
                continue
            if isinstance(data, dict) and data.get("kind") == "calibration" and data.get("gpu"):
                found.append((str(data["gpu"]), str(data.get("date", "")), path))
    return tuple(sorted(found, key=lambda r: r[1]))


def calibration_for(gpu: str | None, path: str | None = None) -> Calibration:
    """`--calibration FILE` if given; else the newest record measured on catalogue GPU `gpu`; else `DEFAULT`
    (saying that no record for that GPU exists)."""
    if path is not None:
        return load(path)
    matches = [p for key, _, p in _records() if key == gpu]
    if matches:
        return load(matches[-1])
    if gpu is None:
        return DEFAULT
    return Calibration.from_dict(DEFAULT.to_dict(), source=f"{DEFAULT.source}; no calibration record for {gpu} — "
                                                           f"measure it with `subprof calibrate`")
