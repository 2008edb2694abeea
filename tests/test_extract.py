"""`dub extract` on real foley-synth clips (demo encoders + codec, 2 s windows), read back with
WebDataset; resume; and `dub extract` -> `dub train` end to end through the CLI."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from dub.cli import app
from dub.model.demo import DemoCodec, DemoEncoders
from dub.workflows.datasets.foley_synth import make_foley_synth
from dub.workflows.extract.config import ExtractConfig
from dub.workflows.extract.run import ExtractError, run_extract
from dub.workflows.extract.sample import ARRAY_FIELDS, EMPTY_TEXT_FILE
from dub.workflows.ingest import IngestConfig, ingest
from dub.workflows.media.audio import encode_audio_file, read_audio
from dub.workflows.media.decode import FrameTarget, decode_window
from dub.workflows.media.synth import synth_audio
from tests.train_helpers import assert_evaluated_every_step

WINDOW_S = 2.0
# demo bundle sizes (DEMO_STACK_WIDTHS, model/network/config.py) for a 2 s window
SHAPES = {"latent_mean": (63, 20), "latent_std": (63, 20), "clip_f": (16, 64), "sync_f": (40, 64), "text_f": (8, 64)}


@pytest.fixture(scope="module")
def inputs(tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("extract")
    index = make_foley_synth(root / "foley", seed=0, n_train=3, n_val=0, n_test=0, seconds=4.0, size=(128, 128))
    manifest = root / "manifest.parquet"
    ingest([root / "foley" / "train" / "audio"], manifest, IngestConfig(workers=0))
    audio_dir = root / "audio_only"
    encode_audio_file(synth_audio("tone", 2.5, 16000), 16000, audio_dir / "hum.flac", codec="flac")
    (audio_dir / "hum.txt").write_text("a steady hum\n")
    encode_audio_file(synth_audio("tone", 2.5, 16000), 16000, audio_dir / "uncaptioned.flac", codec="flac")
    return {"root": root, "index": index, "manifest": manifest, "audio_dir": audio_dir}


@pytest.fixture(scope="module")
def extracted(ray_session, inputs) -> dict:
    out = inputs["root"] / "shards"
    result = CliRunner().invoke(
        app,
        [
            "extract",
            "-m",
            str(inputs["manifest"]),
            "--audio-dir",
            str(inputs["audio_dir"]),
            "-o",
            str(out),
            "--window",
            str(WINDOW_S),
            "--batch-size",
            "4",
            "--shard-size",
            "4",
            "--json",
        ],
    )
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    return {"out": out, "summary": summary}


def _read_all(out: Path) -> list[dict]:
    import webdataset as wds

    shards = sorted(str(p) for p in out.glob("shard-*.tar"))
    return list(wds.WebDataset(shards, shardshuffle=False, empty_check=False).decode())


def test_shards_hold_the_documented_fields_and_shapes(extracted, inputs):
    summary = extracted["summary"]
    # 3 clips x 2 windows, plus the captioned 2.5 s audio file in 2 windows; the uncaptioned one skipped
    assert summary["windows_written"] == 8 and summary["windows_failed"] == 0
    assert summary["skip_reasons"] == {"audio-only without a caption": 1}
    samples = _read_all(extracted["out"])
    assert len(samples) == 8 and len({s["__key__"] for s in samples}) == 8
    prompts = {row["clip_id"]: row["prompt"] for _, row in inputs["index"].iterrows()}
    for sample in samples:
        meta = sample["json"]
        assert sample["__key__"] == f"{meta['video_id']}_w{meta['window_index']}" and "." not in sample["__key__"]
        for name in ARRAY_FIELDS:
            array = sample[f"{name}.npy"]
            assert array.shape == SHAPES[name] and array.dtype == np.float32, name
        assert meta["length_s"] == WINDOW_S and meta["sample_rate"] == 16000 and meta["bundle"] == "demo"
        assert meta["start_s"] in (0.0, 0.5, 2.0) and "DemoCodec" in meta["codec"]
        if meta["has_video"]:
            assert Path(meta["source"]).stem in prompts and meta["prompt"] == prompts[Path(meta["source"]).stem]
            assert np.abs(sample["clip_f.npy"]).sum() > 0
        else:
            assert meta["prompt"] == "a steady hum" and Path(meta["source"]).name == "hum.flac"
            assert not sample["clip_f.npy"].any() and not sample["sync_f.npy"].any()
    assert sum(not s["json"]["has_video"] for s in samples) == 2
    empty_text = np.load(extracted["out"] / EMPTY_TEXT_FILE)
    # the same deterministic encoder on the same input, one row either way: bit-identical
    assert np.array_equal(empty_text, DemoEncoders(64, 64, 64, 8).text_features([""])[0].numpy())


def test_arrays_are_the_codec_and_encoders_of_the_window(extracted):
    sample = next(s for s in _read_all(extracted["out"]) if s["json"]["has_video"] and s["json"]["window_index"] == 1)
    meta = sample["json"]
    start = meta["start_s"]
    audio = read_audio(meta["source"], sample_rate=16000, start_s=start, duration_s=WINDOW_S)
    mean, std = DemoCodec(latent_dim=20).encode(torch.from_numpy(audio)[None])
    # extract ran batches of 4 windows, this is one: the float32 STFT/mel GEMMs may block
    # otherwise, a few u on log-mel latents of order 1 (their floor bounds the quiet bins);
    # the std is the codec's constant, stored exactly
    np.testing.assert_allclose(sample["latent_mean.npy"], mean[0].numpy(), atol=1e-5)
    np.testing.assert_allclose(sample["latent_std.npy"], std[0].numpy(), atol=1e-7)
    frames, _ = decode_window(
        meta["source"], start, WINDOW_S, [FrameTarget(8.0, 384, "resize"), FrameTarget(25.0, 224, "crop")]
    )
    encoders = DemoEncoders(64, 64, 64, 8)
    clip = encoders.clip_features(torch.from_numpy(frames[0][:16])[None])[0].numpy()
    sync = encoders.sync_features(torch.from_numpy(frames[1][:50])[None])[0].numpy()
    # the same frames and encoders, batched otherwise: float32 rounding on features of order 1
    np.testing.assert_allclose(sample["clip_f.npy"], clip, atol=1e-5)
    np.testing.assert_allclose(sample["sync_f.npy"], sync, atol=1e-5)
    np.testing.assert_allclose(sample["text_f.npy"], encoders.text_features([meta["prompt"]])[0].numpy(), atol=1e-6)


def test_rerun_resumes_only_the_missing_windows(extracted, inputs, tmp_path):
    out = tmp_path / "shards"
    shutil.copytree(extracted["out"], out)
    cfg = ExtractConfig(
        out_dir=str(out),
        manifest=str(inputs["manifest"]),
        audio_dir=str(inputs["audio_dir"]),
        window_s=WINDOW_S,
        batch_size=4,
        shard_size=4,
    )
    again = run_extract(cfg)
    assert again.windows_written == 0 and again.windows_done_before == 8
    all_keys = {s["__key__"] for s in _read_all(out)}
    sorted(out.glob("shard-*.tar"))[0].unlink()  # a lost shard
    remaining = {s["__key__"] for s in _read_all(out)}
    redone = run_extract(cfg)
    assert redone.windows_written == len(all_keys) - len(remaining) > 0
    assert redone.windows_done_before == len(remaining)
    keys = [s["__key__"] for s in _read_all(out)]
    assert len(keys) == len(set(keys)) == 8 and set(keys) == all_keys  # every window exactly once


def test_rerun_with_other_settings_is_refused(extracted, inputs, tmp_path):
    out = tmp_path / "shards"
    shutil.copytree(extracted["out"], out)
    with pytest.raises(ExtractError, match="other settings.*--overwrite"):
        run_extract(ExtractConfig(out_dir=str(out), manifest=str(inputs["manifest"]), window_s=3.0))


def test_extract_then_train_end_to_end(extracted, tmp_path):
    """`dub train` (CLI, flow-matching objective, bf16 autocast, one CPU worker) on the extracted shards."""
    from dub.model.weights.checkpoint import load_checkpoint

    config = tmp_path / "run.toml"
    config.write_text(
        "log_every = 1\nwarmup_steps = 1\nshuffle_buffer = 4\nsteps = 500\n"
        "[architecture]\nhidden_dim = 32\ndepth = 2\nfused_depth = 1\nnum_heads = 2\n"
    )
    result = CliRunner().invoke(
        app,
        [
            "train",
            "--shards",
            str(extracted["out"]),
            "--name",
            "e2e",
            "--storage",
            str(tmp_path / "runs"),
            "--workers",
            "1",
            "--objective",
            "flow-matching",
            "--config",
            str(config),
            "--batch-size",
            "4",
            "--steps",
            "2",
            "--checkpoint-every",
            "2",
            "--bf16",
            "-q",
        ],
    )  # --steps 2 wins over the file's 500
    assert result.exit_code == 0, result.output
    model_path = Path(result.stdout.strip().splitlines()[-1])
    assert model_path.name == "model.safetensors" and model_path.is_file()
    model, meta = load_checkpoint(model_path)
    assert meta["step"] == 2 and meta["window_s"] == WINDOW_S and meta["bundle"] == "demo"
    assert (model.config.latent_seq_len, model.config.clip_dim, model.config.text_seq_len) == (63, 64, 8)


@pytest.mark.slow
def test_training_evaluates_checkpoints_on_a_validation_manifest(ray_session, tmp_path):
    """--val-manifest/--sample-every: each chosen checkpoint generates the validation clips
    (`dub generate --checkpoint`) and is scored by `dub report`. Needs the bundle's 8 s windows."""
    from dub.workflows.train.config import TrainConfig
    from dub.workflows.train.run import run_train

    make_foley_synth(tmp_path / "foley", seed=1, n_train=2, n_val=1, n_test=0, seconds=8.0, size=(128, 128))
    ingest([tmp_path / "foley" / "train" / "audio"], tmp_path / "train.parquet", IngestConfig(workers=0))
    ingest([tmp_path / "foley" / "val" / "audio"], tmp_path / "val.parquet", IngestConfig(workers=0))
    # shards made with --resize exact: evaluation must generate from frames resized the same way
    run_extract(
        ExtractConfig(
            out_dir=str(tmp_path / "shards"),
            manifest=str(tmp_path / "train.parquet"),
            batch_size=2,
            shard_size=2,
            resize="exact",
        )
    )
    result = run_train(
        TrainConfig(
            shards=str(tmp_path / "shards"),
            storage_path=str(tmp_path / "runs"),
            workers=1,
            architecture={"hidden_dim": 32},
            batch_size=2,
            steps=2,
            checkpoint_every=1,
            log_every=1,
            warmup_steps=1,
            sample_every=1,
            val_manifest=str(tmp_path / "val.parquet"),
        )
    )
    assert_evaluated_every_step(result, [1, 2], resize="exact")


