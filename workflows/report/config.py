"""What `dub report` is asked to do and what it produces: the configuration, the metric
columns, and the records that pass between scoring, the journal, the page and the run.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path

from dub.workflows.media.decode import RESIZE_BACKENDS, resize_problem
from dub.workflows.metrics.desync import OffsetPredictor
from dub.workflows.metrics.embeddings import ClipFeatures, EmbeddingBackend
from dub.workflows.metrics.ib_score import ImageBindScorer
from dub.workflows.metrics.onsets import OnsetConfig

ALL_BACKENDS = ("panns", "vggish", "passt", "logmel")

CLASSIFIER_BACKENDS = ("panns", "passt")  # backends whose logits give KL and IS

PER_CLIP_METRICS = (
    "onset_acc",
    "onset_ap",
    "onset_precision",
    "onset_recall",
    "onset_f1",
    "sound_class_acc",
    "av_align",
    "av_align_reference",
    "kl_panns",
    "kl_passt",
    "desync_s",
    "clap_score",
    "ib_score",
)

SKIPPABLE = ("desync", "clap", "ib")  # model-based metrics a user may leave out (`--skip`)

LOWER_IS_BETTER = {"kl_panns", "kl_passt", "desync_s"} | {f"fad_{b}" for b in ALL_BACKENDS}


@dataclass(frozen=True)
class ReportConfig:
    run_dir: str
    out_dir: str
    reference: str | None = None  # folder or Parquet manifest of reference audio
    backends: tuple[str, ...] = ALL_BACKENDS
    weights_dir: str | None = None
    device: str = "cpu"
    sample_rate: int = 16000  # audio rate for embeddings and plots (onsets resample to 22.05 kHz)
    onsets: OnsetConfig = OnsetConfig()
    max_plots: int = 50  # clips with pictures and players in the page (the table lists all)
    write_html: bool = True
    skip: tuple[str, ...] = ()  # SKIPPABLE metrics left out
    # model-based metrics (FD/KL/IS, DeSync, CLAP) see the first audio_length_s of every clip, mean
    # removed, as av-benchmark's --audio_length 8 (MMAudio's setting); None: whole clips. IB-score:
    # the first audio_length_s of the VIDEO (0.5 fps frames) and the whole generated audio, as av-benchmark
    audio_length_s: float | None = 8.0
    # > 1: score clips on that many Ray actors (each loads the models once; one GPU each when
    # device is cuda); 1: in this process
    workers: int = 1
    address: str | None = None  # Ray cluster for workers > 1 (else RAY_ADDRESS, else local Ray)
    # how DeSync's frames are resized to Synchformer's 224 crop: "fast" swscale, "exact" torchvision's
    # antialiased bicubic as av-benchmark's Synchformer preprocessing (5-10x slower decoding)
    resize: str = "fast"
    # rescore every clip instead of resuming from the journal in out_dir (workflows/report/journal.py)
    fresh: bool = False
    # score this many of the run's generated clips, picked by seed (None: all); rows that are not
    # generated clips (failed, skipped) are all kept. For runs too large to score whole: the
    # set-level metrics hold every scored clip's features in memory (sample_rows)
    sample: int | None = None
    sample_seed: int = 0
    # seconds of scoring a kill -9 may lose at most: the journal writes a part at least this
    # often (0: after every clip, one small Parquet file per clip)
    journal_every_s: float = 2.0

    def __post_init__(self) -> None:
        if self.journal_every_s < 0:
            raise ValueError(f"journal_every_s must be >= 0 seconds, got {self.journal_every_s}")
        if self.workers < 1:
            raise ValueError(f"workers must be >= 1, got {self.workers}")
        if self.sample is not None and self.sample < 1:
            raise ValueError(f"sample must be >= 1 clip, got {self.sample}")
        if resize_problem(self.resize):
            raise ValueError(resize_problem(self.resize))
        if self.audio_length_s is not None and self.audio_length_s <= 0:
            raise ValueError(f"audio_length_s must be positive or None (whole clips), got {self.audio_length_s}")
        unknown = sorted(set(self.skip) - set(SKIPPABLE))
        if unknown:
            raise ValueError(f"cannot skip {unknown}; skippable: {list(SKIPPABLE)}")

    @property
    def decode_backend(self) -> str:
        """`decode_window`'s backend for `resize`."""
        return RESIZE_BACKENDS[self.resize]

    def as_dict(self) -> dict:
        d = asdict(self)
        d["backends"] = list(self.backends)
        d["skip"] = list(self.skip)
        return d

    @classmethod
    def from_dict(cls, data: dict) -> ReportConfig:
        data = dict(data)
        data["backends"] = tuple(data.get("backends", ALL_BACKENDS))
        data["skip"] = tuple(data.get("skip", ()))
        if isinstance(data.get("onsets"), dict):
            data["onsets"] = OnsetConfig.from_dict(data["onsets"])
        return cls(**data)


@dataclass
class ClipMedia:
    """Pictures and audio of one clip for the page (PNG / Ogg bytes)."""

    wave_generated: bytes
    spec_generated: bytes
    audio_generated: tuple[bytes, str]
    wave_reference: bytes | None = None
    spec_reference: bytes | None = None
    audio_reference: tuple[bytes, str] | None = None


@dataclass
class ReportResult:
    rows: list[dict]
    summary: dict
    out_dir: Path
    media: dict[str, ClipMedia] = field(default_factory=dict)


@dataclass
class ScoredClip:
    """One clip's outcome: its report row, page media, and embedding features per backend
    (kept for the set-level metrics: FAD, IS, KL)."""

    index: int
    record: dict
    media: ClipMedia | None = None
    generated: dict[str, ClipFeatures] = field(default_factory=dict)
    reference: dict[str, ClipFeatures] = field(default_factory=dict)


@dataclass(frozen=True)
class Injected:
    """Already-built models that replace what the weights folder would give (tests, reuse)."""

    backends: dict[str, EmbeddingBackend] | None = None
    offsets: OffsetPredictor | None = None
    clap: object | None = None  # text_embeddings / audio_embeddings at 48 kHz
    imagebind: ImageBindScorer | None = None  # IB-score: clip_score(video path, 16 kHz audio)
