"""Optional evaluation of a run's checkpoints on a validation manifest: `dub generate` with the
checkpoint, then `dub report` against the manifest's own audio. Runs on the driver after
training (the checkpoints are kept, so the figures are those a periodic evaluation would give),
for every checkpoint at a multiple of `sample_every` and the final one.

    <log dir>/eval/step_<n>/generated/   generate run
    <log dir>/eval/step_<n>/report/      report (report.parquet, summary.json, index.html)
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from dub.workflows.train.config import TrainConfig
from dub.workflows.train.data import ShardSet
from dub.workflows.train.loop import META_FILE, MODEL_FILE


def evaluate_checkpoints(cfg: TrainConfig, shards: ShardSet, result) -> list[dict[str, Any]]:
    import json

    chosen: dict[int, str] = {}
    for checkpoint, _metrics in result.best_checkpoints or []:
        meta = Path(checkpoint.path) / META_FILE
        if not meta.is_file():
            continue
        step = int(json.loads(meta.read_text())["step"])
        if cfg.sample_every is not None and step % cfg.sample_every == 0:
            chosen[step] = checkpoint.path
    if result.checkpoint is not None:
        meta = Path(result.checkpoint.path) / META_FILE
        chosen[int(json.loads(meta.read_text())["step"])] = result.checkpoint.path
    bundle = shards.first_meta.get("bundle") or "demo"
    return [evaluate_checkpoint(cfg, bundle, step, path, resize=shards.resize) for step, path in sorted(chosen.items())]


def evaluate_checkpoint(
    cfg: TrainConfig, bundle: str, step: int, checkpoint_dir: str, *, resize: str = "fast"
) -> dict[str, Any]:
    from dub.model.runtime.bundles import sampler_defaults
    from dub.model.runtime.generator import SamplerConfig
    from dub.workflows.generate.config import GenerateConfig
    from dub.workflows.generate.run import run_generate
    from dub.workflows.report.config import ReportConfig
    from dub.workflows.report.run import run_report

    out = cfg.resolved_log_dir / "eval" / f"step_{step:08d}"
    record: dict[str, Any] = {"step": step, "checkpoint": f"{checkpoint_dir}/{MODEL_FILE}", "dir": str(out)}
    try:
        generated = run_generate(
            GenerateConfig(
                out_dir=str(out / "generated"),
                manifest=cfg.val_manifest,
                model=bundle,
                checkpoint=record["checkpoint"],
                seed=cfg.seed,
                resize=resize,  # the sampler `dub generate` runs on this checkpoint
                sampler=SamplerConfig(**sampler_defaults(bundle, record["checkpoint"]).as_dict()),
            )
        )
        record["generate"] = generated.as_dict()
        report = run_report(
            ReportConfig(run_dir=str(out / "generated"), out_dir=str(out / "report"), reference=cfg.val_manifest)
        )
        record["summary"] = report.summary.get("metrics", report.summary)
    except Exception as exc:  # noqa: BLE001 - an evaluation failure must not lose the trained run
        record["error"] = f"{type(exc).__name__}: {exc}"
        record["summary"] = {"error": record["error"]}
    return record
