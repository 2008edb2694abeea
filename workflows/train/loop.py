"""The per-worker training loop (Ray Train runs one copy per worker; DDP keeps them in step).

Read it top to bottom: build the network, wrap it for DDP, make the optimizer, schedule and
EMA copy, resume from the last checkpoint if the run has one, then loop:
batch -> latents sampled from the codec posterior -> MeanFlow (or flow-matching) loss from
`dub.model.flow.meanflow` -> backward -> clip -> step -> EMA -> log -> checkpoint.

A checkpoint directory (`<storage>/<name>/checkpoint_<step>`) holds
    model.safetensors    EMA weights via `save_checkpoint` (what `dub generate --checkpoint` loads)
    online.safetensors   the optimised (non-EMA) weights, to resume training
    train_state.pt       optimizer, scheduler, step (tensors/dicts only: loaded weights_only=True)
    rng_rank<r>.pt       each worker's noise generator state
    meta.json            step, objective, network and train config
"""

from __future__ import annotations

import copy
import csv
import functools
import json
import math
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from dub.model.flow.jvp import make_tangent, resolve_tangent_kind
from dub.model.flow.meanflow import exact_ratio_for, flow_matching_loss, meanflow_loss
from dub.model.kernels.graphs import FallbackOnError
from dub.model.network.config import NetworkConfig
from dub.model.network.transformer import MFMJT
from dub.model.weights.checkpoint import apply_state_dict, load_network, load_state_dict_file, save_checkpoint
from dub.storage.atomic import atomic_path
from dub.workflows.train.config import TrainConfig
from dub.workflows.train.data import batches, memory_batches, sample_stream

METRIC_COLUMNS = ("step", "loss", "mse", "grad_norm", "lr", "samples_per_s", "elapsed_s")
MODEL_FILE = "model.safetensors"
ONLINE_FILE = "online.safetensors"
STATE_FILE = "train_state.pt"
META_FILE = "meta.json"


def checkpoint_dir_name(step: int) -> str:
    return f"checkpoint_{step:08d}"


def train_loop_per_worker(job: dict[str, Any]) -> None:
    import ray.train
    import ray.train.torch

    cfg = TrainConfig.from_dict(job["train"])
    context = ray.train.get_context()
    rank, world = context.get_world_rank(), context.get_world_size()
    device = ray.train.torch.get_device()
    if device.type == "cpu" and job.get("cpu_threads"):
        # Ray starts workers with one intra-op thread (OMP_NUM_THREADS=1); a CPU worker owns
        # the CPUs it reserved, so its matrix products may use all of them
        torch.set_num_threads(int(job["cpu_threads"]))
    torch.manual_seed(cfg.seed)  # same from-scratch init everywhere (DDP also broadcasts rank 0's)

    # ---- model, optimizer, schedule, EMA
    net = build_network(job).to(device).train()
    model = ray.train.torch.prepare_model(net)  # DDP: rank 0's weights broadcast to all
    ema = copy.deepcopy(net).requires_grad_(False).eval()
    optimizer = torch.optim.AdamW(
        [p for p in net.parameters() if p.requires_grad], lr=cfg.lr, betas=cfg.betas, weight_decay=cfg.weight_decay
    )
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: lr_factor(step, cfg))
    generator = torch.Generator(device=device).manual_seed(cfg.seed * 1_000_003 + rank)

    # ---- resume
    step, elapsed_before = 0, 0.0
    checkpoint = ray.train.get_checkpoint()
    if checkpoint is not None:
        with checkpoint.as_directory() as folder:
            step, elapsed_before = restore(Path(folder), net, ema, optimizer, scheduler, generator, rank)
    if rank == 0:
        trim_metrics(Path(job["metrics_csv"]), step)

    # ---- data: this worker's share of the shards, reshuffled differently after a resume
    if job.get("in_memory"):
        data = memory_batches(tuple(job["shards"]), rank, world, cfg.batch_size, seed=f"{cfg.seed}:{step}")
    else:
        stream = sample_stream(
            tuple(job["shards"]), rank, world, shuffle_buffer=cfg.shuffle_buffer, seed=f"{cfg.seed}:{step}"
        )
        data = batches(stream, cfg.batch_size)
    tangent = None
    if cfg.objective == "meanflow":
        jvp = resolve_tangent_kind("compiled" if cfg.compile and cfg.jvp == "auto" else cfg.jvp, device)
        tangent = make_tangent(jvp, device)
        objective = functools.partial(meanflow_loss, tangent=tangent)
        meanflow_cfg = exact_ratio_for(cfg.meanflow, jvp)
    else:
        objective, meanflow_cfg = flow_matching_loss, cfg.meanflow
    use_bf16 = cfg.bf16 if cfg.bf16 is not None else device.type == "cuda"

    objective = functools.partial(objective, cfg=meanflow_cfg, generator=generator)
    train_step = make_train_step(model, objective, optimizer, device.type, use_bf16, cfg.compile)

    started = last_log = time.perf_counter()
    steps_since_log = 0
    while step < cfg.steps:
        batch = {k: torch.from_numpy(v).to(device) for k, v in next(data).items()}
        x = net.normalize(batch["latent_mean"] + batch["latent_std"] * randn_like(batch["latent_mean"], generator))
        cond, empty = conditions(net, batch)
        metrics = train_step(x, cond, empty)
        grad_norm = torch.nn.utils.clip_grad_norm_(net.parameters(), cfg.grad_clip or math.inf)
        lr = scheduler.get_last_lr()[0]  # the rate this step used
        optimizer.step()
        scheduler.step()
        update_ema(ema, net, ema_decay(step, cfg.ema_decay))
        step += 1
        steps_since_log += 1

        if step % cfg.log_every == 0 or step == cfg.steps:
            now = time.perf_counter()
            row = {
                "step": step,
                **mean_over_workers({"loss": metrics["loss"], "mse": metrics["mse"]}, device),
                "grad_norm": float(grad_norm),
                "lr": lr,
                "samples_per_s": steps_since_log * cfg.batch_size * world / max(now - last_log, 1e-9),
                "elapsed_s": elapsed_before + now - started,
            }
            if rank == 0:
                append_metrics(Path(job["metrics_csv"]), row)
            last_log, steps_since_log = now, 0

        if step % cfg.checkpoint_every == 0 or step == cfg.steps:
            with tempfile.TemporaryDirectory() as folder:
                elapsed = elapsed_before + time.perf_counter() - started
                save(
                    Path(folder),
                    step,
                    elapsed,
                    net,
                    ema,
                    optimizer,
                    scheduler,
                    generator,
                    rank,
                    job,
                    fast_paths(train_step, tangent),
                )
                report = {"step": step, "loss": metrics["loss"], "grad_norm": float(grad_norm)}
                ray.train.report(
                    report,
                    checkpoint=ray.train.Checkpoint.from_directory(folder),
                    checkpoint_dir_name=checkpoint_dir_name(step),
                )