def _foley_clip(inputs) -> str:
    import pyarrow.parquet as pq

    return sorted(r["path"] for r in pq.read_table(inputs["manifest"]).to_pylist())[0]


def test_decode_training_windows_passes_the_resizer_on(inputs):
    """The frames of `decode_training_windows(..., backend=...)` are `decode_window`'s with that
    backend (128x128 source: both targets resize), the audio is the same either way."""
    from dub.workflows.extract.stages import decode_training_windows

    path = _foley_clip(inputs)
    rows = {
        "video_id": ["v"],
        "window_index": [1],
        "num_windows": [2],
        "start_s": [2.0],
        "valid_s": [WINDOW_S],
        "prompt": [""],
        "negative_prompt": [""],
        "seed": [0],
        "path": [path],
    }
    batch = {k: np.array(v, dtype=object if isinstance(v[0], str) else None) for k, v in rows.items()}
    targets = [FrameTarget(8.0, 384, "resize"), FrameTarget(25.0, 224, "crop")]
    out = {}
    for backend in ("swscale", "torch"):
        out[backend] = decode_training_windows(
            dict(batch),
            clip_fps=8.0,
            clip_size=384,
            sync_fps=25.0,
            sync_size=224,
            window_s=WINDOW_S,
            sample_rate=16000,
            backend=backend,
        )
        assert list(out[backend]["error"]) == [""]
        frames, _ = decode_window(path, 2.0, WINDOW_S, targets, backend=backend)
        # the same decoder and resizer on the same file: bit-identical frames
        np.testing.assert_array_equal(out[backend]["clip_frames"][0], frames[0])
        np.testing.assert_array_equal(out[backend]["sync_frames"][0], frames[1])
    np.testing.assert_array_equal(out["torch"]["audio"], out["swscale"]["audio"])
    assert not np.array_equal(out["torch"]["clip_frames"], out["swscale"]["clip_frames"])


