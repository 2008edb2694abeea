"""The foley-synth table's bootstrap intervals (workflows/bench/foley_table.py)."""

from __future__ import annotations

import math

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from dub.workflows.bench.foley_table import bootstrap, fad_bootstrap, markdown, run_row


def test_interval_holds_the_mean_and_narrows_with_more_clips():
    rng = np.random.default_rng(0)
    small, large = rng.uniform(0, 1, 40), rng.uniform(0, 1, 400)
    est_s, lo_s, hi_s = bootstrap(small)
    est_l, lo_l, hi_l = bootstrap(large)
    assert lo_s < est_s < hi_s and lo_l < est_l < hi_l
    assert est_s == np.mean(small)
    # the width of a mean's interval shrinks like 1 / sqrt(n): 10x the clips, ~0.32x the width
    assert 0.2 < (hi_l - lo_l) / (hi_s - lo_s) < 0.45


def test_weights_pool_events_and_nans_are_left_out():
    acc = np.array([1.0, 0.0, np.nan])
    events = np.array([3.0, 1.0, 0.0])
    est, lo, hi = bootstrap(acc, events)
    assert est == 0.75  # 3 of 4 events
    assert 0.0 <= lo <= est <= hi <= 1.0
    assert all(math.isnan(v) for v in bootstrap(np.array([np.nan])))


def test_a_report_folder_becomes_a_row(tmp_path):
    pq.write_table(
        pa.table(
            {
                "status": ["ok", "ok", "failed"],
                "onset_f1": [1.0, 0.5, None],
                "onset_precision": [1.0, 0.5, None],
                "n_class_events": [2, 2, None],
                "n_class_correct": [2, 1, None],
            }
        ),
        tmp_path / "report.parquet",
    )
    row = run_row(tmp_path)
    assert row["clips"][0] == 2
    assert row["onset_f1"][0] == 0.75 and row["sound_class"][0] == 0.75
    assert math.isnan(row["av_align"][0])
    table = markdown({"x": row})
    assert "| x | 2 | 0.750 [" in table and "n/a" in table


def _journal(folder, generated, reference):
    """A report journal as `dub report` writes it, with log-mel embeddings per clip."""
    from dub.workflows.metrics.embeddings import ClipFeatures
    from dub.workflows.report.config import ScoredClip
    from dub.workflows.report.journal import ReportJournal

    journal = ReportJournal(folder, identity={"test": 1})
    clips = [
        (
            f"key{i}",
            ScoredClip(
                i,
                {"video_id": f"v{i}"},
                generated={"logmel": ClipFeatures(g[None], None)},
                reference={"logmel": ClipFeatures(r[None], None)},
            ),
        )
        for i, (g, r) in enumerate(zip(generated, reference))
    ]
    journal.add(clips)
    journal.flush()
    return [f"v{i}" for i in range(len(clips))]


def test_fad_interval_comes_from_the_journaled_embeddings(tmp_path):
    from dub.workflows.metrics.fad import frechet_distance

    rng = np.random.default_rng(1)
    reference = rng.normal(size=(80, 6))
    close, far = reference + rng.normal(scale=0.3, size=(80, 6)), reference + 2.0
    ids = _journal(tmp_path / "close", close, reference)
    est, low, high = fad_bootstrap(tmp_path / "close", ids)
    assert est == frechet_distance(close, reference)  # the same embeddings, the same function
    assert low < est < high
    _journal(tmp_path / "far", far, reference)
    far_est, far_low, _ = fad_bootstrap(tmp_path / "far", ids)
    assert far_est > high and far_low > high  # a shift of 2 per dimension adds ~24 to the distance
    # clips the report did not list (a failed row) and reports without references give n/a
    assert fad_bootstrap(tmp_path / "close", ids[:40])[0] == frechet_distance(close[:40], reference[:40])
    assert all(math.isnan(v) for v in fad_bootstrap(tmp_path / "none", ids))


def test_no_prompt_clears_prompts_and_keeps_every_other_column(tmp_path):
    """The benchmarks' no-prompt manifest: the same rows, read back by pyarrow, prompts null."""
    import pyarrow.parquet as pq

    from dub.manifests.io import manifest_from_rows, write_parquet_atomic
    from dub.workflows.bench.no_prompt import strip_prompts

    rows = [
        {"video_id": f"v{k}", "path": f"/clips/{k}.mp4", "status": "ok", "prompt": f"a red ball {k}"} for k in range(3)
    ]
    src = write_parquet_atomic(manifest_from_rows(rows), tmp_path / "in.parquet")
    out = pq.read_table(strip_prompts(src, tmp_path / "out.parquet"))
    before = pq.read_table(src)
    assert out.column("prompt").null_count == 3
    assert out.drop(["prompt"]).equals(before.drop(["prompt"]))
