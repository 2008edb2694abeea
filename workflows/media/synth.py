"""Small real videos written with PyAV: test inputs and benchmark clips with known truth.

Patterns:
- "moving_box": a grey gradient, a white box sliding left to right and a fixed red marker in
  the top-left corner (so orientation can be checked after rotation).
- "flash_events": a dark frame that turns white for the one frame whose interval holds each
  event time (audio clicks at the same times when the clip has audio).
- "frame_index": a uniform grey whose level encodes the frame index (`frame_index_value`),
  robust to resizing, cropping, rotation and lossy coding; read back with `read_frame_index`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import numpy as np

PATTERNS = ("moving_box", "flash_events", "frame_index")
AUDIO_KINDS = ("tone", "silence", "events")
_VFR_STEPS = (1, 1, 2, 1, 3)  # frame intervals (in nominal frames) cycled for variable frame rate
_INDEX_LEVELS = 37
_INDEX_STEP = 6


@dataclass(frozen=True)
class SynthVideo:
    """What was written: the truth a probe or decoder is checked against."""

    path: Path
    fps: float  # nominal rate (the average rate too unless vfr)
    size: tuple[int, int]  # coded (width, height)
    frame_times: tuple[float, ...]  # presentation time of every frame, seconds
    duration_s: float  # first frame start to last frame end (the last frame lasts 1 / fps)
    rotation: int  # display rotation, degrees counter-clockwise
    codec: str
    pix_fmt: str
    audio: str | None  # None, or the kind of audio track written
    audio_rate: int | None
    events: tuple[float, ...]

    @property
    def num_frames(self) -> int:
        return len(self.frame_times)

    @property
    def has_audio(self) -> bool:
        return self.audio is not None


def frame_index_value(index: int) -> int:
    """Grey level of frame `index` in the "frame_index" pattern (repeats every 37 frames)."""
    return 16 + _INDEX_STEP * (index % _INDEX_LEVELS)


def read_frame_index(frame: np.ndarray) -> int:
    """Frame index (mod 37) from a decoded "frame_index" frame (any size, RGB or grey)."""
    level = float(np.median(np.asarray(frame, dtype=np.float32)))
    return int(round((level - 16) / _INDEX_STEP)) % _INDEX_LEVELS


def render_frame(
    pattern: str,
    index: int,
    t: float,
    width: int,
    height: int,
    *,
    fps: float,
    duration_s: float,
    events: Sequence[float] = (),
) -> np.ndarray:
    """One RGB uint8 (height, width, 3) frame of `pattern` at frame `index`, time `t`."""
    if pattern == "frame_index":
        return np.full((height, width, 3), frame_index_value(index), np.uint8)
    if pattern == "flash_events":
        flash = any(t - 1e-9 <= e < t + 1.0 / fps - 1e-9 for e in events)
        return np.full((height, width, 3), 235 if flash else 20, np.uint8)
    if pattern != "moving_box":
        raise ValueError(f"unknown pattern {pattern!r}; choose from {PATTERNS}")
    ramp = (
        np.linspace(40, 160, width, dtype=np.float32)[None, :] + np.linspace(0, 40, height, dtype=np.float32)[:, None]
    )
    frame = np.repeat(ramp[:, :, None], 3, axis=2).astype(np.uint8)
    box = max(2, min(width, height) // 4)
    x = int((width - box) * (t / duration_s if duration_s > 0 else 0.0))
    y = (height - box) // 2
    frame[y : y + box, x : x + box] = 250
    marker = max(1, min(width, height) // 8)
    frame[:marker, :marker] = (230, 20, 20)
    return frame


def write_synthetic_video(
    path: str | Path,
    seconds: float = 2.0,
    fps: float = 25.0,
    size: tuple[int, int] = (160, 120),
    *,
    codec: str = "libx264",
    pix_fmt: str = "yuv420p",
    with_audio: bool = False,
    audio: str | None = None,
    audio_rate: int = 48000,
    rotation: int | None = None,
    vfr: bool = False,
    pattern: str = "moving_box",
    events: Sequence[float] = (),
    container_format: str | None = None,
    faststart: bool = False,
    codec_options: dict[str, str] | None = None,
) -> SynthVideo:
    """Write a `seconds`-long clip and return its truth.

    `audio` (tone | silence | events; default events when `events` are given, else tone) only
    matters with `with_audio`. `rotation` writes a display matrix (mp4/mov). `vfr` spaces frames
    by 1, 1, 2, 1, 3 nominal intervals in turn.
    """
    import av

    if pattern not in PATTERNS:
        raise ValueError(f"unknown pattern {pattern!r}; choose from {PATTERNS}")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    rate = Fraction(fps).limit_denominator(1001)
    time_base = 1 / rate  # one tick per nominal frame (VFR steps are whole frames)
    ticks = _frame_ticks(seconds, rate, vfr)
    times = tuple(float(t * time_base) for t in ticks)
    duration = times[-1] + 1.0 / float(rate)
    width, height = size
    kind = (audio or ("events" if events else "tone")) if with_audio else None
    if kind is not None and kind not in AUDIO_KINDS:
        raise ValueError(f"unknown audio kind {kind!r}; choose from {AUDIO_KINDS}")
    options = {"movflags": "+faststart"} if faststart else {}
    with av.open(str(path), "w", format=container_format, options=options) as container:
        stream = container.add_stream(codec, rate=rate, options=_codec_options(codec, codec_options))
        stream.width, stream.height, stream.pix_fmt = width, height, pix_fmt
        stream.codec_context.time_base = time_base
        if rotation:
            stream.set_display_rotation(rotation)
        audio_stream = None
        if kind is not None:
            audio_stream = container.add_stream("aac", rate=audio_rate)
            audio_stream.layout = "mono"
        for index, (tick, t) in enumerate(zip(ticks, times)):
            image = render_frame(pattern, index, t, width, height, fps=float(rate), duration_s=duration, events=events)
            frame = av.VideoFrame.from_ndarray(image, format="rgb24")
            frame.pts, frame.time_base = tick, time_base
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode(None):
            container.mux(packet)
        if audio_stream is not None:
            from dub.workflows.media.audio import encode_frames

            samples = synth_audio(kind, duration, audio_rate, events)
            for packet in encode_frames(audio_stream, samples[None], audio_rate):
                container.mux(packet)
    return SynthVideo(
        path=path,
        fps=float(rate),
        size=(width, height),
        frame_times=times,
        duration_s=duration,
        rotation=int(rotation or 0) % 360,
        codec=codec,
        pix_fmt=pix_fmt,
        audio=kind,
        audio_rate=audio_rate if kind else None,
        events=tuple(events),
    )


def synth_audio(kind: str, duration_s: float, rate: int, events: Sequence[float] = ()) -> np.ndarray:
    """Mono float32 audio: a 440 Hz tone at -10 dBFS, digital silence, or a 20 ms 1 kHz click
    (decaying) at each event time."""
    n = int(round(duration_s * rate))
    t = np.arange(n) / rate
    if kind == "tone":
        return (0.3 * np.sin(2 * np.pi * 440.0 * t)).astype(np.float32)
    out = np.zeros(n, np.float32)
    if kind == "events":
        length = int(0.02 * rate)
        burst = (
            0.8 * np.sin(2 * np.pi * 1000.0 * np.arange(length) / rate) * np.exp(-np.arange(length) / (0.004 * rate))
        )
        for event in events:
            start = int(round(event * rate))
            stop = min(n, start + length)
            if 0 <= start < n:
                out[start:stop] += burst[: stop - start].astype(np.float32)
    return out


def _frame_ticks(seconds: float, rate: Fraction, vfr: bool) -> list[int]:
    limit = seconds * float(rate) - 1e-6
    ticks, tick, step = [], 0, 0
    while tick < limit or not ticks:
        ticks.append(tick)
        tick += _VFR_STEPS[step % len(_VFR_STEPS)] if vfr else 1
        step += 1
    return ticks


def _codec_options(codec: str, extra: dict[str, str] | None) -> dict[str, str]:
    defaults = {
        "libx264": {"preset": "veryfast", "crf": "18"},
        "libx265": {"preset": "ultrafast", "x265-params": "log-level=error"},
        "libvpx-vp9": {"deadline": "realtime", "cpu-used": "8"},
        "libvpx": {"deadline": "realtime", "cpu-used": "8"},
    }
    return {**defaults.get(codec, {}), **(extra or {})}
