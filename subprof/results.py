"""Result rows: append-only JSONL files, the row schema's shared rules, and the one error-% rule.

Every finished case is written (and flushed, fsynced) the moment it exists, so a crash, an OOM or Ctrl-C in one case
never loses the others. `--resume` reads what is there, tolerating a half-written last line, and skips the cases
already done. Byte fields are integers (`peak_allocated_bytes`, `estimated_peak_allocated_bytes`, …); statuses are
`ok`, `oom`, `timeout`, `diverged` and `error` (only errors are retried by `--resume`).
"""

from __future__ import annotations

import datetime as _dt
import json
import math
import os
from pathlib import Path
from typing import Any, Iterable

from subprof.errors import SubprofError


def read_rows(path: str | Path) -> list[dict]:
    """All complete rows of a JSONL file; a truncated or corrupt line (e.g. the last one after a kill) is skipped."""
    path = Path(path)
    if not path.exists():
        return []
    rows = []
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except OSError as exc:
        raise SubprofError(f"cannot read {str(path)!r}: {exc.strerror}") from None
    for line in text.splitlines():
        line = line.strip()
        if not line:
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(row, dict):
            rows.append(row)
    return rows


def read_result_files(paths: Iterable[str | Path], flag: str) -> list[dict]:
    """The rows of result files a user passed with `flag` (e.g. --proj); a missing file or one without rows is a
    one-line error naming the command that writes it."""
    rows: list[dict] = []
    for path in map(Path, paths):
        if not path.is_file():
            raise SubprofError(f"{flag} {str(path)!r}: no such file (write one with `subprof {flag[2:]} --out ...`)")
        found = read_rows(path)
        if not found:
            raise SubprofError(f"{flag} {str(path)!r} holds no result rows (one JSON object per line expected)")
        rows += found
    return rows


def check_writable(path: str | Path, flag: str = "--out", example: str = "results.jsonl") -> Path:
    """Fail before any work when a result file cannot be written: a folder, an unwritable file or folder. Creates
    the parent folder (as writing would); never leaves an empty file behind."""
    path = Path(path)
    if path.is_dir():
        raise SubprofError(f"{flag} {str(path)!r} is a folder; give a file name inside it, e.g. "
                           f"{str(path / example)!r}")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise SubprofError(f"{flag} {str(path)!r}: cannot create its folder: {exc.strerror or exc}") from None
    target = path if path.exists() else path.parent
    if not os.access(target, os.W_OK):
        raise SubprofError(f"{flag} {str(path)!r} is not writable (no write permission on {str(target)!r})")
    return path


class ResultLog:
    """An append-only JSONL file. `append` writes one row and makes it durable before returning. The path is
    checked at construction (`check_writable`), before any case runs."""

    def __init__(self, path: str | Path, *, resume: bool = False, flag: str = "--out") -> None:
        self.path = check_writable(path, flag)
        self.existing = read_rows(self.path) if resume else []
        if resume:
            self._repair_tail()

    def _repair_tail(self) -> None:
        """A killed writer can leave a last line without its newline: end it so the next row starts clean."""
        if self.path.exists() and self.path.stat().st_size:
            with open(self.path, "rb+") as f:
                f.seek(-1, os.SEEK_END)
                if f.read(1) != b"\n":
                    f.write(b"\n")

    def append(self, row: dict[str, Any]) -> None:
        line = json.dumps(row, default=_jsonable, sort_keys=False)
        with open(self.path, "a", encoding="utf-8") as f:
            f.write(line + "\n")
            f.flush()
            os.fsync(f.fileno())


def case_key(row: dict, fields: Iterable[str]) -> tuple:
    return tuple(_freeze(_canonical(f, row.get(f))) for f in fields)


def _canonical(name: str, value: Any) -> Any:
    """Rows written before the checkpointing modes and loss kinds: a bool reads as none/full, no loss as full."""
    if name == "checkpointing":
        from subprof.modes import parse_checkpointing

        return parse_checkpointing(value)
    if name == "loss":
        return value or "full"
    return value


def _freeze(value: Any) -> Any:
    if isinstance(value, list):
        return tuple(_freeze(v) for v in value)
    if isinstance(value, dict):
        return tuple(sorted((k, _freeze(v)) for k, v in value.items()))
    return value


def _jsonable(value: Any) -> Any:
    if hasattr(value, "item"):
        return value.item()
    if isinstance(value, (set, tuple)):
        return list(value)
    if isinstance(value, Path):
        return str(value)
    return str(value)


def now_iso() -> str:
    return _dt.datetime.now(_dt.timezone.utc).replace(microsecond=0).isoformat()


# --- the row schema's shared rules ---------------------------------------------------------------------------------

FINAL_STATUSES = ("ok", "oom", "diverged", "timeout")  # what `--resume` does not run again (errors are retried)
LEGACY_METHODS = {"galore-ref": ("galore", "galore-torch")}  # rows written before `implementation` existed


def normalize(row: dict) -> dict:
    """A row in today's schema: legacy method names become (method, implementation); rows written before
    `world_size` existed measured one process."""
    if row.get("method") in LEGACY_METHODS:
        method, impl = LEGACY_METHODS[row["method"]]
        row = {**row, "method": method, "implementation": impl}
    if "world_size" not in row:
        row = {**row, "world_size": 1, "nodes": 1, "strategy": None}
    return row


def number(row: dict, key: str) -> int | float | None:
    """`row[key]` if it is a finite number (not a bool), else None."""
    value = row.get(key)
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    return value if ok else None


def comparable_peak(row: dict) -> float | None:
    """The measured peak allocated bytes of a row, to hold against the analytic estimate: `peak_allocated_bytes`,
    else `peak_allocated_gib` · 2^30 (as the H100 reference rows store it); None without a finite one."""
    peak = number(row, "peak_allocated_bytes")
    if peak is None and number(row, "peak_allocated_gib") is not None:
        peak = number(row, "peak_allocated_gib") * 2**30
    return peak


def comparable_estimate(row: dict) -> float | None:
    """The estimate to compare with `comparable_peak`, like with like: a GPU row against the full estimate
    (`estimated_peak_allocated_bytes`); a trace or CPU row, which sees tensors only, against the model-side estimate
    — the full estimate less the CUDA runtime allocations calibrated on real GPUs (`estimated_cuda_runtime_bytes`)."""
    est = number(row, "estimated_peak_allocated_bytes")
    if est is None or row.get("backend") not in ("trace", "cpu"):
        return est
    return est - (number(row, "estimated_cuda_runtime_bytes") or 0)


def error_pct(row: dict) -> float | None:
    """(estimate − measured) / measured · 100 for an `ok` row, both as `comparable_estimate` / `comparable_peak`
    read them; None otherwise."""
    measured, est = comparable_peak(row), comparable_estimate(row)
    if not measured or est is None or row.get("status", "ok") != "ok":
        return None
    return round(100 * (est - measured) / measured, 2)
