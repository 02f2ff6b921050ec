"""The optimizers, as real `torch.optim.Optimizer`s: `build_optimizer` (the entry point), `SubspaceAdamW` (Adam in a
projected subspace, any method's rule), `LayerwiseOptimizer` (per-layer updates in backward hooks) and the
non-finite-gradient policy. How each method updates P lives in `subprof.methods`; how moments are stored (32/16/8
bits) in `subprof.methods.moments`."""

from subprof.errors import require_extra

require_extra("torch", "subprof.optim")  # `pip install subprof` is the planner alone; the optimizers need torch

from subprof.optim.build import build_optimizer, is_projected, split_parameters, state_tensor_bytes
from subprof.optim.layerwise import LayerwiseOptimizer
from subprof.optim.nonfinite import NonFiniteGradientError
from subprof.optim.subspace import SubspaceAdamW

__all__ = ["LayerwiseOptimizer", "NonFiniteGradientError", "SubspaceAdamW", "build_optimizer", "is_projected",
           "split_parameters", "state_tensor_bytes"]
