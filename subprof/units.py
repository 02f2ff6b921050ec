"""Sizes in and out: parse "24GB" / "24GiB" / "80G" / "24000MiB", format bytes for tables.

Convention (as on datasheets): GB, MB, TB are decimal (10^9, 10^6, 10^12 bytes); GiB, MiB, TiB are binary
(2^30, 2^20, 2^40). A bare "G"/"M"/"T" is read as decimal, like "GB". Bytes are integers everywhere inside
subprof; units appear only here, at the edge.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from subprof.errors import SubprofError

_UNITS = {
    "": (1, "B"),
    "b": (1, "B"),
    "k": (10**3, "kB"),
    "kb": (10**3, "kB"),
    "kib": (2**10, "KiB"),
    "m": (10**6, "MB"),
    "mb": (10**6, "MB"),
    "mib": (2**20, "MiB"),
    "g": (10**9, "GB"),
    "gb": (10**9, "GB"),
    "gib": (2**30, "GiB"),
    "t": (10**12, "TB"),
    "tb": (10**12, "TB"),
    "tib": (2**40, "TiB"),
}
_SIZE_RE = re.compile(r"^\s*([+-]?\d+(?:\.\d*)?|[+-]?\.\d+)\s*([a-zA-Z]*)\s*$")


@dataclass(frozen=True, slots=True)
class Size:
    """A parsed size: integer bytes and the unit the user wrote (for saying which unit was used)."""

    bytes: int
    unit: str
    text: str


def parse_size(text: str) -> Size:
    """Parse a memory size such as "24GB", "24GiB", "80G" or "24000MiB" into bytes.

    >>> parse_size("24GB").bytes
    24000000000
    >>> parse_size("24GiB").bytes
    25769803776
    """
    match = _SIZE_RE.match(text)
    if not match:
        raise SubprofError(f"cannot read size {text!r}: write a number and a unit, e.g. 24GB, 24GiB or 24000MiB")
    number, unit = float(match.group(1)), match.group(2).lower()
    if unit not in _UNITS:
        raise SubprofError(f"unknown unit {match.group(2)!r} in {text!r}: use B, MB, GB, TB (10^n) or MiB, GiB, TiB (2^n)")
    if number <= 0:
        raise SubprofError(f"size {text!r} must be positive")
    factor, name = _UNITS[unit]
    return Size(bytes=int(round(number * factor)), unit=name, text=text.strip())


def percent_hint(value: float) -> str:
    """For a fraction option given as a percentage (`--margin 5`): "; … did you mean 0.05?", else ""."""
    if 1 <= value <= 100:
        return f"; it is a fraction, not a percentage: did you mean {value / 100:g}?"
    return ""


def gib(n_bytes: int | float) -> float:
    return n_bytes / 2**30


def fmt_gib(n_bytes: int | float, digits: int = 2) -> str:
    """Bytes as GiB with the unit named, e.g. "22.35 GiB"."""
    return f"{gib(n_bytes):.{digits}f} GiB"


def fmt_count(n: int | float) -> str:
    """Parameter counts the way papers write them: 58.1M, 1.34B, 6.74B, 13.0B."""
    if n >= 1e10:
        return f"{n / 1e9:.1f}B"
    if n >= 1e9:
        return f"{n / 1e9:.2f}B"
    if n >= 1e6:
        return f"{n / 1e6:.1f}M"
    if n >= 1e3:
        return f"{n / 1e3:.1f}k"
    return str(int(n))


def parse_count(text: str) -> int:
    """Parse a token count such as "10B", "500M", "2.5e9"."""
    match = re.match(r"^\s*(\d+(?:\.\d*)?(?:e\d+)?)\s*([kKmMbBtT]?)\s*$", text)
    if not match:
        raise SubprofError(f"cannot read count {text!r}: write e.g. 10B, 500M or 2.5e9")
    factor = {"": 1, "k": 10**3, "m": 10**6, "b": 10**9, "t": 10**12}[match.group(2).lower()]
    value = int(round(float(match.group(1)) * factor))
    if value <= 0:
        raise SubprofError(f"count {text!r} must be positive")
    return value
