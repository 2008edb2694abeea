"""`dub bench NAME...`: run sub-benchmarks and print a table (or JSON)."""

from __future__ import annotations

import importlib
import json

import typer


def register(app: typer.Typer) -> None:
    @app.command()
    def bench(
        names: list[str] = typer.Argument(
            None, help="Sub-benchmarks: media, encoders, generate, train-step, e2e (default: all)."
        ),
        device: str = typer.Option("auto", help="auto | cpu | cuda"),
        preset: str = typer.Option(
            "tiny",
            help="Model sizes: tiny (CPU), demo (the bundled model's network) or a real preset such as small_16k "
            "(random weights).",
        ),
        batch_size: int = typer.Option(1, "--batch-size", "-b"),
        repeats: int = typer.Option(5, help="Timed repetitions per stage (median reported)."),
        duration: float = typer.Option(8.0, help="Clip duration in seconds."),
        compile: bool = typer.Option(
            False,
            "--compile",
            help="Add the torch.compile variants where a sub-benchmark has them (train-step; slow to build).",
        ),
        bf16: bool = typer.Option(
            None,
            "--bf16/--no-bf16",
            help="train-step: bf16 autocast (default on CUDA only); --bf16 on a CPU times what `dub train --bf16` runs.",
            show_default=False,
        ),
        like_for_like: bool = typer.Option(
            False,
            "--like-for-like",
            help="train-step: only flow matching against MeanFlow with the same optimisations on both sides "
            "(eager; with --compile also both compiled), alternating rounds, the ratio with its spread.",
        ),
        fp8: bool = typer.Option(
            False,
            "--fp8",
            help="encoders: also time CLIP and Synchformer with FP8 linear layers, and their deviation from bf16.",
        ),
        as_json: bool = typer.Option(False, "--json", help="Print JSON rows instead of a table."),
    ) -> None:
        """Measure per-stage time, real-time factor, clips/s and peak memory."""
        from rich.console import Console
        from rich.table import Table

        from dub.workflows.bench import SUB_BENCHMARKS, BenchOptions, device_name, resolve_device

        selected = names or list(SUB_BENCHMARKS)
        unknown = [n for n in selected if n not in SUB_BENCHMARKS]
        if unknown:
            raise typer.BadParameter(f"unknown sub-benchmark(s) {unknown}; choose from {list(SUB_BENCHMARKS)}")
        opts = BenchOptions(
            device=resolve_device(device),
            preset=preset,
            batch_size=batch_size,
            repeats=repeats,
            duration_s=duration,
            extra={"compile": compile, "fp8": fp8, "bf16": bf16, "like_for_like": like_for_like},
        )
        rows = []
        skipped = []
        for name in selected:
            try:
                module = importlib.import_module(f"dub.workflows.bench.{name.replace('-', '_')}")
            except ModuleNotFoundError as exc:
                if exc.name != f"dub.workflows.bench.{name.replace('-', '_')}":
                    raise
                skipped.append(name)
                continue
            rows.extend(module.run(opts))
        if as_json:
            print(
                json.dumps(
                    {"device": device_name(opts.device), "rows": [r.as_dict() for r in rows], "not_available": skipped},
                    indent=2,
                )
            )
            return
        table = Table(title=f"dub bench on {device_name(opts.device)}")
        for col in ("bench", "stage", "median ms", "batch", "dtype", "RTF", "clips/s", "peak MB"):
            table.add_column(col)
        table.add_column("note", max_width=48, overflow="ellipsis", no_wrap=True)  # full notes: --json
        for r in rows:
            table.add_row(
                r.bench,
                r.stage,
                f"{r.median_ms:.2f}",
                str(r.batch_size),
                r.dtype,
                "" if r.rtf is None else f"{r.rtf:.4f}",
                "" if r.clips_per_s is None else f"{r.clips_per_s:.2f}",
                "" if r.peak_mem_mb is None else f"{r.peak_mem_mb:.0f}",
                r.note,
            )
        Console().print(table)
        if skipped:
            Console().print(f"[yellow]not available yet: {', '.join(skipped)}[/yellow]")
