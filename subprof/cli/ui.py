"""Shared pieces of the command line: consoles, JSON output, the progress bar, list parsing and the error guard.
Nothing here imports torch."""

from __future__ import annotations

import json
import os
import sys
from contextlib import contextmanager
from typing import Any, Iterator

import typer
from rich.console import Console

from subprof.errors import SubprofError, missing_extra

console = Console(stderr=False, highlight=False, soft_wrap=False)
if not console.is_terminal and not os.environ.get("COLUMNS"):  # piped or captured: 100 columns, not rich's 80
    console = Console(stderr=False, highlight=False, soft_wrap=False, width=100)
err_console = Console(stderr=True, highlight=False)

def print_json(obj: Any) -> None:
    """JSON on stdout, nothing else (tables and progress go to the terminal, never into JSON output)."""
    sys.stdout.write(json.dumps(obj, indent=2, default=str) + "\n")
    sys.stdout.flush()


def output_format(fmt: Any, json_out: bool) -> str:
    """The format a tabular command prints (`options.FormatOpt`): --format's value, or json for the --json alias,
    else table; --json with another --format is a one-line error."""
    from subprof.cli.options import Format

    if fmt is None:
        return "json" if json_out else "table"
    name = getattr(fmt, "value", fmt)
    if name not in {f.value for f in Format}:
        raise SubprofError(f"--format {name!r} is not one of {', '.join(f.value for f in Format)}")
    if json_out and name != "json":
        raise SubprofError(f"--json means --format json, and --format {name} was given too: give one of them")
    return name


def _cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def _numeric(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def print_rows(rows: list[dict], columns: list[str] | tuple[str, ...], fmt: str) -> None:
    """Rows (dicts; a missing key or None is an empty cell, booleans true/false) as `fmt` on stdout: csv (Python's
    csv module, a header line first) or markdown (a GitHub table; columns of numbers right-aligned)."""
    cells = [[_cell(r.get(c)) for c in columns] for r in rows]
    if fmt == "csv":
        import csv

        writer = csv.writer(sys.stdout, lineterminator="\n")
        writer.writerow(columns)
        writer.writerows(cells)
    elif fmt == "markdown":
        def line(items: Any) -> str:
            return "| " + " | ".join(str(i).replace("|", "\\|").replace("\n", " ") for i in items) + " |"

        right = ([any(col) and all(_numeric(v) for v in col if v) for col in zip(*cells)] if cells else
                 [False] * len(columns))
        out = [line(columns), "|" + "|".join("---:" if r else "---" for r in right) + "|"]
        out += [line(row) for row in cells]
        sys.stdout.write("\n".join(out) + "\n")
    else:
        raise ValueError(f"print_rows: {fmt!r} is neither csv nor markdown")
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


def typed_options(ctx: Any, *names: str) -> list[str]:
    """The flags among parameters `names` that the user gave (on the command line or through the environment), as
    click spells them (`burst_steps` → `--burst-steps`): what a command refuses when it does not apply."""
    flags = {p.name: p.opts[0] for p in ctx.command.params}
    sources = {n: getattr(ctx.get_parameter_source(n), "name", None) for n in names}  # click's ParameterSource
    return [flags[n] for n in names if sources[n] in ("COMMANDLINE", "ENVIRONMENT")]


def refuse_unless(ctx: Any, applies: bool, names: tuple[str, ...], why: str) -> None:
    """One line, naming the first such flag, when an option the user gave does not apply to this request (rather
    than ignoring it): `why` says what it needs."""
    typed = typed_options(ctx, *names)
    if typed and not applies:
        raise SubprofError(f"{typed[0]} {why}")


def count_rows(path: Any) -> int:
    """Complete lines (rows) in a JSONL file; 0 when it does not exist."""
    from pathlib import Path

    try:
        with open(Path(path), "rb") as f:
            return sum(1 for line in f if line.endswith(b"\n"))
    except OSError:
        return 0


def interrupted(out: Any, kept: int, *, noun: str = "case", rerun: str = "the rest") -> None:
    """Ctrl-C: say what was actually kept in `out` — the `kept` rows this run appended, or that nothing was written
    (and whether `out` exists at all) — and exit with 130."""
    from pathlib import Path

    if kept > 0:
        line = (f"interrupted: {kept} finished {noun}{'s' if kept != 1 else ''} kept in {out}; rerun the same command "
                f"with --resume to run only {rerun}")
    elif Path(out).exists():
        line = f"interrupted before any {noun} finished: nothing was added to {out}"
    else:
        line = f"interrupted before any {noun} finished: nothing was written ({out} was not created)"
    err_console.print(line, markup=False, highlight=False, soft_wrap=True)
    raise typer.Exit(130)


def _command_words(fn: Any, params: dict[str, Any]) -> str:
    """What the user ran, for a missing-extra line: "subprof bench", "subprof plan --burst"."""
    return f"subprof {fn.__name__.replace('_', '-')}" + (" --burst" if params.get("burst") else "")


def guarded(fn: Any) -> Any:
    """Wrap a command so a `SubprofError` becomes one line on stderr and exit code 2 (also under CliRunner), and so
    does a missing optional dependency (torch and the rest of the `train` extra: `errors.missing_extra` names the
    extra to install). `SUBPROF_DEBUG=1` re-raises for the traceback."""
    import functools
    import os

    from rich.markup import escape

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except (SubprofError, ModuleNotFoundError) as exc:
            error = exc if isinstance(exc, SubprofError) else missing_extra(exc, _command_words(fn, kwargs))
            if error is None or os.environ.get("SUBPROF_DEBUG"):
                raise
            err_console.print(f"[bold red]error:[/] {escape(str(error))}", markup=True, highlight=False,
                              soft_wrap=True)
            raise typer.Exit(2) from None

    return wrapper
