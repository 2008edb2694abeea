"""`dub train`: Ray Train (2 CPU DDP workers) on real tiny shards, checkpoints, resume, bad shards."""

from __future__ import annotations

import dataclasses
import json
import math
import tarfile
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from dub.model.flow.meanflow import MeanFlowConfig
from dub.model.network.config import get_preset
from dub.model.network.transformer import MFMJT
from dub.model.weights.checkpoint import load_checkpoint, load_state_dict_file, save_checkpoint
from dub.workflows.train.config import TrainConfig
from dub.workflows.train.data import (
    ShardError,
    check_shards,
    collate,
    iter_samples,
    memory_batches,
    sample_stream,
    worker_share,
)
from dub.workflows.train.loop import build_network, conditions, lr_factor
from dub.workflows.train.run import TrainError, resolve_network, run_train
from tests.train_helpers import (
    SHAPES,
    SHAPES_8S,
    TINY_ARCHITECTURE,
    assert_evaluated_every_step,
    write_synthetic_shards,
)


@pytest.fixture(scope="module")
def shard_dir(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("train_shards") / "shards"
    write_synthetic_shards(out, samples=12, shard_size=4)
    return out


def tiny_config(shards: Path, runs: Path, **changes) -> TrainConfig:
    base = TrainConfig(
        shards=str(shards),
        name="tiny",
        storage_path=str(runs),
        workers=2,
        preset="small_16k",
        architecture=TINY_ARCHITECTURE,
        batch_size=2,
        steps=2,
        checkpoint_every=2,
        log_every=1,
        warmup_steps=1,
        lr=1e-3,
        shuffle_buffer=4,
        stats_samples=12,
    )
    return dataclasses.replace(base, **changes)


def _state(checkpoint: Path) -> dict:
    return torch.load(checkpoint / "train_state.pt", map_location="cpu", weights_only=True)


def _adam_step(state: dict) -> float:
    return float(next(iter(state["optimizer"]["state"].values()))["step"])


def test_two_workers_checkpoint_then_resume(ray_session, shard_dir, tmp_path):
    cfg = tiny_config(shard_dir, tmp_path / "runs")
    shown: list[dict] = []
    first = run_train(cfg, on_metrics=shown.append)  # the console callback sees each logged row
    assert [row["step"] for row in shown] == [1.0, 2.0]
    ckpt2 = Path(first.checkpoint_dir)
    assert first.workers == 2 and first.step == 2 and ckpt2.name == "checkpoint_00000002"
    for name in (
        "model.safetensors",
        "online.safetensors",
        "train_state.pt",
        "meta.json",
        "rng_rank0.pt",
        "rng_rank1.pt",
    ):
        assert (ckpt2 / name).is_file(), name
    model, meta = load_checkpoint(first.model_path)  # what `dub generate --checkpoint` loads
    assert isinstance(model, MFMJT) and meta["step"] == 2
    assert (model.config.latent_seq_len, model.config.latent_dim) == SHAPES["latent_mean"]
    assert (model.config.clip_seq_len, model.config.clip_dim) == SHAPES["clip_f"]
    assert model.config.hidden_dim == TINY_ARCHITECTURE["hidden_dim"]
    # from scratch: latent normalisation set from the shards (mean around 0.5, not the identity)
    assert model.latent_mean.abs().mean().item() > 0.1 and not torch.allclose(model.latent_std, torch.ones(1))
    assert _state(ckpt2)["step"] == 2 and _adam_step(_state(ckpt2)) == 2.0
    # DDP kept the two replicas identical: both ranks apply the same all-reduced gradients with the
    # same optimizer arithmetic, so their weights agree bit for bit
    fingerprints = [torch.load(ckpt2 / f"rng_rank{r}.pt", weights_only=True)["weights"] for r in (0, 1)]
    assert len(fingerprints[0]) == len(list(model.parameters())) and torch.isfinite(fingerprints[0]).all()
    assert torch.equal(fingerprints[0], fingerprints[1])

    resumed = run_train(dataclasses.replace(cfg, steps=3, checkpoint_every=3))
    ckpt3 = Path(resumed.checkpoint_dir)
    assert resumed.step == 3 and ckpt3.name == "checkpoint_00000003"
    state3 = _state(ckpt3)
    # the optimizer continued (a fresh one would have taken 1 step) and so did the schedule
    assert state3["step"] == 3 and _adam_step(state3) == 3.0
    assert state3["scheduler"]["last_epoch"] == 3
    online2 = load_state_dict_file(ckpt2 / "online.safetensors")
    online3 = load_state_dict_file(ckpt3 / "online.safetensors")
    assert any(not torch.equal(online2[k], online3[k]) for k in online2)
    assert torch.equal(online2["latent_mean"], online3["latent_mean"])  # restored, not recomputed

    log = pd.read_parquet(resumed.metrics_parquet)
    assert log["step"].tolist() == [1, 2, 3]  # one row per step across the two runs
    assert set(log.columns) >= {"loss", "mse", "grad_norm", "lr", "samples_per_s", "elapsed_s"}
    assert np.isfinite(log[["loss", "mse", "grad_norm"]].to_numpy()).all()
    meta3 = json.loads((ckpt3 / "meta.json").read_text())
    assert meta3["step"] == 3 and meta3["network"]["hidden_dim"] == TINY_ARCHITECTURE["hidden_dim"]


def test_rerun_with_another_network_is_refused(shard_dir, tmp_path):
    runs = tmp_path / "runs"
    folder = runs / "tiny" / "checkpoint_00000002"
    folder.mkdir(parents=True)
    (folder / "meta.json").write_text(json.dumps({"step": 2, "objective": "meanflow", "network": {"hidden_dim": 1}}))
    with pytest.raises(TrainError, match="another network"):
        run_train(tiny_config(shard_dir, runs))


def test_more_workers_than_the_cluster_has_is_refused(ray_session, shard_dir, tmp_path):
    with pytest.raises(TrainError, match="--workers 3 needs 3 CPUs, but the Ray cluster has 2"):
        run_train(tiny_config(shard_dir, tmp_path / "runs", workers=3))


# -- bad shards: clear errors before any worker starts ---------------------------------------


def test_truncated_shard_is_named(shard_dir, tmp_path):
    broken = tmp_path / "shards"
    broken.mkdir()
    shards = sorted(shard_dir.glob("shard-*.tar"))
    for shard in shards:
        (broken / shard.name).write_bytes(shard.read_bytes())
    victim = broken / shards[1].name
    victim.write_bytes(victim.read_bytes()[: victim.stat().st_size // 3])
    with pytest.raises(ShardError) as err:
        run_train(tiny_config(broken, tmp_path / "runs"))
    assert victim.name in str(err.value) and ("truncated" in str(err.value) or "unreadable" in str(err.value))


def test_missing_shard_is_named(shard_dir, tmp_path):
    first = sorted(shard_dir.glob("shard-*.tar"))[0]
    missing = shard_dir / "shard-gone-00009.tar"
    with pytest.raises(ShardError, match="shard-gone-00009.tar does not exist"):
        run_train(tiny_config(Path(f"{first},{missing}"), tmp_path / "runs"))
    with pytest.raises(ShardError, match="no shard-\\*.tar"):
        check_shards(str(tmp_path))


def test_foreign_tar_is_not_a_training_shard(tmp_path):
    """A generate output shard (audio + json) has none of the training arrays."""
    import io

    path = tmp_path / "shard-x-00000.tar"
    with tarfile.open(path, "w") as tar:
        for name, data in (("abc.flac", b"fLaC"), ("abc.json", b"{}")):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    with pytest.raises(ShardError, match="not a training shard.*latent_mean.npy"):
        check_shards(str(tmp_path))


def test_shards_with_other_shapes_are_refused(shard_dir, tmp_path):
    other = tmp_path / "other"
    write_synthetic_shards(other, samples=2, shard_size=2)
    shard = next(other.glob("shard-*.tar"))
    # rewrite one sample with a shorter text sequence
    from dub.workflows.extract.sample import encode_sample
    from dub.workflows.generate.sinks import ShardWriter

    sample = next(iter_samples([str(shard)]))
    arrays = {k: sample[k] for k in SHAPES}
    arrays["text_f"] = arrays["text_f"][:4]
    writer = ShardWriter(tmp_path / "mixed", 10)
    writer.add(sample["__key__"], encode_sample(arrays, sample["meta"]))
    writer.close()
    mixed = next((tmp_path / "mixed").glob("shard-*.tar"))
    first = sorted(shard_dir.glob("shard-*.tar"))[0]
    with pytest.raises(ShardError, match="other shapes.*text_f"):
        check_shards(f"{first},{mixed}")


# -- pieces of the loop -----------------------------------------------------------------------


def test_data_split_over_workers_is_disjoint(shard_dir):
    shards = tuple(str(p) for p in sorted(shard_dir.glob("shard-*.tar")))
    assert worker_share(shards, 1, 2) == (list(shards[1::2]), 1)
    few = shards[:2]  # 8 samples, 3 workers: every worker reads both shards and keeps its share
    every = {s["__key__"] for s in iter_samples(list(few))}
    shares = []
    for rank, size in enumerate((3, 3, 2)):  # sample i goes to worker i % 3
        stream = sample_stream(few, rank, 3, shuffle_buffer=2, seed=0)
        shares.append({next(stream)["__key__"] for _ in range(size)})
    assert set().union(*shares) == every and sum(map(len, shares)) == len(every) == 8  # disjoint, complete


def test_in_memory_batches_see_every_sample_once_per_epoch_and_split_workers(shard_dir):
    """memory_batches holds a worker's share as arrays: an epoch of batches is a permutation of
    the share (batches run across the epoch boundary), the next epoch another order, the same
    seed the same order; two workers' shares are disjoint and together the whole set."""
    shards = tuple(str(p) for p in sorted(shard_dir.glob("shard-*.tar")))
    every = [s["latent_mean"] for s in iter_samples(list(shards))]
    key = lambda a: a.tobytes()  # noqa: E731 - samples differ, so their bytes name them
    batches_ = memory_batches(shards, 0, 1, 5, seed="s")  # 12 samples: the third batch spans two epochs
    rows = np.concatenate([next(batches_)["latent_mean"] for _ in range(5)])
    first, second = rows[: len(every)], rows[len(every) : 2 * len(every)]
    assert sorted(map(key, first)) == sorted(map(key, every)) == sorted(map(key, second))
    assert [key(r) for r in first] != [key(r) for r in second]
    again = np.concatenate([next(memory_batches(shards, 0, 1, len(every), seed="s"))["latent_mean"]])
    assert [key(r) for r in again] == [key(r) for r in first]
    # 3 shards of 4 over 2 workers: shards[rank::2], so 8 and 4 samples
    shares = [
        {key(r) for r in next(memory_batches(shards, rank, 2, size, seed=0))["latent_mean"]}
        for rank, size in ((0, 8), (1, 4))
    ]
    assert list(map(len, shares)) == [8, 4]
    assert not shares[0] & shares[1] and shares[0] | shares[1] == {key(r) for r in every}


def test_audio_only_samples_get_the_networks_empty_video_features(shard_dir):
    samples = list(iter_samples(sorted(str(p) for p in shard_dir.glob("shard-*.tar"))))[:4]
    batch = {k: torch.from_numpy(v) for k, v in collate(samples).items()}
    assert batch["has_video"].tolist() == [True, True, True, False]
    cfg = dataclasses.replace(
        get_preset("small_16k"),
        **TINY_ARCHITECTURE,
        latent_dim=20,
        latent_seq_len=63,
        clip_dim=16,
        clip_seq_len=16,
        sync_dim=16,
        sync_seq_len=40,
        text_dim=16,
        text_seq_len=8,
    )
    torch.manual_seed(0)
    net = MFMJT(cfg)
    with torch.no_grad():
        net.empty_clip_feat.normal_()
    cond, empty = conditions(net, batch)
    assert torch.equal(cond["clip_f"][3], net.empty_clip_feat.expand(16, -1))
    assert torch.equal(cond["clip_f"][0], batch["clip_f"][0])
    assert torch.equal(cond["sync_f"][3], net.empty_sync_feat.expand(40, -1))
    assert empty["text_f"] is net.empty_string_feat


def test_learning_rate_warms_up_then_decays_to_the_floor():
    cfg = TrainConfig(shards="x", steps=100, warmup_steps=10, min_lr_ratio=0.1)
    factors = [lr_factor(s, cfg) for s in range(101)]
    assert factors[0] < factors[5] < factors[9] < 1.0 and math.isclose(factors[10], 1.0)
    assert all(a >= b for a, b in zip(factors[10:], factors[11:]))
    assert math.isclose(factors[100], 0.1)


def test_init_weights_set_the_architecture_and_must_fit_the_shards(shard_dir, tmp_path):
    shards = check_shards(str(shard_dir))
    fitting = dataclasses.replace(
        get_preset("small_16k"),
        hidden_dim=64,
        depth=2,
        fused_depth=1,
        num_heads=2,
        latent_dim=20,
        clip_dim=16,
        sync_dim=16,
        text_dim=16,
        text_seq_len=8,
    )
    save_checkpoint(MFMJT(fitting), tmp_path / "init.safetensors")
    resolved = resolve_network(TrainConfig(shards=str(shard_dir), init=str(tmp_path / "init.safetensors")), shards)
    assert resolved.hidden_dim == 64 and resolved.latent_seq_len == 63 and resolved.sync_seq_len == 40
    wrong = dataclasses.replace(fitting, clip_dim=32)
    save_checkpoint(MFMJT(wrong), tmp_path / "wrong.safetensors")
    with pytest.raises(TrainError, match="clip_dim: weights 32 vs shards 16"):
        resolve_network(TrainConfig(shards=str(shard_dir), init=str(tmp_path / "wrong.safetensors")), shards)


def test_config_rejects_bad_values():
    with pytest.raises(ValueError, match="objective"):
        TrainConfig(shards="x", objective="diffusion")
    with pytest.raises(ValueError, match="unknown architecture fields"):
        TrainConfig(shards="x", architecture={"width": 3})
    with pytest.raises(ValueError, match="--init takes the architecture"):
        TrainConfig(shards="x", init="a.pth", preset="tiny")
    with pytest.raises(ValueError, match="keep must be >= 1 checkpoint"):  # a usage error, not Ray's after set-up
        TrainConfig(shards="x", keep_checkpoints=0)
    cfg = TrainConfig(shards="x", meanflow=MeanFlowConfig(cond_dropout=0.2))
    assert TrainConfig.from_dict(json.loads(json.dumps(cfg.as_dict()))) == cfg


def test_demo_stack_shards_train_the_bundled_narrow_network_by_default(tmp_path):
    """On shards of the demo stack with no --preset: the demo bundle's network (demo_narrow: one
    joint block, 32 wide, gated MLPs 128 wide rather than MMAudio's multiple of 256) with the
    shards' lengths; `--preset tiny` still trains the wider network bundled before it, and
    `mlp_multiple_of` is an architecture knob of the config file like the other sizes."""
    demo_shapes = {"latent_mean": (63, 20), "latent_std": (63, 20), "clip_f": (16, 64), "sync_f": (40, 64)}
    write_synthetic_shards(
        tmp_path / "shards", samples=2, shard_size=2, shapes={**demo_shapes, "text_f": (8, 64)}, bundle="demo"
    )
    shards = check_shards(str(tmp_path / "shards"))
    cfg = TrainConfig(shards=str(tmp_path / "shards"))
    network = resolve_network(cfg, shards)
    assert network == resolve_network(dataclasses.replace(cfg, preset="demo_narrow"), shards)
    assert (network.hidden_dim, network.depth, network.fused_depth, network.mlp_multiple_of) == (32, 1, 0, 128)
    assert (network.latent_seq_len, network.clip_seq_len, network.sync_seq_len) == (63, 16, 40)
    widths = {p.shape[0] for k, p in MFMJT(network).state_dict().items() if k.endswith(".w1.weight")}
    assert widths == {128}
    wide = resolve_network(dataclasses.replace(cfg, preset="tiny"), shards)
    assert (wide.hidden_dim, wide.depth, wide.fused_depth, wide.mlp_multiple_of) == (64, 2, 1, 256)
    assert (wide.latent_dim, wide.clip_dim, wide.text_seq_len) == (20, 64, 8)  # widths from the shards
    wider = dataclasses.replace(cfg, architecture={"mlp_multiple_of": 256})
    assert resolve_network(wider, shards).mlp_multiple_of == 256


def test_init_from_mmaudio_weights_fine_tunes_that_network(fixtures_root, tmp_path):
    """--init with MMAudio-format weights (the conformance fixture's, which has no interval
    embedding): the worker's network holds exactly those weights, with a zero-output interval
    embedding, and the shards' sequence lengths."""
    weights = fixtures_root / "network" / "weights.safetensors"
    arch = json.loads((fixtures_root / "network" / "arch.json").read_text())
    shapes = {
        "latent_mean": (31, arch["latent_dim"]),
        "latent_std": (31, arch["latent_dim"]),
        "clip_f": (8, arch["clip_dim"]),
        "sync_f": (24, arch["sync_dim"]),
        "text_f": (arch["text_seq_len"], arch["text_dim"]),
    }
    write_synthetic_shards(tmp_path / "shards", samples=2, shard_size=2, shapes=shapes)
    cfg = TrainConfig(shards=str(tmp_path / "shards"), init=str(weights))
    network = resolve_network(cfg, check_shards(cfg.shards))
    assert (network.hidden_dim, network.depth, network.fused_depth) == (
        arch["hidden_dim"],
        arch["depth"],
        arch["fused_depth"],
    )
    assert (network.latent_seq_len, network.clip_seq_len, network.sync_seq_len) == (31, 8, 24)
    net = build_network({"train": cfg.as_dict(), "network": network.as_dict()})
    assert net.training
    reference = load_state_dict_file(weights)
    state = net.state_dict()
    for key, value in reference.items():
        if key in state:
            assert torch.equal(state[key], value), key
    assert not net.interval_embed.mlp[2].weight.any()  # MMAudio's velocity for every s at the start


def test_relative_shard_paths_become_absolute_for_the_workers(shard_dir, monkeypatch):
    # Ray workers run in their own working directories: a relative path would not open there.
    from dub.workflows.train.data import list_shards

    monkeypatch.chdir(shard_dir.parent)
    paths, directory = list_shards(shard_dir.name)
    assert paths and all(Path(p).is_absolute() and Path(p).exists() for p in paths)
    assert directory == str(shard_dir.resolve())


def test_validation_manifest_evaluates_each_chosen_checkpoint(ray_session, tmp_path):
    """--val-manifest/--sample-every, the quick form of test_extract.py's slow end-to-end test:
    synthetic shards in the layout of the demo bundle's 8 s windows stand in for `dub extract`'s
    (extract.json says they were resized "exact"), one 8 s foley-synth clip is the validation
    set. Each chosen checkpoint generates it (`dub generate --checkpoint`, with the shards'
    resize) and `dub report` scores it against the clip's own audio."""
    from dub.workflows.datasets.foley_synth import make_foley_synth
    from dub.workflows.ingest import IngestConfig, ingest

    shards = tmp_path / "shards"
    write_synthetic_shards(shards, samples=4, shard_size=2, shapes=SHAPES_8S, window_s=8.0, bundle="demo")
    (shards / "extract.json").write_text(json.dumps({"identity": {"resize": "exact"}, "bundle": "demo"}))
    make_foley_synth(tmp_path / "foley", seed=1, n_train=0, n_val=1, n_test=0, seconds=8.0, size=(64, 64))
    ingest([tmp_path / "foley" / "val" / "audio"], tmp_path / "val.parquet", IngestConfig(workers=0))
    result = run_train(
        TrainConfig(
            shards=str(shards),
            storage_path=str(tmp_path / "runs"),
            workers=1,
            architecture={"hidden_dim": 32},
            batch_size=2,
            steps=2,
            checkpoint_every=1,
            log_every=1,
            warmup_steps=1,
            shuffle_buffer=2,
            stats_samples=4,
            sample_every=1,
            val_manifest=str(tmp_path / "val.parquet"),
        )
    )
    assert_evaluated_every_step(result, [1, 2], resize="exact")


@pytest.mark.slow  # a cold Inductor build of the network's forward and backward; its fall-back is tested below
def test_compile_trains_the_same_network_through_torch_compile(ray_session, shard_dir, tmp_path):
    """--compile: the training step through torch.compile on a real Ray worker (flow matching:
    the compiled JVP has its own test in test_meanflow.py). The compiled step must hold
    (meta.json would say it fell back to eager, and why) and compute the eager step's loss from
    the same seed. Step 1 runs both on the same weights and noise, so only Inductor's reordered
    float32 sums differ: worst case about n * 2**-24 relative for sums of n ~ 1e3 terms, 1e-4."""
    same = {"workers": 1, "objective": "flow-matching"}
    eager = run_train(tiny_config(shard_dir, tmp_path / "runs", name="eager", **same))
    compiled = run_train(tiny_config(shard_dir, tmp_path / "runs", name="compiled", compile=True, **same))
    meta = json.loads((Path(compiled.checkpoint_dir) / "meta.json").read_text())
    assert meta["fast_paths"] == {"step": "ok"}
    assert json.loads((Path(eager.checkpoint_dir) / "meta.json").read_text())["fast_paths"] == {}
    losses = [pd.read_parquet(r.metrics_parquet).set_index("step")["loss"] for r in (eager, compiled)]
    assert losses[1][1] == pytest.approx(losses[0][1], rel=1e-4)


def test_a_compiled_step_whose_build_fails_is_redone_eagerly_and_meta_says_why(tmp_path, monkeypatch):
    """A machine without a working C++ compiler: Inductor's build really fails (the compiler it
    calls does not exist; a fresh kernel cache, so no earlier build can stand in), the step is
    redone eagerly with the same gradients as a plain eager step, and fast_paths records the
    fall-back for meta.json. Gradients are compared with float32 closeness: the same eager
    arithmetic on the same inputs."""
    import torch._inductor.config as inductor_config

    from dub.workflows.train.loop import fast_paths, make_train_step

    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(tmp_path / "inductor"))
    monkeypatch.setattr(inductor_config, "fx_graph_cache", False)
    monkeypatch.setattr(inductor_config.cpp, "cxx", (str(tmp_path / "no-such-c++"),))
    torch._dynamo.reset()

    def objective(forward, x, *, cond, empty):
        loss = (forward(x) - cond["target"]).pow(2).mean()
        return loss, {"loss": float(loss.detach())}

    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.GELU(), torch.nn.Linear(16, 8))
    optimizer = torch.optim.AdamW(net.parameters(), lr=1e-3)
    x, cond = torch.randn(4, 8), {"target": torch.randn(4, 8)}

    eager = make_train_step(net, objective, optimizer, "cpu", False, compile_step=False)
    assert fast_paths(eager, None) == {}
    expected_metrics = eager(x, cond, {})
    expected = [p.grad.clone() for p in net.parameters()]

    step = make_train_step(net, objective, optimizer, "cpu", False, compile_step=True)
    with pytest.warns(RuntimeWarning, match="training eagerly from now on"):
        metrics = step(x, cond, {})
    torch._dynamo.reset()
    assert metrics["loss"] == pytest.approx(expected_metrics["loss"], rel=1e-6)
    for p, g in zip(net.parameters(), expected, strict=True):
        torch.testing.assert_close(p.grad, g)
    paths = fast_paths(step, None)
    assert list(paths) == ["step"] and paths["step"].startswith("fell back to eager: ")
    assert "C++ compiler" in paths["step"]
