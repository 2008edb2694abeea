"""VGGish (Hershey et al. 2017), the audio embedding of the "FD-VGG" / FAD numbers in V2A papers.

Follows torchvggish's released weights (`vggish-10086976.pth`, harritaylor/torchvggish); no publisher fixture yet.

Parameter names match torchvggish's released `vggish-10086976.pth` (`features.{0,3,6,8,11,13}`
convolutions, `embeddings.{0,2,4}` linear layers), so the checkpoint loads strictly.

Front end, as the original TF code (`mel_features.py`) computes it: 16 kHz mono, 25 ms frames
(400 samples, periodic Hann) every 10 ms (160) without centre padding, |rfft| at 512 points,
64 HTK-scale mel bands over 125-7500 Hz (triangles built on the mel axis, DC bin zeroed),
log(mel + 0.01), then examples of 96 frames (0.96 s) without overlap; a trailing partial example
is dropped.

Embedding for FAD, following MMAudio's av-benchmark (`av_bench/vggish/vggish.py`,
`av_bench/evaluate.py`): the raw 128-d output of the last linear layer WITHOUT its ReLU (removed
there "to match audioldm_eval") and without the PCA + 8-bit quantisation postprocessing
(`postprocess=False`); every 0.96 s example of every clip is one sample of the Fréchet
statistics (the per-clip example embeddings are concatenated, not averaged).
torchvggish's own default (ReLU on the last layer, then PCA whitening and quantisation with
`vggish_pca_params-970ea276.pth`) is available as `VGGishConfig(final_relu=True)` +
`load_vggish_pca`, for AudioSet-compatible embeddings; it is not used for FAD.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from dub.model.weights.state_dicts import read_state_dict, strict_load

__all__ = [
    "EXAMPLE_FRAMES",
    "MEL_BANDS",
    "MIN_SAMPLES",
    "SAMPLE_RATE",
    "VGGISH",
    "VGGish",
    "VGGishConfig",
    "VGGishFrontEnd",
    "VGGishPCA",
    "htk_mel_matrix",
    "load_vggish",
    "load_vggish_pca",
]

SAMPLE_RATE = 16000
WINDOW = 400  # 25 ms
HOP = 160  # 10 ms
FFT = 512  # next power of two above the window
MEL_BANDS = 64
MEL_MIN_HZ = 125.0
MEL_MAX_HZ = 7500.0
LOG_OFFSET = 0.01
EXAMPLE_FRAMES = 96  # 0.96 s; examples do not overlap
MIN_SAMPLES = WINDOW + (EXAMPLE_FRAMES - 1) * HOP  # shortest audio that makes one example (0.975 s)
QUANTIZE_RANGE = (-2.0, 2.0)


@dataclass(frozen=True)
class VGGishConfig:
    channels: tuple[int, ...] = (64, 128, 256, 256, 512, 512)  # max-pool after conv 1, 2, 4 and 6
    hidden: int = 4096
    embedding_size: int = 128
    final_relu: bool = False  # av-benchmark drops it; torchvggish keeps it


VGGISH = VGGishConfig()
_POOL_AFTER = (0, 1, 3, 5)  # indices into channels
# four 2x2 poolings turn a 96 x 64 example into 6 x 4
_FLAT_FRAMES, _FLAT_BANDS = EXAMPLE_FRAMES // 16, MEL_BANDS // 16


def htk_mel_matrix(
    n_freqs: int = FFT // 2 + 1,
    sample_rate: int = SAMPLE_RATE,
    n_mels: int = MEL_BANDS,
    fmin: float = MEL_MIN_HZ,
    fmax: float = MEL_MAX_HZ,
) -> np.ndarray:
    """(n_freqs, n_mels) weights from |STFT| bins to mel bands, as VGGish's TF front end builds
    them: triangles linear on the HTK mel axis (1127 ln(1 + f/700)), unnormalised, and no weight
    on the DC bin. (librosa/torchaudio draw the triangles on the Hz axis: different numbers.)"""
    if not 0.0 <= fmin < fmax <= sample_rate / 2:
        raise ValueError(f"need 0 <= fmin < fmax <= Nyquist, got fmin={fmin}, fmax={fmax}, rate {sample_rate}")

    def mel(hz: np.ndarray | float) -> np.ndarray:
        return 1127.0 * np.log1p(np.asarray(hz, dtype=np.float64) / 700.0)

    bins_mel = mel(np.linspace(0.0, sample_rate / 2, n_freqs))
    edges = np.linspace(mel(fmin), mel(fmax), n_mels + 2)
    lower, centre, upper = edges[:-2], edges[1:-1], edges[2:]
    rising = (bins_mel[:, None] - lower) / (centre - lower)
    falling = (upper - bins_mel[:, None]) / (upper - centre)
    weights = np.maximum(0.0, np.minimum(rising, falling))
    weights[0, :] = 0.0
    return weights


class VGGishFrontEnd(nn.Module):
    """16 kHz waveform -> log-mel examples (N, 96, 64). Computed in float64 like the numpy original."""

    def __init__(self) -> None:
        super().__init__()
        n = torch.arange(WINDOW, dtype=torch.float64)
        self.register_buffer("window", 0.5 - 0.5 * torch.cos(2 * math.pi * n / WINDOW), persistent=False)
        self.register_buffer("mel", torch.from_numpy(htk_mel_matrix()), persistent=False)

    def log_mel(self, wav: torch.Tensor) -> torch.Tensor:
        """(L,) samples, L >= 400 -> (T, 64) log mel with T = 1 + (L - 400) // 160."""
        wav = self._mono(wav)
        if wav.numel() < WINDOW:
            raise ValueError(f"VGGish needs at least {WINDOW} samples (25 ms at 16 kHz), got {wav.numel()}")
        frames = wav.to(self.window).unfold(0, WINDOW, HOP) * self.window
        magnitude = torch.fft.rfft(frames, n=FFT).abs()
        return torch.log(magnitude @ self.mel + LOG_OFFSET)

    def forward(self, wav: torch.Tensor, pad_short: bool = True) -> torch.Tensor:
        """(L,) samples at 16 kHz -> (N, 96, 64) float64 examples, N = number of whole 0.96 s
        examples. With `pad_short`, audio under one example (0.975 s) is zero-padded to one, so
        every clip counts in FAD (torchvggish gives such a clip no example at all)."""
        wav = self._mono(wav)
        if pad_short and wav.numel() < MIN_SAMPLES:
            wav = torch.nn.functional.pad(wav, (0, MIN_SAMPLES - wav.numel()))
        log_mel = self.log_mel(wav)
        n_examples = log_mel.shape[0] // EXAMPLE_FRAMES
        return log_mel[: n_examples * EXAMPLE_FRAMES].reshape(n_examples, EXAMPLE_FRAMES, MEL_BANDS)

    @staticmethod
    def _mono(wav: torch.Tensor) -> torch.Tensor:
        if wav.dim() != 1:
            raise ValueError(
                f"expected one mono waveform of shape (L,), got shape {tuple(wav.shape)}; average the channels first"
            )
        return wav


