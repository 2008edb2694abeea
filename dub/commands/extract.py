"""`dub extract`: training shards (codec latents + CLIP/sync/text features) from clips with audio."""

from __future__ import annotations

import json
from pathlib import Path

import typer

from dub.commands.choices import FeatureDtype, Resize
from dub.commands.paths import local_path, location


def register(app: typer.Typer) -> None:
    @app.command()
    def extract(
        manifest: str | None = typer.Option(
            None,
            "--manifest",
            "-m",
            help="Manifest from `dub ingest` (clips WITH audio); a path or an s3://, gs:// URI.",
            callback=location,
        ),
        out: str = typer.Option(
            "shards",
            "--out",
            "-o",
            help="Output directory for the training shards, or an s3://, gs:// prefix (made in a local stage "
            "folder, DUB_STAGE_DIR, each shard published whole).",
            callback=location,
        ),
        audio_dir: Path | None = typer.Option(
            None, "--audio-dir", help="Audio-only files with NAME.txt captions (text-to-audio).", callback=local_path
        ),
        model: str = typer.Option("demo", "--model", help="Model bundle whose encoders and codec make the features."),
        window: float | None = typer.Option(
            None,
            "--window",
            help="Window length in seconds (default: the model's).",
            rich_help_panel="Windows and features",
        ),
        overlap: float = typer.Option(
            0.0,
            "--overlap",
            help="Minimum overlap of a clip's windows, seconds.",
            rich_help_panel="Windows and features",
        ),
        min_fraction: float = typer.Option(
            0.9,
            "--min-fraction",
            help="Skip clips shorter than this fraction of a window.",
            rich_help_panel="Windows and features",
        ),
        prompt: str = typer.Option("", help="Prompt for clips without their own."),
        feature_dtype: FeatureDtype = typer.Option(
            FeatureDtype.float32,
            "--feature-dtype",
            help="float16 halves the bytes.",
            rich_help_panel="Windows and features",
        ),
        resize: Resize = typer.Option(
            Resize.fast,
            "--resize",
            help="How frames are resized for CLIP (384x384) and Synchformer (224 crop): fast is swscale's bicubic; exact is torchvision's antialiased bicubic, as MMAudio's features were made, several times slower CPU decoding (docs/benchmarks.md).",
            rich_help_panel="Windows and features",
        ),
        batch_size: int = typer.Option(8, "--batch-size", help="Windows per encoder call.", rich_help_panel="Cluster"),
        shard_size: int = typer.Option(
            256, "--shard-size", help="Samples per shard.", rich_help_panel="Windows and features"
        ),
        limit: int | None = typer.Option(None, "--limit", help="Process at most this many pending clips."),
        replicas: int | None = typer.Option(
            None, "--replicas", help="Encoder actors (default: one per GPU, else 1).", rich_help_panel="Cluster"
        ),
        address: str | None = typer.Option(
            None, "--address", help="Ray cluster address (else RAY_ADDRESS, else local Ray).", rich_help_panel="Cluster"
        ),
        overwrite: bool = typer.Option(False, "--overwrite", help="Replace shards made with other settings."),
        as_json: bool = typer.Option(False, "--json", help="Print the summary as JSON."),
    ) -> None:
        """Write WebDataset training shards; resumable (a rerun only does the missing windows)."""
        from rich.console import Console

        from dub.storage.lock import OutputInUse
        from dub.workflows.extract.config import ExtractConfig
        from dub.workflows.extract.run import ExtractError, run_extract

        console = Console(stderr=True)
        try:
            config = ExtractConfig(
                out_dir=str(out),
                manifest=str(manifest) if manifest else None,
                audio_dir=str(audio_dir) if audio_dir else None,
                model=model,
                window_s=window,
                overlap_s=overlap,
                min_fraction=min_fraction,
                prompt=prompt,
                feature_dtype=feature_dtype.value,
                batch_size=batch_size,
                shard_size=shard_size,
                limit=limit,
                replicas=replicas,
                address=address,
                overwrite=overwrite,
                resize=resize.value,
            )
        except ValueError as exc:
            raise typer.BadParameter(str(exc)) from exc
        try:
            summary = run_extract(config)
        except (ExtractError, OutputInUse, OSError, ValueError) as exc:  # OSError: also an unreachable store
            console.print(f"[red]error:[/red] {exc}")
            raise typer.Exit(2) from exc
        if as_json:
            print(json.dumps(summary.as_dict(), indent=2))
            return
        from rich.table import Table

        table = Table(title=f"dub extract → {summary.out_dir}")
        table.add_column("windows")
        table.add_column("count", justify="right")
        table.add_row("clips", str(summary.clips))
        table.add_row("clips skipped", str(summary.skipped))
        table.add_row("windows written (this run)", str(summary.windows_written))
        table.add_row("windows done earlier", str(summary.windows_done_before))
        table.add_row("windows failed", str(summary.windows_failed))
        table.add_row("shards", str(len(summary.shards)))
        table.add_row("wall time", f"{summary.wall_s:.1f} s ({summary.windows_per_s:.2f} windows/s)")
        for reason, count in sorted(summary.skip_reasons.items()):
            table.add_row(f"skipped: {reason}", str(count))
        for reason, count in sorted(summary.errors.items()):
            table.add_row(f"failed: {reason}", str(count))
        console.print(table)
        if summary.windows_failed:
            console.print("[yellow]some windows failed; rerun to retry them[/yellow]")
