"""The foley-synth sound bank: a handful of short CC0 recordings, one per sound class.

The WAVs under `sounds/` were cut from Debian's `sonic-pi-samples` package (every file used
here is CC0, see `sounds/ATTRIBUTION.md`) by `extract_sounds`, which is how they can be
remade:

    apt-get download sonic-pi-samples && dpkg-deb -x sonic-pi-samples_*.deb pkg
    python -m dub.workflows.datasets.sound_bank pkg/usr/share/sonic-pi/samples workflows/datasets/sounds
"""

from __future__ import annotations

import argparse
import functools
import wave
from dataclasses import dataclass
from pathlib import Path

import numpy as np

SOUNDS_DIR = Path(__file__).resolve().parent / "sounds"
BANK_SAMPLE_RATE = 16000
MAX_SOUND_SECONDS = 0.5
_FADE_OUT_SECONDS = 0.06  # long enough that a cut-off ring does not click
_ONSET_FRACTION = 0.3  # the attack: quiet precursors (a bell's pre-click, a snap's rub) do not count
ONSET_PREROLL_SECONDS = 0.002  # each WAV keeps 2 ms before its attack, faded in, so the cut never clicks
_PEAK = 0.89  # -1 dBFS
_DAMPING_HOLD_SECONDS = 0.03


@dataclass(frozen=True)
class SoundSource:
    """One sound class and the recording it comes from."""

    name: str  # class name, also the WAV stem
    description: str  # words for prompts: "snare drum hit"
    original_file: str  # file name inside sonic-pi-samples (usr/share/sonic-pi/samples/)
    author: str  # as named in the package's debian/copyright
    year: int
    source_url: str
    licence: str = "CC0-1.0"
    # Extra exponential decay (time constant, s) after a 30 ms hold, for recordings that ring
    # on: at the minimum event spacing (0.3 s) the previous sound must be far below a new attack.
    damping_s: float | None = None

    @property
    def file_name(self) -> str:
        return f"{self.name}.wav"


SOUND_SOURCES: tuple[SoundSource, ...] = (
    SoundSource(
        "snare",
        "snare drum hit",
        "drum_snare_hard.flac",
        "menegass",
        2010,
        "http://www.freesound.org/people/menegass/sounds/100058/",
    ),
    SoundSource(
        "tom",
        "low tom thump",
        "drum_tom_lo_hard.flac",
        "menegass",
        2010,
        "http://www.freesound.org/people/menegass/sounds/100064/",
        damping_s=0.15,
    ),
    SoundSource(
        "cowbell",
        "cowbell clank",
        "drum_cowbell.flac",
        "Neotone",
        2009,
        "http://freesound.org/people/Neotone/sounds/75338/",
    ),
    SoundSource(
        "bell",
        "bell ding",
        "perc_bell.flac",
        "AlaskaRobotics",
        2014,
        "http://freesound.org/people/AlaskaRobotics/sounds/221515/",
        damping_s=0.15,
    ),
    SoundSource(
        "snap",
        "finger snap",
        "perc_snap.flac",
        "SoundCollectah",
        2010,
        "http://www.freesound.org/people/SoundCollectah/sounds/109400/",
    ),
    SoundSource(
        "tabla", "tabla knock", "tabla_na.flac", "dio_333", 2011, "http://freesound.org/people/dio_333/sounds/130421/"
    ),
)
SOUND_CLASSES: tuple[str, ...] = tuple(s.name for s in SOUND_SOURCES)
SOURCES_BY_CLASS: dict[str, SoundSource] = {s.name: s for s in SOUND_SOURCES}


def read_wav(path: Path) -> tuple[np.ndarray, int]:
    """Mono float32 samples in [-1, 1] and the sample rate of a 16-bit PCM WAV."""
    with wave.open(str(path), "rb") as f:
        if f.getsampwidth() != 2:
            raise ValueError(f"{path}: expected 16-bit PCM, got {8 * f.getsampwidth()}-bit")
        raw = np.frombuffer(f.readframes(f.getnframes()), dtype="<i2")
        channels, rate = f.getnchannels(), f.getframerate()
    samples = raw.reshape(-1, channels).astype(np.float32).mean(axis=1) / 32768.0
    return samples, rate


def write_wav(path: Path, samples: np.ndarray, sample_rate: int) -> None:
    """Write mono float samples as 16-bit PCM (clipped to [-1, 1])."""
    pcm = np.round(np.clip(samples, -1.0, 32767 / 32768) * 32768.0).astype("<i2")
    with wave.open(str(path), "wb") as f:
        f.setnchannels(1)
        f.setsampwidth(2)
        f.setframerate(sample_rate)
        f.writeframes(pcm.tobytes())


