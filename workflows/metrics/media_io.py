"""Media access for the metrics: mono audio at a given rate (through the media module),
low-resolution grey frames for motion peaks, and small Opus previews for the HTML page.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

__all__ = ["GreyVideo", "encode_opus", "has_audio_stream", "read_audio", "read_grey_frames"]


def has_audio_stream(path: str | Path) -> bool:
    """True when the container at `path` has at least one audio stream."""
    import av

    with av.open(str(path)) as container:
        return len(container.streams.audio) > 0


def read_audio(path: str | Path | bytes, sample_rate: int) -> np.ndarray:
    """The first audio track of `path` (or of encoded file bytes, e.g. a shard's FLAC) as mono
    float32 (L,) at `sample_rate` (the media module's reader: channels averaged, time 0 at the
    track's first sample)."""
    from dub.workflows.media.audio import read_audio as media_read_audio

    if not isinstance(path, (bytes, bytearray)):
        path = Path(path)
        if not path.exists():
            raise FileNotFoundError(f"audio/video file not found: {path}")
    return np.asarray(media_read_audio(path, sample_rate, mono=True), dtype=np.float32).reshape(-1)


@dataclass(frozen=True)
class GreyVideo:
    frames: np.ndarray  # (T, H, W) uint8
    times_s: np.ndarray  # (T,) presentation time of each frame
    fps: float


def read_grey_frames(path: str | Path, max_side: int = 96, max_duration_s: float | None = None) -> GreyVideo:
    """Decode every frame of the first video stream as small greyscale images.

    Scaled so the longer side is `max_side` (aspect kept): motion peaks need timing, not detail.
    """
    import av

    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"video file not found: {path}")
    with av.open(str(path)) as container:
        if not container.streams.video:
            raise ValueError(f"{path} has no video stream")
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        width, height = stream.codec_context.width, stream.codec_context.height
        scale = min(1.0, max_side / max(width, height))  # never upscale
        out_w = max(2, int(round(width * scale / 2)) * 2)
        out_h = max(2, int(round(height * scale / 2)) * 2)
        rate = stream.average_rate or stream.guessed_rate
        fps = float(rate) if rate else 25.0
        frames: list[np.ndarray] = []
        times: list[float] = []
        for frame in container.decode(stream):
            t = float(frame.pts * stream.time_base) if frame.pts is not None else len(frames) / fps
            if max_duration_s is not None and t >= max_duration_s:
                break
            frames.append(frame.reformat(width=out_w, height=out_h, format="gray").to_ndarray())
            times.append(t)
    if not frames:
        raise ValueError(f"{path}: no decodable video frames")
    start = times[0]
    return GreyVideo(np.stack(frames), np.asarray(times) - start, fps)


def encode_opus(wav: np.ndarray, sample_rate: int, bit_rate: int = 32000) -> tuple[bytes, str]:
    """Mono audio as an Ogg/Opus file in memory (small enough to embed in an HTML page)."""
    from dub.workflows.media.audio import encode_audio_bytes

    # 48 kHz is the only rate every Opus encoder takes; a preview: encode fast rather than best
    data = encode_audio_bytes(
        np.asarray(wav, dtype=np.float32).reshape(-1),
        sample_rate,
        "opus",
        "ogg",
        bitrate=bit_rate,
        options={"compression_level": "3"},
    )
    return data, "audio/ogg"
