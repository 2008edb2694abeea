"""foley-synth: a benchmark data set whose audio-visual sync is known exactly.

Rendered clips of objects whose visible events (a bounce on the floor, a hit against a wall, a
flash) start real recordings (CC0, see `sounds/ATTRIBUTION.md`); the object's look (shape +
colour) names its sound class. Every clip is a pure function of (seed, split, index) and the
config, so a split never changes when another split grows. Layout under OUT:

    dataset.json                       resolved config, classes with their look and recording
    splits.json                        {"train": [clip ids], "val": [...], "test": [...]}
    index.parquet                      one row per clip (INDEX_COLUMNS; paths relative to OUT)
    <split>/audio/<clip_id>.mp4        H.264 yuv420p + AAC mono, with .txt prompt and .events.json
    <split>/silent/<clip_id>.mp4       the same video, no audio stream (generation input), same sidecars

`<clip_id>.events.json` holds {"events": [seconds], "class": ..., "split": ..., "objects": [...]}:
the events are where each recording's attack starts (1 ms resolution).
"""

from __future__ import annotations

import json
import time
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context
from pathlib import Path

import pandas as pd

from dub.storage.atomic import atomic_path, write_text_atomic
from dub.workflows.datasets.foley_config import SPLITS, FoleySynthConfig
from dub.workflows.datasets.foley_encode import add_aac_track, write_silent_mp4
from dub.workflows.datasets.foley_scene import CLASS_LOOKS, ClipSpec, render_audio, render_frames, sample_clip
from dub.workflows.datasets.sound_bank import SOURCES_BY_CLASS, load_sound_bank

INDEX_COLUMNS = (
    "clip_id",
    "split",
    "index",
    "path_with_audio",
    "path_silent",
    "class",
    "classes",
    "motions",
    "events",
    "prompt",
    "n_objects",
    "seconds",
    "fps",
    "sample_rate",
)
SAMPLES_SEED = 0
_SAMPLE_SECONDS = 6.0


def events_record(clip: ClipSpec, seed: int) -> dict:
    """The content of `<clip_id>.events.json`."""
    return {
        "clip_id": clip.clip_id,
        "split": clip.split,
        "class": clip.sound_class,
        "events": clip.events,
        "prompt": clip.prompt,
        "seconds": clip.seconds,
        "fps": clip.fps,
        "sample_rate": clip.sample_rate,
        "seed": seed,
        "objects": [
            {
                "class": obj.sound_class,
                "motion": obj.motion,
                "events": list(obj.events),
                "gains": list(obj.gains),
                "shape": obj.look.shape,
                "colour": obj.look.colour,
                "region": list(obj.region),
            }
            for obj in clip.objects
        ],
    }


def _write_sidecars(mp4: Path, clip: ClipSpec, seed: int) -> None:
    mp4.with_suffix(".txt").write_text(clip.prompt + "\n")
    mp4.with_suffix(".events.json").write_text(json.dumps(events_record(clip, seed), indent=1) + "\n")


def write_clip(clip: ClipSpec, cfg: FoleySynthConfig, silent_path: Path, audio_path: Path | None) -> None:
    """Render `clip`; write the silent mp4 and (unless audio_path is None) the mp4 with sound, plus sidecars."""
    silent_path.parent.mkdir(parents=True, exist_ok=True)
    write_silent_mp4(silent_path, render_frames(clip), fps=clip.fps, width=clip.width, height=clip.height, crf=cfg.crf)
    _write_sidecars(silent_path, clip, cfg.seed)
    if audio_path is not None:
        audio_path.parent.mkdir(parents=True, exist_ok=True)
        audio = render_audio(clip, load_sound_bank(clip.sample_rate))
        add_aac_track(silent_path, audio_path, audio, sample_rate=clip.sample_rate, bitrate=cfg.audio_bitrate)
        _write_sidecars(audio_path, clip, cfg.seed)


def _build_one(cfg: FoleySynthConfig, split: str, index: int, out_dir: Path) -> dict:
    clip = sample_clip(cfg, split, index)
    rel_audio = Path(split) / "audio" / f"{clip.clip_id}.mp4"
    rel_silent = Path(split) / "silent" / f"{clip.clip_id}.mp4"
    write_clip(clip, cfg, out_dir / rel_silent, out_dir / rel_audio)
    return {
        "clip_id": clip.clip_id,
        "split": split,
        "index": index,
        "path_with_audio": rel_audio.as_posix(),
        "path_silent": rel_silent.as_posix(),
        "class": clip.sound_class,
        "classes": [o.sound_class for o in clip.objects],
        "motions": [o.motion for o in clip.objects],
        "events": clip.events,
        "prompt": clip.prompt,
        "n_objects": len(clip.objects),
        "seconds": clip.seconds,
        "fps": clip.fps,
        "sample_rate": clip.sample_rate,
    }


