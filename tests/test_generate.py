"""`dub generate` end to end on real files and a real local Ray: outputs, resume, faults, determinism.

The model is the real tiny demo-stack network with random weights (a checkpoint file), so
these tests exercise every stage without depending on the bundled trained weights.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import signal
import threading
import time
from pathlib import Path

import av
import numpy as np
import pyarrow.parquet as pq
import pytest

from dub.model.runtime.generator import SamplerConfig
from dub.workflows.generate.config import GenerateConfig
from dub.workflows.generate.run import GenerateError, run_generate
from dub.workflows.ingest import IngestConfig, ingest
from dub.workflows.media.remux import strip_audio
from tests.generate_helpers import random_demo_checkpoint
from tests.video_factory import bigbuckbunny_path, make_video


def _ingest(folder: Path, manifest: Path) -> Path:
    ingest([folder], manifest, IngestConfig(workers=1))
    return manifest


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    return random_demo_checkpoint(tmp_path_factory.mktemp("ckpt") / "tiny.safetensors")


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("videos")
    strip_audio(bigbuckbunny_path(), root / "big buck bunny.mp4")
    make_video(root / "long.mp4", seconds=17.0, fps=10, size=(96, 64), pattern="flash_events", events=[1, 9, 15])
    make_video(root / "vfr.mp4", seconds=3.0, fps=25, size=(96, 64), vfr=True)
    make_video(root / "short.mp4", seconds=2.0, fps=25, size=(64, 48))
    (root / "broken.mp4").write_bytes(b"\x00\x00\x00\x18ftypmp42" + b"\x00" * 40)
    manifest = _ingest(root, root.parent / "manifest.parquet")
    return {"root": root, "manifest": manifest}


def _config(manifest, out, checkpoint, **kw) -> GenerateConfig:
    kw.setdefault("batch_size", 2)
    return GenerateConfig(out_dir=str(out), manifest=str(manifest), checkpoint=str(checkpoint), **kw)


def _video_packets(path: Path) -> list[tuple]:
    with av.open(str(path)) as c:
        stream = c.streams.video[0]
        return [(bytes(p), p.pts, p.dts) for p in c.demux(stream) if p.size]


def _stream_seconds(path: Path, kind: str) -> float:
    with av.open(str(path)) as c:
        stream = getattr(c.streams, kind)[0]
        end = 0.0
        for frame in c.decode(stream):
            dur = frame.samples / frame.sample_rate if kind == "audio" else float(frame.duration * frame.time_base)
            end = max(end, float(frame.pts * frame.time_base) + dur)
        return end


def _digests(folder: Path) -> dict[str, tuple[str, int]]:
    return {
        str(p.relative_to(folder)): (hashlib.sha256(p.read_bytes()).hexdigest(), p.stat().st_mtime_ns)
        for p in sorted(folder.rglob("*"))
        if p.is_file() and p.parent.name in ("mp4", "shards")
    }


@pytest.fixture(scope="module")
def first_run(ray_session, corpus, checkpoint, tmp_path_factory):
    out = tmp_path_factory.mktemp("run") / "out"
    summary = run_generate(_config(corpus["manifest"], out, checkpoint, format="both"))
    return {"out": out, "summary": summary}


def test_end_to_end_outputs(first_run, corpus):
    out, summary = first_run["out"], first_run["summary"]
    manifest = pq.read_table(corpus["manifest"]).to_pylist()
    report = pq.read_table(out / "report.parquet").to_pylist()
    assert len(report) == len(manifest)
    by_path = {Path(r["path"]).name: r for r in report}
    assert by_path["broken.mp4"]["status"] == "skipped" and "ingest" in by_path["broken.mp4"]["error"]
    good = [r for r in report if r["status"] == "done"]
    assert {Path(r["path"]).name for r in good} == {"big buck bunny.mp4", "long.mp4", "vfr.mp4", "short.mp4"}
    assert summary.generated == 4 and summary.failed == 0
    assert by_path["long.mp4"]["num_windows"] == 3
    for row in good:
        src, dst = Path(row["path"]), Path(row["output_mp4"])
        assert dst.parent == out / "mp4" and dst.exists()
        assert _video_packets(dst) == _video_packets(src), f"video stream of {dst.name} was not copied bit for bit"
        with av.open(str(src)) as c:
            frame_s = 1.0 / float(c.streams.video[0].average_rate)
        video_s = _stream_seconds(dst, "video")
        assert abs(_stream_seconds(dst, "audio") - video_s) <= frame_s + 1e-3
        assert row["t_generate_s"] is not None and row["t_decode_s"] is not None
    assert (out / "run.json").exists()
    # the run's stage breakdown is the sum of the rows' stage times (all windows of this run)
    assert summary.replicas == 1 and set(summary.stage_seconds) == {
        "decode_cpu",
        "features",
        "generate",
        "decode_audio",
    }
    for stage, column in (
        ("decode_cpu", "t_decode_s"),
        ("features", "t_features_s"),
        ("generate", "t_generate_s"),
        ("decode_audio", "t_decode_audio_s"),
    ):
        assert summary.stage_seconds[stage] == pytest.approx(sum(r[column] for r in good), abs=5e-3)
    assert summary.stage_seconds["features"] > 0 and summary.stage_seconds["decode_cpu"] > 0
    assert summary.model_busy_fraction is not None and 0 < summary.model_busy_fraction <= 1.0
    assert json.loads((out / "summary.json").read_text())["stage_seconds"] == summary.stage_seconds


def test_busy_fraction_comes_from_the_replicas_clocks_not_from_when_results_arrive():
    """Two replicas' calls, as their output columns give them; the driver may receive them all at
    once, and still: replica a computed 1 + 1 s in its 4 s from first call to last (it waited
    2 s for input between them), b 1.5 s in 1.5 s."""
    from dub.workflows.generate.run import STAGE_COLUMNS, Summary, _BusyClock

    def call(replica: str, start: float, end: float, model_s: float, rows: int = 2) -> dict:
        batch = {column: np.full(rows, 0.0) for column in STAGE_COLUMNS.values()}
        batch.update(
            t_generate_s=np.full(rows, model_s / rows),
            error=np.array([""] * rows, dtype=object),
            replica=np.array([replica] * rows, dtype=object),
            t_call_start=np.full(rows, start),
            t_call_end=np.full(rows, end),
        )
        return batch

    clock = _BusyClock(replicas=2)
    for batch in (call("a", 100.0, 101.0, 1.0), call("b", 100.5, 102.0, 1.5), call("a", 103.0, 104.0, 1.0)):
        clock.add(batch)
    summary = Summary(out_dir="out", config_hash="h")
    clock.fill(summary)
    assert summary.stage_seconds["generate"] == pytest.approx(3.5)
    assert summary.model_busy_fraction == pytest.approx(3.5 / (4.0 + 1.5), abs=1e-3)


def test_shards_read_back_with_webdataset_and_ray(first_run, ray_session):
    import ray.data
    import webdataset as wds

    out = first_run["out"]
    shards = sorted(str(p) for p in (out / "shards").glob("*.tar"))
    assert shards
    samples = list(wds.WebDataset(shards, shardshuffle=False))
    report = {r["video_id"]: r for r in pq.read_table(out / "report.parquet").to_pylist() if r["status"] == "done"}
    assert sorted(s["__key__"] for s in samples) == sorted(report)
    import io
    import json

    for s in samples:
        meta = json.loads(s["json"])
        assert meta["video_id"] == s["__key__"] and meta["sampler"]["steps"] == 1
        with av.open(io.BytesIO(s["flac"])) as c:
            frames = [f.to_ndarray() for f in c.decode(audio=0)]
            assert c.streams.audio[0].codec_context.name == "flac"
        samples_n = sum(f.shape[-1] for f in frames)
        assert abs(samples_n / meta["sample_rate"] - report[s["__key__"]]["audio_duration_s"]) < 1e-3
    rows = ray.data.read_webdataset(shards).take_all()
    assert sorted(r["__key__"] for r in rows) == sorted(report)

    # dub report reads a wds-only run's audio out of the shards: the same samples as the FLAC
    # bytes, resampled like any file
    from dataclasses import replace

    from dub.workflows.metrics.run_inputs import load_run, read_generated_audio

    _, generated = load_run(out)
    for row in (r for r in generated if r.status == "done"):
        from_shard, where = read_generated_audio(replace(row, output_mp4=None), 16000)
        assert where.startswith(str(row.output_shard)) and where.endswith(f"{row.video_id}.flac")
        assert abs(len(from_shard) / 16000 - report[row.video_id]["audio_duration_s"]) < 2e-3
        assert float(np.abs(from_shard).max()) > 0.0


def test_resume_does_nothing_then_redoes_only_the_deleted(first_run, corpus, checkpoint):
    out = first_run["out"]
    before = _digests(out)
    again = run_generate(_config(corpus["manifest"], out, checkpoint, format="both"))
    assert again.generated == 0 and again.already_done == 4
    assert _digests(out) == before, "a resumed run must not touch finished outputs"

    victim = sorted((out / "mp4").glob("*long*.mp4"))[0]
    victim.unlink()
    third = run_generate(_config(corpus["manifest"], out, checkpoint, format="both"))
    assert third.generated == 1
    after = _digests(out)
    assert victim.exists()
    assert {k: v for k, v in after.items() if k != f"mp4/{victim.name}"} == {
        k: v for k, v in before.items() if k != f"mp4/{victim.name}"
    }
    # the video is still exactly once in the shards
    import tarfile

    keys = [
        m.name.split(".")[0]
        for s in (out / "shards").glob("*.tar")
        for m in tarfile.open(s).getmembers()
        if m.name.endswith(".flac")
    ]
    assert len(keys) == len(set(keys)) == 4


def test_changed_config_needs_new_dir_or_overwrite(first_run, corpus, checkpoint):
    with pytest.raises(GenerateError, match="another configuration"):
        run_generate(_config(corpus["manifest"], first_run["out"], checkpoint, format="both", seed=99))


def test_failed_decode_is_a_row_and_the_run_goes_on(ray_session, checkpoint, tmp_path):
    folder = tmp_path / "v"
    folder.mkdir()
    make_video(folder / "good.mp4", seconds=1.5, fps=25, size=(64, 48))
    make_video(folder / "gone.mp4", seconds=1.5, fps=25, size=(64, 48), pattern="frame_index")
    manifest = _ingest(folder, tmp_path / "m.parquet")
    (folder / "gone.mp4").unlink()  # probed fine, then vanished before generation
    summary = run_generate(_config(manifest, tmp_path / "out", checkpoint))
    assert summary.generated == 1 and summary.failed == 1
    rows = {Path(r["path"]).name: r for r in pq.read_table(tmp_path / "out" / "report.parquet").to_pylist()}
    assert rows["gone.mp4"]["status"] == "failed" and rows["gone.mp4"]["error"].startswith("decode")
    assert rows["good.mp4"]["status"] == "done"
    with pytest.raises(GenerateError, match="max-failures"):
        run_generate(_config(manifest, tmp_path / "out", checkpoint, max_failures=0))
    rows = {Path(r["path"]).name: r for r in pq.read_table(tmp_path / "out" / "report.parquet").to_pylist()}
    assert rows["gone.mp4"]["status"] == "failed" and rows["good.mp4"]["status"] == "done"  # report kept


def _flac_by_key(out: Path) -> dict[str, bytes]:
    import webdataset as wds

    return {
        s["__key__"]: s["flac"]
        for s in wds.WebDataset(sorted(str(p) for p in (out / "shards").glob("*.tar")), shardshuffle=False)
    }


def test_writer_actors_write_what_the_driver_writes_slice_after_slice(
    first_run, corpus, checkpoint, tmp_path, monkeypatch
):
    """--writers 2: each clip is stitched, encoded and remuxed in one of two Ray actors instead of
    the driver; and with two clips per slice (CLIPS_PER_SLICE) the clips go through Ray Data in
    two runs of the pipeline, the writers serving both. The outputs are those of the driver's own
    writing in one slice (first_run): the same clips done,
    the video copied bit for bit, the same audio to one step of FLAC's 16 bits (the model's
    batches may be cut differently between runs, and float32 results that differ in their last
    bits can round to neighbouring 16-bit steps), every clip in a shard once."""
    import av
    import numpy as np

    import dub.workflows.generate.run as run_module

    monkeypatch.setattr(run_module, "CLIPS_PER_SLICE", 2)
    out = tmp_path / "out"
    summary = run_generate(_config(corpus["manifest"], out, checkpoint, format="both", writers=2))
    assert summary.writers == 2 and summary.generated == 4 and summary.failed == 0
    assert first_run["summary"].writers == 0  # the embedded local Ray's default: the driver writes
    report = {r["video_id"]: r for r in pq.read_table(out / "report.parquet").to_pylist()}
    before = {r["video_id"]: r for r in pq.read_table(first_run["out"] / "report.parquet").to_pylist()}
    assert {k: r["status"] for k, r in report.items()} == {k: r["status"] for k, r in before.items()}
    for vid, row in ((k, r) for k, r in report.items() if r["status"] == "done"):
        assert Path(row["output_mp4"]).parent == out / "mp4"
        assert _video_packets(Path(row["output_mp4"])) == _video_packets(Path(before[vid]["output_mp4"]))
        assert row["output_shard"].startswith(str(out / "shards"))

    def samples(flac: bytes) -> np.ndarray:
        with av.open(io.BytesIO(flac)) as c:
            return np.concatenate([f.to_ndarray().reshape(-1) for f in c.decode(audio=0)])

    ours, theirs = _flac_by_key(out), _flac_by_key(first_run["out"])
    assert sorted(ours) == sorted(theirs) == sorted(k for k, r in report.items() if r["status"] == "done")
    for key in ours:
        a, b = samples(ours[key]), samples(theirs[key])  # int16 samples
        assert a.dtype == np.int16 and a.shape == b.shape
        assert np.abs(a.astype(np.int32) - b).max() <= 1


def test_same_seed_same_audio_other_seed_differs(ray_session, checkpoint, tmp_path):
    folder = tmp_path / "v"
    folder.mkdir()
    make_video(folder / "a.mp4", seconds=2.0, fps=25, size=(64, 48), pattern="flash_events", events=[0.5])
    make_video(folder / "b.mp4", seconds=2.5, fps=25, size=(64, 48))
    manifest = _ingest(folder, tmp_path / "m.parquet")
    runs = {}
    for name, seed in (("one", 7), ("two", 7), ("three", 8)):
        run_generate(
            _config(manifest, tmp_path / name, checkpoint, seed=seed, format="wds", sampler=SamplerConfig(cfg=2.0))
        )
        runs[name] = _flac_by_key(tmp_path / name)
    assert runs["one"] == runs["two"]
    assert all(runs["one"][k] != runs["three"][k] for k in runs["one"])


def test_windows_cut_into_fewer_blocks_reach_the_model_unchanged_and_batch_1_repeats_bytes(
    ray_session, checkpoint, tmp_path, monkeypatch
):
    """Large runs put several windows in one decode task's block (`window_blocks`); forced here
    at small scale (one block per CPU: 2 blocks for 5 windows of 3 videos), every window reaches
    the model with the same frames (hence features), seed and place as with one block per window,
    and with --batch-size 1 (each window computed alone: no other window's rounding) the audio is
    the same bytes. The README's claim."""
    import tarfile

    from dub.workflows import ray_cluster

    folder = tmp_path / "v"
    folder.mkdir()
    make_video(folder / "a.mp4", seconds=17.0, fps=10, size=(64, 48), pattern="flash_events", events=[1, 9, 15])
    make_video(folder / "b.mp4", seconds=2.5, fps=25, size=(64, 48))
    make_video(folder / "c.mp4", seconds=3.0, fps=25, size=(64, 48), pattern="flash_events", events=[1.5])
    manifest = _ingest(folder, tmp_path / "m.parquet")
    runs = {}
    for name, per_cpu in (("per_window", 8), ("grouped", 1)):
        monkeypatch.setattr(ray_cluster, "BLOCKS_PER_CPU", per_cpu)
        summary = run_generate(
            _config(manifest, tmp_path / name, checkpoint, format="wds", save_features=True, batch_size=1)
        )
        assert summary.generated == 3 and summary.failed == 0
        members = {}
        for shard in (tmp_path / name / "shards").glob("*.tar"):
            with tarfile.open(shard) as tar:
                for member in tar.getmembers():
                    data = tar.extractfile(member).read()
                    if member.name.endswith(".flac"):
                        members[member.name] = data
                    elif member.name.endswith(".npy"):
                        members[member.name] = np.load(io.BytesIO(data))
                    elif member.name.endswith(".json"):
                        meta = json.loads(data)
                        meta.pop("timings", None)
                        members[member.name] = meta
        runs[name] = members
    assert ray_cluster.window_blocks(5, 2) == 2  # the grouped run really grouped (5 windows, 2 CPUs)
    assert sorted(runs["grouped"]) == sorted(runs["per_window"]) and len(runs["grouped"]) == 3 * 5
    for key, value in runs["per_window"].items():
        if isinstance(value, np.ndarray):
            np.testing.assert_array_equal(runs["grouped"][key], value, err_msg=key)
        else:
            assert runs["grouped"][key] == value, key


def _replica_pids() -> list[int]:
    pids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                cmd = (entry / "cmdline").read_bytes().replace(b"\x00", b" ")
            except OSError:
                continue
            if b"GenerateReplica" in cmd:
                pids.append(int(entry.name))
    return pids


def test_killed_actor_is_replaced_and_every_clip_done_once(ray_session, checkpoint, tmp_path):
    folder = tmp_path / "v"
    folder.mkdir()
    for i in range(6):
        make_video(folder / f"clip{i}.mp4", seconds=1.0 + 0.1 * i, fps=25, size=(64, 48))
    manifest = _ingest(folder, tmp_path / "m.parquet")
    out = tmp_path / "out"
    result: dict = {}

    def work():
        result["summary"] = run_generate(_config(manifest, out, checkpoint, batch_size=1, format="both"))

    thread = threading.Thread(target=work)
    thread.start()
    killed = []
    deadline = time.time() + 120
    while thread.is_alive() and not killed and time.time() < deadline:
        if list((out / "mp4").glob("*.mp4")) if (out / "mp4").exists() else []:
            for pid in _replica_pids():
                os.kill(pid, signal.SIGKILL)
                killed.append(pid)
        time.sleep(0.05)
    thread.join(timeout=300)
    assert killed, "the replica process was never found to kill"
    summary = result["summary"]
    assert summary.done == 6 and summary.failed == 0
    assert len(list((out / "mp4").glob("*.mp4"))) == 6
    keys = list(_flac_by_key(out))
    import tarfile

    all_keys = [
        m.name for s in (out / "shards").glob("*.tar") for m in tarfile.open(s).getmembers() if m.name.endswith(".flac")
    ]
    assert len(all_keys) == len(set(all_keys)) == len(keys) == 6


def test_cli_with_a_relative_out_dir_prints_json_and_absolute_paths(ray_session, checkpoint, tmp_path, monkeypatch):
    import json

    from typer.testing import CliRunner

    from dub.cli import app

    make_video(tmp_path / "v" / "one clip.mp4", seconds=1.5, fps=25, size=(64, 48))
    _ingest(tmp_path / "v", tmp_path / "m.parquet")
    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(
        app, ["generate", "-m", "m.parquet", "-o", "rel", "--checkpoint", str(checkpoint), "--json"]
    )
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout[result.stdout.index("{") :])
    assert summary["generated"] == 1 and summary["failed"] == 0
    row = pq.read_table(tmp_path / "rel" / "report.parquet").to_pylist()[0]
    assert Path(row["output_mp4"]).is_absolute() and Path(row["output_mp4"]).exists()


