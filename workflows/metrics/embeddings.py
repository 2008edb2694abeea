"""Audio embedding backends for FAD (and classifier logits for KL/IS where a model has them).

    panns    PANNs CNN14 16 kHz, 2048-d + 527 AudioSet logits   needs Cnn14_16k_mAP=0.438.pth
    vggish   VGGish 128-d, one row per 0.96 s example           needs vggish-10086976.pth
    passt    PaSST-S 768-d + 527 AudioSet logits, 32 kHz 10 s   needs passt-s-f128-p16-s10-ap.476-swa.pt
    logmel   weights-free: 64-band log-mel (CNN14's front end), mean and std over frames (128-d).
             Useful to compare runs of this tool with each other; NOT comparable with
             published FAD numbers.

`build_backend(name, locator)` raises `BackendUnavailable` with a one-line reason (which file
is missing, or that the backend is not implemented), which the report prints as is.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

import numpy as np

from dub.workflows.metrics.weights import MissingWeights, WeightsLocator

if TYPE_CHECKING:
    from dub.workflows.metrics.models.panns import Cnn14Config
    from dub.workflows.metrics.models.passt import PasstConfig
    from dub.workflows.metrics.models.vggish import VGGishConfig

__all__ = [
    "BACKENDS",
    "BackendInfo",
    "BackendUnavailable",
    "ClipFeatures",
    "EmbeddingBackend",
    "LogMelStatsBackend",
    "PannsBackend",
    "PasstBackend",
    "VGGishBackend",
    "build_backend",
]


class BackendUnavailable(RuntimeError):
    """The backend cannot run here; the message says why (missing file, not implemented)."""


@dataclass(frozen=True)
class BackendInfo:
    name: str
    sample_rate: int
    comparable: bool  # with numbers published by papers using the same model
    note: str


@dataclass(frozen=True)
class ClipFeatures:
    embeddings: np.ndarray  # (N, D) float64, one row per clip (vggish: per 0.96 s example, as av-benchmark)
    logits: np.ndarray | None  # (N, C) classifier logits, None when the model has no classifier


def paired_cosine(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Cosine similarity of each row of (N, D) `a` with the same row of `b` (float64): the
    CLAP score (text, audio) and IB-score (video, audio) per clip."""
    a = np.atleast_2d(np.asarray(a, dtype=np.float64))
    b = np.atleast_2d(np.asarray(b, dtype=np.float64))
    a = a / np.maximum(np.linalg.norm(a, axis=-1, keepdims=True), 1e-12)
    b = b / np.maximum(np.linalg.norm(b, axis=-1, keepdims=True), 1e-12)
    return np.sum(a * b, axis=-1)


class EmbeddingBackend(Protocol):
    info: BackendInfo

    def features(self, wavs: Sequence[np.ndarray]) -> ClipFeatures:
        """Mono waveforms at info.sample_rate -> per-clip features."""
        ...


def _min_length(wav: np.ndarray, n: int) -> np.ndarray:
    wav = np.asarray(wav, dtype=np.float32).reshape(-1)
    return np.pad(wav, (0, max(0, n - len(wav))))


class LogMelStatsBackend:
    info = BackendInfo(
        "logmel", 16000, False, "weights-free log-mel mean+std statistics: not comparable with published FAD"
    )

    def __init__(self, device: str = "cpu") -> None:
        import torch

        from dub.workflows.metrics.models.panns import LogMelFrontEnd

        self._torch = torch
        self.device = device
        self.front = LogMelFrontEnd().eval().to(device)

    def features(self, wavs: Sequence[np.ndarray]) -> ClipFeatures:
        torch = self._torch
        rows = []
        with torch.inference_mode():
            for wav in wavs:
                x = torch.from_numpy(_min_length(wav, 1024))[None].to(self.device)
                mel = self.front(x)[0].double()  # (T, mels) in dB
                rows.append(torch.cat([mel.mean(dim=0), mel.std(dim=0, unbiased=False)]).cpu().numpy())
        return ClipFeatures(np.stack(rows) if rows else np.zeros((0, 128)), None)


class PannsBackend:
    info = BackendInfo("panns", 16000, True, "PANNs CNN14 16 kHz (2048-d embedding, AudioSet logits)")

    def __init__(self, weights_path: str | Path, device: str = "cpu", config: Cnn14Config | None = None) -> None:
        import torch

        from dub.workflows.metrics.models.panns import CNN14_16K, load_cnn14

        self._torch = torch
        self.device = device
        self.model = load_cnn14(weights_path, config or CNN14_16K, device)

    def features(self, wavs: Sequence[np.ndarray]) -> ClipFeatures:
        torch = self._torch
        embs, logits = [], []
        with torch.inference_mode():
            for wav in wavs:
                x = torch.from_numpy(_min_length(wav, 16000))[None].to(self.device)  # >= 1 s: 5 poolings need frames
                e, lg = self.model(x)
                embs.append(e[0].double().cpu().numpy())
                logits.append(lg[0].double().cpu().numpy())
        if not embs:
            return ClipFeatures(
                np.zeros((0, self.model.config.channels[-1])), np.zeros((0, self.model.config.classes_num))
            )
        return ClipFeatures(np.stack(embs), np.stack(logits))