def _classes_table() -> dict:
    return {
        name: {
            "shape": look.shape,
            "colour": look.colour,
            "noun": look.noun,
            "rgb": list(look.rgb),
            "sound": SOURCES_BY_CLASS[name].description,
            "recording": SOURCES_BY_CLASS[name].original_file,
            "licence": SOURCES_BY_CLASS[name].licence,
        }
        for name, look in CLASS_LOOKS.items()
    }


def _absolute_paths(index: pd.DataFrame, root: Path) -> pd.DataFrame:
    index = index.copy()
    for column in ("path_with_audio", "path_silent"):
        index[column] = [str(root / p) for p in index[column]]
    return index


def build_foley_synth(cfg: FoleySynthConfig, out_dir: Path, *, workers: int = 1) -> pd.DataFrame:
    """Write the data set of `cfg` under `out_dir`; return its index with absolute paths."""
    if workers < 1:
        raise ValueError(f"workers={workers} must be >= 1")
    out_dir = Path(out_dir).resolve()
    out_dir.mkdir(parents=True, exist_ok=True)
    jobs = [(split, i) for split in SPLITS for i in range(cfg.split_sizes()[split])]
    if workers == 1 or len(jobs) < 2:
        rows = [_build_one(cfg, split, i, out_dir) for split, i in jobs]
    else:  # spawn: a forked Ray or torch process must not be copied into the workers
        with ProcessPoolExecutor(max_workers=workers, mp_context=get_context("spawn")) as pool:
            rows = list(
                pool.map(
                    _build_one, [cfg] * len(jobs), [s for s, _ in jobs], [i for _, i in jobs], [out_dir] * len(jobs)
                )
            )
    index = pd.DataFrame(rows, columns=list(INDEX_COLUMNS))
    with atomic_path(out_dir / "index.parquet") as tmp:
        index.to_parquet(tmp, index=False)
    splits = {split: [r["clip_id"] for r in rows if r["split"] == split] for split in SPLITS}
    write_text_atomic(out_dir / "splits.json", json.dumps(splits, indent=1) + "\n")
    write_text_atomic(
        out_dir / "dataset.json",
        json.dumps({"name": "foley-synth", "config": cfg.as_dict(), "classes": _classes_table()}, indent=1) + "\n",
    )
    return _absolute_paths(index, out_dir)


def make_foley_synth(
    out_dir: str | Path,
    *,
    seed: int = 0,
    n_train: int,
    n_val: int,
    n_test: int,
    seconds: float = 8.0,
    fps: int = 25,
    size: tuple[int, int] = (224, 224),
    sample_rate: int = 16000,
    workers: int = 1,
    **options,
) -> pd.DataFrame:
    """Build foley-synth under `out_dir` and return its index (absolute paths).

    `options` are further FoleySynthConfig fields (min_gap_s, two_object_prob, noise_dbfs, crf, ...).
    """
    cfg = FoleySynthConfig(
        seed=seed,
        n_train=n_train,
        n_val=n_val,
        n_test=n_test,
        seconds=seconds,
        fps=fps,
        size=tuple(size),
        sample_rate=sample_rate,
        **options,
    )
    return build_foley_synth(cfg, Path(out_dir), workers=workers)


def read_index(root: str | Path) -> pd.DataFrame:
    """The index of a built data set, with absolute paths."""
    root = Path(root).resolve()
    path = root / "index.parquet"
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: build the data set first with `dub dataset foley-synth -o {root}`")
    return _absolute_paths(pd.read_parquet(path), root)


def make_sample_clips(
    out_dir: str | Path, *, seed: int = SAMPLES_SEED, count: int = 3, seconds: float = _SAMPLE_SECONDS
) -> list[Path]:
    """Silent test-split clips with one object each, every one a different class and (up to three)
    motion, named `<colour>_<noun>_<motion>.mp4` with their .txt and .events.json."""
    if not 1 <= count <= len(CLASS_LOOKS):
        raise ValueError(f"count={count} must be between 1 and {len(CLASS_LOOKS)} (one clip per class)")
    cfg = FoleySynthConfig(seed=seed, n_train=0, n_val=0, n_test=count, seconds=seconds, two_object_prob=0.0)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    chosen: list[ClipSpec] = []
    for index in range(10_000):
        clip = sample_clip(cfg, "test", index)
        obj = clip.objects[0]
        if obj.sound_class in {c.sound_class for c in chosen}:
            continue
        if len(chosen) < 3 and obj.motion in {c.objects[0].motion for c in chosen}:
            continue  # show each kind of event once before repeating one
        chosen.append(clip)
        if len(chosen) == count:
            break
    paths = []
    for clip in chosen:
        look = clip.objects[0].look
        path = out_dir / f"{look.colour}_{look.noun}_{clip.objects[0].motion}.mp4"
        write_clip(clip, cfg, path, None)
        paths.append(path)
    return paths


def timed_build(cfg: FoleySynthConfig, out_dir: Path, *, workers: int = 1) -> tuple[pd.DataFrame, float]:
    """build_foley_synth and its wall time in seconds."""
    start = time.perf_counter()
    index = build_foley_synth(cfg, out_dir, workers=workers)
    return index, time.perf_counter() - start
