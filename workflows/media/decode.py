"""Decode a time window of a video at the model frame rates, in one pass for all of them.

Semantics (MMAudio's frame reader):
- sample-and-hold: target instant k of a rate `fps` is t_k = start + k / fps; it receives the
  first source frame whose time is >= t_k, so a 4 fps source read at 8 fps repeats frames. At
  the end of the stream the last frame is held until its own end time.
- CLIP target: bicubic resize to size x size, no crop. Synchformer target: bicubic resize of
  the short side to `size` (long side `int(size * long / short)`, as torchvision), then a
  centre crop `size` x `size`.
- frames are made upright with the display-matrix rotation before cropping.
- time 0 is the video stream's first frame; only the asked window is decoded: seek to the
  key frame before it, drop frames before `start_s`.

Returned arrays are uint8 (T, H, W, 3) RGB. Resizing runs in swscale (`backend="swscale"`,
the default: measured faster than torch on CPU, see `dub bench media`) or in torch
(`backend="torch"`, antialiased bicubic as torchvision's Resize). `dub generate` / `dub extract` /
`dub report` name them by what they mean (`--resize fast|exact`, RESIZE_BACKENDS).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import numpy as np

from dub.workflows.media.errors import MediaError
from dub.workflows.media.probe import normalize_rotation
from dub.workflows.media.streams import as_location, open_media, pick_video_stream, time_origin

_EPS = 1e-6  # seconds; frame times and target instants are compared with this tolerance
_SEEK_MARGIN_S = 0.5  # seek a little early: some demuxers land after the asked time
MODES = ("resize", "crop", "short")
BACKENDS = ("swscale", "torch")
# `--resize` of generate/extract/report -> backend: "fast" is swscale's bicubic, "exact" torchvision's
# antialiased bicubic, what MMAudio's features were made with (several times slower decoding on CPU)
RESIZE_BACKENDS = {"fast": "swscale", "exact": "torch"}
RESIZE_MODES = tuple(RESIZE_BACKENDS)


def resize_problem(mode: str) -> str | None:
    """What is wrong with a `--resize` value, or None (one message for generate, extract and report)."""
    if mode in RESIZE_BACKENDS:
        return None
    return (
        f"--resize must be one of {RESIZE_MODES} (fast: swscale's bicubic; exact: torchvision's antialiased "
        f"bicubic, as MMAudio), got {mode!r}"
    )


@dataclass(frozen=True)
class FrameTarget:
    """One output stream: `fps` frames per second of `size` x `size` RGB.
    mode "resize": squash to size x size (CLIP); "crop": short side to size, centre crop (Synchformer);
    "short": short side to size, no crop, so frames keep their aspect ratio (ImageBind, which
    takes three crops itself)."""

    fps: float
    size: int
    mode: str = "resize"

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise ValueError(f"FrameTarget mode must be one of {MODES}, got {self.mode!r}")
        if self.fps <= 0 or self.size <= 0:
            raise ValueError(f"FrameTarget needs a positive fps and size, got fps={self.fps}, size={self.size}")


CLIP_TARGET = FrameTarget(fps=8.0, size=384, mode="resize")
SYNC_TARGET = FrameTarget(fps=25.0, size=224, mode="crop")


class DecodedWindow(NamedTuple):
    """`frames[i]` is the (T_i, H, W, 3) uint8 array of `targets[i]`; `duration_s` is the span
    of video covered, [start_s, start_s + duration_s): shorter than asked when the video ends
    first. T_i = ceil(duration_s * fps_i)."""

    frames: list[np.ndarray]
    duration_s: float


def frame_count(duration_s: float, fps: float) -> int:
    """Target instants in [0, duration_s): ceil(duration * fps), tolerant to float error."""
    return max(0, math.ceil(duration_s * fps - 1e-6))


def decode_window(
    path: str | Path,
    start_s: float = 0.0,
    duration_s: float | None = None,
    targets: Sequence[FrameTarget] = (CLIP_TARGET, SYNC_TARGET),
    *,
    backend: str = "swscale",
) -> DecodedWindow:
    """Frames of [start_s, start_s + duration_s) for every target (duration None: to the end)."""
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    if start_s < 0 or (duration_s is not None and duration_s <= 0):
        raise ValueError(f"bad window: start_s={start_s} must be >= 0 and duration_s={duration_s} > 0")
    if not targets:
        raise ValueError("give at least one FrameTarget")
    path = as_location(path)
    with open_media(path) as container:
        stream = pick_video_stream(container, path)
        stream.thread_type = "AUTO"
        reader = _WindowReader(container, stream, start_s, duration_s, list(targets), backend)
        return reader.read()


class _WindowReader:
    def __init__(
        self, container, stream, start_s: float, duration_s: float | None, targets: list[FrameTarget], backend: str
    ):
        self.container, self.stream = container, stream
        self.start_s = start_s
        self.end_s = math.inf if duration_s is None else start_s + duration_s
        self.targets = targets
        self.backend = backend
        self.tb = float(stream.time_base)
        self.origin = time_origin(stream)
        rate = stream.average_rate or stream.guessed_rate or stream.base_rate
        self.nominal_step = 1.0 / float(rate) if rate else 1.0 / 25.0
        self.limits = [math.inf if duration_s is None else frame_count(duration_s, t.fps) for t in targets]
        self.outputs: list[list[np.ndarray]] = [[] for _ in targets]
        self.converters: list[_Converter | None] = [None] * len(targets)

    def read(self) -> DecodedWindow:
        import av

        last_frame, last_time, last_step = None, None, self.nominal_step
        try:
            for frame, t in self._frames():
                if t < self.start_s - _EPS:
                    continue
                if last_time is not None and t > last_time:
                    last_step = t - last_time
                self._emit_until(frame, t + _EPS)
                last_frame, last_time = frame, t
                if self._all_full():
                    return self._result(self.end_s - self.start_s)
        except av.error.FFmpegError as exc:
            if last_frame is None:
                raise MediaError("undecodable", f"could not decode the video from {self.start_s:.3f} s: {exc}") from exc
            # a damaged tail: keep what was decoded, held to the last good frame's end
        if last_frame is None:
            return self._result(0.0)
        video_end = last_time + (self._frame_duration(last_frame) or last_step)
        covered_end = min(self.end_s, video_end)
        self._emit_until(last_frame, covered_end - _EPS, strict=True)
        return self._result(max(0.0, covered_end - self.start_s))

    def _frames(self):
        """(frame, time in seconds from the stream's first frame), starting near `start_s`."""
        if self.start_s > _SEEK_MARGIN_S:
            seek_to = self.origin + int((self.start_s - _SEEK_MARGIN_S) / self.tb)
            self.container.seek(seek_to, stream=self.stream, backward=True, any_frame=False)
        index = 0
        for frame in self.container.decode(self.stream):
            if frame.pts is not None:
                t = (frame.pts - self.origin) * self.tb
            else:  # no timestamps (rare raw streams): count frames
                t = index * self.nominal_step
            if index == 0 and t > self.start_s + _EPS and self.start_s > 0:
                yield from self._frames_from_start()  # the seek landed after the window start
                return
            index += 1
            yield frame, t

    def _frames_from_start(self):
        self.container.seek(self.origin, stream=self.stream, backward=True, any_frame=False)
        for index, frame in enumerate(self.container.decode(self.stream)):
            t = (frame.pts - self.origin) * self.tb if frame.pts is not None else index * self.nominal_step
            yield frame, t

    def _frame_duration(self, frame) -> float | None:
        return frame.duration * self.tb if frame.duration else None

    def _emit_until(self, frame, t_limit: float, strict: bool = False) -> None:
        """Give `frame` to every target instant <= t_limit (< when strict) not yet filled."""
        for i, target in enumerate(self.targets):
            out = self.outputs[i]
            while len(out) < self.limits[i]:
                instant = self.start_s + len(out) / target.fps
                if instant > t_limit or (strict and instant >= t_limit):
                    break
                out.append(self._convert(i, frame))

    def _convert(self, i: int, frame) -> np.ndarray:
        cached = getattr(self, "_cache", None)
        if cached is not None and cached[0] is frame and cached[1] == i:
            return cached[2]
        if self.converters[i] is None:
            self.converters[i] = _Converter(self.targets[i], frame, self.backend)
        array = self.converters[i](frame)
        self._cache = (frame, i, array)
        return array

    def _all_full(self) -> bool:
        return all(len(out) >= limit for out, limit in zip(self.outputs, self.limits))

    def _result(self, covered_s: float) -> DecodedWindow:
        frames = []
        for target, out in zip(self.targets, self.outputs):
            keep = out[: frame_count(covered_s, target.fps)]
            if keep:
                frames.append(np.stack(keep))
            else:
                frames.append(np.zeros((0, target.size, target.size, 3), np.uint8))
        return DecodedWindow(frames, covered_s)


class _Converter:
    """Decoded frame -> upright uint8 (size, size, 3) for one target. Geometry is fixed from
    the first frame (size and rotation do not change within a stream)."""

    def __init__(self, target: FrameTarget, first_frame, backend: str):
        self.target, self.backend = target, backend
        self.rotation = normalize_rotation(first_frame.rotation)
        w, h = first_frame.width, first_frame.height
        quarter = self.rotation in (90, 270)
        disp_w, disp_h = (h, w) if quarter else (w, h)
        size = target.size
        if target.mode == "resize":
            out_w, out_h = size, size
        elif disp_w <= disp_h:  # torchvision Resize(int): short side -> size, long side truncated
            out_w, out_h = size, int(size * disp_h / disp_w)
        else:
            out_w, out_h = int(size * disp_w / disp_h), size
        self.display_out = (out_w, out_h)
        self.coded_out = (out_h, out_w) if quarter else (out_w, out_h)  # size before rotating upright
        self.crop_top = int(round((out_h - size) / 2.0))
        self.crop_left = int(round((out_w - size) / 2.0))
        if backend == "swscale":
            from av.video.reformatter import VideoReformatter

            self.reformatter = VideoReformatter()

    def __call__(self, frame) -> np.ndarray:
        if self.backend == "swscale":
            w, h = self.coded_out
            rgb = self.reformatter.reformat(
                frame, width=w, height=h, format="rgb24", interpolation="BICUBIC"
            ).to_ndarray()
        else:
            rgb = _torch_resize(frame.to_ndarray(format="rgb24"), self.coded_out)
        if self.rotation:
            rgb = np.rot90(rgb, k=self.rotation // 90)
        size = self.target.size
        if self.target.mode != "short":
            rgb = rgb[self.crop_top : self.crop_top + size, self.crop_left : self.crop_left + size]
        return np.ascontiguousarray(rgb)


def _torch_resize(rgb: np.ndarray, size_wh: tuple[int, int]) -> np.ndarray:
    import torch
    import torch.nn.functional as F

    w, h = size_wh
    x = torch.from_numpy(rgb).permute(2, 0, 1)[None].float()
    y = F.interpolate(x, size=(h, w), mode="bicubic", antialias=True, align_corners=False)
    return y[0].permute(1, 2, 0).round_().clamp_(0, 255).to(torch.uint8).numpy()
