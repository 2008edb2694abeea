"""Small real models and data for the objective/sampler tests: a 2-D Gaussian mixture, an
MLP average-velocity model u(z, t, s), a training loop and the sliced Wasserstein distance."""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import nn


class VelocityMLP(nn.Module):
    """u(z, t, s) for flat data (B, D); optional class label condition `label` (B, L)."""

    def __init__(self, dim: int = 2, hidden: int = 128, depth: int = 3, label_dim: int = 0) -> None:
        super().__init__()
        layers: list[nn.Module] = [nn.Linear(dim + 2 + label_dim, hidden), nn.SiLU()]
        for _ in range(depth - 1):
            layers += [nn.Linear(hidden, hidden), nn.SiLU()]
        layers.append(nn.Linear(hidden, dim))
        self.net = nn.Sequential(*layers)
        self.label_dim = label_dim

    def forward(
        self, z: torch.Tensor, t: torch.Tensor, s: torch.Tensor, label: torch.Tensor | None = None
    ) -> torch.Tensor:
        # (t, s - t) as MeanFlow feeds them: the interval length is what the average depends on most.
        parts = [z, t[:, None].to(z.dtype), (s - t)[:, None].to(z.dtype)]
        if self.label_dim:
            if label is None:
                raise ValueError("this VelocityMLP is conditional: pass label=")
            parts.append(label.to(z.dtype))
        return self.net(torch.cat(parts, dim=1))


def mixture_centres(modes: int = 8, radius: float = 2.0) -> torch.Tensor:
    angles = torch.arange(modes, dtype=torch.float64) * (2 * math.pi / modes)
    return (radius * torch.stack([angles.cos(), angles.sin()], dim=1)).float()


def sample_mixture(
    n: int, generator: torch.Generator, modes: int = 8, radius: float = 2.0, std: float = 0.15
) -> torch.Tensor:
    centres = mixture_centres(modes, radius)
    idx = torch.randint(0, modes, (n,), generator=generator)
    return centres[idx] + std * torch.randn(n, 2, generator=generator)


def sliced_wasserstein(a: torch.Tensor, b: torch.Tensor, projections: int = 64) -> float:
    """Mean over fixed, evenly spaced directions of the 1-D W1 distance (equal sample counts)."""
    if a.shape != b.shape or a.dim() != 2 or a.shape[1] != 2:
        raise ValueError(f"need two (n, 2) sample sets of the same size, got {tuple(a.shape)} and {tuple(b.shape)}")
    angles = torch.arange(projections, dtype=torch.float64) * (math.pi / projections)
    dirs = torch.stack([angles.cos(), angles.sin()], dim=1)
    pa = (a.double() @ dirs.T).sort(dim=0).values
    pb = (b.double() @ dirs.T).sort(dim=0).values
    return float((pa - pb).abs().mean())


