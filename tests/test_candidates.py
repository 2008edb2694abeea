"""`dub generate --candidates N`: N noise draws per window, and per clip the candidate whose
audio onsets agree best with the video's motion is kept, every score recorded."""

from __future__ import annotations

import math

import numpy as np
import pyarrow.parquet as pq
import pytest

from dub.workflows.generate.candidates import (
    candidate_seed,
    candidates_problem,
    clip_motion,
    select_candidate,
)
from dub.workflows.generate.config import GenerateConfig
from tests.report_helpers import burst_audio

SR = 16000
FPS = 25.0


def _motion(times_s, seconds=4.0) -> tuple[np.ndarray, np.ndarray]:
    frames = np.arange(int(seconds * FPS)) / FPS
    signal = np.full(len(frames), 0.2, np.float32)
    for t in times_s:
        signal[int(round(t * FPS))] = 8.0
    return signal, frames


def test_the_candidate_whose_onsets_meet_the_motion_is_kept():
    events = [0.8, 2.0, 3.1]
    motion, times = _motion(events)
    off = burst_audio([0.4, 1.5, 2.6], 4.0, SR, seed=1)
    on = burst_audio(events, 4.0, SR, seed=2)
    chosen = select_candidate([off, on, off], SR, motion, times, FPS)
    assert chosen.chosen == 1 and chosen.scores[1] > max(chosen.scores[0], chosen.scores[2])
    tie = select_candidate([on, on], SR, motion, times, FPS)
    assert tie.chosen == 0  # ties keep candidate 0, the draw a one-candidate run makes


def test_candidate_seeds_are_the_window_seed_then_independent_draws():
    seeds = [candidate_seed(12345, k) for k in range(8)]
    assert seeds[0] == 12345 and len(set(seeds)) == 8
    assert seeds == [candidate_seed(12345, k) for k in range(8)]  # deterministic, no state
    assert all(0 <= s < 2**63 for s in seeds)


def test_overlapping_windows_give_one_motion_signal_in_time_order():
    windows = [
        {"start_s": 0.0, "valid_s": 8.0, "motion": np.arange(200, dtype=np.float32)},
        {"start_s": 4.0, "valid_s": 6.0, "motion": 1000 + np.arange(200, dtype=np.float32)},
    ]
    signal, times = clip_motion(windows, FPS)
    assert len(signal) == len(times) == 100 + 150  # window 0 up to 4 s, window 1 over its 6 valid seconds
    assert np.all(np.diff(times) > 0) and times[-1] == pytest.approx(10.0 - 1 / FPS)
    assert signal[99] == 99 and signal[100] == 1000


def test_bad_candidate_settings_fail_in_one_line():
    assert "between 1 and" in candidates_problem(0, "av-align")
    assert "--select" in candidates_problem(2, "desync-on-the-moon")
    with pytest.raises(ValueError, match="text-to-audio"):
        GenerateConfig(out_dir="o", prompts_file="p.txt", candidates=2)
    one = GenerateConfig(out_dir="o", manifest="m.parquet")
    assert "candidates" not in one.identity("w")  # one-candidate runs keep the hash they had
    assert GenerateConfig(out_dir="o", manifest="m.parquet", candidates=4).config_hash("w") != one.config_hash("w")


