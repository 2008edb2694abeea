"""AV-Align (Yariv et al., TempoTokens): IoU of audio onsets and video motion peaks.

As published: audio peaks are librosa onsets (default settings: delta 0.07, whole clip, no
suppression); video peaks are strict local maxima of the per-frame mean optical-flow magnitude
above 0.1; an audio peak counts when a video peak lies within one frame (+-1/fps);
score = hits / (|audio peaks| + |video peaks| - hits).

Here the motion signal is NOT Farneback optical flow (no OpenCV): it is the mean absolute
grey-level difference between consecutive frames decoded at <= 96 px, which peaks when things
move or change abruptly. Because that signal has no pixel unit, a peak must exceed 10 % of the
clip's largest difference (and 0.5 grey levels) so codec noise on static shots is not counted.
Scores are therefore comparable between runs of this tool, not with published AV-Align numbers.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from dub.workflows.metrics.onsets import OnsetConfig, detect_onsets

__all__ = [
    "AV_ALIGN_ONSETS",
    "MotionPeaks",
    "av_align_iou",
    "av_align_score",
    "motion_peaks",
    "motion_signal",
    "peaks_of_motion",
]

# librosa.onset.onset_detect defaults, as the AV-Align script calls it
AV_ALIGN_ONSETS = OnsetConfig(peak_delta=0.07, nms_window_s=0.0, max_duration_s=None)


@dataclass(frozen=True)
class MotionPeaks:
    times_s: np.ndarray  # (K,) peak times
    signal: np.ndarray  # (T,) motion magnitude per frame
    frame_times_s: np.ndarray  # (T,)
    fps: float


def motion_signal(frames: np.ndarray) -> np.ndarray:
    """Mean absolute grey-level difference between consecutive frames (T, H, W) -> (T,); frame 0
    repeats the first difference, as the AV-Align script does."""
    frames = np.asarray(frames, dtype=np.float32)
    if frames.ndim != 3 or len(frames) < 2:
        raise ValueError(f"need at least 2 grey frames (T, H, W), got shape {frames.shape}")
    diff = np.abs(np.diff(frames, axis=0)).mean(axis=(1, 2))
    return np.concatenate([diff[:1], diff])


def motion_peaks(
    frames: np.ndarray, frame_times_s: np.ndarray, fps: float, rel_threshold: float = 0.1, abs_threshold: float = 0.5
) -> MotionPeaks:
    """Peaks of the frame-difference motion signal of grey frames (T, H, W)."""
    return peaks_of_motion(motion_signal(frames), frame_times_s, fps, rel_threshold, abs_threshold)


def peaks_of_motion(
    signal: np.ndarray, frame_times_s: np.ndarray, fps: float, rel_threshold: float = 0.1, abs_threshold: float = 0.5
) -> MotionPeaks:
    """Strict local maxima of a motion signal above max(abs_threshold, rel_threshold x its peak)."""
    signal = np.asarray(signal, dtype=np.float32)
    threshold = max(abs_threshold, rel_threshold * float(signal.max()))
    inner = np.arange(1, len(signal) - 1)
    is_peak = (signal[inner - 1] < signal[inner]) & (signal[inner] > signal[inner + 1]) & (signal[inner] > threshold)
    times = np.asarray(frame_times_s, dtype=np.float64)
    return MotionPeaks(times[inner[is_peak]], signal, times, fps)


def av_align_iou(audio_peaks_s: np.ndarray, video_peaks_s: np.ndarray, fps: float) -> float:
    """AV-Align IoU; NaN when neither modality has a peak (undefined)."""
    audio = np.asarray(audio_peaks_s, dtype=np.float64)
    video = np.asarray(video_peaks_s, dtype=np.float64)
    if len(audio) + len(video) == 0:
        return float("nan")
    window = 1.0 / fps
    hits = sum(1 for a in audio if np.any((video - window < a) & (a < video + window)))
    return hits / (len(audio) + len(video) - hits)


def av_align_score(wav: np.ndarray, sample_rate: int, motion: MotionPeaks) -> tuple[float, np.ndarray]:
    """AV-Align of an audio track against a clip's motion peaks; also returns the audio peaks."""
    detection = detect_onsets(wav, sample_rate, AV_ALIGN_ONSETS)
    return av_align_iou(detection.times_s, motion.times_s, motion.fps), detection.times_s
