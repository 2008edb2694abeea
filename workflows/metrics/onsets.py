"""Onset detection and onset-based sync metrics, without any model weights.

Detection follows the recipe MMAudio's `eval_onsets.py` gets from librosa (re-implemented
here, librosa is not a dependency): audio at 22.05 kHz, first 8 s; onset strength = mean over
128 mel bands of the positive first difference of the log-power mel spectrogram
(n_fft 2048, hop 512, centred frames, 80 dB floor), min-max normalised; peaks picked where the
envelope is a local maximum (30 ms before) and exceeds its local mean (100 ms each side) by
`peak_delta`, at least 30 ms apart; then non-maximum suppression within 50 ms, ranked by the
peak of the min-max normalised waveform.

Scores against reference onsets (the video's visual events, or onsets detected on the
reference audio):
- `onset_acc_ap` (MMAudio): each reference onset takes the strongest unused detection within
  +-`tolerance_s` (eval_onsets.py uses its `delta`, 0.3, for both the peak threshold and this
  tolerance, in seconds). Accuracy = hits / reference onsets. AP ranks hits (label 1, score =
  waveform peak near the detection), misses (label 1, score 0) and unmatched detections
  (label 0, their score) exactly as sklearn's `average_precision_score`. Two fixes to the
  script, both stated: the match confidence is read from the candidate itself (the script
  indexes the shrinking list with stale indices) and reference onsets left after all
  detections are used are still counted as misses (the script stops early).
- `onset_prf`: one-to-one matching within +-50 ms (mir_eval's onset window), precision,
  recall, F1.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from functools import lru_cache

import numpy as np

__all__ = [
    "OnsetConfig",
    "OnsetDetection",
    "OnsetScores",
    "average_precision",
    "detect_onsets",
    "onset_acc_ap",
    "onset_prf",
    "onset_strength",
    "peak_pick",
    "resample",
    "score_onsets",
]


@dataclass(frozen=True)
class OnsetConfig:
    sample_rate: int = 22050
    n_fft: int = 2048
    hop_length: int = 512
    n_mels: int = 128
    top_db: float = 80.0
    peak_delta: float = 0.3  # eval_onsets.py --delta default (librosa's own default is 0.07)
    tolerance_s: float = 0.3  # eval_onsets.py matches within its same `delta`, in seconds
    nms_window_s: float = 0.05
    confidence_window_s: float = 0.05
    max_duration_s: float | None = 8.0  # eval_onsets.py scores the first 8 s
    prf_window_s: float = 0.05

    def __post_init__(self) -> None:
        # a matching window of 0 or less matches nothing: every score would be 0, silently
        windows = {"onset tolerance": self.tolerance_s, "P/R/F1 window": self.prf_window_s}
        bad = [f"{name} {value}" for name, value in windows.items() if not value > 0]
        bad += [
            f"{name} {value}"
            for name, value in (("NMS window", self.nms_window_s), ("confidence window", self.confidence_window_s))
            if value < 0
        ]
        if bad:
            raise ValueError(f"onset windows must be positive seconds, got {', '.join(bad)}")

    def as_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> OnsetConfig:
        return cls(**data)


@dataclass(frozen=True)
class OnsetDetection:
    samples: np.ndarray  # (K,) int onset positions in samples at config.sample_rate
    times_s: np.ndarray  # (K,) the same in seconds
    wav_norm: np.ndarray  # min-max normalised waveform the confidences come from
    envelope: np.ndarray  # onset strength per frame (normalised to [0, 1])
    sample_rate: int


@dataclass(frozen=True)
class OnsetScores:
    acc: float
    ap: float
    precision: float
    recall: float
    f1: float
    n_detected: int
    n_reference: int

    def as_dict(self) -> dict:
        return asdict(self)


@lru_cache(maxsize=8)
def _mel_filters(sample_rate: int, n_fft: int, n_mels: int):
    import torchaudio

    fb = torchaudio.functional.melscale_fbanks(
        n_fft // 2 + 1, 0.0, sample_rate / 2, n_mels, sample_rate, norm="slaney", mel_scale="slaney"
    )
    return fb.T.contiguous()  # (n_mels, n_freq), librosa's default filters


@lru_cache(maxsize=4)
def _hann(n_fft: int):
    import torch

    return torch.hann_window(n_fft, periodic=True)


@lru_cache(maxsize=8)
def _resampler(orig: int, new: int):
    import torchaudio

    return torchaudio.transforms.Resample(orig, new)  # builds its sinc kernel once


def resample(wav: np.ndarray, orig: int, new: int) -> np.ndarray:
    """Band-limited resampling of mono float32 audio (torchaudio's sinc interpolation)."""
    import torch

    if orig == new:
        return np.asarray(wav, dtype=np.float32)
    with torch.inference_mode():
        return _resampler(orig, new)(torch.as_tensor(np.asarray(wav, dtype=np.float32))).numpy()


def onset_strength(wav: np.ndarray, config: OnsetConfig = OnsetConfig()) -> np.ndarray:
    """Spectral-flux onset envelope, one value per hop (frame k is centred at k * hop)."""
    import torch

    x = torch.as_tensor(np.asarray(wav, dtype=np.float32))
    n_frames = 1 + len(x) // config.hop_length
    if len(x) == 0:
        return np.zeros(1)
    with torch.inference_mode():
        spec = torch.stft(
            x,
            config.n_fft,
            config.hop_length,
            window=_hann(config.n_fft),
            center=True,
            pad_mode="constant",
            return_complex=True,
        )
        mel = _mel_filters(config.sample_rate, config.n_fft, config.n_mels) @ (spec.real.square() + spec.imag.square())
        db = 10.0 * torch.log10(torch.clamp(mel, min=1e-10))
        db = torch.maximum(db, db.max() - config.top_db)
        flux = torch.clamp(db[:, 1:] - db[:, :-1], min=0.0).mean(dim=0).double().numpy()
    # librosa's alignment: one frame for the difference lag plus n_fft / (2 hop) frames because
    # a centred window sees an event that many hops before its centre reaches it.
    pad = 1 + config.n_fft // (2 * config.hop_length)
    env = np.concatenate([np.zeros(pad), flux])[:n_frames]
    return np.pad(env, (0, max(0, n_frames - len(env))))


def peak_pick(
    x: np.ndarray, pre_max: int, post_max: int, pre_avg: int, post_avg: int, delta: float, wait: int
) -> np.ndarray:
    """Indices n with x[n] = max(x[n-pre_max : n+post_max]), x[n] >= mean(x[n-pre_avg : n+post_avg]) + delta,
    and more than `wait` frames after the previous pick (librosa.util.peak_pick semantics)."""
    x = np.asarray(x, dtype=np.float64)
    picks: list[int] = []
    last = -np.inf
    for n in range(len(x)):
        lo_max, hi_max = max(0, n - pre_max), min(len(x), n + post_max)
        if x[n] < x[lo_max:hi_max].max():
            continue
        lo_avg, hi_avg = max(0, n - pre_avg), min(len(x), n + post_avg)
        if x[n] < x[lo_avg:hi_avg].mean() + delta:
            continue
        if n - last > wait:
            picks.append(n)
            last = n
    return np.asarray(picks, dtype=np.int64)


def _window_max(wav_norm: np.ndarray, center: int, half: int) -> float:
    lo, hi = max(0, center - half), min(len(wav_norm), center + half)
    return float(wav_norm[lo:hi].max()) if hi > lo else 0.0


def _nms(onsets: np.ndarray, wav_norm: np.ndarray, window: int, half: int) -> np.ndarray:
    """Keep the most confident onset of every cluster closer than `window` samples."""
    conf = np.array([_window_max(wav_norm, int(o), half) for o in onsets])
    kept: list[int] = []
    remaining = list(onsets.tolist())
    for idx in np.argsort(-conf, kind="stable"):
        cur = int(onsets[idx])
        if cur not in remaining:
            continue
        kept.append(cur)
        remaining = [o for o in remaining if o != cur and abs(cur - o) >= window]
    return np.asarray(sorted(kept), dtype=np.int64)


def detect_onsets(wav: np.ndarray, sample_rate: int, config: OnsetConfig = OnsetConfig()) -> OnsetDetection:
    """Onsets of mono `wav` (resampled to config.sample_rate first when needed)."""
    wav = np.asarray(wav, dtype=np.float32).reshape(-1)
    wav = resample(wav, sample_rate, config.sample_rate)
    sr = config.sample_rate
    if config.max_duration_s is not None:
        wav = wav[: int(config.max_duration_s * sr)]
    if len(wav) == 0:
        empty = np.zeros(0, dtype=np.int64)
        return OnsetDetection(empty, empty.astype(float), np.zeros(0), np.zeros(0), sr)
    env = onset_strength(wav, config)
    env = env - env.min()
    env = env / (env.max() + np.finfo(np.float64).tiny)
    per_s = sr / config.hop_length
    frames = peak_pick(
        env,
        pre_max=int(0.03 * per_s),
        post_max=int(0.0 * per_s) + 1,
        pre_avg=int(0.10 * per_s),
        post_avg=int(0.10 * per_s) + 1,
        delta=config.peak_delta,
        wait=int(0.03 * per_s),
    )
    samples = frames * config.hop_length
    samples = samples[samples < len(wav)]
    wav_norm = (wav - wav.min()) / (wav.max() - wav.min() + 1e-6)
    samples = _nms(samples, wav_norm, int(config.nms_window_s * sr), int(config.confidence_window_s * sr))
    return OnsetDetection(samples, samples / sr, wav_norm, env, sr)


def average_precision(y_true: np.ndarray, y_score: np.ndarray) -> float:
    """Step-wise AP = sum_k (R_k - R_{k-1}) P_k over distinct score thresholds (sklearn's definition).
    NaN when there is no positive label."""
    y_true = np.asarray(y_true, dtype=np.float64)
    y_score = np.asarray(y_score, dtype=np.float64)
    n_pos = y_true.sum()
    if n_pos == 0:
        return float("nan")
    order = np.argsort(-y_score, kind="mergesort")
    y_true, y_score = y_true[order], y_score[order]
    last_of_threshold = np.r_[np.nonzero(np.diff(y_score))[0], len(y_score) - 1]
    tp = np.cumsum(y_true)[last_of_threshold]
    predicted = last_of_threshold + 1
    precision = tp / predicted
    recall = tp / n_pos
    return float(np.sum(np.diff(np.r_[0.0, recall]) * precision))


def onset_acc_ap(
    detection: OnsetDetection, reference_s: np.ndarray, config: OnsetConfig = OnsetConfig()
) -> tuple[float, float]:
    """MMAudio's onset accuracy and AP of `detection` against reference onset times (seconds).
    NaN for both when there are no reference onsets (undefined, not zero)."""
    sr = detection.sample_rate
    ref = np.sort(np.asarray(reference_s, dtype=np.float64))
    if config.max_duration_s is not None:
        ref = ref[ref < config.max_duration_s]
    if len(ref) == 0:
        return float("nan"), float("nan")
    half = int(config.confidence_window_s * sr)
    tol = config.tolerance_s * sr
    unused = list(detection.samples.tolist())
    y_true: list[int] = []
    y_score: list[float] = []
    hits = 0
    for ref_sample in ref * sr:
        candidates = [o for o in unused if abs(o - ref_sample) < tol]
        y_true.append(1)
        if not candidates:
            y_score.append(0.0)
            continue
        match = max(candidates, key=lambda o: detection.wav_norm[o])
        y_score.append(_window_max(detection.wav_norm, match, half))
        unused.remove(match)
        hits += 1
    for o in unused:
        y_true.append(0)
        y_score.append(_window_max(detection.wav_norm, o, half))
    return hits / len(ref), average_precision(np.asarray(y_true), np.asarray(y_score))


def onset_prf(detected_s: np.ndarray, reference_s: np.ndarray, window_s: float = 0.05) -> tuple[float, float, float]:
    """Precision, recall, F1 with one-to-one matches within +-window_s (greedy in time order,
    which is a maximum matching for equal windows on a line). NaN where undefined."""
    det = np.sort(np.asarray(detected_s, dtype=np.float64))
    ref = np.sort(np.asarray(reference_s, dtype=np.float64))
    i = j = matches = 0
    while i < len(det) and j < len(ref):
        if abs(det[i] - ref[j]) <= window_s:
            matches += 1
            i += 1
            j += 1
        elif det[i] < ref[j]:
            i += 1
        else:
            j += 1
    precision = matches / len(det) if len(det) else float("nan")
    recall = matches / len(ref) if len(ref) else float("nan")
    if len(det) == 0 and len(ref) == 0:
        return float("nan"), float("nan"), float("nan")
    f1 = 2 * matches / (len(det) + len(ref))
    return precision, recall, f1


def score_onsets(
    wav: np.ndarray, sample_rate: int, reference_s: np.ndarray, config: OnsetConfig = OnsetConfig()
) -> OnsetScores:
    """All onset scores of one clip: detection on `wav`, then accuracy/AP and P/R/F1."""
    detection = detect_onsets(wav, sample_rate, config)
    ref = np.asarray(reference_s, dtype=np.float64)
    if config.max_duration_s is not None:
        ref = ref[ref < config.max_duration_s]
    acc, ap = onset_acc_ap(detection, ref, config)
    precision, recall, f1 = onset_prf(detection.times_s, ref, config.prf_window_s)
    return OnsetScores(acc, ap, precision, recall, f1, len(detection.samples), len(ref))