def test_text_to_audio_writes_one_audio_file_per_prompt(ray_session, checkpoint, tmp_path):
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a snare drum hit\n\n   \na cow bell ringing twice\n", encoding="utf-8")
    out = tmp_path / "t2a"
    summary = run_generate(
        GenerateConfig(
            out_dir=str(out),
            prompts_file=str(prompts),
            checkpoint=str(checkpoint),
            t2a_duration_s=2.0,
            audio_codec="flac",
        )
    )
    assert summary.generated == 2 and summary.failed == 0  # blank lines are not prompts
    rows = pq.read_table(out / "report.parquet").to_pylist()
    assert len(rows) == 2 and all(r["status"] == "done" for r in rows)
    for row in rows:
        path = Path(row["output_audio"])
        assert path.suffix == ".flac" and path.exists()
        assert abs(_stream_seconds(path, "audio") - 2.0) < 0.05
    again = run_generate(
        GenerateConfig(
            out_dir=str(out),
            prompts_file=str(prompts),
            checkpoint=str(checkpoint),
            t2a_duration_s=2.0,
            audio_codec="flac",
        )
    )
    assert again.generated == 0 and again.already_done == 2
    assert [r["prompt"] for r in pq.read_table(out / "report.parquet").to_pylist()] == [
        "a snare drum hit",
        "a cow bell ringing twice",
    ]

    # dub report on the text-to-audio run: the audio files are read, CLAP scores each prompt
    from dub.workflows.metrics.clap import load_clap
    from dub.workflows.report.config import Injected, ReportConfig
    from dub.workflows.report.run import run_report
    from tests.test_clap import MERGES, VOCAB, fixture_state, tiny_config

    clap_config = tiny_config()
    clap = load_clap(fixture_state(clap_config), "cpu", clap_config, VOCAB, MERGES)
    report = run_report(
        ReportConfig(
            run_dir=str(out),
            out_dir=str(tmp_path / "report"),
            backends=("logmel",),
            weights_dir=str(tmp_path / "no_weights"),
            write_html=False,
        ),
        injected=Injected(clap=clap),
    )
    assert [r["status"] for r in report.rows] == ["ok", "ok"]
    assert all(-1.0 <= r["clap_score"] <= 1.0 and r["error"] is None for r in report.rows)
    assert report.summary["metrics"]["clap_score_n"] == 2