def resample(samples: np.ndarray, from_rate: int, to_rate: int) -> np.ndarray:
    """Polyphase resampling (exact rational ratio, deterministic)."""
    if from_rate == to_rate:
        return samples.astype(np.float32)
    from math import gcd

    from scipy.signal import resample_poly

    g = gcd(from_rate, to_rate)
    return resample_poly(samples, to_rate // g, from_rate // g).astype(np.float32)


@functools.lru_cache(maxsize=8)
def _load_bank(sample_rate: int, sounds_dir: str) -> dict[str, np.ndarray]:
    bank = {}
    for source in SOUND_SOURCES:
        path = Path(sounds_dir) / source.file_name
        if not path.is_file():
            raise FileNotFoundError(
                f"sound bank file {path} is missing; remake it with "
                "`python -m dub.workflows.datasets.sound_bank <sonic-pi samples dir> <sounds dir>`"
            )
        samples, rate = read_wav(path)
        bank[source.name] = resample(samples, rate, sample_rate)
        bank[source.name].setflags(write=False)  # shared between calls through the cache
    return bank


def load_sound_bank(sample_rate: int = BANK_SAMPLE_RATE, sounds_dir: Path = SOUNDS_DIR) -> dict[str, np.ndarray]:
    """{class name: mono float32 samples at `sample_rate`}; each attack is ONSET_PREROLL_SECONDS in."""
    return _load_bank(int(sample_rate), str(sounds_dir))


def decode_mono(path: Path) -> tuple[np.ndarray, int]:
    """Decode any audio file PyAV reads into mono float32 and its sample rate."""
    import av

    with av.open(str(path)) as container:
        stream = container.streams.audio[0]
        resampler = av.AudioResampler(format="flt", layout="mono", rate=stream.rate)
        chunks = [
            out.to_ndarray().reshape(-1) for frame in container.decode(stream) for out in resampler.resample(frame)
        ]
        chunks += [out.to_ndarray().reshape(-1) for out in resampler.resample(None)]
        return np.concatenate(chunks).astype(np.float32), stream.rate


def trim_sound(
    samples: np.ndarray, sample_rate: int, max_seconds: float = MAX_SOUND_SECONDS, damping_s: float | None = None
) -> np.ndarray:
    """Start ONSET_PREROLL_SECONDS before the attack, keep at most `max_seconds`, damp a long
    ring (see SoundSource.damping_s), fade both ends, peak-normalise."""
    samples = samples - samples.mean()
    level = np.abs(samples)
    preroll = int(round(ONSET_PREROLL_SECONDS * sample_rate))
    attack = int(np.argmax(level >= _ONSET_FRACTION * level.max()))
    if attack < preroll:  # the recording starts on its attack: pad so every sound has the same pre-roll
        samples = np.concatenate([np.zeros(preroll - attack, samples.dtype), samples])
        attack = preroll
    cut = samples[attack - preroll : attack - preroll + int(round(max_seconds * sample_rate))].copy()
    cut[:preroll] *= 0.5 * (1.0 - np.cos(np.linspace(0.0, np.pi, preroll)))
    if damping_s is not None:
        after_hold = np.maximum(0.0, np.arange(len(cut)) / sample_rate - ONSET_PREROLL_SECONDS - _DAMPING_HOLD_SECONDS)
        cut *= np.exp(-after_hold / damping_s)
    fade = min(len(cut), int(round(_FADE_OUT_SECONDS * sample_rate)))
    cut[len(cut) - fade :] *= 0.5 * (1.0 + np.cos(np.linspace(0.0, np.pi, fade)))
    return (cut * (_PEAK / np.abs(cut).max())).astype(np.float32)


def extract_sounds(samples_dir: Path, out_dir: Path = SOUNDS_DIR, sample_rate: int = BANK_SAMPLE_RATE) -> list[Path]:
    """Remake the bank's WAVs from an unpacked sonic-pi-samples directory."""
    samples_dir, out_dir = Path(samples_dir), Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for source in SOUND_SOURCES:
        original = samples_dir / source.original_file
        if not original.is_file():
            raise FileNotFoundError(
                f"{original} not found: pass the directory usr/share/sonic-pi/samples "
                "of the unpacked Debian package sonic-pi-samples"
            )
        samples, rate = decode_mono(original)
        sound = trim_sound(resample(samples, rate, sample_rate), sample_rate, damping_s=source.damping_s)
        write_wav(out_dir / source.file_name, sound, sample_rate)
        written.append(out_dir / source.file_name)
    return written


def _main() -> None:
    parser = argparse.ArgumentParser(description="Cut the foley-synth sound bank from sonic-pi-samples.")
    parser.add_argument("samples_dir", type=Path, help="unpacked usr/share/sonic-pi/samples")
    parser.add_argument("out_dir", type=Path, nargs="?", default=SOUNDS_DIR)
    args = parser.parse_args()
    for path in extract_sounds(args.samples_dir, args.out_dir):
        print(path, path.stat().st_size, "bytes")


if __name__ == "__main__":
    _main()
