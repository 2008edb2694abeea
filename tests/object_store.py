"""An S3-compatible server on loopback (moto's server mode), for tests that read and write
object storage through dub as a user would: credentials and endpoint in the environment.

`s3_server` (a pytest fixture, module scope): starts the server, points AWS_* at it for the
module (child processes and Ray workers inherit the environment), yields its endpoint.
`new_bucket(client)` makes a bucket with a fresh name; `keys(client, bucket, prefix)`.
"""

from __future__ import annotations

import os
import uuid

import pytest


@pytest.fixture(scope="module")
def s3_server():
    pytest.importorskip("moto", reason="moto (the test extra) runs the local S3 server")
    import logging

    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.WARNING)  # a line per request otherwise
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    endpoint = f"http://{host}:{port}"
    with pytest.MonkeyPatch.context() as env:
        for name, value in {
            "AWS_ACCESS_KEY_ID": "test",
            "AWS_SECRET_ACCESS_KEY": "test",
            "AWS_DEFAULT_REGION": "us-east-1",
            "AWS_ENDPOINT_URL": endpoint,
        }.items():
            env.setenv(name, value)
        for name in ("AWS_PROFILE", "AWS_SESSION_TOKEN"):
            env.delenv(name, raising=False)
        yield endpoint
    server.stop()


def client(endpoint: str):
    import boto3

    return boto3.client("s3", endpoint_url=endpoint)


def new_bucket(s3) -> str:
    name = f"dub-test-{uuid.uuid4().hex[:10]}"
    s3.create_bucket(Bucket=name)
    return name


def keys(s3, bucket: str, prefix: str = "") -> list[str]:
    """Object keys under `prefix`, without the empty "folder/" markers pyarrow's S3 filesystem
    leaves so that a folder still lists after its last file is deleted."""
    pages = s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix)
    return sorted(o["Key"] for page in pages for o in page.get("Contents", []) if not o["Key"].endswith("/"))


def upload_dir(s3, local: str | os.PathLike, bucket: str, prefix: str, suffixes: tuple[str, ...]) -> None:
    for name in sorted(os.listdir(local)):
        if name.endswith(suffixes):
            s3.upload_file(os.path.join(local, name), bucket, f"{prefix}/{name}")
