"""The device probe of `subprof calibrate`, in a fresh process: `python -m subprof.measure.device '<json>'` prints
one `SUBPROF_ROW <json>` line (kind "device").

What it measures on the GPU, each with a fixed recipe:
- CUDA context: this process's NVML "used" memory right after CUDA is initialised, nothing allocated by torch
  (nvidia-smi's per-process figure; torch's reserved memory is 0 then, so the gap is the context);
- cuBLAS workspace: what `torch.cuda.memory_allocated()` gains from the first bf16 matmul (torch routes cuBLAS
  workspaces through its allocator);
- dense bf16 matmul rate: n×n @ n×n (n = 8192, 4096 on cards under 32 GiB), median of 10 after warm-up, 2n³ / t;
- SVD rate and fp32 GEMM rate on the 1b weight shape 2048×5461 at rank 128 — the shapes and FLOP counts of the H100
  figures the throughput model otherwise scales (`subprof.plan.throughput`): svd_flops / t(torch.linalg.svd on the
  fp32 gradient), two_gemm_flops / t(G(GᵀP)).
Times come from CUDA events around synchronised calls.
"""

from __future__ import annotations

import json
import os
import statistics
import sys

from subprof.results import now_iso

ROW_MARK = "SUBPROF_ROW "


def _nvml_process_used(index: int) -> tuple[int | None, str | None]:
    """(this process's NVML used bytes, driver version), or Nones where NVML cannot say."""
    import pynvml

    try:
        pynvml.nvmlInit()
        handle = pynvml.nvmlDeviceGetHandleByIndex(index)
        driver = str(pynvml.nvmlSystemGetDriverVersion())
        used = next((int(p.usedGpuMemory) for p in pynvml.nvmlDeviceGetComputeRunningProcesses(handle)
                     if p.pid == os.getpid() and p.usedGpuMemory is not None), None)
        pynvml.nvmlShutdown()
        return used, driver
    except pynvml.NVMLError:
        return None, None


def _median_seconds(fn, repeats: int = 10, warmup: int = 2) -> float:
    from subprof.measure.timing import time_call

    return statistics.median(time_call(fn, repeats=repeats, warmup=warmup, device="cuda"))


def _matmul(n: int) -> tuple[int, float]:
    """(cuBLAS workspace bytes the first bf16 matmul adds to torch's allocator, dense bf16 FLOP/s)."""
    import torch

    a = torch.randn(n, n, device="cuda", dtype=torch.bfloat16)
    b = torch.randn(n, n, device="cuda", dtype=torch.bfloat16)
    before = torch.cuda.memory_allocated()
    c = a @ b
    torch.cuda.synchronize()
    workspace = torch.cuda.memory_allocated() - before - c.numel() * c.element_size()
    return int(max(workspace, 0)), 2.0 * n**3 / _median_seconds(lambda: a @ b)


def probe() -> dict:
    """The device row (see the module docstring)."""
    import torch

    from subprof.methods.spec import svd_flops, two_gemm_flops

    if not torch.cuda.is_available():
        return {"kind": "device", "status": "error", "error": "no CUDA GPU is visible", "date": now_iso()}
    torch.cuda.init()
    torch.empty(0, device="cuda")
    torch.cuda.synchronize()
    context, driver = _nvml_process_used(torch.cuda.current_device())
    reserved0 = torch.cuda.memory_reserved()
    props = torch.cuda.get_device_properties(0)
    n = 8192 if props.total_memory >= 32 * 2**30 else 4096
    workspace, matmul = _matmul(n)
    m, k, r = 2048, 5461, 128
    g = torch.randn(m, k, device="cuda", dtype=torch.float32)
    p = torch.linalg.qr(torch.randn(m, r, device="cuda"))[0]
    svd = svd_flops(m, k, r) / _median_seconds(lambda: torch.linalg.svd(g, full_matrices=False), repeats=5)
    gemm = two_gemm_flops(m, k, r) / _median_seconds(lambda: g @ (g.T @ p))
    return {"kind": "device", "status": "ok", "device_name": torch.cuda.get_device_name(0),
            "total_memory_bytes": int(props.total_memory), "driver": driver, "cuda": torch.version.cuda,
            "torch": torch.__version__, "cuda_context_bytes": None if context is None else context - reserved0,
            "cublas_workspace_bytes": workspace, "matmul_bf16_flops_per_s": matmul,
            "svd_flops_per_s": svd, "gemm_fp32_flops_per_s": gemm, "matmul_n": n, "date": now_iso()}


def main() -> int:
    try:
        row = probe()
    except Exception as exc:  # the parent always gets a row
        row = {"kind": "device", "status": "error", "error": f"{type(exc).__name__}: {exc}"[:500], "date": now_iso()}
    sys.stdout.write(ROW_MARK + json.dumps(row, default=str) + "\n")
    sys.stdout.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main())