def test_generate_with_candidates_records_every_score_and_keeps_the_best(ray_session, tmp_path):
    """A real run (demo model, random weights) with 3 candidates on clips with flashes: each row
    holds 3 scores and keeps the best (ties: the lowest number); the same command again makes the
    same choices; `dub report` states the gain over the mean candidate."""
    from dub.workflows.generate.run import run_generate
    from dub.workflows.report.config import ReportConfig
    from dub.workflows.report.run import run_report
    from tests.generate_helpers import flash_clips_manifest, random_demo_checkpoint

    manifest = flash_clips_manifest(tmp_path, [[0.6, 1.5, 2.4], [0.9, 1.5, 2.4]], seconds=3.0)
    checkpoint = random_demo_checkpoint(tmp_path / "demo.safetensors")
    runs = []
    for name in ("a", "b"):
        run_generate(
            GenerateConfig(
                out_dir=str(tmp_path / name),
                manifest=str(manifest),
                checkpoint=str(checkpoint),
                batch_size=2,
                candidates=3,
            )
        )
        runs.append(pq.read_table(tmp_path / name / "report.parquet").to_pylist())
    for row in runs[0]:
        scores = [(-1.0 if math.isnan(s) else s) for s in row["candidate_scores"]]
        assert row["status"] == "done" and len(scores) == 3
        assert row["candidate_chosen"] == scores.index(max(scores))
    assert [(r["candidate_chosen"], r["candidate_scores"]) for r in runs[0]] == [
        (r["candidate_chosen"], r["candidate_scores"]) for r in runs[1]
    ]
    report = run_report(
        ReportConfig(
            run_dir=str(tmp_path / "a"),
            out_dir=str(tmp_path / "report"),
            backends=(),
            skip=("desync", "clap", "ib"),
            write_html=False,
            weights_dir=str(tmp_path / "no_weights"),
        )
    )
    selection = report.summary["candidate_selection"]
    assert selection["clips"] == 2 and selection["candidates"] == 3 and list(selection["by_metric"]) == ["av-align"]
    av_align = selection["by_metric"]["av-align"]
    if av_align["clips_scored"]:
        assert av_align["improvement"] >= 0.0  # the chosen scores are each >= their clip's mean


def test_choose_follows_the_metric_direction_undefined_scores_and_flags():
    from dub.workflows.generate.candidates import choose

    assert choose([0.2, 0.5, 0.5], "av-align").chosen == 1  # higher wins, ties to the lower number
    assert choose([0.3, 0.05, float("nan")], "desync").chosen == 1  # DeSync: lower wins
    assert choose([float("nan"), 0.1], "clap").chosen == 1  # undefined ranks last
    assert choose([0.9, 0.1], "clap", allowed=[False, True]).chosen == 1  # a flagged candidate is not chosen
    assert choose([0.9, 0.1], "clap", allowed=[False, False]).chosen == 0  # unless all are


def test_select_desync_without_synchformer_weights_fails_before_ray(tmp_path, monkeypatch):
    from dub.workflows.generate.run import GenerateError, run_generate
    from tests.generate_helpers import random_demo_checkpoint

    monkeypatch.setenv("DUB_WEIGHTS_DIR", str(tmp_path / "no_weights"))
    manifest = tmp_path / "m.parquet"
    manifest.write_bytes(b"never read")
    for metric, file in (("desync", "synchformer_state_dict.pth"), ("clap", "music_speech_audioset")):
        cfg = GenerateConfig(
            out_dir=str(tmp_path / "out"),
            manifest=str(manifest),
            candidates=2,
            select=metric,
            checkpoint=str(random_demo_checkpoint(tmp_path / "demo.safetensors")),
        )
        with pytest.raises(GenerateError, match=rf"--select {metric}: .*{file}"):
            run_generate(cfg)
    assert not (tmp_path / "out").exists()


def test_generate_select_by_a_model_score_keeps_its_best(ray_session, tmp_path, monkeypatch):
    """--select desync: the model's score (a stand-in ranking candidates by position) decides,
    lower winning, and the rows say which metric chose."""
    import dub.workflows.generate.run as run_module
    from tests.generate_helpers import flash_clips_manifest, random_demo_checkpoint

    class PositionalDesync:
        def __init__(self, metric):
            assert metric == "desync"

        def scores(self, candidates, sample_rate, video_path, prompt):
            assert len(candidates) == 3 and sample_rate == 16000 and video_path.endswith(".mp4")
            return [0.4, 0.08, 0.2]

    monkeypatch.setattr(run_module, "ModelScorer", PositionalDesync)
    manifest = flash_clips_manifest(tmp_path, [[0.5, 1.3]], seconds=2.0)
    run_module.run_generate(
        GenerateConfig(
            out_dir=str(tmp_path / "out"),
            manifest=str(manifest),
            candidates=3,
            select="desync",
            checkpoint=str(random_demo_checkpoint(tmp_path / "demo.safetensors")),
        )
    )
    row = pq.read_table(tmp_path / "out" / "report.parquet").to_pylist()[0]
    assert (row["candidate_chosen"], row["candidate_metric"], row["candidate_scores"]) == (
        1,
        "desync",
        [0.4, 0.08, 0.2],
    )
