"""`dub report`'s journal: scored clips saved as they come back, so a crashed or stopped report
resumes where it was instead of starting over.

    REPORT_DIR/journal/meta.json                what the clips were scored with (the hash and its
        inputs) and what loading the models reported (backend infos, unavailable metrics), so a
        rerun with nothing left to score loads no model
    REPORT_DIR/journal/part-<ns>-<id>.parquet   scored clips, one row each: the key of its generate
        row, the report record as JSON, page media as bytes, embedding features as .npz bytes

Parts are written under a temporary name and renamed (manifests/io.py), so a crash leaves whole
parts or none; temporaries of a killed run are deleted at start. Nothing is pickled: features are
read back with np.load(allow_pickle=False). A journal made with another configuration is discarded
with a notice: a report directory holds one report, and mixing clips scored two ways would give
set-level metrics (FAD, IS) of neither.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import time
import uuid
from collections.abc import Callable
from pathlib import Path

import numpy as np

from dub.storage.atomic import write_json_atomic
from dub.storage.temporaries import remove_stale_temporaries
from dub.workflows.metrics.embeddings import BackendInfo, ClipFeatures
from dub.workflows.metrics.run_inputs import (
    GeneratedRow,
    ReferenceIndex,
    events_sidecar,
)
from dub.workflows.metrics.weights import METRIC_WEIGHTS, WeightsLocator
from dub.workflows.report.config import ClipMedia, Injected, ReportConfig, ScoredClip

__all__ = ["ReportJournal", "clip_key", "journaled_embeddings", "report_identity"]

# 2: records carry ib_score / ib_reason; 3: clip keys include the stats of the source, its events
# sidecar and its reference file. Bump when the part layout, a record or a key changes
VERSION = 3
# fields that do not change any clip's scores: where things go, how many workers score them;
# max_plots / write_html only pick the clips that get page media, and each clip's key says
# whether it has media, so changing them rescores only the clips that gain or lose it; sample and
# sample_seed pick which clips are scored, not how
NOT_SCORING = (
    "out_dir",
    "workers",
    "address",
    "write_html",
    "max_plots",
    "fresh",
    "sample",
    "sample_seed",
    "journal_every_s",
)
BACKEND_WEIGHTS = {"panns": "panns_cnn14_16k", "vggish": "vggish", "passt": "passt"}  # logmel has none
MEDIA_FIELDS = tuple(f.name for f in dataclasses.fields(ClipMedia))


def _weights_file(locator: WeightsLocator, key: str) -> list | None:
    """Path, size and mtime of a metric's weight file (None: missing). A stat, not a checksum:
    hashing gigabytes on every rerun would cost more than it protects against."""
    spec = METRIC_WEIGHTS[key]
    path = locator.registry.locate(spec.model_name, spec.file_name)
    if path is None:
        return None
    stat = path.stat()
    return [str(path), stat.st_size, stat.st_mtime_ns]


def report_identity(config: ReportConfig, injected: Injected, wants_clap: bool, wants_ib: bool = True) -> dict:
    """Everything besides a clip's own row that its scores depend on: the scoring configuration and
    the weight files of the models it uses (present or not: weights imported between runs would
    otherwise give FAD over a subset). Models passed in already built are only marked "injected"."""
    locator = WeightsLocator(config.weights_dir)
    if injected.backends is not None:
        backends = {name: "injected" for name in injected.backends}
    else:
        backends = {
            name: _weights_file(locator, BACKEND_WEIGHTS[name]) if name in BACKEND_WEIGHTS else None
            for name in config.backends
        }
    desync = (
        None
        if "desync" in config.skip
        else ("injected" if injected.offsets is not None else _weights_file(locator, "synchformer"))
    )
    clap = None if not wants_clap else "injected" if injected.clap is not None else _weights_file(locator, "laion_clap")
    ib = (
        None
        if "ib" in config.skip or not wants_ib
        else ("injected" if injected.imagebind is not None else _weights_file(locator, "imagebind"))
    )
    scoring = {k: v for k, v in config.as_dict().items() if k not in NOT_SCORING}
    return {
        "version": VERSION,
        "config": scoring,
        "models": {"backends": backends, "desync": desync, "clap": clap, "ib": ib},
    }


def _stat(path: Path | None) -> list | None:
    try:
        stat = path.stat() if path is not None else None
    except OSError:
        return None
    return None if stat is None else [stat.st_size, stat.st_mtime_ns]


def clip_key(row: GeneratedRow, want_media: bool, references: ReferenceIndex | None = None) -> str:
    """A clip's journal entry is reused only while this is unchanged: every field of its generate
    row, the size and mtime of its generated outputs (regenerated in place) and of what it is
    scored against (the source video, whose audio track can be the reference and whose frames
    the sync metrics read; its events sidecar; its --reference file), whether it gets media.
    Stats, not reads: a rerun over a large run stays cheap."""
    values = dataclasses.asdict(row)
    if row.candidate_scores is None:  # added later: clips of one-candidate runs keep their keys
        del values["candidate_scores"], values["candidate_chosen"], values["candidate_metric"]
    fields = [None if v is None else str(v) for v in values.values()]
    outputs = [_stat(p) for p in (row.output_mp4, row.output_audio, row.output_shard)]
    source = row.source_path
    sidecar = events_sidecar(source)
    candidates = (
        []
        if references is None
        else [references.by_key.get(k) for k in (row.video_id, source.stem if source else None) if k is not None]
    )
    inputs = [_stat(source), _stat(sidecar), *[[str(p), _stat(p)] for p in candidates if p is not None]]
    text = json.dumps([fields, outputs, inputs, want_media])
    return hashlib.blake2b(text.encode(), digest_size=16).hexdigest()


def _npz(features: dict[str, ClipFeatures]) -> bytes | None:
    if not features:
        return None
    arrays = {}
    for name, f in features.items():
        arrays[f"{name}/embeddings"] = f.embeddings
        if f.logits is not None:
            arrays[f"{name}/logits"] = f.logits
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    return buf.getvalue()


def _from_npz(data: bytes | None) -> dict[str, ClipFeatures]:
    if data is None:
        return {}
    with np.load(io.BytesIO(data), allow_pickle=False) as npz:
        arrays = {name: npz[name] for name in npz.files}
    names = dict.fromkeys(k.rsplit("/", 1)[0] for k in arrays)  # backend order as written
    return {n: ClipFeatures(arrays[f"{n}/embeddings"], arrays.get(f"{n}/logits")) for n in names}


def _json_scalar(value):
    if isinstance(value, np.generic):
        return value.item()
    raise TypeError(f"{type(value).__name__} in a report record")


def encode_clip(key: str, clip: ScoredClip) -> dict:
    """One part row. Encoded when the clip comes back, before the set-level step adds KL to its record."""
    row = {
        "video_id": clip.record["video_id"],
        "key": key,
        # NaN stays NaN (json writes it as NaN); key order is kept: it is report.parquet's column order
        "record": json.dumps(clip.record, default=_json_scalar),
        "generated": _npz(clip.generated),
        "reference": _npz(clip.reference),
    }
    for name in MEDIA_FIELDS:
        value = None if clip.media is None else getattr(clip.media, name)
        row[f"media_{name}"], row[f"media_{name}_mime"] = value if isinstance(value, tuple) else (value, None)
    return row


def decode_clip(index: int, row: dict) -> ScoredClip:
    media = None
    if row[f"media_{MEDIA_FIELDS[0]}"] is not None:
        media = ClipMedia(
            **{
                name: row[f"media_{name}"]
                if row[f"media_{name}_mime"] is None
                else (row[f"media_{name}"], row[f"media_{name}_mime"])
                for name in MEDIA_FIELDS
            }
        )
    return ScoredClip(index, json.loads(row["record"]), media, _from_npz(row["generated"]), _from_npz(row["reference"]))


def _part_schema():
    import pyarrow as pa

    fields = [
        ("video_id", pa.string()),
        ("key", pa.string()),
        ("record", pa.string()),
        ("generated", pa.binary()),
        ("reference", pa.binary()),
    ]
    for name in MEDIA_FIELDS:
        fields += [(f"media_{name}", pa.binary()), (f"media_{name}_mime", pa.string())]
    return pa.schema(fields)


def journaled_embeddings(directory: Path, backend: str) -> dict[str, tuple[np.ndarray | None, np.ndarray | None]]:
    """video_id -> (generated, reference) embeddings of one FAD backend, read from a report's
    journal without changing it (a later part wins): what set-level figures were computed from,
    for tools that recompute them on subsets of the clips (bootstrap intervals)."""
    import pyarrow.parquet as pq

    found: dict[str, tuple[np.ndarray | None, np.ndarray | None]] = {}
    for part in sorted(Path(directory).glob("part-*.parquet")):
        for row in pq.read_table(part, columns=["video_id", "generated", "reference"]).to_pylist():
            generated, reference = _from_npz(row["generated"]), _from_npz(row["reference"])
            found[row["video_id"]] = tuple(  # type: ignore[assignment]
                f[backend].embeddings if backend in f else None for f in (generated, reference)
            )
    return found


class ReportJournal:
    """Scored clips of one report configuration in `directory`, written in small atomic parts."""

    def __init__(
        self,
        directory: Path,
        identity: dict,
        fresh: bool = False,
        notice: Callable[[str], None] | None = None,
        flush_every_s: float = 2.0,
        flush_clips: int = 64,
    ) -> None:
        # flush_every_s bounds what a kill -9 (which runs no `finally`) loses: the clips scored since
        # the last part. Each flush writes one part; a resume reads them all
        self.dir = Path(directory)
        self.dir.mkdir(parents=True, exist_ok=True)
        remove_stale_temporaries(self.dir)  # a killed run's half-written part
        self.identity = identity
        self.hash = hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()[:16]
        self.flush_every_s, self.flush_clips = flush_every_s, flush_clips
        meta = self._read_meta()
        parts = sorted(self.dir.glob("part-*.parquet"))
        if fresh or meta.get("hash") != self.hash:
            if parts and notice is not None:
                why = "--fresh" if fresh else "made with another configuration or other weights"
                notice(f"discarded the journal ({why}): {len(parts)} part(s) in {self.dir}; every clip is rescored")
            for part in parts:
                part.unlink()
            meta = {}
        # (infos, load seconds, unavailable) of the models this configuration loads, once known
        self.loaded: dict | None = meta.get("loaded")
        self._write_meta()
        self._rows: list[dict] = []
        self._last = time.monotonic()

    def _read_meta(self) -> dict:
        try:
            return json.loads((self.dir / "meta.json").read_text())
        except (OSError, ValueError):
            return {}

    def _write_meta(self) -> None:
        write_json_atomic(self.dir / "meta.json", {"hash": self.hash, "identity": self.identity, "loaded": self.loaded})

    def set_loaded(self, infos: dict[str, BackendInfo], load_s: float, unavailable: dict[str, str]) -> None:
        self.loaded = {
            "infos": [dataclasses.asdict(i) for i in infos.values()],  # a list: backend order
            "load_s": load_s,
            "unavailable": unavailable,
        }
        self._write_meta()

    def loaded_models(self) -> tuple[dict[str, BackendInfo], dict[str, str]]:
        infos = [BackendInfo(**i) for i in self.loaded["infos"]]
        return {i.name: i for i in infos}, dict(self.loaded["unavailable"])

    def reusable(self, keys: list[str]) -> list[ScoredClip]:
        """Journaled clips whose key is `keys[i]`, as ScoredClips of index i (a later part wins).
        Decoded part by part: the journal of a large run does not sit in memory twice."""
        import pyarrow as pa
        import pyarrow.parquet as pq

        indexes: dict[str, list[int]] = {}
        for i, key in enumerate(keys):
            indexes.setdefault(key, []).append(i)
        found: dict[int, ScoredClip] = {}
        for part in sorted(self.dir.glob("part-*.parquet")):
            try:
                rows = pq.read_table(part).to_pylist()
            except (pa.ArrowException, OSError):
                part.unlink(missing_ok=True)  # not a part this journal wrote whole
                continue
            for row in rows:
                for i in indexes.get(row["key"], ()):
                    found[i] = decode_clip(i, row)
        return [found[i] for i in sorted(found)]

    def add(self, clips: list[tuple[str, ScoredClip]]) -> None:
        self._rows.extend(encode_clip(key, clip) for key, clip in clips)
        if len(self._rows) >= self.flush_clips or time.monotonic() - self._last >= self.flush_every_s:
            self.flush()

    def flush(self) -> None:
        if not self._rows:
            return
        import pyarrow as pa

        from dub.manifests.io import write_parquet_atomic

        table = pa.Table.from_pylist(self._rows, schema=_part_schema())
        write_parquet_atomic(table, self.dir / f"part-{time.time_ns()}-{uuid.uuid4().hex[:6]}.parquet")
        self._rows = []
        self._last = time.monotonic()
