"""Probe a video: container facts from one packet scan, plus one decoded frame.

Reading every packet (no decoding) is cheap next to hashing the bytes, and it is what makes
the figures true: the duration is first frame start to last frame end from the packets'
timestamps (container headers are often off for variable frame rates), the frame count is
what is really there, and a file cut short is caught even when its header looks complete.
One frame is decoded to prove the codec works and to read the display-matrix rotation.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from fractions import Fraction
from pathlib import Path

import numpy as np

from dub.workflows.media.errors import MediaError
from dub.workflows.media.streams import as_location, container_name, open_media, pick_video_stream

# A file whose packets fall short of the header's frame count by more than this is truncated
# (edit lists may legitimately hide a frame or two).
_TRUNCATION_SLACK_FRAMES = 2
_VFR_SPREAD = 1.10  # largest / smallest frame interval above this: variable frame rate


@dataclass(frozen=True)
class ProbeResult:
    container: str
    video_codec: str
    pix_fmt: str | None
    width: int  # coded size; the displayed size swaps when rotation is 90 or 270
    height: int
    rotation: int  # degrees counter-clockwise to display upright: 0, 90, 180 or 270
    fps: float  # average frame rate over the stream
    is_vfr: bool
    duration_s: float
    num_frames: int
    has_audio: bool
    audio_codec: str | None
    audio_sample_rate: int | None
    audio_is_silent: bool | None  # None: no audio, or it could not be decoded

    def as_dict(self) -> dict:
        return asdict(self)

    @property
    def display_size(self) -> tuple[int, int]:
        return (self.height, self.width) if self.rotation in (90, 270) else (self.width, self.height)


def probe_video(path: str | Path, *, silence_threshold_db: float = -60.0, silence_scan_s: float = 600.0) -> ProbeResult:
    """Facts about one video file; raises MediaError (kind + a sentence) for anything unusable.

    `audio_is_silent`: the first `silence_scan_s` seconds of the first audio track peak below
    `silence_threshold_db` dBFS (the scan stops at the first loud sample).
    """
    import av

    path = as_location(path)
    with open_media(path) as container:
        stream = pick_video_stream(container, path)
        ctx = stream.codec_context
        if ctx is None or not ctx.name:
            raise MediaError(
                "unsupported_codec", f"the video codec of {path.name} is not supported by this FFmpeg build"
            )
        audio = container.streams.audio[0] if container.streams.audio else None
        scan = _PacketScan(stream, audio, silence_threshold_db, silence_scan_s)
        try:
            scan.run(container)
        except av.error.FFmpegError as exc:
            scan.read_error = exc
        return scan.result(path, container_name(container, path))


class _PacketScan:
    """One pass over the packets: video timestamps, the first decodable frame, audio peak."""

    def __init__(self, video, audio, silence_threshold_db: float, silence_scan_s: float):
        self.video, self.audio = video, audio  # default (slice) threading: one frame is decoded
        self.starts: list[int] = []  # pts (or dts) of each video packet
        self.last_end: int | None = None
        self.first_frame = None
        self.decode_error: Exception | None = None
        self.read_error: Exception | None = None
        self.silence_level = 10.0 ** (silence_threshold_db / 20.0)
        self.silence_scan_s = silence_scan_s
        self.audio_seen_s = 0.0
        self.audio_loud = False
        self.audio_error: Exception | None = None

    def run(self, container) -> None:
        streams = [self.video] + ([self.audio] if self.audio is not None else [])
        for packet in container.demux(*streams):
            if packet.size == 0:  # flush packet at the end of a stream
                continue
            if packet.stream.index == self.video.index:
                self._on_video(packet)
            else:
                self._on_audio(packet)
        if self.first_frame is None and self.decode_error is None and self.starts:
            self._decode(None)  # a one-frame video only yields its frame on flush

    def _on_video(self, packet) -> None:
        stamp = packet.pts if packet.pts is not None else packet.dts
        if stamp is not None:
            self.starts.append(stamp)
            if packet.duration:
                end = stamp + packet.duration
                self.last_end = end if self.last_end is None else max(self.last_end, end)
        else:
            self.starts.append(len(self.starts))  # no timestamps at all: count frames
        if self.first_frame is None and self.decode_error is None:
            self._decode(packet)

    def _decode(self, packet) -> None:
        import av

        try:
            frames = self.video.decode(packet)
        except av.error.FFmpegError as exc:
            self.decode_error = exc
            return
        if frames:
            self.first_frame = frames[0]

    def _on_audio(self, packet) -> None:
        import av

        if self.audio_loud or self.audio_error is not None or self.audio_seen_s >= self.silence_scan_s:
            return
        try:
            for frame in self.audio.decode(packet):
                samples = frame.to_ndarray()
                if samples.size:
                    peak = float(np.max(np.abs(samples)))
                    if np.issubdtype(samples.dtype, np.integer):
                        peak /= float(np.iinfo(samples.dtype).max)
                    if peak >= self.silence_level:
                        self.audio_loud = True
                self.audio_seen_s += frame.samples / float(frame.sample_rate or 1)
        except av.error.FFmpegError as exc:
            self.audio_error = exc

    def result(self, path: Path, container: str) -> ProbeResult:
        video, ctx = self.video, self.video.codec_context
        count = len(self.starts)
        header_frames = int(video.frames or 0)
        if count == 0:
            if header_frames:
                raise MediaError(
                    "no_frames",
                    f"no video frames: the header describes {header_frames} frames but the "
                    f"file holds none (it was cut off right after its header); fetch it again",
                )
            raise MediaError("no_frames", "no video frames: the video stream is empty")
        if header_frames and count < header_frames - _TRUNCATION_SLACK_FRAMES:
            raise MediaError(
                "truncated",
                f"truncated video: the header lists {header_frames} frames but only {count} "
                f"are in the file (cut off while copying or downloading?); fetch it again",
            )
        if self.first_frame is None:
            reason = self.decode_error or self.read_error
            detail = f": {reason}" if reason else ""
            raise MediaError(
                "undecodable",
                f"the {ctx.name} video could not be decoded{detail}; the file is damaged or "
                f"uses a codec variant this FFmpeg cannot decode",
            )
        if self.read_error is not None:
            raise MediaError(
                "truncated",
                f"damaged video: reading stopped after {count} frames ({self.read_error}); "
                f"the file is cut off or corrupt",
            )
        fps, duration = self._rate_and_duration(count)
        return ProbeResult(
            container=container,
            video_codec=ctx.name,
            pix_fmt=ctx.pix_fmt,
            width=int(self.first_frame.width or ctx.width),
            height=int(self.first_frame.height or ctx.height),
            rotation=normalize_rotation(self.first_frame.rotation),
            fps=fps,
            is_vfr=self._is_vfr(),
            duration_s=duration,
            num_frames=count,
            has_audio=self.audio is not None,
            audio_codec=self.audio.codec_context.name if self.audio is not None and self.audio.codec_context else None,
            audio_sample_rate=int(self.audio.codec_context.sample_rate)
            if self.audio is not None and self.audio.codec_context
            else None,
            audio_is_silent=self._audio_is_silent(),
        )

    def _rate_and_duration(self, count: int) -> tuple[float, float]:
        video = self.video
        tb = video.time_base or Fraction(1, 1)
        nominal = video.average_rate or video.guessed_rate or video.base_rate
        nominal_fps = float(nominal) if nominal else 0.0
        first = min(self.starts)
        end = max(self.last_end or 0, max(self.starts))
        if end == max(self.starts):  # the last frame's duration is unknown: one nominal frame
            end_s = float((end - first) * tb) + (1.0 / nominal_fps if nominal_fps else 0.0)
        else:
            end_s = float((end - first) * tb)
        duration = end_s
        if duration <= 0 and nominal_fps:
            duration = count / nominal_fps
        fps = count / duration if duration > 0 else nominal_fps
        if nominal_fps and abs(fps - nominal_fps) <= 0.002 * nominal_fps:
            fps = nominal_fps  # exact rational rate (29.97 = 30000/1001) rather than a rounded ratio
        return fps, duration

    def _is_vfr(self) -> bool:
        if len(self.starts) < 3:
            return False
        steps = np.diff(np.unique(np.asarray(self.starts, dtype=np.int64)))
        steps = steps[steps > 0]
        return bool(steps.size and steps.max() > _VFR_SPREAD * steps.min())

    def _audio_is_silent(self) -> bool | None:
        if self.audio is None or self.audio_error is not None:
            return None
        if self.audio_loud:
            return False
        return True if self.audio_seen_s > 0 else None


def normalize_rotation(degrees: float | int | None) -> int:
    """FFmpeg's display rotation (counter-clockwise, -180..180) as 0, 90, 180 or 270."""
    if not degrees:
        return 0
    return int(round(float(degrees) / 90.0)) * 90 % 360
