"""`dub ingest PATH... -o manifest.parquet`: scan videos, probe them, write the manifest."""

from __future__ import annotations

from pathlib import Path

import typer

from dub.commands.paths import location
from dub.storage.location import is_uri


def register(app: typer.Typer) -> None:
    @app.command()
    def ingest(
        paths: list[str] = typer.Argument(
            ...,
            help="Video files or folders (scanned recursively), or s3://, gs:// prefixes (credentials and "
            "endpoint from the store's usual environment, e.g. AWS_PROFILE, AWS_ENDPOINT_URL).",
            callback=location,
        ),
        output: str = typer.Option(
            ...,
            "--output",
            "-o",
            help="Manifest to write (Parquet), a path or an s3://, gs:// URI; an existing one is updated.",
            callback=location,
        ),
        ext: str | None = typer.Option(
            None, "--ext", help="Comma-separated extensions to scan for (default: common video formats)."
        ),
        workers: int | None = typer.Option(
            None, "--workers", "-j", min=0, help="Probe processes (default: CPU count, at most 8; 0: in-process)."
        ),
        timeout: float = typer.Option(
            60.0, "--timeout", min=1.0, help="Seconds per file before a probe is stopped (plus 1 s per 20 MB)."
        ),
        strict: bool = typer.Option(False, "--strict", help="Exit 1 if any file failed."),
        quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bar."),
    ) -> None:
        """Scan videos, probe each one (duration, fps, size, rotation, audio), flag bad files and duplicates.

        Re-running adds new files, re-probes changed ones and keeps ids (they come from the file bytes).
        A sidecar NAME.txt beside NAME.mp4 becomes that video's prompt.
        """
        from rich.console import Console

        from dub.workflows.ingest import DEFAULT_EXTENSIONS, IngestConfig
        from dub.workflows.ingest import ingest as run_ingest

        console = Console(stderr=True)
        extensions = (
            tuple(e.strip().lower().lstrip(".") for e in ext.split(",") if e.strip()) if ext else DEFAULT_EXTENSIONS
        )
        try:
            config = IngestConfig(extensions=extensions, workers=workers, timeout_s=timeout)
        except ValueError as exc:
            raise typer.BadParameter(str(exc)) from exc
        missing = [p for p in paths if not is_uri(p) and not Path(p).exists() and not Path(p).is_symlink()]
        if missing:
            console.print(f"[red]not found: {', '.join(missing)}[/red]")
            raise typer.Exit(2)
        if not is_uri(output) and Path(output).is_dir():
            console.print(
                f"[red]--output {output} is a directory; give a file name such as {output}/manifest.parquet[/red]"
            )
            raise typer.Exit(2)
        try:
            summary = _run_with_progress(run_ingest, paths, output, config, console, quiet)
        except ValueError as exc:  # an unreadable existing manifest: say so, do not overwrite it
            console.print(f"[red]{exc}[/red]")
            raise typer.Exit(2) from exc
        except FileNotFoundError as exc:  # an object-storage prefix with nothing under it
            console.print(f"[red]{exc}[/red]")
            raise typer.Exit(2) from exc
        except OSError as exc:  # the output's folder cannot be made or written (checked before probing)
            where = f"cannot reach {output}" if is_uri(output) else f"cannot write beside {output}"
            console.print(f"[red]{where}: {exc.strerror or exc} ({exc.filename})[/red]")
            raise typer.Exit(2) from exc
        _print_summary(summary, Console())
        if strict and summary.errors:
            raise typer.Exit(1)


def _run_with_progress(run_ingest, paths, output, config, console, quiet):
    if quiet or not console.is_terminal:
        return run_ingest(paths, output, config)
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    with Progress(
        TextColumn("probing"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(), console=console, transient=True
    ) as progress:
        task = progress.add_task("probe", total=None)

        def on_progress(done: int, total: int) -> None:
            progress.update(task, completed=done, total=total)

        return run_ingest(paths, output, config, on_progress=on_progress)


def _print_summary(summary, console) -> None:
    from rich.table import Table

    table = Table(title=f"dub ingest -> {summary.output}", show_header=True)
    table.add_column("result")
    table.add_column("files", justify="right")
    table.add_column("detail")
    table.add_row("[green]ok[/green]", str(summary.ok), f"{summary.total_hours:.3f} h of video")
    if summary.duplicates:
        table.add_row("duplicate", str(summary.duplicates), "same bytes as another file; processed once")
    for kind, count in summary.errors_by_kind.items():
        table.add_row(f"[red]error: {kind}[/red]", str(count), summary.error_examples.get(kind, ""))
    table.add_row(
        "total rows",
        str(summary.rows),
        f"scanned {summary.scanned}, probed {summary.probed}, unchanged {summary.reused}"
        + (f" ({summary.resumed} probed by an interrupted run)" if summary.resumed else "")
        + f", removed {summary.removed}, {summary.elapsed_s:.1f} s",
    )
    console.print(table)
    for warning in summary.warnings:
        console.print(f"[yellow]warning: {warning}[/yellow]")
