"""What `dub report` pairs: a generate run's rows, their generated audio, reference audio and
visual events, matched by video id.

Reference audio, in order: the source video's own audio track; else `--reference`, either a
folder (files named `<video_id>.*` or `<source stem>.*`) or a Parquet manifest with columns
video_id, path. Visual events: the optional sidecar `<source stem>.events.json`
(`{"events": [seconds, ...]}`) next to the source video.
"""

from __future__ import annotations

import json
import tarfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from dub.workflows.metrics.media_io import has_audio_stream, read_audio

__all__ = ["GeneratedRow", "ReferenceIndex", "load_events", "load_run", "read_generated_audio"]

AUDIO_EXTENSIONS = (".wav", ".flac", ".mp3", ".ogg", ".opus", ".m4a", ".aac", ".mp4", ".mkv", ".webm", ".mov")
REQUIRED_COLUMNS = ("video_id", "path", "status")


@dataclass(frozen=True)
class GeneratedRow:
    video_id: str
    source_path: Path | None
    status: str
    error: str | None
    output_mp4: Path | None
    output_shard: Path | None
    prompt: str | None
    output_audio: Path | None = None  # text-to-audio runs: the audio file
    # `dub generate --candidates`: every candidate's selection score, and the one kept
    candidate_scores: tuple[float, ...] | None = None
    candidate_chosen: int | None = None
    candidate_metric: str | None = None


def _resolve(run_dir: Path, value) -> Path | None:
    if value is None or (isinstance(value, float) and np.isnan(value)) or str(value) == "":
        return None
    p = Path(str(value))
    return p if p.is_absolute() else run_dir / p


def load_run(run_dir: str | Path) -> tuple[dict, list[GeneratedRow]]:
    """(run.json contents, one GeneratedRow per report row) of a generate run directory."""
    import pyarrow.parquet as pq

    run_dir = Path(run_dir)
    report = run_dir / "report.parquet"
    if not report.is_file():
        raise FileNotFoundError(
            f"{run_dir} is not a generate run: {report.name} is missing (run `dub generate ... -o {run_dir}` first)"
        )
    run_json = run_dir / "run.json"
    config = json.loads(run_json.read_text()) if run_json.is_file() else {}
    table = pq.read_table(report).to_pylist()
    if table:
        missing = [c for c in REQUIRED_COLUMNS if c not in table[0]]
        if missing:
            raise ValueError(f"{report} lacks columns {missing}; is it a `dub generate` report?")
    rows = []
    for r in table:
        rows.append(
            GeneratedRow(
                video_id=str(r["video_id"]),
                # text-to-audio rows have no video: their path is "prompt:<index>"
                source_path=None
                if str(r.get("path") or "").startswith("prompt:")
                else _resolve(run_dir, r.get("path")),
                status=str(r.get("status") or ""),
                error=r.get("error"),
                output_mp4=_resolve(run_dir, r.get("output_mp4")),
                output_shard=_resolve(run_dir, r.get("output_shard")),
                prompt=r.get("prompt"),
                output_audio=_resolve(run_dir, r.get("output_audio")),
                candidate_scores=None if r.get("candidate_scores") is None else tuple(r["candidate_scores"]),
                candidate_chosen=r.get("candidate_chosen"),
                candidate_metric=r.get("candidate_metric"),
            )
        )
    return config, rows


def read_generated_audio(row: GeneratedRow, sample_rate: int) -> tuple[np.ndarray, str]:
    """Generated audio of a done row (mp4 track, else the text-to-audio file, else
    `<video_id>.flac` in its WebDataset shard)."""
    for path in (row.output_mp4, row.output_audio):
        if path is not None and path.is_file():
            return read_audio(path, sample_rate), str(path)
    if row.output_shard is not None and row.output_shard.is_file():
        with tarfile.open(row.output_shard) as tar:
            for member in tar.getmembers():
                name = Path(member.name).name
                if name.startswith(row.video_id + ".") and name.endswith((".flac", ".wav")):
                    data = tar.extractfile(member).read()  # type: ignore[union-attr]
                    return read_audio(data, sample_rate), f"{row.output_shard}:{member.name}"
        raise FileNotFoundError(f"{row.output_shard} has no audio for {row.video_id}")
    raise FileNotFoundError(
        f"no generated audio for {row.video_id}: output_mp4={row.output_mp4}, "
        f"output_audio={row.output_audio}, output_shard={row.output_shard}"
    )


class ReferenceIndex:
    """Looks up reference audio for a video id from `--reference` (folder or Parquet manifest)."""

    def __init__(self, reference: str | Path | None) -> None:
        self.by_key: dict[str, Path] = {}
        self.kind = "none"
        if reference is None:
            return
        ref = Path(reference)
        if ref.is_dir():
            self.kind = "dir"
            for p in sorted(ref.iterdir()):
                if p.is_file() and p.suffix.lower() in AUDIO_EXTENSIONS:
                    self.by_key.setdefault(p.stem, p)
        elif ref.is_file() and ref.suffix == ".parquet":
            import pyarrow.parquet as pq

            self.kind = "manifest"
            table = pq.read_table(ref)
            if not {"video_id", "path"} <= set(table.column_names):
                raise ValueError(f"reference manifest {ref} needs columns video_id and path, has {table.column_names}")
            for vid, path in zip(table.column("video_id").to_pylist(), table.column("path").to_pylist()):
                p = Path(path)
                self.by_key[str(vid)] = p if p.is_absolute() else ref.parent / p
        else:
            raise FileNotFoundError(f"--reference {ref} is neither a folder nor a .parquet manifest")

    def lookup(self, row: GeneratedRow) -> tuple[Path | None, str]:
        """(reference path, kind): kind is video_track, dir, manifest or none."""
        if row.source_path is not None and row.source_path.is_file():
            try:
                if has_audio_stream(row.source_path):
                    return row.source_path, "video_track"
            except Exception:  # an unreadable source is reported by the metrics that need it
                pass
        for key in (row.video_id, row.source_path.stem if row.source_path else None):
            if key is not None and key in self.by_key:
                return self.by_key[key], self.kind
        return None, "none"


def events_sidecar(source_path: Path | None) -> Path | None:
    """Where a source video's visual events are kept: `<stem>.events.json` beside it (which may
    not exist); None without a source."""
    return None if source_path is None else source_path.with_name(source_path.stem + ".events.json")


def load_events(source_path: Path | None) -> np.ndarray | None:
    """Visual event times from `<stem>.events.json` beside the source video, or None."""
    sidecar = events_sidecar(source_path)
    if sidecar is None or not sidecar.is_file():
        return None
    data = json.loads(sidecar.read_text())
    events = data.get("events") if isinstance(data, dict) else None
    if not isinstance(events, list):
        raise ValueError(f'{sidecar} must hold {{"events": [seconds, ...]}}')
    return np.sort(np.asarray(events, dtype=np.float64))
