"""`dub report`: score a generate run against reference audio and visual events.

Outputs in REPORT_DIR:
    report.parquet   one row per generate-run row: status, pairing, per-clip metrics, t_*_s timings
    summary.json     set-level metrics (FAD per backend, IS, means of per-clip metrics), which
                     metrics could not run and why, mean time per clip of each metric
    index.html       one self-contained page (see workflows/report_page.py)
    journal/         every clip scored so far, written as clips come back (workflows/report_journal.py):
                     a rerun after a crash or Ctrl-C scores only the clips it lacks

Clips are scored one after the other in this process (the models loaded once), or with
`workers > 1` on that many Ray actors, each with its own models (`report_parallel.py`); the set-level
metrics (FAD, IS) are computed from everything gathered, so both give the same numbers. A metric that cannot run is listed under
`unavailable` with its reason (the missing weight file, not implemented, no reference), never
written as zero.
"""

from __future__ import annotations

import json
import math
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

from dub.workflows.media.decode import RESIZE_BACKENDS, resize_problem
from dub.workflows.metrics.av_align import av_align_score, motion_peaks
from dub.workflows.metrics.classifiers import inception_score, kl_softmax
from dub.workflows.metrics.clap import ClapPreprocess, build_clap, clap_score
from dub.workflows.metrics.desync import OffsetPredictor, build_offset_predictor, desync_score
from dub.workflows.metrics.embeddings import (BackendInfo, BackendUnavailable, ClipFeatures, EmbeddingBackend,
                                          build_backend)
from dub.workflows.metrics.fad import frechet_distance
from dub.workflows.metrics.ib_score import ImageBindScorer, build_imagebind
from dub.workflows.metrics.media_io import encode_opus, read_audio, read_grey_frames
from dub.workflows.metrics.onsets import OnsetConfig, detect_onsets, onset_acc_ap, onset_prf
from dub.workflows.metrics.plots import spectrogram_png, waveform_png
from dub.workflows.metrics.run_inputs import (GeneratedRow, ReferenceIndex, events_sidecar, load_events, load_run,
                                         read_generated_audio)
from dub.workflows.metrics.sound_class import load_event_classes, score_sound_classes
from dub.workflows.metrics.weights import WeightsLocator
from dub.workflows.output_lock import exclusive_output, writer_of

__all__ = ["ClipMedia", "ReportConfig", "ReportResult", "grouped_unavailable", "run_report"]

ALL_BACKENDS = ("panns", "vggish", "passt", "logmel")
CLASSIFIER_BACKENDS = ("panns", "passt")  # backends whose logits give KL and IS
PER_CLIP_METRICS = ("onset_acc", "onset_ap", "onset_precision", "onset_recall", "onset_f1", "sound_class_acc",
                    "av_align", "av_align_reference", "kl_panns", "kl_passt", "desync_s", "clap_score", "ib_score")
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
    # rescore every clip instead of resuming from the journal in out_dir (workflows/report_journal.py)
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
    def from_dict(cls, data: dict) -> "ReportConfig":
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


class _Timer:
    """Adds elapsed seconds to record['t_<name>_s']."""

    def __init__(self, record: dict, name: str) -> None:
        self.record, self.key = record, f"t_{name}_s"

    def __enter__(self) -> "_Timer":
        self.start = time.perf_counter()
        return self

    def __exit__(self, *exc) -> None:
        self.record[self.key] = self.record.get(self.key, 0.0) + time.perf_counter() - self.start


class _ClipAudio:
    """One clip's audio at each rate a metric asks for (16 kHz onsets and CNN14, 32 kHz PaSST,
    48 kHz CLAP), each read from the file and resampled once."""

    def __init__(self, load: Callable[[int], np.ndarray], known: dict[int, np.ndarray] | None = None) -> None:
        self._load = load
        self._by_rate: dict[int, np.ndarray] = dict(known or {})

    def at(self, rate: int) -> np.ndarray:
        if rate not in self._by_rate:
            self._by_rate[rate] = self._load(rate)
        return self._by_rate[rate]

    def model_input(self, rate: int, length_s: float | None) -> np.ndarray:
        """What av-benchmark feeds its models: the first `length_s` seconds, mean removed."""
        wav = self.at(rate)
        if length_s is not None:
            wav = wav[: int(round(length_s * rate))]
        return wav - wav.mean() if len(wav) else wav


