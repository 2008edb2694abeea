"""dub on object storage: the README's workflow with s3:// inputs and outputs against a real
S3-compatible server on loopback (moto's server mode, tests/object_store.py), read back by S3's
own client and by pyarrow, PyAV and webdataset; a run killed mid-way and resumed from another
machine's empty stage; the lease that keeps one writer per output prefix."""

from __future__ import annotations

import io
import json
import os
import tarfile
import time
from pathlib import Path

import pytest

from tests.object_store import client, keys, new_bucket, s3_server, upload_dir  # noqa: F401 - fixture
from tests.process_helpers import kill_session, run_cli, start_cli, wait_until

SAMPLES = Path(__file__).resolve().parents[1] / "dub" / "samples"


def _read_parquet(s3, bucket: str, key: str):
    import pyarrow.parquet as pq

    return pq.read_table(io.BytesIO(s3.get_object(Bucket=bucket, Key=key)["Body"].read()))


def _streams(data: bytes) -> tuple[int, int, float]:
    """(video streams, audio streams, audio seconds) of an mp4 held in memory, by PyAV."""
    import av

    with av.open(io.BytesIO(data)) as container:
        audio = container.streams.audio[0]
        seconds = float(audio.duration * audio.time_base) if audio.duration else 0.0
        return len(container.streams.video), len(container.streams.audio), seconds


@pytest.fixture(scope="module")
def bucket_with_videos(s3_server):  # noqa: F811 - the fixture imported above
    s3 = client(s3_server)
    bucket = new_bucket(s3)
    upload_dir(s3, SAMPLES, bucket, "videos", (".mp4", ".txt", ".events.json"))
    s3.put_object(Bucket=bucket, Key="videos/notes.mp4", Body=b"not a video, a note saved under a video name\n")
    s3.put_object(Bucket=bucket, Key="videos/.hidden/skip.mp4", Body=b"hidden folders are skipped as on disk")
    return s3, bucket


@pytest.fixture(scope="module")
def ingested(bucket_with_videos, tmp_path_factory):
    s3, bucket = bucket_with_videos
    logs = tmp_path_factory.mktemp("logs")
    run_cli(["ingest", f"s3://{bucket}/videos", "-o", f"s3://{bucket}/manifest.parquet"], logs, "ingest")
    return s3, bucket, logs


def test_ingest_lists_probes_and_writes_the_manifest_in_the_bucket(ingested):
    s3, bucket, _ = ingested
    rows = {Path(r["path"]).name: r for r in _read_parquet(s3, bucket, "manifest.parquet").to_pylist()}
    assert sorted(rows) == ["green_gem_bounce.mp4", "notes.mp4", "orange_cross_hit.mp4", "purple_ring_flash.mp4"]
    for name in ("green_gem_bounce.mp4", "orange_cross_hit.mp4", "purple_ring_flash.mp4"):
        row = rows[name]
        assert row["status"] == "ok" and row["path"] == f"s3://{bucket}/videos/{name}"
        assert row["duration_s"] > 5 and row["fps"] > 0
        assert row["prompt"] == (SAMPLES / name).with_suffix(".txt").read_text().strip()  # the sidecar object
        # the content id is the same BLAKE2b the local ingest computes from the same bytes
        from dub.manifests.ids import content_id

        assert row["video_id"] == content_id(SAMPLES / name)
    assert rows["notes.mp4"]["status"] == "error" and "text" in rows["notes.mp4"]["error"]


