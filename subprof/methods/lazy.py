"""`torch`, imported on first use. Method files hold both their pure-data declaration and their torch rule; this
keeps `import subprof.methods` (read by `plan` and `estimate`, which must answer in < 0.5 s) free of torch."""

from __future__ import annotations

import importlib
from typing import Any


class _LazyModule:
    def __init__(self, name: str) -> None:
        self._name = name
        self._module = None

    def __getattr__(self, attr: str) -> Any:
        if self._module is None:
            self._module = importlib.import_module(self._name)
        return getattr(self._module, attr)


torch: Any = _LazyModule("torch")
