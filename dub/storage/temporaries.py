"""What a killed writer leaves behind, and removing it."""

from __future__ import annotations

from pathlib import Path

# Names `atomic.temporary_name` gives: .NAME.XXXXXXXX.tmp, and .STEM.partial-XXXXXXXX.EXT for
# writers that keep the suffix (the media writers).
TEMPORARY_PATTERNS = (".*.tmp", ".*.partial-*")


def remove_stale_temporaries(*dirs: str | Path) -> None:
    """Temporary files of a killed run are garbage: nothing refers to them. Only for folders that
    one writer owns (`lock.exclusive_output`), else another writer's file in progress goes too."""
    for d in map(Path, dirs):
        if d.is_dir():
            for pattern in TEMPORARY_PATTERNS:
                for tmp in d.glob(pattern):
                    tmp.unlink(missing_ok=True)