def test_resize_enters_the_identity_only_when_exact():
    fast = ExtractConfig(out_dir="o", manifest="m.parquet")
    # the identity shards were made under before --resize existed: they still resume
    assert fast.identity(8.0) == {
        "model": "demo",
        "window_s": 8.0,
        "overlap_s": 0.0,
        "min_fraction": 0.9,
        "feature_dtype": "float32",
    }
    assert fast.decode_backend == "swscale" and fast.as_dict()["resize"] == "fast"
    exact = ExtractConfig(out_dir="o", manifest="m.parquet", resize="exact")
    assert exact.identity(8.0) == {**fast.identity(8.0), "resize": "exact"} and exact.decode_backend == "torch"
    with pytest.raises(ValueError, match=r"--resize must be one of \('fast', 'exact'\).*'bogus'"):
        ExtractConfig(out_dir="o", manifest="m.parquet", resize="bogus")


def test_cli_resize_exact_features_come_from_torchvision_frames(ray_session, extracted, inputs, tmp_path):
    """`dub extract --resize exact`: the stored CLIP/sync features are the encoders' features of
    torch-resized frames (the decoding tasks got the option); extract.json records it, and the
    fast run's directory refuses it."""
    out = tmp_path / "exact"
    result = CliRunner().invoke(
        app,
        [
            "extract",
            "-m",
            str(inputs["manifest"]),
            "-o",
            str(out),
            "--window",
            str(WINDOW_S),
            "--limit",
            "1",
            "--resize",
            "exact",
            "--json",
        ],
    )
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["windows_written"] == 2
    info = json.loads((out / "extract.json").read_text())
    assert info["identity"]["resize"] == "exact" and info["config"]["resize"] == "exact"
    encoders = DemoEncoders(64, 64, 64, 8)
    targets = [FrameTarget(8.0, 384, "resize"), FrameTarget(25.0, 224, "crop")]
    for sample in _read_all(out):
        meta = sample["json"]
        errors = {}
        for backend in ("swscale", "torch"):
            frames, _ = decode_window(meta["source"], meta["start_s"], WINDOW_S, targets, backend=backend)
            clip = encoders.clip_features(torch.from_numpy(frames[0][:16])[None])[0].numpy()
            sync = encoders.sync_features(torch.from_numpy(frames[1][:50])[None])[0].numpy()
            errors[backend] = max(
                float(np.abs(sample["clip_f.npy"] - clip).max()), float(np.abs(sample["sync_f.npy"] - sync).max())
            )
        # torch-resized frames give the stored features to float32 rounding of another batching
        # (as above); swscale's frames differ by grey levels, which move them by > 1e-3
        assert errors["torch"] < 1e-5 and errors["swscale"] > 1e-3, errors
    fast_dir = tmp_path / "fast"
    fast_dir.mkdir()
    shutil.copy(extracted["out"] / "extract.json", fast_dir / "extract.json")
    with pytest.raises(ExtractError, match="other settings"):
        run_extract(
            ExtractConfig(out_dir=str(fast_dir), manifest=str(inputs["manifest"]), window_s=WINDOW_S, resize="exact")
        )


