"""Write a foley-synth clip to disk: H.264 (yuv420p) video, then the same video + AAC audio."""

from __future__ import annotations

from collections.abc import Iterable
from fractions import Fraction
from pathlib import Path

import av
import numpy as np

_MP4_OPTIONS = {"movflags": "+faststart"}  # index first: players and HTTP range reads start at once


def write_silent_mp4(
    path: Path, frames: Iterable[np.ndarray], *, fps: int, width: int, height: int, crf: int = 23
) -> None:
    """Encode uint8 RGB frames as H.264 yuv420p at a constant `fps`, with no audio stream."""
    with av.open(str(path), "w", format="mp4", container_options=_MP4_OPTIONS) as out:
        stream = out.add_stream("libx264", rate=fps)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        stream.codec_context.thread_count = 1  # clips run in parallel across processes instead
        stream.codec_context.gop_size = 2 * fps  # a keyframe every 2 s keeps window seeks cheap
        stream.options = {"crf": str(crf), "preset": "veryfast"}
        time_base = Fraction(1, fps)
        for i, rgb in enumerate(frames):
            frame = av.VideoFrame.from_ndarray(rgb, format="rgb24")
            frame.pts, frame.time_base = i, time_base
            out.mux(stream.encode(frame))
        out.mux(stream.encode(None))


def _encode_aac(stream: av.audio.stream.AudioStream, audio: np.ndarray, sample_rate: int) -> list[av.Packet]:
    packets = []
    frame_size = stream.codec_context.frame_size or 1024
    time_base = Fraction(1, sample_rate)
    for start in range(0, len(audio), frame_size):
        chunk = np.ascontiguousarray(audio[None, start : start + frame_size], dtype=np.float32)
        frame = av.AudioFrame.from_ndarray(chunk, format="fltp", layout="mono")
        frame.sample_rate, frame.pts, frame.time_base = sample_rate, start, time_base
        packets.extend(stream.encode(frame))
    packets.extend(stream.encode(None))
    return packets


def add_aac_track(
    silent_path: Path, out_path: Path, audio: np.ndarray, *, sample_rate: int, bitrate: int = 64000
) -> None:
    """Copy the video of `silent_path` (no re-encode) and add `audio` (mono float) as AAC."""
    with (
        av.open(str(silent_path)) as src,
        av.open(str(out_path), "w", format="mp4", container_options=_MP4_OPTIONS) as out,
    ):
        video_in = src.streams.video[0]
        video_out = out.add_stream_from_template(video_in)
        audio_out = out.add_stream("aac", rate=sample_rate, layout="mono")
        audio_out.bit_rate = bitrate
        audio_packets = _encode_aac(audio_out, audio, sample_rate)
        video_packets = [p for p in src.demux(video_in) if p.dts is not None]  # the demuxer's flush packet
        for packet in video_packets:
            packet.stream = video_out
        # interleave by decode time so the file streams without seeking back and forth
        merged = sorted(video_packets + audio_packets, key=lambda p: float(p.dts * p.time_base))
        for packet in merged:
            out.mux(packet)
