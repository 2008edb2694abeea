"""DeSync: the audio-visual offset Synchformer predicts, in seconds (av-benchmark's definition).

av-benchmark (`av_bench/evaluate.py`) cuts a clip into segments (video: 16 frames at 25 fps,
stride 8; audio: 0.64 s at 16 kHz, stride 0.32 s), encodes every segment with the full Synchformer,
and asks the sync head for one of 21 offset classes on the grid -2.0 .. +2.0 s twice per clip:
on the FIRST 14 segments and on the LAST 14 segments (4.8 s each). Both absolute offsets are
appended to one list and DeSync is the mean of that list over all clips; so every clip counts
twice, even when its two windows coincide (exactly 14 segments, a 4.8 s clip).

Clips shorter than 14 segments (under 4.8 s): the head's position embedding has exactly
1 + 14 * 8 + 1 + 14 * 6 = 198 entries, so av-benchmark cannot score them (its loaders also drop
any clip shorter than the evaluated duration). Here such a clip gets no offsets (`clip_offsets`
returns []): it is left out of DeSync rather than padded or guessed.

Length: av-benchmark cuts every clip to `--audio_length` (8 s by default) before segmenting;
`build_offset_predictor(max_duration_s=8.0)` does the same, the default (None) segments the whole
clip, so "last 14 segments" is the clip's own end. Video and audio segments are counted
separately and the shorter stream bounds both (segment i covers the same time in each).

The predictor needs the full `synchformer_state_dict.pth` (visual + audio branch + sync head,
see workflows/metrics/models/synchformer_sync.py). Importing this module does not import torch.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Protocol

import numpy as np

from dub.workflows.metrics.embeddings import BackendUnavailable, available_weights
from dub.workflows.metrics.weights import WeightsLocator

if TYPE_CHECKING:
    from dub.workflows.metrics.models.synchformer_sync import FullSynchformer, FullSynchformerConfig

__all__ = [
    "HEAD_SEGMENTS",
    "OFFSET_GRID_S",
    "SEGMENT_STRIDE_S",
    "WINDOW_S",
    "OffsetPredictor",
    "SynchformerOffsetPredictor",
    "build_offset_predictor",
    "desync_score",
    "desync_segment_windows",
    "desync_windows",
]

OFFSET_GRID_S = np.linspace(-2.0, 2.0, 21)  # av-benchmark's make_class_grid(-2, 2, 21)
HEAD_SEGMENTS = 14
SEGMENT_STRIDE_S = 0.32  # 8 frames at 25 fps, 5120 samples at 16 kHz
WINDOW_S = 4.8  # 14 segments: (16 + 8 * 13) frames / 25 fps


class OffsetPredictor(Protocol):
    def clip_offsets(self, video_path: str, wav_16k: np.ndarray) -> list[float]:
        """Predicted audio-visual offsets (seconds, on OFFSET_GRID_S) of the first and the last 14
        segments; [] when the clip has fewer than 14 segments."""
        ...


def desync_segment_windows(num_segments: int, window: int = HEAD_SEGMENTS) -> list[range]:
    """Segment indices the head sees, as av-benchmark slices them: `[:14]` and `[-14:]`. Both
    windows are returned even when they are the same segments (each counts in the mean); none
    when the clip has fewer than `window` segments."""
    if num_segments < window:
        return []
    return [range(0, window), range(num_segments - window, num_segments)]


def desync_windows(duration_s: float) -> list[tuple[float, float]]:
    """The time spans (seconds) of the two windows for a clip of `duration_s` whose video and
    audio both last that long: [] under 4.8 s; the last window ends on the segment grid (a
    multiple of 0.32 s plus 0.32 s), which can be before the clip's end."""
    from dub.workflows.metrics.models.synchformer_sync import (
        SAMPLE_RATE,
        VIDEO_FPS,
        num_audio_segments,
        num_video_segments,
    )

    frames = max(0, math.ceil(duration_s * VIDEO_FPS - 1e-6))
    segments = min(num_video_segments(frames), num_audio_segments(int(round(duration_s * SAMPLE_RATE))))
    return [
        (round(w.start * SEGMENT_STRIDE_S, 6), round(w.start * SEGMENT_STRIDE_S + WINDOW_S, 6))
        for w in desync_segment_windows(segments)
    ]


def desync_score(offsets_s: list[float]) -> float:
    """Mean absolute offset (seconds) over every window of every clip; NaN when there is none."""
    return float(np.mean(np.abs(offsets_s))) if len(offsets_s) else float("nan")


