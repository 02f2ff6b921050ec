"""`burst --nproc N`: a sweep of bursts, each trained data-parallel over N local processes (gloo on the CPU, NCCL
with a GPU per process), with the single-process burst's initialisation and data order.

Every process builds the same seeded model, wraps it (FSDP2 in the layout the method declares, or DDP:
`subprof.optim.sharding.wrap_model`) and reads the same window offsets; at each step process k trains on rows
k·B/N … (k+1)·B/N − 1 of the global batch of B sequences, so the optimizer sees the gradient of the very batch the
single-process burst trains on (its mean over the N equal shares). Train losses are averaged over the processes,
validation runs the same windows on every process. Process 0 appends each finished case's row to `--out` (Ctrl-C
keeps them; `--resume` skips them next time) and reports progress to the parent through a queue.
"""

from __future__ import annotations

import queue as queues
from dataclasses import dataclass, replace
from typing import Any

import torch

from subprof.results import ResultLog, case_key
from subprof.train.burst import (KEY_FIELDS, BurstCase, BurstSettings, case_row, check_cases, check_split,
                                  finished_rows, resumed_row, train_case)
from subprof.train.corpus import Corpus
from subprof.train.launch import run_ranks


@dataclass(frozen=True, slots=True)
class Replica:
    """One process of a data-parallel burst (`run_burst(replica=...)`)."""

    rank: int
    world: int
    strategy: str
    device: str

    def wrap(self, model: torch.nn.Module, method: str) -> torch.nn.Module:
        from subprof.optim.sharding import wrap_model

        return wrap_model(model, method, self.strategy, device=self.device)

    def rows(self, t: torch.Tensor) -> torch.Tensor:
        """This process's equal share of a global batch."""
        per = t.shape[0] // self.world
        return t[self.rank * per:(self.rank + 1) * per]

    def mean(self, value: float) -> float:
        """The mean of a per-process value over the processes (a NaN anywhere is a NaN everywhere)."""
        import torch.distributed as dist

        t = torch.tensor([value], dtype=torch.float64, device=self.device if self.device != "cpu" else "cpu")
        dist.all_reduce(t)
        return float(t) / self.world


def run_bursts_parallel(cases: list[BurstCase], settings: BurstSettings, corpus: Corpus, *, out: str | None = None,
                        resume: bool = False, progress: Any = None, timeout: float = 24 * 3600) -> list[dict]:
    """`run_bursts` over `settings.nproc` processes: the same rows (plus nproc and strategy), in case order."""
    check_split(cases, settings)
    check_cases(cases, settings, corpus)
    log = ResultLog(out, resume=resume) if out else None
    done = finished_rows(log)
    keys = [case_key(case_row(c, settings, corpus), KEY_FIELDS) for c in cases]
    todo = [c for c, k in zip(cases, keys) if k not in done]
    fresh: list[dict] = []
    if todo:
        import torch.multiprocessing as mp

        messages = mp.get_context("spawn").Queue()
        threads = settings.threads or 1
        try:
            fresh = run_ranks(_rank_bursts, settings.nproc, todo, replace(settings, threads=threads), corpus,
                              str(log.path) if log else None, messages, timeout=timeout, threads=threads,
                              on_wait=lambda: _drain(messages, progress))[0]
        finally:
            _drain(messages, progress)
    new, advance = iter(fresh), progress.advance if progress else None
    return [resumed_row(case, done[key], settings, advance) if key in done else next(new)
            for case, key in zip(cases, keys)]


def _drain(messages: Any, progress: Any) -> None:
    while True:
        try:
            label = messages.get_nowait()
        except queues.Empty:
            return
        if progress:
            progress.advance(label)


def _rank_bursts(rank: int, world: int, cases: list[BurstCase], settings: BurstSettings, corpus: Corpus,
                 out: str | None, messages: Any) -> list[dict]:
    """One process's share of every case; process 0 logs the rows and reports progress."""
    replica = Replica(rank=rank, world=world, strategy=settings.strategy, device=settings.device)
    log = ResultLog(out) if out and rank == 0 else None
    advance = messages.put if rank == 0 else None
    return [train_case(case, settings, corpus, advance=advance, log=log, replica=replica) for case in cases]