# ------------------------------------------------------------------------------- pieces


def build_network(job: dict[str, Any]) -> MFMJT:
    """From `init` weights (fine-tuning; e.g. MMAudio's, whose interval embedding starts at
    zero output) or from scratch with the latent statistics and empty text of the shards."""
    config = NetworkConfig.from_dict(job["network"])
    cfg = TrainConfig.from_dict(job["train"])
    if cfg.init is not None:
        return load_network(cfg.init, config=config).train()
    net = MFMJT(config)
    with torch.no_grad():
        net.latent_mean.copy_(torch.tensor(job["latent_mean"]).view_as(net.latent_mean))
        net.latent_std.copy_(torch.tensor(job["latent_std"]).view_as(net.latent_std))
        if job.get("empty_text") is not None:
            net.empty_string_feat.copy_(torch.tensor(job["empty_text"]).view_as(net.empty_string_feat))
    return net


def lr_factor(step: int, cfg: TrainConfig) -> float:
    """Linear warm-up to 1, then cosine decay to `min_lr_ratio` at the last step."""
    if step < cfg.warmup_steps:
        return (step + 1) / (cfg.warmup_steps + 1)
    span = max(1, cfg.steps - cfg.warmup_steps)
    progress = min(1.0, (step - cfg.warmup_steps) / span)
    return cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress))


