"""Configuration of a foley-synth build: everything a clip is derived from, besides its index."""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields

SPLITS: tuple[str, ...] = ("train", "val", "test")


@dataclass(frozen=True)
class FoleySynthConfig:
    seed: int = 0
    n_train: int = 16
    n_val: int = 4
    n_test: int = 4
    seconds: float = 8.0
    fps: int = 25
    size: tuple[int, int] = (224, 224)  # (width, height); even, for H.264 yuv420p
    sample_rate: int = 16000
    min_gap_s: float = 0.3  # between any two events of a clip, so every onset stands alone
    start_margin_s: float = 0.3  # no event before: the motion leading to it is on screen
    end_margin_s: float = 0.5  # no event after seconds - this: every sound ends inside the clip
    two_object_prob: float = 0.25
    gain_range: tuple[float, float] = (0.6, 1.0)  # per event, linear
    noise_dbfs: float = -50.0  # RMS of the background noise
    crf: int = 23
    audio_bitrate: int = 64000

    def __post_init__(self) -> None:
        # tuples survive a JSON round trip as lists
        object.__setattr__(self, "size", tuple(int(v) for v in self.size))
        object.__setattr__(self, "gain_range", tuple(float(v) for v in self.gain_range))
        problems = []
        for name in ("n_train", "n_val", "n_test"):
            if getattr(self, name) < 0:
                problems.append(f"{name}={getattr(self, name)} must be >= 0")
        if self.fps <= 0:
            problems.append(f"fps={self.fps} must be > 0")
        if self.sample_rate < 8000:
            problems.append(f"sample_rate={self.sample_rate} must be >= 8000")
        width, height = self.size
        if width < 64 or height < 64 or width % 2 or height % 2:
            problems.append(f"size={self.size} must be (width, height), each even and >= 64 (H.264 yuv420p)")
        if self.min_gap_s <= 0:
            problems.append(f"min_gap_s={self.min_gap_s} must be > 0")
        usable = self.seconds - self.start_margin_s - self.end_margin_s
        if usable < self.min_gap_s:
            problems.append(
                f"seconds={self.seconds} leaves {usable:.2f} s for events after the "
                f"{self.start_margin_s} s start and {self.end_margin_s} s end margins; use seconds >= "
                f"{self.start_margin_s + self.end_margin_s + self.min_gap_s:.2f}"
            )
        if not 0.0 <= self.two_object_prob <= 1.0:
            problems.append(f"two_object_prob={self.two_object_prob} must be in [0, 1]")
        lo, hi = self.gain_range
        if not 0.0 < lo <= hi <= 1.0:
            problems.append(f"gain_range={self.gain_range} must satisfy 0 < low <= high <= 1")
        if problems:
            raise ValueError("invalid foley-synth config: " + "; ".join(problems))

    def split_sizes(self) -> dict[str, int]:
        return {"train": self.n_train, "val": self.n_val, "test": self.n_test}

    def as_dict(self) -> dict:
        out = asdict(self)
        out["size"] = list(self.size)
        out["gain_range"] = list(self.gain_range)
        return out

    @classmethod
    def from_dict(cls, data: dict) -> FoleySynthConfig:
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"unknown foley-synth config keys {unknown}; known keys: {sorted(known)}")
        return cls(**data)
