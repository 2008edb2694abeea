"""Best-of-N generation (`dub generate --candidates N`): N noise draws per window, one clip kept.

One network evaluation makes a candidate cheap, so a run can draw several per window (batched
with the window's features computed once) and keep, per clip, the candidate whose audio agrees
best with the video, by `--select`:

    av-align  AV-Align IoU of the candidate's audio onsets and the clip's motion peaks
              (`dub.workflows.metrics.av_align`), the motion taken from the Synchformer-rate
              frames the run decodes anyway (grey, 4x smaller): no weights, nothing decoded twice
    desync    DeSync, the mean |offset| the full Synchformer predicts (lower is better; needs
              its weights; the clip's frames are decoded once, its visual features are still
              computed once per candidate)
    clap      CLAP score of the clip's prompt and the candidate's audio (needs the CLAP weights;
              a clip without a prompt is chosen by av-align, and its row says so)

Ties keep the lower candidate number, so candidate 0 (the draw a one-candidate run makes) wins
unless another is better.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import numpy as np

SELECT_METRICS = ("av-align", "desync", "clap")
LOWER_IS_BETTER = {"desync"}
# the metric weights each selection needs (dub.workflows.metrics.weights keys)
SELECT_WEIGHTS = {"desync": "synchformer", "clap": "laion_clap"}
MAX_CANDIDATES = 64
MOTION_DOWNSAMPLE = 4  # Synchformer's 224 px frames -> 56 px grey for the motion signal


def candidates_problem(candidates: int, select: str) -> str | None:
    if not 1 <= candidates <= MAX_CANDIDATES:
        return f"--candidates must be between 1 and {MAX_CANDIDATES}, got {candidates}"
    if select not in SELECT_METRICS:
        return f"--select must be one of {SELECT_METRICS}, got {select!r}"
    return None


def candidate_seed(window_seed: int, candidate: int) -> int:
    """Candidate k's noise seed: the window's own seed for k = 0 (a one-candidate run's draw),
    else a hash of (window seed, k): deterministic, independent of batching."""
    if candidate == 0:
        return int(window_seed)
    digest = hashlib.sha256(f"{int(window_seed)}:candidate:{candidate}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & (2**63 - 1)


def window_motion(sync_frames: np.ndarray) -> np.ndarray:
    """The motion signal (T,) of one window's uint8 frames (T, H, W, 3), as AV-Align defines it."""
    from dub.workflows.metrics.av_align import motion_signal

    frames = np.asarray(sync_frames[:, ::MOTION_DOWNSAMPLE, ::MOTION_DOWNSAMPLE], np.float32)
    grey = frames @ np.array([0.299, 0.587, 0.114], np.float32)
    return motion_signal(grey)


def clip_motion(windows: list[dict], fps: float) -> tuple[np.ndarray, np.ndarray]:
    """One motion signal for the clip from its windows' (they overlap: each window contributes
    its frames up to the next window's start): (signal, frame times)."""
    signals, times = [], []
    for k, w in enumerate(windows):
        start = float(w["start_s"])
        t = start + np.arange(len(w["motion"])) / fps
        end = float(windows[k + 1]["start_s"]) if k + 1 < len(windows) else start + float(w["valid_s"])
        keep = t < end - 1e-9
        signals.append(np.asarray(w["motion"], np.float32)[keep])
        times.append(t[keep])
    return np.concatenate(signals), np.concatenate(times)


@dataclass(frozen=True)
class Selection:
    chosen: int
    scores: list[float]  # per candidate, in the metric's own unit; NaN where undefined
    metric: str = "av-align"


def select_candidate(
    candidates: list[np.ndarray],
    sample_rate: int,
    motion: np.ndarray,
    times: np.ndarray,
    fps: float,
    allowed: list[bool] | None = None,
) -> Selection:
    """The candidate clip whose audio onsets best match the clip's motion peaks (AV-Align IoU),
    among the `allowed` ones (content flags) when any is allowed, else among all."""
    from dub.workflows.metrics.av_align import av_align_score, peaks_of_motion

    peaks = peaks_of_motion(motion, times, fps)
    return choose([av_align_score(audio, sample_rate, peaks)[0] for audio in candidates], "av-align", allowed)


def choose(scores: list[float], metric: str, allowed: list[bool] | None = None) -> Selection:
    """The best candidate by `scores` in the metric's direction. Undefined scores rank after
    defined ones; when any candidate is `allowed` (content flags), the others rank after all of
    those; ties keep the lowest number."""
    sign = -1.0 if metric in LOWER_IS_BETTER else 1.0
    ok = allowed if allowed is not None and any(allowed) else [True] * len(scores)

    def rank(k: int) -> tuple:
        defined = bool(np.isfinite(scores[k]))
        return (ok[k], defined, sign * scores[k] if defined else 0.0, -k)

    return Selection(max(range(len(scores)), key=rank), [float(x) for x in scores], metric)


class ModelScorer:
    """DeSync or CLAP scores of a clip's candidates, the models loaded once per run."""

    def __init__(self, metric: str, device: str = "cpu", weights_dir: str | None = None) -> None:
        from dub.workflows.metrics.weights import WeightsLocator

        self.metric = metric
        locator = WeightsLocator(weights_dir)
        if metric == "desync":
            from dub.workflows.metrics.desync import build_offset_predictor

            self.model = build_offset_predictor(locator, device)
        elif metric == "clap":
            from dub.workflows.metrics.clap import build_clap

            self.model = build_clap(locator, device)
        else:
            raise ValueError(f"no model scores {metric!r}")

    def scores(self, candidates: list[np.ndarray], sample_rate: int, video_path: str, prompt: str) -> list[float]:
        from dub.workflows.media.audio import resample

        if self.metric == "desync":
            from dub.workflows.metrics.desync import desync_score

            frames = self.model.frames(video_path)  # decoded once for all candidates
            return [
                desync_score(self.model.segment_offsets(frames, resample(a, sample_rate, 16000))) for a in candidates
            ]
        from dub.workflows.metrics.clap import clap_score

        wavs = [resample(a, sample_rate, 48000) for a in candidates]
        texts = [prompt] * len(candidates)
        return [float(x) for x in clap_score(self.model.text_embeddings(texts), self.model.audio_embeddings(wavs))]