def test_readme_workflow_on_s3_then_a_killed_run_resumes_from_an_empty_stage(ingested, tmp_path, monkeypatch):
    """generate reads the manifest and the videos from the bucket and publishes every output to
    it; a run killed with its whole session (Ray included) after its first mp4, rerun with a
    new, empty stage folder (as on another machine), finishes every clip exactly once: the
    published mp4s are kept as they are, and the shard the killed run never closed is redone."""
    s3, bucket, logs = ingested
    out = f"s3://{bucket}/dubbed"
    args = ["generate", "-m", f"s3://{bucket}/manifest.parquet", "-o", out, "--format", "both"]
    monkeypatch.setenv("DUB_STAGE_DIR", str(tmp_path / "stage-a"))
    proc = start_cli([*args, "--batch-size", "1"], logs, "generate-killed")
    try:
        wait_until(lambda: keys(s3, bucket, "dubbed/mp4/"), proc, logs, "generate-killed", timeout_s=240, poll_s=0.2)
    finally:
        kill_session(proc)
    published = {k: s3.head_object(Bucket=bucket, Key=k)["ETag"] for k in keys(s3, bucket, "dubbed/mp4/")}

    monkeypatch.setenv("DUB_STAGE_DIR", str(tmp_path / "stage-b"))
    out_text, _ = run_cli([*args, "--json"], logs, "generate-resumed")
    summary = json.loads(out_text)
    assert summary["already_done"] + summary["generated"] == 3 and summary["failed"] == 0
    assert {k: s3.head_object(Bucket=bucket, Key=k)["ETag"] for k in published} == published

    names = keys(s3, bucket, "dubbed/")
    mp4s = [k for k in names if k.startswith("dubbed/mp4/")]
    assert len(mp4s) == 3
    for key in mp4s:  # whole files: PyAV reads the picture and the new soundtrack
        videos, audios, seconds = _streams(s3.get_object(Bucket=bucket, Key=key)["Body"].read())
        assert (videos, audios) == (1, 1) and seconds > 5
    shard_keys = []
    for key in (k for k in names if k.startswith("dubbed/shards/")):
        data = s3.get_object(Bucket=bucket, Key=key)["Body"].read()
        with tarfile.open(fileobj=io.BytesIO(data)) as tar:
            shard_keys += sorted({m.name.split(".", 1)[0] for m in tar.getmembers()})
    report = _read_parquet(s3, bucket, "dubbed/report.parquet").to_pylist()
    done = [r for r in report if r["status"] == "done"]
    assert sorted(shard_keys) == sorted(r["video_id"] for r in done)  # each clip in one shard, once
    assert len(done) == 3 and {r["output_mp4"] for r in done} == {f"s3://{bucket}/{k}" for k in mp4s}
    assert all(r["output_shard"].startswith(f"s3://{bucket}/dubbed/shards/") for r in done)
    assert [r["status"] for r in report if r["status"] != "done"] == ["skipped"]  # notes.mp4
    # the run's configuration is read back from the bucket: another one is refused there too
    proc = start_cli([*args, "--seed", "7"], logs, "generate-other-config")
    assert proc.wait(timeout=120) == 2
    assert "holds a run with another configuration" in (logs / "generate-other-config.err").read_text()

    # nothing half-written is visible, no lease is left, and the stage keeps no outputs
    assert not [k for k in names if ".tmp" in k or ".partial" in k or k.endswith(".dub.lock")]
    staged = [p.name for p in (tmp_path / "stage-b").rglob("*") if p.suffix in (".mp4", ".tar")]
    assert staged == []

    # the shards, fetched by S3's own client, read back by webdataset: each clip once, its metadata
    import webdataset as wds

    local = []
    for key in (k for k in names if k.startswith("dubbed/shards/")):
        local.append(str(tmp_path / key.rsplit("/", 1)[1]))
        s3.download_file(bucket, key, local[-1])
    samples = list(wds.WebDataset(local, shardshuffle=False))
    assert sorted(x["__key__"] for x in samples) == sorted(r["video_id"] for r in done)
    assert all(json.loads(x["json"])["source"].startswith(f"s3://{bucket}/videos/") for x in samples)

    # dub report scores the run in the bucket and writes its report to the bucket: the clips'
    # files and the sources' events sidecars are copied to the stage, every report file published
    out_text, _ = run_cli(["report", out, "-o", f"s3://{bucket}/scores", "--json"], logs, "report")
    scored = json.loads(out_text)
    assert scored["n_scored"] == 3
    assert {"scores/report.parquet", "scores/summary.json", "scores/index.html"} <= set(keys(s3, bucket, "scores/"))
    rows = _read_parquet(s3, bucket, "scores/report.parquet").to_pylist()
    assert len(rows) == 4 and sum(r["onset_f1"] is not None for r in rows) == 3  # the 3 clips with events


