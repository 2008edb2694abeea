"""Opening media files and choosing their video stream, with errors a user understands.

Every media entry point (probe, decode, remux) opens files through `open_media`, so a bad file
says the same thing wherever it is met.
"""

from __future__ import annotations

import os
import posixpath
import struct
from pathlib import Path

from dub.storage.location import is_uri
from dub.workflows.media.errors import MediaError

_TEXT_SNIFF_BYTES = 512


def as_location(path: str | Path) -> str | Path:
    """A media location as open_media takes it: object-storage URIs stay strings (a Path
    would fold `s3://` into `s3:/`), everything else becomes a Path."""
    return str(path) if is_uri(path) else Path(path)


def open_media(path: str | Path):
    """`av.open(path)` for reading; failures become MediaError with a diagnosis. `path` may be
    an object-storage URI (dub.storage.location): FFmpeg then reads through a seekable file."""
    import av

    if is_uri(path):
        return _open_object(str(path))
    path = Path(path)
    check_regular_file(path)
    try:
        return av.open(str(path), metadata_errors="ignore")
    except PermissionError as exc:
        raise MediaError(
            "unreadable", f"permission denied: cannot read {path.name} (check its permissions, e.g. `chmod a+r`)"
        ) from exc
    except (av.error.FFmpegError, UnicodeDecodeError) as exc:
        raise diagnose_unopenable(path, exc) from exc


def _open_object(uri: str):
    import av

    from dub.storage import location

    name = posixpath.basename(uri)
    try:
        info = location.stat(uri)
    except OSError as exc:
        raise MediaError("unreadable", f"cannot reach {uri}: {exc}") from exc
    if info is None:
        raise MediaError("missing", f"object not found: {uri} (moved or deleted since it was listed?)")
    if info.size == 0:
        raise MediaError("empty", f"empty object (0 bytes): {name} has nothing to read; upload it again")
    handle = location.open_input(uri)
    try:
        return av.open(handle, metadata_errors="ignore")
    except (av.error.FFmpegError, UnicodeDecodeError) as exc:
        handle.seek(0)
        head = handle.read(_TEXT_SNIFF_BYTES)
        handle.close()
        if _looks_like_text(head):
            raise MediaError("not_media", f"not a video: {name} contains text, not video data") from exc
        raise MediaError(
            "not_media", f"not a video FFmpeg can read: {name} is damaged or another kind of file renamed"
        ) from exc


def check_regular_file(path: Path) -> None:
    """Raise MediaError for paths that are not a non-empty regular file."""
    if path.is_symlink() and not path.exists():
        raise MediaError("broken_link", f"broken symbolic link: its target {os.readlink(path)} does not exist")
    if not path.exists():
        raise MediaError("missing", f"file not found: {path} (moved or deleted since it was listed?)")
    if path.is_dir():
        raise MediaError(
            "directory",
            f"{path.name} is a directory named like a video, not a video file (its contents are scanned as usual)",
        )
    if not path.is_file():
        raise MediaError("not_media", f"{path.name} is not a regular file (a device, socket or pipe)")
    if path.stat().st_size == 0:
        raise MediaError(
            "empty",
            "empty file (0 bytes): there is nothing to read; the copy or download "
            "probably failed, so fetch the file again",
        )
    if not os.access(path, os.R_OK):
        raise MediaError(
            "unreadable", f"permission denied: cannot read {path.name} (check its permissions, e.g. `chmod a+r`)"
        )


def diagnose_unopenable(path: Path, exc: Exception) -> MediaError:
    """Why FFmpeg could not open `path`: text, a truncated MP4, or an unknown format."""
    try:
        with open(path, "rb") as handle:
            head = handle.read(_TEXT_SNIFF_BYTES)
    except OSError as read_exc:
        return MediaError("unreadable", f"cannot read {path.name}: {read_exc.strerror or read_exc}")
    if _looks_like_text(head):
        return MediaError(
            "not_media",
            "not a video: the file contains text (for example an error page or a "
            "note saved under a video name), not video data",
        )
    if head[4:8] == b"ftyp":
        problem = _mp4_structure_problem(path)
        if problem:
            return MediaError("truncated", problem)
    detail = str(exc).split(":")[0].strip() if str(exc) else type(exc).__name__
    return MediaError(
        "not_media",
        f"not a video FFmpeg can read: the contents are not a known container format "
        f"({detail}); the file may be damaged or another kind of file renamed",
    )


def _looks_like_text(head: bytes) -> bool:
    if not head or b"\x00" in head:
        return False
    try:
        text = head.decode("utf-8")
    except UnicodeDecodeError:
        return False
    printable = sum(ch.isprintable() or ch in "\r\n\t" for ch in text)
    return printable >= 0.95 * len(text)


def mp4_top_level_boxes(path: Path) -> list[tuple[str, int, int]]:
    """(type, offset, size) of each top-level ISO-BMFF box, read from box headers only."""
    boxes = []
    file_size = path.stat().st_size
    with open(path, "rb") as handle:
        offset = 0
        while offset + 8 <= file_size:
            handle.seek(offset)
            size, kind = struct.unpack(">I4s", handle.read(8))
            if size == 1:
                size = struct.unpack(">Q", handle.read(8))[0]
            elif size == 0:
                size = file_size - offset
            if size < 8:
                break
            boxes.append((kind.decode("latin-1"), offset, size))
            offset += size
    return boxes


def _mp4_structure_problem(path: Path) -> str | None:
    boxes = mp4_top_level_boxes(path)
    file_size = path.stat().st_size
    if boxes and boxes[-1][1] + boxes[-1][2] > file_size:
        kind, offset, size = boxes[-1]
        missing = offset + size - file_size
        return (
            f"truncated MP4: the file ends {missing} bytes before its last section ('{kind}') does, so it was "
            f"cut off while being written, copied or downloaded; fetch or export it again"
        )
    if "moov" not in [b[0] for b in boxes]:
        return (
            "incomplete MP4: the index ('moov' box) is missing, so the file was cut off before the recording "
            "or export finished; fetch or export it again"
        )
    return None


def pick_video_stream(container, path: str | Path):
    """The first real video stream (cover art in audio files does not count)."""
    import av

    videos = [s for s in container.streams.video if not (s.disposition & av.stream.Disposition.attached_pic)]
    if videos:
        return videos[0]
    audio = container.streams.audio
    name = Path(path).name
    if audio:
        codec = audio[0].codec_context.name if audio[0].codec_context else "unknown codec"
        rate = audio[0].codec_context.sample_rate if audio[0].codec_context else 0
        raise MediaError(
            "no_video",
            f"no video stream: {name} holds only audio ({codec}, {rate} Hz); dub needs a video to give a soundtrack to",
        )
    kinds = sorted({s.type for s in container.streams}) or ["none"]
    raise MediaError("no_video", f"no video stream in {name} (streams found: {', '.join(kinds)})")


def container_name(container, path: str | Path) -> str:
    """A short container name: FFmpeg lists aliases ('mov,mp4,m4a,...'); prefer the one the
    file's extension names."""
    names = container.format.name.split(",")
    ext = Path(path).suffix.lower().lstrip(".")
    return ext if ext in names else names[0]


def time_origin(stream) -> int:
    """Presentation time (stream time base) that counts as t = 0: the stream's first frame."""
    return stream.start_time if stream.start_time is not None else 0