# -- --resize fast|exact: which resizer makes the frames ------------------------------------


def _window_batch(path: Path, start_s: float, window_s: float) -> dict:
    rows = {
        "video_id": ["v"],
        "window_index": [0],
        "num_windows": [1],
        "start_s": [start_s],
        "valid_s": [window_s],
        "prompt": [""],
        "negative_prompt": [""],
        "seed": [0],
        "path": [str(path)],
    }
    return {k: np.array(v, dtype=object if isinstance(v[0], str) else None) for k, v in rows.items()}


def test_decode_windows_backend_is_decode_windows_resizer(tmp_path):
    """`decode_windows(..., backend="torch")` gives exactly `decode_window(..., backend="torch")`'s
    frames, and on a source both targets resize (320x180) they differ from swscale's."""
    from dub.workflows.generate.stages import decode_windows
    from dub.workflows.media.decode import FrameTarget, decode_window

    path = tmp_path / "wide.mp4"
    make_video(path, seconds=2.0, fps=25, size=(320, 180))
    start, window = 0.5, 1.0
    targets = [FrameTarget(8.0, 384, "resize"), FrameTarget(25.0, 224, "crop")]
    kw = dict(clip_fps=8.0, clip_size=384, sync_fps=25.0, sync_size=224, window_s=window)
    out = {b: decode_windows(_window_batch(path, start, window), backend=b, **kw) for b in ("swscale", "torch")}
    default = decode_windows(_window_batch(path, start, window), **kw)
    for backend, batch in out.items():
        assert list(batch["error"]) == [""]
        frames, covered = decode_window(path, start, window, targets, backend=backend)
        assert covered == pytest.approx(window) and [len(f) for f in frames] == [8, 25]
        np.testing.assert_array_equal(batch["clip_frames"][0], frames[0])
        np.testing.assert_array_equal(batch["sync_frames"][0], frames[1])
    for column in ("clip_frames", "sync_frames"):
        np.testing.assert_array_equal(default[column], out["swscale"][column])  # the default is unchanged
        diff = np.abs(out["torch"][column].astype(int) - out["swscale"][column].astype(int))
        assert diff.mean() > 0.1, column


