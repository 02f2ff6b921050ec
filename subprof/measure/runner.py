"""Running bench cases: each case in a fresh subprocess with a timeout, rows appended the moment they exist.

`build_cases` turns the command line's method × rank lists into validated cases; `sweep` runs every case not finished
yet (with `resume`), appends each row to a `ResultLog` with the analytic estimate beside it, and goes on after an
OOM, a timeout or an error; `run_case` starts `python -m subprof.measure.worker '<case json>'` in its own session,
reads its one `SUBPROF_ROW <json>` line, and kills the whole process group on timeout or Ctrl-C.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from typing import Callable, Iterable

from subprof.catalog import load_model
from subprof.config import TrainConfig
from subprof.errors import SubprofError
from subprof.measure.case import KEY_FIELDS, REFERENCE_NAMES, Case
from subprof.measure.worker import ROW_MARK, base_row
from subprof.methods import forced_state_bits, get_method
from subprof.plan.calibration import Calibration
from subprof.results import FINAL_STATUSES, ResultLog, case_key, error_pct, normalize


def build_cases(*, model: str, methods: list[str], ranks: list[int] | None, base: dict, steps: int, backend: str,
                threads: int | None = None, world_size: int = 1, nodes: int = 1,
                strategy: str | None = None) -> list[Case]:
    """method × rank cases (duplicates dropped), each validated by `TrainConfig` so a bad rank or dtype is one line.
    `base` holds the shared TrainConfig fields (batch, seq, dtype, state_bits, layerwise, checkpointing,
    update_gap); full-rank methods get one case, projected methods one per rank (the default rank if none).
    `world_size` > 1: one rank of a data-parallel job under `strategy` (default fsdp) on `nodes` nodes."""
    cfg = load_model(model)
    cases: list[Case] = []
    for name in methods:
        method, implementation = REFERENCE_NAMES.get(name.strip().lower(), (name, "subprof"))
        forced = forced_state_bits(method)
        for rank in (ranks or [None]) if get_method(method).project else [None]:
            bits = base.get("state_bits")
            if forced is not None and bits not in (None, forced):
                raise SubprofError(f"--methods {name} implies --state-bits {forced}")
            config = TrainConfig(model=cfg, method=method, rank=rank, **{**base, "state_bits": forced or bits})
            case = Case(config=config, implementation=implementation, steps=steps, backend=backend,
                        threads=threads, world_size=world_size, nodes=nodes, strategy=strategy)
            case.check_installed()
            if backend == "cuda" and case.parallel is not None:
                from subprof.measure.distributed_cuda import check_local_gpus

                check_local_gpus(case)
            if case.key() not in {c.key() for c in cases}:
                cases.append(case)
    if not cases:
        raise SubprofError("--methods is empty; give e.g. galore,ori")
    return cases


@dataclass(frozen=True, kw_only=True, slots=True)
class BudgetRule:
    """`bench --gpu-mem`: the planner's rule for a measured or traced peak. Device memory = the peak (+ the CUDA
    runtime allocations a trace cannot see) + allocator reserve + CUDA context (`Calibration.device_used_bytes`),
    held against budget × (1 − margin); over it, the row is `oom` at the first phase that crossed."""

    budget_bytes: int
    margin: float
    calibration: Calibration

    @property
    def usable_bytes(self) -> int:
        return int(self.budget_bytes * (1 - self.margin))

    def device_used(self, peak: int, case: Case) -> int:
        from subprof.plan.distributed import nccl_bytes
        from subprof.plan.memory import logits_bytes

        runtime = self.calibration.cuda_runtime_allocated_bytes if case.backend != "cuda" else 0
        return self.calibration.device_used_bytes(peak + runtime, logits_bytes(case.config)) \
            + nccl_bytes(case.parallel)

    def apply(self, row: dict, case: Case) -> None:
        peak = row.get("peak_allocated_bytes")
        if row.get("status") != "ok" or not peak:
            return
        used = self.device_used(peak, case)
        row["budget_device_used_bytes"] = used
        if used <= self.usable_bytes:
            return
        phases = row.get("phases") or {}
        phase = next((p for p in ("model_built", "projection_refresh", "forward_backward", "optimizer_step")
                      if self.device_used(phases.get(p) or 0, case) > self.usable_bytes), None)
        row.update(status="oom", oom_phase=phase,
                   error=f"peak {peak / 2**30:.2f} GiB → device {used / 2**30:.2f} GiB (with the calibrated "
                         f"GPU-side terms, {self.calibration.source}) > {self.usable_bytes / 2**30:.2f} GiB usable "
                         f"({self.margin:.0%} margin)")


def estimate_fields(case: Case, calibration: Calibration | None = None) -> dict:
    """The analytic estimate of a case (`subprof.plan.distributed.estimate_rank`: rank 0 of a data-parallel job,
    `subprof.plan.memory.estimate` for one process), to store beside the measurement."""
    from subprof.plan.distributed import estimate_rank

    est = estimate_rank(case.config, case.parallel, calibration)
    return {"estimated_peak_allocated_bytes": int(est.peak_allocated_bytes),
            "estimated_device_used_bytes": int(est.device_used_bytes),
            "estimated_cuda_runtime_bytes": int(est.components.get("cuda_runtime", 0)),
            "calibration": est.calibration}


def sweep(cases: Iterable[Case], *, out: str, resume: bool, timeout: float, budget: BudgetRule | None = None,
          calibration: Calibration | None = None,
          on_row: Callable[[Case, dict | None], None] = lambda c, r: None) -> list[dict]:
    """Run every case not already finished in `out` (with `resume`), appending each row at once (with the estimate
    under `calibration`, and `budget` applied). Returns the rows of all requested cases (earlier ones included).
    KeyboardInterrupt propagates after the last finished row."""
    log = ResultLog(out, resume=resume)
    done = {case_key(r, KEY_FIELDS): r for r in map(normalize, log.existing) if r.get("status") in FINAL_STATUSES}
    rows = []
    for case in cases:
        old = done.get(case.key())
        if old is not None:
            rows.append(old)
            on_row(case, None)
            continue
        row = run_case(case, timeout=timeout)
        if budget is not None:
            budget.apply(row, case)
        row.update(estimate_fields(case, calibration or (budget.calibration if budget else None)))
        row["estimate_error_pct"] = error_pct(row)
        log.append(row)
        rows.append(row)
        on_row(case, row)
    return rows


def run_case(case: Case, *, timeout: float) -> dict:
    """Run `case` in a fresh subprocess; always return a row (ok / oom / diverged / timeout / error).
    KeyboardInterrupt kills the child's process group and propagates (no row is written for it)."""
    command = None
    if case.backend == "cuda" and case.parallel is not None:  # a job on the local GPUs: torchrun, rank 0 reports
        from subprof.measure.distributed_cuda import launch_command

        command = launch_command(case)
    return run_worker("subprof.measure.worker", case.to_json(), timeout=timeout, base=base_row(case),
                      command=command)


def run_worker(module: str, payload: str, *, timeout: float, base: dict, command: list[str] | None = None) -> dict:
    """`python -m <module> '<payload>'` (or `command`) in its own session; its one `SUBPROF_ROW <json>` line, or
    `base` with status timeout / error. KeyboardInterrupt kills the child's process group and propagates."""
    t0 = time.perf_counter()
    proc = subprocess.Popen(command or [sys.executable, "-m", module, payload], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        _kill(proc)
        return {**base, "status": "timeout", "error": f"no result within {timeout:g} s",
                "wall_s": round(time.perf_counter() - t0, 2)}
    except BaseException:
        _kill(proc)
        raise
    for line in out.splitlines():
        if line.startswith(ROW_MARK):
            return {**json.loads(line[len(ROW_MARK):]), "wall_s": round(time.perf_counter() - t0, 2)}
    last = [ln for ln in err.strip().splitlines() if ln.strip()]
    error = (last[-1] if last else f"worker exited with code {proc.returncode}")[-500:]
    return {**base, "status": "error", "error": error, "wall_s": round(time.perf_counter() - t0, 2)}


def _kill(proc: subprocess.Popen) -> None:
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
    proc.wait()