class _ClapScorer:
    """Per-clip CLAP score: cosine of the LAION-CLAP embeddings of the prompt and the audio."""

    sample_rate = 48000  # LAION-CLAP's audio rate

    def __init__(self, model) -> None:
        self.model = model

    def score(self, texts: list[str], wavs: list[np.ndarray]) -> np.ndarray:
        return clap_score(self.model.text_embeddings(texts), self.model.audio_embeddings(wavs))


def _is_text_to_audio(run_config: dict, rows: list[GeneratedRow]) -> bool:
    mode = str(run_config.get("mode", run_config.get("task", ""))).lower()
    return "text" in mode or (bool(rows) and all(r.source_path is None for r in rows))


def _wants_clap(config: ReportConfig, run_config: dict, rows: list[GeneratedRow]) -> bool:
    return "clap" not in config.skip and (any(r.prompt for r in rows) or _is_text_to_audio(run_config, rows))


def _wants_imagebind(rows: list[GeneratedRow]) -> bool:
    return any(r.source_path is not None for r in rows)


def _nan_to_none(value):
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, (np.floating,)):
        return _nan_to_none(float(value))
    return value


def _empty_record(row: GeneratedRow) -> dict:
    record: dict = {
        "video_id": row.video_id, "source_path": None if row.source_path is None else str(row.source_path),
        "status": "ok", "error": None, "generated_path": None, "reference_path": None,
        "reference_kind": "none", "onset_reference": "none", "duration_s": None,
        "n_reference_onsets": None, "n_generated_onsets": None, "n_class_events": None, "n_class_correct": None,
    }
    record.update({m: None for m in PER_CLIP_METRICS})
    record["ib_reason"] = None  # why a clip has no ib_score (no video, video too short, ...)
    return record