def test_resize_enters_the_config_hash_only_when_exact():
    fast = GenerateConfig(out_dir="o", manifest="m.parquet")
    assert fast.resize == "fast" and fast.decode_backend == "swscale"
    # runs made before --resize existed hashed no "resize" key: "fast" keeps their hash, so they resume
    assert "resize" not in fast.identity("w")
    assert fast.config_hash("w") == "1d33bf095dbb5629"  # this config's hash before --resize (fcd4a98)
    exact = GenerateConfig(out_dir="o", manifest="m.parquet", resize="exact")
    assert exact.decode_backend == "torch" and exact.identity("w")["resize"] == "exact"
    assert exact.config_hash("w") != fast.config_hash("w")
    assert {k: v for k, v in exact.identity("w").items() if k != "resize"} == fast.identity("w")
    assert exact.as_dict()["resize"] == "exact" and fast.as_dict()["resize"] == "fast"  # what run.json records
    # text-to-audio decodes no frames: asking for exact resizing changes nothing, hash included
    t2a = dict(out_dir="o", prompts_file="p.txt")
    assert GenerateConfig(**t2a, resize="exact").config_hash("w") == GenerateConfig(**t2a).config_hash("w")
    with pytest.raises(ValueError, match=r"--resize must be one of \('fast', 'exact'\).*'bicubic'"):
        GenerateConfig(out_dir="o", manifest="m.parquet", resize="bicubic")


