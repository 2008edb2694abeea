"""The `dub` command line: parses flags and hands them to a workflow.

Each sub-command lives in `dub/commands/<name>.py` and exposes `register(app)`. Heavy
libraries (torch, ray, av) are imported inside the command bodies so `dub --help` is instant.
"""

from __future__ import annotations

import importlib

import typer

app = typer.Typer(
    name="dub",
    help="Give silent videos a synchronized soundtrack (MF-MJT: one-step MeanFlow MMAudio).",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_show_locals=False,
)

COMMAND_MODULES = ("ingest", "generate", "extract", "train", "report", "weights", "dataset", "bench")


@app.callback()
def _root() -> None:
    """dub: ingest -> generate -> train -> report, on a local or remote Ray cluster."""


for _name in COMMAND_MODULES:
    try:
        _module = importlib.import_module(f"dub.commands.{_name}")
    except ModuleNotFoundError as exc:  # a command not built yet must not break the others
        if exc.name != f"dub.commands.{_name}":
            raise
        continue
    _module.register(app)


def main() -> None:
    app()


if __name__ == "__main__":
    main()
