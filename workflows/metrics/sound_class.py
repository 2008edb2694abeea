"""Sound-class accuracy: does each visual event sound like the recording its object's look names?

For clips whose events sidecar lists objects with a `class` and their `events` (foley-synth
writes them), every event is classified from the audio alone, by one fixed method:

1. the audio from `LEAD_S` before the event to `PATCH_S` after it, as a log-mel spectrogram
   (16 kHz, n_fft 512, hop 128, `N_MELS` bands over 0-8 kHz, log10 with a 1e-5 floor);
2. its band profile: the time-average of that log-mel, minus its own mean (so the level of the
   sound does not matter, only its spectral shape);
3. the same profile of each class's recording in the foley-synth sound bank (the first
   `PATCH_S` after its attack);
4. the predicted class is the recording whose profile correlates best (Pearson) with the
   event's; the event is right when that is its object's class.

A time-averaged profile is insensitive to where inside the patch the attack falls, so an event
whose onset is off by a few tens of milliseconds is still judged by its timbre; an event with
no sound at all gets a flat profile and whichever class correlates best with noise (it is then
usually wrong, as it should be). Per clip: correct / events; overall: pooled over events.
"""

from __future__ import annotations

import functools
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

SAMPLE_RATE = 16000
N_FFT = 512
HOP = 128
N_MELS = 32
LEAD_S = 0.02  # the window starts a little before the event: onsets a frame early still count
PATCH_S = 0.25  # shorter than foley-synth's minimum event spacing (0.3 s): one sound per patch
_FLOOR = 1e-5


@dataclass(frozen=True)
class ClassScores:
    correct: int
    events: int
    predicted: tuple[str, ...]  # per event, in time order
    expected: tuple[str, ...]

    @property
    def accuracy(self) -> float:
        return self.correct / self.events if self.events else float("nan")


def load_event_classes(sidecar: Path) -> list[tuple[float, str]] | None:
    """(time, class) of every event of `<stem>.events.json`, sorted; None when the sidecar does not
    name each object's class (then there is nothing to check)."""
    data = json.loads(Path(sidecar).read_text())
    objects = data.get("objects") if isinstance(data, dict) else None
    if not isinstance(objects, list) or not objects:
        return None
    out = []
    for obj in objects:
        if not (isinstance(obj, dict) and isinstance(obj.get("class"), str) and isinstance(obj.get("events"), list)):
            return None
        out += [(float(t), obj["class"]) for t in obj["events"]]
    return sorted(out)


def score_sound_classes(wav: np.ndarray, sample_rate: int, events: list[tuple[float, str]]) -> ClassScores:
    """Classify the sound at each (time, class) event of `wav` against the sound bank."""
    if sample_rate != SAMPLE_RATE:
        from dub.workflows.metrics.onsets import resample

        wav = resample(wav, sample_rate, SAMPLE_RATE)
    bank = _bank_profiles()
    names = list(bank)
    templates = np.stack([bank[n] for n in names])
    predicted, expected = [], []
    for time_s, cls in events:
        profile = _profile(wav, time_s - LEAD_S)
        predicted.append(names[int(np.argmax(templates @ profile))])
        expected.append(cls)
    correct = sum(p == e for p, e in zip(predicted, expected))
    return ClassScores(correct, len(events), tuple(predicted), tuple(expected))


def _profile(wav: np.ndarray, start_s: float) -> np.ndarray:
    """Unit-norm, mean-removed time-average of the log-mel of `PATCH_S + LEAD_S` seconds from
    `start_s` (zeros outside the signal)."""
    length = int(round((PATCH_S + LEAD_S) * SAMPLE_RATE))
    start = int(round(start_s * SAMPLE_RATE))
    patch = np.zeros(length + N_FFT, dtype=np.float64)
    lo, hi = max(start, 0), min(start + length + N_FFT, len(wav))
    if hi > lo:
        patch[lo - start : hi - start] = wav[lo:hi]
    frames = np.lib.stride_tricks.sliding_window_view(patch, N_FFT)[::HOP][: 1 + length // HOP]
    power = np.abs(np.fft.rfft(frames * np.hanning(N_FFT), axis=-1)) ** 2
    logmel = np.log10(np.maximum(power @ _mel_matrix().T, _FLOOR))
    profile = logmel.mean(axis=0)
    profile = profile - profile.mean()
    norm = np.linalg.norm(profile)
    return profile / norm if norm > 0 else profile


@functools.lru_cache(maxsize=1)
def _mel_matrix() -> np.ndarray:
    from dub.workflows.metrics.onsets import _mel_filters

    return np.asarray(_mel_filters(SAMPLE_RATE, N_FFT, N_MELS), dtype=np.float64)


@functools.lru_cache(maxsize=1)
def _bank_profiles() -> dict[str, np.ndarray]:
    from dub.workflows.datasets.sound_bank import ONSET_PREROLL_SECONDS, load_sound_bank

    return {
        name: _profile(samples, ONSET_PREROLL_SECONDS - LEAD_S)
        for name, samples in load_sound_bank(SAMPLE_RATE).items()
    }
