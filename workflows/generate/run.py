"""`dub generate`: the driver that wires the Ray Data stages and writes outputs.

    pending manifest rows -> window rows -> decode (CPU tasks) -> model replicas (actor pool)
        -> driver: collect a video's windows, stitch, write mp4 / shard, journal its row

The driver only wires stages and writes results; resume is explicit (stable ids, outputs on
disk are the truth, atomic renames), because Ray Data's own checkpointing only covers
read -> write plans.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from dub.errors import short_error
from dub.manifests.schema import REPORT_SCHEMA
from dub.storage.atomic import atomic_path, write_json_atomic
from dub.storage.journal import Journal, in_schema, read_journal_table
from dub.storage.lock import exclusive_output
from dub.storage.temporaries import remove_stale_temporaries
from dub.workflows.generate.candidates import ModelScorer
from dub.workflows.generate.clips import (
    MODEL_STAGES,
    STAGE_COLUMNS,
    PlannedVideo,
    expected_audio,
    expected_mp4,
    report_row,
)
from dub.workflows.generate.config import GenerateConfig, run_paths, window_seed
from dub.workflows.generate.content import tagger_available
from dub.workflows.generate.sinks import ShardWriter
from dub.workflows.generate.writer import ClipWriter
from dub.workflows.metrics.embeddings import BackendUnavailable


class GenerateError(RuntimeError):
    """A run that cannot start or must stop (config clash, too many failures)."""


@dataclass
class Summary:
    out_dir: str
    config_hash: str
    total: int = 0
    done: int = 0
    failed: int = 0
    skipped: int = 0
    already_done: int = 0
    generated: int = 0
    audio_seconds: float = 0.0
    wall_s: float = 0.0
    errors: dict[str, int] = field(default_factory=dict)
    replicas: int = 0
    # summed over this run's windows: CPU decoding (tasks) and the replicas' three model stages
    stage_seconds: dict[str, float] = field(default_factory=dict)
    writers: int = 0  # writer actors (0: the driver wrote every clip)
    driver_cpu_s: float = 0.0  # the driver process's CPU seconds from the first result on
    # the replicas' model seconds / the time from each replica's first call to its last: near 1,
    # the models were the bottleneck; well below, they waited between calls (on decoding, or on
    # the driver). Host time around each stage; on a GPU it waits for the stage's kernels.
    model_busy_fraction: float | None = None

    @property
    def clips_per_s(self) -> float:
        return self.generated / self.wall_s if self.wall_s > 0 else 0.0

    def as_dict(self) -> dict:
        d = dict(self.__dict__)
        d["clips_per_s"] = self.clips_per_s
        return d


class _BusyClock:
    """The run's stage seconds, and Summary.model_busy_fraction: model seconds over the time each
    replica spent between the start of its first call and the end of its last (the replicas'
    own clocks, so results that reach the driver in bursts do not shorten it); what is left of
    that time the replica waited for decoded windows or for the driver to take its output."""

    def __init__(self, replicas: int) -> None:
        self.replicas = replicas
        self.stage_seconds = dict.fromkeys(STAGE_COLUMNS, 0.0)
        self.spans: dict[str, list[float]] = {}  # replica -> [first call start, last call end]
        self.batches = 0

    def add(self, batch: dict) -> None:
        # a replica gives each row of a call its share of the call's time, counting only the rows
        # it ran (decoding failures have none): summing over those rows gives the call's time
        ran = np.array([not e for e in batch.get("error", [])], dtype=bool)
        for name, column in STAGE_COLUMNS.items():
            if column not in batch:
                continue
            values = np.asarray(batch[column], dtype=float)
            self.stage_seconds[name] += float(
                values.sum() if name == "decode_cpu" or len(ran) != len(values) else values[ran].sum()
            )
        for replica, start, end in zip(
            batch.get("replica", ()), batch.get("t_call_start", ()), batch.get("t_call_end", ())
        ):
            span = self.spans.setdefault(str(replica), [float(start), float(end)])
            span[0], span[1] = min(span[0], float(start)), max(span[1], float(end))
        self.batches += 1

    def fill(self, summary: Summary) -> None:
        summary.replicas = self.replicas
        summary.stage_seconds = {k: round(v, 3) for k, v in self.stage_seconds.items()}
        span = sum(end - start for start, end in self.spans.values())
        model_s = sum(self.stage_seconds[name] for name in MODEL_STAGES)
        if self.batches >= 2 and span > 0:  # one batch is busy by construction
            summary.model_busy_fraction = round(model_s / span, 3)  # <= 1: stages run inside calls


ProgressFn = Callable[[Summary], None]


def run_generate(cfg: GenerateConfig, progress: ProgressFn | None = None) -> Summary:
    from dub.model.runtime.bundles import bundle_info, resolve_bundle

    started = time.perf_counter()
    info = bundle_info(cfg.model, checkpoint=cfg.checkpoint)
    window_s = cfg.window_s or info.window_s
    if cfg.window_s is not None and abs(cfg.window_s - info.window_s) > 1e-6:
        raise GenerateError(
            f"--window {cfg.window_s} differs from the model's window of {info.window_s} s; "
            "this model generates fixed-length windows"
        )
    if cfg.fp8 and resolve_bundle(cfg.model).encoders != "mmaudio":
        raise GenerateError(f"--fp8 runs CLIP's vision tower in FP8; the {cfg.model!r} bundle does not use it")
    config_hash = cfg.config_hash(info.weights_hash)
    if cfg.reject and not tagger_available():
        raise GenerateError(
            f"--reject {','.join(cfg.reject)} needs PANNs CNN14 weights to tell speech and music "
            "(`dub weights list` says where Cnn14_16k_mAP=0.438.pth goes)"
        )
    scorer = None
    if cfg.candidates > 1 and cfg.select != "av-align":  # its model, loaded once, before any work
        try:
            scorer = ModelScorer(cfg.select)
        except BackendUnavailable as exc:
            raise GenerateError(f"--select {cfg.select}: {exc}") from None
    paths = run_paths(cfg.out_dir)
    with exclusive_output(paths["out"], "generate"), paths["mirror"].leased("generate"):
        return _run_locked(cfg, progress, info, window_s, config_hash, paths, started, scorer)


def _run_locked(
    cfg: GenerateConfig,
    progress: ProgressFn | None,
    info,
    window_s: float,
    config_hash: str,
    paths: dict,
    started: float,
    scorer=None,
) -> Summary:
    from dub.workflows.ray_cluster import RayAuthError, connect, quiet_known_ray_lines

    _prepare_out_dir(cfg, paths, config_hash, info)

    videos, skipped_rows = load_inputs(cfg, window_s)
    state = reconcile(cfg, paths, videos, config_hash)
    pending = state.pending
    if cfg.limit is not None:
        pending = pending[: cfg.limit]

    summary = Summary(
        out_dir=paths["where"],
        config_hash=config_hash,
        total=len(videos) + len(skipped_rows),
        skipped=len(skipped_rows),
        already_done=state.done,
        done=state.done,
    )
    journal = Journal(paths["journal"], REPORT_SCHEMA, on_part=lambda part: paths["mirror"].publish(part, keep=True))
    # Skipped rows are derived from the manifest on every run, so they are never journaled.
    journal.add(state.adopted)
    try:
        if pending:
            try:
                resources = connect(cfg.address)
            except RayAuthError as exc:
                raise GenerateError(str(exc)) from None
            with quiet_known_ray_lines():  # Ray's per-run ERROR line about its own actor wrapper
                _execute(
                    cfg, info, window_s, config_hash, pending, paths, journal, summary, resources, progress, scorer
                )
    finally:  # a run stopped by --max-failures still leaves a report of what it did
        journal.flush()
        _write_report(paths, [v.video_id for v in videos], skipped_rows)
    summary.wall_s = time.perf_counter() - started
    paths["mirror"].publish(write_json_atomic(paths["out"] / "summary.json", summary.as_dict()), keep=True)
    return summary


# -- inputs and resume ---------------------------------------------------------------------


def existing_run(paths: dict) -> dict | None:
    """The run.json of the run already in the output folder; None when there is none."""
    return json.loads(paths["run_json"].read_text()) if paths["run_json"].exists() else None


# what a run reads back from an object-storage output before it starts (its outputs are listed)
STATE_FILES = ("run.json", "journal", "report.parquet")


def pull_state(paths: dict) -> None:
    """Bring the output's state files into the stage from the store (no-op for a local --out)."""
    if paths["mirror"].active:
        paths["out"].mkdir(parents=True, exist_ok=True)
        paths["mirror"].pull(*STATE_FILES)


