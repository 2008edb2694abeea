"""Path options: `local_path` for options that take local (or mounted) files only, and
`location` for those that also take object storage (s3://, gs://; dub.storage.location).

A URI given where dub expects a local path would otherwise become a local folder named "s3:"
(pathlib folds the two slashes into one), and a run would quietly write there; such a value is
refused while the command line is parsed, with what to do instead. Options that take URIs are
typed `str` for the same reason: a Path would fold the URI before any check sees it.
"""

from __future__ import annotations

import typer

from dub.storage.location import LocationError, check_uri, is_uri, scheme


def _given(value) -> list:
    """The values of a single or repeated option, without the unset ones."""
    return [v for v in (value if isinstance(value, (list, tuple)) else [value]) if v is not None]


def local_path(value):
    """typer callback for Path options and arguments (single or repeated)."""
    for v in _given(value):
        if is_uri(v):
            raise typer.BadParameter(
                f"{scheme(v)}:// locations are not supported by this option; mount the bucket (e.g. with "
                "s3fs or gcsfuse) and give its local path, or copy the files to a local folder"
            )
    return value


def location(value):
    """typer callback for `str` options that take a local path or an object-storage URI."""
    for v in _given(value):
        if is_uri(v):
            try:
                check_uri(v)
            except LocationError as exc:
                raise typer.BadParameter(str(exc)) from None
    return value