class _ClipScorer:
    """Per-clip metrics; keeps the embedding features for the set-level metrics."""

    def __init__(self, config: ReportConfig, backends: dict[str, EmbeddingBackend], refs: ReferenceIndex,
                 offsets: OffsetPredictor | None = None, clap: _ClapScorer | None = None,
                 imagebind: ImageBindScorer | None = None) -> None:
        self.config = config
        self.backends = backends
        self.refs = refs
        self.offsets = offsets  # DeSync (full Synchformer), None when its weights are missing
        self.clap = clap  # CLAP score, None when its weights are missing or no clip has a prompt
        self.imagebind = imagebind  # IB-score, None when its weights are missing or no clip has a video

    def _note(self, record: dict, what: str, exc: Exception) -> None:
        msg = f"{what}: {type(exc).__name__}: {exc}"
        record["error"] = msg if not record["error"] else f"{record['error']}; {msg}"

    def score(self, index: int, row: GeneratedRow, want_media: bool) -> ScoredClip:
        scored = ScoredClip(index, _empty_record(row))
        scored.media = self._score(row, want_media, scored)
        return scored

    def _score(self, row: GeneratedRow, want_media: bool, scored: ScoredClip) -> ClipMedia | None:
        cfg = self.config
        record = scored.record
        if row.status != "done":
            record["status"] = "skipped"
            record["error"] = f"generation {row.status or 'missing'}" + (f": {row.error}" if row.error else "")
            return None
        try:
            with _Timer(record, "read"):
                gen, record["generated_path"] = read_generated_audio(row, cfg.sample_rate)
        except Exception as exc:  # no generated audio: the clip cannot be scored at all
            record["status"] = "failed"
            self._note(record, "read generated audio", exc)
            return None
        gen_audio = _ClipAudio(lambda rate: read_generated_audio(row, rate)[0], {cfg.sample_rate: gen})
        ref = events = ref_audio = None
        try:
            with _Timer(record, "read"):
                ref_path, record["reference_kind"] = self.refs.lookup(row)
                record["reference_path"] = None if ref_path is None else str(ref_path)
                if ref_path is not None:
                    ref_audio = _ClipAudio(lambda rate: read_audio(ref_path, rate))
                    ref = ref_audio.at(cfg.sample_rate)
        except Exception as exc:  # scored without a reference; the error column says why
            ref_audio = None
            self._note(record, "read reference audio", exc)
        try:
            events = load_events(row.source_path)
        except Exception as exc:
            self._note(record, "read visual events", exc)
        record["duration_s"] = len(gen) / cfg.sample_rate

        gen_onsets = ref_onsets = None
        try:
            with _Timer(record, "onsets"):
                detection = detect_onsets(gen, cfg.sample_rate, cfg.onsets)
                gen_onsets = detection.times_s
                record["n_generated_onsets"] = len(gen_onsets)
                if events is not None:
                    ref_onsets, record["onset_reference"] = events, "events"
                elif ref is not None:
                    ref_onsets = detect_onsets(ref, cfg.sample_rate, cfg.onsets).times_s
                    record["onset_reference"] = "reference_audio"
                if ref_onsets is not None:
                    scored_ref = ref_onsets if cfg.onsets.max_duration_s is None else \
                        ref_onsets[ref_onsets < cfg.onsets.max_duration_s]
                    record["n_reference_onsets"] = len(scored_ref)
                    record["onset_acc"], record["onset_ap"] = onset_acc_ap(detection, scored_ref, cfg.onsets)
                    p, r, f = onset_prf(gen_onsets, scored_ref, cfg.onsets.prf_window_s)
                    record["onset_precision"], record["onset_recall"], record["onset_f1"] = p, r, f
        except Exception as exc:
            self._note(record, "onsets", exc)
        try:
            with _Timer(record, "sound_class"):
                sidecar = events_sidecar(row.source_path)
                classes = load_event_classes(sidecar) if sidecar is not None and sidecar.is_file() else None
                if classes is not None:
                    scores = score_sound_classes(gen, cfg.sample_rate, classes)
                    record["sound_class_acc"] = scores.accuracy
                    record["n_class_events"], record["n_class_correct"] = scores.events, scores.correct
        except Exception as exc:
            self._note(record, "sound class", exc)

        if row.source_path is not None:
            try:
                with _Timer(record, "av_align"):
                    video = read_grey_frames(row.source_path)
                    motion = motion_peaks(video.frames, video.times_s, video.fps)
                    record["av_align"], _ = av_align_score(gen, cfg.sample_rate, motion)
                    if ref is not None:
                        record["av_align_reference"], _ = av_align_score(ref, cfg.sample_rate, motion)
            except Exception as exc:
                self._note(record, "av_align", exc)

        if self.offsets is not None and row.source_path is not None:
            try:
                with _Timer(record, "desync"):
                    offsets = self.offsets.clip_offsets(str(row.source_path),
                                                        gen_audio.model_input(16000, cfg.audio_length_s))
                    # none for clips under 4.8 s: the sync head has positions for 14 segments
                    record["desync_s"] = desync_score(offsets) if offsets else None
            except Exception as exc:
                self._note(record, "desync", exc)

        if row.source_path is None and "ib" not in cfg.skip:
            record["ib_reason"] = "no source video (text-to-audio): IB-score compares video and audio"
        elif self.imagebind is not None:
            try:
                with _Timer(record, "ib"):
                    # av-benchmark embeds the whole generated file (its video side is cut to 8 s)
                    record["ib_score"] = self.imagebind.clip_score(str(row.source_path), gen_audio.at(16000))
            except Exception as exc:
                record["ib_reason"] = f"{type(exc).__name__}: {exc}"
                self._note(record, "ib_score", exc)

        if self.clap is not None and row.prompt:
            try:
                with _Timer(record, "clap"):
                    wav = gen_audio.model_input(self.clap.sample_rate, cfg.audio_length_s)
                    record["clap_score"] = float(self.clap.score([row.prompt], [wav])[0])
            except Exception as exc:
                self._note(record, "clap", exc)

        for name, backend in self.backends.items():
            try:
                rate = backend.info.sample_rate
                with _Timer(record, f"embed_{name}"):
                    length = cfg.audio_length_s
                    g = backend.features([gen_audio.model_input(rate, length)])
                    r = backend.features([ref_audio.model_input(rate, length)]) if ref_audio is not None else None
                scored.generated[name] = g
                if r is not None:
                    scored.reference[name] = r
            except Exception as exc:
                self._note(record, f"embedding {name}", exc)

        media = None
        if want_media:
            try:
                with _Timer(record, "plots"):
                    media = self._media(gen, ref, events if events is not None else ref_onsets, gen_onsets)
            except Exception as exc:
                self._note(record, "plots", exc)
        return media

    def _media(self, gen: np.ndarray, ref: np.ndarray | None, marks: np.ndarray | None,
               gen_onsets: np.ndarray | None) -> ClipMedia:
        """Pictures on one time axis; `marks` are the visual events (else the reference onsets)."""
        sr = self.config.sample_rate
        duration = max(len(gen), len(ref) if ref is not None else 0) / sr or 1.0
        media = ClipMedia(
            wave_generated=waveform_png(gen, sr, duration, events_s=marks, onsets_s=gen_onsets),
            spec_generated=spectrogram_png(gen, sr, duration, events_s=marks, onsets_s=gen_onsets),
            audio_generated=encode_opus(gen, sr),
        )
        if ref is not None:
            ref_onsets = detect_onsets(ref, sr, self.config.onsets).times_s
            media.wave_reference = waveform_png(ref, sr, duration, events_s=marks, onsets_s=ref_onsets)
            media.spec_reference = spectrogram_png(ref, sr, duration, events_s=marks, onsets_s=ref_onsets)
            media.audio_reference = encode_opus(ref, sr)
        return media


