"""The command line's conventions: fixed choices are Enums typer checks at parse time (and they
match what the workflows accept), and `dub train` takes its knobs from a TOML file."""

from __future__ import annotations

import tomllib

import pytest
from typer.testing import CliRunner

from dub.cli import app
from dub.commands import choices


def test_every_choice_set_is_the_one_its_workflow_accepts():
    """The Enums repeat the workflows' constants (so `dub --help` imports nothing heavy): they
    must not drift apart, or a choice the CLI offers would fail later, or one the code has
    would be unreachable."""
    from dub.model.flow.guidance import RESCALE_MODES
    from dub.model.runtime.generator import SAMPLERS
    from dub.workflows.extract.sample import FEATURE_DTYPES
    from dub.workflows.generate.candidates import SELECT_METRICS
    from dub.workflows.generate.config import AUDIO_CODECS, FORMATS
    from dub.workflows.media.decode import RESIZE_BACKENDS
    from dub.workflows.report.config import ALL_BACKENDS, SKIPPABLE
    from dub.workflows.train.config import OBJECTIVES

    pairs = [
        (choices.Resize, RESIZE_BACKENDS),
        (choices.Sampler, SAMPLERS),
        (choices.RescaleMode, RESCALE_MODES),
        (choices.OutputFormat, FORMATS),
        (choices.AudioCodec, AUDIO_CODECS),
        (choices.FeatureDtype, FEATURE_DTYPES),
        (choices.Objective, OBJECTIVES),
        (choices.ReportBackend, ALL_BACKENDS),
        (choices.Skippable, SKIPPABLE),
        (choices.SelectMetric, SELECT_METRICS),
    ]
    for enum, accepted in pairs:
        assert sorted(choices.values(enum)) == sorted(accepted), enum.__name__


@pytest.mark.parametrize(
    "args, listed",
    [
        (["generate", "--format", "zip"], ["mp4", "wds", "both"]),
        (["generate", "--rescale-mode", "cosine"], ["std", "proj", "none"]),
        (["report", "run", "-o", "out", "--skip", "fad"], ["desync", "clap", "ib"]),
        (["train", "--objective", "ddpm"], ["meanflow", "flow-matching"]),
    ],
)
def test_a_bad_choice_is_refused_before_any_work_and_the_choices_are_listed(args, listed, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # no manifest here: only parsing can have refused it
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 2
    assert all(f"'{c}'" in result.output for c in listed), result.output


def test_train_write_config_then_config_round_trip_with_flags_winning(tmp_path):
    from dub.workflows.train.config import TrainConfig, read_config_file

    written = tmp_path / "run.toml"
    args = ["train", "--write-config", str(written), "--steps", "300", "--lr", "3e-4", "--compile"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    data = tomllib.loads(written.read_text())
    assert data["steps"] == 300 and data["lr"] == 3e-4 and data["meanflow"]["flow_matching_ratio"] == 0.75
    assert data["compile"] is True
    assert "workers" not in data  # None ("one per GPU") is left out, not frozen into the file

    text = written.read_text()
    assert "warmup_steps = 1000" in text and "[architecture]\n" in text  # the empty table is there to fill in
    edited = text.replace("warmup_steps = 1000", "warmup_steps = 7").replace(
        "[architecture]\n", "[architecture]\ndepth = 3\n"
    )
    written.write_text(edited)
    again = tmp_path / "again.toml"
    result = CliRunner().invoke(app, ["train", "--config", str(written), "--write-config", str(again), "--steps", "9"])
    assert result.exit_code == 0, result.output
    config = TrainConfig.from_dict(read_config_file(again))
    assert (config.steps, config.lr, config.warmup_steps, config.architecture) == (9, 3e-4, 7, {"depth": 3})


def test_train_config_with_an_unknown_setting_is_refused(tmp_path):
    config = tmp_path / "run.toml"
    config.write_text("warmup = 100\n[meanflow]\nratio = 0.5\n")
    result = CliRunner().invoke(app, ["train", "--config", str(config), "--write-config", str(tmp_path / "x.toml")])
    assert result.exit_code == 2
    assert "warmup" in result.output and "meanflow.ratio" in result.output
    assert not (tmp_path / "x.toml").exists()


@pytest.mark.parametrize(
    "args",
    [
        ["train", "--init", "s3://bucket/weights.safetensors", "--write-config", "run.toml"],
        ["train", "--val-manifest", "s3://bucket/val.parquet", "--write-config", "run.toml"],
    ],
)
def test_object_storage_uris_are_refused_where_an_option_takes_local_paths_only(args, tmp_path, monkeypatch):
    """pathlib would turn s3://bucket/out into a local folder "s3:/bucket/out" and the run would
    write there; an option that reads and writes local files only refuses the URI before doing
    anything and says what to do."""
    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 2
    text = " ".join(result.output.replace("│", " ").split())
    assert "locations are not supported by this option" in text and "mount the bucket" in text
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    "args",
    [
        ["ingest", "ftp://host/videos", "-o", "manifest.parquet"],
        ["ingest", "videos", "-o", "http://host/manifest.parquet"],
        ["generate", "-m", "hdfs://cluster/manifest.parquet", "-o", "out"],
        ["generate", "-m", "manifest.parquet", "-o", "ftp://host/out"],
        ["extract", "-m", "manifest.parquet", "-o", "ftp://host/shards"],
    ],
)
def test_uris_of_stores_dub_cannot_write_are_refused_with_the_ones_it_can(args, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 2
    text = " ".join(result.output.replace("│", " ").split())
    assert "locations are not supported" in text and "s3://" in text and "gs://" in text
    assert list(tmp_path.iterdir()) == []