def _feature_stack(channels: tuple[int, ...]) -> nn.Sequential:
    # layer order (conv, ReLU[, pool]) fixes the `features.<i>` indices of the released weights
    layers: list[nn.Module] = []
    cin = 1
    for i, cout in enumerate(channels):
        layers += [nn.Conv2d(cin, cout, kernel_size=3, padding=1), nn.ReLU()]
        if i in _POOL_AFTER:
            layers.append(nn.MaxPool2d(kernel_size=2, stride=2))
        cin = cout
    return nn.Sequential(*layers)


class VGGish(nn.Module):
    def __init__(self, config: VGGishConfig = VGGISH) -> None:
        super().__init__()
        if len(config.channels) != 6:
            raise ValueError(f"VGGish has 6 conv layers, got channels={config.channels}")
        self.config = config
        self.features = _feature_stack(config.channels)
        flat = config.channels[-1] * _FLAT_FRAMES * _FLAT_BANDS
        head: list[nn.Module] = [
            nn.Linear(flat, config.hidden),
            nn.ReLU(),
            nn.Linear(config.hidden, config.hidden),
            nn.ReLU(),
            nn.Linear(config.hidden, config.embedding_size),
        ]
        if config.final_relu:
            head.append(nn.ReLU())
        self.embeddings = nn.Sequential(*head)

    def forward(self, examples: torch.Tensor) -> torch.Tensor:
        """(N, 96, 64) log-mel examples -> (N, embedding_size)."""
        if examples.dim() != 3 or tuple(examples.shape[1:]) != (EXAMPLE_FRAMES, MEL_BANDS):
            raise ValueError(
                f"expected examples of shape (N, {EXAMPLE_FRAMES}, {MEL_BANDS}), got {tuple(examples.shape)}"
            )
        x = self.features(examples[:, None])  # (N, C, 6, 4)
        # the TF original flattens channel-last; the linear weights expect that order
        return self.embeddings(x.permute(0, 2, 3, 1).flatten(1))


