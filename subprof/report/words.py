"""How the report's numbers read on the page: plurals, a configuration in a few words, a duration in hours or days.
Pure formatting — no number is computed here."""

from __future__ import annotations

from subprof.config import TrainConfig


def plural(n: float, word: str, many: str | None = None) -> str:
    """`plural(1, "step")` → "1 step", `plural(3, "step")` → "3 steps": the count rounded to a whole number with
    thousands separators, and the word agreeing with what is printed (0.6 hours reads "1 hour")."""
    count = f"{n:,.0f}"
    return f"{count} {word if count == '1' else (many or word + 's')}"


def short_config(cfg: TrainConfig) -> str:
    """A configuration in the words that set it apart at a glance — method, rank and 8-bit states
    ("ori r64 · 8-bit"); the update gap, per-layer updates, checkpointing and the batch are in `describe()`."""
    head = cfg.method + (f" r{cfg.rank}" if cfg.rank else "")
    return head + (" · 8-bit" if cfg.state_bits == 8 else "")


def duration(hours: float) -> str:
    """Minutes below an hour ("25 min"), hours below two days ("55 h"), days above ("32.1 days")."""
    if hours < 1:
        return f"{hours * 60:.0f} min"
    return f"{hours:,.0f} h" if hours < 48 else f"{hours / 24:,.1f} days"


def usd(value: float) -> str:
    """Whole dollars ("$1,374"), cents below $10 ("$0.65")."""
    return f"${value:,.2f}" if value < 10 else f"${value:,.0f}"
