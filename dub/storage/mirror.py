"""An output folder on object storage, worked through a local stage folder.

Writers (PyAV, tar, Parquet) need a local file, so a run whose output is a URI writes each
file in a local stage folder exactly as a local run writes its folder (temporary name,
rename), then `publish`es it: one upload, after which the object is visible whole and the
local copy goes (a million clips never pile up on the driver's disk). The store is the truth:
a run pulls the small state files (run.json, the journal's parts, the report) from it before
it starts, so a run resumed on another machine, with an empty stage, resumes the same work.
For a local output folder the stage is the folder itself and every method is a no-op.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tarfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from dub.storage import location


def stage_for(uri: str) -> Path:
    """The local stage folder of an output URI: DUB_STAGE_DIR (default ~/.cache/dub/stage),
    one sub-folder per URI, so two outputs never share one."""
    root = Path(os.environ.get("DUB_STAGE_DIR") or Path(os.environ.get("XDG_CACHE_HOME", "~/.cache")) / "dub" / "stage")
    digest = hashlib.blake2b(uri.encode(), digest_size=8).hexdigest()
    return root.expanduser().resolve() / digest


class Mirror:
    """`stage` (a local folder) and, for object storage, the `remote` URI it mirrors."""

    def __init__(self, stage: Path, remote: str | None = None):
        self.stage = Path(stage)
        self.remote = remote
        self.guard: Callable[[], None] = lambda: None  # raises when the run lost its lease

    @classmethod
    def of(cls, uri: str, part: str = "") -> Mirror:
        """The mirror of an object-storage `uri`, staged in its own folder (`part`: a sub-folder,
        for a command that stages more than one thing for the same URI)."""
        uri = location.check_uri(uri)
        return cls(stage_for(uri) / part, uri)

    @contextmanager
    def leased(self, command: str) -> Iterator[None]:
        """For an object-storage output, hold its lease (dub.storage.lease) for the block, and
        publish nothing once another run has taken it over; nothing for a local folder, whose
        lock is the caller's flock (dub.storage.lock)."""
        if self.remote is None:
            yield
            return
        from dub.storage.lease import remote_lease

        with remote_lease(self.remote, command) as lease:
            self.guard = lease.check
            yield

    @property
    def active(self) -> bool:
        return self.remote is not None

    def location(self, local: str | Path) -> str:
        """Where a stage file lives once published: its URI, or the local path itself."""
        if self.remote is None:
            return str(local)
        return location.join(self.remote, Path(local).relative_to(self.stage).as_posix())

    def publish(self, local: str | Path, keep: bool = False) -> str:
        """Upload a finished stage file to its place in the store and return its location;
        the stage copy goes unless `keep` (state files read again in this run)."""
        if self.remote is None:
            return str(local)
        self.guard()
        uri = location.put_file(local, self.location(local))
        if not keep:
            Path(local).unlink(missing_ok=True)
        return uri

    def pull(self, *names: str) -> None:
        """Replace the stage's copy of each state file or folder in `names` by the store's (a
        name missing from the store goes from the stage too: the store is the truth)."""
        if self.remote is None:
            return
        for name in names:
            local = self.stage / name
            if local.is_dir():
                shutil.rmtree(local)
            else:
                local.unlink(missing_ok=True)
            prefix = location.join(self.remote, name)
            single = location.stat(prefix)  # a file (run.json) or a folder's objects (journal/)
            found = [single] if single is not None else location.list_objects(prefix)
            for obj in found:
                dst = self.stage / Path(obj.uri[len(self.remote) + 1 :])
                dst.parent.mkdir(parents=True, exist_ok=True)
                dst.write_bytes(location.read_bytes(obj.uri))

    def names(self, folder: str) -> set[str]:
        """File names in `folder` (stage-relative), read from the store when there is one: one
        listing instead of a stat per expected file."""
        if self.remote is None:
            local = self.stage / folder
            return {p.name for p in local.iterdir() if p.is_file()} if local.is_dir() else set()
        prefix = location.join(self.remote, folder)
        return {o.uri.rsplit("/", 1)[1] for o in location.list_objects(prefix) if o.uri.startswith(prefix + "/")}

    def remove(self, name: str) -> None:
        """Delete a published file or folder (with --overwrite)."""
        if self.remote is None:
            return
        target = location.join(self.remote, name)
        location.delete(target)
        location.delete_prefix(target + "/")

    def tar_keys(self, folder: str, pattern_prefix: str = "shard-") -> dict[str, str]:
        """Keys of the finished WebDataset tars in `folder` ("" the root) -> the tar's location;
        a damaged tar does not count (its samples are redone)."""
        sources = (
            [str(p) for p in sorted((self.stage / folder).glob(f"{pattern_prefix}*.tar"))]
            if self.remote is None
            else [
                o.uri
                for o in location.list_objects(location.join(self.remote, folder))
                if o.uri.rsplit("/", 1)[1].startswith(pattern_prefix) and o.uri.endswith(".tar")
            ]
        )
        found: dict[str, str] = {}
        for source in sources:
            try:
                with location.open_input(source) as handle, tarfile.open(fileobj=handle) as tar:
                    for member in tar.getmembers():
                        found.setdefault(member.name.split(".", 1)[0], source)
            except (tarfile.TarError, OSError):
                continue
        return found
