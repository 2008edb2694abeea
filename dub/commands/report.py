"""`dub report RUN -o REPORT_DIR`: FAD, onset and sync metrics, per-video Parquet and an HTML page."""

from __future__ import annotations

from pathlib import Path

import typer

from dub.commands.choices import ReportBackend, Resize, Skippable, values
from dub.commands.paths import local_path, location
from dub.storage.location import is_uri, join


def register(app: typer.Typer) -> None:
    @app.command()
    def report(
        run: str = typer.Argument(
            ...,
            help="A `dub generate` output directory (run.json, report.parquet, mp4/), or its s3://, gs:// prefix "
            "(the clips scored are copied to the local stage folder, DUB_STAGE_DIR).",
            callback=location,
        ),
        out: str = typer.Option(
            ...,
            "--out",
            "-o",
            help="Report directory (report.parquet, summary.json, index.html), or an s3://, gs:// prefix.",
            callback=location,
        ),
        reference: Path | None = typer.Option(
            None,
            "--reference",
            "-r",
            help="Reference audio when the source videos have none: a folder (<video_id>.* or <source stem>.*) "
            "or a Parquet manifest with columns video_id, path.",
            callback=local_path,
        ),
        backend: list[ReportBackend] = typer.Option(
            None,
            "--backend",
            "-b",
            help="FAD embedding backends, repeatable (default: all; unavailable ones are reported).",
        ),
        weights_dir: Path | None = typer.Option(
            None,
            "--weights-dir",
            help="Local weights folder (default: $DUB_WEIGHTS_DIR or ~/.cache/dub/weights).",
            callback=local_path,
        ),
        device: str = typer.Option("cpu", help="cpu | cuda (embedding, Synchformer and CLAP models)."),
        audio_length: float = typer.Option(
            8.0,
            "--audio-length",
            help="Seconds of each clip the model-based metrics see (FD/KL/IS, DeSync, CLAP; IB-score: of the video, "
            "its audio side is the whole clip as in av-benchmark), as av-benchmark's --audio_length (MMAudio: 8); "
            "0 = whole clips.",
            rich_help_panel="Metrics",
        ),
        workers: int = typer.Option(
            1,
            "--workers",
            "-w",
            help="Score clips on this many Ray actors (each loads the models; one GPU each with --device cuda). 1: in this process.",
            rich_help_panel="Cluster",
        ),
        address: str | None = typer.Option(
            None,
            "--address",
            help="Ray cluster for --workers > 1 (else RAY_ADDRESS, else local Ray).",
            rich_help_panel="Cluster",
        ),
        skip: list[Skippable] = typer.Option(
            None,
            "--skip",
            help="Leave out a model-based metric, repeatable: desync (the full Synchformer, the slowest metric on a CPU), "
            "clap, ib (IB-score: ImageBind huge's vision and audio towers).",
        ),
        resize: Resize = typer.Option(
            Resize.fast,
            "--resize",
            help="How DeSync's frames are resized to Synchformer's 224 crop: fast is swscale's bicubic; exact is "
            "torchvision's antialiased bicubic, as av-benchmark's Synchformer preprocessing (MMAudio's evaluation), "
            "slower decoding (small next to the full Synchformer on a CPU).",
            rich_help_panel="Metrics",
        ),
        max_plots: int = typer.Option(
            50, "--max-plots", help="Clips with pictures and audio players in the page.", rich_help_panel="Page"
        ),
        tolerance: float = typer.Option(
            0.3,
            "--onset-tolerance",
            help="Onset accuracy/AP matching window in seconds (MMAudio eval_onsets: 0.3).",
            rich_help_panel="Metrics",
        ),
        no_html: bool = typer.Option(False, "--no-html", help="Skip index.html.", rich_help_panel="Page"),
        fresh: bool = typer.Option(
            False,
            "--fresh",
            help="Rescore every clip instead of resuming from REPORT_DIR/journal.",
            rich_help_panel="Resuming",
        ),
        journal_every: float = typer.Option(
            2.0,
            "--journal-every",
            min=0,
            rich_help_panel="Resuming",
            help="Seconds of scoring a crash may lose at most: the journal writes a part at least this often (0: after every clip).",
        ),
        sample: int | None = typer.Option(
            None,
            "--sample",
            help="Score N of the run's generated clips, picked by --sample-seed (failed rows are all listed): for runs too large to score whole, since FAD/IS keep ~80 KB of features per clip in memory. A larger N keeps a smaller N's clips.",
            rich_help_panel="Large runs",
        ),
        sample_seed: int = typer.Option(
            0, "--sample-seed", help="Which clips --sample picks.", rich_help_panel="Large runs"
        ),
        timings: bool = typer.Option(
            False, "--timings", help="Also print the time per clip of each metric.", rich_help_panel="Page"
        ),
        as_json: bool = typer.Option(False, "--json", help="Print summary.json instead of tables."),
    ) -> None:
        """Score a generate run against reference audio and visual events.

        Resumable: clips are journaled in REPORT_DIR/journal as they are scored.
        Rerun the same command after a crash or Ctrl-C to score only the rest (the report is the same).
        Another configuration or other weight files discard the journal; a clip whose generate row, output,
        source video, events sidecar or reference file changed is rescored.
        --fresh rescores every clip.
        """
        import json

        from rich.console import Console
        from rich.table import Table

        from dub.storage.lock import OutputInUse
        from dub.workflows.metrics.embeddings import BACKENDS
        from dub.workflows.metrics.onsets import OnsetConfig
        from dub.workflows.report.config import ALL_BACKENDS, ReportConfig
        from dub.workflows.report.page import grouped_unavailable
        from dub.workflows.report.remote import remote_report
        from dub.workflows.report.run import run_report

        backends = values(backend) if backend else ALL_BACKENDS
        unknown = [b for b in backends if b not in BACKENDS]
        if unknown:
            raise typer.BadParameter(f"unknown backend(s) {unknown}; choose from {sorted(BACKENDS)}")
        if reference is not None and not reference.exists():
            raise typer.BadParameter(f"--reference {reference} does not exist")
        if audio_length < 0 or max_plots < 0:
            raise typer.BadParameter(
                f"--audio-length (0 = whole clips) and --max-plots must be >= 0, got {audio_length:g} and {max_plots}"
            )
        try:
            config = ReportConfig(
                run_dir=str(run),
                out_dir=str(out),
                reference=None if reference is None else str(reference),
                backends=backends,
                weights_dir=None if weights_dir is None else str(weights_dir),
                device=device,
                onsets=OnsetConfig(tolerance_s=tolerance),
                max_plots=max_plots,
                write_html=not no_html,
                skip=values(skip or ()),
                audio_length_s=audio_length if audio_length > 0 else None,
                workers=workers,
                address=address,
                resize=resize.value,
                fresh=fresh,
                sample=sample,
                sample_seed=sample_seed,
                journal_every_s=journal_every,
            )
        except ValueError as exc:  # e.g. --workers 0, --skip fad, --resize bogus
            raise typer.BadParameter(str(exc)) from exc
        console = Console(stderr=as_json)
        try:
            with console.status("scoring clips") as status, remote_report(config) as local_config:
                result = run_report(
                    local_config,
                    progress=lambda i, n, vid: status.update(f"scored {i}/{n} ({vid})"),
                    notice=lambda line: console.print(line, markup=False),
                )
        except (OSError, OutputInUse, ValueError) as exc:  # OSError: a missing file, or an unreachable store
            console.print(f"[red]error:[/red] {exc}")
            raise typer.Exit(2) from exc
        summary = result.summary
        if as_json:
            print(json.dumps(summary, indent=2, default=str))
            return
        sampled = summary.get("sample")
        of = f" (a sample of the run's {sampled['of_generated']} generated clips)" if sampled else ""
        table = Table(title=f"dub report: {summary['n_scored']}/{summary['n_rows']} clips scored{of}")
        table.add_column("metric")
        table.add_column("value", justify="right")
        table.add_column("clips", justify="right")
        table.add_column("note")
        lower = set(summary["lower_is_better"])
        metrics = summary["metrics"]
        for key, value in metrics.items():
            if key.endswith("_n"):
                continue  # the clip count of a mean, shown in its row
            base = key.removesuffix("_mean")
            note = "; ".join(
                x for x in (summary["notes"].get(key, ""), "lower is better" if base in lower else "") if x
            )
            count = metrics.get(f"{base}_n") if key.endswith("_mean") else None
            table.add_row(key, "" if value is None else f"{value:.4g}", "" if count is None else str(count), note)
        console.print(table)
        for keys, reason in grouped_unavailable(summary["unavailable"]):
            console.print(f"[yellow]not computed[/yellow] {', '.join(keys)}: {reason}")
        selection = summary.get("candidate_selection")
        for metric, gain in (selection or {}).get("by_metric", {}).items():
            if gain["chosen_score_mean"] is not None:
                console.print(
                    f"best of {selection['candidates']} by {metric}: chosen {gain['chosen_score_mean']:.4g} against "
                    f"{gain['mean_candidate_score']:.4g} for the mean candidate, over {gain['clips_scored']} clips"
                )
        if timings:
            t = Table(title="time per clip on this machine (median)")
            t.add_column("metric")
            t.add_column("ms / clip", justify="right")
            for key, ms in summary["timings_ms_per_clip"].items():
                t.add_row(key, f"{ms:.1f}")
            for key, s in summary["timings_s_total"].items():
                t.add_row(f"{key} (once, total)", f"{1000 * s:.1f}")
            console.print(t)
        where = out if is_uri(out) else str(result.out_dir)  # the store, or the folder written
        console.print(
            f"wrote {join(where, 'report.parquet')}, {join(where, 'summary.json')}"
            + ("" if no_html else f", {join(where, 'index.html')}")
        )
