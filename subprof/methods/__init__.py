"""The method registry: name → `MethodSpec` (pure data). Adding a method = one file and one line here."""

from __future__ import annotations

import difflib

from subprof.errors import SubprofError
from subprof.methods import adamw, galore, grass, osd, ori, subtrack, sumo
from subprof.methods.base import MethodSpec

REGISTRY: dict[str, MethodSpec] = {
    spec.name: spec
    for spec in (adamw.SPEC, galore.SPEC, osd.SPEC, ori.SPEC, grass.GRASSWALK, grass.GRASSJUMP, subtrack.SPEC,
                 sumo.SPEC)
}
# aliases a user may type: name → (method, forced state_bits)
ALIASES: dict[str, tuple[str, int | None]] = {
    "adamw8bit": ("adamw", 8),
    "adamw-8bit": ("adamw", 8),
    "8bit-adamw": ("adamw", 8),
    "galore8bit": ("galore", 8),
}


def get_method(name: str) -> MethodSpec:
    key = name.strip().lower()
    if key in ALIASES:
        key = ALIASES[key][0]
    if key not in REGISTRY:
        close = difflib.get_close_matches(key, list(REGISTRY) + list(ALIASES), n=3, cutoff=0.4)
        hint = f"did you mean {', '.join(close)}?" if close else f"known: {', '.join(REGISTRY)}"
        raise SubprofError(f"unknown method {name!r}; {hint}")
    return REGISTRY[key]


def parse_methods(text: str) -> list[tuple[MethodSpec, int | None]]:
    """`--methods galore,ori,adamw8bit` → [(spec, forced_state_bits | None), …]; `all` for every method."""
    if text.strip().lower() == "all":
        return [(spec, None) for spec in REGISTRY.values()]
    out = []
    for part in text.split(","):
        if not part.strip():
            continue
        key = part.strip().lower()
        out.append((get_method(key), ALIASES[key][1] if key in ALIASES else None))
    if not out:
        raise SubprofError("--methods is empty; give e.g. galore,ori or all")
    return out
