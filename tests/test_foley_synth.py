"""foley-synth: deterministic clips whose audio onsets and visible events sit at the listed times."""

from __future__ import annotations

import json
import wave
from pathlib import Path

import av
import numpy as np
import pandas as pd
import pytest

from dub.workflows.datasets.foley_config import FoleySynthConfig
from dub.workflows.datasets.foley_scene import CLASS_LOOKS, SceneLayout, sample_clip
from dub.workflows.datasets.foley_synth import make_foley_synth, make_sample_clips, read_index
from dub.workflows.datasets.sound_bank import MAX_SOUND_SECONDS, SOUND_SOURCES, SOUNDS_DIR

PROJECT_ROOT = Path(__file__).resolve().parents[1]
SAMPLES_DIR = PROJECT_ROOT / "dub" / "samples"
BUILD = dict(seed=0, n_train=3, n_val=2, n_test=6, seconds=4.0)  # 11 clips, every class and motion


@pytest.fixture(scope="module")
def built(tmp_path_factory) -> tuple[Path, pd.DataFrame]:
    root = tmp_path_factory.mktemp("foley")
    return root, make_foley_synth(root, **BUILD)


def _decode_audio(path: str) -> tuple[np.ndarray, int]:
    with av.open(path) as container:
        stream = container.streams.audio[0]
        samples = np.concatenate([f.to_ndarray().reshape(-1) for f in container.decode(stream)])
        return samples, stream.rate


def _decode_frames(path: str) -> np.ndarray:
    with av.open(path) as container:
        return np.stack([f.to_ndarray(format="rgb24") for f in container.decode(video=0)])


def _energy_onsets(x: np.ndarray, sr: int, *, rise_db: float = 10.0, gate_dbfs: float = -35.0) -> np.ndarray:
    """Times where the 2 ms energy jumps `rise_db` above the loudest 2 ms of the 30 ms before.

    A 5 ms guard keeps the attack itself out of the reference; 50 ms refractory; quiet jumps
    (background noise) are gated out.
    """
    hop, win, look, guard = sr // 1000, sr // 500, 30, 5 + 2
    power = np.concatenate([[0.0], np.cumsum(x.astype(np.float64) ** 2)])
    starts = np.arange(0, len(x) - win, hop)
    level = 10 * np.log10((power[starts + win] - power[starts]) / win + 1e-12)
    onsets, last = [], -(10**9)
    for i in range(look + guard, len(level)):
        reference = level[i - look - guard : i - guard].max()
        if level[i] > gate_dbfs and level[i] - reference > rise_db and i - last > 50:
            onsets.append((starts[i] + win) / sr)
            last = i
    return np.array(onsets)


def _colour_mask(frames: np.ndarray, rgb: tuple[int, int, int], x0: int, x1: int, floor_top: int) -> np.ndarray:
    """(T, H, W') pixels of the object's colour inside its stage, above the floor."""
    stage = frames[:, :floor_top, x0:x1].astype(np.int32)
    return ((stage - np.array(rgb, dtype=np.int32)) ** 2).sum(axis=-1) < 60**2


# ---------------------------------------------------------------- determinism


def test_same_seed_same_clips_and_audio_different_seed_differs(built, tmp_path):
    root, index = built
    again = make_foley_synth(tmp_path / "again", **BUILD)
    other = make_foley_synth(tmp_path / "other", **{**BUILD, "seed": 1, "n_train": 1, "n_val": 1, "n_test": 1})

    assert index["events"].map(list).tolist() == again["events"].map(list).tolist()
    assert index["prompt"].tolist() == again["prompt"].tolist()
    for a, b in zip(index["path_with_audio"], again["path_with_audio"]):
        audio_a, _ = _decode_audio(a)
        audio_b, _ = _decode_audio(b)
        assert np.array_equal(audio_a, audio_b)
    for a, b in zip(index["path_silent"], again["path_silent"]):
        assert Path(a).read_bytes() == Path(b).read_bytes()

    first = index.groupby("split").head(1).set_index("split")
    other = other.set_index("split")
    for split in ("train", "val", "test"):
        assert list(first.loc[split, "events"]) != list(other.loc[split, "events"])
    audio_a, _ = _decode_audio(first.loc["test", "path_with_audio"])
    audio_b, _ = _decode_audio(other.loc["test", "path_with_audio"])
    assert not np.array_equal(audio_a[: len(audio_b)], audio_b[: len(audio_a)])


