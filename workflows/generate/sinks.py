"""Where generated audio goes: remuxed mp4s, WebDataset shards and audio files.

Every file is written under a temporary name and renamed when complete (`dub.storage.atomic`),
so a crash never leaves a half file that looks finished; generate's journal (`dub.storage.journal`)
records report rows as they become durable.
"""

from __future__ import annotations

import re
import time
import uuid
from pathlib import Path

import numpy as np

from dub.storage.atomic import commit, temporary_name

_UNSAFE = re.compile(r"[^\w\-]+", re.UNICODE)


def safe_stem(path: str, max_len: int = 80) -> str:
    """A file-name-safe version of a source stem: no separators, no leading dots, bounded."""
    stem = _UNSAFE.sub("_", Path(path).stem).strip("._")
    return stem[:max_len] or "video"


def mp4_name(video_id: str, source_path: str) -> str:
    return f"{video_id}_{safe_stem(source_path)}.mp4"


def write_flac_bytes(audio: np.ndarray, sample_rate: int) -> bytes:
    """FLAC-encode a mono float waveform in memory (WebDataset stores audio as bytes)."""
    from dub.workflows.media.audio import encode_audio_bytes

    return encode_audio_bytes(audio, sample_rate, "flac", "flac")


class ShardWriter:
    """Appends samples to a WebDataset tar under a temporary name; `close()` renames it and
    returns the keys that became durable."""

    def __init__(self, shard_dir: Path, shard_size: int, on_close=None):
        self.shard_dir = Path(shard_dir)
        self.on_close = on_close  # called with each shard's path once it is renamed (extract publishes it)
        self.shard_dir.mkdir(parents=True, exist_ok=True)
        self.shard_size = shard_size
        self.session = f"{time.strftime('%Y%m%d%H%M%S')}-{uuid.uuid4().hex[:6]}"
        self._count = 0
        self._writer = None
        self._keys: list[str] = []
        self._tmp: Path | None = None
        self._final: Path | None = None

    def add(self, key: str, sample: dict[str, bytes]) -> list[str]:
        """Add one sample; returns the keys made durable if this filled a shard."""
        import webdataset as wds

        if self._writer is None:
            self._final = self.shard_dir / f"shard-{self.session}-{self._count:05d}.tar"
            self._tmp = temporary_name(self._final)
            self._stream = open(self._tmp, "wb")
            self._writer = wds.TarWriter(self._stream)
        self._writer.write({"__key__": key, **sample})
        self._keys.append(key)
        if len(self._keys) >= self.shard_size:
            return self.close()
        return []

    @property
    def current_path(self) -> str | None:
        return str(self._final) if self._final else None

    def close(self) -> list[str]:
        if self._writer is None:
            return []
        self._writer.close()
        self._stream.close()
        commit(self._tmp, self._final)
        if self.on_close is not None:
            self.on_close(self._final)
        keys, self._keys = self._keys, []
        self._writer = None
        self._count += 1
        return keys


def completed_shard_keys(shard_dir: Path) -> dict[str, str]:
    """Keys (video ids) in finished shards -> shard path. Temporary shards are ignored."""
    from dub.storage.mirror import Mirror

    return Mirror(Path(shard_dir)).tar_keys("")
