"""The `subprof` command line: parse, call one library function, render. No logic lives here.

Errors a user can fix are `SubprofError`s: printed on one line on stderr, exit code 2. `SUBPROF_DEBUG=1` shows the
traceback instead. Heavy modules (torch, transformers) are imported inside the commands that need them, so
`plan` and `estimate` start fast. For the same reason the command modules keep their annotations as objects (no
`from __future__ import annotations`): typer reads every command's signature at each start, and string annotations
it compiled and evaluated twice each (~15 ms).
"""

from __future__ import annotations

import gc
import re
import sys
from typing import Any

import typer
from typer.core import TyperGroup

from subprof import __version__
from subprof.cli import bench, burst, calibrate, core, probe, proj, report
from subprof.cli.ui import err_console

FLAG_VALUES = {"true", "false", "yes", "no", "on", "off", "1", "0"}


class OneLineErrors(TyperGroup):
    """Usage errors (a bad value, an unknown or missing option) on one line with exit code 2, like every other error,
    instead of click's boxed usage panel. `subprof` alone still prints the help."""

    def main(self, args: Any = None, prog_name: Any = None, complete_var: Any = None, standalone_mode: bool = True,
             **extra: Any) -> Any:
        argv = bare_checkpointing(list(sys.argv[1:] if args is None else args))
        try:
            code = super().main(args=argv, prog_name=prog_name, complete_var=complete_var, standalone_mode=False,
                                **extra)
        except typer.TyperException as exc:
            if not argv:  # no command: the help (click raises it as an error to get exit code 2)
                exc.show()
            else:
                err_console.print(f"error: {usage_message(exc, argv)}", markup=False, highlight=False,
                                  soft_wrap=True)
            code = getattr(exc, "exit_code", 2)
        code = code if isinstance(code, int) else 0
        if standalone_mode:
            sys.exit(code)
        return code


def bare_checkpointing(argv: list[str]) -> list[str]:
    """`--checkpointing` without a mode (the flag it was before the modes) reads as `--checkpointing full`."""
    out = []
    for i, arg in enumerate(argv):
        out.append(arg)
        if arg == "--checkpointing" and (i + 1 == len(argv) or argv[i + 1].startswith("-")):
            out.append("full")
    return out


def usage_message(exc: Any, argv: list[str]) -> str:
    """click's message, with the command it concerns and a hint for a value given to an on/off flag."""
    message = exc.format_message().replace("\n", " ")
    ctx = getattr(exc, "ctx", None)
    if ctx is not None and ctx.command_path:
        message = f"{ctx.command_path.removeprefix(ctx.find_root().info_name or '').strip() or 'subprof'}: {message}"
    extra = re.search(r"unexpected extra argument\S* \((\S+?)\)", message)
    if extra and extra.group(1).lower() in FLAG_VALUES:
        flag = next((a for a, b in zip(argv, argv[1:]) if b == extra.group(1) and a.startswith("--")), None)
        if flag:
            message += f" — {flag} is an on/off flag: write {flag} to turn it on, leave it out to keep it off"
    return message


def _version(value: bool) -> None:
    if value:
        typer.echo(f"subprof {__version__}")
        raise typer.Exit(0)


app = typer.Typer(
    cls=OneLineErrors,
    name="subprof",
    help="Memory/throughput profiler and planner for gradient-subspace (low-rank) optimizers on LLaMA pretraining.",
    rich_markup_mode="rich",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)


@app.callback()
def _root(version: bool = typer.Option(False, "--version", help="Print the version and exit.", callback=_version,
                                       is_eager=True)) -> None:
    """Plan, estimate and measure memory and throughput of low-rank optimizers for LLaMA pretraining."""


# --- command registry: one line per command module ---------------------------------------------------------------
for _module in (core, proj, bench, burst, probe, report, calibrate):
    _module.register(app)


def main() -> None:
    """Console entry point. Each command is wrapped by `ui.guarded` (SubprofError → one line, exit 2); usage errors
    are one line too (`OneLineErrors`); Ctrl-C exits with 130 (commands that write rows say what they kept).

    The objects that exist by now (modules, classes, the registries) and those the command leaves (caches) live
    until the process exits, so both are frozen out of the garbage collector (`gc.freeze`): its full collections
    would otherwise walk them again — one during `plan`'s search and those at interpreter exit took about 25 and 50
    ms of `plan`'s half second. New objects are collected as usual."""
    gc.freeze()
    try:
        app()
    finally:
        gc.freeze()
