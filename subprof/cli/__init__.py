"""The `subprof` command line: parse, call one library function, render. No logic lives here.

Errors a user can fix are `SubprofError`s: printed on one line on stderr, exit code 2. `SUBPROF_DEBUG=1` shows the
traceback instead. Heavy modules (torch, transformers) are imported inside the commands that need them, so
`plan` and `estimate` start fast.
"""

from __future__ import annotations

import sys

import typer

from subprof.cli import bench, burst, core, probe, proj, report
from subprof.cli.ui import err_console

app = typer.Typer(
    name="subprof",
    help="Memory/throughput profiler and planner for gradient-subspace (low-rank) optimizers on LLaMA pretraining.",
    rich_markup_mode="rich",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)


@app.callback()
def _root() -> None:
    """Plan, estimate and measure memory and throughput of low-rank optimizers for LLaMA pretraining."""


# --- command registry: one line per command module ---------------------------------------------------------------
for _module in (core, proj, bench, burst, probe, report):
    _module.register(app)


def main() -> None:
    """Console entry point. Each command is wrapped by `ui.guarded` (SubprofError → one line, exit 2)."""
    try:
        app()
    except KeyboardInterrupt:
        err_console.print("interrupted; every finished result was already written")
        sys.exit(130)
