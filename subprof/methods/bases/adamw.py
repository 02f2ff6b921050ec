"""AdamW as a base (Loshchilov & Hutter 2019): two moments of the tensor it updates, m and v, at `state_bits` (8:
bitsandbytes' blockwise format). The update itself is the optimizer's built-in Adam (`SubspaceAdamW`,
`ProjectionRule.low_rank_update`): GaLoreAdamW's arithmetic, bit for bit; this file only declares its state.
Its learning rate is each method's own published one (`MethodSpec.default_lr`)."""

from subprof.methods.bases.declaration import BaseSpec
from subprof.methods.spec import Dtype, Role, TensorSpec


def moments(shape, axes) -> tuple[TensorSpec, ...]:
    return (TensorSpec(name="exp_avg", shape=shape, dtype=Dtype.STATE, role=Role.MOMENT, axes=axes),
            TensorSpec(name="exp_avg_sq", shape=shape, dtype=Dtype.STATE, role=Role.MOMENT, axes=axes))


SPEC = BaseSpec(
    name="adamw",
    title="AdamW",
    paper="Loshchilov & Hutter 2019, arXiv 1711.05101",
    moments=moments,
    default_lr=1e-3,
    lr_source="each method's own published lr (MethodSpec.default_lr)",
    moment_decay=0.999,  # β₂ of GaLoreAdamW and of our optimizer (subprof.optim.subspace)
)
