"""HTS-AT (Chen et al. 2022), the Swin-Transformer audio tower of LAION-CLAP, with its log-mel front end.

Follows laion_clap 1.1.7; checked against its outputs (tests/test_clap.py, tests/data/clap_fixture).

Parameter and buffer names follow LAION-CLAP's `HTSAT_Swin_Transformer` (the CLAP checkpoint
holds them under `audio_branch.`), so a released checkpoint loads strictly, constant buffers
included (`relative_position_index`, the shifted blocks' `attn_mask`, the STFT kernels and the
mel matrix are all in the file).

Non-fusion inference path (`enable_fusion=False`), the one av-benchmark uses:

1. front end (torchlibrosa's, frozen): 10 s at 48 kHz (480000 samples) -> centred conv1d STFT
   (periodic Hann, window 1024, hop 480, reflect padding) -> power -> 64 slaney mel bands over
   50-14000 Hz (librosa's filters, `melW` (513, 64)) -> 10 log10(max(mel, 1e-10)) (ref 1, no
   top-dB) -> (B, 1, 1001, 64);
2. `bn0`: BatchNorm over the 64 mel bands (running statistics);
3. to a 256 x 256 "image": bicubic resize (align_corners=True) of the time axis to
   spec_size * freq_ratio = 1024 frames (freq_ratio = spec_size // mel_bins = 4), then the four
   256-frame quarters stacked along the frequency axis (rows 0-63 = frames 0-255 over all mels, ...);
4. patch embedding (4 x 4 conv, stride 4, LayerNorm) -> 64 x 64 tokens of 128 channels;
5. four Swin stages (depths 2, 2, 12, 2; heads 4, 8, 16, 32; window 8; odd blocks shifted by
   4; relative position bias; patch merging between stages) -> 8 x 8 tokens of 1024 channels;
6. final LayerNorm, and the **embedding** = the mean over all tokens (the `latent_output` that
   CLAP's `audio_projection` reads; HTS-AT's token-semantic grouping before that average only
   permutes tokens). The tscam head (`tscam_conv`, `head`) gives AudioSet class outputs CLAP
   does not use; it is kept so the checkpoint loads strictly.

Training-only parts (SpecAugment, mixup, dropout, stochastic depth) are omitted.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import nn

from dub.model.network.layers import GeluMlp

__all__ = ["HTSAT_BASE", "HTSATConfig", "HTSATEncoder", "HTSAT_TINY"]


@dataclass(frozen=True)
class HTSATConfig:
    # front end (LAION-CLAP's HTSAT-base.json audio_cfg)
    sample_rate: int = 48000
    clip_samples: int = 480000  # 10 s: what the non-fusion model sees after repeat-padding / cropping
    window_size: int = 1024
    hop_size: int = 480
    mel_bins: int = 64
    fmin: float = 50.0
    fmax: float = 14000.0
    # Swin tower (create_htsat_model("base"))
    spec_size: int = 256
    patch_size: int = 4
    embed_dim: int = 128
    depths: tuple[int, ...] = (2, 2, 12, 2)
    num_heads: tuple[int, ...] = (4, 8, 16, 32)
    window: int = 8
    mlp_ratio: float = 4.0
    num_classes: int = 527

    @property
    def freq_ratio(self) -> int:
        return self.spec_size // self.mel_bins

    @property
    def num_features(self) -> int:
        """Width of the embedding (1024 for HTSAT-base)."""
        return self.embed_dim * 2 ** (len(self.depths) - 1)

    @property
    def frames(self) -> int:
        """STFT frames of one clip (centred: 1 + L // hop)."""
        return 1 + self.clip_samples // self.hop_size

    def validate(self) -> None:
        if len(self.depths) != len(self.num_heads):
            raise ValueError(f"depths {self.depths} and num_heads {self.num_heads} differ in length")
        if self.freq_ratio < 1 or self.spec_size % self.mel_bins:
            raise ValueError(f"spec_size {self.spec_size} must be a multiple of mel_bins {self.mel_bins}")
        if self.frames > self.spec_size * self.freq_ratio:
            raise ValueError(
                f"{self.frames} frames do not fit the {self.spec_size * self.freq_ratio}-frame input of the Swin tower"
            )
        grid = self.spec_size // self.patch_size
        if grid % 2 ** (len(self.depths) - 1):
            raise ValueError(f"a {grid} x {grid} token grid cannot be merged {len(self.depths) - 1} times")
        for i, heads in enumerate(self.num_heads):
            if (self.embed_dim * 2**i) % heads:
                raise ValueError(f"stage {i}: width {self.embed_dim * 2**i} not divisible by {heads} heads")

    def as_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> HTSATConfig:
        data = dict(data)
        for key in ("depths", "num_heads"):
            if key in data:
                data[key] = tuple(data[key])
        return cls(**data)


HTSAT_BASE = HTSATConfig()
# the real front end and geometry (4 stages, 64 -> 8 tokens a side, unshifted last stage) at a
# width that runs in milliseconds: for tests
HTSAT_TINY = HTSATConfig(embed_dim=4, depths=(2, 2, 2, 2), num_heads=(1, 1, 2, 2), num_classes=5)


# ------------------------------------------------------------------------------ front end


class _Stft(nn.Module):
    """DFT rows times a periodic Hann window as conv1d kernels, as torchlibrosa's frozen STFT."""

    def __init__(self, n_fft: int, hop: int) -> None:
        super().__init__()
        n_freq = n_fft // 2 + 1
        self.hop = hop
        n = torch.arange(n_fft, dtype=torch.float64)
        k = torch.arange(n_freq, dtype=torch.float64)[:, None]
        window = 0.5 - 0.5 * torch.cos(2 * math.pi * n / n_fft)
        phase = 2 * math.pi * ((k * n) % n_fft) / n_fft  # reduced mod n_fft: exact angles
        self.conv_real = nn.Conv1d(1, n_freq, n_fft, stride=hop, bias=False)
        self.conv_imag = nn.Conv1d(1, n_freq, n_fft, stride=hop, bias=False)
        with torch.no_grad():
            self.conv_real.weight.copy_((torch.cos(phase) * window)[:, None, :].float())
            self.conv_imag.weight.copy_((-torch.sin(phase) * window)[:, None, :].float())
        self.requires_grad_(False)


class _Spectrogram(nn.Module):
    def __init__(self, n_fft: int, hop: int) -> None:
        super().__init__()
        self.n_fft = n_fft
        self.stft = _Stft(n_fft, hop)

    def forward(self, wav: torch.Tensor) -> torch.Tensor:
        """(B, L) -> (B, 1, 1 + L // hop, n_fft // 2 + 1) power."""
        x = F.pad(wav[:, None, :], (self.n_fft // 2, self.n_fft // 2), mode="reflect")
        real, imag = self.stft.conv_real(x), self.stft.conv_imag(x)
        return (real.square() + imag.square()).transpose(1, 2)[:, None]


class _LogMel(nn.Module):
    def __init__(self, config: HTSATConfig) -> None:
        super().__init__()
        import torchaudio

        with torch.device("cpu"):
            fb = torchaudio.functional.melscale_fbanks(
                config.window_size // 2 + 1,
                float(config.fmin),
                float(config.fmax),
                config.mel_bins,
                config.sample_rate,
                norm="slaney",
                mel_scale="slaney",
            )
        self.melW = nn.Parameter(fb, requires_grad=False)  # (F, mels): librosa.filters.mel(...).T

    def forward(self, power: torch.Tensor) -> torch.Tensor:
        return 10.0 * torch.log10(torch.clamp(power @ self.melW, min=1e-10))


# ------------------------------------------------------------------------------ Swin parts


def _windows(x: torch.Tensor, w: int) -> torch.Tensor:
    """(B, H, W, C) -> (B * nW, w * w, C), windows in row-major order."""
    b, h, wd, c = x.shape
    x = x.view(b, h // w, w, wd // w, w, c).permute(0, 1, 3, 2, 4, 5)
    return x.reshape(-1, w * w, c)


def _unwindows(x: torch.Tensor, w: int, h: int, wd: int) -> torch.Tensor:
    """Inverse of `_windows`: (B * nW, w * w, C) -> (B, H, W, C)."""
    c = x.shape[-1]
    x = x.view(-1, h // w, wd // w, w, w, c).permute(0, 1, 3, 2, 4, 5)
    return x.reshape(-1, h, wd, c)


def _relative_position_index(w: int) -> torch.Tensor:
    """(w*w, w*w) index into the (2w-1)^2-row bias table for each pair of window positions."""
    ys, xs = torch.meshgrid(torch.arange(w), torch.arange(w), indexing="ij")
    ys, xs = ys.flatten(), xs.flatten()
    dy = ys[:, None] - ys[None, :] + w - 1
    dx = xs[:, None] - xs[None, :] + w - 1
    return dy * (2 * w - 1) + dx


def _shift_mask(h: int, wd: int, w: int, shift: int) -> torch.Tensor:
    """(nW, w*w, w*w) additive mask of a shifted block: -100 between positions that came from
    different regions of the rolled map (so a window never mixes wrapped-around tokens), 0 else."""
    region = torch.zeros(1, h, wd, 1)
    label = 0
    for hs in (slice(0, -w), slice(-w, -shift), slice(-shift, None)):
        for ws in (slice(0, -w), slice(-w, -shift), slice(-shift, None)):
            region[:, hs, ws, :] = label
            label += 1
    labels = _windows(region, w).squeeze(-1)  # (nW, w*w)
    diff = labels[:, None, :] - labels[:, :, None]
    return torch.zeros_like(diff).masked_fill(diff != 0, -100.0)


class _WindowAttention(nn.Module):
    def __init__(self, dim: int, window: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.scale = (dim // heads) ** -0.5
        self.relative_position_bias_table = nn.Parameter(torch.zeros((2 * window - 1) ** 2, heads))
        self.register_buffer("relative_position_index", _relative_position_index(window))
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        bw, n, c = x.shape
        q, k, v = self.qkv(x).view(bw, n, 3, self.heads, c // self.heads).permute(2, 0, 3, 1, 4)
        attn = (q * self.scale) @ k.transpose(-2, -1)
        bias = self.relative_position_bias_table[self.relative_position_index.view(-1)].view(n, n, -1)
        attn = attn + bias.permute(2, 0, 1)
        if mask is not None:
            nw = mask.shape[0]
            attn = (attn.view(bw // nw, nw, self.heads, n, n) + mask[None, :, None]).view(bw, self.heads, n, n)
        out = attn.softmax(dim=-1) @ v
        return self.proj(out.transpose(1, 2).reshape(bw, n, c))


class _SwinBlock(nn.Module):
    def __init__(self, dim: int, resolution: int, heads: int, window: int, shifted: bool, mlp_ratio: float) -> None:
        super().__init__()
        self.resolution = resolution
        # a map no larger than a window is one unshifted window (as Swin does)
        self.window = min(window, resolution)
        self.shift = window // 2 if shifted and resolution > window else 0
        self.norm1 = nn.LayerNorm(dim)
        self.attn = _WindowAttention(dim, self.window, heads)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = GeluMlp(dim, int(dim * mlp_ratio))
        if self.shift:
            self.register_buffer("attn_mask", _shift_mask(resolution, resolution, self.window, self.shift))
        else:
            self.attn_mask = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, c = x.shape
        r, w, s = self.resolution, self.window, self.shift
        y = self.norm1(x).view(b, r, r, c)
        if s:
            y = torch.roll(y, shifts=(-s, -s), dims=(1, 2))
        y = _unwindows(self.attn(_windows(y, w), self.attn_mask), w, r, r)
        if s:
            y = torch.roll(y, shifts=(s, s), dims=(1, 2))
        x = x + y.reshape(b, n, c)
        return x + self.mlp(self.norm2(x))


class _PatchMerging(nn.Module):
    def __init__(self, dim: int, resolution: int) -> None:
        super().__init__()
        self.resolution = resolution
        self.norm = nn.LayerNorm(4 * dim)
        self.reduction = nn.Linear(4 * dim, 2 * dim, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, _, c = x.shape
        r = self.resolution
        x = x.view(b, r, r, c)
        # 2 x 2 neighbours in Swin's order: (even, even), (odd, even), (even, odd), (odd, odd) as (row, col)
        x = torch.cat([x[:, 0::2, 0::2], x[:, 1::2, 0::2], x[:, 0::2, 1::2], x[:, 1::2, 1::2]], dim=-1)
        return self.reduction(self.norm(x.view(b, -1, 4 * c)))


class _Stage(nn.Module):
    def __init__(
        self, dim: int, resolution: int, depth: int, heads: int, window: int, mlp_ratio: float, merge: bool
    ) -> None:
        super().__init__()
        self.blocks = nn.ModuleList(
            _SwinBlock(dim, resolution, heads, window, i % 2 == 1, mlp_ratio) for i in range(depth)
        )
        self.downsample = _PatchMerging(dim, resolution) if merge else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for block in self.blocks:
            x = block(x)
        return self.downsample(x) if self.downsample is not None else x


class _PatchEmbed(nn.Module):
    def __init__(self, patch: int, dim: int) -> None:
        super().__init__()
        self.proj = nn.Conv2d(1, dim, kernel_size=patch, stride=patch)
        self.norm = nn.LayerNorm(dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(self.proj(x).flatten(2).transpose(1, 2))


# ------------------------------------------------------------------------------ encoder


class HTSATEncoder(nn.Module):
    """Waveform at `sample_rate`, exactly `clip_samples` long -> (B, num_features) embedding."""

    def __init__(self, config: HTSATConfig = HTSAT_BASE) -> None:
        super().__init__()
        config.validate()
        self.config = config
        self.spectrogram_extractor = _Spectrogram(config.window_size, config.hop_size)
        self.logmel_extractor = _LogMel(config)
        self.bn0 = nn.BatchNorm2d(config.mel_bins)
        self.patch_embed = _PatchEmbed(config.patch_size, config.embed_dim)
        grid = config.spec_size // config.patch_size
        last = len(config.depths) - 1
        self.layers = nn.ModuleList(
            _Stage(config.embed_dim * 2**i, grid // 2**i, depth, heads, config.window, config.mlp_ratio, merge=i < last)
            for i, (depth, heads) in enumerate(zip(config.depths, config.num_heads))
        )
        self.norm = nn.LayerNorm(config.num_features)
        # tscam head: (SF, 3) conv over the grouped final map, SF = final rows per frequency group
        sf = config.spec_size // 2**last // config.patch_size // config.freq_ratio
        self.tscam_conv = nn.Conv2d(config.num_features, config.num_classes, kernel_size=(sf, 3), padding=(0, 1))
        self.head = nn.Linear(config.num_classes, config.num_classes)

    def log_mel(self, wav: torch.Tensor) -> torch.Tensor:
        """(B, L) -> (B, 1, T, mel_bins) dB, before bn0."""
        return self.logmel_extractor(self.spectrogram_extractor(wav))

    def to_image(self, mel: torch.Tensor) -> torch.Tensor:
        """(B, 1, T, mels) normalised log mel -> (B, 1, spec_size, spec_size) (step 3 of the docstring)."""
        c = self.config
        target_t, target_f = c.spec_size * c.freq_ratio, c.spec_size // c.freq_ratio
        t, f = mel.shape[2], mel.shape[3]
        if t > target_t or f > target_f:
            raise ValueError(f"log mel of {t} x {f} is larger than the {target_t} x {target_f} the tower takes")
        if t < target_t:
            mel = F.interpolate(mel, (target_t, f), mode="bicubic", align_corners=True)
        if f < target_f:
            mel = F.interpolate(mel, (mel.shape[2], target_f), mode="bicubic", align_corners=True)
        b = mel.shape[0]
        x = mel.transpose(2, 3).reshape(b, 1, target_f, c.freq_ratio, target_t // c.freq_ratio)
        return x.permute(0, 1, 3, 2, 4).reshape(b, 1, c.freq_ratio * target_f, target_t // c.freq_ratio)

    def forward(self, wav: torch.Tensor) -> torch.Tensor:
        if wav.ndim != 2 or wav.shape[1] != self.config.clip_samples:
            raise ValueError(f"expected (B, {self.config.clip_samples}) samples, got {tuple(wav.shape)}")
        x = self.log_mel(wav)
        x = self.bn0(x.transpose(1, 3)).transpose(1, 3)  # BatchNorm over the mel bands
        x = self.patch_embed(self.to_image(x))
        for stage in self.layers:
            x = stage(x)
        return self.norm(x).mean(dim=1)