def _load_backends(config: ReportConfig, locator: WeightsLocator,
                   unavailable: dict[str, str]) -> dict[str, EmbeddingBackend]:
    backends: dict[str, EmbeddingBackend] = {}
    for name in config.backends:
        try:
            backends[name] = build_backend(name, locator, config.device)
        except BackendUnavailable as exc:
            unavailable[f"fad_{name}"] = str(exc)
            if name in CLASSIFIER_BACKENDS:
                unavailable[f"kl_{name}"] = str(exc)
                unavailable[f"is_{name}"] = str(exc)
    return backends


def _set_metrics(infos: dict[str, BackendInfo], scored: list[ScoredClip], records: list[dict], metrics: dict,
                 notes: dict, unavailable: dict) -> None:
    for name, info in infos.items():
        gen = [(c.index, c.generated[name]) for c in scored if name in c.generated]
        ref = [(c.index, c.reference[name]) for c in scored if name in c.reference]
        if len(gen) < 2 or len(ref) < 2:
            unavailable[f"fad_{name}"] = (f"needs >= 2 generated and >= 2 reference clips, "
                                         f"have {len(gen)} and {len(ref)}")
        else:
            start = time.perf_counter()
            metrics[f"fad_{name}"] = frechet_distance(np.concatenate([f.embeddings for _, f in gen]),
                                                      np.concatenate([f.embeddings for _, f in ref]))
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
            unavailable[m] = ("no clip is 4.8 s or longer with a readable source video "
                              "(Synchformer's sync head scores 14 segments)")
        elif m == "ib_score" and m not in unavailable:
            reasons = sorted({r["ib_reason"] for r in records if r.get("ib_reason")})
            unavailable[m] = ("no clip has a source video and 8 s of frames at 0.5 fps" if not reasons
                              else "no clip could be scored: " + "; ".join(reasons[:3]))
        elif m.startswith("av_align") and m not in unavailable:
            unavailable[m] = ("no clip has a readable source video" if m == "av_align"
                              else "no clip has both a source video and reference audio")


def _timings_ms(records: list[dict]) -> dict[str, float]:
    """Median milliseconds per clip of each timed step (the median hides the first clip's warm-up)."""
    keys = sorted({k for r in records for k in r if k.startswith("t_") and k.endswith("_s")})
    out = {}
    for k in keys:
        values = [r[k] for r in records if r.get(k) is not None]
        if values:
            out[k[2:-2]] = 1000.0 * float(np.median(values))
    return out


def grouped_unavailable(unavailable: dict[str, str]) -> list[tuple[list[str], str]]:
    """Metrics that share one reason (e.g. FAD, KL and IS all need the CNN14 file), together."""
    groups: dict[str, list[str]] = {}
    for key, reason in unavailable.items():
        groups.setdefault(reason, []).append(key)
    return [(keys, reason) for reason, keys in groups.items()]


def _write_parquet(records: list[dict], path: Path) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    string_cols = {"video_id", "source_path", "status", "error", "generated_path", "reference_path",
                   "reference_kind", "onset_reference", "ib_reason"}
    int_cols = {"n_reference_onsets", "n_generated_onsets"}
    columns = list(dict.fromkeys(k for r in records for k in r)) or ["video_id"]
    fields = [pa.field(c, pa.string() if c in string_cols else pa.int64() if c in int_cols else pa.float64())
              for c in columns]
    data = {c: [_nan_to_none(r.get(c)) for r in records] for c in columns}
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    pq.write_table(pa.Table.from_pydict(data, schema=pa.schema(fields)), tmp)
    os.replace(tmp, path)