class VGGishBackend:
    """FD-VGG as MMAudio's av-benchmark computes it: raw 128-d embeddings (no last ReLU, no PCA),
    one row per 0.96 s example, all examples of all clips in the Fréchet statistics."""

    info = BackendInfo(
        "vggish", 16000, True, "VGGish 128-d (torchvggish weights, no PCA), one row per 0.96 s example, as av-benchmark"
    )

    def __init__(
        self, weights_path: str | Path, device: str = "cpu", config: VGGishConfig | None = None, batch: int = 64
    ) -> None:
        import torch

        from dub.workflows.metrics.models.vggish import VGGISH, VGGishFrontEnd, load_vggish

        self._torch = torch
        self.device = device
        self.batch = batch
        self.front = VGGishFrontEnd()  # float64 on the CPU, like the numpy original
        self.model = load_vggish(weights_path, config or VGGISH, device)

    def features(self, wavs: Sequence[np.ndarray]) -> ClipFeatures:
        torch = self._torch
        examples = [self.front(torch.from_numpy(np.asarray(w, dtype=np.float32).reshape(-1))) for w in wavs]
        rows = []
        with torch.inference_mode():
            if examples:
                stacked = torch.cat(examples).float()
                for start in range(0, len(stacked), self.batch):
                    rows.append(self.model(stacked[start : start + self.batch].to(self.device)).double().cpu())
        if not rows:
            return ClipFeatures(np.zeros((0, self.model.config.embedding_size)), None)
        return ClipFeatures(torch.cat(rows).numpy(), None)


class PasstBackend:
    """FD/KL/IS-PaSST as MMAudio's av-benchmark computes them: each clip (mono, 32 kHz) minus its
    mean (av-benchmark's loader removes DC from every file), cut or zero-padded to 320000 samples
    (10 s), through hear21passt's get_basic_model(mode="all") rebuilt in `dub.workflows.metrics.models.passt`;
    one 768-d embedding and 527 logits per clip. av-benchmark also cuts clips at its
    --audio_length before this; the report does the same (`ReportConfig.audio_length_s`)."""

    info = BackendInfo(
        "passt",
        32000,
        True,
        "PaSST-S SWA (AudioSet mAP .476) 768-d embedding + 527 logits, 10 s at 32 kHz, as av-benchmark",
    )

    def __init__(
        self,
        weights_path: str | Path,
        device: str = "cpu",
        config: PasstConfig | None = None,
        batch: int = 8,
        remove_dc: bool = True,
    ) -> None:
        import torch

        from dub.workflows.metrics.models.passt import PASST_S_SWA, load_passt

        self._torch = torch
        self.device = device
        self.batch = batch
        self.remove_dc = remove_dc
        self.model = load_passt(weights_path, config or PASST_S_SWA, device)

    def _clip(self, wav: np.ndarray):
        from dub.workflows.metrics.models.passt import fit_clip

        x = np.asarray(wav, dtype=np.float64).reshape(-1)
        if self.remove_dc and len(x):
            x = x - x.mean()
        return fit_clip(self._torch.from_numpy(x.astype(np.float32)))

    def features(self, wavs: Sequence[np.ndarray]) -> ClipFeatures:
        torch = self._torch
        embs, logits = [], []
        with torch.inference_mode():
            for start in range(0, len(wavs), self.batch):
                x = torch.stack([self._clip(w) for w in wavs[start : start + self.batch]]).to(self.device)
                e, lg = self.model(x)
                embs.append(e.double().cpu())
                logits.append(lg.double().cpu())
        if not embs:
            config = self.model.config
            return ClipFeatures(np.zeros((0, config.embed_dim)), np.zeros((0, config.num_classes)))
        return ClipFeatures(torch.cat(embs).numpy(), torch.cat(logits).numpy())


def available_weights(locator: WeightsLocator, key: str) -> Path:
    """The metric weights file `key` (METRIC_WEIGHTS); BackendUnavailable naming it when missing."""
    try:
        return locator.path(key)
    except MissingWeights as exc:
        raise BackendUnavailable(str(exc)) from exc


BACKENDS: dict[str, Callable[[WeightsLocator, str], EmbeddingBackend]] = {
    "panns": lambda locator, device: PannsBackend(available_weights(locator, "panns_cnn14_16k"), device),
    "vggish": lambda locator, device: VGGishBackend(available_weights(locator, "vggish"), device),
    "passt": lambda locator, device: PasstBackend(available_weights(locator, "passt"), device),
    "logmel": lambda locator, device: LogMelStatsBackend(device),
}


def build_backend(name: str, locator: WeightsLocator | None = None, device: str = "cpu") -> EmbeddingBackend:
    if name not in BACKENDS:
        raise ValueError(f"unknown embedding backend {name!r}; choose from {sorted(BACKENDS)}")
    return BACKENDS[name](locator or WeightsLocator(), device)
