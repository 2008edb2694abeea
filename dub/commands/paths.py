"""Path options: local (or mounted) files and folders only, for now.

A URI such as s3://bucket/out given where dub expects a path would otherwise become a local
folder named "s3:" (pathlib folds the two slashes into one), and a run would quietly write
there. Until dub reads and writes object storage itself, such a value is refused while the
command line is parsed, with what to do instead.
"""

from __future__ import annotations

import re

import typer

# a URI scheme (two or more characters, so a Windows drive letter is not one) and its colon
_URI = re.compile(r"^[A-Za-z][A-Za-z0-9+.\-]+:/")


def local_path(value):
    """typer callback for Path options and arguments (single or repeated)."""
    values = value if isinstance(value, (list, tuple)) else [value]
    for v in values:
        if v is not None and _URI.match(str(v)):
            scheme = str(v).split(":", 1)[0]
            raise typer.BadParameter(
                f"{scheme}:// locations are not supported here yet; mount the bucket (e.g. with "
                "s3fs or gcsfuse) and give its local path, or copy the files to a local folder"
            )
    return value
