"""The lock on an output folder in object storage: a lease object, PREFIX/.dub.lock.

Object stores have no flock, and pyarrow's filesystems cannot make a conditional PUT, so one
writer per output is kept by a lease: a run reads the lease, refuses if another run renewed it
within `stale_s`, writes its own (a random token), waits `settle_s` and reads it back. Stores
are strongly consistent (S3 and GCS: a read after a write sees it), so of two runs that start
together the one whose write landed last reads its own token and goes on; the other reads the
winner's and stops before publishing anything. A background thread renews the lease every
`renew_s` and checks the token each time; a run that finds another token (it stalled past
`stale_s` and was taken over) stops publishing at its next file (`check`). A killed run's
lease is taken over after `stale_s`, or at once by a run on the same host, which can see that
the holder's process is gone (or a zombie its parent has not reaped yet).
"""

from __future__ import annotations

import json
import os
import socket
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from dub.storage import location
from dub.storage.lock import LOCK_FILE, OutputInUse


class Lease:
    def __init__(self, uri: str, command: str, stale_s: float, renew_s: float):
        self.uri, self.command, self.stale_s, self.renew_s = uri, command, stale_s, renew_s
        self.token = uuid.uuid4().hex
        self.lost: str | None = None
        self._stop = threading.Event()

    def _body(self) -> bytes:
        return json.dumps(
            {
                "token": self.token,
                "command": self.command,
                "pid": os.getpid(),
                "host": socket.gethostname(),
                "renewed": time.time(),
                "argv": " ".join(sys.argv[1:])[:500],
            }
        ).encode()

    def read(self) -> dict | None:
        try:
            return json.loads(location.read_bytes(self.uri)) if location.exists(self.uri) else None
        except (OSError, ValueError):
            return None

    def check(self) -> None:
        """Raise OutputInUse if another run took the lease over."""
        if self.lost:
            raise OutputInUse(self.lost)

    def renew_forever(self) -> None:
        while not self._stop.wait(self.renew_s):
            holder = self.read()
            if holder is None or holder.get("token") != self.token:
                self.lost = f"another dub run took over {self.uri} ({_who(holder)}); this run stopped publishing"
                return
            location.put_bytes(self._body(), self.uri)


def _live(holder: dict | None, stale_s: float) -> bool:
    """Whether `holder` may still be writing: renewed within `stale_s`, and not a process of
    this host that has exited."""
    if holder is None or time.time() - float(holder.get("renewed", 0)) >= stale_s:
        return False
    if holder.get("host") == socket.gethostname():
        try:
            pid = int(holder.get("pid", 0))
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        except (OSError, ValueError):
            return True  # another user's process (EPERM): alive
        return not _zombie(pid)
    return True


def _zombie(pid: int) -> bool:
    """Whether `pid` has exited but its parent has not reaped it yet: signal 0 still reaches it,
    yet it writes nothing more (Linux /proc; elsewhere such a holder counts as alive)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat[stat.rindex(")") + 2 :].startswith("Z")


def _who(holder: dict | None) -> str:
    if not holder:
        return "no holder"
    return f"{holder.get('command')} pid {holder.get('pid')} on {holder.get('host')}"


@contextmanager
def remote_lease(
    prefix: str, command: str, settle_s: float = 1.0, renew_s: float = 15.0, stale_s: float = 120.0
) -> Iterator[Lease]:
    """Hold the lease on the output `prefix` for the block; raise OutputInUse if another run holds it."""
    lease = Lease(location.join(prefix, LOCK_FILE), command, stale_s, renew_s)
    holder = lease.read()
    if _live(holder, stale_s):
        raise OutputInUse(
            f"{prefix} is being written by another dub run ({_who(holder)}); wait for it to finish, or "
            f"for {stale_s:.0f} s after it died, or write to another prefix"
        )
    location.put_bytes(lease._body(), lease.uri)
    time.sleep(settle_s)
    holder = lease.read()
    if holder is None or holder.get("token") != lease.token:
        raise OutputInUse(f"{prefix} was claimed at the same moment by another dub run ({_who(holder)})")
    renewer = threading.Thread(target=lease.renew_forever, name="dub-lease", daemon=True)
    renewer.start()
    try:
        yield lease
    finally:
        lease._stop.set()
        renewer.join(timeout=renew_s + 5)
        holder = lease.read()
        if holder is not None and holder.get("token") == lease.token:
            location.delete(lease.uri)
