"""The `cuda` backend for a data-parallel job on the local GPUs: `torchrun --standalone --nproc-per-node N -m
subprof.measure.worker '<case>'` runs the case on N processes (NCCL), each rank records its own peaks, and rank 0
prints one row holding every rank's. Cannot run on a machine without N GPUs: `launch_command` refuses first, with one
line (`check_local_gpus`).

Each rank: `init_process_group("nccl")` on its `LOCAL_RANK` device; the model is built on the meta device, wrapped
exactly as the trace wraps it (`distributed_trace.shard_model`: FSDP2 per decoder layer then the root, or DDP), then
materialised on the GPU (`to_empty`) and re-initialised (normal(0, 0.02) weights, ones for norms: the values do not
change memory); random tokens differ per rank. An out-of-memory rank reports `oom`; the others then wait in their
next collective until the runner's timeout ends the job (a `timeout` row). Peaks per phase as the single-GPU `cuda` backend records them
(`torch.cuda.reset_peak_memory_stats` at each phase start), NVML used memory per device after the steps, CUDA-event
step times; the job's tokens/s = N × tokens per rank / median step time.
"""

from __future__ import annotations

import os
import sys

from subprof.errors import SubprofError
from subprof.measure.case import Case


def check_local_gpus(case: Case) -> None:
    """One line unless this machine has the GPUs the case asks for (a `cuda` job runs on local GPUs only)."""
    import torch

    if case.nodes > 1:
        raise SubprofError("--backend cuda runs a job on this machine's GPUs only: give --nodes 1 (--backend trace "
                           "plans any number of nodes)")
    have = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if have < case.world_size:
        raise SubprofError(f"--backend cuda --world-size {case.world_size} needs {case.world_size} local CUDA GPUs; "
                           f"this machine has {have} (use --backend trace)")


def launch_command(case: Case) -> list[str]:
    """`torchrun` for the case: one process per local GPU, a standalone rendezvous on a free port."""
    check_local_gpus(case)
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nnodes=1",
            f"--nproc-per-node={case.world_size}", "-m", "subprof.measure.worker", case.to_json()]


def measure_rank(case: Case) -> dict | None:
    """Run the case on this rank; rank 0 returns the row (every rank's peaks), the others None."""
    import torch
    import torch.distributed as dist

    from subprof.measure.distributed_trace import shard_model
    from subprof.measure.model import build_model, random_tokens, train_context
    from subprof.measure.reference import make_optimizer
    from subprof.measure.readings import nvml_used, step_times

    par = case.parallel
    rank, local, world = int(os.environ["RANK"]), int(os.environ["LOCAL_RANK"]), int(os.environ["WORLD_SIZE"])
    if par is None or world != par.gpus:
        raise SubprofError(f"torchrun started {world} ranks for a case of world size {case.world_size}")
    dev = torch.device("cuda", local)
    torch.cuda.set_device(dev)
    dist.init_process_group("nccl", device_id=dev)
    c = case.config
    phases: dict[str, int] = {}
    times, losses = [], []
    phase = "model_built"
    try:
        try:
            model = _build(case, par, dev, build_model, shard_model)
            opt = make_optimizer(model, case)
            torch.cuda.synchronize()
            phases[phase] = torch.cuda.memory_allocated()
            torch.cuda.reset_peak_memory_stats()
            reserved = 0
            context = "mixed" if c.dtype == "mixed" and not par.sharded else "bf16"
            for i in range(case.steps):
                ids = random_tokens(c.model, c.batch, c.seq, device=dev, seed=case.seed + 1000 * rank + i)
                start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                start.record()
                phase = "forward_backward"
                torch.cuda.reset_peak_memory_stats()
                with train_context(context, "cuda"):
                    loss = model(input_ids=ids, labels=ids).loss
                loss.backward()
                reserved = _record(phases, phase, reserved)
                phase = "optimizer_step"
                torch.cuda.reset_peak_memory_stats()
                opt.step()
                opt.zero_grad(set_to_none=True)
                reserved = _record(phases, phase, reserved)
                end.record()
                torch.cuda.synchronize()
                times.append(start.elapsed_time(end) / 1e3)
                losses.append(float(loss.detach().float()))
            mine = {"rank": rank, "status": "ok",
                    "peak_allocated_bytes": max(v for k, v in phases.items() if k != "model_built"),
                    "peak_reserved_bytes": reserved, "phases": phases, **nvml_used(local)}
        except torch.cuda.OutOfMemoryError as exc:
            mine = {"rank": rank, "status": "oom", "oom_phase": phase, "error": str(exc).splitlines()[0][:300],
                    "phases": phases}
        ranks: list = [None] * world
        dist.all_gather_object(ranks, mine)
        if rank != 0:
            return None
        worst = max((r for r in ranks if r.get("status") == "ok"), key=lambda r: r["peak_allocated_bytes"],
                    default=None)
        status = "ok" if all(r["status"] == "ok" for r in ranks) else "oom"
        row = {"status": status, "rank_peaks": ranks, "device": torch.cuda.get_device_name(dev),
               "cuda": torch.version.cuda, "losses": losses}
        if worst is not None:
            row.update(peak_allocated_bytes=worst["peak_allocated_bytes"],
                       peak_reserved_bytes=worst["peak_reserved_bytes"], phases=worst["phases"],
                       device_used_bytes=worst.get("device_used_bytes"), driver=worst.get("driver"))
        if status == "ok" and times:
            row.update(step_times(times, case))
            row["job_tokens_per_s"] = round(world * row["tokens_per_s"], 1)
        return row
    finally:
        dist.destroy_process_group()


def _record(phases: dict, phase: str, reserved: int) -> int:
    """The phase's peak allocated into `phases`; returns the running peak reserved."""
    import torch

    torch.cuda.synchronize()
    phases[phase] = max(phases.get(phase, 0), torch.cuda.max_memory_allocated())
    return max(reserved, torch.cuda.max_memory_reserved())


def _build(case: Case, par, dev, build_model, shard_model):
    """Meta model → the job's wrapping → materialised on this GPU and re-initialised (DDP: built on the GPU)."""
    import torch

    c = case.config
    if not par.sharded:
        from torch.nn.parallel import DistributedDataParallel

        model = build_model(c.model, dtype=c.dtype, device=dev, checkpointing=c.checkpointing, seed=case.seed)
        return DistributedDataParallel(model, device_ids=[dev.index])
    from torch.distributed.device_mesh import init_device_mesh

    shape = (par.replicas, par.shard_ranks) if par.strategy == "hsdp" else (par.gpus,)
    names = ("replicate", "shard") if par.strategy == "hsdp" else None
    mesh = init_device_mesh("cuda", shape, mesh_dim_names=names)
    model = build_model(c.model, dtype=c.dtype, device="meta", checkpointing=c.checkpointing)
    shard_model(model, case, par, mesh)
    model.to_empty(device=dev)
    torch.manual_seed(case.seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.dim() == 1:
                p.fill_(1.0)
            else:
                p.normal_(0.0, 0.02)
        for module in model.modules():  # rotary inv_freq is a non-persistent buffer: recompute it on the GPU
            if hasattr(module, "compute_default_rope_parameters") and hasattr(module, "inv_freq"):
                inv_freq, _ = module.compute_default_rope_parameters(module.config)
                module.inv_freq.copy_(inv_freq)
                if hasattr(module, "original_inv_freq"):
                    module.original_inv_freq.copy_(inv_freq)
    return model