class SynchformerOffsetPredictor:
    """Offsets of one clip from its video file and a 16 kHz waveform (e.g. the generated audio)."""

    def __init__(
        self,
        model: FullSynchformer,
        *,
        max_duration_s: float | None = None,
        batch_size: int = 8,
        decode_backend: str = "swscale",
    ) -> None:
        if max_duration_s is not None and max_duration_s <= 0:
            raise ValueError(f"max_duration_s must be positive or None, got {max_duration_s}")
        self.model = model
        self.max_duration_s = max_duration_s
        self.batch_size = batch_size
        self.decode_backend = decode_backend

    def clip_offsets(self, video_path: str, wav_16k: np.ndarray) -> list[float]:
        """Decode the video at 25 fps (short side to the crop size, centre crop), encode the
        segments the head needs, return [offset of the first 14, offset of the last 14] in seconds
        (signed; `desync_score` takes the absolute values), or [] for a clip under 14 segments."""
        from dub.workflows.metrics.models.synchformer_sync import SAMPLE_RATE

        wav = _mono(wav_16k)
        if self.max_duration_s is not None:
            wav = wav[: int(SAMPLE_RATE * self.max_duration_s)]
        return self.segment_offsets(self.frames(video_path), wav)

    def frames(self, video_path: str) -> np.ndarray:
        """The uint8 (T, crop, crop, 3) frames at 25 fps that `clip_offsets` scores, resized by
        `decode_backend`."""
        from dub.workflows.media.decode import FrameTarget, decode_window
        from dub.workflows.metrics.models.synchformer_sync import VIDEO_FPS

        target = FrameTarget(fps=VIDEO_FPS, size=self.model.config.visual.crop_size, mode="crop")
        return decode_window(str(video_path), 0.0, self.max_duration_s, [target], backend=self.decode_backend).frames[0]

    def segment_offsets(self, frames_25fps: np.ndarray, wav_16k: np.ndarray) -> list[float]:
        """`clip_offsets` on already decoded uint8 (T, H, W, 3) frames at 25 fps."""
        logits = self.window_logits(frames_25fps, wav_16k)
        return [float(OFFSET_GRID_S[i]) for i in np.argmax(logits, axis=-1)] if len(logits) else []

    def window_logits(self, frames_25fps: np.ndarray, wav_16k: np.ndarray) -> np.ndarray:
        """(windows, 21) offset logits of the first and last 14 segments; (0, 21) for short clips."""
        import torch

        from dub.workflows.metrics.models.synchformer_sync import num_audio_segments, num_video_segments

        wav = _mono(wav_16k)
        segments = min(num_video_segments(len(frames_25fps)), num_audio_segments(len(wav)))
        windows = desync_segment_windows(segments, self.model.config.head.segments)
        if not windows:
            return np.zeros((0, len(OFFSET_GRID_S)), dtype=np.float32)
        needed = sorted({s for w in windows for s in w})  # segments are encoded once, independently
        vfeat = self.model.video_segments_features(frames_25fps, needed, batch_size=self.batch_size)
        afeat = self.model.audio_segments_features(wav, needed)
        where = {s: i for i, s in enumerate(needed)}
        pick = torch.tensor([[where[s] for s in w] for w in windows], device=vfeat.device)  # (windows, 14)
        logits = self.model.offset_logits(vfeat[0, pick], afeat[0, pick])
        return logits.float().cpu().numpy()


def _mono(wav: np.ndarray) -> np.ndarray:
    """(L,) or (channels, L) float audio -> (L,) float32 (channels averaged, as av-benchmark)."""
    wav = np.asarray(wav, dtype=np.float32)
    if wav.ndim == 2:
        wav = wav.mean(axis=0)
    if wav.ndim != 1:
        raise ValueError(f"audio must be (L,) or (channels, L) at 16 kHz; got shape {wav.shape}")
    return wav


def build_offset_predictor(
    locator: WeightsLocator,
    device: str = "cpu",
    *,
    config: FullSynchformerConfig | None = None,
    max_duration_s: float | None = None,
    batch_size: int = 8,
    decode_backend: str = "swscale",
) -> SynchformerOffsetPredictor:
    """Load the full Synchformer from the weights registry; BackendUnavailable (with the reason)
    when the file is missing, unreadable or not the whole model. `decode_backend`: `decode_window`'s
    resizer for the 224 crop (dub.workflows.media.decode.RESIZE_BACKENDS)."""
    path = available_weights(locator, "synchformer")
    from dub.workflows.metrics.models.synchformer_sync import load_full_synchformer

    try:
        model = load_full_synchformer(path, device, config)
    except (ValueError, KeyError, OSError) as exc:  # WeightsError subclasses are ValueError / OSError
        raise BackendUnavailable(f"{path.name} found, but it cannot be used for DeSync: {exc}") from exc
    return SynchformerOffsetPredictor(
        model, max_duration_s=max_duration_s, batch_size=batch_size, decode_backend=decode_backend
    )
