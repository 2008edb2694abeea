"""`dub report` on object storage: a run in a bucket is scored from local copies of what the
report reads, and a report directory in a bucket is written in a local stage and published.

Scoring reads whole files many times (decoding, resampling, the page's previews), so the clips
the report scores (all of them, or its --sample) are copied once into the stage: their outputs,
source videos and events sidecars, plus run.json and report.parquet with the rows pointed at the
copies. Copies stay in the stage (DUB_STAGE_DIR), so a rerun on the same machine fetches nothing
again; the report's journal is pulled from and published to the output prefix, so a rerun
elsewhere resumes too (clips whose copies are new there are rescored: their files changed).
"""

from __future__ import annotations

import dataclasses
import posixpath
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path, PurePosixPath

from dub.storage import location
from dub.storage.mirror import Mirror
from dub.workflows.report.config import ReportConfig
from dub.workflows.report.run import sample_rows

_PATH_COLUMNS = ("path", "output_mp4", "output_shard", "output_audio")


def _copy(uri: str, root: Path) -> str:
    """The stage's copy of one object (fetched when missing or of another size)."""
    scheme, rest = uri.split("://", 1)
    local = root / scheme / rest  # beside each other as in the store: a source and its sidecar
    info = location.stat(uri)
    if info is None:
        raise FileNotFoundError(f"{uri} is listed in the run's report but is not in the store")
    if not local.is_file() or local.stat().st_size != info.size:
        local.parent.mkdir(parents=True, exist_ok=True)
        tmp = local.with_name(local.name + ".part")
        tmp.write_bytes(location.read_bytes(uri))
        tmp.replace(local)
    return str(local)


def localize_run(uri: str, sample: int | None, seed: int) -> Path:
    """A local folder that `run_report` scores like the run at `uri` (see the module's note)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from dub.manifests.io import write_parquet_atomic
    from dub.workflows.metrics.run_inputs import GeneratedRow

    run = Mirror.of(uri, "scoring")
    stage = run.stage
    stage.mkdir(parents=True, exist_ok=True)
    run.pull("run.json", "report.parquet")
    if not (stage / "report.parquet").is_file():
        raise FileNotFoundError(f"{uri} is not a generate run: report.parquet is missing")
    table = pq.read_table(stage / "report.parquet")
    rows = table.to_pylist()
    picked = {
        r.video_id
        for r in sample_rows(
            [GeneratedRow(r["video_id"], None, str(r["status"]), None, None, None, None) for r in rows], sample, seed
        )
        if r.status == "done"
    }
    objects = stage / "objects"
    for row in rows:
        if row["video_id"] not in picked:
            continue
        source = row.get("path")
        if source and location.is_uri(source):  # the events sidecar beside the source, if any
            sidecar = posixpath.join(posixpath.dirname(source), PurePosixPath(source).stem + ".events.json")
            if location.exists(sidecar):
                _copy(sidecar, objects)
        for column in _PATH_COLUMNS:
            value = row.get(column)
            if value and location.is_uri(value):
                row[column] = _copy(value, objects)
    write_parquet_atomic(pa.Table.from_pylist(rows, schema=table.schema), stage / "report.parquet")
    return stage


@contextmanager
def remote_report(config: ReportConfig) -> Iterator[ReportConfig]:
    """`config` with object-storage run and output folders replaced by local ones for the block;
    the output is published (every file, one upload each) when the block ends normally."""
    changes: dict = {}
    if location.is_uri(config.run_dir):
        changes["run_dir"] = str(localize_run(config.run_dir, config.sample, config.sample_seed))
    out = None
    if location.is_uri(config.out_dir):
        out = Mirror.of(config.out_dir, "report")
        out.stage.mkdir(parents=True, exist_ok=True)
        out.pull("journal")
        changes["out_dir"] = str(out.stage)
    if out is None:
        yield dataclasses.replace(config, **changes)
        return
    with out.leased("report"):
        yield dataclasses.replace(config, **changes)
        for path in sorted(p for p in out.stage.rglob("*") if p.is_file() and p.name != ".dub.lock"):
            out.publish(path, keep=True)
