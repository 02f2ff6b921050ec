"""The worker side of a bench case: `python -m subprof.measure.worker '<case json>'` measures one case with its
backend in this fresh process and prints one `SUBPROF_ROW <json>` line. Every failure becomes a row.

Backends (DESIGN.md, "Measurement backends"):
- `cuda`: the real step on the GPU. `torch.cuda.max_memory_allocated/reserved` (peak stats reset before the
  first step, and per phase: the overall peak is the max of the phase peaks), NVML used memory of this process and
  of the whole device after the steps, CUDA-event step times, first-step time (includes a first SVD), tokens/s.
- `trace`: `subprof.measure.trace.trace_case` — the same code on fake tensors; tensor-exact peaks per category and
  phase, no times. With a budget, a traced peak over budget is reported as `oom` at the phase that crossed.
- `cpu`: real steps on the CPU for small models: MemTracker-tracked tensor peak (per category and phase), step
  times, real losses.
A case with `world_size` > 1 is one rank of a data-parallel job: `trace` traces rank 0 on a fake process group
(`distributed_trace.trace_rank`); `cuda` runs under `torchrun` on the local GPUs (`distributed_cuda`), and rank 0
prints the row with every rank's peaks.
Statuses: `ok`, `oom` (and `oom_phase`), `diverged` (a NaN/inf loss or gradient), `error` (with the message).
"""

from __future__ import annotations

import json
import math
import os
import sys
import time

from subprof.errors import SubprofError
from subprof.measure.case import Case
from subprof.measure.readings import nvml_used, step_times
from subprof.quiet import known_noise_filtered
from subprof.results import now_iso

ROW_MARK = "SUBPROF_ROW "


def base_row(case: Case) -> dict:
    """The identifying fields every row carries, whatever happened."""
    return {**case.row_fields(), "status": None, "date": now_iso()}


def measure(case: Case) -> dict:
    """Measure `case` in this process (the worker); returns a complete row."""
    import torch
    import transformers

    from subprof.measure.model import torch_threads

    row = base_row(case)
    row.update(torch=torch.__version__, transformers=transformers.__version__)
    try:
        run = {"trace": _trace, "cpu": _cpu, "cuda": _cuda}[case.backend]
        with torch_threads(case.threads) as threads:
            row["threads"] = threads
            row.update(run(case) or {})  # None: a rank other than 0 of a torchrun job
    except FloatingPointError as exc:  # the optimizer refused a NaN/inf gradient: a result, not a failure
        row.update(status="diverged", error=str(exc).splitlines()[0][:300])
    except SubprofError as exc:
        row.update(status="error", error=str(exc))
    return row


def _trace(case: Case) -> dict:
    """Trace backend: tensor-exact peaks; no device memory, no times (`peak_reserved_bytes` etc. stay None)."""
    if case.parallel is not None:
        from subprof.measure.distributed_trace import trace_rank

        res = trace_rank(case)
    else:
        from subprof.measure.trace import trace_case

        res = trace_case(case)
    out = {"status": "ok", "peak_allocated_bytes": res.peak_allocated_bytes, "peak_reserved_bytes": None,
           "device_used_bytes": None, "categories": res.categories, "phases": res.phases,
           "phase_categories": res.phase_categories, "optimizer_state_bytes": res.optimizer_state_bytes,
           "param_bytes": res.param_bytes, "attention_kernel": res.sdpa_kernel, "step_peaks": res.steps,
           "trace_seconds": round(res.trace_seconds, 2), "host_max_rss_bytes": res.host_max_rss_bytes,
           "device": "trace (fake tensors, CUDA choices reproduced)"}
    if case.parallel is not None:
        out.update(device="trace of rank 0 (fake tensors, fake process group)", parallel=res.parallel,
                   comms=res.comms, shard_bytes=res.shard_bytes)
    return out


def _losses_ok(losses: list[float]) -> bool:
    return all(math.isfinite(x) for x in losses)


def _setup(case: Case, device):
    """The case's model (built on `device` in its dtype, seeded) and optimizer."""
    from subprof.measure.model import build_model
    from subprof.measure.reference import make_optimizer

    c = case.config
    model = build_model(c.model, dtype=c.dtype, device=device, checkpointing=c.checkpointing, seed=case.seed)
    return model, make_optimizer(model, case)


def _cpu(case: Case) -> dict:
    """CPU backend: `steps` real steps under MemTracker (every tensor counted: the same categories and phases as a
    trace, without CUDA's 512-B rounding), then `steps` more untracked steps for the times. `losses` holds all."""
    import torch

    from subprof.measure.model import random_tokens, train_context
    from subprof.measure.trace import PhaseTracker, _flat

    c = case.config
    if not c.spec.project and c.state_bits == 8:
        raise SubprofError("8-bit AdamW (bitsandbytes) needs CUDA: use --backend cuda or trace")
    model, opt = _setup(case, "cpu")
    tracker = PhaseTracker()
    tracker.track_external(model)
    times, losses = [], []
    with known_noise_filtered(), tracker:  # ModTracker's warning on re-entered modules (subprof.quiet)
        tracker._peak_mem = {}
        built = tracker.current_total()
        for i in range(case.steps):
            tracker.reset_mod_stats()
            ids = random_tokens(c.model, c.batch, c.seq, seed=case.seed + i)
            with tracker.in_phase(f"fwbw{i}"):
                with train_context(c.dtype, "cpu"):
                    loss = model(input_ids=ids, labels=ids).loss
                loss.backward()
            with tracker.in_phase(f"opt{i}"):
                opt.step()
                opt.zero_grad(set_to_none=True)
            losses.append(float(loss.detach().float()))
            del loss, ids
    # times come from as many further steps without the tracker (its per-op Python hooks would dominate them)
    opt_times = []
    for i in range(case.steps):
        ids = random_tokens(c.model, c.batch, c.seq, seed=case.seed + case.steps + i)
        t0 = time.perf_counter()
        with train_context(c.dtype, "cpu"):
            loss = model(input_ids=ids, labels=ids).loss
        loss.backward()
        t1 = time.perf_counter()
        opt.step()
        opt.zero_grad(set_to_none=True)
        times.append(time.perf_counter() - t0)
        opt_times.append(time.perf_counter() - t1)
        losses.append(float(loss.detach().float()))
    peak = _flat(tracker._peak_mem_snap)
    total = peak.pop("total", 0)
    phases = {"model_built": built,
              "forward_backward": max(tracker.phase_peak[f"fwbw{i}"] for i in range(case.steps)),
              "optimizer_step": max(tracker.phase_peak[f"opt{i}"] for i in range(case.steps))}
    out = {"status": "ok" if _losses_ok(losses) else "diverged", "peak_allocated_bytes": total,
           "peak_reserved_bytes": None, "device_used_bytes": None, "categories": peak, "phases": phases,
           "losses": losses, **step_times(times, case), **optimizer_times(opt_times, model, case),
           "device": f"cpu ({torch.get_num_threads()} threads)"}
    return out


