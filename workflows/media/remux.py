"""Put a new audio track beside a video without touching the video.

The video stream is copied packet for packet (same bytes, same pts/dts: no re-encode, no
quality loss, no time). The generated audio is encoded with pts in samples, placed at the
video's first frame and trimmed or zero-padded to the video's length, so the two durations
agree within one audio frame. Output goes to a temporary name and is renamed when complete.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from dub.storage.atomic import atomic_path
from dub.workflows.media.audio import add_audio_stream, as_channels_first, encode_frames, resample
from dub.workflows.media.errors import MediaError
from dub.workflows.media.streams import as_location, open_media, pick_video_stream

DEFAULT_CONTAINER_RATE = 48000  # the usual rate of audio in video files; every player handles it
_CONTAINERS = {".mp4": "mp4", ".m4v": "mp4", ".mov": "mov", ".mkv": "matroska", ".webm": "webm"}


def remux_with_audio(
    src: str | Path,
    audio: np.ndarray,
    sample_rate: int,
    dst: str | Path,
    keep_original_audio: bool = False,
    codec: str = "aac",
    *,
    output_rate: int | None = DEFAULT_CONTAINER_RATE,
    bitrate: int | None = None,
) -> Path:
    """Write `dst`: the video of `src` copied untouched plus `audio` ((L,) or (C, L) float at
    `sample_rate`) as the first, default audio track, encoded with `codec` at `output_rate`.
    With `keep_original_audio`, the source's first audio track follows as a second track
    (copied, not re-encoded)."""
    src, dst = as_location(src), Path(dst)
    audio = as_channels_first(audio)
    if audio.shape[0] > 2:
        raise ValueError(f"only mono or stereo audio can be muxed, got {audio.shape[0]} channels")
    rate = output_rate or sample_rate
    start_s, end_s = video_span(src)
    track = _fit(resample(audio, sample_rate, rate), int(round((end_s - start_s) * rate)))

    def build(container_in, container_out) -> None:
        video_in = pick_video_stream(container_in, src)
        original = container_in.streams.audio[0] if keep_original_audio and container_in.streams.audio else None
        video_out = container_out.add_stream_from_template(video_in)
        audio_out = add_audio_stream(container_out, codec, rate, track.shape[0], bitrate)
        audio_out.disposition = _disposition("default")
        _name_track(audio_out, "dub")
        routes = {video_in.index: video_out}
        if original is not None:
            original_out = container_out.add_stream_from_template(original)
            original_out.disposition = _disposition(None)
            _name_track(original_out, "original")
            routes[original.index] = original_out
        generated = list(
            encode_frames(audio_out, np.clip(track, -1.0, 1.0), rate, pts_offset=int(round(start_s * rate)))
        )
        _interleave(
            container_in, container_out, [video_in] + ([original] if original is not None else []), routes, generated
        )

    return _write_atomic(src, dst, build)


def strip_audio(src: str | Path, dst: str | Path) -> Path:
    """Copy only the video stream of `src` to `dst` (a silent input, bit-identical video)."""
    src, dst = as_location(src), Path(dst)

    def build(container_in, container_out) -> None:
        video_in = pick_video_stream(container_in, src)
        video_out = container_out.add_stream_from_template(video_in)
        _interleave(container_in, container_out, [video_in], {video_in.index: video_out}, [])

    return _write_atomic(src, dst, build)


def video_span(path: str | Path) -> tuple[float, float]:
    """(first frame start, last frame end) of the video stream in seconds, from its packets."""
    path = as_location(path)
    with open_media(path) as container:
        stream = pick_video_stream(container, path)
        tb = float(stream.time_base)
        first = last_start = last_end = None
        for packet in container.demux(stream):
            if packet.size == 0 or packet.pts is None:
                continue
            first = packet.pts if first is None else min(first, packet.pts)
            last_start = packet.pts if last_start is None else max(last_start, packet.pts)
            if packet.duration:
                end = packet.pts + packet.duration
                last_end = end if last_end is None else max(last_end, end)
        if first is None:
            raise MediaError("no_frames", f"{path.name} has no video frames to put audio under")
        rate = stream.average_rate or stream.guessed_rate
        end = last_end if last_end is not None and last_end > last_start else None
        end_s = end * tb if end is not None else last_start * tb + (1.0 / float(rate) if rate else 0.0)
        return first * tb, end_s


def _fit(audio: np.ndarray, length: int) -> np.ndarray:
    if audio.shape[-1] >= length:
        return audio[:, :length]
    return np.pad(audio, ((0, 0), (0, length - audio.shape[-1])))


def _name_track(stream, name: str) -> None:
    # Matroska shows `title`; MP4 stores it as the track name and players show `handler_name`
    stream.metadata["title"] = name
    stream.metadata["handler_name"] = name


def _disposition(flag: str | None):
    import av

    return av.stream.Disposition.default if flag == "default" else av.stream.Disposition(0)


def _interleave(container_in, container_out, streams_in, routes, generated) -> None:
    """Copy packets of `streams_in` (demux order) and slot the `generated` packets in by time,
    so players never wait on one track."""
    queue = iter(generated)
    pending = next(queue, None)
    for packet in container_in.demux(*streams_in):
        if packet.dts is None:  # flush packets and packets the demuxer could not time
            continue
        when = float(packet.dts * packet.time_base)
        while pending is not None and float(pending.dts * pending.time_base) <= when:
            container_out.mux(pending)
            pending = next(queue, None)
        packet.stream = routes[packet.stream.index]
        container_out.mux(packet)
    while pending is not None:
        container_out.mux(pending)
        pending = next(queue, None)


def _write_atomic(src: str | Path, dst: Path, build) -> Path:
    import av

    suffix = dst.suffix.lower()
    if suffix not in _CONTAINERS:
        raise ValueError(f"cannot write {dst.name}: use one of {sorted(_CONTAINERS)}")
    try:
        with atomic_path(dst, keep_suffix=True) as tmp:
            with open_media(src) as container_in, av.open(str(tmp), "w", format=_CONTAINERS[suffix]) as container_out:
                build(container_in, container_out)
    except av.error.FFmpegError as exc:
        raise MediaError(
            "remux_failed",
            f"could not write {dst.name} from {Path(src).name}: {exc} (a codec the {suffix} container cannot hold? try .mkv)",
        ) from exc
    return dst