def test_float16_features_halve_the_bytes_and_decode_to_float32():
    from dub.workflows.extract.sample import decode_sample, encode_sample

    rng = np.random.default_rng(0)
    arrays = {name: rng.standard_normal(shape).astype(np.float32) for name, shape in SHAPES.items()}
    meta = {
        "video_id": "ab12",
        "window_index": 0,
        "start_s": 0.0,
        "length_s": 2.0,
        "has_video": True,
        "sample_rate": 16000,
    }
    full, half = encode_sample(arrays, meta), encode_sample(arrays, meta, "float16")
    assert len(half["clip_f.npy"]) < 0.6 * len(full["clip_f.npy"])
    assert len(half["latent_mean.npy"]) == len(full["latent_mean.npy"])  # latents stay float32
    decoded = decode_sample({"__key__": "ab12_w0", **half})
    assert decoded["clip_f"].dtype == np.float32 and decoded["meta"]["feature_dtype"] == "float16"
    # float16 keeps 11 bits: 2^-11 = 4.9e-4 relative, values up to ~4 (atol for those near 0)
    np.testing.assert_allclose(decoded["clip_f"], arrays["clip_f"], rtol=1e-3, atol=1e-3)
    np.testing.assert_array_equal(decoded["latent_mean"], arrays["latent_mean"])  # stored as float32: exact


def test_shard_set_knows_how_its_frames_were_resized(tmp_path):
    """Training's evaluation generates with the shards' --resize (read from extract.json)."""
    from dub.workflows.train.data import ShardSet

    shards = ShardSet(paths=(), shapes={}, first_meta={}, directory=str(tmp_path), num_samples=0)
    assert shards.resize == "fast"  # no extract.json: the default
    (tmp_path / "extract.json").write_text(json.dumps({"identity": {"resize": "exact"}}))
    assert shards.resize == "exact"
    (tmp_path / "extract.json").write_text(json.dumps({"identity": {"window_s": 8.0}}))  # made before --resize
    assert shards.resize == "fast"
    assert ShardSet(paths=(), shapes={}, first_meta={}, directory=None, num_samples=0).resize == "fast"