def _write_text(text: str, path: Path) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


@dataclass(frozen=True)
class Injected:
    """Already-built models that replace what the weights folder would give (tests, reuse)."""
    backends: dict[str, EmbeddingBackend] | None = None
    offsets: OffsetPredictor | None = None
    clap: object | None = None  # text_embeddings / audio_embeddings at 48 kHz
    imagebind: ImageBindScorer | None = None  # IB-score: clip_score(video path, 16 kHz audio)


@dataclass
class LoadedModels:
    backends: dict[str, EmbeddingBackend]
    offsets: OffsetPredictor | None
    clap: _ClapScorer | None
    imagebind: ImageBindScorer | None
    unavailable: dict[str, str]
    load_s: float

    def infos(self) -> dict[str, BackendInfo]:
        return {name: backend.info for name, backend in self.backends.items()}

    def scorer(self, config: ReportConfig, references: ReferenceIndex | None = None) -> _ClipScorer:
        """`references`: the index already built from config.reference, if any (a folder listing)."""
        references = references if references is not None else ReferenceIndex(config.reference)
        return _ClipScorer(config, self.backends, references, self.offsets, self.clap, self.imagebind)


def load_models(config: ReportConfig, run_config: dict, rows: list[GeneratedRow],
                injected: Injected = Injected()) -> LoadedModels:
    """Every model the report's metrics need, from the weights folder (or `injected`); what cannot
    load goes into `unavailable` with the reason."""
    import torch  # noqa: F401 - imported before timing so load_s is the models alone

    locator = WeightsLocator(config.weights_dir)
    unavailable: dict[str, str] = {}
    start = time.perf_counter()
    backends = injected.backends if injected.backends is not None else _load_backends(config, locator, unavailable)
    offsets = injected.offsets
    if "desync" in config.skip:
        offsets = None
        unavailable["desync_s"] = "left out (--skip desync)"
    elif offsets is None:
        try:
            offsets = build_offset_predictor(locator, config.device, max_duration_s=config.audio_length_s,
                                             decode_backend=config.decode_backend)
        except BackendUnavailable as exc:
            unavailable["desync_s"] = str(exc)
    clap_scorer = None
    if "clap" in config.skip:
        unavailable["clap_score"] = "left out (--skip clap)"
    elif _wants_clap(config, run_config, rows):
        try:
            clap_scorer = _ClapScorer(injected.clap if injected.clap is not None else build_clap(
                locator, config.device, preprocess=ClapPreprocess(max_seconds=config.audio_length_s)))
        except BackendUnavailable as exc:
            unavailable["clap_score"] = str(exc)
    else:
        unavailable["clap_score"] = "no clip has a text prompt (CLAP scores text-audio agreement)"
    imagebind = None
    if "ib" in config.skip:
        unavailable["ib_score"] = "left out (--skip ib)"
    elif not _wants_imagebind(rows):
        unavailable["ib_score"] = "no clip has a source video (text-to-audio): IB-score compares video and audio"
    else:
        try:
            imagebind = injected.imagebind if injected.imagebind is not None else build_imagebind(
                locator, config.device, duration_s=config.audio_length_s, decode_backend=config.decode_backend)
        except (BackendUnavailable, ValueError) as exc:  # ValueError: --audio-length under 4 s
            unavailable["ib_score"] = str(exc)
    unavailable.setdefault("kl_passt", unavailable.get("fad_passt", "passt backend not requested"))
    return LoadedModels(backends, offsets, clap_scorer, imagebind, unavailable, time.perf_counter() - start)


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


def _score_here(config: ReportConfig, run_config: dict, rows: list[GeneratedRow],
                items: list[tuple[int, GeneratedRow, bool]], injected: Injected,
                on_loaded: Callable[[dict[str, BackendInfo], float, dict[str, str]], None],
                on_scored: Callable[[list[ScoredClip]], None], references: ReferenceIndex | None = None) -> None:
    """Score `items` (index, row, want media) in this process, the models loaded once."""
    models = load_models(config, run_config, rows, injected)
    on_loaded(models.infos(), models.load_s, models.unavailable)
    scorer = models.scorer(config, references)
    for index, row, want_media in items:
        on_scored([scorer.score(index, row, want_media)])


