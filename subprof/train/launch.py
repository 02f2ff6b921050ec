"""Running a function on N local processes of one data-parallel job: `run_ranks(fn, N, *args)`.

torch.multiprocessing spawns the ranks (`start_processes(..., start_method="spawn")`), which rendezvous through a
file store in a fresh temporary folder (no ports, so no free-port race, and nothing shared between runs: a stale
store from a crashed run is a classic hang) and use gloo on the CPU or NCCL when each rank has a GPU. The parent
waits until a deadline, and whatever happens it terminates, then kills, every child it started — no leftovers
(/work/notes/dist_optim.md §1: startup 1.5–4 s per job here, mostly `import torch` in each child). Each rank's
return value comes back through `torch.save` into the temporary folder; a `SubprofError` in any rank becomes the
parent's (one line, exit 2 at the CLI), any other failure a `RuntimeError` with the rank's traceback.

`fn` must be importable by its module name (spawned children import it): a module-level function of a package
module, not a test file's or `__main__`'s.
"""

from __future__ import annotations

import datetime
import os
import tempfile
import time
import traceback
from typing import Any, Callable

import torch

from subprof.errors import SubprofError

INIT_TIMEOUT_S = 120  # every collective's own deadline (gloo/NCCL), so a lost peer cannot hang a rank forever


def _entry(rank: int, fn: Callable, world: int, folder: str, backend: str, threads: int, args: tuple) -> None:
    import torch.distributed as dist

    torch.set_num_threads(threads)
    if backend == "nccl":
        torch.cuda.set_device(rank)
    dist.init_process_group(backend, init_method=f"file://{folder}/store", rank=rank, world_size=world,
                            timeout=datetime.timedelta(seconds=INIT_TIMEOUT_S))
    try:
        out = fn(rank, world, *args)
        torch.save(out, os.path.join(folder, f"rank{rank}.pt"))
    except SubprofError as exc:
        with open(os.path.join(folder, f"error{rank}.txt"), "w") as f:
            f.write(str(exc))
        raise
    except BaseException:
        traceback.print_exc()
        raise
    finally:
        dist.destroy_process_group()


def run_ranks(fn: Callable, world: int, *args: Any, timeout: float = 600.0, backend: str | None = None,
              threads: int = 1, on_wait: Callable[[], None] | None = None) -> list[Any]:
    """fn(rank, world, *args) on `world` spawned ranks; returns their return values in rank order. `backend`:
    None picks NCCL when there is a GPU per rank, else gloo; `threads`: torch threads per rank; `on_wait` runs
    about once a second while they work. Past `timeout` seconds the ranks are killed and a `SubprofError`
    raised."""
    import torch.multiprocessing as mp

    if world < 1:
        raise SubprofError(f"--nproc must be at least 1, got {world}")
    if backend is None:
        backend = "nccl" if torch.cuda.is_available() and torch.cuda.device_count() >= world else "gloo"
    with tempfile.TemporaryDirectory(prefix="subprof-ranks-") as folder:
        ctx = mp.start_processes(_entry, args=(fn, world, folder, backend, threads, args), nprocs=world,
                                 join=False, start_method="spawn")
        deadline = time.monotonic() + timeout
        try:
            while not _join(ctx, folder, deadline):
                if on_wait is not None:
                    on_wait()
                if time.monotonic() > deadline:
                    raise SubprofError(f"the {world} ranks were still running after {timeout:.0f} s: stopped")
        finally:
            for p in ctx.processes:
                if p.is_alive():
                    p.terminate()
            for p in ctx.processes:
                p.join(5)
                if p.is_alive():
                    p.kill()
                    p.join(5)
        return [torch.load(os.path.join(folder, f"rank{r}.pt"), weights_only=False) for r in range(world)]


def _join(ctx: Any, folder: str, deadline: float) -> bool:
    """One wait for the ranks (≤ 1 s); a rank's SubprofError is re-raised as ours, other failures as RuntimeError."""
    import torch.multiprocessing as mp

    try:
        return ctx.join(timeout=max(0.1, min(1.0, deadline - time.monotonic())))
    except (mp.ProcessRaisedException, mp.ProcessExitedException) as exc:
        for name in sorted(os.listdir(folder)):
            if name.startswith("error"):
                with open(os.path.join(folder, name)) as f:
                    raise SubprofError(f.read()) from None
        raise RuntimeError(f"a rank failed: {exc}") from None
