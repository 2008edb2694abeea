"""`dub generate --dry-run`: what a run would do and how long it would take, writing nothing.

The plan reads the manifest and the output folder exactly as a run does (so "pending" means
what a run would generate). The time comes from a calibration on this machine, not from
recorded figures: a model replica is built as a run builds one, one real pending window is
decoded, and a batch of `--batch-size` windows goes through the replica twice (the first call
warms it up). The estimate is then

    load + max(windows x decode / decode slots, calls x model call / replicas)

plus Ray's start-up, which the dry run does not pay. Decode slots are the CPUs the replicas
leave free (at least one): decoding and the replicas run side by side, as in a run. A CPU
replica is timed on one thread, as Ray runs an actor that holds one CPU.
"""

from __future__ import annotations

import math
import os
import time
from dataclasses import asdict, dataclass

import numpy as np

from dub.workflows.generate.config import GenerateConfig, run_paths, window_seed


@dataclass
class RunPlan:
    out_dir: str
    config_hash: str
    existing_run: str  # "none", "same configuration", or "another configuration (...)"
    total: int  # manifest rows (or prompts)
    skipped: int  # rows ingest flagged (duplicates, unreadable files)
    already_done: int
    pending: int  # what a run would generate (after --limit)
    pending_windows: int
    pending_audio_hours: float
    replicas: int
    device: str
    decode_slots: int
    load_s: float | None = None  # building one replica
    decode_s_per_window: float | None = None
    model_s_per_call: float | None = None  # one call of batch_size windows, warm
    batch_size: int = 1
    estimated_wall_s: float | None = None  # without Ray's start-up
    note: str = ""

    def as_dict(self) -> dict:
        return asdict(self)


def plan_generate(cfg: GenerateConfig, calibrate: bool = True) -> RunPlan:
    """The plan of `run_generate(cfg)`, without writing anything; `calibrate` measures the time."""
    from dub.model.runtime.bundles import bundle_info
    from dub.workflows.generate.run import (
        GenerateError,
        existing_run,
        load_inputs,
        pull_state,
        reconcile,
        starts_empty,
    )

    info = bundle_info(cfg.model, checkpoint=cfg.checkpoint)
    window_s = cfg.window_s or info.window_s
    config_hash = cfg.config_hash(info.weights_hash)
    paths = run_paths(cfg.out_dir)
    pull_state(paths)  # an object-storage output: its state, into the local stage only
    previous = existing_run(paths)
    if previous is None:
        existing = "none"
    elif previous.get("config_hash") == config_hash:
        existing = "same configuration"
    else:
        existing = f"another configuration ({previous.get('config_hash')}): the run needs a new --out or --overwrite"
    videos, skipped = load_inputs(cfg, window_s)
    if starts_empty(cfg, previous):
        done, pending = 0, list(videos)
    else:
        state = reconcile(cfg, paths, videos, config_hash)
        done, pending = state.done, state.pending
    if cfg.limit is not None:
        pending = pending[: cfg.limit]
    gpus = _local_gpus()
    replicas = cfg.replicas or max(1, gpus)
    if gpus and replicas > gpus:
        raise GenerateError(f"--replicas {replicas} needs {replicas} GPUs; this machine has {gpus}")
    cpus = os.cpu_count() or 1
    plan = RunPlan(
        out_dir=paths["where"],
        config_hash=config_hash,
        existing_run=existing,
        total=len(videos) + len(skipped),
        skipped=len(skipped),
        already_done=done,
        pending=len(pending),
        pending_windows=sum(len(v.windows) for v in pending),
        pending_audio_hours=sum(v.duration_s for v in pending) / 3600.0,
        replicas=replicas,
        device="cuda" if gpus else "cpu",
        decode_slots=max(1, cpus - (0 if gpus else replicas)),
        batch_size=cfg.batch_size,
    )
    if calibrate and pending:
        _calibrate(cfg, info, window_s, pending[0], plan)
    elif not pending:
        plan.estimated_wall_s, plan.note = 0.0, "nothing to generate"
    return plan


def _local_gpus() -> int:
    try:
        import torch

        return torch.cuda.device_count()
    except Exception:  # noqa: BLE001 - no torch CUDA: a CPU plan
        return 0


def _calibrate(cfg: GenerateConfig, info, window_s: float, video, plan: RunPlan) -> None:
    import torch

    start, length = video.windows[0]
    row = {
        "video_id": np.array([video.video_id], dtype=object),
        "path": np.array([video.path], dtype=object),
        "window_index": np.array([0]),
        "num_windows": np.array([len(video.windows)]),
        "start_s": np.array([float(start)]),
        "valid_s": np.array([float(length)]),
        "prompt": np.array([video.prompt], dtype=object),
        "negative_prompt": np.array([cfg.negative_prompt], dtype=object),
        "seed": np.array([window_seed(cfg.seed, video.video_id, 0)]),
    }
    threads = torch.get_num_threads()
    if plan.device == "cpu":
        torch.set_num_threads(1)  # what a CPU actor gets: Ray gives it one CPU, one thread
    try:
        _time_replica(cfg, info, window_s, row, plan)
    finally:
        torch.set_num_threads(threads)
    calls = math.ceil(plan.pending_windows / cfg.batch_size)
    decode = plan.pending_windows * plan.decode_s_per_window / plan.decode_slots
    model = calls * plan.model_s_per_call / plan.replicas
    plan.estimated_wall_s = plan.load_s + max(decode, model)


def _time_replica(cfg: GenerateConfig, info, window_s: float, row: dict, plan: RunPlan) -> None:
    """Build a replica as a run does, decode the window, and time a warm model call."""
    from dub.workflows.generate.run import no_frames
    from dub.workflows.generate.stages import GenerateReplica, decode_settings, decode_windows

    began = time.perf_counter()
    replica = GenerateReplica(
        model=cfg.model,
        checkpoint=cfg.checkpoint,
        sampler=cfg.sampler.as_dict(),
        device=plan.device,
        batch_size=cfg.batch_size,
        compile=cfg.compile,
        fp8=cfg.fp8,
        candidates=cfg.candidates,
    )
    plan.load_s = time.perf_counter() - began
    if cfg.text_to_audio:
        decoded, plan.decode_s_per_window = no_frames(row), 0.0
    else:
        began = time.perf_counter()
        decoded = decode_windows(row, **decode_settings(info, window_s, cfg.decode_backend))
        plan.decode_s_per_window = time.perf_counter() - began
    batch = {k: np.repeat(np.asarray(v), cfg.batch_size, axis=0) for k, v in decoded.items()}
    replica(batch)  # warm-up: first-call allocations, graph capture, compilation
    began = time.perf_counter()
    out = replica(batch)
    plan.model_s_per_call = time.perf_counter() - began
    failed = [str(e) for e in out["error"] if str(e)]
    if failed:
        plan.note = f"the calibration window failed: {failed[0]}"
