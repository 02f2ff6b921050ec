"""The method registry: name → `MethodSpec`. Adding a method = one file (its spec and rule) and one line below.

Importing this package imports no torch: each method file holds its pure-data declaration and its torch rule, whose
`torch` is imported on first use (`subprof.methods.lazy`), so `plan` and `estimate` start fast.
"""

from __future__ import annotations

import difflib

from subprof.errors import SubprofError
from subprof.methods import adamw, apollo, fira, galore, grass, ori, osd, subtrack, sumo
from subprof.methods.spec import MethodSpec

REGISTRY: dict[str, MethodSpec] = {}
# aliases a user may type: name → (method, forced state_bits)
ALIASES: dict[str, tuple[str, int | None]] = {
    "adamw8bit": ("adamw", 8),
    "adamw-8bit": ("adamw", 8),
    "8bit-adamw": ("adamw", 8),
    "galore8bit": ("galore", 8),
}


def register(spec: MethodSpec) -> MethodSpec:
    """Add a method (its name must be new); returns the spec."""
    if spec.name in REGISTRY or spec.name in ALIASES:
        raise ValueError(f"method {spec.name!r} is already registered")
    REGISTRY[spec.name] = spec
    return spec


def unregister(name: str) -> None:
    """Remove a registered method (tests that register a toy method clean up with this)."""
    REGISTRY.pop(name, None)


for _spec in (adamw.SPEC, galore.SPEC, osd.SPEC, ori.SPEC, grass.GRASSWALK, grass.GRASSJUMP, subtrack.SPEC,
              sumo.SPEC, apollo.SPEC, apollo.MINI, fira.SPEC):
    register(_spec)


def get_method(name: str) -> MethodSpec:
    key = name.strip().lower()
    if key in ALIASES:
        key = ALIASES[key][0]
    if key not in REGISTRY:
        close = difflib.get_close_matches(key, list(REGISTRY) + list(ALIASES), n=3, cutoff=0.4)
        hint = f"did you mean {', '.join(close)}?" if close else f"known: {', '.join(REGISTRY)}"
        raise SubprofError(f"unknown method {name!r}; {hint}")
    return REGISTRY[key]


def forced_state_bits(name: str) -> int | None:
    """The state precision an alias implies (`adamw8bit` → 8), else None."""
    return ALIASES.get(name.strip().lower(), (None, None))[1]


def parse_methods(text: str) -> list[tuple[MethodSpec, int | None]]:
    """`--methods galore,ori,adamw8bit` → [(spec, forced_state_bits | None), …]; `all` for every method."""
    if text.strip().lower() == "all":
        return [(spec, None) for spec in REGISTRY.values()]
    out = [(get_method(part), forced_state_bits(part)) for part in text.split(",") if part.strip()]
    if not out:
        raise SubprofError("--methods is empty; give e.g. galore,ori or all")
    return out
