"""Where generated audio goes: remuxed mp4s, WebDataset shards, audio files, and the journal.

Every file is written under a temporary name and renamed when complete, so a crash never
leaves a half file that looks finished. The journal (small Parquet parts) records report rows
as they become durable; the final report is rebuilt from the journal plus what is on disk.
"""

from __future__ import annotations

import json
import os
import re
import tarfile
import time
import uuid
from pathlib import Path

import numpy as np

_UNSAFE = re.compile(r"[^\w\-]+", re.UNICODE)


def safe_stem(path: str, max_len: int = 80) -> str:
    """A file-name-safe version of a source stem: no separators, no leading dots, bounded."""
    stem = _UNSAFE.sub("_", Path(path).stem).strip("._")
    return stem[:max_len] or "video"


def mp4_name(video_id: str, source_path: str) -> str:
    return f"{video_id}_{safe_stem(source_path)}.mp4"


def _tmp_name(path: Path) -> Path:
    return path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.tmp")


def write_flac_bytes(audio: np.ndarray, sample_rate: int) -> bytes:
    """FLAC-encode a mono float waveform in memory (WebDataset stores audio as bytes)."""
    from dub.workflows.media.audio import encode_audio_bytes

    return encode_audio_bytes(audio, sample_rate, "flac", "flac")


class ShardWriter:
    """Appends samples to a WebDataset tar under a temporary name; `close()` renames it and
    returns the keys that became durable."""

    def __init__(self, shard_dir: Path, shard_size: int):
        self.shard_dir = Path(shard_dir)
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
            self._tmp = _tmp_name(self._final)
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
        os.replace(self._tmp, self._final)
        keys, self._keys = self._keys, []
        self._writer = None
        self._count += 1
        return keys


def completed_shard_keys(shard_dir: Path) -> dict[str, str]:
    """Keys (video ids) in finished shards -> shard path. Temporary shards are ignored."""
    found: dict[str, str] = {}
    if not shard_dir.is_dir():
        return found
    for shard in sorted(shard_dir.glob("shard-*.tar")):
        try:
            with tarfile.open(shard) as tar:
                for member in tar.getmembers():
                    key = member.name.split(".", 1)[0]
                    found.setdefault(key, str(shard))
        except tarfile.TarError:
            continue  # a damaged shard does not count as done: its videos are redone
    return found


# Names of files being written (renamed when complete): ours (.NAME.XXXXXXXX.tmp), Parquet's
# (.NAME.XXXXXXXX.tmp, manifests/io.py) and the media writers' (.STEM.partial-PID.EXT,
# workflows/media/remux.py and audio.py).
TEMPORARY_PATTERNS = (".*.tmp", ".*.partial-*")


def remove_stale_temporaries(*dirs: Path) -> None:
    """Temporary files of a killed run are garbage: nothing refers to them."""
    for d in dirs:
        if d.is_dir():
            for pattern in TEMPORARY_PATTERNS:
                for tmp in d.glob(pattern):
                    tmp.unlink(missing_ok=True)


class Journal:
    """Rows as small Parquet parts, each written atomically: generate's report rows, or another
    schema's (ingest's probed manifest rows)."""

    def __init__(self, journal_dir: Path, flush_every_s: float = 5.0, flush_rows: int = 64, schema=None):
        from dub.manifests.schema import REPORT_SCHEMA

        self.dir = Path(journal_dir)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.flush_every_s = flush_every_s
        self.flush_rows = flush_rows
        self.schema = schema if schema is not None else REPORT_SCHEMA
        self._rows: list[dict] = []
        self._last = time.monotonic()

    def add(self, rows: list[dict]) -> None:
        self._rows.extend(rows)
        if len(self._rows) >= self.flush_rows or time.monotonic() - self._last > self.flush_every_s:
            self.flush()

    def flush(self) -> None:
        if not self._rows:
            return
        import pyarrow as pa
        import pyarrow.parquet as pq

        names = self.schema.names
        table = pa.Table.from_pylist([{name: r.get(name) for name in names} for r in self._rows], schema=self.schema)
        final = self.dir / f"part-{time.time_ns()}-{uuid.uuid4().hex[:6]}.parquet"
        tmp = _tmp_name(final)
        pq.write_table(table, tmp)
        os.replace(tmp, final)
        self._rows = []
        self._last = time.monotonic()


def read_journal(journal_dir: Path, key: str = "video_id") -> dict[str, dict]:
    """Latest journal row per `key` (parts are written whole, in time order)."""
    import pyarrow.parquet as pq

    latest: dict[str, dict] = {}
    if not Path(journal_dir).is_dir():
        return latest
    for part in sorted(Path(journal_dir).glob("part-*.parquet")):
        for row in pq.read_table(part).to_pylist():
            latest[row[key]] = row
    return latest


def write_json_atomic(path: Path, payload: dict) -> None:
    tmp = _tmp_name(Path(path))
    tmp.write_text(json.dumps(payload, indent=2, sort_keys=True, default=str))
    os.replace(tmp, path)
