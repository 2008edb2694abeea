"""Scoring one clip: every per-clip metric and the features the set-level metrics need, with
the models loaded once (from the weights folder, or injected).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from dub.workflows.metrics.av_align import av_align_score, motion_peaks
from dub.workflows.metrics.clap import ClapPreprocess, build_clap, clap_score
from dub.workflows.metrics.desync import (
    OffsetPredictor,
    build_offset_predictor,
    desync_score,
)
from dub.workflows.metrics.embeddings import (
    BackendInfo,
    BackendUnavailable,
    EmbeddingBackend,
    build_backend,
)
from dub.workflows.metrics.ib_score import ImageBindScorer, build_imagebind
from dub.workflows.metrics.media_io import encode_opus, read_audio, read_grey_frames
from dub.workflows.metrics.onsets import detect_onsets, onset_acc_ap, onset_prf
from dub.workflows.metrics.plots import spectrogram_png, waveform_png
from dub.workflows.metrics.run_inputs import (
    GeneratedRow,
    ReferenceIndex,
    events_sidecar,
    load_events,
    read_generated_audio,
)
from dub.workflows.metrics.sound_class import load_event_classes, score_sound_classes
from dub.workflows.metrics.weights import WeightsLocator
from dub.workflows.report.config import (
    CLASSIFIER_BACKENDS,
    PER_CLIP_METRICS,
    ClipMedia,
    Injected,
    ReportConfig,
    ScoredClip,
)


class _Timer:
    """Adds elapsed seconds to record['t_<name>_s']."""

    def __init__(self, record: dict, name: str) -> None:
        self.record, self.key = record, f"t_{name}_s"

    def __enter__(self) -> _Timer:
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


def wants_clap(config: ReportConfig, run_config: dict, rows: list[GeneratedRow]) -> bool:
    return "clap" not in config.skip and (any(r.prompt for r in rows) or _is_text_to_audio(run_config, rows))


def wants_imagebind(rows: list[GeneratedRow]) -> bool:
    return any(r.source_path is not None for r in rows)


def nan_to_none(value):
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, (np.floating,)):
        return nan_to_none(float(value))
    return value


def _empty_record(row: GeneratedRow) -> dict:
    record: dict = {
        "video_id": row.video_id,
        "source_path": None if row.source_path is None else str(row.source_path),
        "status": "ok",
        "error": None,
        "generated_path": None,
        "reference_path": None,
        "reference_kind": "none",
        "onset_reference": "none",
        "duration_s": None,
        "n_reference_onsets": None,
        "n_generated_onsets": None,
        "n_class_events": None,
        "n_class_correct": None,
    }
    record.update({m: None for m in PER_CLIP_METRICS})
    record["ib_reason"] = None  # why a clip has no ib_score (no video, video too short, ...)
    return record


class _ClipScorer:
    """Per-clip metrics; keeps the embedding features for the set-level metrics."""

    def __init__(
        self,
        config: ReportConfig,
        backends: dict[str, EmbeddingBackend],
        refs: ReferenceIndex,
        offsets: OffsetPredictor | None = None,
        clap: _ClapScorer | None = None,
        imagebind: ImageBindScorer | None = None,
    ) -> None:
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
                    scored_ref = (
                        ref_onsets
                        if cfg.onsets.max_duration_s is None
                        else ref_onsets[ref_onsets < cfg.onsets.max_duration_s]
                    )
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
                    offsets = self.offsets.clip_offsets(
                        str(row.source_path), gen_audio.model_input(16000, cfg.audio_length_s)
                    )
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

    def _media(
        self, gen: np.ndarray, ref: np.ndarray | None, marks: np.ndarray | None, gen_onsets: np.ndarray | None
    ) -> ClipMedia:
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


def _load_backends(
    config: ReportConfig, locator: WeightsLocator, unavailable: dict[str, str]
) -> dict[str, EmbeddingBackend]:
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


def load_models(
    config: ReportConfig, run_config: dict, rows: list[GeneratedRow], injected: Injected = Injected()
) -> LoadedModels:
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
            offsets = build_offset_predictor(
                locator, config.device, max_duration_s=config.audio_length_s, decode_backend=config.decode_backend
            )
        except BackendUnavailable as exc:
            unavailable["desync_s"] = str(exc)
    clap_scorer = None
    if "clap" in config.skip:
        unavailable["clap_score"] = "left out (--skip clap)"
    elif wants_clap(config, run_config, rows):
        try:
            clap_scorer = _ClapScorer(
                injected.clap
                if injected.clap is not None
                else build_clap(locator, config.device, preprocess=ClapPreprocess(max_seconds=config.audio_length_s))
            )
        except BackendUnavailable as exc:
            unavailable["clap_score"] = str(exc)
    else:
        unavailable["clap_score"] = "no clip has a text prompt (CLAP scores text-audio agreement)"
    imagebind = None
    if "ib" in config.skip:
        unavailable["ib_score"] = "left out (--skip ib)"
    elif not wants_imagebind(rows):
        unavailable["ib_score"] = "no clip has a source video (text-to-audio): IB-score compares video and audio"
    else:
        try:
            imagebind = (
                injected.imagebind
                if injected.imagebind is not None
                else build_imagebind(
                    locator, config.device, duration_s=config.audio_length_s, decode_backend=config.decode_backend
                )
            )
        except (BackendUnavailable, ValueError) as exc:  # ValueError: --audio-length under 4 s
            unavailable["ib_score"] = str(exc)
    unavailable.setdefault("kl_passt", unavailable.get("fad_passt", "passt backend not requested"))
    return LoadedModels(backends, offsets, clap_scorer, imagebind, unavailable, time.perf_counter() - start)


def score_here(
    config: ReportConfig,
    run_config: dict,
    rows: list[GeneratedRow],
    items: list[tuple[int, GeneratedRow, bool]],
    injected: Injected,
    on_loaded: Callable[[dict[str, BackendInfo], float, dict[str, str]], None],
    on_scored: Callable[[list[ScoredClip]], None],
    references: ReferenceIndex | None = None,
) -> None:
    """Score `items` (index, row, want media) in this process, the models loaded once."""
    models = load_models(config, run_config, rows, injected)
    on_loaded(models.infos(), models.load_s, models.unavailable)
    scorer = models.scorer(config, references)
    for index, row, want_media in items:
        on_scored([scorer.score(index, row, want_media)])