def train(
    model: nn.Module,
    loss_fn: Callable[..., tuple[torch.Tensor, dict[str, float]]],
    data: Callable[[int, torch.Generator], torch.Tensor],
    *,
    steps: int,
    batch: int,
    seed: int,
    lr: float = 1e-3,
    **loss_kwargs,
) -> list[float]:
    """AdamW with cosine decay; returns the raw MSE per step. One thread: for an MLP this small,
    thread hand-offs cost more than they save, badly so on a loaded shared machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return _train(model, loss_fn, data, steps=steps, batch=batch, seed=seed, lr=lr, **loss_kwargs)
    finally:
        torch.set_num_threads(threads)


def _train(model, loss_fn, data, *, steps: int, batch: int, seed: int, lr: float, **loss_kwargs) -> list[float]:
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.0)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, steps)
    history = []
    for _ in range(steps):
        x = data(batch, gen)
        loss, metrics = loss_fn(model, x, generator=gen, **loss_kwargs)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        history.append(metrics["mse"])
    return history


class GaussianAverageVelocity(nn.Module):
    """Exact average velocity for data x ~ N(mu, sigma² I) and noise e ~ N(0, I).

    Per dimension z_t is Gaussian with mean t·mu and std sd_t = sqrt((1-t)² + t²σ²), and the
    marginal flow maps z_t to z_s affinely: z_s = s·mu + (sd_s/sd_t)(z_t - t·mu). Hence
    u = (z_s - z_t)/(s - t) = mu + k(t, s)·(z_t - t·mu) with, after cancelling (s - t),
    k = ((s + t)(1 + σ²) - 2) / ((sd_s + sd_t)·sd_t); at s = t this is the instantaneous
    velocity (tσ² - (1 - t))/sd_t². Smooth in (t, s), so forward-mode AD sees no division by s - t.
    """

    def __init__(self, mu: torch.Tensor, sigma: float) -> None:
        super().__init__()
        self.register_buffer("mu", mu.double())
        self.sigma = sigma

    def std(self, t: torch.Tensor) -> torch.Tensor:
        return ((1 - t) ** 2 + (t * self.sigma) ** 2).sqrt()

    def forward(self, z: torch.Tensor, t: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
        t, s = t.double()[:, None], s.double()[:, None]
        sd_t, sd_s = self.std(t), self.std(s)
        k = ((s + t) * (1 + self.sigma**2) - 2) / ((sd_s + sd_t) * sd_t)
        return (self.mu + k * (z.double() - t * self.mu)).to(z.dtype)


class TinyAttentionVelocity(nn.Module):
    """A small conditional transformer-like u(z, t, s): latent tokens attend (SDPA) over
    themselves and the clip/sync/text condition tokens; learnable empty features as in MMAudio."""

    def __init__(
        self,
        latent_dim: int = 4,
        clip_dim: int = 6,
        sync_dim: int = 5,
        text_dim: int = 3,
        text_len: int = 2,
        hidden: int = 16,
        heads: int = 2,
    ) -> None:
        super().__init__()
        self.heads = heads
        self.inp = nn.Linear(latent_dim, hidden)
        self.time = nn.Sequential(nn.Linear(2, hidden), nn.SiLU(), nn.Linear(hidden, hidden))
        self.proj = nn.ModuleDict(
            {
                "clip_f": nn.Linear(clip_dim, hidden),
                "sync_f": nn.Linear(sync_dim, hidden),
                "text_f": nn.Linear(text_dim, hidden),
            }
        )
        self.qkv = nn.Linear(hidden, 3 * hidden)
        self.norm = nn.LayerNorm(hidden)
        self.out = nn.Linear(hidden, latent_dim)
        self.empty_clip_feat = nn.Parameter(0.5 * torch.randn(1, clip_dim))
        self.empty_sync_feat = nn.Parameter(0.5 * torch.randn(1, sync_dim))
        self.empty_string_feat = nn.Parameter(0.5 * torch.randn(text_len, text_dim), requires_grad=False)

    def empty(self) -> dict[str, torch.Tensor]:
        return {"clip_f": self.empty_clip_feat, "sync_f": self.empty_sync_feat, "text_f": self.empty_string_feat}

    def forward(self, z, t, s, *, clip_f, sync_f, text_f):
        b, n, _ = z.shape
        h = self.inp(z) + self.time(torch.stack([t, s - t], dim=1).to(z.dtype))[:, None]
        tokens = torch.cat(
            [h, self.proj["clip_f"](clip_f), self.proj["sync_f"](sync_f), self.proj["text_f"](text_f)], dim=1
        )
        q, k, v = self.qkv(self.norm(tokens)).chunk(3, dim=-1)
        split = lambda a: a.view(b, a.shape[1], self.heads, -1).transpose(1, 2)  # noqa: E731
        a = torch.nn.functional.scaled_dot_product_attention(split(q[:, :n]), split(k), split(v))
        return self.out(h + a.transpose(1, 2).reshape(b, n, -1))


def random_conditions(
    batch: int, generator: torch.Generator, model: TinyAttentionVelocity, clip_len: int = 3, sync_len: int = 4
) -> dict[str, torch.Tensor]:
    return {
        "clip_f": torch.randn(batch, clip_len, model.empty_clip_feat.shape[1], generator=generator),
        "sync_f": torch.randn(batch, sync_len, model.empty_sync_feat.shape[1], generator=generator),
        "text_f": torch.randn(batch, *model.empty_string_feat.shape, generator=generator),
    }
