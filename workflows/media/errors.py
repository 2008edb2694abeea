"""Media errors carry a short kind (for grouping) and a sentence a user can act on."""

from __future__ import annotations


class MediaError(Exception):
    """A file that cannot be used as asked. `kind` groups errors in summaries
    (empty, not_media, truncated, no_video, ...); `str(err)` says what is wrong and what to do."""

    def __init__(self, kind: str, message: str):
        super().__init__(message)
        self.kind = kind

    @property
    def message(self) -> str:
        return str(self)
