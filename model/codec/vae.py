"""MMAudio's 1-D mel VAE (EDM2-style magnitude-preserving convolutions), inference side.

Follows MMAudio 1.0.0 (hkchengrex/MMAudio, `mmaudio/ext/autoencoder/`); checked against the publisher's fixtures (tests/test_codec.py).

Key names match MMAudio's checkpoints (`v1-16.pth`, `v1-44.pth`) so they load strictly. The
checkpoints hold raw conv weights; `load_vae` loads them and then normalises every conv weight
once ("remove weight norm"), after which the module computes MMAudio's outputs.
Latents are channel-first here: mel (B, data_dim, T) <-> z (B, embed_dim, T / 2**len(down_layers)).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F

from dub.model.weights.state_dicts import read_state_dict, strict_load

_EPS = 1e-4


@dataclass(frozen=True)
class VAEConfig:
    data_dim: int
    embed_dim: int
    hidden_dim: int
    ch_mult: tuple[int, ...] = (1, 2, 4)
    num_res_blocks: int = 2
    attn_layers: tuple[int, ...] = (3,)
    down_layers: tuple[int, ...] = (0,)
    kernel_size: int = 3
    clip_act: float = 256.0
    double_z: bool = True

    def __post_init__(self) -> None:
        if not self.double_z:
            raise ValueError("VAEConfig.double_z=False is not supported: MMAudio's VAE predicts mean and logvar")
        if any(not 0 <= d < len(self.ch_mult) for d in self.down_layers):
            raise ValueError(f"down_layers {self.down_layers} must index ch_mult (length {len(self.ch_mult)})")

    @property
    def downsample_factor(self) -> int:
        return 2 ** len(self.down_layers)

    @classmethod
    def mmaudio_16k(cls) -> VAEConfig:
        return cls(data_dim=80, embed_dim=20, hidden_dim=384)

    @classmethod
    def mmaudio_44k(cls) -> VAEConfig:
        return cls(data_dim=128, embed_dim=40, hidden_dim=512)

    def as_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> VAEConfig:
        """Accepts `as_dict()` output and the fixture `arch.json` (extra descriptive keys ignored)."""
        if not d.get("resamp_with_conv", True):
            raise ValueError("VAE resamp_with_conv=False is not supported (MMAudio resamples with convs)")
        defaults = cls(data_dim=1, embed_dim=1, hidden_dim=1)
        return cls(
            data_dim=int(d["data_dim"]),
            embed_dim=int(d["embed_dim"]),
            hidden_dim=int(d["hidden_dim"]),
            ch_mult=tuple(int(x) for x in d.get("ch_mult", defaults.ch_mult)),
            num_res_blocks=int(d.get("num_res_blocks", defaults.num_res_blocks)),
            attn_layers=tuple(int(x) for x in d.get("attn_layers", defaults.attn_layers)),
            down_layers=tuple(int(x) for x in d.get("down_layers", defaults.down_layers)),
            kernel_size=int(d.get("kernel_size", defaults.kernel_size)),
            clip_act=float(d.get("clip_act", defaults.clip_act)),
            double_z=bool(d.get("double_z", True)),
        )


def pixel_norm(x: torch.Tensor, dim: int = 1) -> torch.Tensor:
    """x / (eps + rms over `dim`): EDM2's normalize() restricted to one axis."""
    norm = torch.linalg.vector_norm(x, dim=dim, keepdim=True, dtype=torch.float32)
    norm = _EPS + norm / math.sqrt(x.shape[dim])
    return x / norm.to(x.dtype)


def normalized_conv_weight(weight: torch.Tensor) -> torch.Tensor:
    """EDM2 forced weight normalisation, folded: W[o] / (eps + ||W[o]|| / sqrt(n)) / sqrt(n)."""
    w = weight.to(torch.float32)
    fan_in = w[0].numel()
    norm = torch.linalg.vector_norm(w, dim=list(range(1, w.ndim)), keepdim=True)
    w = w / (_EPS + norm / math.sqrt(fan_in)) / math.sqrt(fan_in)
    return w.to(weight.dtype)


def mp_silu(x: torch.Tensor) -> torch.Tensor:
    return F.silu(x) / 0.596


def mp_sum(a: torch.Tensor, b: torch.Tensor, t: float = 0.3) -> torch.Tensor:
    return a.lerp(b, t) / math.sqrt((1 - t) ** 2 + t**2)


