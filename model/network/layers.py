"""Low-level layers of the MMAudio network: channel-last convolutions, gated MLPs, RMS norm and

Follows MMAudio 1.0.0 (hkchengrex/MMAudio, `mmaudio/model/low_level.py`, `embeddings.py`).
the sinusoidal time embedder. Module and parameter names match MMAudio's state-dict keys.

Every operation here has forward-mode AD (used by the MeanFlow JVP).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

LOW_PRECISION = (torch.float16, torch.bfloat16)


def at_least_fp32(x: torch.Tensor) -> torch.Tensor:
    """Upcast half types for numerically sensitive steps; keep float32/float64 as they are."""
    return x.float() if x.dtype in LOW_PRECISION else x


class ChannelLastConv1d(nn.Conv1d):
    """1-D convolution over the sequence axis of a channel-last (B, L, C) tensor.

    Computed as one matrix product over the unfolded sequence, (B, L, C_in * k) x
    (C_in * k, C_out), where `weight.reshape(C_out, C_in * k)` is a view: same sums as the
    convolution (another order). On an H200 the cuDNN convolution spent a third of the one-step
    network's kernel time converting layouts (transpose to (B, C, L), then cuDNN's NCHW -> NHWC
    and back); a GEMM reads (B, L, C) as it is. Stride 1, zero padding, groups 1 and dilation 1
    only (what MMAudio uses); anything else takes nn.Conv1d's path.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self._as_matmul():
            return super().forward(x.transpose(1, 2)).transpose(1, 2)
        (k,), (pad,) = self.kernel_size, self.padding
        if pad:
            x = F.pad(x, (0, 0, pad, pad))  # zeros before and after the sequence
        return F.linear(_columns(x, k), self.weight.reshape(self.out_channels, -1), self.bias)

    def _as_matmul(self) -> bool:
        return (
            self.stride == (1,)
            and self.dilation == (1,)
            and self.groups == 1
            and self.padding_mode == "zeros"
            and isinstance(self.padding, tuple)
            and 2 * self.padding[0] == self.kernel_size[0] - 1
        )


def _columns(x: torch.Tensor, k: int) -> torch.Tensor:
    """(B, L + k - 1, C) -> (B, L, C * k) with columns[b, l, c * k + j] = x[b, l + j, c].

    Two ways to the same tensor: unfold (a view, copied by the reshape) where its backward is
    a fast kernel (CUDA); elsewhere k stacked slices, because on CPU unfold's backward is a
    scatter that took about a quarter of a training step of the demo network, while slices
    backpropagate as plain additions."""
    if x.is_cuda:
        return x.unfold(1, k, 1).flatten(2)
    n = x.shape[1] - k + 1
    return torch.stack([x[:, j : j + n] for j in range(k)], dim=-1).flatten(2)


def gated_hidden_dim(hidden_dim: int, multiple_of: int = 256) -> int:
    """SwiGLU width as in sd3-ref / MMAudio: 2/3 of the nominal width, rounded up to a multiple of
    `multiple_of` (MMAudio: 256; a much narrower network would have MLPs several times its width)."""
    h = int(2 * hidden_dim / 3)
    return multiple_of * ((h + multiple_of - 1) // multiple_of)


class MLP(nn.Module):
    """Gated MLP without biases: w2(silu(w1 x) * w3 x)."""

    def __init__(self, dim: int, hidden_dim: int, multiple_of: int = 256) -> None:
        super().__init__()
        h = gated_hidden_dim(hidden_dim, multiple_of)
        self.w1 = nn.Linear(dim, h, bias=False)
        self.w2 = nn.Linear(h, dim, bias=False)
        self.w3 = nn.Linear(dim, h, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.w2(F.silu(self.w1(x)) * self.w3(x))


class ConvMLP(nn.Module):
    """Gated MLP whose three projections are bias-free convolutions over the sequence."""

    def __init__(self, dim: int, hidden_dim: int, kernel_size: int = 3, multiple_of: int = 256) -> None:
        super().__init__()
        h = gated_hidden_dim(hidden_dim, multiple_of)
        pad = kernel_size // 2
        self.w1 = ChannelLastConv1d(dim, h, kernel_size, padding=pad, bias=False)
        self.w2 = ChannelLastConv1d(h, dim, kernel_size, padding=pad, bias=False)
        self.w3 = ChannelLastConv1d(dim, h, kernel_size, padding=pad, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.w2(F.silu(self.w1(x)) * self.w3(x))


class RMSNorm(nn.Module):
    """RMS norm over the last axis with a learned scale; eps = machine epsilon of the input dtype
    (nn.RMSNorm's default, as MMAudio uses). Written out so forward-mode AD always works."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        eps = torch.finfo(x.dtype).eps
        xf = at_least_fp32(x)
        y = xf * torch.rsqrt(xf.pow(2).mean(dim=-1, keepdim=True) + eps)
        return (y * self.weight.to(y.dtype)).to(x.dtype)


def modulate(x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    return x * (1 + scale) + shift


def timestep_frequencies(num_frequencies: int, max_period: float) -> torch.Tensor:
    """freqs[i] = (10000 / max_period) * 10000^(-2i / F), i < F/2 (MMAudio's TimestepEmbedder)."""
    exponents = torch.arange(0, num_frequencies, 2, dtype=torch.float32) / num_frequencies
    return (10000 / max_period) * (1.0 / (10000**exponents))


class TimestepEmbedder(nn.Module):
    """Sinusoidal embedding [cos, sin] of a scalar time (used as is, in [0, 1]) followed by an MLP.

    `freqs` is a non-persistent buffer derived from the constructor arguments.
    """

    def __init__(self, dim: int, num_frequencies: int, max_period: float) -> None:
        super().__init__()
        if num_frequencies % 2:
            raise ValueError(f"num_frequencies must be even, got {num_frequencies}")
        self.num_frequencies = num_frequencies
        self.max_period = max_period
        self.mlp = nn.Sequential(nn.Linear(num_frequencies, dim), nn.SiLU(), nn.Linear(dim, dim))
        self.register_buffer("freqs", timestep_frequencies(num_frequencies, max_period), persistent=False)

    def reset_buffers(self) -> None:
        """Recompute `freqs` in float32 on its current device (undoes a cast to a half type)."""
        self.freqs = timestep_frequencies(self.num_frequencies, self.max_period).to(self.freqs.device)

    def sinusoid(self, t: torch.Tensor) -> torch.Tensor:
        t = at_least_fp32(t)
        args = t[:, None] * self.freqs[None].to(t.dtype)
        return torch.cat([torch.cos(args), torch.sin(args)], dim=-1)

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        # MMAudio casts to t's dtype; casting to the weights' dtype also lets float32 times drive
        # a half-precision network (under autocast the linear layers recast anyway).
        return self.mlp(self.sinusoid(t).to(self.mlp[0].weight.dtype))


class GeluMlp(nn.Module):
    """The ViT (timm) MLP: fc1 -> exact GELU -> fc2. Key names fc1/fc2 as in the released
    MotionFormer, PaSST and HTS-AT checkpoints, which all use it."""

    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(F.gelu(self.fc1(x)))
