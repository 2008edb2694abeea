"""`dub report` end to end on a generate run's layout built by the tests (real H.264 files with
event sidecars and synthetic burst soundtracks, a report.parquet as `dub generate` writes it; not
made by running `dub generate`): per-video Parquet, summary, HTML page opened in headless
Chromium, the CLI."""

from __future__ import annotations

import dataclasses
import html
import json
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from dub.workflows.metrics.run_inputs import GeneratedRow, ReferenceIndex, load_run
from dub.workflows.report.config import Injected, ReportConfig
from dub.workflows.report.run import run_report
from tests.report_helpers import (
    burst_audio,
    decode_png,
    event_frames,
    write_clip,
    write_events,
    write_generate_run,
    write_wav,
)
from tests.requirements import require

CHROMIUM = Path("/usr/bin/chromium")
DURATION = 6.0


def _events(seed: int) -> np.ndarray:
    rng = np.random.default_rng(100 + seed)
    return np.sort(rng.choice(np.arange(0.4, 5.6, 0.45), size=5, replace=False)).round(2)


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    """v0-v2: silent sources with event sidecars, references in a folder; v3: a source with its
    own audio track and no sidecar; v4: a row that failed in generate."""
    root = tmp_path_factory.mktemp("report")
    rows = []
    for k in range(3):
        times = _events(k)
        source = write_clip(root / "videos" / f"clip{k}.mp4", event_frames(times, DURATION, seed=k))
        write_events(source, times)
        generated = write_clip(
            root / "run" / "mp4" / f"v{k}_clip{k}.mp4",
            event_frames(times, DURATION, seed=k),
            burst_audio(times, DURATION, seed=k),
        )
        write_wav(root / "refs" / f"v{k}.flac", burst_audio(times, DURATION, seed=50 + k))
        rows.append({"video_id": f"v{k}", "path": source, "output_mp4": Path("mp4") / generated.name})
    times = _events(3)
    source = write_clip(
        root / "videos" / "clip3.mp4", event_frames(times, DURATION, seed=3), burst_audio(times, DURATION, seed=60)
    )
    generated = write_clip(
        root / "run" / "mp4" / "v3_clip3.mp4",
        event_frames(times, DURATION, seed=3),
        burst_audio(times + 0.5, DURATION, seed=3),
    )  # badly out of sync
    rows.append({"video_id": "v3", "path": source, "output_mp4": generated})
    rows.append({"video_id": "v4", "path": root / "videos" / "gone.mp4", "status": "failed", "error": "cannot decode"})
    return write_generate_run(root / "run", rows)


@pytest.fixture(scope="module")
def report(run_dir, tmp_path_factory):
    weights = tmp_path_factory.mktemp("no_weights")
    out = run_dir.parent / "out"
    config = ReportConfig(
        run_dir=str(run_dir),
        out_dir=str(out),
        reference=str(run_dir.parent / "refs"),
        backends=("panns", "vggish", "logmel"),
        weights_dir=str(weights),
    )
    return run_report(config)


def test_per_video_parquet(report):
    table = pq.read_table(report.out_dir / "report.parquet").to_pylist()
    by_id = {r["video_id"]: r for r in table}
    assert list(by_id) == ["v0", "v1", "v2", "v3", "v4"]
    assert by_id["v4"]["status"] == "skipped" and "cannot decode" in by_id["v4"]["error"]
    for vid in ("v0", "v1", "v2"):
        r = by_id[vid]
        assert r["status"] == "ok" and r["error"] is None
        assert r["reference_kind"] == "dir" and r["onset_reference"] == "events"
        assert r["onset_acc"] == 1.0 and r["onset_f1"] >= 0.8  # generated bursts sit on the events
        assert r["av_align"] >= 0.5
        assert r["kl_panns"] is None  # no PANNs weights: not a zero
        assert r["t_onsets_s"] > 0 and r["t_embed_logmel_s"] > 0
    v3 = by_id["v3"]
    assert v3["reference_kind"] == "video_track" and v3["onset_reference"] == "reference_audio"
    assert v3["onset_f1"] == 0.0 and v3["av_align"] < 0.2  # 0.5 s late audio
    assert v3["av_align_reference"] > v3["av_align"]


def test_summary_names_missing_weights_and_keeps_other_metrics(report):
    summary = json.loads((report.out_dir / "summary.json").read_text())
    assert summary["n_scored"] == 4 and summary["n_skipped"] == 1 and summary["n_with_events"] == 3
    metrics, unavailable = summary["metrics"], summary["unavailable"]
    for key in ("fad_panns", "kl_panns", "is_panns"):
        assert "Cnn14_16k_mAP=0.438.pth" in unavailable[key] and key not in metrics
    assert "vggish-10086976.pth" in unavailable["fad_vggish"]
    assert "synchformer_state_dict.pth" in unavailable["desync_s"]
    assert "imagebind_huge.pth" in unavailable["ib_score"] and "ib_score_mean" not in metrics
    assert metrics["fad_logmel"] > 0
    assert "not comparable" in summary["notes"]["fad_logmel"]
    assert metrics["onset_acc_n"] == 4 and metrics["av_align_n"] == 4
    assert set(summary["timings_ms_per_clip"]) >= {"read", "onsets", "av_align", "embed_logmel", "plots"}


