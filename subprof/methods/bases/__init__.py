"""Base optimizers: the update a method runs on its projected gradient R (and every optimizer on the tensors it does
not project). Registry name → `BaseSpec`; adding a base = one file here and one line below.

A method's declaration names *where* its base moments live with the placeholder `base_moments(shape)` (R's shape for
projected weights, `moment_shape`; the whole weight for a full-rank method, `full_shape`); `expand` replaces it by
the base's own tensors, so the memory model, the per-rank model, the trace and the optimizer read one declaration.
The base travels as the method option "base" (default "adamw": the declarations and bits of every method before
bases existed, unchanged). Pure data here; each base's torch update (`BaseSpec.update`) imports torch on first use.

Which methods take which bases is the method's own declaration (`MethodSpec.bases`): GaLore, OSD and Ori run any
base on R; methods whose step is not "a base on R" (APOLLO's scaling, SUMO's orthogonalised momentum, Fira's and
SubTrack++'s Adam-norm recovery and moment rotation) keep AdamW.
"""

from __future__ import annotations

from typing import Any

from subprof.errors import SubprofError
from subprof.methods.bases.declaration import BaseSpec  # noqa: F401  (re-exported)
from subprof.methods.spec import BASES, base_moments, base_step_workspace, expand  # noqa: F401  (re-exported)

DEFAULT_BASE = "adamw"


def _register() -> None:
    from subprof.methods.bases import adafactor, adamw, lion

    for spec in (adamw.SPEC, lion.SPEC, adafactor.SPEC):  # adding a base: its file and its name here
        BASES[spec.name] = spec


def get_base(name: str | None) -> BaseSpec:
    """The base of this name (None: AdamW); an unknown name is one line naming the known ones."""
    key = (name or DEFAULT_BASE).strip().lower()
    if key not in BASES:
        raise SubprofError(f"unknown base optimizer {name!r}; known: {', '.join(BASES)}")
    return BASES[key]


def default_lr(method_lr: float, base: str | None) -> float:
    """The learning rate to use when none is given: the method's published one under AdamW, else the base's."""
    return method_lr if get_base(base).name == DEFAULT_BASE else get_base(base).default_lr


def update_for(base: str | None) -> Any:
    """The torch update object of a base (one instance per base; stateless apart from per-call scratch), None for
    AdamW."""
    spec = get_base(base)
    if spec.update is None:
        return None
    if spec.name not in _UPDATES:
        _UPDATES[spec.name] = spec.update()
    return _UPDATES[spec.name]


_UPDATES: dict[str, Any] = {}
_register()
