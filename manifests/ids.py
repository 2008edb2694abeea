"""Stable ids derived from content, so renaming or moving a file keeps its id.

An id is the first 20 hex digits (80 bits) of BLAKE2b over the file's bytes: collisions stay
negligible beyond 10^9 files, and the id is short enough for file names and WebDataset keys
(hex has no dots).
"""

from __future__ import annotations

import hashlib
from pathlib import Path

ID_HEX_CHARS = 20
_CHUNK = 1 << 20


def content_id(path: str | Path) -> str:
    """Content id of a file (or an object-storage URI), streamed in 1 MiB chunks (constant
    memory for any size)."""
    from dub.storage.location import open_input

    digest = hashlib.blake2b(digest_size=ID_HEX_CHARS // 2)
    with open_input(str(path)) as handle:
        while chunk := handle.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def bytes_id(data: bytes) -> str:
    """Content id of bytes in memory; equals `content_id` of a file holding them."""
    return hashlib.blake2b(data, digest_size=ID_HEX_CHARS // 2).hexdigest()


def name_id(name: str) -> str:
    """Id for a row whose bytes cannot be read (unreadable file, directory): derived from its
    path instead, prefixed so it never equals a content id."""
    return "p" + hashlib.blake2b(name.encode("utf-8", "surrogateescape"), digest_size=ID_HEX_CHARS // 2).hexdigest()[1:]


def is_content_id(value: str) -> bool:
    return len(value) == ID_HEX_CHARS and all(c in "0123456789abcdef" for c in value)
