"""Rotary position embedding as MMAudio applies it: adjacent channel pairs, tables stored as

Follows MMAudio 1.0.0 (hkchengrex/MMAudio, `mmaudio/ext/rotary_embeddings.py`).
2x2 rotation matrices [[cos, -sin], [sin, cos]] of shape (1, L, Dh/2, 2, 2)."""

from __future__ import annotations

import torch

from dub.model.network.layers import at_least_fp32

ROPE_BASE = 10000.0


def rope_rotations(length: int, head_dim: int, *, freq_scaling: float = 1.0) -> torch.Tensor:
    """theta[p, i] = p * freq_scaling * base^(-2i/Dh); returns (1, length, Dh/2, 2, 2) in float32.

    The clip stream uses freq_scaling = N_latent / N_clip so both streams span the same time.
    """
    if head_dim % 2:
        raise ValueError(f"rotary embedding needs an even head dim, got {head_dim}")
    pos = torch.arange(length, dtype=torch.float32)
    freqs = 1.0 / (ROPE_BASE ** (torch.arange(0, head_dim, 2, dtype=torch.float32) / head_dim))
    freqs = freqs * freq_scaling
    theta = pos[:, None] * freqs[None, :]
    cos, sin = torch.cos(theta), torch.sin(theta)
    rot = torch.stack([cos, -sin, sin, cos], dim=-1)
    return rot.view(1, length, head_dim // 2, 2, 2)


def apply_rope(x: torch.Tensor, rot: torch.Tensor) -> torch.Tensor:
    """Rotate pairs (x[2i], x[2i+1]) of x (B, H, L, Dh) by the table rot (1, L, Dh/2, 2, 2)."""
    xf = at_least_fp32(x)
    pairs = xf.view(*xf.shape[:-1], -1, 1, 2)
    rot = rot.to(xf.dtype)
    out = rot[..., 0] * pairs[..., 0] + rot[..., 1] * pairs[..., 1]
    return out.reshape(x.shape).to(x.dtype)
