"""Learning curves of `dub train` runs evaluated with `--val-manifest --sample-every`: onset F1
and sound-class accuracy (95 % bootstrap intervals over clips, as the foley-synth table) against
the training samples seen, for each run, from its `eval/step_*/report` folders.

    python -m dub.workflows.bench.learning_curve RUN_DIR ... [--json OUT.json]
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

from dub.workflows.bench.foley_table import run_row

METRICS = (("onset_f1", "onset F1"), ("sound_class", "sound class acc"), ("onset_acc", "onset acc"))


def curve(run_dir: Path) -> list[dict]:
    """One point per evaluated checkpoint: step, samples seen, and each metric's (est, low, high)."""
    points = []
    for report in sorted(run_dir.glob("eval/step_*/report")):
        if not (report / "report.parquet").is_file():
            continue
        step = int(report.parent.name.split("_")[-1])
        meta = run_dir / f"checkpoint_{step:08d}" / "meta.json"
        train = json.loads(meta.read_text())["train"] if meta.is_file() else {}
        samples = step * int(train.get("batch_size") or 0) * int(train.get("workers") or 1)
        row = run_row(report)
        points.append({"step": step, "samples": samples, **{k: row[k] for k, _ in METRICS}})
    return points


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="+", type=Path, help="run folders (<storage>/<name>)")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)

    def cell(v) -> str:
        return "n/a" if not math.isfinite(v[0]) else f"{v[0]:.3f} [{v[1]:.3f}, {v[2]:.3f}]"

    out = {}
    print("| run | step | samples seen | " + " | ".join(t for _, t in METRICS) + " |")
    print("|---|---|---|" + "---|" * len(METRICS))
    for run in args.runs:
        out[run.name] = points = curve(run)
        for p in points:
            print(f"| {run.name} | {p['step']} | {p['samples']} | " + " | ".join(cell(p[k]) for k, _ in METRICS) + " |")
    if args.json:
        args.json.write_text(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
