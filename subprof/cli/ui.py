"""Shared pieces of the command line: consoles, JSON output, the progress bar, list parsing and the error guard.
Nothing here imports torch."""

from __future__ import annotations

import json
import sys
from contextlib import contextmanager
from typing import Any, Iterator

import typer
from rich.console import Console

from subprof.errors import SubprofError

console = Console(stderr=False, highlight=False, soft_wrap=False)
if not console.is_terminal:  # piped or captured output: don't squeeze tables into 80 columns
    console = Console(stderr=False, highlight=False, soft_wrap=False, width=140)
err_console = Console(stderr=True, highlight=False)

def print_json(obj: Any) -> None:
    """JSON on stdout, nothing else (tables and progress go to the terminal, never into JSON output)."""
    sys.stdout.write(json.dumps(obj, indent=2, default=str) + "\n")
    sys.stdout.flush()


def parse_int_list(text: str, what: str) -> list[int]:
    """"128,512" → [128, 512]; a bad item is a one-line error naming it."""
    out = []
    for part in text.split(","):
        part = part.strip()
        if not part:
            continue
        try:
            out.append(int(part))
        except ValueError:
            raise SubprofError(f"{what}: {part!r} is not an integer") from None
    if not out:
        raise SubprofError(f"{what} is empty")
    return out


def parse_str_list(text: str) -> list[str]:
    return [p.strip() for p in text.split(",") if p.strip()]


@contextmanager
def progress_bar(total: int, description: str, *, quiet: bool = False) -> Iterator[Any]:
    """A rich progress bar on stderr (so `--json` stdout stays clean); yields an object with `advance(label)`."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    progress = Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                        TimeElapsedColumn(), TextColumn("{task.fields[label]}"), console=err_console,
                        transient=False, disable=quiet)

    class _Handle:
        def __init__(self) -> None:
            self.task = progress.add_task(description, total=total, label="")

        def label(self, text: str) -> None:
            progress.update(self.task, label=text)

        def advance(self, text: str = "") -> None:
            progress.update(self.task, advance=1, label=text)

    with progress:
        yield _Handle()


def guarded(fn: Any) -> Any:
    """Wrap a command so a `SubprofError` becomes one line on stderr and exit code 2 (also under CliRunner).
    `SUBPROF_DEBUG=1` re-raises for the traceback."""
    import functools
    import os

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except SubprofError as exc:
            if os.environ.get("SUBPROF_DEBUG"):
                raise
            err_console.print(f"[bold red]error:[/] {exc}", markup=True, highlight=False, soft_wrap=True)
            raise typer.Exit(2) from None

    return wrapper