def test_lease_keeps_one_writer_per_prefix_and_a_lost_lease_stops_publishing(s3_server, tmp_path):  # noqa: F811
    from dub.storage import location
    from dub.storage.lease import remote_lease
    from dub.storage.lock import OutputInUse
    from dub.storage.mirror import Mirror

    s3 = client(s3_server)
    bucket = new_bucket(s3)
    prefix = f"s3://{bucket}/out"
    with remote_lease(prefix, "generate", settle_s=0.05, renew_s=0.2) as lease:
        with pytest.raises(OutputInUse, match=f"{prefix} is being written by another dub run"):
            with remote_lease(prefix, "generate", settle_s=0.05):
                pass
        mirror = Mirror(tmp_path, prefix)
        mirror.guard = lease.check
        (tmp_path / "a.txt").write_text("a")
        assert mirror.publish(tmp_path / "a.txt") == f"{prefix}/a.txt"
        # another run takes the lease over (as after this one stalled past stale_s)
        location.put_bytes(json.dumps({"token": "other", "renewed": time.time()}).encode(), f"{prefix}/.dub.lock")
        deadline = time.monotonic() + 10
        while lease.lost is None and time.monotonic() < deadline:
            time.sleep(0.05)
        (tmp_path / "b.txt").write_text("b")
        with pytest.raises(OutputInUse, match="took over"):
            mirror.publish(tmp_path / "b.txt")
    assert keys(s3, bucket, "out/") == ["out/.dub.lock", "out/a.txt"]  # the other run's lease stays

    # a lease left by a process of this host that has exited is taken over at once, also while
    # its parent has not reaped it yet (a zombie: signal 0 still reaches it)
    for pid, unreaped in [(_exited_pid(), None), _zombie_pid()]:
        dead = {"token": "dead", "renewed": time.time(), "host": os.uname().nodename, "pid": pid}
        location.put_bytes(json.dumps(dead).encode(), f"{prefix}/.dub.lock")
        with remote_lease(prefix, "generate", settle_s=0.05):
            pass
        if unreaped is not None:
            unreaped.wait()
        assert keys(s3, bucket, "out/") == ["out/a.txt"]


def _exited_pid() -> int:
    import subprocess
    import sys

    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def _zombie_pid():
    """(pid, Popen) of a child that has exited and is not reaped yet: /proc says Z."""
    import subprocess
    import sys

    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    deadline = time.monotonic() + 30
    while Path(f"/proc/{proc.pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z":
        assert time.monotonic() < deadline, "the child did not exit"
        time.sleep(0.01)
    return proc.pid, proc


def test_extract_to_a_bucket_then_train_from_it(s3_server, tmp_path, monkeypatch):  # noqa: F811
    """The training side on object storage: clips with audio in a bucket, `dub extract` writing
    its shards to the bucket (each published whole, resumable from the bucket), and the readers
    `dub train --shards s3://...` runs on every worker (check_shards, iter_samples) reading them
    back. (`dub train` itself on shards: tests/test_extract.py.)"""
    from dub.workflows.datasets.foley_synth import make_foley_synth
    from dub.workflows.train.data import check_shards, iter_samples

    s3 = client(s3_server)
    bucket = new_bucket(s3)
    make_foley_synth(tmp_path / "foley", seed=0, n_train=2, n_val=0, n_test=0, seconds=4.0, size=(128, 128))
    upload_dir(s3, tmp_path / "foley" / "train" / "audio", bucket, "clips", (".mp4", ".txt"))
    monkeypatch.setenv("DUB_STAGE_DIR", str(tmp_path / "stage"))
    logs = tmp_path / "logs"
    run_cli(["ingest", f"s3://{bucket}/clips", "-o", f"s3://{bucket}/clips.parquet"], logs, "ingest")
    extract = ["extract", "-m", f"s3://{bucket}/clips.parquet", "-o", f"s3://{bucket}/shards"]
    out, _ = run_cli([*extract, "--window", "2", "--shard-size", "2", "--json"], logs, "extract")
    first = json.loads(out)
    assert first["windows_failed"] == 0 and first["windows_written"] >= 4
    names = keys(s3, bucket, "shards/")
    assert "shards/extract.json" in names and "shards/empty_text_f.npy" in names
    assert not [k for k in names if ".tmp" in k or k.endswith(".dub.lock")]

    # the bucket is the truth: a rerun from an empty stage finds every window done
    monkeypatch.setenv("DUB_STAGE_DIR", str(tmp_path / "stage-2"))
    out, _ = run_cli([*extract, "--window", "2", "--shard-size", "2", "--json"], logs, "extract-again")
    again = json.loads(out)
    assert again["windows_written"] == 0 and again["windows_done_before"] == first["windows_written"]

    # train's readers see every window once, from the bucket
    shards = check_shards(f"s3://{bucket}/shards")
    assert shards.num_samples == first["windows_written"] and shards.empty_text_features() is not None
    keys_read = [s["__key__"] for s in iter_samples(shards.paths)]
    assert len(keys_read) == len(set(keys_read)) == first["windows_written"]