def _chromium(args: list[str], tmp_path: Path) -> subprocess.CompletedProcess:
    profile = tmp_path / "chromium-profile"
    cmd = [
        str(CHROMIUM),
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--no-first-run",
        f"--user-data-dir={profile}",
        "--enable-logging=stderr",
        "--v=0",
        *args,
    ]
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    shutil.rmtree(profile, ignore_errors=True)
    return result


@require(CHROMIUM.exists(), reason="Debian's chromium is not installed (apt-get install -y chromium)")
def test_html_page_renders_in_headless_chromium(report, tmp_path):
    page = report.out_dir / "index.html"
    assert "http://" not in page.read_text() and "https://" not in page.read_text().split("<h2>Clips")[1]
    dom = _chromium(["--dump-dom", f"{page.as_uri()}#sort=av_align"], tmp_path)
    assert dom.returncode == 0, dom.stderr[-2000:]
    assert "Uncaught" not in dom.stderr, dom.stderr[-2000:]
    html = dom.stdout
    assert '<table id="summary"' in html and '<table id="clips"' in html
    assert len(re.findall(r'<img class="spectrogram"[^>]*src="data:image/png;base64,', html)) == 8
    assert len(re.findall(r"<audio controls", html)) == 8
    # the page's own script sorted the clips by av_align, ascending, empty values last
    order = re.findall(r'<tr data-id="(v\d)"', html)
    av = {r["video_id"]: r["av_align"] for r in report.rows}
    expected = sorted([v for v in av if av[v] is not None], key=lambda v: av[v]) + ["v4"]
    assert order == expected
    sections = re.findall(r'<section class="clip" id="clip-(v\d)"', html)
    assert sections == expected  # per-clip pictures follow the table order

    shot = tmp_path / "page.png"
    result = _chromium([f"--screenshot={shot}", "--window-size=1200,2000", page.as_uri()], tmp_path)
    assert result.returncode == 0 and shot.exists(), result.stderr[-2000:]
    pixels = decode_png(shot.read_bytes()).astype(np.int16)
    assert pixels.shape == (2000, 1200, 3)
    assert pixels.std() > 20  # not a blank page
    # the colour-mapped spectrograms: saturated pixels, which text, tables and waveforms barely have
    colourful = (pixels.max(axis=2) - pixels.min(axis=2)) > 60
    assert colourful.mean() > 0.03


def test_classifier_metrics_with_a_panns_model(run_dir, tmp_path):
    import torch

    from dub.workflows.metrics.embeddings import PannsBackend
    from dub.workflows.metrics.models.panns import Cnn14, Cnn14Config

    tiny = Cnn14Config(mel_bins=32, classes_num=5, channels=(4, 4, 8, 8, 8, 16))
    torch.manual_seed(0)
    torch.save({"model": Cnn14(tiny).state_dict()}, tmp_path / "tiny_cnn14.pth")
    config = ReportConfig(
        run_dir=str(run_dir),
        out_dir=str(tmp_path / "out"),
        reference=str(run_dir.parent / "refs"),
        weights_dir=str(tmp_path),
        write_html=False,
    )
    result = run_report(
        config, injected=Injected(backends={"panns": PannsBackend(tmp_path / "tiny_cnn14.pth", config=tiny)})
    )
    metrics = result.summary["metrics"]
    assert metrics["fad_panns"] >= 0 and 1.0 <= metrics["is_panns_mean"] <= 5.0
    assert metrics["kl_panns_n"] == 4
    assert all(r["kl_panns"] >= 0 for r in result.rows if r["status"] == "ok")
    assert "fad_panns" not in result.summary["unavailable"] and "kl_panns" not in result.summary["unavailable"]
    assert "synchformer_state_dict.pth" in result.summary["unavailable"]["desync_s"]


def test_reference_manifest_and_bad_inputs(run_dir, tmp_path):
    import pyarrow as pa

    manifest = tmp_path / "refs.parquet"
    pq.write_table(pa.table({"video_id": ["v1"], "path": [str(run_dir.parent / "refs" / "v1.flac")]}), manifest)
    index = ReferenceIndex(manifest)
    _, rows = load_run(run_dir)
    by_id = {r.video_id: r for r in rows}
    assert index.lookup(by_id["v1"]) == (run_dir.parent / "refs" / "v1.flac", "manifest")
    assert index.lookup(by_id["v0"]) == (None, "none")
    assert index.lookup(by_id["v3"])[1] == "video_track"  # the source's own audio wins
    silent = GeneratedRow("x", None, "done", None, None, None, None)
    assert index.lookup(silent) == (None, "none")
    with pytest.raises(FileNotFoundError, match="report.parquet"):
        load_run(tmp_path)
    with pytest.raises(FileNotFoundError, match="neither a folder"):
        ReferenceIndex(tmp_path / "nothing.txt")


