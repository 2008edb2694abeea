"""Demo audio codec with NO learned weights: normalised log-mel latents, Griffin-Lim decoding.

The demo/testing stack's stand-in for MMAudio's VAE + BigVGAN: it implements the codec
protocol of docs/ARCHITECTURE.md so the pipeline runs with nothing downloaded. Audio quality
is that of Griffin-Lim on a coarse mel spectrogram (phasey, muffled), not MMAudio's; timing is
preserved (onsets stay within one hop).

    16 kHz, n_fft 1024, hop 512, `latent_dim` slaney mel bands over 0-8 kHz
    -> 31.25 latents per second, MMAudio's 16 kHz latent rate (8 s -> 250 latents).

Framing follows MMAudio's mel: reflect padding (n_fft - hop) / 2 on both sides, no centring,
so latent n describes samples [n * hop, (n + 1) * hop) (centred on their middle) and L samples
give ceil(L / hop) latents (the tail is zero-padded to a whole hop).

    latent = (log10(max(mel, 1e-5)) - LOG_CENTER) / LOG_SCALE        (about -2 for silence)
    encode -> (mean = latent, std = a small constant), channel-last (B, N, C)
    decode -> mel -> linear magnitude by band interpolation -> Griffin-Lim (fixed iterations,
              zero-phase start: deterministic) -> wav (B, N * hop)

The mel-to-linear step spreads each band's average magnitude back over the bins it covers,
weighted by the filter shapes: non-negative by construction and exact for spectra that are
flat within each band, where a least-squares pseudo-inverse would ring with negative lobes.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
import torchaudio.functional as AF
from torch import nn

LOG_FLOOR = 1e-5
LOG_CENTER = -2.0
LOG_SCALE = 1.5


class DemoCodec(nn.Module):
    """Codec protocol: `encode(wav (B, L)) -> (mean, std)` (B, N, C); `decode(latent) -> wav`."""

    def __init__(
        self,
        latent_dim: int = 20,
        sample_rate: int = 16_000,
        n_fft: int = 1024,
        hop_length: int = 512,
        griffin_lim_iters: int = 32,
        latent_std: float = 0.01,
    ) -> None:
        super().__init__()
        if (n_fft - hop_length) % 2:
            raise ValueError(f"n_fft - hop_length must be even for symmetric padding, got {n_fft} - {hop_length}")
        if latent_dim < 1 or griffin_lim_iters < 1:
            raise ValueError("latent_dim and griffin_lim_iters must be >= 1")
        self.sample_rate = sample_rate
        self.latent_dim = latent_dim
        self.n_fft = n_fft
        self.hop_length = hop_length
        self.griffin_lim_iters = griffin_lim_iters
        self.latent_std = latent_std
        fb = AF.melscale_fbanks(
            n_freqs=n_fft // 2 + 1,
            f_min=0.0,
            f_max=sample_rate / 2,
            n_mels=latent_dim,
            sample_rate=sample_rate,
            norm="slaney",
            mel_scale="slaney",
        )  # (freqs, mels)
        self.register_buffer("mel_fb", fb, persistent=False)
        self.register_buffer("mel_inverse", _band_interpolation_inverse(fb), persistent=False)
        self.register_buffer("window", torch.hann_window(n_fft), persistent=False)

    @property
    def latents_per_second(self) -> float:
        return self.sample_rate / self.hop_length

    @property
    def pad(self) -> int:
        return (self.n_fft - self.hop_length) // 2

    def num_latents(self, num_samples: int) -> int:
        return -(-num_samples // self.hop_length)

    @torch.no_grad()
    def encode(self, wav: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """wav (B, L) in [-1, 1] at `sample_rate` -> (mean, std), each (B, ceil(L / hop), latent_dim)."""
        if wav.ndim != 2:
            raise ValueError(f"wav must be (B, L); got shape {tuple(wav.shape)}")
        if wav.shape[1] == 0:
            raise ValueError("cannot encode empty audio")
        wav = wav.to(self.window.device, torch.float32)
        n = self.num_latents(wav.shape[1])
        wav = F.pad(wav, (0, n * self.hop_length - wav.shape[1]))
        # reflect needs more samples than the pad; very short clips fall back to zeros
        mode = "reflect" if wav.shape[1] > self.pad else "constant"
        padded = F.pad(wav.unsqueeze(1), (self.pad, self.pad), mode=mode).squeeze(1)
        spec = torch.stft(
            padded, self.n_fft, self.hop_length, window=self.window, center=False, return_complex=True
        ).abs()  # (B, freqs, N)
        mel = torch.matmul(self.mel_fb.T, spec)  # (B, mels, N)
        latent = (torch.log10(mel.clamp_min(LOG_FLOOR)) - LOG_CENTER) / LOG_SCALE
        mean = latent.transpose(1, 2).contiguous()
        return mean, torch.full_like(mean, self.latent_std)

    @torch.no_grad()
    def decode(self, latent: torch.Tensor) -> torch.Tensor:
        """latent (B, N, latent_dim) -> wav (B, N * hop) by Griffin-Lim."""
        if latent.ndim != 3 or latent.shape[2] != self.latent_dim:
            raise ValueError(f"latent must be (B, N, {self.latent_dim}); got shape {tuple(latent.shape)}")
        latent = latent.to(self.window.device, torch.float32)
        n = latent.shape[1]
        mel = torch.pow(10.0, latent.transpose(1, 2) * LOG_SCALE + LOG_CENTER)
        mel = torch.where(mel <= LOG_FLOOR * 1.0001, torch.zeros_like(mel), mel)  # the floor means silence
        magnitude = torch.matmul(self.mel_inverse.T, mel)  # (B, freqs, N)
        # Griffin-Lim centres frame m on sample m * hop; our frame n sits at n * hop + pad. A copy
        # of the first frame in front (m = n + 1) gives the samples before frame 0, so the
        # output starts at sample hop - pad of the reconstruction: no zeros at the start (a
        # zero-padded start turned a steady room tone into an onset). torchaudio re-analyses
        # `length` samples with centred frames, length / hop + 1 of them: the last frame is
        # repeated to match.
        magnitude = torch.cat([magnitude[..., :1], magnitude, magnitude[..., -1:]], dim=-1)
        length = n * self.hop_length
        wav = AF.griffinlim(
            magnitude,
            self.window,
            self.n_fft,
            self.hop_length,
            self.n_fft,
            power=1.0,
            n_iter=self.griffin_lim_iters,
            momentum=0.99,
            length=length + self.hop_length,
            rand_init=False,
        )
        start = self.hop_length - self.pad
        return wav[:, start : start + length]


def _band_interpolation_inverse(fb: torch.Tensor) -> torch.Tensor:
    """(freqs, mels) filter bank -> (mels, freqs) map from mel magnitudes back to bins:
    band average = mel / filter area, shared out to each bin in proportion to its filters."""
    area = fb.sum(dim=0)  # (mels,)
    coverage = fb.sum(dim=1, keepdim=True)  # (freqs, 1)
    share = torch.where(coverage > 0, fb / coverage.clamp_min(1e-12), torch.zeros_like(fb))
    return (share / area.clamp_min(1e-12)).T.contiguous()
