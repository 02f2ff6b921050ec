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
from typing import Callable, Iterable

from subprof.catalog import load_model
from subprof.config import TrainConfig
from subprof.errors import SubprofError
from subprof.measure.case import KEY_FIELDS, REFERENCE_NAMES, Case
from subprof.measure.worker import ROW_MARK, base_row
from subprof.methods import forced_state_bits, get_method
from subprof.results import FINAL_STATUSES, ResultLog, case_key, error_pct, normalize


def build_cases(*, model: str, methods: list[str], ranks: list[int] | None, base: dict, steps: int, backend: str,
                budget_bytes: int | None = None, world_size: int = 1, nodes: int = 1,
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
                        budget_bytes=budget_bytes, world_size=world_size, nodes=nodes, strategy=strategy)
            case.check_installed()
            if backend == "cuda" and case.parallel is not None:
                from subprof.measure.distributed_cuda import check_local_gpus

                check_local_gpus(case)
            if case.key() not in {c.key() for c in cases}:
                cases.append(case)
    if not cases:
        raise SubprofError("--methods is empty; give e.g. galore,ori")
    return cases


def estimate_fields(case: Case) -> dict:
    """The analytic estimate of a case (`subprof.plan.memory.estimate`), to store beside the measurement."""
    from subprof.plan.distributed import estimate_rank

    est = estimate_rank(case.config, case.parallel)
    return {"estimated_peak_allocated_bytes": int(est.peak_allocated_bytes),
            "estimated_device_used_bytes": int(est.device_used_bytes),
            "estimated_cuda_runtime_bytes": int(est.components.get("cuda_runtime", 0))}


def sweep(cases: Iterable[Case], *, out: str, resume: bool, timeout: float,
          on_row: Callable[[Case, dict | None], None] = lambda c, r: None) -> list[dict]:
    """Run every case not already finished in `out` (with `resume`), appending each row at once. Returns the rows
    of all requested cases (earlier ones included). KeyboardInterrupt propagates after the last finished row."""
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
        row.update(estimate_fields(case))
        row["estimate_error_pct"] = error_pct(row)
        log.append(row)
        rows.append(row)
        on_row(case, row)
    return rows


def run_case(case: Case, *, timeout: float) -> dict:
    """Run `case` in a fresh subprocess; always return a row (ok / oom / diverged / timeout / error).
    KeyboardInterrupt kills the child's process group and propagates (no row is written for it)."""
    t0 = time.perf_counter()
    cmd = [sys.executable, "-m", "subprof.measure.worker", case.to_json()]
    if case.backend == "cuda" and case.parallel is not None:
        from subprof.measure.distributed_cuda import launch_command

        cmd = launch_command(case)
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        _kill(proc)
        row = base_row(case)
        row.update(status="timeout", error=f"no result within {timeout:g} s", wall_s=round(time.perf_counter() - t0, 2))
        return row
    except BaseException:
        _kill(proc)
        raise
    for line in out.splitlines():
        if line.startswith(ROW_MARK):
            row = json.loads(line[len(ROW_MARK):])
            row["wall_s"] = round(time.perf_counter() - t0, 2)
            return row
    row = base_row(case)
    last = [ln for ln in err.strip().splitlines() if ln.strip()]
    row.update(status="error", error=(last[-1] if last else f"worker exited with code {proc.returncode}")[-500:],
               wall_s=round(time.perf_counter() - t0, 2))
    return row


def _kill(proc: subprocess.Popen) -> None:
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
    proc.wait()
