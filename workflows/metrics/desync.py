"""DeSync: the audio-visual offset Synchformer predicts, in seconds (av-benchmark's definition).

av-benchmark runs the full Synchformer (visual + audio feature extractors and the sync
transformer head) on the first and the last 4.8 s of each clip (14 segments of 16 frames,
stride 8, at 25 fps), takes the arg-max of 21 offset classes on the grid -2.0 .. +2.0 s, and
averages the absolute offsets. The windowing and averaging live here; the offset predictor
needs the full `synchformer_state_dict.pth` and its audio branch + sync head, which this version
does not implement, so `build_offset_predictor` explains that instead of guessing a number.
"""

from __future__ import annotations

from typing import Protocol

import numpy as np

from workflows.metrics.embeddings import BackendUnavailable
from workflows.metrics.weights import MissingWeights, WeightsLocator

__all__ = ["OFFSET_GRID_S", "WINDOW_S", "OffsetPredictor", "build_offset_predictor", "desync_score", "desync_windows"]

OFFSET_GRID_S = np.linspace(-2.0, 2.0, 21)
WINDOW_S = 4.8  # (16 + 8 * 13) frames / 25 fps


class OffsetPredictor(Protocol):
    def offset_s(self, video_path: str, wav_16k: np.ndarray, start_s: float, end_s: float) -> float:
        """Predicted audio-visual offset (seconds, on OFFSET_GRID_S) for one window."""
        ...


def desync_windows(duration_s: float) -> list[tuple[float, float]]:
    """The first and the last 4.8 s (one window when the clip is not longer than that)."""
    if duration_s <= WINDOW_S:
        return [(0.0, duration_s)]
    return [(0.0, WINDOW_S), (duration_s - WINDOW_S, duration_s)]


def desync_score(offsets_s: list[float]) -> float:
    return float(np.mean(np.abs(offsets_s))) if offsets_s else float("nan")


def build_offset_predictor(locator: WeightsLocator) -> OffsetPredictor:
    try:
        path = locator.path("synchformer")
    except MissingWeights as exc:
        raise BackendUnavailable(str(exc)) from exc
    raise BackendUnavailable(f"{path.name} found, but the full Synchformer (audio branch + sync head) "
                             f"is not implemented in this version")
