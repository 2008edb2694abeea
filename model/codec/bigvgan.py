"""BigVGAN / BigVGAN-v2 vocoder for inference: mel (B, num_mels, T) -> wav (B, 1, hop * T).

Follows MMAudio 1.0.0's BigVGAN (16 kHz, `mmaudio/ext/bigvgan/`) and NVIDIA BigVGAN-v2 (44.1 kHz); checked against the publisher's fixtures (tests/test_codec.py).

Checkpoints store weight-normalised convs, either as `<name>.weight_g` / `<name>.weight_v`
(torch.nn.utils.weight_norm) or `<name>.parametrizations.weight.original0/1` (the
parametrizations API). `load_bigvgan` folds both into plain weights, W = g * v / ||v||, so the
module itself holds ordinary convolutions and key names `<name>.weight`.
"""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch
import torch.nn as nn
import torch.nn.functional as F

from dub.model.kernels.switch import KernelSwitch, self_check_tolerance, self_check_verdict
from dub.model.weights.state_dicts import read_state_dict, strict_load

_SNAKE_EPS = 1e-9
ActivationForm = Literal["auto", "polyphase", "reference"]
_FILTER_TAPS = 12  # anti-aliasing filter length used by every released BigVGAN


@dataclass(frozen=True)
class BigVGANConfig:
    num_mels: int
    upsample_rates: tuple[int, ...]
    upsample_kernel_sizes: tuple[int, ...]
    upsample_initial_channel: int
    resblock_kernel_sizes: tuple[int, ...]
    resblock_dilation_sizes: tuple[tuple[int, ...], ...]
    resblock: Literal["1", "2"] = "1"
    activation: Literal["snake", "snakebeta"] = "snakebeta"
    snake_logscale: bool = True
    use_tanh_at_final: bool = True  # False (v2 44 kHz): clamp to [-1, 1] instead
    use_bias_at_final: bool = True
    sampling_rate: int | None = None

    def __post_init__(self) -> None:
        if self.resblock not in ("1", "2"):
            raise ValueError(f"BigVGAN resblock must be '1' or '2', got {self.resblock!r}")
        if self.activation not in ("snake", "snakebeta"):
            raise ValueError(f"BigVGAN activation must be 'snake' or 'snakebeta', got {self.activation!r}")
        # BigVGAN zips these pairs, so surplus entries of the second list are ignored there (and
        # here); a shorter second list leaves the reference indexing past its module lists.
        if len(self.upsample_kernel_sizes) < len(self.upsample_rates):
            raise ValueError("upsample_kernel_sizes needs an entry for every upsample rate")
        if len(self.resblock_dilation_sizes) < len(self.resblock_kernel_sizes):
            raise ValueError("resblock_dilation_sizes needs an entry for every resblock kernel size")
        # No divisibility condition on upsample_initial_channel: stage i has
        # upsample_initial_channel // 2**(i + 1) channels, floor division, as in BigVGAN.

    @property
    def hop_size(self) -> int:
        return math.prod(self.upsample_rates)

    @classmethod
    def mmaudio_16k(cls) -> BigVGANConfig:
        """MMAudio's 16 kHz vocoder (`best_netG.pt`, mmaudio/ext/bigvgan/bigvgan_vocoder.yml)."""
        return cls(
            num_mels=80,
            upsample_rates=(4, 4, 2, 2, 2, 2),
            upsample_kernel_sizes=(8, 8, 4, 4, 4, 4),
            upsample_initial_channel=1536,
            resblock_kernel_sizes=(3, 7, 11),
            resblock_dilation_sizes=((1, 3, 5),) * 3,
            sampling_rate=16_000,
        )

    @classmethod
    def bigvgan_v2_44k_128band_512x(cls) -> BigVGANConfig:
        """nvidia/bigvgan_v2_44khz_128band_512x (its config.json): no final tanh, no final bias."""
        return cls(
            num_mels=128,
            upsample_rates=(8, 4, 2, 2, 2, 2),
            upsample_kernel_sizes=(16, 8, 4, 4, 4, 4),
            upsample_initial_channel=1536,
            resblock_kernel_sizes=(3, 7, 11),
            resblock_dilation_sizes=((1, 3, 5),) * 3,
            use_tanh_at_final=False,
            use_bias_at_final=False,
            sampling_rate=44_100,
        )

    def as_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> BigVGANConfig:
        """The publisher's config.json layout; training-only fields are ignored."""
        return cls(
            num_mels=int(d["num_mels"]),
            upsample_rates=tuple(int(x) for x in d["upsample_rates"]),
            upsample_kernel_sizes=tuple(int(x) for x in d["upsample_kernel_sizes"]),
            upsample_initial_channel=int(d["upsample_initial_channel"]),
            resblock_kernel_sizes=tuple(int(x) for x in d["resblock_kernel_sizes"]),
            resblock_dilation_sizes=tuple(tuple(int(x) for x in ds) for ds in d["resblock_dilation_sizes"]),
            # BigVGAN builds AMPBlock1 for "1" and AMPBlock2 for any other value
            resblock="1" if str(d.get("resblock", "1")) == "1" else "2",
            activation=d.get("activation", "snakebeta"),
            snake_logscale=bool(d.get("snake_logscale", True)),
            use_tanh_at_final=bool(d.get("use_tanh_at_final", True)),
            use_bias_at_final=bool(d.get("use_bias_at_final", True)),
            sampling_rate=None if d.get("sampling_rate") is None else int(d["sampling_rate"]),
        )

    @classmethod
    def from_json(cls, path: str | Path) -> BigVGANConfig:
        with open(path) as f:
            return cls.from_dict(json.load(f))