@pytest.mark.parametrize("command", ["generate", "extract"])
def test_cli_resize_bogus_is_a_clear_usage_error(command, tmp_path):
    from typer.testing import CliRunner

    from dub.cli import app

    result = CliRunner().invoke(
        app, [command, "-m", str(tmp_path / "m.parquet"), "-o", str(tmp_path / "out"), "--resize", "bogus"]
    )
    assert result.exit_code == 2
    text = " ".join(result.output.replace("│", " ").split())
    assert "'bogus' is not one of 'fast', 'exact'" in text  # refused while parsing, the choices listed
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(
    "flags, message",
    [
        (["--cfg-rescale", "2"], "phi must be in [0, 1], got 2.0"),
        (["--rescale-mode", "bogus"], "'bogus' is not one of 'std', 'proj', 'none'"),
        (["--steps", "0"], "steps must be >= 1, got 0"),
    ],
)
def test_cli_bad_sampler_flags_are_usage_errors_before_any_video_runs(flags, message, tmp_path):
    """Not one failed report row per video: the run does not start."""
    from typer.testing import CliRunner

    from dub.cli import app

    result = CliRunner().invoke(
        app, ["generate", "-m", str(tmp_path / "m.parquet"), "-o", str(tmp_path / "out"), *flags]
    )
    assert result.exit_code == 2
    assert message in " ".join(result.output.replace("│", " ").split())
    assert not (tmp_path / "out").exists()