def test_cli_prints_summary_and_timings(run_dir, tmp_path):
    import typer
    from typer.testing import CliRunner

    from dub.commands.report import register

    app = typer.Typer()
    register(app)

    @app.callback()
    def _root() -> None:  # keep `report` a sub-command
        pass

    out = tmp_path / "cli_out"
    result = CliRunner().invoke(
        app,
        [
            "report",
            str(run_dir),
            "-o",
            str(out),
            "--reference",
            str(run_dir.parent / "refs"),
            "--backend",
            "logmel",
            "--backend",
            "panns",
            "--weights-dir",
            str(tmp_path),
            "--no-html",
            "--timings",
        ],
    )
    assert result.exit_code == 0, result.output
    assert "fad_logmel" in result.output and "ms / clip" in result.output
    assert "Cnn14_16k_mAP=0.438.pth" in result.output
    assert (out / "report.parquet").exists() and (out / "summary.json").exists()
    assert not (out / "index.html").exists()
    args = [
        "report",
        str(run_dir),
        "-o",
        str(out),
        "--reference",
        str(run_dir.parent / "refs"),
        "--backend",
        "logmel",
        "--backend",
        "panns",
        "--weights-dir",
        str(tmp_path),
        "--no-html",
    ]
    again = CliRunner().invoke(app, args)  # the same command: everything comes from the journal
    assert again.exit_code == 0 and "resuming: 5 of 5 clips" in again.output, again.output
    fresh = CliRunner().invoke(app, args + ["--fresh"])
    assert fresh.exit_code == 0 and "discarded the journal (--fresh)" in fresh.output and "resuming" not in fresh.output
    assert json.loads((out / "summary.json").read_text())["journal"] == {"reused": 0, "scored": 5}
    bad = CliRunner().invoke(app, ["report", str(tmp_path / "missing"), "-o", str(out)])
    assert bad.exit_code == 2 and "report.parquet" in bad.output
    skipped = CliRunner().invoke(
        app,
        [
            "report",
            str(run_dir),
            "-o",
            str(tmp_path / "skip_out"),
            "--backend",
            "logmel",
            "--weights-dir",
            str(tmp_path),
            "--no-html",
            "--skip",
            "desync",
            "--json",
        ],
    )
    assert skipped.exit_code == 0, skipped.output
    summary = json.loads((tmp_path / "skip_out" / "summary.json").read_text())
    assert summary["unavailable"]["desync_s"] == "left out (--skip desync)" and summary["config"]["skip"] == ["desync"]
    wrong = CliRunner().invoke(app, ["report", str(run_dir), "-o", str(out), "--skip", "fad"])
    assert wrong.exit_code != 0 and "desync" in wrong.output


def test_desync_and_passt_scores_with_tiny_models(run_dir, tmp_path):
    """DeSync (full Synchformer) and FD/KL/IS-PaSST computed inside the report from tiny models
    in the publishers' layouts; PaSST is handed 32 kHz audio, DeSync 16 kHz, per clip."""
    import torch

    from dub.workflows.metrics.desync import OFFSET_GRID_S, build_offset_predictor
    from dub.workflows.metrics.embeddings import PasstBackend
    from dub.workflows.metrics.models.passt import PASST_TINY, PaSST
    from dub.workflows.metrics.models.synchformer_sync import FullSynchformer, FullSynchformerConfig
    from dub.workflows.metrics.weights import WeightsLocator

    torch.manual_seed(0)
    passt_file = tmp_path / "tiny_passt.pt"
    torch.save(PaSST(PASST_TINY).state_dict(), passt_file)
    tiny_sync = FullSynchformerConfig.tiny()
    (tmp_path / "mmaudio-ext").mkdir()
    torch.save(FullSynchformer(tiny_sync).state_dict(), tmp_path / "mmaudio-ext" / "synchformer_state_dict.pth")
    offsets = build_offset_predictor(WeightsLocator(tmp_path), config=tiny_sync)

    backend = PasstBackend(passt_file, config=PASST_TINY)
    seen_lengths = []
    features = backend.features
    backend.features = lambda wavs: seen_lengths.extend(len(w) for w in wavs) or features(wavs)
    config = ReportConfig(
        run_dir=str(run_dir),
        out_dir=str(tmp_path / "out"),
        reference=str(run_dir.parent / "refs"),
        weights_dir=str(tmp_path),
        write_html=False,
    )
    result = run_report(config, injected=Injected(backends={"passt": backend}, offsets=offsets))
    summary = result.summary
    ok = [r for r in result.rows if r["status"] == "ok"]
    assert len(ok) == 4
    for r in ok:  # 6 s clips: 17 segments, two windows of 14, offsets on the grid
        assert r["desync_s"] is not None and 0.0 <= r["desync_s"] <= 2.0
        assert (
            np.isclose(OFFSET_GRID_S, r["desync_s"]).any()
            or np.isclose(np.abs(OFFSET_GRID_S[:, None] + OFFSET_GRID_S[None, :]) / 2, r["desync_s"]).any()
        )
        assert r["kl_passt"] >= 0 and r["t_desync_s"] > 0
    metrics = summary["metrics"]
    assert metrics["desync_s_n"] == 4 and metrics["fad_passt"] >= 0 and metrics["is_passt_mean"] >= 1.0
    assert not {"desync_s", "fad_passt", "kl_passt", "is_passt"} & set(summary["unavailable"])
    assert "desync" in summary["timings_ms_per_clip"] and "embed_passt" in summary["timings_ms_per_clip"]
    assert set(seen_lengths) == {int(DURATION * 32000)}  # resampled for PaSST, generated and reference
    assert "text prompt" in summary["unavailable"]["clap_score"]

    # --audio-length 3: the models see the first 3 s (as av-benchmark's --audio_length); DeSync
    # then has under 14 segments and says so, the onset metrics still score whole clips
    seen_lengths.clear()
    short = run_report(
        dataclasses.replace(config, out_dir=str(tmp_path / "out3"), audio_length_s=3.0),
        injected=Injected(
            backends={"passt": backend},
            offsets=build_offset_predictor(WeightsLocator(tmp_path), config=tiny_sync, max_duration_s=3.0),
        ),
    )
    assert set(seen_lengths) == {3 * 32000}
    assert all(r["desync_s"] is None for r in short.rows) and "4.8 s" in short.summary["unavailable"]["desync_s"]
    assert short.summary["metrics"]["onset_acc_n"] == summary["metrics"]["onset_acc_n"]
    with pytest.raises(ValueError, match="audio_length_s"):
        dataclasses.replace(config, audio_length_s=0.0)


