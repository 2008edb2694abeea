"""`dub generate --dry-run`: the plan a run would follow, read from the same manifest and output
folder a run reads, a calibrated time estimate, and nothing written."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from dub.cli import app
from dub.workflows.generate.config import GenerateConfig
from dub.workflows.generate.plan import plan_generate
from dub.workflows.ingest import IngestConfig, ingest
from tests.generate_helpers import random_demo_checkpoint
from tests.video_factory import make_video


@pytest.fixture(scope="module")
def clips(tmp_path_factory):
    root = tmp_path_factory.mktemp("plan")
    for k, seconds in enumerate((3.0, 12.0, 2.0)):
        make_video(root / "videos" / f"clip{k}.mp4", seconds=seconds, fps=25, size=(96, 64))
    (root / "videos" / "broken.mp4").write_bytes(b"\x00" * 64)
    manifest = root / "manifest.parquet"
    ingest([root / "videos"], manifest, IngestConfig(workers=0))
    return {"manifest": manifest, "checkpoint": random_demo_checkpoint(root / "demo.safetensors")}


def _cfg(clips, out, **kw) -> GenerateConfig:
    return GenerateConfig(
        out_dir=str(out), manifest=str(clips["manifest"]), checkpoint=str(clips["checkpoint"]), batch_size=2, **kw
    )


def test_a_dry_run_counts_what_a_run_would_do_and_writes_nothing(clips, tmp_path):
    out = tmp_path / "out"
    plan = plan_generate(_cfg(clips, out))
    assert not out.exists()
    # demo windows are 8 s with 1 s overlap: 3 s -> 1 window, 12 s -> 2, 2 s -> 1
    assert (plan.total, plan.skipped, plan.already_done, plan.pending, plan.pending_windows) == (4, 1, 0, 3, 4)
    assert plan.pending_audio_hours == pytest.approx(17.0 / 3600, rel=1e-3)
    assert plan.existing_run == "none" and plan.note == ""
    assert plan.load_s > 0 and plan.decode_s_per_window > 0 and plan.model_s_per_call > 0
    assert plan.estimated_wall_s >= plan.load_s + plan.model_s_per_call  # two calls of 2 windows, at least


def test_a_dry_run_after_part_of_a_run_plans_only_the_rest(clips, tmp_path, ray_session):
    from dub.workflows.generate.run import run_generate

    out = tmp_path / "out"
    run_generate(_cfg(clips, out, limit=1))
    before = sorted(p.name for p in out.rglob("*"))
    plan = plan_generate(_cfg(clips, out), calibrate=False)
    assert (plan.already_done, plan.pending, plan.existing_run) == (1, 2, "same configuration")
    assert plan.estimated_wall_s is None
    assert sorted(p.name for p in out.rglob("*")) == before  # still nothing written
    other = plan_generate(_cfg(clips, out, seed=7), calibrate=False)
    assert other.existing_run.startswith("another configuration") and "--overwrite" in other.existing_run
    # --overwrite clears the folder first, in the same configuration too: everything is pending
    again = plan_generate(_cfg(clips, out, overwrite=True), calibrate=False)
    assert (again.already_done, again.pending, again.existing_run) == (0, 3, "same configuration")


def test_cli_dry_run_prints_the_plan_as_json(clips, tmp_path):
    out = tmp_path / "out"
    result = CliRunner().invoke(
        app,
        [
            "generate",
            "-m",
            str(clips["manifest"]),
            "-o",
            str(out),
            "--checkpoint",
            str(clips["checkpoint"]),
            "--dry-run",
            "--json",
            "--limit",
            "2",
        ],
    )
    assert result.exit_code == 0, result.output
    plan = json.loads(result.stdout)
    assert plan["pending"] == 2 and plan["estimated_wall_s"] > 0 and not out.exists()