def test_a_split_does_not_change_when_another_grows():
    small = FoleySynthConfig(seed=4, n_train=2, n_val=1, n_test=3)
    large = FoleySynthConfig(seed=4, n_train=50, n_val=9, n_test=3)
    for i in range(3):
        assert sample_clip(small, "test", i) == sample_clip(large, "test", i)


# ---------------------------------------------------------------- files and splits


def test_splits_have_requested_sizes_and_no_overlap(built):
    root, index = built
    sizes = index.groupby("split").size().to_dict()
    assert sizes == {"train": BUILD["n_train"], "val": BUILD["n_val"], "test": BUILD["n_test"]}
    assert index["clip_id"].is_unique
    splits = json.loads((root / "splits.json").read_text())
    assert {k: len(v) for k, v in splits.items()} == sizes
    ids = [set(splits[s]) for s in ("train", "val", "test")]
    assert not (ids[0] & ids[1] or ids[0] & ids[2] or ids[1] & ids[2])
    on_disk = pd.read_parquet(root / "index.parquet")
    assert on_disk["clip_id"].tolist() == index["clip_id"].tolist()
    assert read_index(root)["path_silent"].tolist() == index["path_silent"].tolist()
    assert {"clip_id", "split", "path_with_audio", "path_silent", "class", "events"} <= set(on_disk.columns)
    for column in ("path_with_audio", "path_silent"):
        assert set(on_disk[column].str.split("/").str[0]) == {"train", "val", "test"}  # relative to root


def test_sidecars_agree_with_index_and_events_keep_their_spacing(built):
    _, index = built
    cfg = FoleySynthConfig(**BUILD)
    for row in index.to_dict("records"):
        for mp4 in (Path(row["path_with_audio"]), Path(row["path_silent"])):
            record = json.loads(mp4.with_suffix(".events.json").read_text())
            assert record["events"] == list(row["events"])
            assert record["class"] == row["class"] == record["objects"][0]["class"]
            assert record["split"] == row["split"]
            assert mp4.with_suffix(".txt").read_text().strip() == row["prompt"]
        events = np.array(row["events"])
        assert len(events) >= 2
        assert np.all(np.diff(events) >= cfg.min_gap_s)
        assert events[0] >= cfg.start_margin_s and events[-1] <= cfg.seconds - cfg.end_margin_s
        assert sorted(t for obj in record["objects"] for t in obj["events"]) == list(events)
        for obj in record["objects"]:
            look = CLASS_LOOKS[obj["class"]]
            assert f"{look.colour} {look.noun}" in row["prompt"]
    assert set(index["class"]) == set(CLASS_LOOKS)  # the fixture covers every class ...
    assert {m for ms in index["motions"] for m in ms} == {"bounce", "hit", "flash"}  # ... and motion
    assert (index["n_objects"] == 2).any()


def test_each_class_has_its_own_shape_and_colour():
    looks = list(CLASS_LOOKS.values())
    assert len({look.shape for look in looks}) == len(looks)
    assert len({look.colour for look in looks}) == len(looks)


# ---------------------------------------------------------------- media