def test_cli_resize_bogus_is_the_usage_error_generate_gives(tmp_path):
    from typer.testing import CliRunner

    from dub.cli import app

    result = CliRunner().invoke(
        app, ["report", str(tmp_path / "run"), "-o", str(tmp_path / "out"), "--resize", "bogus"]
    )
    assert result.exit_code == 2
    text = " ".join(result.output.replace("│", " ").split())
    assert "'bogus' is not one of 'fast', 'exact'" in text  # refused while parsing, the choices listed
    assert not (tmp_path / "out").exists()


def test_resize_reaches_the_desync_decoding(tmp_path, monkeypatch):
    """`resize` picks the resizer of the frames DeSync scores: the predictor the report loads
    decodes exactly what `decode_window` gives with RESIZE_BACKENDS[resize] (exact: torchvision's,
    not swscale's, on a 160x120 clip cut to a 32 crop), and summary.json records it."""
    import functools

    import torch

    import dub.workflows.report.scoring as report_module
    from dub.workflows.media.decode import RESIZE_BACKENDS, FrameTarget, decode_window
    from dub.workflows.metrics.desync import build_offset_predictor
    from dub.workflows.metrics.models.synchformer_sync import VIDEO_FPS, FullSynchformer, FullSynchformerConfig
    from dub.workflows.report.scoring import load_models
    from tests.video_factory import make_video

    tiny = FullSynchformerConfig.tiny()
    torch.manual_seed(0)
    (tmp_path / "w" / "mmaudio-ext").mkdir(parents=True)
    torch.save(FullSynchformer(tiny).state_dict(), tmp_path / "w" / "mmaudio-ext" / "synchformer_state_dict.pth")
    # the report's own builder and arguments, with the tiny architecture instead of the released one
    monkeypatch.setattr(report_module, "build_offset_predictor", functools.partial(build_offset_predictor, config=tiny))
    video = tmp_path / "run" / "mp4" / "r0.mp4"
    video.parent.mkdir(parents=True)
    make_video(
        video, seconds=DURATION, fps=25.0, size=(160, 120), with_audio=True, audio="events", events=(1.0, 2.5, 4.0)
    )
    run = write_generate_run(tmp_path / "run", [{"video_id": "r0", "path": video, "output_mp4": video}])

    def decoded(backend):
        target = FrameTarget(fps=VIDEO_FPS, size=tiny.visual.crop_size, mode="crop")
        return decode_window(str(video), 0.0, 8.0, [target], backend=backend).frames[0]

    exact, fast = decoded(RESIZE_BACKENDS["exact"]), decoded(RESIZE_BACKENDS["fast"])
    assert exact.shape == (150, 32, 32, 3) and not np.array_equal(exact, fast)
    config = ReportConfig(
        run_dir=str(run),
        out_dir=str(tmp_path / "out"),
        backends=(),
        skip=("clap",),
        weights_dir=str(tmp_path / "w"),
        write_html=False,
        resize="exact",
    )
    rows = load_run(run)[1]
    for resize, expected in (("exact", exact), ("fast", fast)):
        offsets = load_models(dataclasses.replace(config, resize=resize), {}, rows).offsets
        assert offsets.decode_backend == RESIZE_BACKENDS[resize]
        # the same decoder and resizer as `decoded` above: bit-identical frames
        np.testing.assert_array_equal(offsets.frames(str(video)), expected)
    result = run_report(config)
    assert result.rows[0]["desync_s"] is not None and "desync_s" not in result.summary["unavailable"]
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert summary["config"]["resize"] == "exact"
    assert ReportConfig.from_dict(summary["config"]).decode_backend == "torch"


