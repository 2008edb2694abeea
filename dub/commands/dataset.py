"""`dub dataset ...`: build benchmark data sets (foley-synth) and the bundled sample clips."""

from __future__ import annotations

from pathlib import Path

import typer

from dub.commands.paths import local_path


def register(app: typer.Typer) -> None:
    dataset_app = typer.Typer(help="Build benchmark data sets with known audio-visual sync.", no_args_is_help=True)

    @dataset_app.command("foley-synth")
    def foley_synth(
        out: Path = typer.Option(
            ..., "--out", "-o", help="Output directory (created; files in it are overwritten).", callback=local_path
        ),
        seed: int = typer.Option(0, help="Every clip is a function of (seed, split, index)."),
        train: int = typer.Option(16, "--train", help="Clips in the train split."),
        val: int = typer.Option(4, "--val", help="Clips in the validation split."),
        test: int = typer.Option(4, "--test", help="Clips in the test split."),
        seconds: float = typer.Option(8.0, help="Clip duration in seconds."),
        fps: int = typer.Option(25, help="Video frame rate."),
        width: int = typer.Option(224, help="Frame width (even)."),
        height: int = typer.Option(224, help="Frame height (even)."),
        sample_rate: int = typer.Option(16000, "--sample-rate", help="Audio sample rate in Hz."),
        two_object_prob: float = typer.Option(0.25, "--two-object-prob", help="Share of clips with two objects."),
        workers: int = typer.Option(1, "--workers", "-j", help="Processes rendering clips in parallel."),
    ) -> None:
        """foley-synth: rendered objects whose bounces, wall hits and flashes trigger real CC0 recordings.

        Writes <split>/audio/*.mp4 (H.264 + AAC), <split>/silent/*.mp4, .txt prompts, .events.json,
        index.parquet, splits.json and dataset.json under OUT.
        """
        from dub.workflows.datasets.foley_config import FoleySynthConfig
        from dub.workflows.datasets.foley_synth import timed_build

        try:
            cfg = FoleySynthConfig(
                seed=seed,
                n_train=train,
                n_val=val,
                n_test=test,
                seconds=seconds,
                fps=fps,
                size=(width, height),
                sample_rate=sample_rate,
                two_object_prob=two_object_prob,
            )
        except ValueError as exc:
            raise typer.BadParameter(str(exc)) from exc
        if workers < 1:
            raise typer.BadParameter(f"--workers {workers}: use 1 or more")
        index, wall_s = timed_build(cfg, out, workers=workers)
        rate = len(index) / wall_s if wall_s > 0 else float("inf")
        counts = ", ".join(f"{split} {n}" for split, n in cfg.split_sizes().items())
        typer.echo(
            f"foley-synth: {len(index)} clips ({counts}) in {wall_s:.1f} s, {rate:.2f} clips/s, "
            f"{workers} worker(s) -> {Path(out) / 'index.parquet'}"
        )

    @dataset_app.command("samples")
    def samples(
        out: Path = typer.Option(..., "--out", "-o", help="Output directory, e.g. dub/samples.", callback=local_path),
        seed: int = typer.Option(0, help="foley-synth seed the clips are drawn from (test split)."),
        count: int = typer.Option(3, help="Number of clips, each a different sound class."),
        seconds: float = typer.Option(6.0, help="Clip duration in seconds."),
    ) -> None:
        """Silent foley-synth clips with prompts and event times: the bundled samples (dub/samples)."""
        from dub.workflows.datasets.foley_synth import make_sample_clips

        try:
            paths = make_sample_clips(out, seed=seed, count=count, seconds=seconds)
        except ValueError as exc:
            raise typer.BadParameter(str(exc)) from exc
        for path in paths:
            typer.echo(f"{path}  ({path.stat().st_size} bytes): {path.with_suffix('.txt').read_text().strip()}")

    app.add_typer(dataset_app, name="dataset")
