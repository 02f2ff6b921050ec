"""One error type for everything a user can fix; the CLI prints it on one line and exits with code 2.

Also the one place that knows which optional extra installs which module: `pip install subprof` plans, estimates
and reports without torch; training and measuring need the `train` extra (pyproject.toml)."""

from __future__ import annotations

import importlib.util


class SubprofError(Exception):
    """A problem with the user's input or environment, with the fix in the message."""


# module → the extra of pyproject.toml's [project.optional-dependencies] that installs it
EXTRA_MODULES = {"torch": "train", "transformers": "train", "bitsandbytes": "train", "tokenizers": "train",
                 "pynvml": "train", "galore_torch": "reference"}


def extra_message(module: str, needed_by: str) -> str:
    """One line: what needs `module` and the command that installs it."""
    extra = EXTRA_MODULES[module]
    return (f"{needed_by} needs {module}, which is not installed: pip install \"subprof[{extra}]\" adds it "
            f"(in a checkout: pip install \".[{extra}]\")")


def missing_extra(exc: ModuleNotFoundError, needed_by: str) -> SubprofError | None:
    """The one-line error for an optional dependency that is not installed, naming its extra; None when the missing
    module belongs to no extra, or is installed (a submodule missing from an old torch is another problem and keeps
    its traceback)."""
    top = (exc.name or "").partition(".")[0]
    if top not in EXTRA_MODULES or importlib.util.find_spec(top) is not None:
        return None
    return SubprofError(extra_message(top, needed_by))


def require_extra(module: str, needed_by: str) -> None:
    """Raise `ModuleNotFoundError` with the one-line fix when `module` is not installed (for imports of the Python
    API, e.g. `subprof.optim`, where the CLI's guard does not run)."""
    if importlib.util.find_spec(module) is None:
        raise ModuleNotFoundError(extra_message(module, needed_by), name=module)