def test_clap_score_for_clips_with_prompts(tmp_path):
    """A run whose rows carry prompts gets a CLAP score per prompted clip (tiny LAION-CLAP in the
    publisher's layout), equal to the cosine of the model's own text and 48 kHz audio embeddings."""
    from dub.workflows.metrics.clap import load_clap
    from dub.workflows.metrics.media_io import read_audio
    from tests.test_clap import MERGES, VOCAB, fixture_state, tiny_config

    times = _events(7)
    rows = []
    for k, prompt in enumerate(("a dog barks twice", None)):
        generated = write_clip(
            tmp_path / "run" / "mp4" / f"t{k}.mp4",
            event_frames(times, DURATION, seed=k),
            burst_audio(times, DURATION, seed=k),
        )
        rows.append({"video_id": f"t{k}", "path": generated, "output_mp4": generated, "prompt": prompt})
    run = write_generate_run(tmp_path / "run", rows)
    config = tiny_config()
    clap = load_clap(fixture_state(config), "cpu", config, VOCAB, MERGES)
    report_cfg = ReportConfig(
        run_dir=str(run),
        out_dir=str(tmp_path / "out"),
        backends=(),
        weights_dir=str(tmp_path / "none"),
        write_html=False,
    )
    result = run_report(report_cfg, injected=Injected(clap=clap))
    scored, unprompted = result.rows
    expected = clap.scores(["a dog barks twice"], [read_audio(rows[0]["output_mp4"], 48000)])[0]
    # the same float32 model and audio, batched the report's way: a cosine of order 1 (~u per
    # layer of another GEMM blocking, tests/test_clap.py)
    assert scored["clap_score"] == pytest.approx(float(expected), abs=1e-6)
    assert -1.0 <= scored["clap_score"] <= 1.0 and unprompted["clap_score"] is None
    assert result.summary["metrics"]["clap_score_n"] == 1 and "clap_score" not in result.summary["unavailable"]
    # without the weights the summary names the missing file and the rest still runs
    missing = run_report(
        ReportConfig(
            run_dir=str(run),
            out_dir=str(tmp_path / "out2"),
            backends=(),
            weights_dir=str(tmp_path / "none"),
            write_html=False,
        )
    )
    assert "music_speech_audioset_epoch_15_esc_89.98.pt" in missing.summary["unavailable"]["clap_score"]
    assert missing.rows[0]["av_align"] is not None


def test_workers_on_ray_give_the_in_process_results(ray_session, run_dir, tmp_path):
    """`--workers 2`: two Ray actors, each with its own models, score the clips; every row and
    set-level metric equals the in-process report's (timings aside)."""
    import torch

    from dub.workflows.metrics.embeddings import PannsBackend, build_backend
    from dub.workflows.metrics.models.panns import Cnn14, Cnn14Config

    tiny = Cnn14Config(mel_bins=32, classes_num=5, channels=(4, 4, 8, 8, 8, 16))
    torch.manual_seed(1)
    torch.save({"model": Cnn14(tiny).state_dict()}, tmp_path / "tiny_cnn14.pth")

    def report(workers: int):
        config = ReportConfig(
            run_dir=str(run_dir),
            out_dir=str(tmp_path / f"out{workers}"),
            reference=str(run_dir.parent / "refs"),
            weights_dir=str(tmp_path / "none"),
            max_plots=2,
            workers=workers,
        )
        backends = {"panns": PannsBackend(tmp_path / "tiny_cnn14.pth", config=tiny), "logmel": build_backend("logmel")}
        return run_report(config, injected=Injected(backends=backends))

    alone, parallel = report(1), report(2)
    untimed = [{k: v for k, v in r.items() if not k.startswith("t_")} for r in alone.rows]
    assert [{k: v for k, v in r.items() if not k.startswith("t_")} for r in parallel.rows] == untimed
    assert parallel.summary["metrics"] == alone.summary["metrics"]
    assert parallel.summary["unavailable"] == alone.summary["unavailable"]
    assert "fad_panns" in parallel.summary["metrics"] and "fad_logmel" in parallel.summary["metrics"]
    assert set(parallel.media) == set(alone.media) and len(parallel.media) == 2
    assert (tmp_path / "out2" / "index.html").stat().st_size > 10_000
    with pytest.raises(ValueError, match="workers"):
        ReportConfig(run_dir=str(run_dir), out_dir=str(tmp_path), workers=0)


# -- the journal: a stopped report resumes ---------------------------------------------------------


class _Counting:
    """A real backend that counts its `features` calls (one per clip and side: generated, reference)."""

    def __init__(self, backend) -> None:
        self.backend, self.info, self.calls = backend, backend.info, 0

    def features(self, wavs):
        self.calls += 1
        return self.backend.features(wavs)


@pytest.fixture(scope="module")
def tiny_panns(tmp_path_factory):
    """A tiny CNN14 file: embeddings and logits, so FAD, IS and KL go through the journal."""
    import torch

    from dub.workflows.metrics.models.panns import Cnn14, Cnn14Config

    tiny = Cnn14Config(mel_bins=32, classes_num=5, channels=(4, 4, 8, 8, 8, 16))
    torch.manual_seed(2)
    path = tmp_path_factory.mktemp("tiny_panns") / "tiny_cnn14.pth"
    torch.save({"model": Cnn14(tiny).state_dict()}, path)
    return path, tiny


def _backends(tiny_panns, counting: bool = True) -> dict:
    from dub.workflows.metrics.embeddings import PannsBackend, build_backend

    panns = PannsBackend(tiny_panns[0], config=tiny_panns[1])
    return {"panns": _Counting(panns) if counting else panns, "logmel": build_backend("logmel")}


