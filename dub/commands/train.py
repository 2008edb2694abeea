"""`dub train`: fit or fine-tune MF-MJT on `dub extract` shards with Ray Train (DDP).

The everyday settings are flags; architecture and optimiser knobs live in a TOML file
(`--config run.toml`, every TrainConfig field; `--write-config run.toml` writes the defaults,
or the settings a command line resolves to). Flags given on the command line win over the file.
"""

from __future__ import annotations

import json
from pathlib import Path

import typer

from dub.commands.choices import Objective
from dub.commands.paths import local_path

# command-line parameter -> TrainConfig field, for the flags that override a --config file
FLAG_FIELDS = {
    "shards": "shards",
    "name": "name",
    "storage": "storage_path",
    "workers": "workers",
    "gpu": "use_gpu",
    "address": "address",
    "init": "init",
    "preset": "preset",
    "objective": "objective",
    "batch_size": "batch_size",
    "steps": "steps",
    "lr": "lr",
    "bf16": "bf16",
    "compile_step": "compile",
    "checkpoint_every": "checkpoint_every",
    "seed": "seed",
    "val_manifest": "val_manifest",
    "sample_every": "sample_every",
}


def register(app: typer.Typer) -> None:
    @app.command()
    def train(
        ctx: typer.Context,
        shards: str = typer.Option(
            "shards", "--shards", "-s", help="`dub extract` output dir, a glob, or comma-separated .tar files."
        ),
        name: str = typer.Option("mf-mjt", "--name", help="Run name; a rerun with the same name resumes it."),
        storage: str = typer.Option(
            "./runs", "--storage", help="Checkpoint storage: local dir or a URI Ray supports (s3://...)."
        ),
        config_file: Path | None = typer.Option(
            None,
            "--config",
            help="TOML file with any training settings (architecture, optimiser, MeanFlow, JVP); flags given here win.",
            callback=local_path,
        ),
        write_config: Path | None = typer.Option(
            None,
            "--write-config",
            help="Write the resolved settings as TOML to this file and exit (a starting point for --config).",
            callback=local_path,
        ),
        init: Path | None = typer.Option(
            None, "--init", help="Start from these weights (MMAudio .pth or dub .safetensors).", callback=local_path
        ),
        preset: str | None = typer.Option(
            None,
            "--preset",
            help="Network preset for a from-scratch run (default: the shards' model). On demo-stack shards "
            "the default is the bundled model's narrow network (demo_narrow); tiny trains the wider one "
            "bundled before it, slower on CPU cores.",
        ),
        objective: Objective = typer.Option(
            Objective.meanflow, "--objective", help="MeanFlow (one-step sampling) or plain flow matching."
        ),
        steps: int = typer.Option(10_000, "--steps", help="Total optimizer steps."),
        batch_size: int = typer.Option(8, "--batch-size", help="Samples per worker per step."),
        lr: float = typer.Option(1e-4, "--lr", help="Peak learning rate (AdamW)."),
        bf16: bool | None = typer.Option(None, "--bf16/--no-bf16", help="bf16 autocast (default: on GPU only)."),
        compile_step: bool = typer.Option(
            False,
            "--compile/--no-compile",
            help="torch.compile the training step: faster steps once a build before the first one is "
            "paid, worth it for long runs; falls back to eager where the compiler fails.",
        ),
        checkpoint_every: int = typer.Option(1_000, "--checkpoint-every", help="Steps between checkpoints."),
        seed: int = typer.Option(0, "--seed"),
        val_manifest: Path | None = typer.Option(
            None,
            "--val-manifest",
            help="Evaluate checkpoints on this manifest (generate + report).",
            rich_help_panel="Evaluation",
            callback=local_path,
        ),
        sample_every: int | None = typer.Option(
            None, "--sample-every", help="Evaluate checkpoints at multiples of this step.", rich_help_panel="Evaluation"
        ),
        workers: int | None = typer.Option(
            None, "--workers", help="DDP workers (default: one per GPU, else 1).", rich_help_panel="Cluster"
        ),
        gpu: bool | None = typer.Option(
            None,
            "--gpu/--cpu",
            help="Force GPU or CPU workers (default: GPUs when present).",
            rich_help_panel="Cluster",
        ),
        address: str | None = typer.Option(
            None, "--address", help="Ray cluster address (else RAY_ADDRESS, else local Ray).", rich_help_panel="Cluster"
        ),
        quiet: bool = typer.Option(False, "--quiet", "-q", help="No metric lines while training."),
        as_json: bool = typer.Option(False, "--json", help="Print the result as JSON."),
    ) -> None:
        """Train MF-MJT; prints the final checkpoint's model.safetensors (for `dub generate --checkpoint`)."""
        from rich.console import Console

        from dub.storage.atomic import write_text_atomic
        from dub.storage.lock import OutputInUse
        from dub.workflows.train.config import TrainConfig, config_toml, read_config_file
        from dub.workflows.train.data import ShardError
        from dub.workflows.train.run import TrainError, run_train

        console = Console(stderr=True)
        given = {
            "init": str(init) if init else None,
            "val_manifest": str(val_manifest) if val_manifest else None,
            "objective": objective.value,
        }
        flags = {param: given.get(param, ctx.params[param]) for param in FLAG_FIELDS}
        try:
            settings = read_config_file(config_file) if config_file is not None else {}
            for param, field in FLAG_FIELDS.items():  # the file's value unless the flag was typed
                # by name: typer carries its own copy of click's ParameterSource enum
                typed = getattr(ctx.get_parameter_source(param), "name", None) == "COMMANDLINE"
                if field not in settings or typed:
                    settings[field] = flags[param]
            config = TrainConfig.from_dict(settings)
        except (ValueError, TypeError, FileNotFoundError) as exc:
            raise typer.BadParameter(str(exc)) from exc
        if write_config is not None:
            write_text_atomic(write_config, config_toml(config))
            console.print(f"wrote {write_config}; train with `dub train --config {write_config}`")
            return

        def show(row: dict) -> None:
            console.print(
                f"step {int(row['step']):>7}  loss {row['loss']:.4f}  mse {row['mse']:.4f}  "
                f"grad {row['grad_norm']:.3f}  lr {row['lr']:.2e}  {row['samples_per_s']:.1f} samples/s"
            )

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
        console.print(
            f"trained to step {result.step} on {result.workers} {'GPU' if result.use_gpu else 'CPU'} "
            f"worker(s) in {result.wall_s:.1f} s; metrics: {result.metrics_parquet or result.metrics_csv}"
        )
        for evaluation in result.evaluations:
            console.print(f"evaluation at step {evaluation.get('step')}: {evaluation.get('summary')}")
        if result.model_path is None:
            console.print("[red]no checkpoint was written[/red]")
            raise typer.Exit(1)
        print(result.model_path)
