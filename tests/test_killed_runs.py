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
import tarfile
import time
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from dub.workflows.ingest import IngestConfig, ingest
from tests.process_helpers import (
    ERROR_LOOKING,
    kill_driver,
    kill_session,
    run_cli,
    session,
    start_cli,
    temporaries,
    wait_until,
)
from tests.report_helpers import burst_audio, event_frames, write_clip, write_events, write_generate_run, write_wav
from tests.video_factory import make_video

# -- dub generate -------------------------------------------------------------------------------


def test_generate_killed_mid_run_resumes_each_clip_once_and_prints_no_error_lines(tmp_path):
    """8 clips, `--format both`, one window per model call: the driver is SIGKILLed as soon as the
    first mp4 is on disk; the Ray processes it started are left to die on their own, as after a
    real crash, and the same command runs again at once (the output lock died with the driver).
    The rerun keeps the mp4s made before the kill (same files, untouched), redoes the shard samples
    of the killed run's open shard and finishes: every clip once in report.parquet, one mp4 per
    clip, every shard key once across the shards, no temporary file left. Neither run prints an error-looking line
    (Ray's auth warning and its actor-constructor ERROR line are handled in workflows/ray_cluster.py)."""
    videos = tmp_path / "videos"
    for k in range(8):
        make_video(videos / f"clip{k}.mp4", seconds=1.0 + 0.1 * k, fps=25, size=(64, 48))
    manifest = tmp_path / "manifest.parquet"
    ingest([videos], manifest, IngestConfig(workers=0))
    out, logs = tmp_path / "out", tmp_path / "logs"
    args = ["generate", "-m", str(manifest), "-o", str(out), "--batch-size", "1", "--format", "both", "--json"]

    killed = start_cli(args, logs, "generate")
    try:
        first = wait_until(
            lambda: sorted((out / "mp4").glob("[!.]*.mp4")) if (out / "mp4").is_dir() else [], killed, logs, "generate"
        )
        kill_driver(killed)
        before = {p.name: p.stat().st_mtime_ns for p in (out / "mp4").glob("[!.]*.mp4")}
        assert first and len(before) < 8, f"the kill came too late to interrupt anything: {sorted(before)}"
        assert not (out / "report.parquet").exists()

        stdout, stderr = run_cli(args, logs, "rerun")  # while the killed run's Ray processes may still be dying
    finally:
        kill_session(killed)
    summary = json.loads(stdout[stdout.index("{") :])
    # the killed run's shard was still open (a temporary, deleted by the rerun): every clip lacked its
    # shard sample, so all 8 were generated again, but the mp4s on disk were kept, not rewritten
    assert (summary["already_done"], summary["generated"], summary["done"], summary["failed"]) == (0, 8, 8, 0)

    report = pq.read_table(out / "report.parquet").to_pylist()
    assert sorted(Path(r["path"]).name for r in report) == [f"clip{k}.mp4" for k in range(8)]
    assert all(r["status"] == "done" for r in report)
    mp4s = sorted((out / "mp4").glob("*.mp4"))
    assert len(mp4s) == 8 and sorted(Path(r["output_mp4"]).name for r in report) == [p.name for p in mp4s]
    assert {p.name: p.stat().st_mtime_ns for p in mp4s if p.name in before} == before  # not redone
    keys = [
        m.name.split(".", 1)[0]
        for shard in sorted((out / "shards").glob("*.tar"))
        for m in tarfile.open(shard).getmembers()
        if m.name.endswith(".flac")
    ]
    assert sorted(keys) == sorted(r["video_id"] for r in report)  # each clip in exactly one shard, once
    assert temporaries(out) == []

    killed_err = (logs / "generate.err").read_text(errors="replace")
    for name, text in (("killed run", killed_err), ("rerun", stderr)):
        assert not ERROR_LOOKING.search(text), f"the {name} printed an error-looking line:\n{text[-3000:]}"


def test_a_killed_runs_temporaries_are_removed_and_nothing_else(tmp_path):
    """What a SIGKILL can leave half-written: our .NAME.X.tmp (journal parts, shards, JSON) and the
    media writers' .STEM.partial-PID.EXT (remux, audio files). The rerun deletes them, and only them."""
    from dub.storage.temporaries import remove_stale_temporaries

    names = [
        ".part-1-abc.parquet.1a2b3c4d.tmp",
        ".clip0.partial-4242.mp4",
        ".v1.partial-77.m4a",
        "a_clip0.mp4",
        "shard-x-00000.tar",
        ".dub.lock",
        "notes.tmp.txt",
    ]
    for name in names:
        (tmp_path / name).write_bytes(b"x")
    remove_stale_temporaries(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(names[3:])


# -- dub ingest ---------------------------------------------------------------------------------

FILES = 100


def test_ingest_killed_mid_probe_resumes_probing_only_the_rest(tmp_path):
    """FILES videos probed by one worker (each ~40 ms: a 40 s silent audio track is scanned
    whole); the driver is SIGKILLed once the probe journal (.NAME.probed/ beside the manifest)
    has its first part. Its probe worker, orphaned, ends by itself. The rerun probes only the
    files the journal lacks (the summary says how many came from the interrupted run), writes
    every file once and removes the journal."""
    videos = tmp_path / "videos"
    source = make_video(
        tmp_path / "source.mp4", seconds=40.0, fps=2, size=(32, 32), with_audio=True, audio="silence"
    ).path.read_bytes()
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
        generated = write_clip(
            root / "run" / "mp4" / f"v{k}_clip{k}.mp4",
            event_frames(times, DURATION, seed=k),
            burst_audio(times + 0.05 * (k % 3), DURATION, seed=k),
        )
        write_wav(root / "refs" / f"v{k}.flac", burst_audio(times, DURATION, seed=100 + k))
        rows.append({"video_id": f"v{k}", "path": source, "output_mp4": Path("mp4") / generated.name})
    return write_generate_run(root / "run", rows)


def _report_args(run: Path, out: Path, weights: Path) -> list[str]:
    # --journal-every 0: a part per clip, so the first part appears while 15 clips are still to
    # score (at the 2 s default, a fast machine scores all 16 before the first part is due)
    return [
        "report",
        str(run),
        "-o",
        str(out),
        "--reference",
        str(run.parent / "refs"),
        "--backend",
        "logmel",
        "--weights-dir",
        str(weights),
        "--no-html",
        "--json",
        "--journal-every",
        "0",
    ]


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
    journaled = {
        v
        for part in (out / "journal").glob("part-*.parquet")
        for v in pq.read_table(part).column("video_id").to_pylist()
    }
    assert 0 < len(journaled) < CLIPS, f"{len(journaled)} of {CLIPS} clips scored before the kill"

    stdout, _ = run_cli(_report_args(report_run, out, weights), logs, "rerun")
    resumed = json.loads(stdout[stdout.index("{") :])
    assert resumed["journal"] == {"reused": len(journaled), "scored": CLIPS - len(journaled)}
    clean_out, _ = run_cli(_report_args(report_run, tmp_path / "clean", weights), logs, "clean")
    clean = json.loads(clean_out[clean_out.index("{") :])
    assert clean["journal"] == {"reused": 0, "scored": CLIPS}

    tables = [pq.read_table(d / "report.parquet") for d in (out, tmp_path / "clean")]
    assert sorted(tables[0].column("video_id").to_pylist()) == sorted(f"v{k}" for k in range(CLIPS))
    assert tables[0].num_rows == CLIPS
    rows = [
        {r["video_id"]: r for r in t.drop([c for c in t.column_names if c.startswith("t_")]).to_pylist()}
        for t in tables
    ]
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
