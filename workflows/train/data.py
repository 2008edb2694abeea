"""Training data: find and check the shards, split them over workers, stream shuffled batches.

Every shard is opened and its first sample decoded BEFORE any worker starts, so a missing,
truncated or foreign shard fails the run at once with the shard's name and the problem,
instead of killing a worker hours in.
"""

from __future__ import annotations

import fnmatch
import glob
import io
import json
import random
import tarfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from dub.storage import location
from dub.workflows.extract.sample import ARRAY_FIELDS, EMPTY_TEXT_FILE, SampleError, decode_sample


class ShardError(ValueError):
    """Shards that cannot be trained on (missing, unreadable, or not in the training format)."""


@dataclass(frozen=True)
class ShardSet:
    """The checked shards and the array shapes every sample must have."""

    paths: tuple[str, ...]
    shapes: dict[str, tuple[int, ...]]  # field -> (length, channels)
    first_meta: dict
    directory: str | None  # the extract output directory, when the shards came from one
    num_samples: int

    @property
    def resize(self) -> str:
        """How `dub extract` resized these shards' frames ("fast" or "exact", from extract.json;
        "fast" when unknown), so evaluation generates from frames made the same way."""
        if self.directory is None:
            return "fast"
        try:
            info = location.read_bytes(location.join(self.directory, "extract.json"))
            return json.loads(info).get("identity", {}).get("resize", "fast")
        except (OSError, ValueError):
            return "fast"

    def empty_text_features(self) -> np.ndarray | None:
        """The text encoder's features of "" saved by `dub extract` (None when absent)."""
        if self.directory is None:
            return None
        path = location.join(self.directory, EMPTY_TEXT_FILE)
        if not location.exists(path):
            return None
        return np.load(io.BytesIO(location.read_bytes(path)), allow_pickle=False).astype(np.float32)


def list_shards(spec: str) -> tuple[list[str], str | None]:
    """Shard paths from a directory, a glob or a comma-separated list; and the directory."""
    parts = [p.strip() for p in spec.split(",") if p.strip()]
    if not parts:
        raise ShardError("no shards given: pass the output directory of `dub extract` (or a glob of .tar files)")
    if any(location.is_uri(part) for part in parts):
        return _list_shard_objects(parts)
    paths: list[str] = []
    directory = None
    for part in parts:
        path = Path(part).expanduser()
        if path.is_dir():
            found = sorted(str(p) for p in path.glob("shard-*.tar"))
            if not found:
                raise ShardError(f"{path} holds no shard-*.tar files; run `dub extract -m MANIFEST -o {path}` first")
            paths += found
            directory = str(path) if len(parts) == 1 else None
        elif any(ch in part for ch in "*?["):
            found = sorted(glob.glob(str(path)))
            if not found:
                raise ShardError(f"no shard matches {part!r}")
            paths += found
        else:
            if not path.exists():
                raise ShardError(f"shard {path} does not exist")
            paths.append(str(path))
    # Absolute: Ray workers run in their own working directories.
    paths = [str(Path(p).resolve()) for p in paths]
    if directory is None and len({str(Path(p).parent) for p in paths}) == 1:
        directory = str(Path(paths[0]).parent)
    return paths, (str(Path(directory).resolve()) if directory else None)


def _list_shard_objects(parts: list[str]) -> tuple[list[str], str | None]:
    """list_shards for object storage: each part a prefix (its shard-*.tar objects), one object,
    or a pattern on object names (s3://bucket/shards/shard-0*.tar)."""
    paths: list[str] = []
    for part in parts:
        try:
            part = location.check_uri(part)
        except location.LocationError as exc:
            raise ShardError(str(exc)) from None
        if any(ch in part for ch in "*?["):
            parent = part.rsplit("/", 1)[0]
            found = [o.uri for o in location.list_objects(parent) if fnmatch.fnmatchcase(o.uri, part)]
            if not found:
                raise ShardError(f"no shard matches {part!r}")
        elif location.stat(part) is not None:
            found = [part]
        else:
            found = [
                o.uri
                for o in location.list_objects(part)
                if o.uri.rsplit("/", 1)[1].startswith("shard-") and o.uri.endswith(".tar")
            ]
            if not found:
                raise ShardError(f"{part} holds no shard-*.tar objects; run `dub extract -m MANIFEST -o {part}` first")
        paths += found
    parents = {p.rsplit("/", 1)[0] for p in paths}
    return paths, (parents.pop() if len(parents) == 1 else None)


