"""The foley-synth sync table with 95 % bootstrap confidence intervals.

Reads the `report.parquet` of each `dub report` folder and prints, per run, the mean of every
per-clip metric with a percentile bootstrap interval from resampling CLIPS (the unit the test
split is drawn in): `RESAMPLES` resamples, one fixed seed, so the table is reproducible.
Sound-class accuracy is pooled over events (correct / events of the resampled clips). The
weights-free log-mel FAD is a set-level figure: it is recomputed on each resample of the clips
(the generated and reference embeddings of the same clips, from the report's journal), for runs
reported with `--reference`; it falls with the number of clips, so compare it between rows of
one table only.

    python -m dub.workflows.bench.foley_table LABEL=REPORT_DIR ... [--json OUT.json]      (prints Markdown)
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq

RESAMPLES = 2000
SEED = 0
COLUMNS = (
    ("onset_f1", "onset F1 (±50 ms)"),
    ("onset_precision", "precision"),
    ("onset_recall", "recall"),
    ("onset_ap", "onset AP"),
    ("onset_acc", "onset acc (±0.3 s)"),
    ("sound_class", "sound class acc"),
    ("av_align", "AV-Align"),
    ("fad_logmel", "log-mel FAD"),
)
FAD_BACKEND = "logmel"
FAD_RESAMPLES = 500  # each resample is a 128-d Fréchet distance: fewer than the means' resamples


def bootstrap(
    values: np.ndarray, weights: np.ndarray | None = None, *, resamples: int = RESAMPLES, seed: int = SEED
) -> tuple[float, float, float]:
    """(estimate, low, high): the (weighted) mean and its 95 % percentile interval over
    `resamples` resamples of the rows with replacement. NaN rows are left out first."""
    values = np.asarray(values, dtype=np.float64)
    weights = np.ones_like(values) if weights is None else np.asarray(weights, dtype=np.float64)
    keep = np.isfinite(values) & np.isfinite(weights)
    values, weights = values[keep], weights[keep]
    if len(values) == 0 or weights.sum() == 0:
        return math.nan, math.nan, math.nan
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, len(values), size=(resamples, len(values)))
    w = weights[idx]
    means = (values[idx] * w).sum(axis=1) / np.maximum(w.sum(axis=1), 1e-12)
    low, high = np.percentile(means, [2.5, 97.5])
    return float((values * weights).sum() / weights.sum()), float(low), float(high)


def fad_bootstrap(
    journal_dir: Path, video_ids: list[str], *, resamples: int = FAD_RESAMPLES, seed: int = SEED
) -> tuple[float, float, float]:
    """(FAD, low, high) between the generated and the reference log-mel embeddings of the clips
    `video_ids`, with a 95 % bias-corrected percentile interval over resamples of those clips
    (paired: a clip drawn brings both its embeddings). NaN when the report had no reference audio."""
    from dub.workflows.metrics.fad import frechet_distance
    from dub.workflows.report.journal import journaled_embeddings

    found = journaled_embeddings(journal_dir, FAD_BACKEND)
    pairs = [found.get(v, (None, None)) for v in video_ids]
    pairs = [(g, r) for g, r in pairs if g is not None and r is not None]
    if len(pairs) < 3:
        return math.nan, math.nan, math.nan
    generated = np.stack([g.reshape(-1) for g, _ in pairs])
    reference = np.stack([r.reshape(-1) for _, r in pairs])
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, len(pairs), size=(resamples, len(pairs)))
    values = np.array([frechet_distance(generated[i], reference[i]) for i in idx])
    estimate = frechet_distance(generated, reference)
    # a resample repeats clips, which biases a distance between fitted Gaussians upward: the
    # percentile interval is moved back by that bias (the resamples' mean minus the estimate)
    bias = float(values.mean()) - estimate
    low, high = np.percentile(values, [2.5, 97.5]) - bias
    return estimate, max(float(low), 0.0), float(high)


def run_row(report_dir: Path) -> dict[str, tuple[float, float, float]]:
    """Every column's (estimate, low, high) for one `dub report` folder."""
    table = pq.read_table(report_dir / "report.parquet").to_pandas()
    table = table[table["status"] == "ok"]
    row = {}
    for key, _ in COLUMNS:
        if key == "sound_class":
            if "n_class_events" not in table or table["n_class_events"].isna().all():
                row[key] = (math.nan,) * 3
                continue
            events = table["n_class_events"].fillna(0).to_numpy(dtype=np.float64)
            correct = table["n_class_correct"].fillna(0).to_numpy(dtype=np.float64)
            acc = np.divide(correct, events, out=np.full_like(events, np.nan), where=events > 0)
            row[key] = bootstrap(acc, events)  # events-weighted mean of clip accuracy = pooled accuracy
        elif key == "fad_logmel":
            ids = list(table["video_id"]) if "video_id" in table else []
            row[key] = fad_bootstrap(report_dir / "journal", ids)
        elif key in table:
            row[key] = bootstrap(table[key].to_numpy(dtype=np.float64))
        else:
            row[key] = (math.nan,) * 3
    row["clips"] = (float(len(table)),) * 3
    return row


def markdown(rows: dict[str, dict[str, tuple[float, float, float]]]) -> str:
    def cell(v: tuple[float, float, float]) -> str:
        est, low, high = v
        if not math.isfinite(est):
            return "n/a"
        digits = 0 if est >= 100 else 3  # FAD's scale is hundreds; the rates are fractions
        return f"{est:.{digits}f} [{low:.{digits}f}, {high:.{digits}f}]"

    lines = [
        "| audio | clips | " + " | ".join(title for _, title in COLUMNS) + " |",
        "|---|---|" + "---|" * len(COLUMNS),
    ]
    for label, row in rows.items():
        lines.append(f"| {label} | {int(row['clips'][0])} | " + " | ".join(cell(row[k]) for k, _ in COLUMNS) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="+", help="LABEL=REPORT_DIR")
    parser.add_argument("--json", type=Path, help="also write the numbers as JSON")
    args = parser.parse_args(argv)
    rows = {}
    for spec in args.runs:
        label, _, folder = spec.partition("=")
        if not folder:
            parser.error(f"{spec!r} is not LABEL=REPORT_DIR")
        rows[label] = run_row(Path(folder))
    print(markdown(rows))
    if args.json:
        args.json.write_text(
            json.dumps(
                {
                    "resamples": RESAMPLES,
                    "seed": SEED,
                    "fad_resamples": FAD_RESAMPLES,
                    "interval": "95 % percentile bootstrap over clips",
                    "rows": rows,
                },
                indent=2,
            )
        )


if __name__ == "__main__":
    main()