def test_mp4s_open_and_last_the_requested_seconds(built):
    _, index = built
    seconds, fps, sr = BUILD["seconds"], 25, 16000
    for row in index.itertuples():
        with av.open(row.path_with_audio) as container:
            video, audio = container.streams.video[0], container.streams.audio[0]
            assert video.codec_context.name == "h264" and video.format.name == "yuv420p"
            assert audio.codec_context.name == "aac" and audio.rate == sr and audio.channels == 1
            assert abs(float(video.duration * video.time_base) - seconds) <= 1 / fps
            assert abs(float(audio.duration * audio.time_base) - seconds) <= 1 / fps
        with av.open(row.path_silent) as container:
            assert len(container.streams.audio) == 0
            video = container.streams.video[0]
            assert (video.width, video.height) == (224, 224)
            n_frames = sum(1 for _ in container.decode(video))
            assert abs(n_frames / fps - seconds) <= 1 / fps
        samples, _ = _decode_audio(row.path_with_audio)
        # AAC codes whole 1024-sample frames; the container's duration above is the exact one
        assert seconds * sr <= len(samples) < seconds * sr + 1024


def test_audio_onsets_fall_within_20ms_of_the_events(built):
    _, index = built
    for row in index.itertuples():
        samples, sr = _decode_audio(row.path_with_audio)
        onsets = _energy_onsets(samples, sr)
        events = np.array(row.events)
        assert len(onsets) == len(events), (row.clip_id, onsets, events)
        assert np.abs(onsets - events).max() <= 0.020, (row.clip_id, onsets, events)


def test_visual_events_happen_at_the_event_times(built):
    _, index = built
    fps = 25
    layout = SceneLayout(224, 224)
    checked = set()
    for row in index.itertuples():
        frames = _decode_frames(row.path_silent)
        times = np.arange(len(frames)) / fps
        record = json.loads(Path(row.path_silent).with_suffix(".events.json").read_text())
        for obj in record["objects"]:
            events = np.array(obj["events"])
            near = [int(np.argmin(np.abs(times - t))) for t in events]
            far_from_events = np.abs(times[:, None] - events[None, :]).min(axis=1) > 1.5 / fps
            x0, x1 = obj["region"]
            rgb = CLASS_LOOKS[obj["class"]].rgb
            if obj["motion"] in ("bounce", "hit"):
                mask = _colour_mask(frames, rgb, x0, x1, layout.floor_top)
                assert mask[near].any(axis=(1, 2)).all(), "the object is visible at its events"
                if obj["motion"] == "bounce":  # pixels between the object's lowest row and the floor
                    rows = np.where(mask.any(axis=2), np.arange(layout.floor_top)[None, :], -1)
                    gap = layout.floor_top - 1 - rows.max(axis=1)
                else:  # pixels between the object and the nearer wall
                    cols = np.arange(x1 - x0)[None, :]
                    inside = mask.any(axis=1)
                    left = np.where(inside, cols, 10**6).min(axis=1) - layout.wall
                    right = (x1 - x0 - layout.wall - 1) - np.where(inside, cols, -1).max(axis=1)
                    gap = np.minimum(left, right)
                for k in near:
                    assert gap[k] <= 12, (row.clip_id, obj["motion"], k, gap[k - 3 : k + 4])
                    around = [gap[j] for j in (k - 3, k + 3) if 0 <= j < len(gap)]
                    assert all(gap[k] < g for g in around), (row.clip_id, obj["motion"], gap[k - 3 : k + 4])
                assert (gap[far_from_events] > 1).all(), "no contact without an event"
            else:  # flash: the object and its halo brighten on the first frame at or after each event
                ys, xs = np.nonzero(_colour_mask(frames[:1], rgb, x0, x1, layout.floor_top)[0])  # unlit at t=0
                reach = 2 * layout.radius
                rows = slice(max(0, ys.min() - reach), ys.max() + reach)
                cols = slice(x0 + max(0, xs.min() - reach), x0 + xs.max() + reach)
                box = frames[:, rows, cols]
                brightness = box.astype(np.float32).mean(axis=(1, 2, 3))
                jumps = np.diff(brightness, prepend=brightness[0])
                first_after = [int(np.ceil(t * fps - 1e-9)) for t in events]
                for k in first_after:
                    assert jumps[k] > 3.0, (row.clip_id, k, jumps[k - 2 : k + 3])
                quiet = np.ones(len(frames), bool)
                quiet[first_after] = False
                assert (jumps[quiet] < 1.0).all(), "brightness rises only at flashes"
            checked.add(obj["motion"])
    assert checked == {"bounce", "hit", "flash"}


