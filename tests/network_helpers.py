"""Real tiny MF-MJT networks for tests: random (but deterministic) weights in every parameter,
random condition features, and the MMAudio Euler CFG loop used by the conformance fixtures."""

from __future__ import annotations

import math

import torch

from dub.model.network.config import NetworkConfig
from dub.model.network.transformer import MFMJT, Conditions


@torch.no_grad()
def randomize_parameters_(model: torch.nn.Module, seed: int) -> torch.nn.Module:
    """Overwrite every parameter like the MMAudio fixtures do (MMAudio zero-initialises adaLN
    and output layers, which would make most of the network inert): matrices/kernels
    N(0, clip(1/sqrt(fan_in), 0.02, 0.2)), vectors N(0, 0.05), norm weights and latent_std ~ 1."""
    gen = torch.Generator().manual_seed(seed)
    for name, p in model.named_parameters():
        noise = torch.randn(p.shape, generator=gen, dtype=torch.float64)
        if name.endswith("norm.weight") or name == "latent_std":
            value = 1 + 0.1 * noise
        elif p.ndim >= 2:
            std = min(max(1 / math.sqrt(p[0].numel()), 0.02), 0.2)
            value = std * noise
        else:
            value = 0.05 * noise
        p.copy_(value.to(p.dtype))
    return model


def random_tiny_network(config: NetworkConfig, seed: int = 0) -> MFMJT:
    torch.manual_seed(seed)
    return randomize_parameters_(MFMJT(config), seed).eval()


def random_features(
    config: NetworkConfig, batch: int, seed: int, dtype: torch.dtype = torch.float32
) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)

    def draw(length: int, dim: int) -> torch.Tensor:
        return torch.randn(batch, length, dim, generator=gen).to(dtype)

    return {
        "clip_f": draw(config.clip_seq_len, config.clip_dim),
        "sync_f": draw(config.sync_seq_len, config.sync_dim),
        "text_f": draw(config.text_seq_len, config.text_dim),
    }


def euler_cfg(
    model: MFMJT,
    x: torch.Tensor,
    cond: Conditions,
    empty: Conditions,
    *,
    num_steps: int,
    cfg_strength: float,
    t0: float = 0.0,
    t1: float = 1.0,
) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """MMAudio's Euler sampler: flow at the left end of each step, CFG u = w f_c + (1 - w) f_0
    (conditional only when w < 1). Returns the final state and the state before each step."""
    steps = torch.linspace(t0, t1, num_steps + 1)
    states = []
    for i in range(num_steps):
        states.append(x)
        t = steps[i] * torch.ones(x.shape[0], dtype=x.dtype)
        flow = model.predict_flow(x, t, cond)
        if cfg_strength >= 1.0:
            flow = cfg_strength * flow + (1 - cfg_strength) * model.predict_flow(x, t, empty)
        x = x + (steps[i + 1] - steps[i]) * flow
    return x, states