def optimizer_times(opt_times: list[float], model, case: Case) -> dict:
    """The optimizer step's median time (later steps: the first one holds the first refresh), its floor measured now
    on the same device (`subprof.measure.floor`), and their ratio. Per-layer updates run inside backward: their step
    time cannot be separated and is not reported."""
    from subprof.measure.floor import step_floor_seconds

    if case.config.layerwise:
        return {"optimizer_step_s": None, "step_floor_s": None, "step_over_floor": None}
    later = sorted(opt_times[1:] or opt_times)
    median = later[len(later) // 2]
    floor = step_floor_seconds(model, case.config)
    return {"optimizer_step_s": round(median, 6), "step_floor_s": round(floor, 6),
            "step_over_floor": round(median / floor, 3) if floor else None}


def _cuda(case: Case) -> dict:
    """CUDA backend: see the module docstring. Per-phase peaks reset the peak counter at each phase start; the
    overall peak is the max over phases (which together cover the whole run)."""
    import torch

    from subprof.measure.model import random_tokens, train_context

    if not torch.cuda.is_available():
        raise SubprofError("--backend cuda needs a CUDA GPU; none is visible (use --backend trace)")
    if case.parallel is not None:
        from subprof.measure.distributed_cuda import measure_rank

        return measure_rank(case)
    c = case.config
    dev = torch.device("cuda")
    phase = "model_built"
    phases: dict[str, int] = {}
    times, losses = [], []
    try:
        model, opt = _setup(case, dev)
        batches = [random_tokens(c.model, c.batch, c.seq, device=dev, seed=case.seed + i)
                   for i in range(case.steps)]
        torch.cuda.synchronize()
        phases[phase] = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        reserved = 0
        opt_times = []
        for i, ids in enumerate(batches):
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            mid = torch.cuda.Event(enable_timing=True)
            start.record()
            phase = "forward_backward"
            torch.cuda.reset_peak_memory_stats()
            with train_context(c.dtype, "cuda"):
                loss = model(input_ids=ids, labels=ids).loss
            loss.backward()
            torch.cuda.synchronize()
            phases[phase] = max(phases.get(phase, 0), torch.cuda.max_memory_allocated())
            reserved = max(reserved, torch.cuda.max_memory_reserved())
            phase = "optimizer_step"
            torch.cuda.reset_peak_memory_stats()
            mid.record()
            opt.step()
            opt.zero_grad(set_to_none=True)
            end.record()
            torch.cuda.synchronize()
            opt_times.append(mid.elapsed_time(end) / 1e3)
            key = "projection_refresh" if i == 0 and c.rank else phase  # a projected method refreshes at step 1
            phases[key] = max(phases.get(key, 0), torch.cuda.max_memory_allocated())
            reserved = max(reserved, torch.cuda.max_memory_reserved())
            times.append(start.elapsed_time(end) / 1e3)
            losses.append(float(loss.detach().float()))
            del loss
    except torch.cuda.OutOfMemoryError as exc:
        return {"status": "oom", "oom_phase": phase, "error": str(exc).splitlines()[0][:300], "phases": phases,
                "device": torch.cuda.get_device_name(dev)}
    nvml = nvml_used(dev.index or 0)
    return {"status": "ok" if _losses_ok(losses) else "diverged",
            "peak_allocated_bytes": max(v for k, v in phases.items() if k != "model_built"),
            "peak_reserved_bytes": reserved, "device_used_bytes": nvml.get("device_used_bytes"),
            "process_used_bytes": nvml.get("process_used_bytes"), "phases": phases, "losses": losses,
            **step_times(times, case), **optimizer_times(opt_times, model, case),
            "device": torch.cuda.get_device_name(dev), "cuda": torch.version.cuda, "driver": nvml.get("driver")}


def main(argv: list[str]) -> int:
    """Worker entry: `python -m subprof.measure.worker '<case json>'` prints one `SUBPROF_ROW {...}` line."""
    case = Case.from_json(argv[1])
    try:
        row = measure(case)
    except Exception as exc:  # the worker reports every failure as a row; the parent never sees a traceback
        row = base_row(case)
        row.update(status="error", error=f"{type(exc).__name__}: {exc}"[:500])
    if int(os.environ.get("RANK", "0")) != 0:  # under torchrun only rank 0 reports (it holds every rank's peaks)
        return 0
    sys.stdout.write(ROW_MARK + json.dumps(row, default=str) + "\n")
    sys.stdout.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
