"""The JVP tangent of the MeanFlow target: d/dt u(z, t, s) along the flow, s fixed.

`eager_tangent` is the reference (forward-mode AD, `torch.func.jvp`); `CompiledTangent` and
`GraphedTangent` compute the same derivative faster on a GPU (torch.compile, CUDA graphs) and
fall back to the eager one at their first failure or disagreement. `make_tangent` picks one.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Mapping

import torch
from torch.nn.attention import SDPBackend, sdpa_kernel

from dub.model.kernels.graphs import CudaGraphCall, FallbackOnError

TangentFn = Callable[..., torch.Tensor]


def eager_tangent(
    inner: Callable[..., torch.Tensor],
    z: torch.Tensor,
    t: torch.Tensor,
    s: torch.Tensor,
    v: torch.Tensor,
    cond: Mapping[str, torch.Tensor],
) -> torch.Tensor:
    """d/dt u(z, t, s) along dz/dt = v, s fixed: forward-mode AD (`torch.func.jvp`) with the
    math attention kernel (flash / memory-efficient kernels have no forward-mode derivative).
    `inner` is the unwrapped module (jvp cannot go through DDP's forward)."""

    def u_of(z_: torch.Tensor, t_: torch.Tensor, s_: torch.Tensor) -> torch.Tensor:
        return inner(z_, t_, s_, **cond)

    with torch.no_grad(), sdpa_kernel(SDPBackend.MATH):
        _, dudt = torch.func.jvp(u_of, (z, t, s), (v, torch.ones_like(t), torch.zeros_like(s)))
    return dudt


VERIFY_TOLERANCE = 5e-2  # max |fast - eager| / max |eager|: bf16 fusions, not a wrong derivative


class _FastTangent:
    """A faster way to `eager_tangent` that falls back to it for good at its first failure,
    keeping the reason in `failed` (`dub.model.kernels.graphs.FallbackOnError`): a compiler or capture error
    ends a run's fast path, not the run.

    With `verify` (default), the first call for each input shape also runs the eager JVP and
    compares: a fast path that computes a different derivative (beyond VERIFY_TOLERANCE of its
    peak) is dropped for the eager one, with a warning, instead of training on a wrong target.
    `verified` keeps each shape's relative difference. Cost: one eager JVP per shape."""

    what = "the fast path"

    def __init__(self, verify: bool = True) -> None:
        self._call = FallbackOnError(
            self._fast, eager_tangent, warning=f"MeanFlow JVP: {self.what} failed, using the eager JVP from now on"
        )
        self.verify = verify
        self.verified: dict[tuple, float] = {}

    @property
    def failed(self) -> str | None:
        return self._call.failed

    def __call__(self, inner, z, t, s, v, cond) -> torch.Tensor:
        out = self._call(inner, z, t, s, v, cond)
        if not self.verify or self._call.failed is not None:
            return out
        key = (id(inner), tuple(z.shape), tuple(sorted((k, tuple(x.shape)) for k, x in cond.items())))
        if key in self.verified:
            return out
        expected = eager_tangent(inner, z, t, s, v, cond)
        scale = float(expected.float().abs().max())
        err = float((out.float() - expected.float()).abs().max())
        rel = err / scale if scale > 0 else (0.0 if err == 0 else math.inf)
        self.verified[key] = rel
        if not rel <= VERIFY_TOLERANCE:  # also catches NaN
            self._call.failed = (
                f"it differs from eager forward-mode AD by {rel:.2e} of its peak (tolerance {VERIFY_TOLERANCE:g})"
            )
            warnings.warn(
                f"MeanFlow JVP: {self.what} {self._call.failed}; using the eager JVP from now on",
                RuntimeWarning,
                stacklevel=2,
            )
            return expected
        return out

    def _fast(self, inner, z, t, s, v, cond) -> torch.Tensor:
        raise NotImplementedError


class CompiledTangent(_FastTangent):
    """`eager_tangent` through `torch.compile`: the same arithmetic, fused, and with
    mode="reduce-overhead" replayed as CUDA graphs. Eager forward-mode AD launches a primal and
    a tangent kernel per op, so on a GPU the tangent pass is launch-bound; this removes that.

    Build one per training run (it keeps the compiled function). Sub-batch sizes that change
    every step recompile; use `MeanFlowConfig(exact_ratio=True)` so the JVP sub-batch has one
    size. The first call compiles (seconds for tiny models, minutes for real ones).
    """

    what = "torch.compile"

    def __init__(
        self, mode: str | None = None, dynamic: bool | None = None, verify: bool = True, **compile_kwargs
    ) -> None:
        super().__init__(verify)
        self.mode = mode
        self.dynamic = dynamic
        self.compile_kwargs = compile_kwargs
        self._fn: TangentFn | None = None

    def _fast(self, inner, z, t, s, v, cond) -> torch.Tensor:
        if self._fn is None:
            self._fn = torch.compile(eager_tangent, mode=self.mode, dynamic=self.dynamic, **self.compile_kwargs)
        # own dense copies (tiny next to the network): tracing forward-mode AD through inputs
        # that are views of one base trips an internal assert in torch 2.14 (tangent layout)
        z, t, s, v = (x.clone(memory_format=torch.contiguous_format) for x in (z, t, s, v))
        cond = {k: x.clone(memory_format=torch.contiguous_format) for k, x in cond.items()}
        with torch.no_grad(), sdpa_kernel(SDPBackend.MATH):
            dudt = self._fn(inner, z, t, s, v, cond)
        # cudagraph outputs are overwritten by the next replay: keep our own copy
        return dudt.clone() if self.mode == "reduce-overhead" else dudt


class GraphedTangent(_FastTangent):
    """`eager_tangent` captured as a CUDA graph, one per input shape, replayed every step: the
    launch overhead of eager forward-mode AD goes away without a compiler (the fallback where
    torch.compile fails). The graph reads the parameters in place, so optimizer updates are
    seen; autocast's weight-cast cache is off inside (cached casts made during capture would
    be freed at the end of the step). Use with `MeanFlowConfig(exact_ratio=True)`: each new
    sub-batch size is another capture. On a CPU (or `use_graph=False`) it is `eager_tangent`.
    """

    what = "CUDA graph capture"

    def __init__(self, use_graph: bool | None = None, verify: bool = True) -> None:
        super().__init__(verify)
        self.use_graph = use_graph
        self._calls: dict[tuple, Callable[..., torch.Tensor]] = {}

    def _fast(self, inner, z, t, s, v, cond) -> torch.Tensor:
        names = sorted(cond)
        inputs = [z, t, s, v, *(cond[k] for k in names)]
        device_type = z.device.type
        autocast = torch.is_autocast_enabled(device_type)
        dtype = torch.get_autocast_dtype(device_type) if autocast else None
        key = (id(inner), tuple(names), tuple((x.shape, x.dtype) for x in inputs), dtype)
        call = self._calls.get(key)
        if call is None:

            def tangent(z_, t_, s_, v_, *conds):
                with torch.autocast(device_type, dtype=dtype or torch.float32, enabled=autocast, cache_enabled=False):
                    return eager_tangent(inner, z_, t_, s_, v_, dict(zip(names, conds)))

            use_graph = device_type == "cuda" if self.use_graph is None else self.use_graph
            call = self._calls[key] = CudaGraphCall(tangent, inputs, use_graph=use_graph)
        return call(*inputs)

    @property
    def captures(self) -> int:
        """How many graphs (input shapes) this tangent has built."""
        return len(self._calls)


TANGENT_KINDS = ("auto", "eager", "compiled", "graphed")


def resolve_tangent_kind(kind: str, device: torch.device | str = "cpu") -> str:
    """'auto' is 'graphed' on CUDA (the launch-bound eager JVP is what makes a MeanFlow step
    cost more than a flow matching step; docs/benchmarks.md has the figures), else 'eager' (on a
    CPU the graphed tangent is the eager one anyway)."""
    if kind == "auto":
        return "graphed" if torch.device(device).type == "cuda" else "eager"
    return kind


def make_tangent(kind: str, device: torch.device | str = "cpu") -> TangentFn:
    """'eager', 'compiled' (reduce-overhead on CUDA, default mode on the CPU), 'graphed' (CUDA
    graphs of the eager tangent, no compiler) or 'auto' (`resolve_tangent_kind`)."""
    kind = resolve_tangent_kind(kind, device)
    if kind == "eager":
        return eager_tangent
    if kind == "compiled":
        return CompiledTangent(mode="reduce-overhead" if torch.device(device).type == "cuda" else None)
    if kind == "graphed":
        return GraphedTangent()
    raise ValueError(f"unknown tangent {kind!r}: choose one of {TANGENT_KINDS}")
