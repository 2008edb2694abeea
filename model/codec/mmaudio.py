"""The audio codec protocol and MMAudio's codec: wav <-> mel <-> VAE latents, BigVGAN back to wav.

Latents are channel-last (B, N, C) at this boundary, as the network wants them.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal, Protocol, runtime_checkable

import torch
import torch.nn as nn
import torch.nn.functional as F

from dub.model.codec.bigvgan import BigVGAN, BigVGANConfig, load_bigvgan
from dub.model.codec.mel import MelConfig, MelConverter
from dub.model.codec.vae import VAE, VAEConfig, load_vae


@runtime_checkable
class Codec(Protocol):
    """What the generator and trainer need from an audio codec (MMAudio's or the demo one)."""

    sample_rate: int
    latent_dim: int
    latents_per_second: float

    def encode(self, wav: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """wav (B, L) in [-1, 1] -> (mean, std) posterior, each (B, N, latent_dim)."""
        ...

    def decode(self, latent: torch.Tensor) -> torch.Tensor:
        """latent (B, N, latent_dim) -> wav (B, L)."""
        ...


class MMAudioCodec(nn.Module):
    """Mel converter + VAE + BigVGAN. One latent covers `samples_per_latent` samples; `encode`
    zero-pads the end of a clip to a whole number of latents, as MMAudio's data pipeline does."""

    def __init__(self, mel: MelConverter, vae: VAE, vocoder: BigVGAN) -> None:
        super().__init__()
        if mel.config.num_mels != vae.config.data_dim or vae.config.data_dim != vocoder.config.num_mels:
            raise ValueError(
                f"mel bands disagree: mel converter {mel.config.num_mels}, VAE {vae.config.data_dim}, "
                f"vocoder {vocoder.config.num_mels}"
            )
        if mel.config.hop_size != vocoder.hop_size:
            raise ValueError(f"mel hop {mel.config.hop_size} differs from the vocoder's upsampling {vocoder.hop_size}")
        sr_vocoder = vocoder.config.sampling_rate
        if sr_vocoder is not None and sr_vocoder != mel.config.sampling_rate:
            raise ValueError(f"mel sample rate {mel.config.sampling_rate} differs from the vocoder's {sr_vocoder}")
        self.mel = mel
        self.vae = vae
        self.vocoder = vocoder
        self.sample_rate: int = mel.config.sampling_rate
        self.latent_dim: int = vae.config.embed_dim
        self.samples_per_latent: int = mel.config.hop_size * vae.config.downsample_factor
        self.latents_per_second: float = self.sample_rate / self.samples_per_latent

    def num_latents(self, num_samples: int) -> int:
        return math.ceil(num_samples / self.samples_per_latent)

    @torch.no_grad()
    def encode(self, wav: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if wav.ndim != 2:
            raise ValueError(f"encode expects a mono waveform batch (B, L), got shape {tuple(wav.shape)}")
        n = self.num_latents(wav.shape[1])
        wav = F.pad(wav, (0, n * self.samples_per_latent - wav.shape[1]))
        mean, std = self.vae.encode(self.mel(wav))
        return mean.transpose(1, 2), std.transpose(1, 2)

    @torch.no_grad()
    def decode(self, latent: torch.Tensor) -> torch.Tensor:
        if latent.ndim != 3 or latent.shape[-1] != self.latent_dim:
            raise ValueError(
                f"decode expects channel-last latents (B, N, {self.latent_dim}), got shape {tuple(latent.shape)}"
            )
        mel = self.vae.decode(latent.transpose(1, 2).to(self.vae.data_mean))
        return self.vocoder(mel).squeeze(1)


def _vocoder_source(
    weights: str | Path | Mapping[str, Any], config: BigVGANConfig | str | Path | None, kind: str
) -> tuple[str | Path | Mapping[str, Any], BigVGANConfig | str | Path]:
    # A publisher directory (config.json + bigvgan_generator.pt) carries its own config.
    if isinstance(weights, (str, Path)) and Path(weights).is_dir():
        folder = Path(weights)
        weights = folder / "bigvgan_generator.pt"
        if config is None and (folder / "config.json").is_file():
            config = folder / "config.json"
    if config is None:
        config = released_configs(kind)[2]
    return weights, config


def released_configs(kind: str) -> tuple[MelConfig, VAEConfig, BigVGANConfig]:
    """The mel, VAE and vocoder configurations MMAudio's released codec weights were made with,
    at 16 kHz or 44.1 kHz."""
    if kind == "16k":
        return MelConfig.mmaudio_16k(), VAEConfig.mmaudio_16k(), BigVGANConfig.mmaudio_16k()
    if kind == "44k":
        return MelConfig.mmaudio_44k(), VAEConfig.mmaudio_44k(), BigVGANConfig.bigvgan_v2_44k_128band_512x()
    raise ValueError(f"kind must be '16k' or '44k', got {kind!r}")


def build_mmaudio_codec(
    kind: Literal["16k", "44k"],
    vae_weights: str | Path | Mapping[str, Any],
    vocoder_weights: str | Path | Mapping[str, Any],
    vocoder_config: BigVGANConfig | str | Path | None = None,
) -> MMAudioCodec:
    """MMAudio's codec from local files: `v1-16.pth` + `best_netG.pt` (16k), or `v1-44.pth` +
    BigVGAN-v2 44 kHz (`bigvgan_generator.pt`, or its folder holding config.json too)."""
    mel_config, vae_config, _ = released_configs(kind)
    weights, config = _vocoder_source(vocoder_weights, vocoder_config, kind)
    return MMAudioCodec(
        MelConverter(mel_config), load_vae(vae_weights, vae_config), load_bigvgan(weights, config)
    ).eval()
