"""`kill -9` of the real CLI in the middle of a run, then the same command again.

Each test starts `python -m dub.cli ...` in its own session (so everything it starts, Ray
included, can be found and killed), waits until part of the work is on disk, SIGKILLs the
driver (no `finally`, no atexit: what a crash, the OOM killer or a lost node does), reruns the
same command and checks the result is the one an uninterrupted run gives: every input exactly
once, nothing redone that was already durable, no temporary files left. The in-process
interruption tests (KeyboardInterrupt, killed actors) live beside each command's other tests.
"""

from __future__ import annotations

import time
from pathlib import Path

import pyarrow.parquet as pq

from tests.process_helpers import kill_driver, kill_session, run_cli, session, start_cli, temporaries, wait_until
from tests.video_factory import make_video


# -- dub ingest ---------------------------------------------------------------------------------

FILES = 100

def test_ingest_killed_mid_probe_resumes_probing_only_the_rest(tmp_path):
    """FILES videos probed by one worker (each ~40 ms: a 40 s silent audio track is scanned
    whole); the driver is SIGKILLed once the probe journal (.NAME.probed/ beside the manifest)
    has its first part. Its probe worker, orphaned, ends by itself. The rerun probes only the
    files the journal lacks (the summary says how many came from the interrupted run), writes
    every file once and removes the journal."""
    videos = tmp_path / "videos"
    source = make_video(tmp_path / "source.mp4", seconds=40.0, fps=2, size=(32, 32), with_audio=True,
                        audio="silence").path.read_bytes()
    videos.mkdir()
    for k in range(FILES):  # distinct contents: an MP4 `free` box (ignored by readers) holding k at the end
        payload = f"copy {k}".encode()
        (videos / f"v{k:03d}.mp4").write_bytes(source + (8 + len(payload)).to_bytes(4, "big") + b"free" + payload)
    manifest, logs = tmp_path / "m.parquet", tmp_path / "logs"
    journal = tmp_path / ".m.parquet.probed"
    args = ["ingest", str(videos), "-o", str(manifest), "--workers", "1"]

    proc = start_cli(args, logs, "ingest")
    try:
        wait_until(lambda: list(journal.glob("part-*.parquet")), proc, logs, "ingest")
        kill_driver(proc)
        deadline = time.monotonic() + 30
        while session(proc.pid) and time.monotonic() < deadline:  # the orphaned worker reads EOF and ends
            time.sleep(0.05)
        assert not session(proc.pid), f"the probe worker outlived its killed driver: {session(proc.pid)}"
    finally:
        kill_session(proc)
    assert not manifest.exists()
    journaled = [r for part in sorted(journal.glob("part-*.parquet")) for r in pq.read_table(part).to_pylist()]
    kept = sum(r["status"] == "ok" for r in journaled)
    assert 0 < kept < FILES, f"{kept} of {FILES} probed before the kill: nothing left to resume"

    stdout, _ = run_cli(args, logs, "rerun")
    said = " ".join(stdout.split())
    assert f"probed {FILES - kept}, unchanged {kept} ({kept} probed by an interrupted run)" in said, said
    rows = pq.read_table(manifest).to_pylist()
    assert sorted(Path(r["path"]).name for r in rows) == [f"v{k:03d}.mp4" for k in range(FILES)]
    assert len({r["video_id"] for r in rows}) == FILES
    assert all(r["status"] == "ok" for r in rows) and not journal.exists()
    assert temporaries(tmp_path) == []
