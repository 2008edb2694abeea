"""`dub generate` on a three-node Ray cluster on this machine (ray.cluster_utils.Cluster), with
nothing shared but the object store: the videos exist only in a bucket of the loopback S3
server (tests/object_store.py), the outputs go to it, the head node (the driver's) runs no task,
and one worker node is removed, without warning, in the middle of the run. The run finishes and
every clip is done exactly once: report rows, mp4 objects, shard keys."""

from __future__ import annotations

import io
import json
import os
import tarfile

import pyarrow.parquet as pq
import pytest

from tests.object_store import client, keys, new_bucket, s3_server  # noqa: F401 - fixture
from tests.process_helpers import PROJECT_ROOT, kill_session, start_cli, wait_until
from tests.video_factory import make_video

CLIPS = 6


@pytest.fixture
def cluster(tmp_path, monkeypatch):
    """(address, send) of a 3-node cluster (tests/cluster_process.py) with token authentication,
    as `ray start --head` sets it up where ~/.ray/auth_token exists (dub turns token mode on for
    --address when it finds a token, and a cluster that checks none could not run its actors):
    one token, in the environment, for the nodes and for `dub`."""
    import secrets
    import subprocess
    import sys

    monkeypatch.setenv("RAY_AUTH_MODE", "token")
    monkeypatch.setenv("RAY_AUTH_TOKEN", secrets.token_hex(16))
    env = dict(os.environ, PYTHONPATH=str(PROJECT_ROOT))
    proc = subprocess.Popen(
        [sys.executable, "-m", "tests.cluster_process", "2", str(tmp_path / "stages")],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        env=env,
        cwd=PROJECT_ROOT,
        start_new_session=True,
    )

    def send(command: str) -> str:
        proc.stdin.write(command + "\n")
        proc.stdin.flush()
        return proc.stdout.readline().strip()

    try:
        line = proc.stdout.readline().split()
        assert line[:1] == ["address"], f"the cluster did not start: {line}"
        yield line[1], send
    finally:
        try:
            proc.stdin.write("stop\n")
            proc.stdin.close()
            proc.wait(timeout=60)
        except (OSError, subprocess.TimeoutExpired):
            pass
        kill_session(proc)


def test_a_node_lost_mid_run_and_every_clip_is_done_once(cluster, s3_server, tmp_path):  # noqa: F811
    from dub.workflows.ingest import IngestConfig, ingest

    address, send = cluster
    s3 = client(s3_server)
    bucket = new_bucket(s3)
    local = tmp_path / "videos"
    local.mkdir()
    for i in range(CLIPS):
        path = local / f"clip{i}.mp4"
        make_video(path, seconds=2.0, fps=25, size=(64, 48), pattern="flash_events", events=[0.3 + 0.1 * i])
        s3.upload_file(str(path), bucket, f"videos/clip{i}.mp4")
        path.unlink()  # the bucket's copy is the only one: no task can read it from a local folder
    summary = ingest([f"s3://{bucket}/videos"], f"s3://{bucket}/manifest.parquet", IngestConfig(workers=1))
    assert summary.ok == CLIPS

    logs = tmp_path / "logs"
    args = [
        "generate",
        *("-m", f"s3://{bucket}/manifest.parquet", "-o", f"s3://{bucket}/dubbed"),
        *("--format", "both", "--batch-size", "1", "--address", address, "--json"),
    ]
    proc = start_cli(args, logs, "generate")
    try:
        # a clip has been published: the run is under way on both workers; one goes, unannounced
        wait_until(lambda: keys(s3, bucket, "dubbed/mp4/"), proc, logs, "generate", timeout_s=300, poll_s=0.2)
        assert send("remove 0") == "removed 0"
        proc.wait(timeout=400)
    finally:
        kill_session(proc)
    err = (logs / "generate.err").read_text(errors="replace")
    assert proc.returncode == 0, err[-3000:]
    # stdout holds the summary alone: what Ray printed of the lost node went to stderr
    result = json.loads((logs / "generate.out").read_text())
    names = keys(s3, bucket, "dubbed/")
    report = pq.read_table(io.BytesIO(s3.get_object(Bucket=bucket, Key="dubbed/report.parquet")["Body"].read()))
    rows = report.to_pylist()
    errors = [r["error"] for r in rows if r["status"] != "done"]
    assert result["generated"] == CLIPS and result["failed"] == 0 and result["writers"] == 1, errors

    mp4s = [k for k in names if k.startswith("dubbed/mp4/")]
    assert len(rows) == CLIPS and all(r["status"] == "done" for r in rows)
    assert len({r["video_id"] for r in rows}) == CLIPS
    assert sorted(r["output_mp4"] for r in rows) == sorted(f"s3://{bucket}/{k}" for k in mp4s)
    shard_keys = []
    for key in (k for k in names if k.startswith("dubbed/shards/")):
        with tarfile.open(fileobj=io.BytesIO(s3.get_object(Bucket=bucket, Key=key)["Body"].read())) as tar:
            shard_keys += sorted({m.name.split(".", 1)[0] for m in tar.getmembers()})
    assert sorted(shard_keys) == sorted(r["video_id"] for r in rows)  # each clip in one shard, once
    assert not [k for k in names if ".tmp" in k or ".partial" in k or k.endswith(".dub.lock")]