def inspect_shard(path: str) -> tuple[dict, int]:
    """(decoded first sample, number of samples) of a shard; ShardError naming the shard and
    the problem. Every member header is read (cheap: data is skipped), so a truncated shard
    is caught here too."""
    raw: dict = {}
    first_key = None
    keys: set[str] = set()
    try:
        info = location.stat(path) if location.is_uri(path) else None
        size = info.size if info is not None else Path(path).stat().st_size
        with location.open_input(path) as handle, tarfile.open(fileobj=handle) as tar:
            for member in tar:
                if not member.isfile():
                    continue
                key, _, ext = Path(member.name).name.partition(".")
                keys.add(key)
                if member.offset_data + member.size > size:
                    raise ShardError(
                        f"shard {path} is truncated (member {member.name} runs past the end of the "
                        "file); re-run `dub extract` to rewrite it, or remove it"
                    )
                if first_key is None:
                    first_key = key
                if key == first_key:
                    handle = tar.extractfile(member)
                    raw[ext] = handle.read() if handle is not None else b""
    except (tarfile.TarError, OSError, EOFError) as exc:
        raise ShardError(
            f"shard {path} is unreadable ({type(exc).__name__}: {exc}); re-run `dub extract` "
            "to rewrite it, or remove it"
        ) from None
    if first_key is None:
        raise ShardError(f"shard {path} is empty; remove it or re-run `dub extract`")
    raw["__key__"] = first_key
    try:
        return decode_sample(raw), len(keys)
    except SampleError as exc:
        raise ShardError(
            f"shard {path} is not a training shard: {exc}; make training shards with `dub extract`"
        ) from None


def check_shards(spec: str) -> ShardSet:
    """Open every shard, decode its first sample, and check all agree on the array shapes."""
    paths, directory = list_shards(spec)
    shapes: dict[str, tuple[int, ...]] | None = None
    first_meta: dict = {}
    total = 0
    for path in paths:
        sample, count = inspect_shard(path)
        total += count
        these = {name: tuple(sample[name].shape) for name in ARRAY_FIELDS}
        if shapes is None:
            shapes, first_meta = these, sample["meta"]
        elif these != shapes:
            diff = {k: (shapes[k], these[k]) for k in ARRAY_FIELDS if shapes[k] != these[k]}
            raise ShardError(
                f"shard {path} has other shapes than {paths[0]}: {diff}; the shards come from "
                "different extract settings (window length or model): train on one set"
            )
    assert shapes is not None
    return ShardSet(tuple(paths), shapes, first_meta, directory, total)


def iter_samples(paths: list[str] | tuple[str, ...]) -> Iterator[dict]:
    """Decoded samples of the shards in order (WebDataset tar reading; each shard opened through
    dub.storage.location, so local paths and object-storage URIs alike)."""
    import webdataset as wds

    def opened(shards):
        for shard in shards:
            with location.open_input(shard["url"]) as stream:
                yield {**shard, "stream": stream}

    pipeline = wds.DataPipeline(
        wds.SimpleShardList(list(paths)),
        opened,
        wds.tariterators.tar_file_expander,
        wds.tariterators.group_by_keys,
    )
    for raw in pipeline:
        yield decode_sample(raw)


def latent_statistics(paths: list[str] | tuple[str, ...], max_samples: int) -> tuple[np.ndarray, np.ndarray]:
    """Per-channel mean and std of the posterior means over the first `max_samples` samples,
    so a network trained from scratch sees unit-scale latents."""
    total = total_sq = None
    count = 0
    seen = 0
    for sample in iter_samples(paths):
        x = sample["latent_mean"].astype(np.float64)
        total = x.sum(0) if total is None else total + x.sum(0)
        total_sq = (x**2).sum(0) if total_sq is None else total_sq + (x**2).sum(0)
        count += x.shape[0]
        seen += 1
        if seen >= max_samples:
            break
    if count == 0:
        raise ShardError("the shards hold no samples")
    mean = total / count
    std = np.sqrt(np.maximum(total_sq / count - mean**2, 0.0))
    return mean.astype(np.float32), np.maximum(std, 1e-4).astype(np.float32)


