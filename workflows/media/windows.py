"""Split a video's duration into model windows and stitch their audio back together.

Windows are full length (the network is trained on `window_s` clips) and spread evenly from
0 to the end, so neighbours overlap by at least `overlap_s`; a clip shorter than one window
gets one short window. Stitching gives each overlap an equal-power crossfade (cos / sin
gains, cos^2 + sin^2 = 1) centred in the overlap: for uncorrelated audio the power through the
junction stays level.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Window:
    start_s: float
    end_s: float

    @property
    def duration_s(self) -> float:
        return self.end_s - self.start_s


def plan_windows(duration_s: float, window_s: float = 8.0, overlap_s: float = 1.0) -> list[Window]:
    """Windows covering [0, duration_s): as few as possible with overlaps >= overlap_s."""
    if duration_s <= 0:
        raise ValueError(f"duration_s must be positive, got {duration_s}")
    if window_s <= 0 or not 0 <= overlap_s < window_s:
        raise ValueError(f"need window_s > 0 and 0 <= overlap_s < window_s, got {window_s}, {overlap_s}")
    if duration_s <= window_s + 1e-9:
        return [Window(0.0, float(duration_s))]
    count = math.ceil((duration_s - overlap_s) / (window_s - overlap_s) - 1e-9)
    count = max(count, 2)
    spacing = (duration_s - window_s) / (count - 1)
    starts = [round(i * spacing, 9) for i in range(count - 1)] + [round(duration_s - window_s, 9)]
    return [Window(start, round(start + window_s, 9)) for start in starts]


def stitch(
    audios: Sequence[np.ndarray], windows: Sequence[Window], sample_rate: int, crossfade_s: float | None = None
) -> np.ndarray:
    """Join per-window audio into one track covering windows[0].start_s .. last end.

    `audios[i]` ((L,) or (C, L), time on the last axis) starts at windows[i].start_s; shorter
    arrays are zero-extended, longer ones cut at their window's end. Each overlap gets an
    equal-power crossfade centred in it, `crossfade_s` long (None: the whole overlap),
    shortened where needed so neighbouring crossfades never meet.
    """
    if len(audios) != len(windows) or not audios:
        raise ValueError(f"need one audio per window, got {len(audios)} audios for {len(windows)} windows")
    order = sorted(range(len(windows)), key=lambda i: windows[i].start_s)
    windows = [windows[i] for i in order]
    audios = [np.asarray(audios[i], dtype=np.float32) for i in order]
    lead_shape = audios[0].shape[:-1]
    if any(a.shape[:-1] != lead_shape for a in audios):
        raise ValueError("all window audios need the same channel layout")
    origin = round(windows[0].start_s * sample_rate)
    starts = [round(w.start_s * sample_rate) - origin for w in windows]
    ends = [round(w.end_s * sample_rate) - origin for w in windows]
    total = max(ends)
    centres, halves = _crossfades(starts, ends, None if crossfade_s is None else crossfade_s * sample_rate)
    out = np.zeros(lead_shape + (total,), np.float32)
    for i, audio in enumerate(audios):
        lo = starts[i] if i == 0 else centres[i - 1] - halves[i - 1]
        hi = ends[i] if i == len(audios) - 1 else centres[i] + halves[i]
        gain = np.ones(hi - lo, np.float64)
        if i > 0 and halves[i - 1]:
            n = 2 * halves[i - 1]
            gain[:n] = np.sin(0.5 * np.pi * (np.arange(n) + 0.5) / n)
        if i < len(audios) - 1 and halves[i]:
            n = 2 * halves[i]
            gain[len(gain) - n :] = np.cos(0.5 * np.pi * (np.arange(n) + 0.5) / n)
        segment = _segment(audio, lo - starts[i], hi - starts[i])
        out[..., lo:hi] += (segment * gain).astype(np.float32)
    return out


def _crossfades(starts: list[int], ends: list[int], length: float | None) -> tuple[list[int], list[int]]:
    """Centre and half-length (samples) of the crossfade between window i and i + 1."""
    centres, overlaps = [], []
    for i in range(len(starts) - 1):
        overlap = max(0, ends[i] - starts[i + 1])
        # no overlap: hard cut where the next window begins
        centres.append(starts[i + 1] + overlap // 2)
        overlaps.append(overlap)
    halves = []
    for i, (centre, overlap) in enumerate(zip(centres, overlaps)):
        half = overlap // 2 if length is None else min(overlap // 2, int(length) // 2)
        if i > 0:
            half = min(half, (centre - centres[i - 1]) // 2)
        if i + 1 < len(centres):
            half = min(half, (centres[i + 1] - centre) // 2)
        halves.append(max(0, half))
    return centres, halves


def _segment(audio: np.ndarray, lo: int, hi: int) -> np.ndarray:
    """audio[..., lo:hi], zero where the array is shorter."""
    out = np.zeros(audio.shape[:-1] + (hi - lo,), np.float32)
    a, b = max(lo, 0), min(hi, audio.shape[-1])
    if b > a:
        out[..., a - lo : b - lo] = audio[..., a:b]
    return out
