"""The resolved configuration of a generate run, and the hash that decides what "done" means.

Only fields that change the produced audio or files enter the hash (model, weights, sampler,
seed, prompts, windows, audio codec; FP8 and exact resizing when asked). Batch size, limits,
addresses and progress flags do not: a rerun with another batch size still resumes.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

from dub.model.kernels.fp8 import FP8_RECIPE
from dub.model.runtime.generator import SamplerConfig
from dub.workflows.generate.candidates import candidates_problem
from dub.workflows.generate.content import reject_problem
from dub.workflows.media.decode import RESIZE_BACKENDS, resize_problem
from dub.workflows.media.loudness import loudness_problem

FORMATS = ("mp4", "wds", "both")
AUDIO_CODECS = ("aac", "flac", "opus")


@dataclass(frozen=True)
class GenerateConfig:
    out_dir: str
    manifest: str | None = None
    prompts_file: str | None = None  # text-to-audio: one prompt per line, no video
    model: str = "demo"
    checkpoint: str | None = None
    sampler: SamplerConfig = field(default_factory=SamplerConfig)
    seed: int = 0
    prompt: str = ""
    negative_prompt: str = ""
    format: str = "mp4"
    audio_codec: str = "aac"
    keep_original_audio: bool = False
    save_features: bool = False
    window_s: float | None = None  # None: the model's own window length
    overlap_s: float = 1.0
    t2a_duration_s: float | None = None
    batch_size: int = 4
    limit: int | None = None
    address: str | None = None
    overwrite: bool = False
    max_failures: int | None = None
    replicas: int | None = None  # model replicas; default one per GPU, or CPU actors
    # clip writers as Ray actors (writer.py); None: none on the embedded local Ray (the driver
    # writes), one per replica on a cluster (--address), where one driver cannot write for all
    writers: int | None = None
    compile: bool = False  # torch.compile the network step, decoder and encoder towers per replica
    fp8: bool = False  # the visual encoders' linear layers in FP8 (changes the features: hashed)
    resize: str = "fast"  # frame resizing: "fast" swscale, "exact" torchvision's (changes the frames: hashed)
    shard_size: int = 256  # samples per WebDataset shard
    # each output scaled to this integrated loudness (LUFS, EBU R128: -23), the gain capped so the
    # true peak stays under true_peak_dbtp; None: the level the model produced
    loudness_lufs: float | None = None
    true_peak_dbtp: float = -1.0
    # noise draws per window; per clip the one `select` scores best is kept (candidates.py)
    candidates: int = 1
    select: str = "av-align"
    # content kinds (speech, music) whose candidates selection skips (needs PANNs weights)
    reject: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if (self.manifest is None) == (self.prompts_file is None):
            raise ValueError("give exactly one of a manifest (video-to-audio) or a prompts file (text-to-audio)")
        if self.format not in FORMATS:
            raise ValueError(f"--format must be one of {FORMATS}, got {self.format!r}")
        if problem := resize_problem(self.resize):
            raise ValueError(problem)
        if self.audio_codec not in AUDIO_CODECS:
            raise ValueError(f"--audio-codec must be one of {AUDIO_CODECS}, got {self.audio_codec!r}")
        if self.batch_size < 1:
            raise ValueError("--batch-size must be >= 1")
        if self.window_s is not None and self.window_s <= 0:
            raise ValueError("--window must be positive")
        if self.overlap_s < 0 or (self.window_s is not None and self.overlap_s >= self.window_s / 2):
            raise ValueError("--overlap must be >= 0 and less than half the window")
        if self.limit is not None and self.limit < 1:
            raise ValueError("--limit must be >= 1")
        if self.replicas is not None and self.replicas < 1:
            raise ValueError("--replicas must be >= 1 (leave it out for one per GPU)")
        if self.writers is not None and self.writers < 0:
            raise ValueError("--writers must be >= 0 (0: the driver writes every clip itself)")
        if problem := reject_problem(self.reject):
            raise ValueError(problem)
        if problem := candidates_problem(self.candidates, self.select):
            raise ValueError(problem)
        if self.candidates > 1 and self.text_to_audio:
            raise ValueError("--candidates picks by agreement with the video; text-to-audio runs have none")
        if problem := loudness_problem(self.loudness_lufs, self.true_peak_dbtp):
            raise ValueError(problem)

    @property
    def formats(self) -> tuple[str, ...]:
        return ("mp4", "wds") if self.format == "both" else (self.format,)

    @property
    def text_to_audio(self) -> bool:
        return self.prompts_file is not None

    @property
    def writes_shards(self) -> bool:
        """WebDataset shards are written (a text-to-audio run writes audio files only)."""
        return "wds" in self.formats and not self.text_to_audio

    @property
    def decode_backend(self) -> str:
        """`decode_window`'s backend for `resize`."""
        return RESIZE_BACKENDS[self.resize]

    # Fields that do not change what is generated (compile only changes bf16 rounding, like the
    # batch size does through other matrix shapes).
    _NOT_HASHED = (
        "out_dir",
        "manifest",
        "prompts_file",
        "batch_size",
        "limit",
        "address",
        "overwrite",
        "max_failures",
        "replicas",
        "writers",
        "format",
        "shard_size",
        "save_features",
        "compile",
    )

    def identity(self, weights_hash: str) -> dict:
        d = {f.name: getattr(self, f.name) for f in fields(self) if f.name not in self._NOT_HASHED}
        if not self.fp8:  # added later: runs without it keep the hash they had, so they still resume
            del d["fp8"]
        else:  # what FP8 computes: runs under an earlier recipe start afresh rather than mix features
            d["fp8"] = FP8_RECIPE
        if self.resize == "fast" or self.text_to_audio:  # added later, as fp8; no frames, no resizing
            del d["resize"]
        if self.candidates == 1:  # added later, as fp8: one-candidate runs keep their hash
            del d["candidates"], d["select"]
        if not self.reject:  # added later, as fp8
            del d["reject"]
        else:
            d["reject"] = sorted(self.reject)
        if self.loudness_lufs is None:  # added later, as fp8: runs without it keep their hash
            del d["loudness_lufs"], d["true_peak_dbtp"]
        d["sampler"] = self.sampler.as_dict()
        d["weights_hash"] = weights_hash
        return d

    def config_hash(self, weights_hash: str) -> str:
        blob = json.dumps(self.identity(weights_hash), sort_keys=True, default=str).encode()
        return hashlib.sha256(blob).hexdigest()[:16]

    def as_dict(self) -> dict:
        d = asdict(self)
        d["sampler"] = self.sampler.as_dict()
        return d


def window_seed(seed: int, video_id: str, window_index: int) -> int:
    """A window's noise seed from (global seed, video id, window index): independent of order,
    batch composition and worker, so the same command gives the same audio."""
    digest = hashlib.sha256(f"{seed}:{video_id}:{window_index}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & (2**63 - 1)


def run_paths(out_dir: str | Path) -> dict:
    """The run's files in its local folder, and the Mirror that publishes them: for an
    object-storage --out the folder is a local stage and the store holds the outputs
    (dub.storage.mirror); for a local --out the folder is the output itself."""
    from dub.storage.location import is_uri
    from dub.storage.mirror import Mirror

    # report rows hold absolute paths, valid from any directory
    mirror = Mirror.of(str(out_dir)) if is_uri(out_dir) else Mirror(Path(out_dir).resolve())
    out = mirror.stage
    return {
        "out": out,
        "run_json": out / "run.json",
        "report": out / "report.parquet",
        "journal": out / "journal",
        "mp4": out / "mp4",
        "shards": out / "shards",
        "audio": out / "audio",
        "mirror": mirror,
        "where": mirror.remote or str(out),  # what the user named, for messages and the summary
    }
