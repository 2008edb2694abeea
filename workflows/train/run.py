"""`dub train`: the driver. Checks the shards, resolves the network, and runs Ray Train's
`TorchTrainer` (DDP over N workers: GPUs when the cluster has them, CPU processes otherwise).

Resume is Ray Train's: a rerun with the same name and storage path finds the run's snapshot
in `<storage>/<name>/` and hands the last checkpoint to `ray.train.get_checkpoint()` in every
worker (verified with Ray 2.60's V2 trainer, `CheckpointManager._maybe_load_state_from_storage`).
"""

from __future__ import annotations

import csv
import dataclasses
import json
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from dub.model.network.config import NetworkConfig, get_preset
from dub.storage.lock import exclusive_output, writer_of
from dub.workflows.train.config import DEFAULT_PRESET, TrainConfig
from dub.workflows.train.data import ShardSet, check_shards, latent_statistics, share_bytes
from dub.workflows.train.loop import META_FILE, MODEL_FILE, train_loop_per_worker

MetricsCallback = Callable[[dict[str, float]], None]


class TrainError(RuntimeError):
    """A run that cannot start (bad shards, weights that do not fit, a clashing earlier run)."""


@dataclass
class TrainResult:
    run_dir: str
    checkpoint_dir: str | None
    model_path: str | None  # the final checkpoint's model.safetensors (EMA weights)
    step: int
    metrics_csv: str
    metrics_parquet: str | None
    wall_s: float
    workers: int
    use_gpu: bool
    evaluations: list[dict] = field(default_factory=list)

    def as_dict(self) -> dict:
        return dataclasses.asdict(self)


def run_train(cfg: TrainConfig, on_metrics: MetricsCallback | None = None) -> TrainResult:
    started = time.perf_counter()
    shards = check_shards(cfg.shards)  # before any worker starts: a bad shard fails here
    writer = writer_of(shards.directory) if shards.directory else None
    if writer is not None:  # its finished shards are whole, but the set is not: training would miss the rest
        raise TrainError(
            f"the shards in {shards.directory} are still being written ({writer}); wait for it to "
            "finish, or pass the shards to train on as a glob or a list"
        )
    network = resolve_network(cfg, shards)
    with exclusive_output(cfg.resolved_log_dir, "train"):  # one run per name: checkpoints, metrics
        return _run_locked(cfg, on_metrics, shards, network, started)