def test_sampling_flags_left_out_take_the_model_bundles_defaults():
    """`dub generate --model mmaudio-small-16k` with no sampling flags samples as MMAudio's
    figures were made (25 Euler steps, cfg 4.5), not with one MeanFlow step, which its
    flow-matching network was never trained for; the demo model keeps its one step; a flag given
    wins over the bundle."""
    from dub.commands.choices import Sampler
    from dub.commands.generate import sampler_config
    from dub.model.runtime.bundles import BUNDLES

    mmaudio = sampler_config("mmaudio-small-16k", None, None, None, None, None, None)
    assert (mmaudio.sampler, mmaudio.steps, mmaudio.cfg) == ("euler", 25, 4.5)
    assert mmaudio == sampler_config("mmaudio-small-16k", None, Sampler.euler, 25, 4.5, None, None)
    demo = sampler_config("demo", None, None, None, None, None, None)
    expected = BUNDLES["demo"].sampler
    assert (demo.sampler, demo.steps, demo.cfg, demo.phi) == ("meanflow", 1, expected.cfg, expected.phi)
    chosen = sampler_config("mmaudio-small-16k", None, Sampler.meanflow, 2, 1.0, None, None)
    assert (chosen.sampler, chosen.steps, chosen.cfg) == ("meanflow", 2, 1.0)


