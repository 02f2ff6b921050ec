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

from dataclasses import dataclass, field
from typing import Any, Callable

from subprof.errors import SubprofError
from subprof.methods.spec import (AxesRule, CommSpec, Dtype, Role, ShapeRule, TensorSpec, full_axes, full_shape,
                                  moment_axes, moment_shape, replicated)

BASE_MOMENTS = "base_moments"
DEFAULT_BASE = "adamw"
_AXES = {moment_shape: moment_axes, full_shape: full_axes}


def base_moments(shape: ShapeRule = moment_shape, axes: AxesRule | None = None) -> TensorSpec:
    """The placeholder a method declares for its base's moments on a tensor of `shape` (`expand` fills it in)."""
    return TensorSpec(name=BASE_MOMENTS, shape=shape, dtype=Dtype.STATE, role=Role.MOMENT, axes=axes)


@dataclass(frozen=True, kw_only=True, slots=True)
class BaseSpec:
    """One base optimizer, as pure data.

    - `moments(shape, axes)`: its state tensors for a tensor of that shape rule (and axes rule: which dims follow the
      weight's sharded side), in the names `optimizer.state` uses;
    - `step_workspace(shape, axes)`: what a projected step allocates beyond the method's declared step workspace
      (which counts Adam's R-sized direction and the m×n back-projection);
    - `plain_temporary_bytes(numel, state_bits, param_bytes)`: the temporaries of one unprojected tensor's step;
    - `comms`: the collectives a projected step needs per sharded weight beyond the method's own;
    - `state_bits_supported`, the 8-bit form where one exists; `default_lr` with its source;
    - `update`: the torch class (`subprof.methods.bases.*`), None for AdamW (the optimizer's built-in Adam)."""

    name: str
    title: str
    paper: str
    moments: Callable[[ShapeRule, AxesRule], tuple[TensorSpec, ...]]
    default_lr: float
    lr_source: str
    state_bits_supported: tuple[int, ...] = (32, 16, 8)
    step_workspace: Callable[[ShapeRule, AxesRule], tuple[TensorSpec, ...]] = field(default=lambda s, a: ())
    plain_temporary_bytes: Callable[[int, int, int], int] | None = None
    comms: tuple[CommSpec, ...] = ()
    update: type | None = None


def _registry() -> dict[str, BaseSpec]:
    from subprof.methods.bases import adafactor, adamw, lion

    return {spec.name: spec for spec in (adamw.SPEC, lion.SPEC, adafactor.SPEC)}


BASES: dict[str, BaseSpec] = _registry()


def get_base(name: str | None) -> BaseSpec:
    """The base of this name (None: AdamW); an unknown name is one line naming the known ones."""
    key = (name or DEFAULT_BASE).strip().lower()
    if key not in BASES:
        raise SubprofError(f"unknown base optimizer {name!r}; known: {', '.join(BASES)}")
    return BASES[key]


def expand(states: tuple[TensorSpec, ...], base: str | None) -> tuple[TensorSpec, ...]:
    """`states` with every `base_moments` placeholder replaced by the base's tensors of that shape."""
    spec = get_base(base)
    out: list[TensorSpec] = []
    for t in states:
        if t.name == BASE_MOMENTS:
            out += spec.moments(t.shape, t.axes or _AXES.get(t.shape, replicated))
        else:
            out.append(t)
    return tuple(out)


def base_step_workspace(states: tuple[TensorSpec, ...], base: str | None) -> tuple[TensorSpec, ...]:
    """The base's extra step workspace for each placeholder among `states`."""
    spec = get_base(base)
    return tuple(w for t in states if t.name == BASE_MOMENTS for w in spec.step_workspace(t.shape,
                                                                                         t.axes or _AXES.get(t.shape, replicated)))


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
