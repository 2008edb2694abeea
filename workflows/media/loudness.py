"""Loudness normalisation of generated audio (`dub generate --loudness LUFS`).

Integrated loudness is ITU-R BS.1770-4 / EBU R128 as pyloudnorm measures it (K-weighting,
400 ms blocks, absolute and relative gates). The gain that brings a clip to the target is capped
so the true peak (the peak of the signal 4x oversampled, BS.1770-4 Annex 2) stays under a
ceiling: a gain, never a limiter, so the waveform's shape is the model's. A clip whose gated
loudness is undefined (silence, or shorter than one 400 ms block) is left as it is.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

TRUE_PEAK_OVERSAMPLING = 4  # BS.1770-4 Annex 2: 4x for 48 kHz and below
MEASURE_RATE = 48000  # the rate BS.1770 specifies its filters at
MIN_TARGET_LUFS, MAX_TARGET_LUFS = -70.0, 0.0  # the absolute gate, and full scale


@dataclass(frozen=True)
class LoudnessChange:
    before_lufs: float | None  # None: undefined (silence or too short); the audio was left as it is
    after_lufs: float | None
    gain_db: float
    true_peak_dbtp: float | None  # after the gain
    peak_limited: bool  # the ceiling, not the target, set the gain (after_lufs is below the target)


def loudness_problem(target_lufs: float | None, ceiling_dbtp: float) -> str | None:
    """Why these settings cannot be used, in one line, or None."""
    if target_lufs is not None and not MIN_TARGET_LUFS < target_lufs <= MAX_TARGET_LUFS:
        return f"--loudness must be in ({MIN_TARGET_LUFS:g}, {MAX_TARGET_LUFS:g}] LUFS (EBU R128: -23), got {target_lufs:g}"
    if not ceiling_dbtp <= 0.0:
        return f"--true-peak must be <= 0 dBTP, got {ceiling_dbtp:g}"
    return None


def integrated_loudness(audio: np.ndarray, sample_rate: int) -> float | None:
    """BS.1770 integrated loudness in LUFS, measured at 48 kHz; None where it is undefined (all
    blocks gated out, or the clip is shorter than one block).

    BS.1770 specifies its K-weighting filters at 48 kHz; at other rates pyloudnorm redesigns them
    by the bilinear transform, which warps near Nyquist. Generated 16 kHz audio can hold most of
    its energy between 6 and 8 kHz, where that put the 16 kHz reading 2.3 LU above the 48 kHz
    one, and the delivered AAC track (48 kHz) 2 LU under the target. So the signal is resampled
    to 48 kHz for measuring (the audio written keeps its rate)."""
    import pyloudnorm
    from scipy.signal import resample_poly

    meter = pyloudnorm.Meter(MEASURE_RATE)
    if len(audio) < int(round(meter.block_size * sample_rate)):
        return None
    audio = np.asarray(audio, np.float64)
    if sample_rate != MEASURE_RATE:  # in float64, not media.audio.resample's float32: the gain is
        # read off this measurement and must put the clip on the target to ~1e-6 LU
        g = math.gcd(MEASURE_RATE, sample_rate)
        audio = resample_poly(audio, MEASURE_RATE // g, sample_rate // g)
    loudness = meter.integrated_loudness(audio)
    return float(loudness) if math.isfinite(loudness) else None


def true_peak_dbtp(audio: np.ndarray) -> float | None:
    """Peak of the 4x oversampled signal in dB relative to full scale; None for silence."""
    from scipy.signal import resample_poly

    if not len(audio):
        return None
    peak = float(np.abs(resample_poly(np.asarray(audio, np.float64), TRUE_PEAK_OVERSAMPLING, 1)).max())
    peak = max(peak, float(np.abs(audio).max()))
    return 20.0 * math.log10(peak) if peak > 0 else None


def normalize_loudness(
    audio: np.ndarray, sample_rate: int, target_lufs: float, ceiling_dbtp: float = -1.0
) -> tuple[np.ndarray, LoudnessChange]:
    """`audio` (mono float) scaled to `target_lufs`, or less where the true peak would pass
    `ceiling_dbtp`; with what was measured before and after."""
    before = integrated_loudness(audio, sample_rate)
    if before is None:
        return audio, LoudnessChange(None, None, 0.0, true_peak_dbtp(audio), False)
    gain_db = target_lufs - before
    peak = true_peak_dbtp(audio)
    limited = peak is not None and peak + gain_db > ceiling_dbtp
    if limited:
        gain_db = ceiling_dbtp - peak
    out = (np.asarray(audio, np.float64) * 10.0 ** (gain_db / 20.0)).astype(np.float32)
    return out, LoudnessChange(before, integrated_loudness(out, sample_rate), gain_db, true_peak_dbtp(out), limited)