def worker_share(paths: tuple[str, ...], rank: int, world: int) -> tuple[list[str], int]:
    """(shards this worker reads, sample stride). With at least one shard per worker:
    shards[rank::world], every sample. Otherwise every worker reads all shards and keeps
    every world-th sample (offset by rank), so no worker sits idle and none sees the same data."""
    if len(paths) >= world:
        return list(paths[rank::world]), 1
    return list(paths), world


def sample_stream(
    paths: tuple[str, ...], rank: int, world: int, *, shuffle_buffer: int, seed: object
) -> Iterator[dict]:
    """Endless shuffled samples for one worker: each epoch reshuffles the shard order and the
    buffer with a generator seeded from (seed, rank, epoch). A resumed run passes a new seed
    (the data order is not replayed exactly; the model state is)."""
    mine, stride = worker_share(paths, rank, world)
    epoch = 0
    while True:
        rng = random.Random(f"{seed}:{rank}:{epoch}")
        order = list(mine)
        # splitting by sample needs the same order on every worker, or the shares would overlap
        (random.Random(f"{seed}:{epoch}") if stride > 1 else rng).shuffle(order)
        produced = 0
        buffer: list[dict] = []
        for index, sample in enumerate(iter_samples(order)):
            if stride > 1 and index % stride != rank:
                continue
            produced += 1
            if len(buffer) < shuffle_buffer:
                buffer.append(sample)
                continue
            slot = rng.randrange(len(buffer))
            yield buffer[slot]
            buffer[slot] = sample
        rng.shuffle(buffer)
        yield from buffer
        if produced == 0:
            raise ShardError(f"worker {rank} of {world} got no samples from {mine}")
        epoch += 1


def share_bytes(shards: ShardSet, world: int) -> int:
    """Bytes of one worker's share of the samples as float32 arrays (what holding them in
    memory costs)."""
    per_sample = sum(4 * int(np.prod(shape)) for shape in shards.shapes.values())
    return per_sample * -(-shards.num_samples // max(world, 1))


def memory_batches(
    paths: tuple[str, ...], rank: int, world: int, batch_size: int, *, seed: object
) -> Iterator[dict[str, np.ndarray]]:
    """Endless shuffled batches from this worker's share, read from the shards ONCE and held as
    stacked float32 arrays: an epoch is a permutation and a batch one fancy-indexing gather per
    field, so a small network is not waiting on tar reading and per-sample decoding. Each epoch
    is reshuffled with a generator seeded from (seed, rank, epoch); batches run across epoch
    boundaries, so every sample is seen once per epoch."""
    mine, stride = worker_share(paths, rank, world)
    samples = [s for i, s in enumerate(iter_samples(mine)) if stride == 1 or i % stride == rank]
    if not samples:
        raise ShardError(f"worker {rank} of {world} got no samples from {mine}")
    arrays = collate(samples)  # decode_sample already gave float32 arrays
    del samples
    count = len(arrays["has_video"])
    epoch, order, pos = 0, np.empty(0, dtype=np.int64), 0
    while True:
        take = []
        need = batch_size
        while need:
            if pos == len(order):
                order = np.random.default_rng(_seed_ints(seed, rank, epoch)).permutation(count)
                epoch, pos = epoch + 1, 0
            chunk = order[pos : pos + need]
            take.append(chunk)
            pos += len(chunk)
            need -= len(chunk)
        index = np.concatenate(take)
        yield {k: v[index] for k, v in arrays.items()}


def _seed_ints(*parts: object) -> list[int]:
    import hashlib

    digest = hashlib.blake2b(":".join(map(str, parts)).encode(), digest_size=16).digest()
    return [int.from_bytes(digest[i : i + 4], "little") for i in range(0, 16, 4)]


def collate(samples: list[dict]) -> dict[str, np.ndarray]:
    """Stack a list of decoded samples into arrays, plus the has_video flags."""
    batch = {name: np.stack([s[name] for s in samples]) for name in ARRAY_FIELDS}
    batch["has_video"] = np.array([bool(s["meta"].get("has_video", True)) for s in samples])
    return batch


def batches(stream: Iterator[dict], batch_size: int) -> Iterator[dict[str, np.ndarray]]:
    while True:
        yield collate([next(stream) for _ in range(batch_size)])