def _journal_config(run_dir: Path, out: Path, **changes) -> ReportConfig:
    fields = {
        "reference": str(run_dir.parent / "refs"),
        "weights_dir": str(out.parent / "no_weights"),
        "max_plots": 2,
        **changes,
    }
    return ReportConfig(run_dir=str(run_dir), out_dir=str(out), **fields)


def _untimed(rows: list[dict]) -> list[dict]:
    return [{k: v for k, v in r.items() if not k.startswith("t_")} for r in rows]


def _journaled_ids(out: Path) -> list[str]:
    return [
        v
        for part in sorted((out / "journal").glob("part-*.parquet"))
        for v in pq.read_table(part).column("video_id").to_pylist()
    ]


def _stop_after(k: int):
    def progress(i: int, n: int, video_id: str) -> None:
        if i >= k:
            raise KeyboardInterrupt  # what Ctrl-C raises in the driver

    return progress


def test_interrupted_report_resumes_and_equals_the_uninterrupted_one(run_dir, tmp_path, tiny_panns, monkeypatch):
    import dub.workflows.report.scoring as report_module

    whole_backends = _backends(tiny_panns)
    whole = run_report(_journal_config(run_dir, tmp_path / "whole"), injected=Injected(backends=whole_backends))
    assert whole_backends["panns"].calls == 8  # v0-v3 have audio and a reference; v4 failed in generate
    assert whole.summary["metrics"]["fad_panns"] > 0 and whole.summary["metrics"]["kl_panns_n"] == 4

    out = tmp_path / "resumed"
    made = []  # Ogg/Opus bytes differ run to run (a random stream serial): keep the ones journaled
    encode = report_module.encode_opus
    monkeypatch.setattr(report_module, "encode_opus", lambda *a: made.append(encode(*a)) or made[-1])
    with pytest.raises(KeyboardInterrupt):
        run_report(
            _journal_config(run_dir, out), progress=_stop_after(2), injected=Injected(backends=_backends(tiny_panns))
        )
    monkeypatch.undo()
    assert not (out / "report.parquet").exists()
    assert _journaled_ids(out) == ["v0", "v1"]  # flushed on the way out, not lost

    backends, seen, notices = _backends(tiny_panns), [], []
    resumed = run_report(
        _journal_config(run_dir, out),
        notice=notices.append,
        progress=lambda i, n, vid: seen.append((i, vid)),
        injected=Injected(backends=backends),
    )
    assert backends["panns"].calls == 4 and seen == [(3, "v2"), (4, "v3"), (5, "v4")]
    assert resumed.summary["journal"] == {"reused": 2, "scored": 3} and "resuming: 2 of 5" in notices[0]
    assert _untimed(resumed.rows) == _untimed(whole.rows)
    assert resumed.summary["metrics"] == whole.summary["metrics"]  # FAD, IS, KL means: bit for bit
    assert resumed.summary["unavailable"] == whole.summary["unavailable"]
    assert set(resumed.media) == {"v0", "v1"}  # from the journal, byte for byte
    assert [a for m in resumed.media.values() for a in (m.audio_generated, m.audio_reference)] == made
    pictures = [
        {
            vid: (m.wave_generated, m.spec_generated, m.wave_reference, m.spec_reference)
            for vid, m in report.media.items()
        }
        for report in (resumed, whole)
    ]
    assert pictures[0] == pictures[1]
    tables = [pq.read_table(d / "report.parquet") for d in (out, tmp_path / "whole")]
    untimed = [t.drop([c for c in t.column_names if c.startswith("t_")]) for t in tables]
    assert untimed[0].equals(untimed[1])


def test_another_configuration_or_a_changed_clip_is_rescored(run_dir, tmp_path, tiny_panns):
    import os

    from dub.workflows.metrics.onsets import OnsetConfig
    from dub.workflows.metrics.weights import WeightsLocator
    from dub.workflows.report.journal import report_identity

    run = shutil.copytree(run_dir, tmp_path / "run")  # its mp4s get touched below
    out, refs = tmp_path / "out", str(run_dir.parent / "refs")
    first = run_report(_journal_config(run, out, reference=refs), injected=Injected(backends=_backends(tiny_panns)))
    backends, notices = _backends(tiny_panns), []
    wider = _journal_config(run, out, reference=refs, onsets=OnsetConfig(tolerance_s=0.6))
    widened = run_report(wider, notice=notices.append, injected=Injected(backends=backends))
    assert backends["panns"].calls == 8 and widened.summary["journal"] == {"reused": 0, "scored": 5}
    assert len(notices) == 1 and "discarded the journal (made with another configuration" in notices[0]
    assert widened.summary["metrics"]["onset_acc_mean"] > first.summary["metrics"]["onset_acc_mean"]  # v3 is 0.5 s late

    # one more clip with page media: only that clip is rescored; a regenerated output: that clip
    os.utime(
        run / "mp4" / "v1_clip1.mp4", ns=(time_ns := (run / "mp4" / "v1_clip1.mp4").stat().st_mtime_ns, time_ns + 10**9)
    )
    backends = _backends(tiny_panns)
    more = run_report(dataclasses.replace(wider, max_plots=3), injected=Injected(backends=backends))
    assert backends["panns"].calls == 4 and more.summary["journal"] == {"reused": 3, "scored": 2}
    assert set(more.media) == {"v0", "v1", "v2"}
    assert _untimed(more.rows) == _untimed(widened.rows)

    # weights imported between runs change the hash; where the report goes and how many workers do not
    config = _journal_config(run, out, reference=refs, backends=("panns", "logmel"))
    before = report_identity(config, Injected(), wants_clap=False)
    assert (
        report_identity(
            dataclasses.replace(config, workers=3, max_plots=0, out_dir="elsewhere"), Injected(), wants_clap=False
        )
        == before
    )
    weights = WeightsLocator(config.weights_dir).registry.expected_path("panns", "Cnn14_16k_mAP=0.438.pth")
    weights.parent.mkdir(parents=True)
    weights.write_bytes(b"weights")
    assert report_identity(config, Injected(), wants_clap=False) != before


