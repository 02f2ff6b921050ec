"""The optimizer step asks the device for nothing: no `.item()`, `bool(tensor)`, `.tolist()` or `.cpu()` inside
`step()` (on a GPU each is a host-device synchronisation that stalls the launch queue).

Counted on CPU by a dispatch mode: every such read reaches the `aten._local_scalar_dense` kernel (`.item()`,
`bool()`, `float()`, `tolist()`) or copies to the host device (`aten._to_copy` / `aten.copy_` onto a cpu tensor from
another device cannot happen here, so only the first is counted). The finiteness check reads one boolean per step by
design (policy "raise"/"skip"); with `nonfinite="off"` — the policy for speed — nothing is read. SVD refreshes on CUDA
synchronise inside torch.linalg (cuSOLVER's info check), which no caller can avoid: those steps are exempt on a GPU,
not here (torch's CPU LAPACK path reads nothing through the dispatcher).
"""

from __future__ import annotations

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from subprof.methods import REGISTRY
from subprof.optim import build_optimizer

pytestmark = pytest.mark.usefixtures("one_thread")

READS = {torch.ops.aten._local_scalar_dense.default}


class CountReads(TorchDispatchMode):
    def __init__(self) -> None:
        super().__init__()
        self.reads: list[str] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func in READS:
            self.reads.append(str(func))
        return func(*args, **(kwargs or {}))


def _model() -> torch.nn.Module:
    from test_optim_training import tiny_llama

    return tiny_llama(layers=1)


def _grads(model: torch.nn.Module, seed: int) -> None:
    gen = torch.Generator().manual_seed(seed)
    for p in model.parameters():
        p.grad = torch.randn(p.shape, generator=gen) * 1e-2


@pytest.mark.parametrize("method,bits", [(m, 32) for m in sorted(REGISTRY) if m != "adamw"]
                         + [("galore", 16), ("galore", 8), ("ori", 8)])
def test_step_reads_nothing_from_the_device(method, bits):
    """Four steps with a projection refresh every second one (gap 2): refreshes and plain steps alike. (torch's
    AdamW is not ours: it reads its step counters, which it keeps on the host, so they cost no synchronisation.)"""
    model = _model()
    opt = build_optimizer(model, method, rank=8, update_gap=2, lr=1e-3, state_bits=bits, nonfinite="off")
    for step in range(4):
        _grads(model, step)
        with CountReads() as mode:
            opt.step()
        assert mode.reads == [], f"{method} step {step}: {len(mode.reads)} host reads"


def test_counter_sees_a_read():
    """The counter is not blind: a rule that branches on a tensor's value is caught."""
    with CountReads() as mode:
        x = torch.ones(3)
        if x.sum() > 0:
            pass
    assert mode.reads


@pytest.mark.parametrize("policy", ["raise", "skip"])
def test_finiteness_check_is_the_one_read(policy):
    """With the check on, a step reads exactly one value (the all-finite flag), however many tensors."""
    model = _model()
    opt = build_optimizer(model, "galore", rank=8, update_gap=2, lr=1e-3, nonfinite=policy)
    _grads(model, 0)
    with CountReads() as mode:
        opt.step()
    assert len(mode.reads) == 1


def test_layerwise_clipping_reads_nothing():
    """Per-layer updates with lagged global-norm clipping: the norm stays on the device."""
    model = _model()
    opt = build_optimizer(model, "galore", rank=8, update_gap=2, lr=1e-3, nonfinite="off", layerwise=True,
                          max_grad_norm=1.0)
    gen = torch.Generator().manual_seed(0)
    for _ in range(3):
        ids = torch.randint(0, 256, (2, 16), generator=gen)
        with CountReads() as mode:
            model(input_ids=ids, labels=ids).loss.backward()
            opt.step()
        assert mode.reads == [], f"{len(mode.reads)} host reads in forward/backward with per-layer updates"


@pytest.mark.gpu
@pytest.mark.parametrize("method", [m for m in sorted(REGISTRY) if m not in ("adamw", "sumo")])
def test_cuda_step_does_not_synchronise(method):
    """On a GPU, under `torch.cuda.set_sync_debug_mode("error")`: steps after the first (which starts every SVD-started
    method with an SVD) raise on any synchronisation. GaLore refreshes by SVD, so its gap is 200 here; GEMM-refreshed
    methods keep gap 2 so their refreshes are checked too. SUMO is left out: it orthogonalises its moment by an
    exact SVD every step (its published form), and torch.linalg.svd on CUDA checks cuSOLVER's info on the host."""
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA GPU")
    model = _model().cuda()
    opt = build_optimizer(model, method, rank=8, update_gap=200 if method == "galore" else 2, lr=1e-3,
                          nonfinite="off")
    for step in range(5):
        for p in model.parameters():
            p.grad = torch.randn_like(p) * 1e-2
        torch.cuda.synchronize()
        if step > 0:
            torch.cuda.set_sync_debug_mode("error")
        try:
            opt.step()
        finally:
            torch.cuda.set_sync_debug_mode("default")