def run_report(config: ReportConfig, progress: Callable[[int, int, str], None] | None = None,
               backends: dict[str, EmbeddingBackend] | None = None, offsets: OffsetPredictor | None = None,
               clap=None, notice: Callable[[str], None] | None = None,
               imagebind: ImageBindScorer | None = None) -> ReportResult:
    """Score every row of the run, write report.parquet, summary.json and index.html.

    `backends` replaces the ones `config.backends` names, `offsets` the DeSync predictor and
    `clap` the CLAP model (`text_embeddings` / `audio_embeddings` at 48 kHz) and `imagebind` the
    IB-score scorer that would be loaded from the weights folder: already-built models, e.g. tiny ones in tests or ones
    shared across reports.

    Clips are journaled in out_dir/journal as they come back; a rerun with the same configuration
    and weights scores only the clips the journal lacks (workflows/report_journal.py). `notice`
    gets one line when the journal is resumed or discarded. One report at a time writes out_dir
    (workflows/output_lock.py)."""
    if config.workers == 1 and config.device.startswith("cuda"):
        import torch

        if not torch.cuda.is_available():  # else the first model load fails with torch's driver message
            raise ValueError(f"--device {config.device}, but torch sees no CUDA GPU here; use --device cpu, or "
                             "--workers N on a Ray cluster with GPUs")
    run_config, all_rows = load_run(config.run_dir)
    writer = writer_of(config.run_dir)
    if writer is not None and notice is not None:  # generate rewrites report.parquet only when it ends
        notice(f"note: {config.run_dir} is being written ({writer}); this report covers the clips its "
               "report.parquet lists, not those generated since")
    rows = sample_rows(all_rows, config.sample, config.sample_seed)
    # how many generated clips the sample was drawn from (None: every row is scored)
    sampled_from = sum(r.status == "done" for r in all_rows) if len(rows) < len(all_rows) else None
    out_dir = Path(config.out_dir)
    with exclusive_output(out_dir, "report"):
        return _run_locked(config, progress, Injected(backends, offsets, clap, imagebind), notice, run_config, rows,
                           sampled_from, out_dir)


def _run_locked(config: ReportConfig, progress: Callable[[int, int, str], None] | None, injected: Injected,
                notice: Callable[[str], None] | None, run_config: dict, rows: list, sampled_from: int | None,
                out_dir: Path) -> ReportResult:
    from dub.workflows.report_journal import ReportJournal, clip_key, report_identity

    unavailable: dict[str, str] = {}
    notes: dict[str, str] = {}
    metrics: dict[str, float] = {}

    want_media = _media_wanted(config, rows)
    identity = report_identity(config, injected, _wants_clap(config, run_config, rows), _wants_imagebind(rows))
    journal = ReportJournal(out_dir / "journal", identity, fresh=config.fresh, notice=notice,
                           flush_every_s=config.journal_every_s)
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
                from dub.workflows.report_parallel import score_on_ray

                score_on_ray(config, run_config, rows, todo, injected, on_loaded, on_scored)
            else:  # the index the clip keys were made with: the reference folder is listed once
                _score_here(config, run_config, rows, todo, injected, on_loaded, on_scored, references)
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
        "metrics": {k: _nan_to_none(v) for k, v in metrics.items() if not k.startswith("t_")},
        "notes": notes,
        "unavailable": dict(sorted(unavailable.items())),
        "lower_is_better": sorted(k for k in LOWER_IS_BETTER),
        "timings_ms_per_clip": _timings_ms(records),
        "journal": {"reused": reused, "scored": len(todo)},  # clips taken from the journal, scored now
        "sample": None if sampled_from is None else {"clips": config.sample, "seed": config.sample_seed,
                                                     "of_generated": sampled_from},
        "timings_s_total": {"model_load": model_load_s,
                            **{k[2:-2]: v for k, v in metrics.items() if k.startswith("t_")}},
        "onset_definition": {"tolerance_s": config.onsets.tolerance_s, "prf_window_s": config.onsets.prf_window_s,
                             "peak_delta": config.onsets.peak_delta, "max_duration_s": config.onsets.max_duration_s},
        "config": config.as_dict(),
        "run_config": run_config,
    }
    _write_parquet(records, out_dir / "report.parquet")
    _write_text(json.dumps(summary, indent=2, default=str), out_dir / "summary.json")
    result = ReportResult(records, summary, out_dir, media)
    if config.write_html:
        from dub.workflows.report_page import render_page

        _write_text(render_page(summary, records, media), out_dir / "index.html")
    return result