def randn_like(x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    return torch.randn(x.shape, generator=generator, device=generator.device, dtype=x.dtype).to(x.device)


def conditions(net: MFMJT, batch: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """The network's conditions and its learned empty features. Audio-only samples get the
    empty clip/sync features (unknown at extract time). The substitution always runs, so the
    empty features take part in every step (DDP needs every trainable parameter used)."""
    has_video = batch["has_video"].view(-1, 1, 1)
    cond = {
        "clip_f": torch.where(has_video, batch["clip_f"], net.empty_clip_feat),
        "sync_f": torch.where(has_video, batch["sync_f"], net.empty_sync_feat),
        "text_f": batch["text_f"],
    }
    empty = {"clip_f": net.empty_clip_feat, "sync_f": net.empty_sync_feat, "text_f": net.empty_string_feat}
    return cond, empty


def ema_decay(step: int, decay: float) -> float:
    """The usual EMA warm-up, min(decay, (1 + step) / (10 + step)): early averages are not
    dominated by the initial weights of a from-scratch network."""
    return min(decay, (1 + step) / (10 + step))


@torch.no_grad()
def update_ema(ema: torch.nn.Module, net: torch.nn.Module, decay: float) -> None:
    for e, p in zip(ema.parameters(), net.parameters()):
        e.lerp_(p.detach(), 1.0 - decay)


def mean_over_workers(values: dict[str, float], device: torch.device) -> dict[str, float]:
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return values
    tensor = torch.tensor(list(values.values()), dtype=torch.float64, device=device)
    dist.all_reduce(tensor)
    return dict(zip(values, (tensor / dist.get_world_size()).tolist()))


# ---------------------------------------------------------------------------- the step


def make_train_step(
    model: Any, objective: Any, optimizer: Any, device_type: str, bf16: bool, compile_step: bool
) -> Any:
    """step(x, cond, empty) -> metrics: zero the gradients, the loss under autocast, backward.

    With `compile_step` the model goes through torch.compile. A compiler that cannot build here
    (no C compiler, an unsupported op) costs the speed-up, not the run: the failed step is redone
    eagerly (with fresh noise) and so is every later one; `.failed` keeps the reason."""

    def loss_and_backward(forward: Any, x: torch.Tensor, cond: dict, empty: dict) -> dict[str, float]:
        optimizer.zero_grad(set_to_none=True)
        with torch.autocast(device_type, dtype=torch.bfloat16, enabled=bf16):
            loss, metrics = objective(forward, x, cond=cond, empty=empty)
        loss.backward()
        return metrics

    eager = functools.partial(loss_and_backward, model)
    if not compile_step:
        return eager
    return FallbackOnError(
        functools.partial(loss_and_backward, torch.compile(model)),
        eager,
        warning="dub train: the compiled training step failed, training eagerly from now on",
    )


def fast_paths(train_step: Any, tangent: Any) -> dict[str, str]:
    """What ran compiled (or graphed) and what fell back, with the reason: meta.json says it, so a
    slow run can be told from one whose compiler failed."""
    paths = {}
    for name, path in (("step", train_step), ("jvp", tangent)):
        if hasattr(path, "failed"):
            paths[name] = "ok" if path.failed is None else f"fell back to eager: {path.failed}"
    return paths


# ------------------------------------------------------------------------- checkpoints


def save(
    folder: Path,
    step: int,
    elapsed_s: float,
    net: MFMJT,
    ema: MFMJT,
    optimizer,
    scheduler,
    generator: torch.Generator,
    rank: int,
    job: dict[str, Any],
    paths_held: dict[str, str] | None = None,
) -> None:
    """Rank 0 writes the weights and state; every rank its generator (Ray merges the folders).
    `paths_held`: `fast_paths` of the step, written to meta.json."""
    # each rank's weight fingerprint (per-parameter float64 sums): DDP must keep the replicas
    # identical, and a checkpoint that shows it can be checked after the fact
    fingerprint = torch.stack([p.detach().double().sum().cpu() for p in net.parameters()])
    torch.save(
        {"generator": generator.get_state(), "torch": torch.get_rng_state(), "weights": fingerprint},
        folder / f"rng_rank{rank}.pt",
    )
    if rank != 0:
        return
    cfg = TrainConfig.from_dict(job["train"])
    meta = {
        "step": step,
        "objective": cfg.objective,
        "run": cfg.name,
        "network": job["network"],
        "train": job["train"],
        "shards": job["shard_info"],
        "fast_paths": paths_held or {},
    }
    info = job["shard_info"]
    save_checkpoint(
        ema if cfg.ema_decay > 0 else net,
        folder / MODEL_FILE,
        metadata={
            "step": step,
            "objective": cfg.objective,
            "run": cfg.name,
            "ema": cfg.ema_decay > 0,
            "bundle": info.get("bundle"),
            "window_s": info.get("window_s"),
            # the one step is already guided: `dub generate` then defaults to cfg 1
            "guidance_in_weights": cfg.objective == "meanflow" and cfg.meanflow.guided,
        },
    )
    save_checkpoint(net, folder / ONLINE_FILE, metadata={"step": step})
    torch.save(
        {
            "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict(),
            "step": step,
            "elapsed_s": elapsed_s,
        },
        folder / STATE_FILE,
    )
    (folder / META_FILE).write_text(json.dumps(meta, indent=2, sort_keys=True))


def restore(
    folder: Path, net: MFMJT, ema: MFMJT, optimizer, scheduler, generator: torch.Generator, rank: int
) -> tuple[int, float]:
    """Load a checkpoint written by `save` into the live objects; returns (step, training seconds)."""
    apply_state_dict(net, load_state_dict_file(folder / ONLINE_FILE))
    apply_state_dict(ema, load_state_dict_file(folder / MODEL_FILE))
    state = torch.load(folder / STATE_FILE, map_location="cpu", weights_only=True)
    optimizer.load_state_dict(state["optimizer"])
    scheduler.load_state_dict(state["scheduler"])
    rng_file = folder / f"rng_rank{rank}.pt"
    if rng_file.is_file():  # absent when the run is resumed with more workers than it had
        rng = torch.load(rng_file, map_location="cpu", weights_only=True)
        generator.set_state(rng["generator"])
        torch.set_rng_state(rng["torch"])
    return int(state["step"]), float(state.get("elapsed_s", 0.0))


# ----------------------------------------------------------------------------- metrics


def append_metrics(path: Path, row: dict[str, float]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    new = not path.exists()
    with path.open("a", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=METRIC_COLUMNS)
        if new:
            writer.writeheader()
        writer.writerow({k: row[k] for k in METRIC_COLUMNS})


def trim_metrics(path: Path, step: int) -> None:
    """Drop rows logged after `step` by an interrupted run, so a resumed log has one row per step."""
    if not path.exists():
        return
    with path.open(newline="") as handle:
        rows = [r for r in csv.DictReader(handle) if int(float(r["step"])) <= step]
    with atomic_path(path) as tmp, tmp.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=METRIC_COLUMNS)
        writer.writeheader()
        writer.writerows(rows)