def kaiser_sinc_filter(cutoff: float, half_width: float, taps: int) -> torch.Tensor:
    """(1, 1, taps) Kaiser-windowed sinc low-pass (cutoff in cycles/sample), unit DC gain."""
    half = taps // 2
    attenuation = 2.285 * (half - 1) * math.pi * 4 * half_width + 7.95
    if attenuation > 50.0:
        beta = 0.1102 * (attenuation - 8.7)
    elif attenuation >= 21.0:
        beta = 0.5842 * (attenuation - 21) ** 0.4 + 0.07886 * (attenuation - 21.0)
    else:
        beta = 0.0
    window = torch.kaiser_window(taps, beta=beta, periodic=False, dtype=torch.float64)
    t = (
        torch.arange(-half, half, dtype=torch.float64) + 0.5
        if taps % 2 == 0
        else torch.arange(taps, dtype=torch.float64) - half
    )
    f = 2 * cutoff * window * torch.sinc(2 * cutoff * t)
    return (f / f.sum()).to(torch.float32).view(1, 1, taps)


class Snake(nn.Module):
    """x + sin^2(a x) / b per channel; snakebeta has its own b, snake uses b = a."""

    def __init__(self, channels: int, with_beta: bool, logscale: bool) -> None:
        super().__init__()
        self.logscale = logscale
        init = torch.zeros(channels) if logscale else torch.ones(channels)
        self.alpha = nn.Parameter(init.clone())
        self.beta = nn.Parameter(init.clone()) if with_beta else None

    def frequency_and_inverse_beta(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(a, 1 / (b + eps)) per channel in float32, log scale applied: what fused kernels take."""
        alpha = self.alpha.float()
        beta = alpha if self.beta is None else self.beta.float()
        if self.logscale:
            alpha, beta = torch.exp(alpha), torch.exp(beta)
        return alpha, 1.0 / (beta + _SNAKE_EPS)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: (B, C, ...) with the channel on dim 1."""
        shape = (1, -1) + (1,) * (x.ndim - 2)
        alpha = self.alpha.view(shape)
        beta = alpha if self.beta is None else self.beta.view(shape)
        if self.logscale:
            alpha, beta = torch.exp(alpha), torch.exp(beta)
        return x + torch.sin(x * alpha).pow(2) / (beta + _SNAKE_EPS)


class _UpSample2x(nn.Module):
    """BigVGAN's UpSample1d(2): replicate pad, transposed conv with the filter, crop, gain 2.

    Holds the filter under the checkpoint's key; its forward is the direct definition, which
    `AntiAliasedActivation` computes polyphase instead (tests compare the two)."""

    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("filter", kaiser_sinc_filter(0.25, 0.3, _FILTER_TAPS))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        taps, channels = self.filter.shape[-1], x.shape[1]
        pad = taps // 2 - 1
        crop_left = 2 * pad + (taps - 2) // 2
        crop_right = 2 * pad + (taps - 1) // 2
        x = F.pad(x, (pad, pad), mode="replicate")
        x = 2 * F.conv_transpose1d(x, self.filter.expand(channels, -1, -1), stride=2, groups=channels)
        return x[..., crop_left : x.shape[-1] - crop_right]


class _LowPass2x(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("filter", kaiser_sinc_filter(0.25, 0.3, _FILTER_TAPS))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        taps, channels = self.filter.shape[-1], x.shape[1]
        x = F.pad(x, (taps // 2 - (taps % 2 == 0), taps // 2), mode="replicate")
        return F.conv1d(x, self.filter.expand(channels, -1, -1), stride=2, groups=channels)


class _DownSample2x(nn.Module):
    """BigVGAN's DownSample1d(2) (the filter sits one level down, as in the checkpoints)."""

    def __init__(self) -> None:
        super().__init__()
        self.lowpass = _LowPass2x()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.lowpass(x)


_POLY_PAD = 3  # x samples each polyphase branch reaches either side (12 taps / 2 phases / 2)
_POLY_TAPS = 2 * _POLY_PAD + 1


def polyphase_weights(up_filter: torch.Tensor, down_filter: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The 2x up/down filters as two 7-tap phases each: (2, 7) for the upsampler (gain 2 folded
    in; row 0 makes the even output samples, row 1 the odd) and (2, 7) for the low-pass (row 0
    reads the even samples, row 1 the odd). Derived from BigVGAN's padding and crop arithmetic
    for 12-tap filters: up[2p] = 2 sum_j h[2j+1] x[p+2-j], up[2p+1] = 2 sum_j h[2j] x[p+3-j],
    out[k] = sum_j g[2j+1] s[2(k+j-2)] + g[2j] s[2(k+j-3)+1], indices clamped at the edges."""
    h, g = up_filter.reshape(-1).float(), down_filter.reshape(-1).float()
    if h.numel() != _FILTER_TAPS or g.numel() != _FILTER_TAPS:
        raise ValueError(f"the polyphase activation needs {_FILTER_TAPS}-tap filters, got {h.numel()} and {g.numel()}")
    up = torch.zeros(2, _POLY_TAPS)
    down = torch.zeros(2, _POLY_TAPS)
    for j in range(_FILTER_TAPS // 2):
        up[0, 5 - j] = 2 * h[2 * j + 1]
        up[1, 6 - j] = 2 * h[2 * j]
        down[0, j + 1] = g[2 * j + 1]
        down[1, j] = g[2 * j]
    return up, down


class AntiAliasedActivation(nn.Module):
    """Snake evaluated at twice the sample rate to keep its harmonics from aliasing.

    Computed polyphase: the even and odd samples of the 2x signal are two 7-tap filters of x,
    Snake runs on both phases, and the low-pass + decimation is a 7-tap filter of each phase,
    summed. Same numbers as BigVGAN's upsample -> snake -> downsample (edge replication
    included) without the transposed depthwise conv, the 2x-long padded copies and the gain
    pass that dominated the vocoder's GPU time (profile in docs/benchmarks.md). Three ways to
    run it, same numbers: on CUDA without autograd, two Triton passes (`dub.model.kernels.bigvgan_triton`);
    under torch.compile, shifted sums that Inductor fuses into one kernel; otherwise two
    grouped convs. `form` ("auto", "polyphase", "reference") pins one for benchmarks.
    """

    def __init__(self, channels: int, config: BigVGANConfig) -> None:
        super().__init__()
        self.channels = channels
        self.upsample = _UpSample2x()
        self.act = Snake(channels, config.activation == "snakebeta", config.snake_logscale)
        self.downsample = _DownSample2x()
        self.register_buffer("phase_taps", torch.empty(2, 2, _POLY_TAPS), persistent=False)  # [up, down]
        self.register_buffer("up_weight", torch.empty(2 * channels, 1, _POLY_TAPS), persistent=False)
        self.register_buffer("down_weight", torch.empty(channels, 2, _POLY_TAPS), persistent=False)
        self.refresh_polyphase_weights()
        # Checkpoints may carry the filters: derive the phases from what was loaded.
        self.register_load_state_dict_post_hook(lambda module, _keys: module.refresh_polyphase_weights())
        self.form: ActivationForm = "auto"

    @torch.no_grad()
    def refresh_polyphase_weights(self) -> None:
        up, down = polyphase_weights(self.upsample.filter, self.downsample.lowpass.filter)
        self.phase_taps.copy_(torch.stack([up, down]))
        self.up_weight.copy_(up.repeat(self.channels, 1).unsqueeze(1))
        self.down_weight.copy_(down.expand(self.channels, 2, _POLY_TAPS))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.form == "reference":
            return self.reference_forward(x)
        if torch.compiler.is_compiling():
            return self._shifted_sums_forward(x)
        if self.form == "auto" and x.is_cuda and not torch.is_grad_enabled() and FUSED_ACTIVATION.usable_for(x):
            try:
                return self._fused_kernel_forward(x)
            except Exception as exc:  # noqa: BLE001 - a Triton build problem: the convs compute the same
                FUSED_ACTIVATION.disable(exc)
        return self._grouped_conv_forward(x)

    def _grouped_conv_forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, t = x.shape
        up = F.conv1d(F.pad(x, (_POLY_PAD, _POLY_PAD), mode="replicate"), self.up_weight.to(x.dtype), groups=c)
        s = _pad_phases(self.act(up.view(b, c, 2, t)))
        return F.conv1d(s.view(b, 2 * c, t + 2 * _POLY_PAD), self.down_weight.to(s.dtype), groups=c)

    def _fused_kernel_forward(self, x: torch.Tensor) -> torch.Tensor:
        from dub.model.kernels import bigvgan_triton

        alpha, inv_beta = self.act.frequency_and_inverse_beta()
        up, down = self.phase_taps.unbind(0)
        return bigvgan_triton.anti_aliased_snake(x, alpha, inv_beta, up, down)

    def _shifted_sums_forward(self, x: torch.Tensor) -> torch.Tensor:
        t = x.shape[-1]
        up, down = self.phase_taps.to(x.dtype).unbind(0)
        xp = F.pad(x, (_POLY_PAD, _POLY_PAD), mode="replicate")
        phases = torch.stack([_fir(xp, up[0], t), _fir(xp, up[1], t)], dim=2)
        s = _pad_phases(self.act(phases))
        return _fir(s[:, :, 0], down[0], t) + _fir(s[:, :, 1], down[1], t)

    def reference_forward(self, x: torch.Tensor) -> torch.Tensor:
        """BigVGAN's own order of operations (for tests and benchmarks)."""
        return self.downsample(self.act(self.upsample(x)))


@contextmanager
def activation_form(module: nn.Module, form: ActivationForm) -> Iterator[None]:
    """Run every AntiAliasedActivation in `module` as `form` (to measure what each form saves,
    `dub bench generate`): "reference" = BigVGAN's upsample -> snake -> downsample, "polyphase" =
    the grouped convs (no Triton kernel), "auto" = the Triton kernels on CUDA when they work."""
    acts = [m for m in module.modules() if isinstance(m, AntiAliasedActivation)]
    before = [act.form for act in acts]
    for act in acts:
        act.form = form
    try:
        yield
    finally:
        for act, old in zip(acts, before):
            act.form = old


@torch.no_grad()
def _check_fused_activation(device: torch.device, dtype: torch.dtype) -> str | None:
    """The kernels against the grouped convs (in float32) on a random Snake-beta activation."""
    generator = torch.Generator().manual_seed(0)
    act = AntiAliasedActivation(8, BigVGANConfig.mmaudio_16k())
    act.act.alpha.copy_(0.5 * torch.randn(act.act.alpha.shape, generator=generator))
    if act.act.beta is not None:
        act.act.beta.copy_(0.5 * torch.randn(act.act.beta.shape, generator=generator))
    act = act.to(device)
    x = (3 * torch.randn(2, 8, 1000, generator=generator)).to(device=device, dtype=dtype)
    return self_check_verdict(
        act._fused_kernel_forward(x), act._grouped_conv_forward(x.float()), self_check_tolerance(dtype)
    )


FUSED_ACTIVATION = KernelSwitch(
    "BigVGAN's fused Triton activation",
    "DUB_BIGVGAN_TRITON",
    "dub.model.kernels.bigvgan_triton",
    "grouped convs",
    self_check=_check_fused_activation,
)


def activation_status(device: str | torch.device) -> str:
    """How AntiAliasedActivation runs eagerly on `device` (for benchmark notes and logs)."""
    return FUSED_ACTIVATION.describe(
        torch.device(device).type, "Triton kernels (phases, low-pass)", "polyphase grouped convs"
    )


def _pad_phases(s: torch.Tensor) -> torch.Tensor:
    """(B, C, 2, T) -> (B, C, 2, T + 6): the low-pass pads the 2x signal by replicating its
    first and last samples, which are the even phase's first and the odd phase's last."""
    b, c, _, _ = s.shape
    first = s[:, :, :1, :1].expand(b, c, 2, _POLY_PAD)
    last = s[:, :, 1:, -1:].expand(b, c, 2, _POLY_PAD)
    return torch.cat([first, s, last], dim=-1)


def _fir(x: torch.Tensor, taps: torch.Tensor, length: int) -> torch.Tensor:
    """sum_i taps[i] * x[..., i : i + length]: a 1-D correlation as pointwise ops Inductor fuses."""
    return sum(taps[i] * x[..., i : i + length] for i in range(taps.shape[0]))


def _same_conv(channels: int, kernel: int, dilation: int) -> nn.Conv1d:
    return nn.Conv1d(channels, channels, kernel, dilation=dilation, padding=(kernel * dilation - dilation) // 2)


class AMPBlock1(nn.Module):
    def __init__(self, channels: int, kernel: int, dilations: tuple[int, ...], config: BigVGANConfig) -> None:
        super().__init__()
        self.convs1 = nn.ModuleList(_same_conv(channels, kernel, d) for d in dilations)
        self.convs2 = nn.ModuleList(_same_conv(channels, kernel, 1) for _ in dilations)
        self.activations = nn.ModuleList(AntiAliasedActivation(channels, config) for _ in range(2 * len(dilations)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for j, (c1, c2) in enumerate(zip(self.convs1, self.convs2)):
            x = x + c2(self.activations[2 * j + 1](c1(self.activations[2 * j](x))))
        return x


class AMPBlock2(nn.Module):
    def __init__(self, channels: int, kernel: int, dilations: tuple[int, ...], config: BigVGANConfig) -> None:
        super().__init__()
        self.convs = nn.ModuleList(_same_conv(channels, kernel, d) for d in dilations)
        self.activations = nn.ModuleList(AntiAliasedActivation(channels, config) for _ in dilations)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for conv, act in zip(self.convs, self.activations):
            x = x + conv(act(x))
        return x


class BigVGAN(nn.Module):
    def __init__(self, config: BigVGANConfig) -> None:
        super().__init__()
        self.config = config
        c0 = config.upsample_initial_channel
        self.conv_pre = nn.Conv1d(config.num_mels, c0, 7, padding=3)
        self.ups = nn.ModuleList(
            nn.ModuleList([nn.ConvTranspose1d(c0 // 2**i, c0 // 2 ** (i + 1), k, u, padding=(k - u) // 2)])
            for i, (u, k) in enumerate(zip(config.upsample_rates, config.upsample_kernel_sizes))
        )
        block_cls = AMPBlock1 if config.resblock == "1" else AMPBlock2
        self.resblocks = nn.ModuleList(
            block_cls(c0 // 2 ** (i + 1), k, tuple(d), config)
            for i in range(len(config.upsample_rates))
            for k, d in zip(config.resblock_kernel_sizes, config.resblock_dilation_sizes)
        )
        channels = c0 // 2 ** len(config.upsample_rates)
        self.activation_post = AntiAliasedActivation(channels, config)
        self.conv_post = nn.Conv1d(channels, 1, 7, padding=3, bias=config.use_bias_at_final)

    @property
    def hop_size(self) -> int:
        return self.config.hop_size

    def forward(self, mel: torch.Tensor) -> torch.Tensor:
        if mel.ndim != 3 or mel.shape[1] != self.config.num_mels:
            raise ValueError(f"BigVGAN expects mel (B, {self.config.num_mels}, T), got {tuple(mel.shape)}")
        x = self.conv_pre(mel)
        n = len(self.config.resblock_kernel_sizes)
        for i, up in enumerate(self.ups):
            x = up[0](x)
            x = sum(self.resblocks[i * n + j](x) for j in range(n)) / n
        x = self.conv_post(self.activation_post(x))
        return torch.tanh(x) if self.config.use_tanh_at_final else x.clamp(-1.0, 1.0)


_WN_STYLES = {
    "parametrizations": (".parametrizations.weight.original0", ".parametrizations.weight.original1"),
    "legacy": (".weight_g", ".weight_v"),
}


def fold_weight_norm(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Replace every (g, v) pair, in either key style, by `<name>.weight` = g * v / ||v||.

    The norm runs over all dims but 0, as torch's weight_norm(dim=0) does; for transposed convs
    dim 0 is the input channel, so g has shape (in, 1, 1) there.
    """
    out: dict[str, torch.Tensor] = {}
    pending: dict[str, dict[int, torch.Tensor]] = {}
    for key, value in state.items():
        for g_suffix, v_suffix in _WN_STYLES.values():
            if key.endswith(g_suffix):
                pending.setdefault(key[: -len(g_suffix)], {})[0] = value
                break
            if key.endswith(v_suffix):
                pending.setdefault(key[: -len(v_suffix)], {})[1] = value
                break
        else:
            out[key] = value
    for name, pair in pending.items():
        if len(pair) != 2:
            raise KeyError(f"weight-norm parameters of {name!r} are incomplete: need both g and v")
        g, v = pair[0].to(torch.float32), pair[1].to(torch.float32)
        norm = torch.linalg.vector_norm(v, dim=list(range(1, v.ndim)), keepdim=True)
        out[f"{name}.weight"] = (g * v / norm).to(pair[1].dtype)
    return out


def weight_norm_state_dict(
    model: BigVGAN, style: Literal["parametrizations", "legacy"] = "parametrizations"
) -> dict[str, torch.Tensor]:
    """The model's state dict in checkpoint layout (g = ||W||, v = W per dim-0 slice), e.g. to publish
    fine-tuned weights that the reference BigVGAN code can load."""
    g_suffix, v_suffix = _WN_STYLES[style]
    conv_names = {name for name, m in model.named_modules() if isinstance(m, (nn.Conv1d, nn.ConvTranspose1d))}
    out: dict[str, torch.Tensor] = {}
    for key, value in model.state_dict().items():
        name, _, leaf = key.rpartition(".")
        if leaf == "weight" and name in conv_names:
            out[name + g_suffix] = torch.linalg.vector_norm(value, dim=list(range(1, value.ndim)), keepdim=True)
            out[name + v_suffix] = value.clone()
        else:
            out[key] = value.clone()
    return out


def load_bigvgan(weights: str | Path | Mapping[str, Any], config: BigVGANConfig | str | Path) -> BigVGAN:
    """BigVGAN from a generator checkpoint (bare, or under "generator" as both MMAudio's
    `best_netG.pt` and NVIDIA's `bigvgan_generator.pt` store it), weight norm folded away.

    Weight-norm keys may use either style; already-folded `<name>.weight` keys load as they are.
    The anti-aliasing filters are fixed constants: taken from the checkpoint when present.
    """
    if not isinstance(config, BigVGANConfig):
        config = BigVGANConfig.from_json(config)
    state = fold_weight_norm(read_state_dict(weights, expect_key="conv_pre.bias"))
    model = BigVGAN(config)
    strict_load(
        model,
        state,
        "BigVGAN checkpoint",
        detail=" config",
        hint="Check num_mels, upsample_initial_channel, resblock, activation and use_bias_at_final in the config.",
        may_be_missing=_is_filter_key,
    )
    return model.eval()


def _is_filter_key(key: str) -> bool:
    return key.endswith(".filter")
