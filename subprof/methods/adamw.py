"""AdamW (Loshchilov & Hutter 2019): the full-rank baseline, torch.optim.AdamW as CUDA users get it by default.
With option base "lion" or "adafactor" it is full-rank Lion or Adafactor (`subprof.methods.bases`; the OSD paper's
Table 2 full-rank rows), stepped by `SubspaceAdamW`'s plain path.

State per weight: exp_avg and exp_avg_sq of the full weight's shape (state_bits 8: bitsandbytes-style blockwise
8-bit). On CUDA torch picks the `foreach` implementation, whose `_foreach_sqrt(exp_avg_sqs)` holds one
parameter-sized temporary for the whole group during the step (counted by the memory model as optimizer
temporaries, not per weight).
"""

from subprof.methods.bases import BASES, base_moments
from subprof.methods.spec import MethodSpec, StateLayout, full_shape

SPEC = MethodSpec(
    name="adamw",
    title="AdamW",
    summary="full-rank AdamW (torch, foreach on CUDA); --state-bits 8 is 8-bit AdamW",
    project=False,
    layout=StateLayout(states=(base_moments(full_shape),)),
    bases=tuple(BASES),
    default_lr=1e-3,
    lr_source="the full-rank AdamW baseline of the GaLore paper's 60m–350m runs (App. C, as quoted in our earlier "
              "notes; the GaLore repository ships no AdamW script)",
    paper="Loshchilov & Hutter 2019, arXiv 1711.05101",
)