# ---------------------------------------------------------------- sounds, samples, CLI, errors


def test_every_sound_file_has_an_attribution_entry():
    attribution = (SOUNDS_DIR / "ATTRIBUTION.md").read_text()
    files = sorted(p for p in SOUNDS_DIR.iterdir() if p.name != "ATTRIBUTION.md")
    assert sorted(p.name for p in files) == sorted(s.file_name for s in SOUND_SOURCES)
    for source in SOUND_SOURCES:
        entry = next((line for line in attribution.splitlines() if f"`{source.file_name}`" in line), None)
        assert entry is not None, f"{source.file_name} has no attribution line"
        for fact in (source.original_file, source.author, source.source_url, "CC0"):
            assert fact in entry, f"{source.file_name}: attribution line lacks {fact!r}"
    assert "sonic-pi-samples" in attribution
    assert sum(p.stat().st_size for p in files) < 300_000
    for path in files:
        with wave.open(str(path)) as f:
            assert (f.getframerate(), f.getnchannels(), f.getsampwidth()) == (16000, 1, 2)
            assert f.getnframes() <= MAX_SOUND_SECONDS * 16000


def test_bundled_samples_are_small_silent_and_reproducible(tmp_path):
    clips = sorted(SAMPLES_DIR.glob("*.mp4"))
    assert len(clips) == 3
    assert sum(p.stat().st_size for p in SAMPLES_DIR.iterdir()) < 1_500_000
    classes = set()
    for clip in clips:
        with av.open(str(clip)) as container:
            assert len(container.streams.audio) == 0
            video = container.streams.video[0]
            assert 4.0 <= float(video.duration * video.time_base) <= 8.0
        record = json.loads(clip.with_suffix(".events.json").read_text())
        assert record["split"] == "test" and record["events"]
        assert clip.with_suffix(".txt").read_text().strip() == record["prompt"]
        classes.add(record["class"])
    assert len(classes) == 3
    assert "dub dataset samples" in (SAMPLES_DIR / "README.md").read_text()

    remade = make_sample_clips(tmp_path)  # the README's command with its defaults
    assert sorted(p.name for p in remade) == [p.name for p in clips]
    for path in remade:
        bundled = (SAMPLES_DIR / path.name).with_suffix(".events.json")
        assert path.with_suffix(".events.json").read_text() == bundled.read_text()


def test_cli_builds_a_dataset(tmp_path):
    import typer
    from typer.testing import CliRunner

    from dub.commands.dataset import register

    app = typer.Typer()
    register(app)
    runner = CliRunner()
    result = runner.invoke(
        app,
        [
            "dataset",
            "foley-synth",
            "-o",
            str(tmp_path),
            "--seed",
            "3",
            "--train",
            "1",
            "--val",
            "0",
            "--test",
            "1",
            "--seconds",
            "2",
        ],
    )
    assert result.exit_code == 0, result.output
    assert "clips/s" in result.output
    index = read_index(tmp_path)
    assert index["split"].tolist() == ["train", "test"]
    assert all(Path(p).is_file() for p in index["path_with_audio"])

    bad = runner.invoke(app, ["dataset", "foley-synth", "-o", str(tmp_path / "bad"), "--train", "-1"])
    assert bad.exit_code != 0
    assert "n_train" in bad.output


@pytest.mark.parametrize(
    "overrides, message",
    [
        (dict(size=(223, 224)), "even"),
        (dict(seconds=0.9), "seconds"),
        (dict(n_test=-2), "n_test"),
        (dict(gain_range=(0.0, 1.0)), "gain_range"),
        (dict(two_object_prob=1.5), "two_object_prob"),
    ],
)
def test_bad_config_says_what_is_wrong(overrides, message):
    with pytest.raises(ValueError, match=message):
        FoleySynthConfig(**overrides)
