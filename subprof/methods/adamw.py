"""AdamW (Loshchilov & Hutter 2019): the full-rank baseline, torch.optim.AdamW as CUDA users get it by default.

State per weight: exp_avg and exp_avg_sq of the full weight's shape (state_bits 8: bitsandbytes-style blockwise
8-bit). On CUDA torch picks the `foreach` implementation, whose `_foreach_sqrt(exp_avg_sqs)` holds one
parameter-sized temporary for the whole group during the step (counted by the memory model as optimizer
temporaries, not per weight).
"""

from subprof.methods.spec import Dtype, MethodSpec, Role, StateLayout, TensorSpec, full_shape

SPEC = MethodSpec(
    name="adamw",
    title="AdamW",
    summary="full-rank AdamW (torch, foreach on CUDA); --state-bits 8 is 8-bit AdamW",
    project=False,
    layout=StateLayout(states=(
        TensorSpec(name="exp_avg", shape=full_shape, dtype=Dtype.STATE, role=Role.MOMENT),
        TensorSpec(name="exp_avg_sq", shape=full_shape, dtype=Dtype.STATE, role=Role.MOMENT),
    )),
    default_lr=1e-3,
    lr_source="the full-rank AdamW baseline of the GaLore paper's 60m–350m runs (App. C, as quoted in our earlier "
              "notes; the GaLore repository ships no AdamW script)",
    paper="Loshchilov & Hutter 2019, arXiv 1711.05101",
)
