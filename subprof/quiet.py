"""Known third-party noise that does not concern a subprof user, silenced where subprof calls the library.

Each message below read as a subprof bug to users (issue 23). The filters are scoped: `known_noise_filtered()` is a
`warnings.catch_warnings()` block plus a filter on one library logger for the duration of the call, never a global
`warnings.filterwarnings` or a logger left changed. `-v` (`--verbose`) or `SUBPROF_VERBOSE=1` shows them; the
environment variable carries the choice into spawned worker processes. Pure Python, no torch.
"""

from __future__ import annotations

import logging
import os
import re
import warnings
from contextlib import contextmanager
from typing import Iterator

VERBOSE_ENV = "SUBPROF_VERBOSE"

# (message regex, category): Python warnings.
KNOWN_WARNINGS = (
    # torch/distributed/_tools/mod_tracker.py, under MemTracker on every CPU burst: transformers' LLaMA re-enters a
    # module within one forward (the rotary embedding), which ModTracker flags; the traced peak does not depend on
    # its module hierarchy.
    (r"The module hierarchy tracking maybe be messed up", UserWarning),
)
# (logger name, message regex): log records, emitted through the library's own logger.
KNOWN_LOG_RECORDS = (
    # bitsandbytes/backends/cpu/ops.py at import on CPUs with AVX512-BF16: fetching an optional 4-bit kernel from the
    # Hugging Face Hub fails its publisher check ("… trust_remote_code …"); subprof uses no 4-bit kernel.
    ("bitsandbytes.backends.cpu.ops", r"kernels-community|trust_remote_code"),
)


def verbose() -> bool:
    """Whether known noise is shown: `-v` on a command, or SUBPROF_VERBOSE=1."""
    return os.environ.get(VERBOSE_ENV, "") not in ("", "0")


def show_known_noise(on: bool) -> None:
    """`-v`: show the filtered messages, here and in the worker processes this one starts."""
    if on:
        os.environ[VERBOSE_ENV] = "1"


class _Drop(logging.Filter):
    def __init__(self, pattern: str) -> None:
        super().__init__()
        self.pattern = re.compile(pattern)

    def filter(self, record: logging.LogRecord) -> bool:
        return not self.pattern.search(record.getMessage())


@contextmanager
def known_noise_filtered() -> Iterator[None]:
    """Run a library call with the known messages above filtered (all of them shown under `verbose()`)."""
    if verbose():
        yield
        return
    filters = [(logging.getLogger(name), _Drop(pattern)) for name, pattern in KNOWN_LOG_RECORDS]
    with warnings.catch_warnings():
        for message, category in KNOWN_WARNINGS:
            warnings.filterwarnings("ignore", message=message, category=category)
        for logger, drop in filters:
            logger.addFilter(drop)
        try:
            yield
        finally:
            for logger, drop in filters:
                logger.removeFilter(drop)
