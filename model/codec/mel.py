"""Log-mel spectrograms exactly as MMAudio computes them (its VAE and vocoders expect these).

Follows MMAudio 1.0.0 (hkchengrex/MMAudio, `mmaudio/ext/mel_converter.py`); checked against the publisher's fixtures (tests/test_codec.py).

wav (B, L) in [-1, 1] -> log mel (B, n_mels, frames), frames = 1 + (L + 2 pad - n_fft) // hop
with pad = (n_fft - hop) / 2, so a clip of L = k * hop samples gives exactly k frames.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

LogBase = Literal["log10", "ln"]


@dataclass(frozen=True)
class MelConfig:
    sampling_rate: int
    n_fft: int
    hop_size: int
    win_size: int
    num_mels: int
    fmin: float
    fmax: float
    log: LogBase
    clip_val: float = 1e-5
    magnitude_eps: float = 1e-9
    compression_c: float = 1.0

    def __post_init__(self) -> None:
        if self.log not in ("log10", "ln"):
            raise ValueError(f"MelConfig.log must be 'log10' or 'ln', got {self.log!r}")
        if (self.n_fft - self.hop_size) % 2:
            raise ValueError(
                f"n_fft - hop_size must be even for the symmetric pre-pad, got {self.n_fft} - {self.hop_size}"
            )
        if self.win_size > self.n_fft:
            raise ValueError(f"win_size ({self.win_size}) must not exceed n_fft ({self.n_fft})")
        if not 0 <= self.fmin < self.fmax <= self.sampling_rate / 2:
            raise ValueError(
                f"need 0 <= fmin < fmax <= sampling_rate/2, got fmin={self.fmin}, fmax={self.fmax}, "
                f"sampling_rate={self.sampling_rate}"
            )

    @property
    def pad(self) -> int:
        return (self.n_fft - self.hop_size) // 2

    def num_frames(self, num_samples: int) -> int:
        return 1 + (num_samples + 2 * self.pad - self.n_fft) // self.hop_size

    @classmethod
    def mmaudio_16k(cls) -> MelConfig:
        return cls(16_000, 1024, 256, 1024, 80, 0.0, 8_000.0, "log10")

    @classmethod
    def mmaudio_44k(cls) -> MelConfig:
        return cls(44_100, 2048, 512, 2048, 128, 0.0, 22_050.0, "ln")

    def as_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> MelConfig:
        """Accepts `as_dict()` output and the MMAudio fixture `config.json` layout.

        Fixture fields that describe fixed behaviour (centre, window, pre-pad) are checked, so a
        config asking for something this converter does not do fails loudly instead of silently.
        """
        expected = {
            "stft_center": False,
            "window": "hann",
            "window_periodic": True,
            "pre_pad_mode": "reflect",
            "stft_onesided": True,
            "stft_normalized": False,
        }
        for key, want in expected.items():
            if key in d and d[key] != want:
                raise ValueError(f"mel config {key}={d[key]!r} is not supported (only {want!r})")
        fmax = d.get("fmax")
        config = cls(
            sampling_rate=int(d["sampling_rate"]),
            n_fft=int(d["n_fft"]),
            hop_size=int(d["hop_size"]),
            win_size=int(d.get("win_size", d["n_fft"])),
            num_mels=int(d["num_mels"]),
            fmin=float(d.get("fmin", 0.0)),
            fmax=float(d["sampling_rate"]) / 2 if fmax is None else float(fmax),
            log=d["log"],
            clip_val=float(d.get("clip_val", 1e-5)),
            magnitude_eps=float(d.get("magnitude_eps", 1e-9)),
            compression_c=float(d.get("compression_c", d.get("compression_C", 1.0))),
        )
        for key in ("pre_pad_left", "pre_pad_right"):
            if key in d and int(d[key]) != config.pad:
                raise ValueError(f"mel config {key}={d[key]} differs from (n_fft - hop)/2 = {config.pad}")
        return config


def _hz_to_mel_slaney(hz: np.ndarray) -> np.ndarray:
    # Slaney's Auditory Toolbox scale: linear below 1 kHz, logarithmic above.
    f_sp, min_log_hz = 200.0 / 3, 1000.0
    min_log_mel, logstep = min_log_hz / f_sp, math.log(6.4) / 27.0
    hz = np.asarray(hz, dtype=np.float64)
    mel = hz / f_sp
    above = hz >= min_log_hz
    mel[above] = min_log_mel + np.log(hz[above] / min_log_hz) / logstep
    return mel


def _mel_to_hz_slaney(mel: np.ndarray) -> np.ndarray:
    f_sp, min_log_hz = 200.0 / 3, 1000.0
    min_log_mel, logstep = min_log_hz / f_sp, math.log(6.4) / 27.0
    mel = np.asarray(mel, dtype=np.float64)
    hz = mel * f_sp
    above = mel >= min_log_mel
    hz[above] = min_log_hz * np.exp(logstep * (mel[above] - min_log_mel))
    return hz


def slaney_mel_filterbank(sampling_rate: float, n_fft: int, num_mels: int, fmin: float, fmax: float) -> torch.Tensor:
    """(num_mels, n_fft//2 + 1) triangular filters on the Slaney mel scale, area-normalised."""
    fft_freqs = np.linspace(0.0, sampling_rate / 2, n_fft // 2 + 1)
    edges_mel = np.linspace(
        _hz_to_mel_slaney(np.array([fmin]))[0], _hz_to_mel_slaney(np.array([fmax]))[0], num_mels + 2
    )
    edges = _mel_to_hz_slaney(edges_mel)
    widths = np.diff(edges)
    offsets = edges[:, None] - fft_freqs[None, :]
    rising = -offsets[:-2] / widths[:-1, None]
    falling = offsets[2:] / widths[1:, None]
    weights = np.maximum(0.0, np.minimum(rising, falling))
    weights *= (2.0 / (edges[2:] - edges[:-2]))[:, None]  # Slaney: constant energy per band
    return torch.from_numpy(weights).to(torch.float32)


class MelConverter(nn.Module):
    """wav (B, L) -> log mel (B, n_mels, frames), MMAudio's recipe (no centring, reflect pre-pad)."""

    def __init__(self, config: MelConfig) -> None:
        super().__init__()
        self.config = config
        basis = slaney_mel_filterbank(config.sampling_rate, config.n_fft, config.num_mels, config.fmin, config.fmax)
        self.register_buffer("mel_basis", basis, persistent=False)
        self.register_buffer("window", torch.hann_window(config.win_size, periodic=True), persistent=False)

    def forward(self, wav: torch.Tensor) -> torch.Tensor:
        c = self.config
        if wav.ndim != 2:
            raise ValueError(f"MelConverter expects wav of shape (B, L), got {tuple(wav.shape)}")
        if wav.shape[1] <= c.pad:
            raise ValueError(
                f"waveform of {wav.shape[1]} samples is too short: reflect padding needs more than {c.pad}"
            )
        wav = wav.to(self.mel_basis).clamp(-1.0, 1.0)
        wav = F.pad(wav.unsqueeze(1), (c.pad, c.pad), mode="reflect").squeeze(1)
        spec = torch.stft(
            wav,
            c.n_fft,
            hop_length=c.hop_size,
            win_length=c.win_size,
            window=self.window,
            center=False,
            normalized=False,
            onesided=True,
            return_complex=True,
        )
        spec = torch.view_as_real(spec)
        magnitude = torch.sqrt(spec.pow(2).sum(-1) + c.magnitude_eps)
        mel = torch.matmul(self.mel_basis, magnitude)
        mel = torch.clamp(mel, min=c.clip_val) * c.compression_c
        return torch.log10(mel) if c.log == "log10" else torch.log(mel)
