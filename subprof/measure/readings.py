"""What a measurement on a real device reads besides the allocator: step times and NVML's used memory (shared by the
single-GPU `cuda` backend and the torchrun job of `distributed_cuda`)."""

from __future__ import annotations

import os

from subprof.measure.case import Case


def step_times(times: list[float], case: Case) -> dict:
    """first-step time, median of the later steps (all steps if there is one), tokens/s from the median."""
    later = sorted(times[1:] or times)
    median = later[len(later) // 2] if len(later) % 2 else sum(later[len(later) // 2 - 1:len(later) // 2 + 1]) / 2
    return {"step_times_s": [round(t, 5) for t in times], "first_step_s": round(times[0], 5),
            "median_step_s": round(median, 5), "tokens_per_s": round(case.config.tokens / median, 1)}


def nvml_used(index: int) -> dict:
    """NVML used memory of the whole device and of this process (nvidia-smi's figures), if pynvml is present."""
    try:
        import pynvml
    except ImportError:
        return {}
    try:
        pynvml.nvmlInit()
        handle = pynvml.nvmlDeviceGetHandleByIndex(index)
        out = {"device_used_bytes": int(pynvml.nvmlDeviceGetMemoryInfo(handle).used),
               "driver": str(pynvml.nvmlSystemGetDriverVersion())}
        for proc in pynvml.nvmlDeviceGetComputeRunningProcesses(handle):
            if proc.pid == os.getpid() and proc.usedGpuMemory is not None:
                out["process_used_bytes"] = int(proc.usedGpuMemory)
        pynvml.nvmlShutdown()
        return out
    except pynvml.NVMLError:
        return {}