def starts_empty(cfg: GenerateConfig, previous: dict | None) -> bool:
    """Whether the run clears the folder's outputs first: --overwrite over an existing run,
    whatever its configuration (the dry run plans by the same rule)."""
    return previous is not None and cfg.overwrite


def _prepare_out_dir(cfg: GenerateConfig, paths: dict, config_hash: str, info) -> None:
    out = paths["where"]
    paths["out"].mkdir(parents=True, exist_ok=True)
    pull_state(paths)
    previous = existing_run(paths)
    if previous is not None and previous.get("config_hash") != config_hash and not cfg.overwrite:
        raise GenerateError(
            f"{out} holds a run with another configuration (hash {previous.get('config_hash')}, "
            f"this one {config_hash}); write to a new --out directory or pass --overwrite"
        )
    if starts_empty(cfg, previous):
        for key in ("mp4", "shards", "journal", "audio"):
            shutil.rmtree(paths[key], ignore_errors=True)
            paths["mirror"].remove(key)
        paths["report"].unlink(missing_ok=True)
        paths["mirror"].remove("report.parquet")
    remove_stale_temporaries(paths["out"], paths["mp4"], paths["shards"], paths["journal"], paths["audio"])
    run_json = write_json_atomic(
        paths["run_json"],
        {"config_hash": config_hash, "config": cfg.as_dict(), "model": info.as_dict(), "dub_version": _version()},
    )
    paths["mirror"].publish(run_json, keep=True)


