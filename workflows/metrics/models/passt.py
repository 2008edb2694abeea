"""PaSST (Koutini et al. 2022), the audio classifier behind FD_PaSST, KL_PaSST and IS_PaSST.

Follows hear21passt 0.0.26; checked against its outputs (tests/test_passt.py).

MMAudio's av-benchmark builds `hear21passt.base.get_basic_model(mode="all")`: the
`passt_s_swa_p16_128_ap476` network (PaSST-S, AudioSet, weights
`passt-s-f128-p16-s10-ap.476-swa.pt`) behind an `AugmentMelSTFT` front end. Each clip is
resampled to 32 kHz, cut or zero-padded to exactly 320000 samples (10 s), and the wrapper
returns `cat([logits, embedding])`; av-benchmark splits it into the 527 AudioSet logits
(KL and IS, through a softmax) and the 768-d embedding (FD). This module rebuilds both parts.

Front end (eval mode: no frequency-range jitter, no SpecAugment masks):
    pre-emphasis y[n] = x[n+1] - 0.97 x[n] (one sample shorter), STFT with n_fft 1024, a
    symmetric 800-sample Hann window centred in the 1024 frame, hop 320, centred frames with
    reflect padding, power |X|^2, Kaldi mel banks (128 bands, 0-15000 Hz: `fmax=None` becomes
    sr/2 - fmax_aug_range/2), log(mel + 1e-5), then (x + 4.5) / 5.
    10 s gives 1 + 319999 // 320 = 1000 frames.

Network (a DeiT-style ViT with PaSST's factorised positional embeddings):
    16x16 patches with stride 10x10 over (128 mels, T frames) -> a (12, 99) grid for T = 1000;
    a frequency embedding (1, D, 12, 1) and a time embedding (1, D, 1, 99) added to the grid (the
    time one cut when the clip is shorter), the grid flattened frequency-major, a class and a
    distillation token (each plus its own `new_pos_embed` row) in front; pre-norm blocks
    (LayerNorm eps 1e-6, qkv with bias, exact GELU, MLP ratio 4); a final LayerNorm.
    embedding = (class token + distillation token) / 2, logits = head(embedding) with
    head = LayerNorm (eps 1e-5) + Linear. `head_dist` is in the checkpoint but PaSST's forward
    never uses it; it is kept so that the released file loads strictly. Patchout only acts in
    training mode, so inference sees every patch; all dropout rates are 0.

Checkpoint: get_model builds PaSST and `load_state_dict(strict=True)`s the released file into
it before wrapping it, so the keys are the network's own, unprefixed (`cls_token`,
`patch_embed.proj.weight`, `blocks.0.attn.qkv.weight`, `head.1.bias`, `head_dist.weight`, ...;
159 entries for the full model). A state dict saved from the wrapper instead (keys `net.*` plus
`device_proxy`) is accepted too.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from dub.model.network.layers import GeluMlp
from dub.model.weights.state_dicts import read_state_dict, strict_load

__all__ = [
    "CLIP_SAMPLES",
    "PASST_S_SWA",
    "PASST_TINY",
    "SAMPLE_RATE",
    "Passt",
    "PasstConfig",
    "PasstMelFrontEnd",
    "PaSST",
    "checkpoint_shapes",
    "fit_clip",
    "kaldi_mel_banks",
    "load_passt",
]

SAMPLE_RATE = 32000
CLIP_SAMPLES = 320000  # 10 s: what av-benchmark feeds PaSST, whatever the clip length
N_FFT = 1024
WIN_LENGTH = 800
HOP = 320
N_MELS = 128
FMIN_HZ = 0.0
FMAX_HZ = SAMPLE_RATE // 2 - 2000 // 2  # get_basic_model: fmax=None with fmax_aug_range=2000 -> 15000 Hz
PREEMPHASIS = 0.97
LOG_OFFSET = 1e-5
NORM_SHIFT, NORM_SCALE = 4.5, 5.0  # "fast normalization" (x + 4.5) / 5


@dataclass(frozen=True)
class PasstConfig:
    """Sizes of the PaSST network. The positional embeddings are sized for an input of
    `input_mels` x `input_frames` (the released model: 128 x 998) as the reference does it,
    `size // stride` patches per axis."""

    embed_dim: int = 768
    depth: int = 12
    num_heads: int = 12
    mlp_ratio: float = 4.0
    num_classes: int = 527
    patch_size: int = 16
    stride: int = 10
    input_mels: int = N_MELS
    input_frames: int = 998

    def __post_init__(self) -> None:
        if self.embed_dim % self.num_heads:
            raise ValueError(f"embed_dim {self.embed_dim} is not divisible by num_heads {self.num_heads}")

    @property
    def freq_patches(self) -> int:
        return self.input_mels // self.stride

    @property
    def time_patches(self) -> int:
        return self.input_frames // self.stride

    def as_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping) -> PasstConfig:
        return cls(**dict(data))


PASST_S_SWA = PasstConfig()  # passt_s_swa_p16_128_ap476, the model av-benchmark uses
PASST_TINY = PasstConfig(embed_dim=32, depth=2, num_heads=4)  # tests: real geometry, tiny width


# ----------------------------------------------------------------------------- front end


def kaldi_mel_banks(
    n_mels: int = N_MELS,
    n_fft: int = N_FFT,
    sample_rate: int = SAMPLE_RATE,
    fmin: float = FMIN_HZ,
    fmax: float = FMAX_HZ,
) -> torch.Tensor:
    """(n_mels, n_fft // 2 + 1) float64 triangles, as `torchaudio.compliance.kaldi.get_mel_banks`
    builds them without VTLN warping and as AugmentMelSTFT pads them: triangles linear on the
    mel axis 1127 ln(1 + f/700), peak 1 (unnormalised), over the bins 0..n_fft/2 - 1; the
    Nyquist bin gets a zero column."""
    if not 0.0 <= fmin < fmax <= sample_rate / 2:
        raise ValueError(f"need 0 <= fmin < fmax <= Nyquist, got fmin={fmin}, fmax={fmax}, rate {sample_rate}")

    def mel(hz: torch.Tensor | float) -> torch.Tensor:
        return 1127.0 * torch.log1p(torch.as_tensor(hz, dtype=torch.float64) / 700.0)

    n_bins = n_fft // 2
    bin_mel = mel(torch.arange(n_bins, dtype=torch.float64) * (sample_rate / n_fft))[None, :]
    step = (mel(fmax) - mel(fmin)) / (n_mels + 1)
    band = torch.arange(n_mels, dtype=torch.float64)[:, None]
    left, centre, right = mel(fmin) + band * step, mel(fmin) + (band + 1) * step, mel(fmin) + (band + 2) * step
    rising = (bin_mel - left) / (centre - left)
    falling = (right - bin_mel) / (right - centre)
    weights = torch.clamp(torch.minimum(rising, falling), min=0.0)
    return F.pad(weights, (0, 1))


class PasstMelFrontEnd(nn.Module):
    """32 kHz waveform (B, L) -> normalised log mel (B, 128, 1 + (L - 1) // 320), eval-mode
    AugmentMelSTFT. It has no weights (the window and mel matrix are computed, not stored)."""

    def __init__(self) -> None:
        super().__init__()
        with torch.device("cpu"):  # real numbers even inside a meta-device context
            window = torch.hann_window(WIN_LENGTH, periodic=False)  # symmetric, as the reference
            mel = kaldi_mel_banks().float()
        self.register_buffer("window", window, persistent=False)
        self.register_buffer("mel", mel, persistent=False)

    def forward(self, wav: torch.Tensor) -> torch.Tensor:
        if wav.dim() != 2:
            raise ValueError(f"expected waveforms of shape (B, L), got {tuple(wav.shape)}")
        if wav.shape[-1] <= N_FFT // 2 + 1:  # centred reflect padding needs more than n_fft / 2 samples
            raise ValueError(f"PaSST's front end needs more than {N_FFT // 2 + 1} samples, got {wav.shape[-1]}")
        x = wav[:, 1:] - PREEMPHASIS * wav[:, :-1]
        spec = torch.stft(
            x,
            N_FFT,
            hop_length=HOP,
            win_length=WIN_LENGTH,
            window=self.window,
            center=True,
            pad_mode="reflect",
            normalized=False,
            return_complex=True,
        )
        spec = torch.view_as_real(spec)
        power = spec[..., 0].square() + spec[..., 1].square()  # (B, 513, T)
        log_mel = torch.log(torch.matmul(self.mel, power) + LOG_OFFSET)
        return (log_mel + NORM_SHIFT) / NORM_SCALE


# ----------------------------------------------------------------------------- network


class _PatchEmbed(nn.Module):
    """Only the conv: the key is `patch_embed.proj`."""

    def __init__(self, config: PasstConfig) -> None:
        super().__init__()
        self.proj = nn.Conv2d(1, config.embed_dim, kernel_size=config.patch_size, stride=config.stride)

    def forward(self, mel: torch.Tensor) -> torch.Tensor:
        return self.proj(mel)  # (B, D, F, T) grid


class _Attention(nn.Module):
    def __init__(self, dim: int, num_heads: int) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, d = x.shape
        q, k, v = self.qkv(x).reshape(b, n, 3, self.num_heads, d // self.num_heads).permute(2, 0, 3, 1, 4)
        out = F.scaled_dot_product_attention(q, k, v)  # softmax(q k^T / sqrt(head_dim)) v
        return self.proj(out.transpose(1, 2).reshape(b, n, d))


class _Block(nn.Module):
    def __init__(self, config: PasstConfig) -> None:
        super().__init__()
        dim = config.embed_dim
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.attn = _Attention(dim, config.num_heads)
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = GeluMlp(dim, int(dim * config.mlp_ratio))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class PaSST(nn.Module):
    """Normalised log mel (B, 128, T) -> (embedding (B, D), logits (B, classes)). Parameter
    names are the released checkpoint's."""

    def __init__(self, config: PasstConfig = PASST_S_SWA) -> None:
        super().__init__()
        self.config = config
        d = config.embed_dim
        self.patch_embed = _PatchEmbed(config)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, d))
        self.dist_token = nn.Parameter(torch.zeros(1, 1, d))
        self.new_pos_embed = nn.Parameter(torch.zeros(1, 2, d))  # class and distillation tokens
        self.freq_new_pos_embed = nn.Parameter(torch.zeros(1, d, config.freq_patches, 1))
        self.time_new_pos_embed = nn.Parameter(torch.zeros(1, d, 1, config.time_patches))
        self.blocks = nn.ModuleList(_Block(config) for _ in range(config.depth))
        self.norm = nn.LayerNorm(d, eps=1e-6)
        self.head = nn.Sequential(nn.LayerNorm(d), nn.Linear(d, config.num_classes))
        self.head_dist = nn.Linear(d, config.num_classes)  # trained, stored, unused at inference

    def tokens(self, mel: torch.Tensor) -> torch.Tensor:
        """(B, mels, T) -> (B, 2 + F * T', D) after the final norm."""
        if mel.dim() != 3 or mel.shape[1] != self.config.input_mels:
            raise ValueError(f"expected log mel of shape (B, {self.config.input_mels}, T), got {tuple(mel.shape)}")
        grid = self.patch_embed(mel[:, None])
        if grid.shape[2] != self.config.freq_patches:
            raise ValueError(
                f"{mel.shape[1]} mel bands give {grid.shape[2]} frequency patches; the frequency "
                f"embedding has {self.config.freq_patches}"
            )
        if grid.shape[3] > self.config.time_patches:
            raise ValueError(
                f"{mel.shape[2]} frames give {grid.shape[3]} time patches; the time embedding has "
                f"only {self.config.time_patches} (at most ~{self.config.input_frames + 2} frames, 10 s)"
            )
        grid = grid + self.time_new_pos_embed[..., : grid.shape[3]] + self.freq_new_pos_embed
        x = grid.flatten(2).transpose(1, 2)  # frequency-major patch order
        b = x.shape[0]
        cls = (self.cls_token + self.new_pos_embed[:, :1]).expand(b, -1, -1)
        dist = (self.dist_token + self.new_pos_embed[:, 1:]).expand(b, -1, -1)
        x = torch.cat([cls, dist, x], dim=1)
        for block in self.blocks:
            x = block(x)
        return self.norm(x)

    def forward(self, mel: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = self.tokens(mel)
        embedding = (x[:, 0] + x[:, 1]) / 2
        return embedding, self.head(embedding)


class Passt(nn.Module):
    """Waveform -> (embedding, logits): `mel` then `net`, as hear21passt's PasstBasicWrapper
    (whose mode="all" output is cat([logits, embedding])). Only `net` has weights."""

    def __init__(self, config: PasstConfig = PASST_S_SWA, net: PaSST | None = None) -> None:
        super().__init__()
        if net is not None and net.config != config:
            raise ValueError(f"network built for {net.config}, not {config}")
        self.mel = PasstMelFrontEnd()
        self.net = net if net is not None else PaSST(config)

    @property
    def config(self) -> PasstConfig:
        return self.net.config

    def forward(self, wav: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, L) waveforms at 32 kHz (av-benchmark: L = 320000, see `fit_clip`) ->
        (embedding (B, D), logits (B, classes))."""
        return self.net(self.mel(wav))


def fit_clip(wav: torch.Tensor, samples: int = CLIP_SAMPLES) -> torch.Tensor:
    """Cut the last axis to `samples`, or zero-pad it at the end, as av-benchmark does before PaSST."""
    if wav.shape[-1] >= samples:
        return wav[..., :samples]
    return F.pad(wav, (0, samples - wav.shape[-1]))


# ----------------------------------------------------------------------------- loading


def _unwrap_wrapper_keys(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A PasstBasicWrapper state dict (`net.*` plus the `device_proxy` placeholder) -> the
    network's own keys; anything else is returned as is."""
    rest = [k for k in state if k != "device_proxy"]
    if rest and all(k.startswith("net.") for k in rest):
        return {k[len("net.") :]: v for k, v in state.items() if k != "device_proxy"}
    return state


def load_passt(path: str | Path, config: PasstConfig = PASST_S_SWA, device: str = "cpu") -> Passt:
    """PaSST from the released `passt-s-f128-p16-s10-ap.476-swa.pt` (a plain state dict, read
    weights-only; `{"model": ...}` is unwrapped like the reference filter does) or a
    `.safetensors` file of the same keys. Every key must match: missing, unexpected or
    mis-shaped entries raise ValueError naming them."""
    state = read_state_dict(path, strip=("module.",), what="PaSST weights file")
    if "cls_token" not in state and "net.cls_token" not in state:
        raise ValueError(
            f"{path} holds no PaSST state dict (no 'cls_token'; keys: {sorted(state)[:8]}); "
            "expected passt-s-f128-p16-s10-ap.476-swa.pt or its safetensors conversion"
        )
    state = _unwrap_wrapper_keys({k: v.float() for k, v in state.items()})
    with torch.device("meta"):  # no random init of weights about to be overwritten
        net = PaSST(config)
    strict_load(net, state, str(path), against=f"PaSST {config}")
    return Passt(config, net).eval().to(device)


def checkpoint_shapes(config: PasstConfig = PASST_S_SWA) -> dict[str, tuple[int, ...]]:
    """Key -> shape of the released state dict for `config`, without allocating the weights."""
    with torch.device("meta"):
        return {k: tuple(v.shape) for k, v in PaSST(config).state_dict().items()}