class MPConv1d(nn.Module):
    """Bias-free conv with 'same' zero padding; `weight` holds the normalised (inference) weight."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(normalized_conv_weight(torch.randn(out_channels, in_channels, kernel_size)))

    def forward(self, x: torch.Tensor, gain: torch.Tensor | float = 1.0) -> torch.Tensor:
        w = self.weight * gain
        return F.conv1d(x, w, padding=w.shape[-1] // 2)


class ResBlock(nn.Module):
    def __init__(self, in_dim: int, out_dim: int, kernel_size: int) -> None:
        super().__init__()
        self.conv1 = MPConv1d(in_dim, out_dim, kernel_size)
        self.conv2 = MPConv1d(out_dim, out_dim, kernel_size)
        if in_dim != out_dim:
            self.nin_shortcut = MPConv1d(in_dim, out_dim, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = pixel_norm(x)
        h = self.conv2(mp_silu(self.conv1(mp_silu(x))))
        if hasattr(self, "nin_shortcut"):
            x = self.nin_shortcut(x)
        return mp_sum(x, h)


class AttnBlock(nn.Module):
    """Single-head self-attention over time; qkv channels interleaved as (channel, q/k/v)."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.qkv = MPConv1d(channels, 3 * channels, 1)
        self.proj_out = MPConv1d(channels, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, t = x.shape
        y = self.qkv(x).reshape(b, 1, c, 3, t)
        q, k, v = pixel_norm(y, dim=2).unbind(3)  # each (B, 1, C, T)
        h = F.scaled_dot_product_attention(q.transpose(-1, -2), k.transpose(-1, -2), v.transpose(-1, -2))
        h = h.transpose(-1, -2).reshape(b, c, t)
        return mp_sum(x, self.proj_out(h))


class Downsample(nn.Module):
    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv1 = MPConv1d(channels, channels, 1)
        self.conv2 = MPConv1d(channels, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv2(F.avg_pool1d(self.conv1(x), kernel_size=2, stride=2))


class Upsample(nn.Module):
    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv = MPConv1d(channels, channels, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(torch.repeat_interleave(x, 2, dim=-1))


class _Level(nn.Module):
    """One resolution level; attribute names give MMAudio's keys (`block.i`, `attn.i`, `downsample`/`upsample`)."""

    def __init__(self, blocks: list[nn.Module], attns: list[nn.Module]) -> None:
        super().__init__()
        self.block = nn.ModuleList(blocks)
        self.attn = nn.ModuleList(attns)

    def run_blocks(self, h: torch.Tensor, clip_act: float) -> torch.Tensor:
        for i, block in enumerate(self.block):
            h = block(h)
            if len(self.attn):
                h = self.attn[i](h)
            h = h.clamp(-clip_act, clip_act)
        return h


class _Mid(nn.Module):
    def __init__(self, channels: int, kernel_size: int) -> None:
        super().__init__()
        self.block_1 = ResBlock(channels, channels, kernel_size)
        self.attn_1 = AttnBlock(channels)
        self.block_2 = ResBlock(channels, channels, kernel_size)

    def forward(self, h: torch.Tensor, clip_act: float) -> torch.Tensor:
        return self.block_2(self.attn_1(self.block_1(h))).clamp(-clip_act, clip_act)


class Encoder(nn.Module):
    def __init__(self, c: VAEConfig) -> None:
        super().__init__()
        self.clip_act = c.clip_act
        self.conv_in = MPConv1d(c.data_dim, c.hidden_dim, c.kernel_size)
        self.down = nn.ModuleList()
        block_in = c.hidden_dim
        for level, mult in enumerate(c.ch_mult):
            block_out = c.hidden_dim * mult
            blocks, attns = [], []
            for _ in range(c.num_res_blocks):
                blocks.append(ResBlock(block_in, block_out, c.kernel_size))
                block_in = block_out
                if level in c.attn_layers:
                    attns.append(AttnBlock(block_in))
            stage = _Level(blocks, attns)
            if level in c.down_layers:
                stage.downsample = Downsample(block_in)
            self.down.append(stage)
        self.mid = _Mid(block_in, c.kernel_size)
        self.conv_out = MPConv1d(block_in, 2 * c.embed_dim, c.kernel_size)
        self.learnable_gain = nn.Parameter(torch.zeros([]))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv_in(x)
        for stage in self.down:
            h = stage.run_blocks(h, self.clip_act)
            if hasattr(stage, "downsample"):
                h = stage.downsample(h)
        h = self.mid(h, self.clip_act)
        return self.conv_out(mp_silu(h), gain=self.learnable_gain + 1)


class Decoder(nn.Module):
    def __init__(self, c: VAEConfig) -> None:
        super().__init__()
        self.clip_act = c.clip_act
        # The decoder upsamples after the level one above each encoder downsampling level.
        up_layers = {d + 1 for d in c.down_layers}
        block_in = c.hidden_dim * c.ch_mult[-1]
        self.conv_in = MPConv1d(c.embed_dim, block_in, c.kernel_size)
        self.mid = _Mid(block_in, 3)  # MMAudio builds the decoder's mid blocks with the default kernel 3
        levels: list[_Level] = []
        for level in reversed(range(len(c.ch_mult))):
            block_out = c.hidden_dim * c.ch_mult[level]
            blocks, attns = [], []
            for _ in range(c.num_res_blocks + 1):
                blocks.append(ResBlock(block_in, block_out, 3))
                block_in = block_out
                if level in c.attn_layers:
                    attns.append(AttnBlock(block_in))
            stage = _Level(blocks, attns)
            if level in up_layers:
                stage.upsample = Upsample(block_in)
            levels.insert(0, stage)
        self.up = nn.ModuleList(levels)  # up[l] is level l; the forward pass runs from the top level down
        self.conv_out = MPConv1d(block_in, c.data_dim, c.kernel_size)
        self.learnable_gain = nn.Parameter(torch.zeros([]))

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        h = self.mid(self.conv_in(z), self.clip_act)
        for stage in reversed(self.up):
            h = stage.run_blocks(h, self.clip_act)
            if hasattr(stage, "upsample"):
                h = stage.upsample(h)
        return self.conv_out(mp_silu(h), gain=self.learnable_gain + 1)


@dataclass(frozen=True)
class Posterior:
    """Diagonal Gaussian over latents, channel-first (B, embed_dim, N)."""

    moments: torch.Tensor

    @property
    def mean(self) -> torch.Tensor:
        return self.moments.chunk(2, dim=1)[0]

    @property
    def logvar(self) -> torch.Tensor:
        return self.moments.chunk(2, dim=1)[1].clamp(-30.0, 20.0)

    @property
    def std(self) -> torch.Tensor:
        return torch.exp(0.5 * self.logvar)

    def sample(self, generator: torch.Generator | None = None) -> torch.Tensor:
        noise = torch.empty_like(self.mean).normal_(generator=generator)
        return self.mean + self.std * noise


class VAE(nn.Module):
    def __init__(self, config: VAEConfig) -> None:
        super().__init__()
        self.config = config
        # Real values come from the checkpoint; identity statistics keep a fresh model usable.
        self.register_buffer("data_mean", torch.zeros(1, config.data_dim, 1))
        self.register_buffer("data_std", torch.ones(1, config.data_dim, 1))
        self.encoder = Encoder(config)
        self.decoder = Decoder(config)

    def _check_mel(self, mel: torch.Tensor) -> None:
        f = self.config.downsample_factor
        if mel.ndim != 3 or mel.shape[1] != self.config.data_dim:
            raise ValueError(f"VAE expects mel of shape (B, {self.config.data_dim}, T), got {tuple(mel.shape)}")
        if mel.shape[-1] % f:
            raise ValueError(f"mel length {mel.shape[-1]} must be a multiple of {f} (pad the waveform first)")

    def posterior(self, mel: torch.Tensor) -> Posterior:
        self._check_mel(mel)
        x = (mel - self.data_mean) / self.data_std
        return Posterior(self.encoder(x))

    def encode(self, mel: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """mel (B, data_dim, T) -> (mean, std), each (B, embed_dim, T / downsample_factor)."""
        post = self.posterior(mel)
        return post.mean, post.std

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """z (B, embed_dim, N) channel-first -> mel (B, data_dim, N * downsample_factor)."""
        if z.ndim != 3 or z.shape[1] != self.config.embed_dim:
            raise ValueError(
                f"VAE.decode expects channel-first latents (B, {self.config.embed_dim}, N), got {tuple(z.shape)}"
            )
        return self.decoder(z) * self.data_std + self.data_mean

    @torch.no_grad()
    def normalize_weights_(self) -> None:
        """Fold EDM2 weight normalisation into every conv weight, in place (do this exactly once)."""
        for module in self.modules():
            if isinstance(module, MPConv1d):
                module.weight.copy_(normalized_conv_weight(module.weight))


def load_vae(weights: str | Path | Mapping[str, torch.Tensor], config: VAEConfig) -> VAE:
    """Build a VAE from MMAudio checkpoint weights (raw, before weight normalisation).

    `weights`: a `.safetensors` / `.pth` path (torch weights-only) or a state dict, bare or nested
    under a key such as "state_dict"/"model"/"ema".
    """
    state = read_state_dict(weights, expect_key="encoder.conv_in.weight")
    vae = VAE(config)
    strict_load(
        vae,
        state,
        "VAE checkpoint",
        detail=f" built from {config}",
        hint="Wrong preset? (e.g. 16k weights with the 44k config)",
    )
    vae.normalize_weights_()
    return vae.eval()
