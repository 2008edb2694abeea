"""The on/off switch of an optional fast kernel (Triton, on CUDA).

A kernel runs unless its environment variable is "0", its module found no Triton, or it has
failed once: at its first failure it is off for the rest of the process, with a warning, and
its callers run their reference path, which computes the same numbers. (The per-instance
analogue for compiled and graphed callables is `model.fast.FallbackOnError`.)
"""

from __future__ import annotations

import contextlib
import importlib
import os
import warnings
from collections.abc import Iterator


class KernelSwitch:
    def __init__(self, what: str, env_var: str, module: str, instead: str) -> None:
        self.what, self.env_var, self.module, self.instead = what, env_var, module, instead
        self.error: str | None = None
        self._has_triton: bool | None = None  # the module is imported once, on first use

    def usable(self) -> bool:
        """Read at every call (cheap), so a benchmark can switch the kernel off for one call."""
        if self.error is not None or os.environ.get(self.env_var, "1") == "0":
            return False
        if self._has_triton is None:
            self._has_triton = importlib.import_module(self.module).triton is not None
        return self._has_triton

    def disable(self, exc: BaseException) -> None:
        self.error = f"{type(exc).__name__}: {exc}"[:300]
        warnings.warn(f"{self.what} failed, using {self.instead} instead: {self.error}", RuntimeWarning, stacklevel=3)

    def why_off(self) -> str:
        return self.error or f"{self.env_var}=0 or no triton"

    def describe(self, device: object, kernel: str, reference: str) -> str:
        """What runs on `device` (for benchmark notes and logs): `kernel` or `reference`, and why."""
        if not str(device).startswith("cuda"):
            return f"{reference} (the Triton kernel is CUDA only)"
        return kernel if self.usable() else f"{reference} (Triton kernel off: {self.why_off()})"

    @contextlib.contextmanager
    def turned(self, on: bool) -> Iterator[None]:
        """Within the block the kernel is asked for (on) or switched off through its environment
        variable (benchmarks and checks time both forms in one process)."""
        saved = os.environ.get(self.env_var)
        os.environ[self.env_var] = "1" if on else "0"
        try:
            yield
        finally:
            if saved is None:
                del os.environ[self.env_var]
            else:
                os.environ[self.env_var] = saved
