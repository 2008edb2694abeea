"""`dub weights list | verify | import`: the local weights directory (nothing downloads)."""

from __future__ import annotations

import os
from pathlib import Path

import typer

_DIR_HELP = "Weights directory (default: $DUB_WEIGHTS_DIR, else ~/.cache/dub/weights)."


def _console():
    from rich.console import Console

    # Pipes and test runners get a wide console so file names and paths are never cut.
    width = None if os.isatty(1) or os.environ.get("COLUMNS") else 240
    return Console(width=width)


def _size(num_bytes: int | None) -> str:
    if num_bytes is None:
        return ""
    if num_bytes < 1024:
        return f"{num_bytes} B"
    value = float(num_bytes)
    for unit in ("KB", "MB", "GB", "TB"):
        value /= 1024
        if value < 1024 or unit == "TB":
            return f"{value:.1f} {unit}"
    return ""


_STYLE = {"ok": "green", "mismatch": "bold red", "missing": "yellow", "unverifiable": "cyan", "unchecked": "dim"}


def register(app: typer.Typer) -> None:
    weights_app = typer.Typer(
        help="Show, verify and import the weights files dub loads (local files only; nothing downloads).",
        no_args_is_help=True,
    )

    @weights_app.command("list")
    def list_weights(
        directory: Path | None = typer.Option(None, "--dir", help=_DIR_HELP),
        urls: bool = typer.Option(False, "--urls", help="Also show where each file is downloaded from."),
    ) -> None:
        """Every known weights file: present or missing, size, last verification result."""
        from rich.table import Table

        from dub.model.weights.registry import WeightsRegistry

        registry = WeightsRegistry(directory)
        table = Table(title=f"weights in {registry.root}")
        for col in ("model", "file", "present", "size", "published", "verified"):
            table.add_column(col, no_wrap=True)
        if urls:
            table.add_column("download from", no_wrap=True)
        for row in registry.list():
            style = _STYLE.get(row.verified, "")
            verified = "" if not row.present else f"[{style}]{row.verified}[/{style}]" if style else row.verified
            cells = [
                row.model,
                row.file,
                "yes" if row.present else "[yellow]missing[/yellow]",
                _size(row.size),
                row.published_size,
                verified,
            ]
            if urls:
                cells.append(row.url or "(not published)")
            table.add_row(*cells)
        console = _console()
        console.print(table)
        missing = sum(not r.present for r in registry.list())
        if missing:
            console.print(
                f"{missing} missing: `dub weights list --urls` shows where to download them, "
                f"`dub weights import FILE` puts a download in place."
            )

    @weights_app.command("verify")
    def verify_weights(
        model: str | None = typer.Argument(None, help="Only this model's files (default: all)."),
        directory: Path | None = typer.Option(None, "--dir", help=_DIR_HELP),
        show_missing: bool = typer.Option(False, "--missing", help="Also list files that are not present."),
    ) -> None:
        """Check present files against the publishers' checksums (exit 1 if any fails)."""
        from rich.table import Table

        from dub.model.weights.registry import MISSING, WeightsError, WeightsRegistry

        registry = WeightsRegistry(directory)
        try:
            results = registry.verify(model)
        except WeightsError as err:
            raise typer.BadParameter(str(err)) from None
        shown = [r for r in results if show_missing or r.status != MISSING]
        console = _console()
        if not shown:
            console.print(f"no weights files present in {registry.root}" + (f" for {model}" if model else ""))
        else:
            table = Table(title=f"verification of {registry.root}")
            for col in ("model", "file", "status", "detail"):
                table.add_column(col, no_wrap=col != "detail")
            for r in shown:
                style = _STYLE.get(r.status, "")
                table.add_row(r.model, r.file, f"[{style}]{r.status}[/{style}]", r.detail)
            console.print(table)
        failed = [r for r in results if r.failed]
        if failed:
            console.print(
                f"[bold red]{len(failed)} file(s) failed verification[/bold red]: download them "
                "again and re-import with `dub weights import`."
            )
            raise typer.Exit(code=1)

    @weights_app.command("import")
    def import_weights(
        source: Path = typer.Argument(..., exists=True, dir_okay=False, help="A downloaded weights file."),
        model: str | None = typer.Option(None, "--model", help="Registry model (default: from the file name)."),
        file: str | None = typer.Option(None, "--file", help="Registry file name (default: the file's name)."),
        directory: Path | None = typer.Option(None, "--dir", help=_DIR_HELP),
    ) -> None:
        """Verify a download and copy it into the weights directory (pickles become safetensors)."""
        from dub.model.weights.registry import WeightsError, WeightsRegistry

        registry = WeightsRegistry(directory)
        console = _console()
        try:
            known = registry.identify(source, model, file)
            dest = registry.import_file(source, model=known.model, file=known.file)
        except WeightsError as err:
            console.print(f"[bold red]import failed[/bold red]: {err}")
            raise typer.Exit(code=1) from None
        result = registry.verify_file(known.model, known.file, use_cache=True)
        console.print(f"imported {source} -> {dest} ({result.status}: {result.detail})")

    app.add_typer(weights_app, name="weights")
