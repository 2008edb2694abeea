"""One writer per output folder: `dub generate`, `extract`, `report` and `train` hold an
advisory lock on DIR/.dub.lock while they run.

Two runs writing one folder (the same command started twice, from two shells or two nodes of a
cluster on a shared filesystem) would interleave journals, shards and reports, and each would
resume from a state the other is changing. The lock is `fcntl.flock`: the kernel releases it
when the holder exits in any way (Ctrl-C, a crash, SIGKILL), so a stale lock never blocks a
rerun, and Linux's NFS client maps it onto NFS byte-range locks. The file keeps who holds it,
for the error message; it is left in place (removing it could race a waiting run).
"""

from __future__ import annotations

import json
import os
import socket
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

LOCK_FILE = ".dub.lock"


class OutputInUse(RuntimeError):
    """Another process is writing this output folder."""


@contextmanager
def exclusive_output(directory: str | Path, command: str) -> Iterator[Path]:
    """Hold `directory`/.dub.lock for the block (the folder is created if missing); raise
    OutputInUse, naming the holder, if another process holds it."""
    try:
        import fcntl
    except ImportError:  # pragma: no cover - not POSIX: no lock, as before
        yield Path(directory)
        return
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / LOCK_FILE
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except (BlockingIOError, PermissionError) as exc:
            raise OutputInUse(
                f"{directory} is being written by another dub run ({_holder(path)}); wait for it "
                "to finish or write to another folder"
            ) from exc
        holder = {
            "command": command,
            "pid": os.getpid(),
            "host": socket.gethostname(),
            "since": time.strftime("%Y-%m-%d %H:%M:%S"),
            "argv": " ".join(sys.argv[1:])[:500],
        }
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps(holder).encode(), 0)
        yield directory
    finally:
        os.close(fd)  # releases the lock


def writer_of(directory: str | Path) -> str | None:
    """Who is writing `directory` now ("dub extract, pid N on HOST since T"), or None: for readers
    of another command's output (train of extract's shards, report of generate's run), which
    would otherwise read a half-made set without a word."""
    try:
        import fcntl
    except ImportError:  # pragma: no cover - not POSIX
        return None
    path = Path(directory) / LOCK_FILE
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:  # no lock file: no dub run ever wrote here
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except (BlockingIOError, PermissionError):
        return _holder(path)
    finally:
        os.close(fd)  # drops the shared lock if it was taken
    return None


def _holder(path: Path) -> str:
    try:
        info = json.loads(path.read_text() or "{}")
    except (OSError, ValueError):
        return "holder unknown"
    if not info:
        return "holder unknown"
    return (
        f"dub {info.get('command', '?')}, pid {info.get('pid', '?')} on {info.get('host', '?')} "
        f"since {info.get('since', '?')}"
    )
