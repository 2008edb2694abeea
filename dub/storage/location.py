"""Where dub reads and writes: a local path, or an object in object storage named by a URI
(`s3://bucket/key`, `gs://bucket/key`), through pyarrow's filesystems.

Credentials and endpoints come from the store's usual configuration, read by pyarrow itself:
for S3 the AWS chain (AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY, AWS_PROFILE and ~/.aws/,
instance roles) and AWS_ENDPOINT_URL for an S3-compatible store (MinIO, Ceph, R2); for GCS,
Google's application default credentials. dub holds no secrets of its own.

Object stores have no rename, so "whole or not at all" comes from the upload itself: an object
appears when its single PUT (or its multipart upload) completes, never in part, and an upload
cut by a crash leaves nothing visible. `put_file` is the one way dub publishes an object.
"""

from __future__ import annotations

import functools
import posixpath
import re
import shutil
from dataclasses import dataclass
from pathlib import Path

# a URI scheme (two or more characters, so a Windows drive letter is not one) and its colon
_URI = re.compile(r"^([A-Za-z][A-Za-z0-9+.\-]+):/")
SCHEMES = ("s3", "gs", "gcs")  # what pyarrow.fs opens from a URI and dub is tested on (s3)


class LocationError(ValueError):
    """A location dub cannot use (unsupported scheme, malformed URI)."""


def is_uri(value) -> bool:
    return value is not None and bool(_URI.match(str(value)))


def scheme(value) -> str | None:
    match = _URI.match(str(value))
    return match.group(1).lower() if match else None


def check_uri(value: str) -> str:
    """`value` unchanged if dub can read and write it, else LocationError saying why."""
    found = scheme(value)
    if found not in SCHEMES:
        raise LocationError(
            f"{found}:// locations are not supported; dub reads and writes local paths and "
            f"{', '.join(s + '://' for s in SCHEMES)} object storage"
        )
    bucket = str(value).split("://", 1)[1].split("/", 1)[0] if "://" in str(value) else ""
    if not bucket:
        raise LocationError(f"{value} names no bucket: write it as {found}://BUCKET/PREFIX")
    return str(value).rstrip("/")


def join(base: str, *parts: str) -> str:
    """`base` / parts, for URIs (always "/") and local paths alike; an empty part adds nothing
    (as for a Path), so `join(prefix, "")` is the prefix itself."""
    if is_uri(base):
        return posixpath.join(str(base).rstrip("/"), *[str(p).strip("/") for p in parts if str(p).strip("/")])
    return str(Path(base).joinpath(*parts))


@functools.lru_cache(maxsize=64)
def _filesystem(root: str):
    import pyarrow.fs as pafs

    fs, _ = pafs.FileSystem.from_uri(root)
    return fs


def resolve(uri: str):
    """(pyarrow FileSystem, path inside it) for a URI; one filesystem per bucket, kept."""
    uri = check_uri(uri)
    kind, rest = uri.split("://", 1)
    bucket = rest.split("/", 1)[0]
    return _filesystem(f"{kind}://{bucket}"), rest


@dataclass(frozen=True)
class ObjectInfo:
    uri: str
    size: int
    mtime_ns: int


def stat(uri: str) -> ObjectInfo | None:
    """Size and modification time of an object; None when there is none."""
    import pyarrow.fs as pafs

    fs, path = resolve(uri)
    info = fs.get_file_info(path)
    if info.type != pafs.FileType.File:
        return None
    return ObjectInfo(uri, int(info.size or 0), int(info.mtime_ns or 0))


def exists(location: str) -> bool:
    return stat(location) is not None if is_uri(location) else Path(location).exists()


def list_objects(prefix: str) -> list[ObjectInfo]:
    """Every object under `prefix` (recursively), sorted by URI; [] when there is none."""
    import pyarrow.fs as pafs

    fs, path = resolve(prefix)
    kind = scheme(prefix)
    selector = pafs.FileSelector(path.rstrip("/"), recursive=True, allow_not_found=True)
    found = [
        ObjectInfo(f"{kind}://{info.path}", int(info.size or 0), int(info.mtime_ns or 0))
        for info in fs.get_file_info(selector)
        if info.type == pafs.FileType.File
    ]
    return sorted(found, key=lambda o: o.uri)


def open_input(location: str):
    """A seekable binary file for reading (PyAV, tarfile and Parquet take it as is)."""
    if not is_uri(location):
        return open(location, "rb")
    fs, path = resolve(location)
    return fs.open_input_file(path)


def read_bytes(location: str) -> bytes:
    with open_input(location) as f:
        return f.read()


def put_file(local: str | Path, uri: str) -> str:
    """Upload a finished local file as the object `uri`: it appears whole when the upload
    completes (see the module's note), replacing any object of that name."""
    fs, path = resolve(uri)
    with open(local, "rb") as src, fs.open_output_stream(path) as dst:
        shutil.copyfileobj(src, dst, length=8 << 20)
    return uri


def put_bytes(data: bytes, uri: str) -> str:
    fs, path = resolve(uri)
    with fs.open_output_stream(path) as dst:
        dst.write(data)
    return uri


def delete(uri: str) -> None:
    """Remove one object; nothing when it is already gone."""
    import pyarrow.fs as pafs

    fs, path = resolve(uri)
    if fs.get_file_info(path).type == pafs.FileType.File:
        fs.delete_file(path)


def delete_prefix(prefix: str) -> None:
    """Remove every object under `prefix`."""
    for obj in list_objects(prefix):
        delete(obj.uri)