def _version() -> str:
    """The installed package's version (read from its metadata: workflows do not import dub)."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("dub")
    except PackageNotFoundError:
        return "unknown"


_PLAN_COLUMNS = ("video_id", "path", "status", "duplicate_of", "error", "duration_s", "prompt")


def load_inputs(cfg: GenerateConfig, window_s: float) -> tuple[list[PlannedVideo], list[dict]]:
    from dub.workflows.media.windows import plan_windows

    if cfg.text_to_audio:
        return _load_prompts(cfg, window_s), []
    from dub.manifests.io import read_manifest

    table = read_manifest(cfg.manifest)
    # only the columns planning reads, a batch of rows at a time: at a million rows the whole
    # manifest as Python dicts was most of the driver's memory
    wanted = [c for c in _PLAN_COLUMNS if c in table.column_names]
    videos, skipped = [], []
    for row in (r for batch in table.select(wanted).to_batches(max_chunksize=65536) for r in batch.to_pylist()):
        vid = row["video_id"]
        if row.get("status") == "duplicate" or row.get("duplicate_of"):
            skipped.append(report_row(vid, row["path"], "skipped", f"duplicate of {row.get('duplicate_of')}"))
            continue
        if row.get("status") != "ok":
            skipped.append(report_row(vid, row["path"], "skipped", f"ingest: {row.get('error') or row.get('status')}"))
            continue
        duration = float(row.get("duration_s") or 0.0)
        if duration <= 0:
            skipped.append(report_row(vid, row["path"], "skipped", "ingest found no duration"))
            continue
        prompt = (row.get("prompt") or "").strip() or cfg.prompt
        windows = [(w.start_s, w.end_s - w.start_s) for w in plan_windows(duration, window_s, cfg.overlap_s)]
        videos.append(PlannedVideo(vid, row["path"], prompt, duration, windows))
    return videos, skipped


def _load_prompts(cfg: GenerateConfig, window_s: float) -> list[PlannedVideo]:
    path = Path(cfg.prompts_file)
    if not path.is_file():
        raise GenerateError(f"prompts file {path} does not exist")
    duration = cfg.t2a_duration_s or window_s
    if duration > window_s + 1e-6:
        raise GenerateError(f"--duration {duration} is longer than the model's window ({window_s} s)")
    videos = []
    for index, line in enumerate(path.read_text(encoding="utf-8").splitlines()):
        prompt = line.strip()
        if not prompt:
            continue
        vid = hashlib.sha256(f"{index}:{prompt}".encode()).hexdigest()[:16]
        videos.append(PlannedVideo(vid, f"prompt:{index}", prompt, duration, [(0.0, duration)]))
    if not videos:
        raise GenerateError(f"prompts file {path} has no prompts")
    return videos


@dataclass
class Reconciled:
    done: int  # clips whose every requested output is there
    adopted: list[dict]  # rows of done clips the journal lacks (outputs published just before a crash)
    pending: list[PlannedVideo]


def reconcile(cfg: GenerateConfig, paths: dict, videos: list[PlannedVideo], config_hash: str) -> Reconciled:
    """Done = every requested output is on disk. Outputs are the truth; the journal adds timings.
    Only the journal's done ids are read into Python (a finished million-clip run's rows as
    dicts were gigabytes)."""
    import pyarrow.compute as pc

    journal = read_journal_table(paths["journal"], REPORT_SCHEMA)
    journaled = set(journal.filter(pc.equal(journal["status"], "done"))["video_id"].to_pylist())
    mirror = paths["mirror"]
    present = {
        "shards": mirror.tar_keys("shards") if "wds" in cfg.formats else {},
        "mp4": mirror.names("mp4") if "mp4" in cfg.formats or cfg.text_to_audio else set(),
        "audio": mirror.names("audio") if cfg.text_to_audio else set(),
    }
    state = Reconciled(0, [], [])
    for video in videos:
        outputs, missing = _existing_outputs(cfg, paths, video, present)
        if missing:
            video.missing, video.existing = missing, outputs
            state.pending.append(video)
            continue
        state.done += 1
        if video.video_id not in journaled:
            # Outputs made durable just before a crash, before their journal row: adopt them.
            row = report_row(video.video_id, video.path, "done", None, config_hash=config_hash)
            row.update(outputs)
            row["prompt"] = video.prompt
            state.adopted.append(row)
    return state


def _existing_outputs(cfg, paths, video: PlannedVideo, present: dict) -> tuple[dict, tuple[str, ...]]:
    """(outputs already written, formats still missing); `present` lists what the output holds."""
    mirror = paths["mirror"]
    if cfg.text_to_audio:
        audio = expected_audio(paths, video, cfg.audio_codec)
        return ({"output_audio": mirror.location(audio)}, ()) if audio.name in present["audio"] else ({}, ("audio",))
    outputs, missing = {}, []
    if "mp4" in cfg.formats:
        mp4 = expected_mp4(paths, video)
        if mp4.name in present["mp4"]:
            outputs["output_mp4"] = mirror.location(mp4)
        else:
            missing.append("mp4")
    if "wds" in cfg.formats:
        if video.video_id in present["shards"]:
            outputs["output_shard"] = present["shards"][video.video_id]
        else:
            missing.append("wds")
    return outputs, tuple(missing)


# -- execution -----------------------------------------------------------------------------


# Pending clips go through Ray Data this many at a time: the driver holds one dict per window of
# the slice (Ray Data's input rows) instead of one per window of the run, which at a million
# clips was gigabytes. Each slice starts its own replicas (a model load per slice).
CLIPS_PER_SLICE = 20_000


def _execute(
    cfg, info, window_s, config_hash, pending, paths, journal, summary, resources, progress, scorer=None
) -> None:
    from dub.workflows.ray_cluster import model_replicas

    try:
        replicas = model_replicas(cfg.replicas, resources)
    except ValueError as exc:
        raise GenerateError(str(exc)) from exc
    outputs = _Outputs(cfg, paths, info, config_hash, journal, scorer, replicas)
    summary.writers = len(outputs.actors)
    tally = _Tally(cfg, summary, progress)
    clock = _BusyClock(replicas)
    driver_cpu = time.process_time()
    try:
        for start in range(0, len(pending), CLIPS_PER_SLICE):
            part = pending[start : start + CLIPS_PER_SLICE]
            by_id = {v.video_id: v for v in part}
            collected: dict[str, dict[int, dict]] = {}
            ds = _window_dataset(cfg, info, window_s, part, resources, replicas)
            for batch in ds.iter_batches(batch_size=None, batch_format="numpy"):
                clock.add(batch)
                for i in range(len(batch["video_id"])):
                    vid = str(batch["video_id"][i])
                    if vid not in by_id:
                        continue
                    windows = collected.setdefault(vid, {})
                    windows[int(batch["window_index"][i])] = {k: batch[k][i] for k in batch}
                    if len(windows) < int(batch["num_windows"][i]):
                        continue
                    video = by_id.pop(vid)
                    collected.pop(vid)
                    for row, done_video in outputs.submit(video, [windows[j] for j in sorted(windows)]):
                        tally.add(row, done_video)
    finally:
        tally.stopping = True  # clips still being written are counted, never raised on
        for row, done_video in outputs.close():
            tally.add(row, done_video)
        clock.fill(summary)
        summary.driver_cpu_s = round(time.process_time() - driver_cpu, 3)


def _window_dataset(cfg, info, window_s: float, part: list[PlannedVideo], resources, replicas: int):
    """The Ray Data pipeline of one slice: its window rows -> decode (CPU tasks) -> replicas."""
    import ray.data
    from ray.data import ActorPoolStrategy

    from dub.workflows.generate.stages import (
        GenerateReplica,
        decode_memory_bytes,
        decode_settings,
        decode_windows,
        window_frame_bytes,
    )
    from dub.workflows.ray_cluster import warn_if_store_small, window_blocks

    window_rows = [
        {
            "video_id": v.video_id,
            "path": v.path,
            "window_index": index,
            "num_windows": len(v.windows),
            "start_s": float(start),
            "valid_s": float(length),
            "prompt": v.prompt,
            "negative_prompt": cfg.negative_prompt,
            "seed": window_seed(cfg.seed, v.video_id, index),
        }
        for v in part
        for index, (start, length) in enumerate(v.windows)
    ]
    ctx = ray.data.DataContext.get_current()
    ctx.enable_progress_bars = False
    ctx.verbose_progress = False
    ds = ray.data.from_items(window_rows, override_num_blocks=window_blocks(len(window_rows), resources.cpus))
    if cfg.text_to_audio:
        ds = ds.map_batches(no_frames, batch_size=None)
    else:
        warn_if_store_small(window_frame_bytes(info.clip_fps, info.clip_size, info.sync_fps, info.sync_size, window_s))
        ds = ds.map_batches(
            decode_windows,
            batch_size=1,
            num_cpus=1,
            memory=decode_memory_bytes(
                info.clip_fps, info.clip_size, info.sync_fps, info.sync_size, window_s, cfg.decode_backend
            ),
            fn_kwargs=decode_settings(info, window_s, cfg.decode_backend),
        )
    use_gpu = resources.gpus >= 1
    return ds.map_batches(
        GenerateReplica,
        batch_size=cfg.batch_size,
        compute=ActorPoolStrategy(size=replicas),
        num_gpus=1 if use_gpu else 0,
        num_cpus=1,
        fn_constructor_kwargs=dict(
            model=cfg.model,
            checkpoint=cfg.checkpoint,
            sampler=cfg.sampler.as_dict(),
            device="cuda" if use_gpu else "cpu",
            save_features=cfg.save_features,
            batch_size=cfg.batch_size,
            compile=cfg.compile,
            fp8=cfg.fp8,
            candidates=cfg.candidates,
        ),
    )


class _Tally:
    """Counts each finished clip into the summary; stops the run past --max-failures."""

    def __init__(self, cfg: GenerateConfig, summary: Summary, progress: ProgressFn | None):
        self.cfg, self.summary, self.progress = cfg, summary, progress
        self.failures = 0
        self.stopping = False

    def add(self, row: dict, video: PlannedVideo) -> None:
        summary = self.summary
        if row["status"] == "done":
            summary.done += 1
            summary.generated += 1
            summary.audio_seconds += video.duration_s
        else:
            summary.failed += 1
            self.failures += 1
            reason = (row["error"] or "").split(":", 1)[0]
            summary.errors[reason] = summary.errors.get(reason, 0) + 1
        if self.progress:
            self.progress(summary)
        limit = self.cfg.max_failures
        if limit is not None and self.failures > limit and not self.stopping:
            raise GenerateError(
                f"stopped after {self.failures} failed videos (--max-failures {limit}); "
                f"latest error: {row['error']}. Completed outputs are kept; rerun to resume."
            )


class _Outputs:
    """The driver's side of writing. Each complete clip goes to a ClipWriter: in this process,
    or one of the run's writer actors (the least busy; at most two clips in flight each, so the
    driver's memory stays bounded). The driver keeps what must be sequential: shard samples
    appended in order, and journal rows written once the clip's outputs are published."""

    IN_FLIGHT_PER_WRITER = 2

    def __init__(self, cfg, paths, info, config_hash, journal: Journal, scorer, replicas: int):
        self.paths, self.journal = paths, journal
        self.shards = ShardWriter(paths["shards"], cfg.shard_size) if cfg.writes_shards else None
        self._awaiting_shard: dict[str, dict] = {}
        self.actors = start_writers(cfg, info, config_hash, replicas, remote=paths["mirror"].active)
        self.local = None if self.actors else ClipWriter(cfg, info, config_hash, scorer)
        self.in_flight: dict = {}  # ObjectRef -> (actor index, video, windows, attempt)
        self.load = [0] * len(self.actors)

    def submit(self, video: PlannedVideo, windows: list[dict]) -> list[tuple[dict, PlannedVideo]]:
        """Hand one clip over; returns the clips that finished meanwhile, as (row, video)."""
        if self.local is not None:
            return [self._finish(*self.local.write(video, windows), video)]
        finished = []
        while len(self.in_flight) >= self.IN_FLIGHT_PER_WRITER * len(self.actors):
            finished.extend(self._wait_one())
        self._send(video, windows, attempt=1)
        return finished

    def _send(self, video: PlannedVideo, windows: list[dict], attempt: int) -> None:
        index = min(range(len(self.actors)), key=self.load.__getitem__)
        self.load[index] += 1
        self.in_flight[self.actors[index].write.remote(video, windows)] = (index, video, windows, attempt)

    # a writer lost with its node answers "unavailable" (the call may or may not have run) until
    # Ray has restarted it elsewhere; the clip is sent again, which is safe: its outputs have fixed
    # names, so a second write replaces the first, and its row comes back once
    WRITE_ATTEMPTS = 4

    def _wait_one(self) -> list[tuple[dict, PlannedVideo]]:
        import ray

        (ref,), _ = ray.wait(list(self.in_flight), num_returns=1)
        index, video, windows, attempt = self.in_flight.pop(ref)
        self.load[index] -= 1
        try:
            row, sample = ray.get(ref)
        except ray.exceptions.RayError as exc:
            if attempt < self.WRITE_ATTEMPTS and isinstance(exc, ray.exceptions.RayActorError):
                time.sleep(attempt)  # time for Ray to notice the lost node and restart the writer
                self._send(video, windows, attempt + 1)
                return []
            row, sample = report_row(video.video_id, video.path, "failed", f"write: {short_error(exc)}"), None
        return [self._finish(row, sample, video)]

    def _finish(self, row: dict, sample: dict | None, video: PlannedVideo) -> tuple[dict, PlannedVideo]:
        if sample is not None and row["status"] == "done":
            self._awaiting_shard[row["video_id"]] = row
            shard_path = self.shards.current_path
            self._release(self.shards.add(row["video_id"], sample), shard_path)
        else:
            self.journal.add([row])
        return row, video

    def _release(self, keys: list[str], shard_path: str) -> None:
        """Journal the rows of a shard that just closed, once it is published."""
        if not keys:
            return
        where = self.paths["mirror"].publish(shard_path)
        for key in keys:
            row = self._awaiting_shard.pop(key)
            row["output_shard"] = where
            self.journal.add([row])

    def close(self) -> list[tuple[dict, PlannedVideo]]:
        """Wait for the clips in flight, close the last shard, flush the journal."""
        finished = []
        while self.in_flight:
            finished.extend(self._wait_one())
        if self.shards is not None:
            shard_path = self.shards.current_path
            self._release(self.shards.close(), shard_path)
        self.journal.flush()
        return finished