def _run_locked(
    cfg: TrainConfig, on_metrics: MetricsCallback | None, shards: ShardSet, network: NetworkConfig, started: float
) -> TrainResult:
    import ray.train
    from ray.train.torch import TorchTrainer

    from dub.workflows.ray_cluster import connect

    _check_earlier_run(cfg, network)

    resources = connect(cfg.address)
    use_gpu = cfg.use_gpu if cfg.use_gpu is not None else resources.gpus >= 1
    if use_gpu and resources.gpus < 1:
        raise TrainError("--gpu asked for, but the Ray cluster has no GPU")
    workers = cfg.workers or (max(1, int(resources.gpus)) if use_gpu else 1)
    have = resources.gpus if use_gpu else resources.cpus
    if workers > have:  # Ray would wait forever for the missing resources
        kind = "GPUs" if use_gpu else "CPUs"
        raise TrainError(
            f"--workers {workers} needs {workers} {kind}, but the Ray cluster has {have:g}; "
            "use fewer workers or a bigger cluster (--address)"
        )

    log_dir = cfg.resolved_log_dir
    log_dir.mkdir(parents=True, exist_ok=True)
    metrics_csv = log_dir / "metrics.csv"
    job = _job(cfg, shards, network, metrics_csv)
    job["in_memory"] = share_bytes(shards, workers) <= cfg.in_memory_mb * 2**20
    # CPU workers split the cluster's CPUs (at least one each) and use them as torch threads
    cpus_per_worker = 1 if use_gpu else max(1, int(resources.cpus // workers))
    job["cpu_threads"] = None if use_gpu else cpus_per_worker

    trainer = TorchTrainer(
        train_loop_per_worker,
        train_loop_config=job,
        scaling_config=ray.train.ScalingConfig(
            num_workers=workers, use_gpu=use_gpu, resources_per_worker={"CPU": cpus_per_worker}
        ),
        run_config=ray.train.RunConfig(
            name=cfg.name,
            storage_path=cfg.resolved_storage_path,
            checkpoint_config=ray.train.CheckpointConfig(num_to_keep=cfg.keep_checkpoints),
        ),
    )
    with _MetricsTail(metrics_csv, on_metrics):
        result = trainer.fit()

    checkpoint_dir = result.checkpoint.path if result.checkpoint is not None else None
    step = _checkpoint_step(checkpoint_dir) if checkpoint_dir else 0
    parquet = _metrics_to_parquet(metrics_csv)
    out = TrainResult(
        run_dir=cfg.run_dir,
        checkpoint_dir=checkpoint_dir,
        model_path=f"{checkpoint_dir}/{MODEL_FILE}" if checkpoint_dir else None,
        step=step,
        metrics_csv=str(metrics_csv),
        metrics_parquet=str(parquet) if parquet else None,
        wall_s=time.perf_counter() - started,
        workers=workers,
        use_gpu=use_gpu,
    )
    if cfg.val_manifest is not None:
        from dub.workflows.train.evaluate import evaluate_checkpoints

        out.evaluations = evaluate_checkpoints(cfg, shards, result)
    return out


# ----------------------------------------------------------------------------- network


def resolve_network(cfg: TrainConfig, shards: ShardSet) -> NetworkConfig:
    """The network the shards need: feature widths and sequence lengths from the data; the
    architecture from --init weights, else from the preset (+ overrides)."""
    data = _data_dims(shards)
    if cfg.init is not None:
        base = _init_config(cfg.init)
        fixed = [k for k in data if k.endswith("_dim")] + ["text_seq_len"]  # sequence lengths may change
        clash = {k: (getattr(base, k), data[k]) for k in fixed if getattr(base, k) != data[k]}
        if clash:
            listed = ", ".join(f"{k}: weights {w} vs shards {d}" for k, (w, d) in clash.items())
            raise TrainError(
                f"--init {cfg.init} does not fit the shards ({listed}); extract the shards with "
                "the encoders and codec these weights were trained with"
            )
        return dataclasses.replace(base, **data)
    preset = cfg.preset or _bundle_preset(shards) or DEFAULT_PRESET
    try:
        base = get_preset(preset)
        return dataclasses.replace(base, **{**cfg.architecture, **data})
    except ValueError as exc:
        raise TrainError(str(exc)) from None


def _data_dims(shards: ShardSet) -> dict[str, int]:
    s = shards.shapes
    return {
        "latent_seq_len": s["latent_mean"][0],
        "latent_dim": s["latent_mean"][1],
        "clip_seq_len": s["clip_f"][0],
        "clip_dim": s["clip_f"][1],
        "sync_seq_len": s["sync_f"][0],
        "sync_dim": s["sync_f"][1],
        "text_seq_len": s["text_f"][0],
        "text_dim": s["text_f"][1],
    }


def _init_config(path: str) -> NetworkConfig:
    from dub.model.weights.checkpoint import CONFIG_METADATA_KEY, infer_network_config, load_state_dict_file

    p = Path(path).expanduser()
    if not p.is_file():
        raise TrainError(f"--init weights not found: {p}")
    if p.suffix == ".safetensors":
        from safetensors import safe_open

        with safe_open(str(p), framework="pt") as handle:
            stored = (handle.metadata() or {}).get(CONFIG_METADATA_KEY)
        if stored:
            return NetworkConfig.from_dict(json.loads(stored))
    return infer_network_config(load_state_dict_file(p))


def _bundle_preset(shards: ShardSet) -> str | None:
    """The network preset of the model bundle the shards were extracted with, if known."""
    name = shards.first_meta.get("bundle")
    if not name:
        return None
    try:
        from dub.model.runtime.bundles import resolve_bundle

        return resolve_bundle(name).network_preset
    except (ImportError, ValueError, KeyError, AttributeError):
        return None


def _job(cfg: TrainConfig, shards: ShardSet, network: NetworkConfig, metrics_csv: Path) -> dict[str, Any]:
    job: dict[str, Any] = {
        "train": cfg.as_dict(),
        "network": network.as_dict(),
        "shards": list(shards.paths),
        "metrics_csv": str(metrics_csv),
        "shard_info": {
            "count": len(shards.paths),
            "samples": shards.num_samples,
            "directory": shards.directory,
            "bundle": shards.first_meta.get("bundle"),
            "window_s": shards.first_meta.get("length_s"),
            "shapes": {k: list(v) for k, v in shards.shapes.items()},
        },
        "latent_mean": None,
        "latent_std": None,
        "empty_text": None,
    }
    if cfg.init is None:
        mean, std = latent_statistics(shards.paths, cfg.stats_samples)
        job["latent_mean"], job["latent_std"] = mean.tolist(), std.tolist()
        empty = shards.empty_text_features()
        if empty is not None and empty.shape == (network.text_seq_len, network.text_dim):
            job["empty_text"] = empty.tolist()
    return job


# ------------------------------------------------------------------------------ resume


def latest_local_checkpoint(run_dir: str | Path) -> Path | None:
    folders = sorted(Path(run_dir).glob("checkpoint_*"))
    folders = [f for f in folders if (f / META_FILE).is_file()]
    return folders[-1] if folders else None


def _check_earlier_run(cfg: TrainConfig, network: NetworkConfig) -> None:
    """A rerun resumes; refuse one whose network differs (its checkpoint could not load)."""
    if not cfg.storage_is_local:
        return
    latest = latest_local_checkpoint(cfg.run_dir)
    if latest is None:
        return
    meta = json.loads((latest / META_FILE).read_text())
    if meta.get("network") != network.as_dict() or meta.get("objective") != cfg.objective:
        raise TrainError(
            f"run {cfg.name!r} in {cfg.resolved_storage_path} was trained with another network or objective "
            f"(see {latest / META_FILE}); a rerun with the same --name resumes it. Pick a new --name, or "
            "delete the old run folder to start over."
        )


def _checkpoint_step(path: str) -> int:
    meta = Path(path) / META_FILE
    return int(json.loads(meta.read_text())["step"]) if meta.is_file() else 0


# ----------------------------------------------------------------------------- metrics


class _MetricsTail:
    """Calls `callback` with each new row of the workers' metrics.csv while training runs."""

    def __init__(self, path: Path, callback: MetricsCallback | None, poll_s: float = 0.5):
        self.path, self.callback, self.poll_s = path, callback, poll_s
        self._stop = threading.Event()
        self._seen = 0
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> _MetricsTail:
        if self.callback is not None:
            self._seen = len(_read_rows(self.path))  # rows of an earlier run are not news
            self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        if self.callback is not None:
            self._stop.set()
            self._thread.join()
            self._emit()

    def _run(self) -> None:
        while not self._stop.wait(self.poll_s):
            self._emit()

    def _emit(self) -> None:
        rows = _read_rows(self.path)
        if len(rows) < self._seen:  # the log was trimmed on resume
            self._seen = len(rows)
        for row in rows[self._seen :]:
            self.callback({k: float(v) for k, v in row.items()})
        self._seen = len(rows)


def _read_rows(path: Path) -> list[dict]:
    if not path.is_file():
        return []
    try:
        with path.open(newline="") as handle:
            rows = list(csv.DictReader(handle))
    except OSError:
        return []
    return [r for r in rows if r.get("elapsed_s")]  # a half-written last line is not a row yet


def _metrics_to_parquet(metrics_csv: Path) -> Path | None:
    import pyarrow as pa

    from dub.manifests.io import write_parquet_atomic

    rows = _read_rows(metrics_csv)
    if not rows:
        return None
    columns = {name: [float(r[name]) for r in rows] for name in rows[0]}
    columns["step"] = [int(v) for v in columns["step"]]
    return write_parquet_atomic(pa.table(columns), metrics_csv.with_suffix(".parquet"))
