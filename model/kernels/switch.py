"""The on/off switch of an optional fast kernel (Triton, on CUDA).

A kernel runs unless its environment variable is "0", its module found no Triton, or it has
failed once: at its first failure it is off for the rest of the process, with a warning, and
its callers run their reference path, which computes the same numbers. (The per-instance
analogue for compiled and graphed callables is `dub.model.kernels.graphs.FallbackOnError`.)

A switch may also carry a self-check: before a kernel's first use on a device and dtype it runs
on a small problem next to its reference path, and a disagreement switches it off like a
failure. A kernel that builds but computes wrong numbers on some GPU, Triton or dtype (the CPU
tests cannot run bf16 `tl.dot`, see tests/test_synchformer_triton.py) would otherwise
corrupt every output silently; the check costs one small launch per process.
"""

from __future__ import annotations

import contextlib
import importlib
import os
import warnings
from collections.abc import Callable, Iterator

import torch

from dub.errors import short_error

# (device, dtype) -> None when the kernel agrees with its reference, else what differs
SelfCheck = Callable[[torch.device, torch.dtype], "str | None"]


class KernelSwitch:
    def __init__(self, what: str, env_var: str, module: str, instead: str, self_check: SelfCheck | None = None) -> None:
        self.what, self.env_var, self.module, self.instead = what, env_var, module, instead
        self.self_check = self_check
        self.error: str | None = None
        self._has_triton: bool | None = None  # the module is imported once, on first use
        self._checked: set[tuple[str, torch.dtype]] = set()

    def usable(self) -> bool:
        """Read at every call (cheap), so a benchmark can switch the kernel off for one call."""
        if self.error is not None or os.environ.get(self.env_var, "1") == "0":
            return False
        if self._has_triton is None:
            self._has_triton = importlib.import_module(self.module).triton is not None
        return self._has_triton

    def usable_for(self, x: torch.Tensor) -> bool:
        """`usable()`, and the self-check passed for x's device and dtype (run here the first time;
        not while a CUDA graph is being captured or torch.compile traces, which cannot run it:
        the next eager call does)."""
        if not self.usable():
            return False
        key = (str(x.device), x.dtype)
        if self.self_check is None or key in self._checked:
            return True
        if torch.compiler.is_compiling() or (x.is_cuda and torch.cuda.is_current_stream_capturing()):
            return True
        self._checked.add(key)
        try:
            # autocast off: the caller's bf16 autocast would otherwise lower the float32 reference
            with torch.no_grad(), torch.autocast(x.device.type, enabled=False):
                wrong = self.self_check(x.device, x.dtype)
        except Exception as exc:  # noqa: BLE001 - a kernel that fails to build must not fail a run
            self.disable(exc)
            return False
        if wrong is not None:
            self.error = f"its self-check on {key[0]} ({str(x.dtype).removeprefix('torch.')}) disagreed: {wrong}"[:300]
            warnings.warn(f"{self.what}: {self.error}; using {self.instead} instead", RuntimeWarning, stacklevel=2)
            return False
        return True

    def disable(self, exc: BaseException) -> None:
        self.error = short_error(exc)
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


def peak_relative_error(got: torch.Tensor, reference: torch.Tensor) -> float:
    """max |got - reference| / max |reference|, computed in float64: a kernel's error relative to
    the reference's peak (what the self-checks and the kernel benchmarks report)."""
    return ((got.double() - reference.double()).abs().max() / reference.double().abs().max().clamp_min(1e-30)).item()


def self_check_verdict(got: torch.Tensor, reference: torch.Tensor, tolerance: float) -> str | None:
    """None when `peak_relative_error` is within `tolerance`, else what a failed self-check says."""
    error = peak_relative_error(got, reference)
    return None if error <= tolerance else f"max error {error:.2e} of the reference's peak (tolerance {tolerance:.0e})"


def self_check_tolerance(dtype: torch.dtype) -> float:
    """Peak-relative tolerance of a float kernel against its reference: bf16/fp16 keep 8/11
    significant bits and a kernel sums in another order than its reference; float32 kernels
    here compute in float32 with IEEE dots."""
    return 1e-4 if dtype == torch.float32 else 3e-2
