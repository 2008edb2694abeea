"""`dub report`: score a generate run against reference audio and visual events.

Outputs in REPORT_DIR:
    report.parquet   one row per generate-run row: status, pairing, per-clip metrics, t_*_s timings
    summary.json     set-level metrics (FAD per backend, IS, means of per-clip metrics), which
                     metrics could not run and why, mean time per clip of each metric
    index.html       one self-contained page (see workflows/report/page.py)
    journal/         every clip scored so far, written as clips come back (workflows/report/journal.py):
                     a rerun after a crash or Ctrl-C scores only the clips it lacks

Clips are scored one after the other in this process (the models loaded once), or with
`workers > 1` on that many Ray actors, each with its own models (`parallel.py`); the set-level
metrics (FAD, IS) are computed from everything gathered, so both give the same numbers. A metric that cannot run is listed under
`unavailable` with its reason (the missing weight file, not implemented, no reference), never
written as zero.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from dub.storage.atomic import atomic_path, write_text_atomic
from dub.storage.lock import exclusive_output, writer_of
from dub.workflows.generate.candidates import LOWER_IS_BETTER as CANDIDATE_LOWER_IS_BETTER
from dub.workflows.metrics.classifiers import inception_score, kl_softmax
from dub.workflows.metrics.embeddings import BackendInfo
from dub.workflows.metrics.fad import frechet_distance
from dub.workflows.metrics.run_inputs import GeneratedRow, ReferenceIndex, load_run
from dub.workflows.report.config import (
    LOWER_IS_BETTER,
    PER_CLIP_METRICS,
    Injected,
    ReportConfig,
    ReportResult,
    ScoredClip,
)
from dub.workflows.report.scoring import (
    nan_to_none,
    score_here,
    wants_clap,
    wants_imagebind,
)


def _set_metrics(
    infos: dict[str, BackendInfo],
    scored: list[ScoredClip],
    records: list[dict],
    metrics: dict,
    notes: dict,
    unavailable: dict,
) -> None:
    for name, info in infos.items():
        gen = [(c.index, c.generated[name]) for c in scored if name in c.generated]
        ref = [(c.index, c.reference[name]) for c in scored if name in c.reference]
        if len(gen) < 2 or len(ref) < 2:
            unavailable[f"fad_{name}"] = (
                f"needs >= 2 generated and >= 2 reference clips, have {len(gen)} and {len(ref)}"
            )
        else:
            start = time.perf_counter()
            metrics[f"fad_{name}"] = frechet_distance(
                np.concatenate([f.embeddings for _, f in gen]), np.concatenate([f.embeddings for _, f in ref])
            )
            metrics[f"t_fad_{name}_s"] = time.perf_counter() - start
        if not info.comparable:
            notes[f"fad_{name}"] = info.note
        if gen and gen[0][1].logits is not None:
            logits = np.concatenate([f.logits for _, f in gen])
            metrics[f"is_{name}_mean"], metrics[f"is_{name}_std"] = inception_score(logits)
            ref_by_index = dict(ref)
            for i, f in gen:
                if i in ref_by_index:
                    records[i][f"kl_{name}"] = float(kl_softmax(f.logits, ref_by_index[i].logits)[0])
            if not ref_by_index:
                unavailable[f"kl_{name}"] = "no clip has reference audio"


def _per_clip_means(records: list[dict], metrics: dict, unavailable: dict) -> None:
    events = sum(r.get("n_class_events") or 0 for r in records)
    if events:  # pooled over events, beside the mean of the per-clip accuracies
        metrics["sound_class_acc_pooled"] = sum(r.get("n_class_correct") or 0 for r in records) / events
        metrics["sound_class_events"] = events
    for m in PER_CLIP_METRICS:
        values = [r[m] for r in records if r.get(m) is not None and math.isfinite(r[m])]
        if values:
            metrics[f"{m}_mean"] = float(np.mean(values))
            metrics[f"{m}_n"] = len(values)
        elif m.startswith("onset_") and m not in unavailable:
            unavailable[m] = "no clip has visual events (<stem>.events.json) or reference audio"
        elif m == "sound_class_acc" and m not in unavailable:
            unavailable[m] = "no clip's events sidecar names the class of each object's events (foley-synth's do)"
        elif m == "desync_s" and m not in unavailable:
            unavailable[m] = (
                "no clip is 4.8 s or longer with a readable source video (Synchformer's sync head scores 14 segments)"
            )
        elif m == "ib_score" and m not in unavailable:
            reasons = sorted({r["ib_reason"] for r in records if r.get("ib_reason")})
            unavailable[m] = (
                "no clip has a source video and 8 s of frames at 0.5 fps"
                if not reasons
                else "no clip could be scored: " + "; ".join(reasons[:3])
            )
        elif m.startswith("av_align") and m not in unavailable:
            unavailable[m] = (
                "no clip has a readable source video"
                if m == "av_align"
                else "no clip has both a source video and reference audio"
            )


def _timings_ms(records: list[dict]) -> dict[str, float]:
    """Median milliseconds per clip of each timed step (the median hides the first clip's warm-up)."""
    keys = sorted({k for r in records for k in r if k.startswith("t_") and k.endswith("_s")})
    out = {}
    for k in keys:
        values = [r[k] for r in records if r.get(k) is not None]
        if values:
            out[k[2:-2]] = 1000.0 * float(np.median(values))
    return out


def _write_parquet(records: list[dict], path: Path) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    string_cols = {
        "video_id",
        "source_path",
        "status",
        "error",
        "generated_path",
        "reference_path",
        "reference_kind",
        "onset_reference",
        "ib_reason",
    }
    int_cols = {"n_reference_onsets", "n_generated_onsets"}
    columns = list(dict.fromkeys(k for r in records for k in r)) or ["video_id"]
    fields = [
        pa.field(c, pa.string() if c in string_cols else pa.int64() if c in int_cols else pa.float64()) for c in columns
    ]
    data = {c: [nan_to_none(r.get(c)) for r in records] for c in columns}
    with atomic_path(path) as tmp:
        pq.write_table(pa.Table.from_pydict(data, schema=pa.schema(fields)), tmp)


def candidate_selection(rows: list[GeneratedRow]) -> dict | None:
    """What `dub generate --candidates` gained by its choice, in its own selection score, per
    metric that chose (a run may choose prompted clips by CLAP and the others by AV-Align): the
    chosen candidates' mean against the mean candidate's (a random draw's expected score) over
    the clips where every candidate's score is defined; `improvement` is signed so that positive
    is better (DeSync: lower wins). None for one-candidate runs."""
    picked = [r for r in rows if r.candidate_scores and r.candidate_chosen is not None]
    if not picked:
        return None
    by_metric = {}
    for metric in sorted({r.candidate_metric or "av-align" for r in picked}):
        scored = [
            r
            for r in picked
            if (r.candidate_metric or "av-align") == metric and all(math.isfinite(s) for s in r.candidate_scores)
        ]
        chosen = float(np.mean([r.candidate_scores[r.candidate_chosen] for r in scored])) if scored else None
        mean = float(np.mean([np.mean(r.candidate_scores) for r in scored])) if scored else None
        sign = -1.0 if metric in CANDIDATE_LOWER_IS_BETTER else 1.0
        by_metric[metric] = {
            "clips_scored": len(scored),
            "chosen_score_mean": chosen,
            "mean_candidate_score": mean,
            "improvement": None if chosen is None else sign * (chosen - mean),
        }
    return {
        "clips": len(picked),
        "candidates": max(len(r.candidate_scores) for r in picked),
        "chosen_not_first": sum(1 for r in picked if r.candidate_chosen != 0),
        "by_metric": by_metric,
    }


def sample_rows(rows: list[GeneratedRow], n: int | None, seed: int = 0) -> list[GeneratedRow]:
    """The `n` generated clips ("done" rows) whose hash of (seed, video id) is smallest, with
    every other row, in the run's order. Hash-picked rather than drawn: the same clips whatever
    order or extra rows the run has, and a larger n keeps a smaller n's clips, so their journal
    entries are reused. Why sample: the set-level metrics keep each scored clip's features in
    memory, ~80 KB per clip with all four FAD backends and reference audio (float64: 2048 + 527,
    8 x 128, 768 + 527 and 128 values, twice; 81 KiB of ScoredClip features by tracemalloc),
    ~8 GB per 100 000 clips."""
    import hashlib

    done = [r.video_id for r in rows if r.status == "done"]
    if n is None or len(done) <= n:
        return rows

    def rank(video_id: str) -> bytes:
        return hashlib.blake2b(f"{seed}:{video_id}".encode(), digest_size=8).digest()

    keep = set(sorted(done, key=rank)[:n])
    return [r for r in rows if r.status != "done" or r.video_id in keep]


def _media_wanted(config: ReportConfig, rows: list[GeneratedRow]) -> list[bool]:
    """Pictures and players for the first `max_plots` generated clips (the table lists all)."""
    wanted, left = [], config.max_plots if config.write_html else 0
    for row in rows:
        wanted.append(left > 0 and row.status == "done")
        left -= wanted[-1]
    return wanted


def run_report(
    config: ReportConfig,
    progress: Callable[[int, int, str], None] | None = None,
    notice: Callable[[str], None] | None = None,
    injected: Injected = Injected(),
) -> ReportResult:
    """Score every row of the run, write report.parquet, summary.json and index.html.

    `injected` holds already-built models that replace what the weights folder would give
    (tiny ones in tests, or ones shared across reports): see `Injected`.

    Clips are journaled in out_dir/journal as they come back; a rerun with the same configuration
    and weights scores only the clips the journal lacks (workflows/report/journal.py). `notice`
    gets one line when the journal is resumed or discarded. One report at a time writes out_dir
    (storage/lock.py)."""
    if config.workers == 1 and config.device.startswith("cuda"):
        import torch

        if not torch.cuda.is_available():  # else the first model load fails with torch's driver message
            raise ValueError(
                f"--device {config.device}, but torch sees no CUDA GPU here; use --device cpu, or "
                "--workers N on a Ray cluster with GPUs"
            )
    run_config, all_rows = load_run(config.run_dir)
    writer = writer_of(config.run_dir)
    if writer is not None and notice is not None:  # generate rewrites report.parquet only when it ends
        notice(
            f"note: {config.run_dir} is being written ({writer}); this report covers the clips its "
            "report.parquet lists, not those generated since"
        )
    rows = sample_rows(all_rows, config.sample, config.sample_seed)
    # how many generated clips the sample was drawn from (None: every row is scored)
    sampled_from = sum(r.status == "done" for r in all_rows) if len(rows) < len(all_rows) else None
    out_dir = Path(config.out_dir)
    with exclusive_output(out_dir, "report"):
        return _run_locked(config, progress, injected, notice, run_config, rows, sampled_from, out_dir)


def _run_locked(
    config: ReportConfig,
    progress: Callable[[int, int, str], None] | None,
    injected: Injected,
    notice: Callable[[str], None] | None,
    run_config: dict,
    rows: list,
    sampled_from: int | None,
    out_dir: Path,
) -> ReportResult:
    from dub.workflows.report.journal import ReportJournal, clip_key, report_identity

    unavailable: dict[str, str] = {}
    notes: dict[str, str] = {}
    metrics: dict[str, float] = {}

    want_media = _media_wanted(config, rows)
    identity = report_identity(config, injected, wants_clap(config, run_config, rows), wants_imagebind(rows))
    journal = ReportJournal(
        out_dir / "journal", identity, fresh=config.fresh, notice=notice, flush_every_s=config.journal_every_s
    )
    references = ReferenceIndex(config.reference)  # a bad --reference fails here, before any scoring
    keys = [clip_key(row, want, references) for row, want in zip(rows, want_media)]
    scored = journal.reusable(keys)
    reused = len(scored)
    if reused and notice is not None:
        notice(f"resuming: {reused} of {len(rows)} clips already scored in {journal.dir}")
    done = {c.index for c in scored}
    todo = [(i, row, want_media[i]) for i, row in enumerate(rows) if i not in done]
    model_load_s = 0.0  # stays 0 when the journal holds every clip: no model is loaded

    def on_loaded(infos: dict[str, BackendInfo], load_s: float, loaded: dict[str, str]) -> None:
        nonlocal model_load_s
        model_load_s = load_s
        journal.set_loaded(infos, load_s, loaded)

    def on_scored(clips: list[ScoredClip]) -> None:
        scored.extend(clips)
        journal.add([(keys[c.index], c) for c in clips])
        if progress is not None:
            progress(len(scored), len(rows), rows[clips[-1].index].video_id)

    try:
        if todo or journal.loaded is None:
            if config.workers > 1:  # each actor lists the references in its own process
                from dub.workflows.report.parallel import score_on_ray

                score_on_ray(config, run_config, rows, todo, injected, on_loaded, on_scored)
            else:  # the index the clip keys were made with: the reference folder is listed once
                score_here(config, run_config, rows, todo, injected, on_loaded, on_scored, references)
    finally:  # what was scored survives an error, a kill of the workers or Ctrl-C
        journal.flush()
    infos, loaded_unavailable = journal.loaded_models()
    unavailable.update(loaded_unavailable)
    scored.sort(key=lambda c: c.index)
    records = [c.record for c in scored]
    media = {rows[c.index].video_id: c.media for c in scored if c.media is not None}

    _set_metrics(infos, scored, records, metrics, notes, unavailable)
    _per_clip_means(records, metrics, unavailable)
    for key in list(unavailable):
        if key in metrics or f"{key}_mean" in metrics:
            del unavailable[key]  # e.g. a backend-level note superseded by a computed value

    statuses = [r["status"] for r in records]
    summary = {
        "run_dir": str(config.run_dir),
        "n_rows": len(records),
        "n_scored": statuses.count("ok"),
        "n_skipped": statuses.count("skipped"),
        "n_failed": statuses.count("failed"),
        "n_with_reference": sum(1 for r in records if r["reference_path"]),
        "n_with_events": sum(1 for r in records if r["onset_reference"] == "events"),
        "metrics": {k: nan_to_none(v) for k, v in metrics.items() if not k.startswith("t_")},
        "notes": notes,
        "unavailable": dict(sorted(unavailable.items())),
        "lower_is_better": sorted(k for k in LOWER_IS_BETTER),
        "timings_ms_per_clip": _timings_ms(records),
        "journal": {"reused": reused, "scored": len(todo)},  # clips taken from the journal, scored now
        "candidate_selection": candidate_selection(rows),
        "sample": None
        if sampled_from is None
        else {"clips": config.sample, "seed": config.sample_seed, "of_generated": sampled_from},
        "timings_s_total": {
            "model_load": model_load_s,
            **{k[2:-2]: v for k, v in metrics.items() if k.startswith("t_")},
        },
        "onset_definition": {
            "tolerance_s": config.onsets.tolerance_s,
            "prf_window_s": config.onsets.prf_window_s,
            "peak_delta": config.onsets.peak_delta,
            "max_duration_s": config.onsets.max_duration_s,
        },
        "config": config.as_dict(),
        "run_config": run_config,
    }
    _write_parquet(records, out_dir / "report.parquet")
    write_text_atomic(out_dir / "summary.json", json.dumps(summary, indent=2, default=str))
    result = ReportResult(records, summary, out_dir, media)
    if config.write_html:
        from dub.workflows.report.page import render_page

        write_text_atomic(out_dir / "index.html", render_page(summary, records, media))
    return result
