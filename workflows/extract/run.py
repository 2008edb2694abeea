"""`dub extract`: training shards from clips with audio (and captioned audio-only files).

    manifest rows -> window rows -> decode frames + audio (CPU tasks)
        -> encoder actors (features + codec posterior, batched) -> driver: ShardWriter

Resume: a window's key `<video_id>_w<index>` in a finished shard means it is done (the output's
`Mirror.tar_keys`; shards are written under a temporary name and renamed when full), so a rerun
redoes only missing windows and never writes one twice. An object-storage --out (s3://, gs://)
is made in a local stage folder and each finished file published with one upload
(dub.storage.mirror), under a lease instead of the folder lock (dub.storage.lease). `OUT/extract.json` records
what decides the windows and their contents; a rerun with other settings is refused.

    OUT/shard-<session>-<n>.tar    training samples (workflows/extract/sample.py)
    OUT/extract.json               settings, bundle, encoder/codec description, array shapes
    OUT/empty_text_f.npy           the text encoder's features of "" (for a from-scratch network)
    OUT/summary.json               counts of this run
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from dub.storage.atomic import write_bytes_atomic, write_json_atomic
from dub.storage.location import is_uri
from dub.storage.lock import exclusive_output
from dub.storage.mirror import Mirror
from dub.storage.temporaries import remove_stale_temporaries
from dub.workflows.extract.config import AUDIO_EXTENSIONS, ExtractConfig
from dub.workflows.extract.sample import EMPTY_TEXT_FILE, EXTRACT_INFO_FILE, encode_sample, npy_bytes, window_key
from dub.workflows.generate.sinks import ShardWriter
from dub.workflows.generate.stages import decode_memory_bytes, window_frame_bytes


class ExtractError(RuntimeError):
    """An extraction that cannot start (bad inputs, settings that clash with existing shards)."""


@dataclass
class ExtractSummary:
    out_dir: str
    clips: int = 0
    skipped: int = 0
    windows_total: int = 0
    windows_done_before: int = 0
    windows_written: int = 0
    windows_failed: int = 0
    wall_s: float = 0.0
    skip_reasons: dict[str, int] = field(default_factory=dict)
    errors: dict[str, int] = field(default_factory=dict)
    shards: list[str] = field(default_factory=list)

    @property
    def windows_per_s(self) -> float:
        return self.windows_written / self.wall_s if self.wall_s > 0 else 0.0

    def as_dict(self) -> dict:
        d = dict(self.__dict__)
        d["windows_per_s"] = self.windows_per_s
        return d


@dataclass(frozen=True)
class _Clip:
    video_id: str
    path: str
    prompt: str
    duration_s: float
    has_video: bool


ProgressFn = Callable[[ExtractSummary], None]


def run_extract(cfg: ExtractConfig, progress: ProgressFn | None = None) -> ExtractSummary:
    from dub.model.runtime.bundles import resolve_bundle

    started = time.perf_counter()
    from dub.workflows.extract.stages import feature_weight_paths

    bundle = resolve_bundle(cfg.model)
    feature_weight_paths(cfg.model)  # missing or damaged weights fail here, not inside an actor
    window_s = cfg.window_s or bundle.window_s
    # object storage: shards made in a local stage, each published whole
    mirror = Mirror.of(cfg.out_dir) if is_uri(cfg.out_dir) else Mirror(Path(cfg.out_dir))
    with exclusive_output(mirror.stage, "extract"), mirror.leased("extract"):
        return _run_locked(cfg, progress, bundle, window_s, mirror, started)


def _run_locked(
    cfg: ExtractConfig, progress: ProgressFn | None, bundle, window_s: float, mirror: Mirror, started: float
) -> ExtractSummary:
    out = mirror.stage
    _prepare_out_dir(cfg, mirror, window_s)

    clips, skipped = _load_clips(cfg, window_s)
    done = mirror.tar_keys("")
    rows = _window_rows(clips, window_s, cfg.overlap_s)
    summary = ExtractSummary(
        out_dir=mirror.remote or str(out),
        clips=len(clips),
        skipped=sum(skipped.values()),
        skip_reasons=skipped,
        windows_total=len(rows),
    )
    pending = [r for r in rows if window_key(r["video_id"], r["window_index"]) not in done]
    summary.windows_done_before = len(rows) - len(pending)
    if cfg.limit is not None:
        keep = set(list(dict.fromkeys(r["video_id"] for r in pending))[: cfg.limit])
        pending = [r for r in pending if r["video_id"] in keep]
    if pending or EMPTY_TEXT_FILE not in mirror.names(""):
        from dub.workflows.ray_cluster import connect, quiet_known_ray_lines

        resources = connect(cfg.address)
        writer = ShardWriter(out, cfg.shard_size, on_close=mirror.publish)
        try:
            with quiet_known_ray_lines():  # Ray's per-run ERROR line about its own actor wrapper
                for with_video in (True, False):
                    part = [r for r in pending if r["has_video"] == with_video]
                    if part:
                        _execute(cfg, bundle, window_s, part, with_video, writer, summary, resources, progress)
        finally:
            writer.close()
        _write_empty_text(cfg, mirror, resources)
    summary.shards = sorted(mirror.location(out / name) for name in mirror.names("") if _is_shard(name))
    summary.wall_s = time.perf_counter() - started
    mirror.publish(write_json_atomic(out / "summary.json", summary.as_dict()), keep=True)
    return summary


# -- inputs and resume ---------------------------------------------------------------------


def _is_shard(name: str) -> bool:
    return name.startswith("shard-") and name.endswith(".tar")


def _prepare_out_dir(cfg: ExtractConfig, mirror: Mirror, window_s: float) -> None:
    from dub.model.runtime.bundles import resolve_bundle

    out = mirror.stage
    out.mkdir(parents=True, exist_ok=True)
    mirror.pull(EXTRACT_INFO_FILE)  # the store's copy is the truth
    info_path = out / EXTRACT_INFO_FILE
    identity = cfg.identity(window_s)
    if info_path.exists():
        previous = json.loads(info_path.read_text()).get("identity")
        if previous != identity:
            if not cfg.overwrite:
                raise ExtractError(
                    f"{mirror.remote or out} holds shards made with other settings ({previous}, now {identity}); write to a new "
                    "--out directory or pass --overwrite to replace them"
                )
    if cfg.overwrite:
        for shard in out.glob("shard-*.tar"):
            shard.unlink()
        (out / EMPTY_TEXT_FILE).unlink(missing_ok=True)
        for name in mirror.names("") if mirror.active else ():
            if name == EMPTY_TEXT_FILE or _is_shard(name):
                mirror.remove(name)
    remove_stale_temporaries(out)
    bundle = resolve_bundle(cfg.model)
    write_json_atomic(
        info_path,
        {
            "identity": identity,
            "config": cfg.as_dict(),
            "bundle": bundle.name,
            "sample_rate": bundle.sample_rate,
            "encoders": bundle.encoders,
            "codec": bundle.codec,
            "window_s": window_s,
        },
    )
    mirror.publish(info_path, keep=True)


def _load_clips(cfg: ExtractConfig, window_s: float) -> tuple[list[_Clip], dict[str, int]]:
    clips: list[_Clip] = []
    skipped: dict[str, int] = {}

    def skip(reason: str) -> None:
        skipped[reason] = skipped.get(reason, 0) + 1

    def add(clip: _Clip) -> None:
        if clip.duration_s < cfg.min_fraction * window_s:
            skip(f"shorter than {cfg.min_fraction:g} of a {window_s:g} s window")
        elif not clip.has_video and not clip.prompt:
            skip("audio-only without a caption")
        else:
            clips.append(clip)

    if cfg.manifest is not None:
        from dub.manifests.io import read_manifest

        for row in read_manifest(cfg.manifest).to_pylist():
            if row.get("status") != "ok" or row.get("duplicate_of"):
                skip("not ok in the manifest (error or duplicate)")
            elif not row.get("has_audio"):
                skip("no audio track")
            elif row.get("audio_is_silent"):
                skip("silent audio track")
            else:
                prompt = (row.get("prompt") or "").strip() or cfg.prompt
                add(
                    _Clip(
                        row["video_id"],
                        row["path"],
                        prompt,
                        float(row.get("duration_s") or 0.0),
                        has_video=bool(row.get("video_codec")),
                    )
                )
    if cfg.audio_dir is not None:
        for clip in _audio_clips(Path(cfg.audio_dir)):
            add(clip)
    if not clips:
        reasons = ", ".join(f"{n} {r}" for r, n in skipped.items()) or "no inputs"
        raise ExtractError(f"nothing to extract: no usable clip with audio ({reasons})")
    return clips, skipped


def _audio_clips(root: Path) -> list[_Clip]:
    """Audio files under `root` with their NAME.txt captions."""
    from dub.manifests.ids import content_id

    if not root.is_dir():
        raise ExtractError(f"--audio-dir {root} is not a directory")
    clips = []
    for path in sorted(p for p in root.rglob("*") if p.suffix.lower() in AUDIO_EXTENSIONS and p.is_file()):
        caption = path.with_suffix(".txt")
        prompt = caption.read_text(encoding="utf-8").strip() if caption.is_file() else ""
        clips.append(_Clip(content_id(path), str(path.resolve()), prompt, _audio_duration(path), has_video=False))
    return clips


def _audio_duration(path: Path) -> float:
    import av

    with av.open(str(path)) as container:
        if not container.streams.audio:
            return 0.0
        stream = container.streams.audio[0]
        if stream.duration and stream.time_base:
            return float(stream.duration * stream.time_base)
        return float(container.duration or 0) / 1e6


def _window_rows(clips: list[_Clip], window_s: float, overlap_s: float) -> list[dict]:
    from dub.workflows.media.windows import plan_windows

    rows = []
    for clip in clips:
        windows = plan_windows(clip.duration_s, window_s, overlap_s)
        for index, w in enumerate(windows):
            rows.append(
                {
                    "video_id": clip.video_id,
                    "path": clip.path,
                    "window_index": index,
                    "num_windows": len(windows),
                    "start_s": float(w.start_s),
                    "valid_s": float(w.duration_s),
                    "prompt": clip.prompt,
                    "negative_prompt": "",
                    "seed": 0,
                    "has_video": clip.has_video,
                }
            )
    return rows


# -- execution -----------------------------------------------------------------------------


def _execute(
    cfg: ExtractConfig,
    bundle,
    window_s: float,
    rows: list[dict],
    with_video: bool,
    writer: ShardWriter,
    summary: ExtractSummary,
    resources,
    progress: ProgressFn | None,
) -> None:
    import ray.data
    from ray.data import ActorPoolStrategy

    from dub.model.runtime.bundles import CLIP_FPS, CLIP_SIZE, SYNC_FPS, SYNC_SIZE
    from dub.workflows.extract.stages import ExtractReplica, decode_training_windows, read_audio_windows
    from dub.workflows.ray_cluster import model_replicas, warn_if_store_small, window_blocks

    ctx = ray.data.DataContext.get_current()
    ctx.enable_progress_bars = False
    ctx.verbose_progress = False
    ds = ray.data.from_items(rows, override_num_blocks=window_blocks(len(rows), resources.cpus))
    if with_video:
        warn_if_store_small(window_frame_bytes(CLIP_FPS, CLIP_SIZE, SYNC_FPS, SYNC_SIZE, window_s))
        memory = decode_memory_bytes(CLIP_FPS, CLIP_SIZE, SYNC_FPS, SYNC_SIZE, window_s, cfg.decode_backend)
        ds = ds.map_batches(
            decode_training_windows,
            batch_size=1,
            num_cpus=1,
            memory=memory,
            fn_kwargs=dict(
                clip_fps=CLIP_FPS,
                clip_size=CLIP_SIZE,
                sync_fps=SYNC_FPS,
                sync_size=SYNC_SIZE,
                window_s=window_s,
                sample_rate=bundle.sample_rate,
                backend=cfg.decode_backend,
            ),
        )
    else:
        ds = ds.map_batches(
            read_audio_windows,
            batch_size=1,
            num_cpus=1,
            fn_kwargs=dict(window_s=window_s, sample_rate=bundle.sample_rate),
        )
    use_gpu = resources.gpus >= 1
    try:
        replicas = model_replicas(cfg.replicas, resources)
    except ValueError as exc:
        raise ExtractError(str(exc)) from exc
    ds = ds.map_batches(
        ExtractReplica,
        batch_size=cfg.batch_size,
        compute=ActorPoolStrategy(size=replicas),
        num_gpus=1 if use_gpu else 0,
        num_cpus=1,
        fn_constructor_kwargs=dict(model=cfg.model, device="cuda" if use_gpu else "cpu", window_s=window_s),
    )
    for batch in ds.iter_batches(batch_size=None, batch_format="numpy"):
        for i in range(len(batch["video_id"])):
            error = str(batch["error"][i])
            if error:
                summary.windows_failed += 1
                reason = error.split(":", 1)[0]
                summary.errors[reason] = summary.errors.get(reason, 0) + 1
                continue
            meta = _meta(cfg, bundle, window_s, batch, i)
            arrays = {name: batch[name][i] for name in ("latent_mean", "latent_std", "clip_f", "sync_f", "text_f")}
            key = window_key(meta["video_id"], meta["window_index"])
            writer.add(key, encode_sample(arrays, meta, cfg.feature_dtype))
            summary.windows_written += 1
        if progress:
            progress(summary)


def _meta(cfg: ExtractConfig, bundle, window_s: float, batch: dict, i: int) -> dict:
    prompt = str(batch["prompt"][i])
    return {
        "video_id": str(batch["video_id"][i]),
        "window_index": int(batch["window_index"][i]),
        "num_windows": int(batch["num_windows"][i]),
        "start_s": float(batch["start_s"][i]),
        "length_s": window_s,
        "valid_s": float(batch["valid_s"][i]),
        "prompt": prompt,
        "has_prompt": bool(prompt.strip()),
        "has_video": bool(batch["has_video"][i]),
        "source": str(batch["path"][i]),
        "bundle": bundle.name,
        "encoders": str(batch["encoders"][i]),
        "codec": str(batch["codec"][i]),
        "sample_rate": bundle.sample_rate,
        "latents_per_second": float(batch["latents_per_second"][i]),
    }


def _write_empty_text(cfg: ExtractConfig, mirror: Mirror, resources) -> None:
    """Once per shard directory, on a worker (the text encoder may be large)."""
    import ray

    from dub.workflows.extract.stages import empty_text_features

    path = mirror.stage / EMPTY_TEXT_FILE
    if EMPTY_TEXT_FILE in mirror.names(""):
        return
    use_gpu = resources.gpus >= 1
    task = ray.remote(empty_text_features).options(num_cpus=1, num_gpus=1 if use_gpu else 0)
    features = ray.get(task.remote(cfg.model, "cuda" if use_gpu else "cpu"))
    mirror.publish(write_bytes_atomic(path, npy_bytes(np.asarray(features, np.float32))), keep=True)