def test_workers_on_ray_journal_and_resume(ray_session, run_dir, tmp_path, tiny_panns, monkeypatch):
    import dub.workflows.report.scoring as report_module

    out = tmp_path / "out"
    stopped = []
    with pytest.raises(KeyboardInterrupt):
        run_report(
            _journal_config(run_dir, out, workers=2),
            progress=lambda i, n, vid: stopped.append(i) or _stop_after(1)(i, n, vid),
            injected=Injected(backends=_backends(tiny_panns, counting=False)),
        )
    assert len(_journaled_ids(out)) == stopped[0] >= 1  # the first chunk back from an actor (4 clips or v4)
    parallel = run_report(
        _journal_config(run_dir, out, workers=2), injected=Injected(backends=_backends(tiny_panns, counting=False))
    )
    assert parallel.summary["journal"] == {"reused": stopped[0], "scored": 5 - stopped[0]}
    assert sorted(_journaled_ids(out)) == ["v0", "v1", "v2", "v3", "v4"]

    # everything is journaled: a rerun (in this process; workers do not change scores) loads no model
    monkeypatch.setattr(report_module, "load_models", lambda *a, **k: pytest.fail("loaded the models"))
    backends = _backends(tiny_panns)
    again = run_report(_journal_config(run_dir, out), injected=Injected(backends=backends))
    assert backends["panns"].calls == 0 and again.summary["journal"] == {"reused": 5, "scored": 0}
    assert again.summary["timings_s_total"]["model_load"] == 0.0
    assert _untimed(again.rows) == _untimed(parallel.rows)
    assert again.summary["metrics"] == parallel.summary["metrics"] and "fad_panns" in again.summary["metrics"]
    assert again.summary["unavailable"] == parallel.summary["unavailable"] and again.media == parallel.media