def test_replica_counts_the_cluster_cannot_hold_are_refused_not_waited_for():
    """Ray waits forever for an actor it has no GPU or CPU for (seen: --replicas 2 and 3 hung on
    the 2-CPU dev box until killed), so the count is checked against the cluster first."""
    from dub.workflows.ray_cluster import ClusterResources, model_replicas

    assert model_replicas(None, ClusterResources(cpus=2, gpus=0)) == 1
    assert model_replicas(None, ClusterResources(cpus=16, gpus=4)) == 4
    assert model_replicas(3, ClusterResources(cpus=8, gpus=0)) == 3
    with pytest.raises(ValueError, match=r"--replicas 2 needs 2 GPUs .* has 1; use --replicas 1"):
        model_replicas(2, ClusterResources(cpus=16, gpus=1))
    with pytest.raises(ValueError, match=r"2 model replica\(s\) take 2 CPUs .* has 2; use --replicas 1"):
        model_replicas(2, ClusterResources(cpus=2, gpus=0))
    with pytest.raises(ValueError, match="give Ray at least 2 CPUs"):
        model_replicas(None, ClusterResources(cpus=1, gpus=0))


@pytest.mark.parametrize("command", ["generate", "extract"])
def test_cli_too_many_replicas_fail_at_once_on_the_real_cluster(ray_session, command, tmp_path):
    """On the session's 2-CPU Ray: exit 2 with the remedy, before any window is decoded."""
    from typer.testing import CliRunner

    from dub.cli import app

    videos = tmp_path / "videos"
    make_video(videos / "a.mp4", seconds=1.0, fps=25, size=(64, 48), with_audio=command == "extract", audio="tone")
    manifest = _ingest(videos, tmp_path / "m.parquet")
    window = ["--window", "1"] if command == "extract" else []  # the 1 s clip must hold a whole window
    results = []
    run = threading.Thread(
        target=lambda: results.append(
            CliRunner().invoke(
                app, [command, "-m", str(manifest), "-o", str(tmp_path / "out"), "--replicas", "2", *window]
            )
        ),
        daemon=True,
    )
    run.start()
    run.join(timeout=300)  # a hang guard, not a speed target: before the check the run never returned
    assert results, "the run hung: Ray was left waiting for a replica the cluster cannot hold"
    said = " ".join(results[0].output.split())
    assert results[0].exit_code == 2 and "use --replicas 1 (Ray would wait forever)" in said, said
    zero = CliRunner().invoke(app, [command, "-m", str(manifest), "-o", str(tmp_path / "out0"), "--replicas", "0"])
    assert zero.exit_code == 2 and "--replicas must be >= 1" in " ".join(zero.output.replace("│", " ").split())


