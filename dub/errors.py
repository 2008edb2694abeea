"""One way to put an exception into a log line, a report cell or a warning: imports nothing of
dub, so every layer uses it."""

from __future__ import annotations


def short_error(exc: BaseException, limit: int = 300) -> str:
    """`Type: message` on one line (a loader's many-line message flattened), at most `limit`
    characters; the type alone when there is no message."""
    message = " ".join(str(exc).split())
    text = f"{type(exc).__name__}: {message}" if message else type(exc).__name__
    return text[:limit]