def test_stray_temporaries_and_half_parts_are_ignored(run_dir, tmp_path, tiny_panns):
    out = tmp_path / "out"
    whole = run_report(_journal_config(run_dir, out), injected=Injected(backends=_backends(tiny_panns)))
    journal = out / "journal"
    part = sorted(journal.glob("part-*.parquet"))[0]  # a slow scorer may write more than one part
    temporary = journal / f".{part.name}.k3j9x.tmp"  # a write killed before its rename
    temporary.write_bytes(part.read_bytes()[:1000])
    half = journal / "part-9999999999999999999-half.parquet"  # sorts last: it would win if read
    half.write_bytes(part.read_bytes()[: part.stat().st_size // 2])
    backends = _backends(tiny_panns)
    again = run_report(_journal_config(run_dir, out), injected=Injected(backends=backends))
    assert backends["panns"].calls == 0 and again.summary["journal"] == {"reused": 5, "scored": 0}
    assert not temporary.exists() and not half.exists()
    assert _untimed(again.rows) == _untimed(whole.rows) and again.summary["metrics"] == whole.summary["metrics"]


def test_sample_scores_a_seeded_subset_and_a_larger_sample_keeps_it(run_dir, tmp_path, tiny_panns):
    """--sample 2 of the run's 4 generated clips (v4 failed in generate: listed anyway); --sample 3
    keeps those 2, scores only the new one and reuses the journal for the rest."""
    out = tmp_path / "out"
    # max_plots above the clips: which clips get page media must not move (a clip's key includes it)
    two = run_report(
        _journal_config(run_dir, out, sample=2, max_plots=10), injected=Injected(backends=_backends(tiny_panns))
    )
    ids = [r["video_id"] for r in two.rows]
    assert len(ids) == 3 and ids[-1] == "v4" and two.summary["n_scored"] == 2
    assert two.summary["sample"] == {"clips": 2, "seed": 0, "of_generated": 4}
    assert "fad_panns" in two.summary["metrics"]  # FAD over the 2 sampled clips and their references
    page = html.unescape((out / "index.html").read_text())
    assert "a sample of 2 of the run's 4 generated clips (--sample-seed 0)" in page

    backends = _backends(tiny_panns)
    three = run_report(_journal_config(run_dir, out, sample=3, max_plots=10), injected=Injected(backends=backends))
    assert set(ids) < {r["video_id"] for r in three.rows}
    assert backends["panns"].calls == 2  # one new clip: its generated audio and its reference
    whole = run_report(
        _journal_config(run_dir, tmp_path / "whole", max_plots=10), injected=Injected(backends=_backends(tiny_panns))
    )
    assert whole.summary["sample"] is None and len(whole.rows) == 5
    by_id = {r["video_id"]: r for r in _untimed(whole.rows)}
    assert all(r == by_id[r["video_id"]] for r in _untimed(three.rows))  # a clip scores the same sampled or not


def test_sample_rows_is_a_function_of_seed_and_video_ids_only() -> None:
    from dub.workflows.report.run import sample_rows

    rows = [
        GeneratedRow(f"clip{i:04d}", None, "failed" if i % 10 == 0 else "done", None, None, None, None)
        for i in range(1000)
    ]
    small, large = sample_rows(rows, 100, seed=7), sample_rows(rows, 300, seed=7)
    generated = [r.video_id for r in small if r.status == "done"]
    assert len(generated) == 100 and sum(r.status == "failed" for r in small) == 100  # failed rows all kept
    assert [r.video_id for r in small] == sorted(r.video_id for r in small)  # the run's order
    assert set(generated) < {r.video_id for r in large}
    shuffled = list(reversed(rows)) + [GeneratedRow("extra", None, "failed", None, None, None, None)]
    assert {r.video_id for r in sample_rows(shuffled, 100, seed=7) if r.status == "done"} == set(generated)
    assert {r.video_id for r in sample_rows(rows, 100, seed=8) if r.status == "done"} != set(generated)
    assert sample_rows(rows, 900, seed=7) == rows  # asking for all of them (or more) keeps the run
    with pytest.raises(ValueError, match="sample must be >= 1"):
        ReportConfig(run_dir="run", out_dir="out", sample=0)


def test_device_cuda_without_a_gpu_is_a_clear_error(run_dir, tmp_path, monkeypatch):
    import torch
    from typer.testing import CliRunner

    from dub.cli import app

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)  # as on a machine without a GPU
    result = CliRunner().invoke(app, ["report", str(run_dir), "-o", str(tmp_path / "out"), "--device", "cuda"])
    said = " ".join(result.output.split())
    assert result.exit_code == 2 and "--device cuda, but torch sees no CUDA GPU here" in said, said
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(
    "flags, message",
    [
        (["--onset-tolerance", "-1"], "onset windows must be positive seconds, got onset tolerance -1.0"),
        (["--max-plots", "-1"], "--max-plots must be >= 0"),
        (["--audio-length", "-2"], "--audio-length (0 = whole clips)"),
    ],
)
def test_cli_nonsense_windows_are_usage_errors(run_dir, tmp_path, flags, message):
    """A negative matching window scored every onset 0 without a word; now the run does not start."""
    from typer.testing import CliRunner

    from dub.cli import app

    result = CliRunner().invoke(app, ["report", str(run_dir), "-o", str(tmp_path / "out"), *flags])
    assert result.exit_code == 2 and message in " ".join(result.output.replace("│", " ").split()), result.output
    assert not (tmp_path / "out").exists()


def test_inputs_edited_in_place_are_rescored(run_dir, tmp_path, tiny_panns):
    """A reference file rewritten and an events sidecar corrected in place: the rerun rescores
    those two clips (their keys hold the inputs' size and mtime) and reuses the rest."""
    import os

    root = tmp_path / "copy"
    shutil.copytree(run_dir.parent, root)  # run, videos, refs: edited below
    run, refs, out = root / "run", root / "refs", tmp_path / "out"
    table = pq.read_table(run / "report.parquet").to_pylist()  # point the copy's rows at the copies
    for row in table:
        for column in ("path", "output_mp4"):
            if row[column]:
                row[column] = row[column].replace(str(run_dir.parent), str(root))
    pq.write_table(pa.Table.from_pylist(table, schema=pq.read_schema(run / "report.parquet")), run / "report.parquet")
    config = _journal_config(run, out, reference=str(refs), max_plots=0)
    first = run_report(config, injected=Injected(backends=_backends(tiny_panns)))

    write_wav(refs / "v0.flac", burst_audio(_events(0) + 0.3, DURATION, seed=77))  # a new reference for v0
    sidecar = root / "videos" / "clip1.events.json"
    sidecar.write_text(json.dumps({"events": [float(t) for t in _events(1) + 0.2]}))  # v1's events corrected
    for path in (refs / "v0.flac", sidecar):  # an mtime that differs even on coarse-clock filesystems
        stat = path.stat()
        os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))

    backends = _backends(tiny_panns)
    again = run_report(config, injected=Injected(backends=backends))
    assert again.summary["journal"] == {"reused": 3, "scored": 2}
    assert backends["panns"].calls == 4  # v0 and v1: generated audio and reference each
    before = {r["video_id"]: r for r in first.rows}
    after = {r["video_id"]: r for r in again.rows}
    assert after["v0"]["kl_panns"] != before["v0"]["kl_panns"]  # scored against the new reference
    assert after["v1"]["onset_f1"] != before["v1"]["onset_f1"]  # scored against the corrected events
    assert _untimed([after["v2"]]) == _untimed([before["v2"]])