class VGGishPCA(nn.Module):
    """torchvggish's postprocessing: PCA (with whitening) then clipping to [-2, 2] and 8-bit
    quantisation to 0..255, as in the AudioSet release of VGGish embeddings."""

    def __init__(self, size: int = VGGISH.embedding_size) -> None:
        super().__init__()
        self.register_buffer("pca_eigen_vectors", torch.zeros(size, size))
        self.register_buffer("pca_means", torch.zeros(size))

    def forward(self, embeddings: torch.Tensor) -> torch.Tensor:
        low, high = QUANTIZE_RANGE
        projected = (embeddings - self.pca_means) @ self.pca_eigen_vectors.T
        return torch.round((projected.clamp(low, high) - low) * (255.0 / (high - low)))


def load_vggish(path: str | Path, config: VGGishConfig = VGGISH, device: str = "cpu") -> VGGish:
    """VGGish with weights from torchvggish's `.pth` (read with torch.load(weights_only=True))
    or its imported `.safetensors`; every key and shape must match (ValueError names them)."""
    path = Path(path)
    try:
        state = read_state_dict(path, "features.0.weight", what="VGGish weights file")
    except KeyError as exc:
        raise ValueError(
            f"{path} holds no VGGish state dict (no 'features.0.weight' key); expected "
            "torchvggish's vggish-10086976.pth or its imported .safetensors"
        ) from exc
    with torch.device("meta"):  # strict_load materialises it; skips initialising 72M parameters
        model = VGGish(config)
    strict_load(
        model,
        state,
        str(path),
        against="VGGish",
        detail=f" ({config})",
        hint="expected torchvggish's vggish-10086976.pth (or its imported .safetensors)",
    )
    return model.eval().to(device)


def load_vggish_pca(path: str | Path, device: str = "cpu") -> VGGishPCA:
    """The PCA postprocessor from `vggish_pca_params-970ea276.pth` (keys pca_eigen_vectors
    (128, 128) and pca_means (128,) or (128, 1)) or its imported `.safetensors`."""
    path = Path(path)
    try:
        state = read_state_dict(path, "pca_eigen_vectors", what="VGGish PCA parameters file")
    except KeyError as exc:
        raise ValueError(f"{path} holds no 'pca_eigen_vectors'; expected vggish_pca_params-970ea276.pth") from exc
    state = {k: torch.as_tensor(v, dtype=torch.float32) for k, v in state.items()}
    if "pca_means" in state:
        state["pca_means"] = state["pca_means"].reshape(-1)  # the TF file stores a column vector's data
    pca = VGGishPCA()
    strict_load(pca, state, str(path), against="VGGish PCA parameters")
    return pca.eval().to(device)