def test_cli_resize_exact_runs_end_to_end_with_torchvision_frames(ray_session, checkpoint, tmp_path):
    """`dub generate --resize exact`: the run records it, and the features in its shard are the
    encoders' features of torch-resized frames, not of swscale's (so the decoding tasks got it)."""
    import io
    import tarfile

    import torch
    from typer.testing import CliRunner

    from dub.cli import app
    from dub.model.runtime.bundles import bundle_info, load_feature_stack
    from dub.workflows.generate.stages import decode_windows

    path = tmp_path / "v" / "wide.mp4"
    make_video(path, seconds=1.0, fps=25, size=(320, 180))
    manifest = _ingest(tmp_path / "v", tmp_path / "m.parquet")
    out = tmp_path / "out"
    result = CliRunner().invoke(
        app,
        [
            "generate",
            "-m",
            str(manifest),
            "-o",
            str(out),
            "--checkpoint",
            str(checkpoint),
            "--resize",
            "exact",
            "--format",
            "wds",
            "--save-features",
            "--json",
        ],
    )
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout[result.stdout.index("{") :])
    assert summary["generated"] == 1 and summary["failed"] == 0
    run = json.loads((out / "run.json").read_text())
    assert run["config"]["resize"] == "exact"
    fast_hash = GenerateConfig(
        **{**run["config"], "sampler": SamplerConfig(**run["config"]["sampler"]), "resize": "fast"}
    ).config_hash(run["model"]["weights_hash"])
    assert run["config_hash"] == summary["config_hash"] != fast_hash

    stored = {}
    for shard in (out / "shards").glob("*.tar"):
        with tarfile.open(shard) as tar:
            for member in tar.getmembers():
                for name in ("clip_f", "sync_f"):
                    if member.name.endswith(f".{name}.npy"):
                        stored[name] = np.load(io.BytesIO(tar.extractfile(member).read()))[0].astype(np.float32)
    assert set(stored) == {"clip_f", "sync_f"}
    info = bundle_info("demo", checkpoint=checkpoint)
    encoders, _ = load_feature_stack("demo")
    errors = {}
    for backend in ("swscale", "torch"):
        frames = decode_windows(
            _window_batch(path, 0.0, info.window_s),
            clip_fps=info.clip_fps,
            clip_size=info.clip_size,
            sync_fps=info.sync_fps,
            sync_size=info.sync_size,
            window_s=info.window_s,
            backend=backend,
        )
        with torch.no_grad():
            want = {
                "clip_f": encoders.clip_features(torch.from_numpy(frames["clip_frames"]))[0].numpy(),
                "sync_f": encoders.sync_features(torch.from_numpy(frames["sync_frames"]))[0].numpy(),
            }
        errors[backend] = max(float(np.abs(stored[k] - want[k]).max()) for k in want)
    # features are stored as float16 (~5e-4 here); the two resizers' features differ by ~1e-2
    assert errors["torch"] < 2e-3 < errors["swscale"], errors


def test_window_datasets_are_cut_into_a_bounded_number_of_blocks():
    """Small runs: one block (one decode task) per window; large runs: at least 8 blocks per CPU
    and at most MAX_WINDOWS_PER_BLOCK windows per block (one block per window costs Ray Data
    ~1 ms to build and ~10 ms to schedule each)."""
    from dub.workflows.ray_cluster import MAX_WINDOWS_PER_BLOCK, window_blocks

    assert window_blocks(0, 2) == 1 and window_blocks(3, 2) == 3 and window_blocks(16, 2) == 16
    assert window_blocks(17, 2) == 16 and window_blocks(100, 0) == 8  # a CPU-less head node still splits
    for windows, cpus in ((50_000, 2), (1_000_000, 16), (10_000, 256)):
        blocks = window_blocks(windows, cpus)
        assert blocks >= min(windows, 8 * cpus) and -(-windows // blocks) <= MAX_WINDOWS_PER_BLOCK


def test_a_small_object_store_is_named_before_it_stalls_the_run(ray_session):
    """The test session's store (1 GiB) holds 16 decoded 8 s windows (~56 MiB): no warning; for
    windows 4x that size it warns with the numbers and the remedy."""
    from dub.workflows.generate.stages import window_frame_bytes
    from dub.workflows.ray_cluster import STORE_WINDOWS, warn_if_store_small

    window = window_frame_bytes(8.0, 384, 25.0, 224, 8.0)
    assert 50 * 2**20 < window < 60 * 2**20 and STORE_WINDOWS * window <= 2**30
    assert warn_if_store_small(window) is None
    with pytest.warns(RuntimeWarning, match=r"object store \(1024 MiB\) holds fewer than 16 decoded windows"):
        text = warn_if_store_small(4 * window)
    assert "DUB_OBJECT_STORE_MB" in text and "--object-store-memory" in text


def test_embedded_ray_counts_at_least_two_cpus(monkeypatch):
    """A 1-core machine gets a replica beside a decode task (sharing the core) instead of a run
    that waits forever for a second CPU; otherwise Ray's own count stands."""
    import ray._private.utils

    from dub.workflows.ray_cluster import ClusterResources, _local_cpus, model_replicas

    monkeypatch.setattr(ray._private.utils, "get_num_cpus", lambda: 1)
    assert _local_cpus() == 2 and model_replicas(None, ClusterResources(cpus=2, gpus=0)) == 1
    monkeypatch.setattr(ray._private.utils, "get_num_cpus", lambda: 6)
    assert _local_cpus() is None
