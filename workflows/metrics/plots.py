"""Waveform and mel-spectrogram pictures as PNG bytes, with numpy and zlib only (no matplotlib).

Time runs left to right over the same `duration_s` for every picture of a clip, so generated
and reference panels line up; event and onset times are drawn as thin vertical lines.
"""

from __future__ import annotations

import struct
import zlib
from functools import lru_cache

import numpy as np

__all__ = ["encode_png", "mel_db", "spectrogram_png", "waveform_png"]

BACKGROUND = (250, 250, 250)
WAVE_COLOUR = (40, 90, 160)
EVENT_COLOUR = (220, 40, 40)  # visual events / reference onsets
ONSET_COLOUR = (30, 160, 60)  # onsets detected in this audio

# a few anchor colours of a perceptual dark-to-bright map (viridis-like), interpolated
_MAP_ANCHORS = np.array([[68, 1, 84], [59, 82, 139], [33, 145, 140], [94, 201, 98], [253, 231, 37]], dtype=np.float64)


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def encode_png(image: np.ndarray, palette: np.ndarray | None = None) -> bytes:
    """PNG file bytes from an (H, W, 3) uint8 RGB image, or from (H, W) uint8 palette indices
    plus a (<=256, 3) uint8 palette (a third of the size for colour-mapped pictures).
    8-bit, no row filters, zlib level 6."""
    image = np.ascontiguousarray(image, dtype=np.uint8)
    if palette is None:
        if image.ndim != 3 or image.shape[2] != 3:
            raise ValueError(f"expected an (H, W, 3) RGB image, got {image.shape}")
        colour_type, row_bytes = 2, image.shape[1] * 3
    else:
        palette = np.ascontiguousarray(palette, dtype=np.uint8)
        if image.ndim != 2 or palette.ndim != 2 or palette.shape[1] != 3 or not 0 < len(palette) <= 256:
            raise ValueError(f"expected (H, W) indices and a (<=256, 3) palette, got {image.shape}, {palette.shape}")
        if int(image.max(initial=0)) >= len(palette):
            raise ValueError(f"palette index {int(image.max())} out of range for {len(palette)} colours")
        colour_type, row_bytes = 3, image.shape[1]
    h, w = image.shape[:2]
    raw = np.concatenate([np.zeros((h, 1), dtype=np.uint8), image.reshape(h, row_bytes)], axis=1).tobytes()
    header = struct.pack(">IIBBBBB", w, h, 8, colour_type, 0, 0, 0)
    chunks = _chunk(b"IHDR", header)
    if palette is not None:
        chunks += _chunk(b"PLTE", palette.tobytes())
    return b"\x89PNG\r\n\x1a\n" + chunks + _chunk(b"IDAT", zlib.compress(raw, 6)) + _chunk(b"IEND", b"")


def _spectrogram_palette() -> np.ndarray:
    """254 colour-map levels, then the event and onset marker colours (indices 254, 255)."""
    pos = np.linspace(0.0, 1.0, 254) * (len(_MAP_ANCHORS) - 1)
    lo = np.floor(pos).astype(int).clip(0, len(_MAP_ANCHORS) - 2)
    frac = (pos - lo)[:, None]
    levels = _MAP_ANCHORS[lo] * (1 - frac) + _MAP_ANCHORS[lo + 1] * frac
    return np.vstack([levels, [EVENT_COLOUR, ONSET_COLOUR]]).round().astype(np.uint8)


_PALETTE = _spectrogram_palette()
_EVENT_INDEX, _ONSET_INDEX = 254, 255


def _mark_times(img: np.ndarray, times_s, duration_s: float, colour, rows: slice = slice(None)) -> None:
    w = img.shape[1]
    for t in np.asarray(times_s if times_s is not None else [], dtype=np.float64):
        if 0 <= t <= duration_s:
            x = min(w - 1, int(t / duration_s * w))
            img[rows, x] = colour


def waveform_png(
    wav: np.ndarray,
    sample_rate: int,
    duration_s: float,
    *,
    events_s=None,
    onsets_s=None,
    width: int = 640,
    height: int = 90,
) -> bytes:
    """Min/max envelope per pixel column; events as full-height red lines, onsets as green
    ticks on the top quarter."""
    img = np.empty((height, width, 3), dtype=np.uint8)
    img[:] = BACKGROUND
    n = max(1, int(duration_s * sample_rate))
    wav = np.asarray(wav, dtype=np.float64).reshape(-1)[:n]
    wav = np.pad(wav, (0, n - len(wav)))
    peak = max(float(np.abs(wav).max()), 1e-9)
    edges = np.linspace(0, n, width + 1).astype(int)
    mid = (height - 1) / 2
    for x in range(width):
        seg = wav[edges[x] : max(edges[x + 1], edges[x] + 1)]
        top = int(round(mid - seg.max() / peak * mid))
        bottom = int(round(mid - seg.min() / peak * mid))
        img[max(0, top) : min(height, bottom + 1), x] = WAVE_COLOUR
    _mark_times(img, events_s, duration_s, EVENT_COLOUR)
    _mark_times(img, onsets_s, duration_s, ONSET_COLOUR, slice(0, height // 4))
    return encode_png(img)


def mel_db(wav: np.ndarray, sample_rate: int) -> np.ndarray:
    """(frames, 64) log-mel in dB with CNN14's 16 kHz front end (resampled when needed)."""
    import torch

    from dub.workflows.metrics.models.panns import CNN14_16K
    from dub.workflows.metrics.onsets import resample

    x = torch.as_tensor(resample(np.asarray(wav, dtype=np.float32).reshape(-1), sample_rate, CNN14_16K.sample_rate))
    x = torch.nn.functional.pad(x, (0, max(0, CNN14_16K.window_size - len(x))))
    with torch.inference_mode():
        return _front_end()(x[None])[0].double().numpy()


@lru_cache(maxsize=1)
def _front_end():
    from dub.workflows.metrics.models.panns import LogMelFrontEnd

    return LogMelFrontEnd().eval()


def spectrogram_png(
    wav: np.ndarray,
    sample_rate: int,
    duration_s: float,
    *,
    events_s=None,
    onsets_s=None,
    width: int = 640,
    height: int = 128,
    dynamic_range_db: float = 80.0,
) -> bytes:
    """Mel spectrogram (low frequencies at the bottom), `dynamic_range_db` below the peak mapped
    to the colour scale; events and onsets marked as in `waveform_png`."""
    mel = mel_db(wav, sample_rate)  # (T, 64)
    frames_per_s = 16000 / 160
    total = max(1, int(round(duration_s * frames_per_s)))
    mel = np.pad(mel[:total], ((0, max(0, total - len(mel))), (0, 0)), constant_values=mel.min())
    cols = np.linspace(0, total - 1, width).round().astype(int)
    rows = np.linspace(mel.shape[1] - 1, 0, height).round().astype(int)
    grid = mel[cols][:, rows].T  # (height, width), top row = highest band
    level = np.clip((grid - (grid.max() - dynamic_range_db)) / dynamic_range_db, 0.0, 1.0)
    img = np.round(level * 253).astype(np.uint8)
    _mark_times(img, events_s, duration_s, _EVENT_INDEX, slice(height - height // 6, height))
    _mark_times(img, onsets_s, duration_s, _ONSET_INDEX, slice(0, height // 6))
    return encode_png(img, _PALETTE)
