"""`dub train` configuration: one frozen dataclass, written as `config` into every checkpoint's
meta.json and handed to the Ray Train workers as a plain dict."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from dub.model.flow.jvp import TANGENT_KINDS
from dub.model.flow.meanflow import MeanFlowConfig

OBJECTIVES = ("meanflow", "flow-matching")
# NetworkConfig fields a user may set for a from-scratch network; the data fixes the rest
# (feature widths and sequence lengths come from the shards).
ARCHITECTURE_FIELDS = ("hidden_dim", "depth", "fused_depth", "num_heads", "mlp_ratio", "mlp_multiple_of", "v2")
DEFAULT_PRESET = "small_16k"


@dataclass(frozen=True)
class TrainConfig:
    shards: str  # a directory of shard-*.tar, a glob, or a comma-separated list of tar files
    name: str = "mf-mjt"
    storage_path: str = "./runs"  # local directory or any URI Ray Train storage accepts (s3://, gs://, ...)
    workers: int | None = None  # None: one per GPU, else 1
    use_gpu: bool | None = None  # None: when the cluster has GPUs
    address: str | None = None
    # network: --init weights, else a preset (+ architecture overrides) built from scratch
    init: str | None = None  # MMAudio .pth / dub .safetensors (fine-tune)
    preset: str | None = None  # None: the extract bundle's preset when known, else small_16k
    architecture: dict[str, Any] = field(default_factory=dict)  # ARCHITECTURE_FIELDS overrides
    # objective
    objective: str = "meanflow"
    meanflow: MeanFlowConfig = field(default_factory=MeanFlowConfig)
    jvp: str = "auto"  # "auto": "graphed" (CUDA graphs of the eager JVP) on GPU workers, "eager" on CPU ones
    # torch.compile the network's training step (and, with jvp "auto", the JVP): a build before the
    # first step, then fused steps (passes over activations dominate a small network's step on a
    # CPU); a build that fails falls back to eager
    compile: bool = False
    # optimisation
    batch_size: int = 8  # per worker
    steps: int = 10_000
    lr: float = 1e-4
    weight_decay: float = 1e-6
    betas: tuple[float, float] = (0.9, 0.95)
    warmup_steps: int = 1_000
    min_lr_ratio: float = 0.1  # cosine decay ends at lr * min_lr_ratio
    grad_clip: float = 1.0  # 0: no clipping (the norm is still logged)
    ema_decay: float = 0.999  # 0: no EMA (model.safetensors holds the trained weights)
    bf16: bool | None = None  # None: on GPU only
    # bookkeeping
    checkpoint_every: int = 1_000
    keep_checkpoints: int | None = None  # None: keep all
    log_every: int = 50
    seed: int = 0
    shuffle_buffer: int = 1_000  # streaming only: samples in each worker's shuffle buffer
    # a worker whose share of the samples fits in this many MB (as float32) reads it once and
    # keeps it in memory; larger shares stream from the shards. 0: always stream
    in_memory_mb: int = 4096
    stats_samples: int = 512  # samples read for the latent statistics of a from-scratch network
    log_dir: str | None = None  # where metrics.csv/parquet go; None: <storage>/<name> (local storage)
    # optional evaluation of checkpoints on a validation manifest (generate + report)
    val_manifest: str | None = None
    sample_every: int | None = None

    def __post_init__(self) -> None:
        problems = []
        if self.objective not in OBJECTIVES:
            problems.append(f"objective must be one of {OBJECTIVES}, got {self.objective!r}")
        if self.jvp not in TANGENT_KINDS:
            problems.append(f"jvp must be one of {TANGENT_KINDS}, got {self.jvp!r}")
        for name in ("batch_size", "steps", "checkpoint_every", "log_every", "stats_samples", "shuffle_buffer"):
            if getattr(self, name) < 1:
                problems.append(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.in_memory_mb < 0:
            problems.append(f"in_memory_mb must be >= 0, got {self.in_memory_mb}")
        if self.workers is not None and self.workers < 1:
            problems.append(f"workers must be >= 1, got {self.workers}")
        if self.keep_checkpoints is not None and self.keep_checkpoints < 1:
            problems.append(f"keep must be >= 1 checkpoint (leave it out to keep all), got {self.keep_checkpoints}")
        if self.lr <= 0 or self.weight_decay < 0 or self.warmup_steps < 0:
            problems.append("need lr > 0, weight_decay >= 0 and warmup_steps >= 0")
        if not 0.0 <= self.min_lr_ratio <= 1.0:
            problems.append(f"min_lr_ratio must be in [0, 1], got {self.min_lr_ratio}")
        if not 0.0 <= self.ema_decay < 1.0:
            problems.append(f"ema_decay must be in [0, 1), got {self.ema_decay}")
        if self.grad_clip < 0:
            problems.append(f"grad_clip must be >= 0, got {self.grad_clip}")
        unknown = sorted(set(self.architecture) - set(ARCHITECTURE_FIELDS))
        if unknown:
            problems.append(f"unknown architecture fields {unknown}; allowed: {list(ARCHITECTURE_FIELDS)}")
        if self.init is not None and (self.preset is not None or self.architecture):
            problems.append("--init takes the architecture from the weights: do not also give a preset or sizes")
        if self.sample_every is not None and (self.sample_every < 1 or self.val_manifest is None):
            problems.append("--sample-every needs a positive step count and --val-manifest")
        if "/" in self.name or not self.name.strip():
            problems.append(f"run name {self.name!r} must be a non-empty name without slashes")
        if problems:
            raise ValueError("invalid train config: " + "; ".join(problems))

    @property
    def storage_is_local(self) -> bool:
        return "://" not in self.storage_path

    @property
    def resolved_storage_path(self) -> str:
        """Absolute for local storage (Ray Train resolves relative paths against the worker's cwd)."""
        return str(Path(self.storage_path).expanduser().resolve()) if self.storage_is_local else self.storage_path

    @property
    def run_dir(self) -> str:
        return f"{self.resolved_storage_path.rstrip('/')}/{self.name}"

    @property
    def resolved_log_dir(self) -> Path:
        if self.log_dir is not None:
            return Path(self.log_dir).expanduser().resolve()
        if self.storage_is_local:
            return Path(self.run_dir)
        return Path("runs").resolve() / self.name

    def as_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["betas"] = list(self.betas)
        return d

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TrainConfig:
        values = dict(data)
        values["meanflow"] = MeanFlowConfig.from_dict(values.get("meanflow") or {})
        if "betas" in values:
            values["betas"] = tuple(values["betas"])
        return cls(**values)


def read_config_file(path: str | Path) -> dict[str, Any]:
    """The TrainConfig fields a TOML file sets (`dub train --config`): top-level keys are the
    fields, `[meanflow]` and `[architecture]` their tables. Unknown keys are an error, not
    ignored: a misspelt knob would otherwise train with the default."""
    import tomllib

    path = Path(path)
    try:
        data = tomllib.loads(path.read_text())
    except FileNotFoundError:
        raise FileNotFoundError(
            f"--config {path} does not exist (`dub train --write-config {path}` writes one)"
        ) from None
    except tomllib.TOMLDecodeError as exc:
        raise ValueError(f"--config {path} is not valid TOML: {exc}") from None
    fields = {f.name for f in dataclasses.fields(TrainConfig)}
    unknown = sorted(set(data) - fields)
    meanflow_fields = {f.name for f in dataclasses.fields(MeanFlowConfig)}
    unknown += [f"meanflow.{k}" for k in sorted(set(data.get("meanflow") or {}) - meanflow_fields)]
    if unknown:
        raise ValueError(
            f"--config {path}: unknown settings {unknown}; known: {sorted(fields)} and "
            f"meanflow.{{{', '.join(sorted(meanflow_fields))}}}"
        )
    return data


def config_toml(config: TrainConfig) -> str:
    """`config` as the TOML `--config` reads; unset (None) settings are left out, so they keep
    meaning "decide from the data and the cluster"."""
    import tomli_w

    def drop_none(value):
        if isinstance(value, dict):
            return {k: drop_none(v) for k, v in value.items() if v is not None}
        return value

    return tomli_w.dumps(drop_none(config.as_dict()))
