"""Classifier-free guidance (MMAudio form) with two scalar rescalings (SPEC §2.3).

    plain: u = w·u_c + (1 - w)·u_0
    std  (Lin et al. 2023): u <- phi·u·std(u_c)/std(u) + (1 - phi)·u
    proj (CFG-Zero*, Fan et al. 2025): s* = <u_c, u_0>/||u_0||², u = s*·u_0 + w·(u_c - s*·u_0)

Statistics are per sample over every non-batch element. w <= 1 means no guidance: the
result is u_c and the unconditional branch must not be evaluated at all (`needs_uncond`).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch

RESCALE_MODES = ("std", "proj", "none")

# Guards the divisions when a sample's field is identically zero.
_TINY = 1e-12


@dataclass(frozen=True)
class Guidance:
    cfg: float = 1.0  # guidance weight w; w <= 1 switches guidance off (MMAudio: w < 1)
    rescale: str = "std"  # std | proj | none
    phi: float = 0.7  # std rescale strength (0: plain CFG, 1: full std matching)

    def __post_init__(self) -> None:
        if self.rescale not in RESCALE_MODES:
            raise ValueError(f"unknown rescale {self.rescale!r}: use one of {', '.join(RESCALE_MODES)}")
        if not 0.0 <= self.phi <= 1.0:
            raise ValueError(f"the cfg rescale strength phi must be in [0, 1], got {self.phi}")

    def as_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> Guidance:
        return cls(**data)


def needs_uncond(g: Guidance) -> bool:
    """Whether `combine` uses the unconditional prediction (w = 1 gives u_c exactly, so skip it too)."""
    return g.cfg > 1.0


def combine(u_cond: torch.Tensor, u_uncond: torch.Tensor | None, g: Guidance) -> torch.Tensor:
    """Guided velocity from the conditional and unconditional predictions (same shape, batch first)."""
    if not needs_uncond(g):
        return u_cond
    if u_uncond is None:
        raise ValueError(f"guidance weight {g.cfg} > 1 needs the unconditional prediction, got None")
    if u_uncond.shape != u_cond.shape:
        raise ValueError(f"u_cond {tuple(u_cond.shape)} and u_uncond {tuple(u_uncond.shape)} differ in shape")
    out_dtype = u_cond.dtype
    # Per-sample reductions in float32: bf16 sums over thousands of latent elements drift.
    u_c, u_0 = u_cond.float(), u_uncond.float()
    w = g.cfg
    if g.rescale == "proj":
        s = per_sample(_dot(u_c, u_0) / (_dot(u_0, u_0) + _TINY), u_c)
        return (s * u_0 + w * (u_c - s * u_0)).to(out_dtype)
    u = w * u_c + (1.0 - w) * u_0
    if g.rescale == "std" and g.phi > 0.0:
        # Population std (correction 0): the correction factor cancels in the ratio anyway.
        ratio = _std(u_c) / (_std(u) + _TINY)
        u = g.phi * u * per_sample(ratio, u) + (1.0 - g.phi) * u
    return u.to(out_dtype)


def _dot(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return (a * b).reshape(a.shape[0], -1).sum(dim=1)


def _std(x: torch.Tensor) -> torch.Tensor:
    return x.reshape(x.shape[0], -1).std(dim=1, correction=0)


def per_sample(values: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """One value per sample (B,) viewed so it broadcasts against `like` (B, ...)."""
    return values.view(-1, *([1] * (like.dim() - 1)))
