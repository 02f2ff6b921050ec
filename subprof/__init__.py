"""subprof: memory/throughput profiler and planner for gradient-subspace (low-rank) optimizers."""

__version__ = "0.1.0"