def start_writers(cfg: GenerateConfig, info, config_hash: str, replicas: int, remote: bool) -> list:
    """The run's writer actors (none: the driver writes). For a local output folder they run on
    the driver's node, the one whose disk holds it; for object storage on any node. They hold no
    CPU in Ray's accounting, so they never wait for slots the decode tasks and replicas hold (a
    run whose writers waited on those would stall); a writer lost with its node is restarted
    and its clip retried (the outputs' names are fixed, so a retry overwrites, never adds)."""
    import os

    import ray

    count = cfg.writers
    if count is None:  # on a cluster one per replica; on the embedded local Ray the driver writes
        count = replicas if (cfg.address or os.environ.get("RAY_ADDRESS")) else 0
    if count == 0:
        return []
    options = dict(num_cpus=0, max_restarts=-1, max_task_retries=3)
    if not remote:
        from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

        options["scheduling_strategy"] = NodeAffinitySchedulingStrategy(
            ray.get_runtime_context().get_node_id(), soft=False
        )
    actor = ray.remote(ClipWriter).options(**options)
    return [actor.remote(cfg, info, config_hash) for _ in range(count)]


def no_frames(batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    n = len(batch["video_id"])
    batch["error"] = np.array([""] * n, dtype=object)
    batch["t_decode_s"] = np.zeros(n)
    return batch


def _write_report(paths: dict, order: list[str], skipped_rows: list[dict]) -> None:
    """One row per manifest row: processed videos from the journal (newest row per id), then
    the rows ingest flagged; written atomically. Done in Arrow columns: the rows of a finished
    million-clip run as Python dicts were about 6 GB of the driver's memory."""
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    journal = read_journal_table(paths["journal"], REPORT_SCHEMA)
    wanted = pa.array(order, pa.string())
    # each manifest id's journal row (a null row where it has none), in the manifest's order
    joined = journal.take(pc.index_in(wanted, value_set=journal["video_id"]))
    joined = joined.set_column(joined.schema.get_field_index("video_id"), "video_id", wanted)
    unseen = pc.is_null(joined["status"])
    joined = joined.set_column(
        joined.schema.get_field_index("status"), "status", pc.if_else(unseen, "pending", joined["status"])
    )
    joined = joined.set_column(
        joined.schema.get_field_index("error"),
        "error",
        pc.if_else(unseen, "not processed in this run (--limit or stopped)", joined["error"]),
    )
    skipped = pa.Table.from_pylist([{n: r.get(n) for n in REPORT_SCHEMA.names} for r in skipped_rows], REPORT_SCHEMA)
    report = pa.concat_tables([in_schema(joined, REPORT_SCHEMA), skipped])
    with atomic_path(paths["report"]) as tmp:
        pq.write_table(report, tmp)
    paths["mirror"].publish(paths["report"], keep=True)
    finished = journal.filter(
        pc.and_(
            pc.is_in(journal["status"], pa.array(["done", "failed"])),
            pc.is_in(journal["video_id"], wanted),
        )
    )
    _compact_journal(paths["journal"], finished, paths["mirror"])


def _compact_journal(journal_dir: Path, table, mirror) -> None:
    """Fold the journal into one part (`table`: the finished rows of this manifest) so reruns do
    not grow it. The new part is written (atomically) before the old ones go, and sorts after
    them, so a crash in between is harmless."""
    import pyarrow.parquet as pq

    old = sorted(Path(journal_dir).glob("part-*.parquet"))
    compact = Path(journal_dir) / f"part-{time.time_ns()}-compact.parquet"
    with atomic_path(compact) as tmp:
        pq.write_table(table, tmp)
    mirror.publish(compact, keep=True)
    for part in old:
        part.unlink(missing_ok=True)
        mirror.remove(f"journal/{part.name}")
