"""`dub extract` configuration, and the part of it that decides what the shards contain."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from dub.workflows.extract.sample import FEATURE_DTYPES
from dub.workflows.media.decode import RESIZE_BACKENDS, resize_problem

AUDIO_EXTENSIONS = (".wav", ".flac", ".mp3", ".ogg", ".opus", ".m4a", ".aac")


@dataclass(frozen=True)
class ExtractConfig:
    out_dir: str
    manifest: str | None = None  # clips with audio (from `dub ingest`)
    audio_dir: str | None = None  # audio-only files with NAME.txt captions (text-to-audio)
    model: str = "demo"  # bundle: which encoders and codec make the features and latents
    window_s: float | None = None  # None: the bundle's window
    overlap_s: float = 0.0  # minimum overlap between a clip's windows
    min_fraction: float = 0.9  # clips shorter than this fraction of a window are skipped (others padded)
    prompt: str = ""  # prompt for clips without their own
    feature_dtype: str = "float32"
    resize: str = "fast"  # frame resizing: "fast" swscale, "exact" torchvision's (changes the features)
    batch_size: int = 8  # windows per encoder call
    shard_size: int = 256  # samples per shard
    limit: int | None = None  # at most this many pending clips
    replicas: int | None = None  # encoder actors; default one per GPU, else 1
    address: str | None = None
    overwrite: bool = False

    def __post_init__(self) -> None:
        problems = []
        if self.manifest is None and self.audio_dir is None:
            problems.append("give a manifest (-m) and/or an audio directory (--audio-dir)")
        if self.window_s is not None and self.window_s <= 0:
            problems.append(f"--window must be positive, got {self.window_s}")
        if self.overlap_s < 0 or (self.window_s is not None and self.overlap_s >= self.window_s):
            problems.append("--overlap must be >= 0 and shorter than the window")
        if not 0.0 < self.min_fraction <= 1.0:
            problems.append(f"--min-fraction must be in (0, 1], got {self.min_fraction}")
        if self.feature_dtype not in FEATURE_DTYPES:
            problems.append(f"--feature-dtype must be one of {FEATURE_DTYPES}, got {self.feature_dtype!r}")
        if resize_problem(self.resize):
            problems.append(resize_problem(self.resize))
        for name in ("batch_size", "shard_size"):
            if getattr(self, name) < 1:
                problems.append(f"{name} must be >= 1")
        if self.limit is not None and self.limit < 1:
            problems.append("--limit must be >= 1")
        if self.replicas is not None and self.replicas < 1:
            problems.append("--replicas must be >= 1 (leave it out for one per GPU)")
        if problems:
            raise ValueError("invalid extract config: " + "; ".join(problems))

    # Fields that change which windows exist or what a sample holds: a rerun must agree.
    _IDENTITY = ("model", "window_s", "overlap_s", "min_fraction", "feature_dtype")

    def identity(self, window_s: float) -> dict[str, Any]:
        d = {name: getattr(self, name) for name in self._IDENTITY}
        d["window_s"] = window_s
        if self.resize != "fast":  # added later: shards made before it keep their identity and resume
            d["resize"] = self.resize
        return d

    @property
    def decode_backend(self) -> str:
        """`decode_window`'s backend for `resize`."""
        return RESIZE_BACKENDS[self.resize]

    def as_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)
