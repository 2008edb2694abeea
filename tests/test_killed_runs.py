"""`kill -9` of the real CLI in the middle of a run, then the same command again.

Each test starts `python -m dub.cli ...` in its own session (so everything it starts, Ray
included, can be found and killed), waits until part of the work is on disk, SIGKILLs the
driver (no `finally`, no atexit: what a crash, the OOM killer or a lost node does), reruns the
same command and checks the result is the one an uninterrupted run gives: every input exactly
once, nothing redone that was already durable, no temporary files left. The in-process
interruption tests (KeyboardInterrupt, killed actors) live beside each command's other tests.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from tests.process_helpers import kill_driver, kill_session, run_cli, session, start_cli, temporaries, wait_until
from tests.report_helpers import burst_audio, event_frames, write_clip, write_events, write_generate_run, write_wav
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


# -- dub report ---------------------------------------------------------------------------------

CLIPS = 16
DURATION = 3.0


@pytest.fixture(scope="module")
def report_run(tmp_path_factory) -> Path:
    """A generate run of CLIPS done clips: silent sources with event sidecars, generated mp4s with
    audio, a reference folder."""
    root = tmp_path_factory.mktemp("report_run")
    rows = []
    for k in range(CLIPS):
        rng = np.random.default_rng(k)
        times = np.sort(rng.choice(np.arange(0.3, DURATION - 0.3, 0.35), size=3, replace=False)).round(2)
        source = write_clip(root / "videos" / f"clip{k}.mp4", event_frames(times, DURATION, seed=k))
        write_events(source, times)
        generated = write_clip(root / "run" / "mp4" / f"v{k}_clip{k}.mp4", event_frames(times, DURATION, seed=k),
                               burst_audio(times + 0.05 * (k % 3), DURATION, seed=k))
        write_wav(root / "refs" / f"v{k}.flac", burst_audio(times, DURATION, seed=100 + k))
        rows.append({"video_id": f"v{k}", "path": source, "output_mp4": Path("mp4") / generated.name})
    return write_generate_run(root / "run", rows)


def _report_args(run: Path, out: Path, weights: Path) -> list[str]:
    return ["report", str(run), "-o", str(out), "--reference", str(run.parent / "refs"), "--backend", "logmel",
            "--weights-dir", str(weights), "--no-html", "--json"]


def test_report_killed_mid_scoring_resumes_and_equals_an_uninterrupted_run(report_run, tmp_path):
    """The driver is SIGKILLed once DIR/journal/ holds its first part; the rerun scores only the
    clips the journal lacks, and its report.parquet and set-level metrics (FAD on log-mel
    features, onset and A/V-alignment means) equal a clean run's into another folder."""
    weights, logs = tmp_path / "no_weights", tmp_path / "logs"
    weights.mkdir()
    out = tmp_path / "out"
    proc = start_cli(_report_args(report_run, out, weights), logs, "report")
    try:
        parts = wait_until(lambda: list((out / "journal").glob("part-*.parquet")), proc, logs, "report")
        kill_driver(proc)
    finally:
        kill_session(proc)
    assert parts and not (out / "report.parquet").exists()
    journaled = {v for part in (out / "journal").glob("part-*.parquet")
                 for v in pq.read_table(part).column("video_id").to_pylist()}
    assert 0 < len(journaled) < CLIPS, f"{len(journaled)} of {CLIPS} clips scored before the kill"

    stdout, _ = run_cli(_report_args(report_run, out, weights), logs, "rerun")
    resumed = json.loads(stdout[stdout.index("{"):])
    assert resumed["journal"] == {"reused": len(journaled), "scored": CLIPS - len(journaled)}
    clean_out, _ = run_cli(_report_args(report_run, tmp_path / "clean", weights), logs, "clean")
    clean = json.loads(clean_out[clean_out.index("{"):])
    assert clean["journal"] == {"reused": 0, "scored": CLIPS}

    tables = [pq.read_table(d / "report.parquet") for d in (out, tmp_path / "clean")]
    assert sorted(tables[0].column("video_id").to_pylist()) == sorted(f"v{k}" for k in range(CLIPS))
    assert tables[0].num_rows == CLIPS
    rows = [{r["video_id"]: r for r in t.drop([c for c in t.column_names if c.startswith("t_")]).to_pylist()}
            for t in tables]
    for vid, row in rows[1].items():
        for key, value in row.items():
            if isinstance(value, float):
                assert rows[0][vid][key] == pytest.approx(value, rel=1e-6, abs=1e-9, nan_ok=True), (vid, key)
            else:
                assert rows[0][vid][key] == value, (vid, key)
    assert resumed["metrics"].keys() == clean["metrics"].keys() and "fad_logmel" in clean["metrics"]
    for key, value in clean["metrics"].items():
        assert resumed["metrics"][key] == pytest.approx(value, rel=1e-6, abs=1e-9), key
    assert resumed["unavailable"] == clean["unavailable"]
    assert temporaries(out) == []
