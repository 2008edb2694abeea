"""Sound-class accuracy (workflows/metrics/sound_class.py) on foley-synth soundtracks rendered by
the dataset's own code: the recording an object's look names is found at every event, a
soundtrack made with the wrong recordings is caught, and silence is not a class."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest

from dub.workflows.datasets.foley_config import FoleySynthConfig
from dub.workflows.datasets.foley_scene import render_audio, sample_clip
from dub.workflows.datasets.sound_bank import SOUND_CLASSES, load_sound_bank
from dub.workflows.metrics.sound_class import load_event_classes, score_sound_classes

CFG = FoleySynthConfig(seed=3, n_test=12, two_object_prob=0.5)


def events_of(clip) -> list[tuple[float, str]]:
    return sorted((t, obj.sound_class) for obj in clip.objects for t in obj.events)


def test_every_event_of_the_recordings_gets_its_class():
    bank = load_sound_bank(CFG.sample_rate)
    correct = total = 0
    for index in range(CFG.n_test):
        clip = sample_clip(CFG, "test", index)
        scores = score_sound_classes(render_audio(clip, bank), CFG.sample_rate, events_of(clip))
        correct, total = correct + scores.correct, total + scores.events
    assert total >= 24
    assert correct == total


def test_the_wrong_recording_is_caught():
    """Each object sounds like the NEXT class in the list: (almost) every event is wrong."""
    bank = load_sound_bank(CFG.sample_rate)
    correct = total = 0
    for index in range(CFG.n_test):
        clip = sample_clip(CFG, "test", index)
        swapped = dataclasses.replace(
            clip,
            objects=tuple(
                dataclasses.replace(o, sound_class=SOUND_CLASSES[(SOUND_CLASSES.index(o.sound_class) + 1) % 6])
                for o in clip.objects
            ),
        )
        scores = score_sound_classes(render_audio(swapped, bank), CFG.sample_rate, events_of(clip))
        correct, total = correct + scores.correct, total + scores.events
        assert all(p != e for p, e in zip(scores.predicted, scores.expected))
    assert total >= 24 and correct == 0


def test_silence_gets_one_class_for_every_event():
    """A flat profile is no sound at all: every event gets the same class, so silence cannot
    score above the share of the commonest class."""
    clip = sample_clip(CFG, "test", 0)
    wav = np.zeros(clip.n_samples, dtype=np.float32)
    scores = score_sound_classes(wav, CFG.sample_rate, events_of(clip))
    assert scores.events == len(clip.events) and len(set(scores.predicted)) == 1


def test_sidecar_classes_are_read_and_a_sidecar_without_them_gives_none(tmp_path):
    sidecar = tmp_path / "a.events.json"
    sidecar.write_text(
        json.dumps(
            {"events": [1.0, 2.5], "objects": [{"class": "tom", "events": [2.5]}, {"class": "snap", "events": [1.0]}]}
        )
    )
    assert load_event_classes(sidecar) == [(1.0, "snap"), (2.5, "tom")]
    sidecar.write_text(json.dumps({"events": [1.0]}))
    assert load_event_classes(sidecar) is None


@pytest.mark.parametrize("rate", [22050, 44100])
def test_other_sample_rates_are_resampled(rate):
    from dub.workflows.metrics.onsets import resample

    bank = load_sound_bank(CFG.sample_rate)
    clip = sample_clip(CFG, "test", 1)
    wav = resample(render_audio(clip, bank), CFG.sample_rate, rate)
    scores = score_sound_classes(wav, rate, events_of(clip))
    assert scores.correct == scores.events


def test_dub_report_scores_each_event_against_the_recording_its_object_names(tmp_path):
    """Through `run_report`: foley-synth clips whose 'generated' audio is their own recording
    (two objects in at least one) get sound_class_acc 1 per clip, the pooled accuracy and event
    count in the summary, and the column in report.parquet."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from dub.manifests.io import write_parquet_atomic
    from dub.manifests.schema import REPORT_SCHEMA
    from dub.workflows.datasets.foley_synth import make_foley_synth
    from dub.workflows.report.config import ReportConfig
    from dub.workflows.report.run import run_report

    index = make_foley_synth(
        tmp_path / "foley", seed=5, n_train=0, n_val=0, n_test=3, seconds=4.0, size=(64, 64), two_object_prob=0.5
    )
    assert index["n_objects"].max() == 2  # one sidecar with two objects of different classes
    rows, events = [], 0
    for clip in index.itertuples():
        silent = Path(clip.path_silent)
        rows.append(
            {
                "video_id": clip.clip_id.replace("-", ""),
                "path": str(silent),
                "status": "done",
                "output_mp4": clip.path_with_audio,
            }
        )
        events += len(load_event_classes(silent.with_name(silent.stem + ".events.json")))
    (tmp_path / "run").mkdir()
    write_parquet_atomic(pa.Table.from_pylist(rows, schema=REPORT_SCHEMA), tmp_path / "run" / "report.parquet")
    result = run_report(
        ReportConfig(
            run_dir=str(tmp_path / "run"),
            out_dir=str(tmp_path / "out"),
            backends=("logmel",),
            write_html=False,
            skip=("desync", "clap", "ib"),
        )
    )
    metrics = result.summary["metrics"]
    assert metrics["sound_class_events"] == events >= 6
    assert metrics["sound_class_acc_pooled"] == 1.0 and metrics["sound_class_acc_mean"] == 1.0
    table = pq.read_table(tmp_path / "out" / "report.parquet").to_pydict()
    assert table["sound_class_acc"] == [1.0] * 3 and sum(table["n_class_events"]) == events
