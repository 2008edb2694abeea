"""PANNs CNN14 (Kong et al. 2020), the 16 kHz variant used for FAD/KL/IS in V2A papers.

Follows the released PANNs CNN14 16 kHz (`Cnn14_16k_mAP=0.438.pth`, qiuqiangkong/audioset_tagging_cnn); no publisher fixture yet.

Parameter names match the released `Cnn14_16k_mAP=0.438.pth` (`{"model": state_dict}`), so the
checkpoint loads with `strict=True`. The log-mel front end is inside the model, as released:
a conv1d STFT (periodic Hann, centred, reflect padding), power spectrum, a mel matrix, and
10 log10 with amin 1e-10 and no top-dB clipping. Inference only (dropout and SpecAugment are
training-time and omitted). Outputs: the 2048-d embedding (ReLU(fc1), the "2048" features
av-benchmark uses for FD-PANN) and the 527 AudioSet logits (softmax for KL and IS).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from dub.model.weights.state_dicts import read_state_dict, strict_load

__all__ = ["CNN14_16K", "Cnn14", "Cnn14Config", "LogMelFrontEnd", "load_cnn14"]


@dataclass(frozen=True)
class Cnn14Config:
    sample_rate: int = 16000
    window_size: int = 512
    hop_size: int = 160
    mel_bins: int = 64
    fmin: float = 50.0
    fmax: float = 8000.0
    classes_num: int = 527
    channels: tuple[int, ...] = (64, 128, 256, 512, 1024, 2048)


CNN14_16K = Cnn14Config()


class _Stft(nn.Module):
    def __init__(self, n_fft: int, hop: int) -> None:
        super().__init__()
        n_freq = n_fft // 2 + 1
        self.conv_real = nn.Conv1d(1, n_freq, n_fft, stride=hop, bias=False)
        self.conv_imag = nn.Conv1d(1, n_freq, n_fft, stride=hop, bias=False)
        n = torch.arange(n_fft, dtype=torch.float64)
        k = torch.arange(n_freq, dtype=torch.float64)[:, None]
        window = torch.hann_window(n_fft, periodic=True, dtype=torch.float64)
        phase = 2 * math.pi * k * n / n_fft
        with torch.no_grad():
            self.conv_real.weight.copy_((torch.cos(phase) * window)[:, None, :].float())
            self.conv_imag.weight.copy_((-torch.sin(phase) * window)[:, None, :].float())


class _Spectrogram(nn.Module):
    def __init__(self, n_fft: int, hop: int) -> None:
        super().__init__()
        self.n_fft = n_fft
        self.stft = _Stft(n_fft, hop)

    def forward(self, wav: torch.Tensor) -> torch.Tensor:  # (B, L) -> (B, 1, T, F) power
        x = F.pad(wav[:, None, :], (self.n_fft // 2, self.n_fft // 2), mode="reflect")
        real, imag = self.stft.conv_real(x), self.stft.conv_imag(x)
        return (real.square() + imag.square()).transpose(1, 2)[:, None]


class _LogMel(nn.Module):
    def __init__(self, config: Cnn14Config) -> None:
        super().__init__()
        import torchaudio

        with torch.device("cpu"):  # real numbers even when the model is built on the meta device
            fb = torchaudio.functional.melscale_fbanks(
                config.window_size // 2 + 1,
                config.fmin,
                config.fmax,
                config.mel_bins,
                config.sample_rate,
                norm="slaney",
                mel_scale="slaney",
            )
        self.melW = nn.Parameter(fb, requires_grad=False)  # (F, mels), librosa's filters

    def forward(self, power: torch.Tensor) -> torch.Tensor:
        mel = torch.matmul(power, self.melW)
        return 10.0 * torch.log10(torch.clamp(mel, min=1e-10))  # ref 1.0: the second term is 0


class LogMelFrontEnd(nn.Module):
    """CNN14's log-mel front end computed with `torch.stft` (same numbers as the conv1d STFT
    with its default DFT weights, several times faster on CPU); for plots and the weights-free
    backend, which have no checkpoint to load."""

    def __init__(self, config: Cnn14Config = CNN14_16K) -> None:
        super().__init__()
        self.n_fft, self.hop = config.window_size, config.hop_size
        self.register_buffer("window", torch.hann_window(config.window_size, periodic=True), persistent=False)
        self.mel = _LogMel(config)

    def forward(self, wav: torch.Tensor) -> torch.Tensor:  # (B, L) -> (B, T, mels) dB
        spec = torch.stft(
            wav, self.n_fft, self.hop, window=self.window, center=True, pad_mode="reflect", return_complex=True
        )
        return self.mel(spec.abs().square().transpose(1, 2))


class _ConvBlock(nn.Module):
    def __init__(self, cin: int, cout: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, padding=1, bias=False)
        self.conv2 = nn.Conv2d(cout, cout, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.bn2 = nn.BatchNorm2d(cout)

    def forward(self, x: torch.Tensor, pool: tuple[int, int]) -> torch.Tensor:
        x = F.relu(self.bn1(self.conv1(x)))
        x = F.relu(self.bn2(self.conv2(x)))
        return F.avg_pool2d(x, kernel_size=pool)


class Cnn14(nn.Module):
    def __init__(self, config: Cnn14Config = CNN14_16K) -> None:
        super().__init__()
        if len(config.channels) != 6:
            raise ValueError(f"CNN14 has 6 conv blocks, got channels={config.channels}")
        self.config = config
        self.spectrogram_extractor = _Spectrogram(config.window_size, config.hop_size)
        self.logmel_extractor = _LogMel(config)
        self.bn0 = nn.BatchNorm2d(config.mel_bins)
        cins = (1,) + config.channels[:-1]
        for i, (cin, cout) in enumerate(zip(cins, config.channels), start=1):
            setattr(self, f"conv_block{i}", _ConvBlock(cin, cout))
        width = config.channels[-1]
        self.fc1 = nn.Linear(width, width)
        self.fc_audioset = nn.Linear(width, config.classes_num)

    def forward(self, wav: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """wav (B, L) at config.sample_rate -> (embedding (B, C6), logits (B, classes))."""
        x = self.logmel_extractor(self.spectrogram_extractor(wav))  # (B, 1, T, mels)
        x = self.bn0(x.transpose(1, 3)).transpose(1, 3)  # batch norm per mel bin
        for i in range(1, 7):
            x = getattr(self, f"conv_block{i}")(x, (2, 2) if i < 6 else (1, 1))
        x = x.mean(dim=3)  # over frequency
        x = x.max(dim=2).values + x.mean(dim=2)  # over time
        embedding = F.relu(self.fc1(x))
        return embedding, self.fc_audioset(embedding)


def load_cnn14(path: str | Path, config: Cnn14Config = CNN14_16K, device: str = "cpu") -> Cnn14:
    """CNN14 with weights from a released `.pth` (`{"model": ...}`, loaded weights-only) or a
    `.safetensors` file of the same keys; every key and shape must match (ValueError names them)."""
    path = Path(path)
    try:
        state = read_state_dict(path, "fc_audioset.weight", what="CNN14 weights file")
    except KeyError as exc:
        raise ValueError(
            f"{path} holds no CNN14 state dict (no 'fc_audioset.weight' key); expected "
            "Cnn14_16k_mAP=0.438.pth or its imported .safetensors"
        ) from exc
    with torch.device("meta"):  # strict_load materialises it; skips initialising 81M parameters
        model = Cnn14(config)
    strict_load(
        model,
        state,
        str(path),
        against="CNN14",
        detail=f" ({config})",
        hint="expected PANNs' Cnn14_16k_mAP=0.438.pth (or its imported .safetensors)",
    )
    return model.eval().to(device)
