"""Files that appear whole or not at all.

A writer writes under a temporary name beside the destination (same filesystem, so the rename
is atomic), fsyncs, and renames over the destination: readers see the old file or the new one,
never a part of one, and a crash leaves only a temporary file that `temporaries` recognises.
"""

from __future__ import annotations

import json
import os
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


def temporary_name(path: str | os.PathLike, keep_suffix: bool = False) -> Path:
    """A hidden name beside `path`, unique per writer: `.NAME.XXXXXXXX.tmp`, or with `keep_suffix`
    `.STEM.partial-XXXXXXXX.SUFFIX` for writers that choose the format from the name (PyAV)."""
    path = Path(path)
    tag = uuid.uuid4().hex[:8]
    if keep_suffix:
        return path.with_name(f".{path.stem}.partial-{tag}{path.suffix}")
    return path.with_name(f".{path.name}.{tag}.tmp")


def fsync_dir(directory: str | os.PathLike) -> None:
    """Make a rename in `directory` survive a power cut (where the filesystem allows it)."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:  # some filesystems do not allow opening directories
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _fsync_file(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def commit(tmp: str | os.PathLike, path: str | os.PathLike, durable: bool = True) -> Path:
    """Rename a finished temporary file over `path`; `durable` fsyncs the file first and the
    directory after, so the new content survives a power cut, not only a crash."""
    tmp, path = Path(tmp), Path(path)
    if durable:
        _fsync_file(tmp)
    os.replace(tmp, path)
    if durable:
        fsync_dir(path.parent)
    return path


@contextmanager
def atomic_path(path: str | os.PathLike, keep_suffix: bool = False, durable: bool = True) -> Iterator[Path]:
    """The temporary path to write `path`'s content to: when the block ends normally it replaces
    `path` (`commit`), when it raises the temporary file is removed and `path` is untouched."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temporary_name(path, keep_suffix)
    try:
        yield tmp
        commit(tmp, path, durable)
    finally:
        tmp.unlink(missing_ok=True)


def write_bytes_atomic(path: str | os.PathLike, data: bytes, durable: bool = True) -> Path:
    with atomic_path(path, durable=durable) as tmp:
        tmp.write_bytes(data)
    return Path(path)


def write_text_atomic(path: str | os.PathLike, text: str, durable: bool = True) -> Path:
    return write_bytes_atomic(path, text.encode("utf-8"), durable)


def write_json_atomic(path: str | os.PathLike, payload, durable: bool = True, indent: int = 2) -> Path:
    """`payload` as JSON (keys sorted; values JSON cannot hold written as their str)."""
    return write_text_atomic(path, json.dumps(payload, indent=indent, sort_keys=True, default=str), durable)
