"""Samplers over an average-velocity field (SPEC §2.2: t = 0 noise, t = 1 data).

A field is `field(z, t, s) -> u`, the average velocity over [t, s] at z (s = t: the
instantaneous velocity), with t and s of shape (B,). `guided_field` builds one from a
conditional predictor and a `Guidance`.

    sample_meanflow: z_{k+1} = z_k + (t_{k+1} - t_k)·field(z_k, t_k, t_{k+1})   (1 step: x = e + u(e, 0, 1))
    sample_euler:    z_{k+1} = z_k + (t_{k+1} - t_k)·field(z_k, t_k, t_k)       (MMAudio's Euler)
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch

from dub.model.flow.guidance import Guidance, combine, needs_uncond

Field = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]
Steps = int | Sequence[float] | torch.Tensor


def make_noise(
    shape: Sequence[int],
    generator: torch.Generator,
    device: torch.device | str | None = None,
    dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """Standard normal noise from an explicit generator.

    Drawn in float32 on the generator's device, then moved and cast, so one seed gives the
    same noise whatever the target device or dtype.
    """
    if not isinstance(generator, torch.Generator):
        raise TypeError(f"make_noise needs a torch.Generator (seeded by the caller), got {type(generator).__name__}")
    noise = torch.randn(tuple(shape), generator=generator, device=generator.device, dtype=torch.float32)
    return noise.to(device=device if device is not None else generator.device, dtype=dtype)


def time_grid(steps: Steps) -> torch.Tensor:
    """Time points of a sampler as a float64 CPU tensor.

    An int k gives the uniform grid 0, 1/k, ..., 1. An explicit grid must be strictly
    increasing inside [0, 1] with at least two points; sampling starts at its first point.
    """
    if isinstance(steps, bool):
        raise TypeError("steps must be an int or a sequence of times, got a bool")
    if isinstance(steps, int):
        if steps < 1:
            raise ValueError(f"steps must be >= 1, got {steps}")
        return torch.linspace(0.0, 1.0, steps + 1, dtype=torch.float64)
    grid = torch.as_tensor(steps, dtype=torch.float64).detach().cpu()
    if grid.dim() != 1 or grid.numel() < 2:
        raise ValueError(f"a time grid must be 1-D with at least 2 points, got shape {tuple(grid.shape)}")
    if not bool((grid[1:] > grid[:-1]).all()):
        raise ValueError(f"a time grid must be strictly increasing, got {grid.tolist()}")
    if grid[0] < 0.0 or grid[-1] > 1.0:
        raise ValueError(f"a time grid must lie in [0, 1] (0 = noise, 1 = data), got {grid.tolist()}")
    return grid


def sample_meanflow(field: Field, noise: torch.Tensor, steps: Steps = 1) -> torch.Tensor:
    """MeanFlow sampling: each step jumps by the predicted average velocity over its interval."""
    return _integrate(field, noise, time_grid(steps), average=True)


def sample_euler(field: Field, noise: torch.Tensor, steps: Steps = 25) -> torch.Tensor:
    """Euler integration of the instantaneous field (s = t at the left end of each step)."""
    return _integrate(field, noise, time_grid(steps), average=False)


def _integrate(field: Field, noise: torch.Tensor, grid: torch.Tensor, *, average: bool) -> torch.Tensor:
    z = noise
    batch = noise.shape[0]
    times = grid.tolist()  # python floats: no device sync per step
    for t0, t1 in zip(times[:-1], times[1:]):
        t = torch.full((batch,), t0, device=noise.device, dtype=torch.float32)
        s = torch.full((batch,), t1, device=noise.device, dtype=torch.float32) if average else t
        u = field(z, t, s)
        if u.shape != z.shape:
            raise ValueError(f"field returned shape {tuple(u.shape)} for a state of shape {tuple(z.shape)}")
        z = z + (t1 - t0) * u.to(z.dtype)
    return z


def guided_field(
    predict: Callable[[torch.Tensor, torch.Tensor, torch.Tensor, Any], torch.Tensor],
    cond: Any,
    uncond: Any,
    guidance: Guidance,
    cat: Callable[[Any, Any], Any] | None = None,
) -> Field:
    """field(z, t, s) applying `guidance` to `predict(z, t, s, conditions) -> u`.

    With `cat(cond, uncond)` (batch concatenation of conditions) both branches run as ONE
    call on a doubled batch; without it, two calls. When the guidance does not need the
    unconditional branch it is never evaluated (and `uncond` may be None).
    """
    if not needs_uncond(guidance):

        def conditional(z: torch.Tensor, t: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
            return predict(z, t, s, cond)

        return conditional

    if uncond is None:
        raise ValueError(f"guidance weight {guidance.cfg} > 1 needs unconditional conditions, got None")
    both = cat(cond, uncond) if cat is not None else None

    def guided(z: torch.Tensor, t: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
        if both is not None:
            u = predict(torch.cat([z, z]), torch.cat([t, t]), torch.cat([s, s]), both)
            u_cond, u_uncond = u.split(z.shape[0])
        else:
            u_cond = predict(z, t, s, cond)
            u_uncond = predict(z, t, s, uncond)
        return combine(u_cond, u_uncond, guidance)

    return guided
