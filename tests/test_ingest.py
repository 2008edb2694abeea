"""`dub ingest` over a corpus of real good and bad files; manifests I/O; re-ingest semantics."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

from dub.cli import app
from dub.manifests.ids import bytes_id, content_id, is_content_id
from dub.manifests.io import ManifestError, read_manifest, read_report, write_parquet_atomic
from dub.manifests.schema import MANIFEST_SCHEMA, REPORT_SCHEMA
from dub.workflows.ingest import IngestConfig, ingest, probe_all, scan
from tests.video_factory import build_corpus, make_video

PROJECT_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    root = tmp_path_factory.mktemp("corpus")
    return root, build_corpus(root)


@pytest.fixture(scope="module")
def corpus_manifest(corpus, tmp_path_factory):
    """The corpus ingested once through the CLI (typer's runner), with worker processes."""
    root, _ = corpus
    out = tmp_path_factory.mktemp("manifest") / "manifest.parquet"
    result = CliRunner().invoke(app, ["ingest", str(root), "-o", str(out), "--workers", "2"])
    assert result.exit_code == 0, result.output
    return out, result.output


def rows_by_name(manifest, root) -> dict[str, dict]:
    return {os.path.relpath(r["path"], root): r for r in read_manifest(manifest).to_pylist()}


def test_every_corpus_file_gets_one_row_with_a_clear_verdict(corpus, corpus_manifest):
    root, entries = corpus
    manifest, output = corpus_manifest
    rows = rows_by_name(manifest, root)
    assert sorted(rows) == sorted(entries)  # one row per file; hidden files and the symlink loop add none
    for name, entry in entries.items():
        row = rows[name]
        assert row["status"] == entry.status, (name, row["error"])
        if entry.status == "error":
            assert row["error_kind"] == entry.error_kind, (name, row["error"])
            for word in entry.words:
                assert word in row["error"].lower(), (name, row["error"])
            assert len(row["error"]) > 30  # a sentence, not a code
        else:
            assert row["error"] is None and row["error_kind"] is None
    assert "error: truncated" in output and "duplicate" in output and "h of video" in output


def test_good_files_are_probed_correctly(corpus, corpus_manifest):
    root, entries = corpus
    rows = rows_by_name(corpus_manifest[0], root)
    for name, entry in entries.items():
        if entry.truth is None:
            continue
        truth, row = entry.truth, rows[name]
        frame_s = 1.0 / truth.fps
        assert abs(row["duration_s"] - truth.duration_s) <= frame_s, name
        assert row["num_frames"] == truth.num_frames, name
        assert row["fps"] == pytest.approx(truth.num_frames / truth.duration_s, rel=1e-3), name
        assert (row["width"], row["height"]) == truth.size, name
        assert row["rotation"] == truth.rotation, name
        assert row["has_audio"] == truth.has_audio, name
        assert row["audio_is_silent"] == ({"tone": False, "silence": True}.get(truth.audio)), name
        assert row["video_id"] == content_id(entry.path), name
        assert row["size_bytes"] == entry.path.stat().st_size, name
    assert rows["vfr.mp4"]["is_vfr"] is True and rows["plain.mp4"]["is_vfr"] is False
    assert rows["ten_bit.mp4"]["pix_fmt"] == "yuv420p10le" and rows["odd_size_444.mp4"]["pix_fmt"] == "yuv444p"
    assert (rows["mpeg4.avi"]["container"], rows["mpeg4.avi"]["video_codec"]) == ("avi", "mpeg4")
    assert (rows["vp9.webm"]["container"], rows["vp9.webm"]["video_codec"]) == ("webm", "vp9")
    assert rows["plain.mp4"]["prompt"] == "a dog barks twice" and rows["vfr.mp4"]["prompt"] == ""
    copy = rows["plain_copy.mp4"]
    assert copy["video_id"] == rows["plain.mp4"]["video_id"]
    assert copy["duplicate_of"] == rows["plain.mp4"]["path"] and rows["plain.mp4"]["duplicate_of"] is None


def test_unreadable_file_is_reported(tmp_path):
    clip = make_video(tmp_path / "locked.mp4", seconds=0.5, fps=25)
    os.chmod(clip.path, 0)
    try:
        if os.geteuid() != 0:
            (row,) = probe_all([str(clip.path)], IngestConfig(workers=0))
        else:  # root reads anything: probe in a child without the file-permission override
            row = _probe_without_dac_override(clip.path)
    finally:
        os.chmod(clip.path, 0o644)
    assert row["status"] == "error" and row["error_kind"] == "unreadable" and "permission" in row["error"]
    assert row["size_bytes"] == clip.path.stat().st_size


def _probe_without_dac_override(path) -> dict:
    import json

    setpriv = shutil.which("setpriv")
    if setpriv is None:
        pytest.skip("running as root without setpriv: cannot make a file unreadable")
    code = (
        "import json, sys; from dub.workflows.ingest import probe_all, IngestConfig; "
        "print(json.dumps(probe_all([sys.argv[1]], IngestConfig(workers=0))[0]))"
    )
    proc = subprocess.run(
        [
            setpriv,
            "--inh-caps=-all",
            "--bounding-set=-dac_override,-dac_read_search",
            sys.executable,
            "-c",
            code,
            str(path),
        ],
        capture_output=True,
        text=True,
        env=dict(os.environ, PYTHONPATH=PROJECT_ROOT),
        timeout=120,
    )
    if proc.returncode != 0 and "setpriv" in proc.stderr:
        pytest.skip(f"setpriv cannot drop capabilities here: {proc.stderr.strip()}")
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


def test_strict_exits_1_when_a_file_failed(corpus, tmp_path):
    root, _ = corpus
    result = CliRunner().invoke(
        app,
        [
            "ingest",
            str(root / "empty.mp4"),
            str(root / "plain.mp4"),
            "-o",
            str(tmp_path / "m.parquet"),
            "--strict",
            "--workers",
            "0",
        ],
    )
    assert result.exit_code == 1, result.output
    table = read_manifest(tmp_path / "m.parquet")
    assert sorted(table.column("status").to_pylist()) == ["error", "ok"]


def test_missing_path_and_bad_output_exit_2(tmp_path):
    runner = CliRunner()
    result = runner.invoke(app, ["ingest", str(tmp_path / "nope"), "-o", str(tmp_path / "m.parquet")])
    assert result.exit_code == 2 and "not found" in result.output
    make_video(tmp_path / "a.mp4", seconds=0.2)
    result = runner.invoke(app, ["ingest", str(tmp_path), "-o", str(tmp_path)])
    assert result.exit_code == 2 and "directory" in result.output


def test_reingest_keeps_ids_adds_new_files_and_flags_duplicates(tmp_path):
    videos = tmp_path / "videos"
    a = make_video(videos / "a.mp4", seconds=0.5, fps=25, size=(64, 48)).path
    make_video(videos / "b.mp4", seconds=0.5, fps=25, size=(80, 48))
    manifest = tmp_path / "m.parquet"
    config = IngestConfig(workers=0)
    first = ingest([videos], manifest, config)
    assert (first.ok, first.probed, first.reused) == (2, 2, 0)
    before = {r["path"]: r for r in read_manifest(manifest).to_pylist()}

    again = ingest([videos], manifest, config)  # nothing changed: nothing probed, same table
    assert (again.ok, again.probed, again.reused) == (2, 0, 2)
    assert read_manifest(manifest).to_pylist() == list(before.values())

    renamed = videos / "sub" / "a renamed.mp4"
    renamed.parent.mkdir()
    a.rename(renamed)
    make_video(videos / "c.mp4", seconds=0.5, fps=25, size=(96, 48))
    shutil.copy(videos / "b.mp4", videos / "b_copy.mp4")
    third = ingest([videos], manifest, config)
    rows = {os.path.relpath(r["path"], videos): r for r in read_manifest(manifest).to_pylist()}
    assert sorted(rows) == ["b.mp4", "b_copy.mp4", "c.mp4", "sub/a renamed.mp4"]
    assert rows["sub/a renamed.mp4"]["video_id"] == before[str(a)]["video_id"]  # the id follows the bytes
    assert rows["sub/a renamed.mp4"]["status"] == "ok"
    assert rows["b_copy.mp4"]["status"] == "duplicate"
    assert rows["b_copy.mp4"]["duplicate_of"] == rows["b.mp4"]["path"]
    assert rows["b_copy.mp4"]["video_id"] == rows["b.mp4"]["video_id"]
    assert (third.ok, third.duplicates, third.removed, third.probed, third.reused) == (3, 1, 1, 3, 1)

    (videos / "b.mp4").unlink()  # the kept copy is gone: the duplicate takes over
    fourth = ingest([videos], manifest, config)
    rows = {os.path.relpath(r["path"], videos): r for r in read_manifest(manifest).to_pylist()}
    assert rows["b_copy.mp4"]["status"] == "ok" and rows["b_copy.mp4"]["duplicate_of"] is None
    assert (fourth.ok, fourth.duplicates, fourth.removed) == (3, 0, 1)


def test_reingest_of_another_folder_keeps_the_first(tmp_path):
    make_video(tmp_path / "one" / "a.mp4", seconds=0.3, size=(64, 48))
    make_video(tmp_path / "two" / "b.mp4", seconds=0.3, size=(80, 48))
    manifest = tmp_path / "m.parquet"
    ingest([tmp_path / "one"], manifest, IngestConfig(workers=0))
    summary = ingest([tmp_path / "two"], manifest, IngestConfig(workers=0))
    assert summary.ok == 2 and summary.rows == 2


def test_hung_probe_is_killed_and_reported_and_the_next_file_is_probed(tmp_path, monkeypatch):
    """The worker probing hang.mp4 really blocks (the DUB_TEST_PROBE_HANGS_ON seam of
    workflows/ingest.py: it never answers, as a probe stuck on a stalled mount): at its deadline
    that process is SIGKILLed and gone, the file gets a timeout row, and a fresh worker probes
    the next file."""
    import signal
    import time

    import dub.workflows.ingest as ingest_module

    ok, hang, after = (make_video(tmp_path / name, seconds=0.3).path for name in ("a.mp4", "hang.mp4", "z.mp4"))
    monkeypatch.setenv(ingest_module.HANG_ENV, "hang.mp4")
    workers = []
    start_worker = ingest_module._Worker.__init__
    monkeypatch.setattr(
        ingest_module._Worker, "__init__", lambda self: (start_worker(self), workers.append(self.proc))[0]
    )
    # the first file warms the worker up (interpreter + PyAV start), so only hang.mp4 meets the deadline
    started = time.monotonic()
    rows = probe_all([str(ok), str(hang), str(after)], IngestConfig(workers=1, timeout_s=3.0))
    assert [r["status"] for r in rows] == ["ok", "error", "ok"]
    assert rows[1]["error_kind"] == "timeout" and "longer than 3 s" in rows[1]["error"]
    assert time.monotonic() - started >= 3.0
    hung = workers[0]  # probed a.mp4, then blocked on hang.mp4
    assert hung.returncode == -signal.SIGKILL, "the hung worker was not killed"
    with pytest.raises(ProcessLookupError):
        os.kill(hung.pid, 0)  # killed and reaped: no such process any more
    assert len(workers) == 2 and workers[1].returncode == 0  # its replacement probed z.mp4 and was stopped


def test_scan_filters_hidden_and_extensions_and_survives_loops(tmp_path):
    make_video(tmp_path / "a.MP4", seconds=0.2)
    make_video(tmp_path / ".hidden" / "b.mp4", seconds=0.2)
    make_video(tmp_path / "c.mkv", seconds=0.2)
    (tmp_path / "deep" / "er").mkdir(parents=True)
    (tmp_path / "deep" / "er" / "back").symlink_to(tmp_path / "deep", target_is_directory=True)
    (tmp_path / "deep" / "er" / "outside").symlink_to(tmp_path, target_is_directory=True)
    found = scan([tmp_path], extensions=("mp4",))
    assert [p.name for p in found.files] == ["a.MP4"]
    assert len(found.warnings) == 2 and all("already scanned" in w for w in found.warnings)
    assert [p.name for p in scan([tmp_path], extensions=("mkv", "mp4")).files] == ["a.MP4", "c.mkv"]
    explicit = scan([tmp_path / ".hidden" / "b.mp4"])  # a file named on the command line is always taken
    assert [p.name for p in explicit.files] == ["b.mp4"]
    with pytest.raises(FileNotFoundError):
        scan([tmp_path / "missing"])


def test_ingest_runs_as_a_real_subprocess(corpus, tmp_path):
    root, entries = corpus
    out = tmp_path / "sub.parquet"
    env = dict(os.environ, PYTHONPATH=PROJECT_ROOT, COLUMNS="160")
    proc = subprocess.run(
        [sys.executable, "-m", "dub.cli", "ingest", str(root), "-o", str(out), "--ext", "mp4,avi"],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env=env,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    rows = read_manifest(out).to_pylist()
    expected = [name for name in entries if name.endswith((".mp4", ".avi"))]
    assert len(rows) == len(expected)
    assert "ok" in proc.stdout and "total rows" in proc.stdout


# -- manifests ------------------------------------------------------------------------------


def test_content_ids_are_stable_and_content_derived(tmp_path):
    (tmp_path / "x.bin").write_bytes(b"some bytes" * 100_000)
    (tmp_path / "y.bin").write_bytes(b"some bytes" * 100_000)
    (tmp_path / "z.bin").write_bytes(b"other bytes")
    assert content_id(tmp_path / "x.bin") == content_id(tmp_path / "y.bin") == bytes_id(b"some bytes" * 100_000)
    assert content_id(tmp_path / "z.bin") != content_id(tmp_path / "x.bin")
    assert is_content_id(content_id(tmp_path / "z.bin")) and "." not in content_id(tmp_path / "z.bin")


def test_write_parquet_atomic_replaces_whole_files(tmp_path):
    target = tmp_path / "deeper" / "t.parquet"
    write_parquet_atomic(pa.table({"a": [1, 2]}), target)
    write_parquet_atomic(pa.table({"a": [3]}), target)
    assert pq.read_table(target).column("a").to_pylist() == [3]
    assert [p.name for p in target.parent.iterdir()] == ["t.parquet"]  # no temp files left


def test_read_manifest_explains_what_is_wrong(tmp_path, corpus_manifest):
    with pytest.raises(FileNotFoundError, match="dub ingest"):
        read_manifest(tmp_path / "none.parquet")
    (tmp_path / "junk.parquet").write_text("not parquet")
    with pytest.raises(ManifestError, match="not a readable Parquet"):
        read_manifest(tmp_path / "junk.parquet")
    pq.write_table(
        pa.table({"video_id": ["a"], "path": ["/x"], "status": ["weird"], "width": ["wide"]}),
        tmp_path / "partial.parquet",
    )
    with pytest.raises(ManifestError) as err:
        read_manifest(tmp_path / "partial.parquet")
    message = str(err.value)
    assert "missing column(s)" in message and "duration_s" in message
    assert "'width' has type string" in message and "unknown status" in message
    with pytest.raises(ManifestError, match="is a manifest, not a generation report"):
        read_report(corpus_manifest[0])
    table = read_manifest(corpus_manifest[0])
    assert table.schema.names[: len(MANIFEST_SCHEMA.names)] == MANIFEST_SCHEMA.names


def test_report_schema_has_the_run_layout_columns():
    for name in (
        "video_id",
        "path",
        "status",
        "error",
        "output_mp4",
        "output_shard",
        "audio_duration_s",
        "num_windows",
        "config_hash",
        "t_decode_s",
        "t_features_s",
        "t_generate_s",
        "t_decode_audio_s",
        "t_write_s",
        "finished_at",
    ):
        assert name in REPORT_SCHEMA.names


@pytest.mark.parametrize("workers", [0, 2])
def test_interrupted_ingest_keeps_what_it_probed(tmp_path, workers):
    """Ctrl-C after 3 of 6 files: no manifest yet, the 3 probed rows are journaled beside it; the
    rerun probes only the other 3, writes the manifest an uninterrupted run writes and removes
    the journal."""
    videos = tmp_path / "videos"
    for k in range(6):
        make_video(videos / f"v{k}.mp4", seconds=0.3, fps=25, size=(48 + 16 * k, 48))
    (videos / "note.mp4").write_text("not a video\n")  # an error row: probed again, never reused
    config = IngestConfig(workers=workers)
    manifest = tmp_path / "m.parquet"

    def stop_after_3(done: int, total: int) -> None:
        if done >= 3:
            raise KeyboardInterrupt  # what Ctrl-C raises in the driver

    with pytest.raises(KeyboardInterrupt):
        ingest([videos], manifest, config, on_progress=stop_after_3)
    assert not manifest.exists()
    journal = tmp_path / ".m.parquet.probed"
    journaled = [r for part in sorted(journal.glob("part-*.parquet")) for r in pq.read_table(part).to_pylist()]
    assert len(journaled) == 3

    resumed = ingest([videos], manifest, config)
    ok_journaled = sum(r["status"] == "ok" for r in journaled)
    assert (resumed.probed, resumed.reused, resumed.resumed) == (7 - ok_journaled, ok_journaled, ok_journaled)
    assert (resumed.ok, resumed.errors) == (6, 1) and not journal.exists()
    whole = ingest([videos], tmp_path / "whole.parquet", config)
    assert whole.probed == 7

    def untimed(path):
        return [{k: v for k, v in r.items() if k != "probe_s"} for r in read_manifest(path).to_pylist()]

    assert untimed(manifest) == untimed(tmp_path / "whole.parquet")


def test_an_output_that_cannot_be_written_is_a_clear_error_before_probing(tmp_path):
    videos = tmp_path / "videos"
    make_video(videos / "a.mp4", seconds=0.3, fps=25, size=(48, 48))
    blocker = tmp_path / "a_file"
    blocker.write_text("not a folder\n")
    result = CliRunner().invoke(app, ["ingest", str(videos), "-o", str(blocker / "m.parquet"), "--workers", "0"])
    said = " ".join(result.output.split())
    assert result.exit_code == 2 and f"cannot write beside {blocker / 'm.parquet'}" in said, said
