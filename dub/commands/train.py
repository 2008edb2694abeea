"""`dub train`: fit or fine-tune MF-MJT on `dub extract` shards with Ray Train (DDP)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer


def register(app: typer.Typer) -> None:
    @app.command()
    def train(
        shards: str = typer.Option("shards", "--shards", "-s", help="`dub extract` output dir, a glob, or comma-separated .tar files."),
        name: str = typer.Option("mf-mjt", "--name", help="Run name; a rerun with the same name resumes it."),
        storage: str = typer.Option("./runs", "--storage", help="Checkpoint storage: local dir or a URI Ray supports (s3://...)."),
        workers: Optional[int] = typer.Option(None, "--workers", help="DDP workers (default: one per GPU, else 1)."),
        gpu: Optional[bool] = typer.Option(None, "--gpu/--cpu", help="Force GPU or CPU workers (default: GPUs when present)."),
        address: Optional[str] = typer.Option(None, "--address", help="Ray cluster address (else RAY_ADDRESS, else local Ray)."),
        init: Optional[Path] = typer.Option(None, "--init", help="Start from these weights (MMAudio .pth or dub .safetensors)."),
        preset: Optional[str] = typer.Option(None, "--preset", help="Network preset for a from-scratch run (default: the shards' model)."),
        hidden_dim: Optional[int] = typer.Option(None, "--hidden-dim", help="From scratch: width (multiple of 2 x heads)."),
        depth: Optional[int] = typer.Option(None, "--depth", help="From scratch: blocks in total."),
        fused_depth: Optional[int] = typer.Option(None, "--fused-depth", help="From scratch: single-stream blocks among them."),
        num_heads: Optional[int] = typer.Option(None, "--num-heads", help="From scratch: attention heads."),
        objective: str = typer.Option("meanflow", "--objective", help="meanflow | flow-matching"),
        fm_ratio: float = typer.Option(0.75, "--fm-ratio", help="MeanFlow: share of samples with s = t."),
        exact_fm_ratio: Optional[bool] = typer.Option(None, "--exact-fm-ratio/--coin-fm-ratio", help="MeanFlow: exactly that share in every batch (one JVP batch size), or a coin per sample. Default: exact when the JVP is compiled or graphed."),
        jvp: str = typer.Option("auto", "--jvp", help="MeanFlow JVP: auto (graphed on GPU workers, eager on CPU ones) | eager | compiled (torch.compile; CUDA graphs on GPU; first step compiles for minutes) | graphed (CUDA graphs of the eager JVP, no compiler). A fast JVP is checked against the eager one at its first step and dropped, with a warning, if it differs."),
        cond_dropout: float = typer.Option(0.1, "--cond-dropout", help="Per-sample drop rate of each condition group."),
        guidance_omega: float = typer.Option(1.0, "--guidance-omega", help="MeanFlow training-time guidance omega (1 = off)."),
        guidance_kappa: float = typer.Option(0.0, "--guidance-kappa", help="MeanFlow training-time guidance kappa."),
        adaptive_p: float = typer.Option(1.0, "--adaptive-p", help="MeanFlow adaptive loss weight power (0 = plain MSE)."),
        batch_size: int = typer.Option(8, "--batch-size", help="Samples per worker per step."),
        steps: int = typer.Option(10_000, "--steps", help="Total optimizer steps."),
        lr: float = typer.Option(1e-4, "--lr", help="Peak learning rate (AdamW)."),
        weight_decay: float = typer.Option(1e-6, "--weight-decay"),
        warmup: int = typer.Option(1_000, "--warmup", help="Linear warm-up steps."),
        min_lr_ratio: float = typer.Option(0.1, "--min-lr-ratio", help="Cosine decay ends at lr x this."),
        grad_clip: float = typer.Option(1.0, "--grad-clip", help="Gradient norm clip (0: off)."),
        ema: float = typer.Option(0.999, "--ema", help="EMA decay of the saved weights (0: off)."),
        bf16: Optional[bool] = typer.Option(None, "--bf16/--no-bf16", help="bf16 autocast (default: on GPU only)."),
        checkpoint_every: int = typer.Option(1_000, "--checkpoint-every", help="Steps between checkpoints."),
        keep: Optional[int] = typer.Option(None, "--keep", help="Checkpoints to keep (default: all)."),
        log_every: int = typer.Option(50, "--log-every", help="Steps between metric rows."),
        seed: int = typer.Option(0, "--seed"),
        shuffle_buffer: int = typer.Option(1_000, "--shuffle-buffer", help="Samples in each worker's shuffle buffer."),
        val_manifest: Optional[Path] = typer.Option(None, "--val-manifest", help="Evaluate checkpoints on this manifest (generate + report)."),
        sample_every: Optional[int] = typer.Option(None, "--sample-every", help="Evaluate checkpoints at multiples of this step."),
        quiet: bool = typer.Option(False, "--quiet", "-q", help="No metric lines while training."),
        as_json: bool = typer.Option(False, "--json", help="Print the result as JSON."),
    ) -> None:
        """Train MF-MJT; prints the final checkpoint's model.safetensors (for `dub generate --checkpoint`)."""
        from rich.console import Console

        from dub.model.flow.meanflow import MeanFlowConfig
        from dub.storage.lock import OutputInUse
        from dub.workflows.train.config import TrainConfig
        from dub.workflows.train.data import ShardError
        from dub.workflows.train.run import TrainError, run_train

        console = Console(stderr=True)
        architecture = {k: v for k, v in (("hidden_dim", hidden_dim), ("depth", depth), ("fused_depth", fused_depth),
                                          ("num_heads", num_heads)) if v is not None}
        try:
            config = TrainConfig(
                shards=shards, name=name, storage_path=storage, workers=workers, use_gpu=gpu, address=address,
                init=str(init) if init else None, preset=preset, architecture=architecture, objective=objective,
                jvp=jvp,
                meanflow=MeanFlowConfig(flow_matching_ratio=fm_ratio, exact_ratio=exact_fm_ratio, cond_dropout=cond_dropout,
                                        guidance_omega=guidance_omega, guidance_kappa=guidance_kappa,
                                        adaptive_p=adaptive_p),
                batch_size=batch_size, steps=steps, lr=lr, weight_decay=weight_decay, warmup_steps=warmup,
                min_lr_ratio=min_lr_ratio, grad_clip=grad_clip, ema_decay=ema, bf16=bf16,
                checkpoint_every=checkpoint_every, keep_checkpoints=keep, log_every=log_every, seed=seed,
                shuffle_buffer=shuffle_buffer, val_manifest=str(val_manifest) if val_manifest else None,
                sample_every=sample_every)
        except ValueError as exc:
            raise typer.BadParameter(str(exc)) from exc

        def show(row: dict) -> None:
            console.print(f"step {int(row['step']):>7}  loss {row['loss']:.4f}  mse {row['mse']:.4f}  "
                          f"grad {row['grad_norm']:.3f}  lr {row['lr']:.2e}  {row['samples_per_s']:.1f} samples/s")

        try:
            result = run_train(config, on_metrics=None if quiet or as_json else show)
        except (ShardError, TrainError, OutputInUse, FileNotFoundError, ValueError) as exc:
            console.print(f"[red]error:[/red] {exc}")
            raise typer.Exit(2) from exc
        except Exception as exc:  # Ray wraps worker failures (TrainingFailedError): show the cause
            console.print(f"[red]training failed:[/red] {exc}")
            raise typer.Exit(1) from exc
        if as_json:
            print(json.dumps(result.as_dict(), indent=2))
            return
        console.print(f"trained to step {result.step} on {result.workers} {'GPU' if result.use_gpu else 'CPU'} "
                      f"worker(s) in {result.wall_s:.1f} s; metrics: {result.metrics_parquet or result.metrics_csv}")
        for evaluation in result.evaluations:
            console.print(f"evaluation at step {evaluation.get('step')}: {evaluation.get('summary')}")
        if result.model_path is None:
            console.print("[red]no checkpoint was written[/red]")
            raise typer.Exit(1)
        print(result.model_path)
