"""Capture, compile and fall back: the generic machinery under dub's GPU fast paths.

    CudaGraphCall(fn, example_inputs)   fn captured once as a CUDA graph, replayed on new inputs
    CompiledOrEager(module)             torch.compile of a module, eager again at its first failure
    FallbackOnError(primary, fallback)  the same for any callable, keeping the reason
    in_fixed_batches(fn, x, rows)       a row-wise fn at one batch size (padded, chunked): for code
                                        specialised to one input shape

On the CPU (or with `use_graph=False`) a CudaGraphCall runs its function eagerly.
"""

from __future__ import annotations

import time
import warnings
from collections.abc import Callable, Sequence

import torch
import torch.nn as nn

from dub.errors import short_error

TensorFn = Callable[..., torch.Tensor]


def _clone_tree(out):
    if isinstance(out, torch.Tensor):
        return out.clone()
    if isinstance(out, (tuple, list)):
        return type(out)(_clone_tree(o) for o in out)
    raise TypeError(f"a captured function must return tensors (or a tuple of them), got {type(out).__name__}")


class CudaGraphCall:
    """`fn(*tensors)` captured once as a CUDA graph for fixed input shapes, replayed per call.

    Inputs are copied into static buffers; the output is cloned so later replays cannot
    overwrite what a caller holds. On the CPU, or with `use_graph=False`, `fn` runs eagerly.
    `fn` must not synchronise with the host (no `.item()`, no data-dependent shapes).
    """

    def __init__(
        self, fn: TensorFn, example_inputs: Sequence[torch.Tensor], *, use_graph: bool | None = None, warmup: int = 2
    ) -> None:
        if not example_inputs:
            raise ValueError("CudaGraphCall needs at least one example input tensor")
        self.fn = fn
        self.device = example_inputs[0].device
        self.use_graph = self.device.type == "cuda" if use_graph is None else bool(use_graph)
        if self.use_graph and self.device.type != "cuda":
            raise ValueError(f"CUDA graphs need CUDA tensors; the example inputs are on {self.device}")
        # Normal (not inference-mode) tensors: callers may copy into them in or out of inference mode.
        with torch.inference_mode(False), torch.no_grad():
            self.static_inputs = [x.detach().clone() for x in example_inputs]
        self.graph: torch.cuda.CUDAGraph | None = None
        self.static_output = None
        self.capture_s = 0.0
        if self.use_graph:
            self._capture(warmup)

    def _capture(self, warmup: int) -> None:
        start = time.perf_counter()
        with torch.inference_mode(False), torch.no_grad():
            side = torch.cuda.Stream(self.device)
            side.wait_stream(torch.cuda.current_stream(self.device))
            with torch.cuda.stream(side):
                for _ in range(max(1, warmup)):  # cuDNN/cuBLAS pick algorithms outside the graph
                    self.fn(*self.static_inputs)
            torch.cuda.current_stream(self.device).wait_stream(side)
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph):
                self.static_output = self.fn(*self.static_inputs)
        torch.cuda.synchronize(self.device)
        self.graph = graph
        self.capture_s = time.perf_counter() - start

    def __call__(self, *inputs: torch.Tensor):
        if not self.use_graph:
            with torch.no_grad():
                return self.fn(*inputs)
        if len(inputs) != len(self.static_inputs):
            raise ValueError(f"expected {len(self.static_inputs)} inputs, got {len(inputs)}")
        with torch.no_grad():
            for i, (dst, src) in enumerate(zip(self.static_inputs, inputs)):
                if src.shape != dst.shape:
                    raise ValueError(
                        f"input {i} has shape {tuple(src.shape)} but the graph was captured for "
                        f"{tuple(dst.shape)}; build another graph for this shape"
                    )
                dst.copy_(src, non_blocking=True)
            self.graph.replay()
            return _clone_tree(self.static_output)


def pad_rows(x: torch.Tensor, rows: int) -> torch.Tensor:
    """Pad the batch to `rows` by repeating the last row (rows are independent in the network)."""
    if x.shape[0] == rows:
        return x
    return torch.cat([x, x[-1:].expand(rows - x.shape[0], *x.shape[1:])])


def in_fixed_batches(fn: TensorFn, x: torch.Tensor, rows: int | None) -> torch.Tensor:
    """fn over `x` (B, ...) in batches of exactly `rows` (the last one padded by repeating its
    final row; rows must not interact), or in one call when `rows` is None. For code that is
    specialised to one input shape: CUDA graphs, compiled modules."""
    n = x.shape[0]
    if rows is None or n in (0, rows):
        return fn(x)
    return torch.cat(
        [fn(pad_rows(x[start : start + rows], rows))[: min(rows, n - start)] for start in range(0, n, rows)]
    )


class CompiledOrEager(nn.Module):
    """`torch.compile(module)` in place of `module`, switching back to `module` for good at the
    first failure (an Inductor or Triton error at a first call with new shapes) and keeping
    the reason in `failed`. Attributes not its own are the module's, so it can replace the
    module where other code reads them (open_clip reads `visual.image_size`). A CUDA error
    that poisons the context is not recoverable this way."""

    def __init__(self, module: nn.Module, **compile_kwargs) -> None:
        super().__init__()
        self.module = module
        # a plain attribute, not a second submodule holding the same parameters
        self.__dict__["_call"] = FallbackOnError(
            torch.compile(module, **compile_kwargs),
            module,
            warning=f"torch.compile of {type(module).__name__} failed, running it eagerly",
        )

    @property
    def failed(self) -> str | None:
        return self._call.failed

    def forward(self, *args, **kwargs):
        return self._call(*args, **kwargs)

    def __getattr__(self, name: str):
        try:
            return super().__getattr__(name)
        except AttributeError:
            return getattr(self.module, name)


class FallbackOnError:
    """Calls `primary`; at its first failure switches to `fallback` for good, keeps the reason in
    `failed` and, given a `warning`, warns "<warning>: <reason>" (fast paths that may fail to
    compile or capture, where the fallback computes the same thing)."""

    def __init__(self, primary: TensorFn, fallback: TensorFn, warning: str | None = None) -> None:
        self.primary, self.fallback, self.warning = primary, fallback, warning
        self.failed: str | None = None

    def __call__(self, *args, **kwargs):
        if self.failed is None:
            try:
                return self.primary(*args, **kwargs)
            except Exception as exc:  # noqa: BLE001 - compiler/capture failures of any kind
                self.failed = short_error(exc)
                if self.warning:
                    warnings.warn(f"{self.warning}: {self.failed}", RuntimeWarning, stacklevel=3)
        return self.fallback(*args, **kwargs)
