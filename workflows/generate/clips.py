"""What `dub generate` knows of one clip while it runs: the planned video, its report row, where
its outputs go, and the stage timing columns the replicas fill. Shared by the driver (run.py)
and the clip writers (writer.py), which may run on other machines."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

from dub.workflows.generate.sinks import mp4_name

MODEL_STAGES = ("features", "generate", "decode_audio")
STAGE_COLUMNS = {"decode_cpu": "t_decode_s", **{name: f"t_{name}_s" for name in MODEL_STAGES}}


@dataclass(slots=True)  # one per manifest row: a million of them in a large run
class PlannedVideo:
    video_id: str
    path: str
    prompt: str
    duration_s: float
    windows: list  # [(start_s, length_s)]
    missing: tuple[str, ...] = ()  # outputs still to write (resume writes only what is missing)
    existing: dict = field(default_factory=dict)  # outputs already on disk, for the report row


def expected_mp4(paths: dict, video: PlannedVideo) -> Path:
    return paths["mp4"] / mp4_name(video.video_id, video.path)


def expected_audio(paths: dict, video: PlannedVideo, codec: str) -> Path:
    return paths["audio"] / f"{video.video_id}.{AUDIO_EXT[codec]}"


AUDIO_EXT = {"aac": "m4a", "flac": "flac", "opus": "ogg"}


def report_row(video_id: str, path: str, status: str, error: str | None, **extra) -> dict:
    row = {
        "video_id": video_id,
        "path": path,
        "status": status,
        "error": error,
        "finished_at": time.strftime("%Y-%m-%dT%H:%M:%S"),
    }
    row.update(extra)
    return row
