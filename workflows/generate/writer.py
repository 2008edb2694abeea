"""The per-clip writer of `dub generate`, and the same as a Ray actor so that the work of each
clip (stitching, candidate choice, loudness, encoding, remuxing, uploading) leaves the driver:
one driver process at 0.15-0.5 s of a core per clip cannot keep up with several GPUs
(docs/scale.md)."""

from __future__ import annotations

import json
import time

import numpy as np

from dub.workflows.generate.candidates import ModelScorer, choose, clip_motion, select_candidate
from dub.workflows.generate.clips import STAGE_COLUMNS, PlannedVideo, expected_audio, expected_mp4, report_row
from dub.workflows.generate.config import GenerateConfig
from dub.workflows.generate.content import load_tagger
from dub.workflows.generate.sinks import write_flac_bytes
from dub.workflows.media.audio import resample
from dub.workflows.media.loudness import normalize_loudness


class ClipWriter:
    """Stitches a clip's windows, chooses among its candidates, sets its loudness and writes its
    files (mp4 or audio file, published to the output's store); a shard sample is returned, not
    written, since the driver appends every clip to one shard sequence.

    The driver runs one in its own process (`--writers 0`) or several as Ray actors
    (`start_writers`), on any node for an object-storage output, on the driver's node for a local one."""

    def __init__(self, cfg: GenerateConfig, info, config_hash: str, scorer=None):
        from dub.workflows.generate.config import run_paths

        self.cfg, self.info, self.config_hash = cfg, info, config_hash
        self.paths = run_paths(cfg.out_dir)  # on this node: an object-storage output's stage is local
        # content flags wherever PANNs weights are present (run_generate refused --reject without them)
        self.tagger = load_tagger()
        if scorer is None and cfg.candidates > 1 and cfg.select != "av-align":
            scorer = ModelScorer(cfg.select)  # --select desync / clap, loaded once per writer
        self.scorer = scorer

    def write(self, video: PlannedVideo, windows: list[dict]) -> tuple[dict, dict | None]:
        """(the clip's report row, its WebDataset sample or None); never raises: a failure is
        the row's error."""
        from dub.workflows.media.windows import Window, stitch

        errors = [str(w["error"]) for w in windows if str(w["error"])]
        timings = {
            key: float(sum(float(w[key]) for w in windows)) for key in STAGE_COLUMNS.values() if key in windows[0]
        }
        if errors:
            row = report_row(
                video.video_id,
                video.path,
                "failed",
                errors[0],
                num_windows=len(windows),
                prompt=video.prompt,
                **timings,
            )
            return row, None
        start = time.perf_counter()
        try:
            sr = int(windows[0]["sample_rate"])
            spans = [Window(float(w["start_s"]), float(w["start_s"]) + float(w["valid_s"])) for w in windows]

            def clip_audio(candidate: int | None) -> np.ndarray:
                parts = [np.asarray(w["audio"] if candidate is None else w["audio"][candidate]) for w in windows]
                audio = stitch([a[: int(round(float(w["valid_s"]) * sr))] for a, w in zip(parts, windows)], spans, sr)
                return audio[: int(round(video.duration_s * sr))]

            selection, kept = {}, 0
            multi = self.cfg.candidates > 1
            candidates = [clip_audio(k) for k in range(self.cfg.candidates)] if multi else [clip_audio(None)]
            flags = (
                None
                if self.tagger is None
                else self.tagger.flags([resample(a, sr, self.tagger.sample_rate) for a in candidates])
            )
            if multi:
                allowed = None
                if flags is not None and self.cfg.reject:
                    allowed = [not f.flagged(self.cfg.reject) for f in flags]
                if self.scorer is not None and (self.cfg.select != "clap" or video.prompt.strip()):
                    scores = self.scorer.scores(candidates, sr, video.path, video.prompt)
                    chosen = choose(scores, self.cfg.select, allowed)
                else:  # av-align, or clap for a clip without a prompt
                    motion, times = clip_motion(windows, self.info.sync_fps)
                    chosen = select_candidate(candidates, sr, motion, times, self.info.sync_fps, allowed)
                kept = chosen.chosen
                selection = {
                    "candidate_scores": chosen.scores,
                    "candidate_chosen": kept,
                    "candidate_metric": chosen.metric,
                }
            audio = candidates[kept]
            if flags is not None:
                f = flags[kept]
                selection.update(
                    speech_prob=f.speech_prob,
                    music_prob=f.music_prob,
                    audioset_tags=f.top_tags,
                    audioset_tag_probs=f.top_probs,
                    content_rejected=f.flagged(self.cfg.reject),
                )
            loudness = {}
            if self.cfg.loudness_lufs is not None:
                audio, change = normalize_loudness(audio, sr, self.cfg.loudness_lufs, self.cfg.true_peak_dbtp)
                loudness = {
                    "loudness_generated_lufs": change.before_lufs,
                    "loudness_lufs": change.after_lufs,
                    "true_peak_dbtp": change.true_peak_dbtp,
                    "loudness_peak_limited": change.peak_limited,
                }
            row = report_row(
                video.video_id,
                video.path,
                "done",
                None,
                num_windows=len(windows),
                prompt=video.prompt,
                audio_duration_s=len(audio) / sr,
                config_hash=self.config_hash,
                **selection,
                **loudness,
                **timings,
            )
            sample = self._write_outputs(video, audio, sr, windows, row)
        except Exception as exc:  # noqa: BLE001 - a write failure fails this video, not the run
            row = report_row(
                video.video_id,
                video.path,
                "failed",
                f"write: {type(exc).__name__}: {exc}",
                num_windows=len(windows),
                prompt=video.prompt,
                **timings,
            )
            return row, None
        row["t_write_s"] = time.perf_counter() - start
        return row, sample

    def _write_outputs(
        self, video: PlannedVideo, audio: np.ndarray, sr: int, windows: list[dict], row: dict
    ) -> dict | None:
        cfg = self.cfg
        if cfg.text_to_audio:
            from dub.workflows.media.audio import encode_audio_file

            dst = expected_audio(self.paths, video, cfg.audio_codec)
            dst.parent.mkdir(parents=True, exist_ok=True)
            encode_audio_file(audio, sr, dst, codec=cfg.audio_codec)
            row["output_audio"] = self.paths["mirror"].publish(dst)
            return None
        row.update(video.existing)
        if "mp4" in video.missing:
            from dub.workflows.media.remux import remux_with_audio

            dst = expected_mp4(self.paths, video)
            dst.parent.mkdir(parents=True, exist_ok=True)
            remux_with_audio(
                video.path, audio, sr, dst, keep_original_audio=cfg.keep_original_audio, codec=cfg.audio_codec
            )
            row["output_mp4"] = self.paths["mirror"].publish(dst)
        if not (cfg.writes_shards and "wds" in video.missing):
            return None
        meta = {
            "video_id": video.video_id,
            "source": video.path,
            "prompt": video.prompt,
            "model": cfg.model,
            "weights_hash": self.info.weights_hash,
            "config_hash": self.config_hash,
            "sampler": cfg.sampler.as_dict(),
            "seed": cfg.seed,
            "sample_rate": sr,
            "windows": [[float(w["start_s"]), float(w["valid_s"])] for w in windows],
            "timings": {k: v for k, v in row.items() if k.startswith("t_")},
        }
        sample = {"flac": write_flac_bytes(audio, sr), "json": json.dumps(meta).encode()}
        if cfg.save_features and "clip_f" in windows[0]:
            for name in ("clip_f", "sync_f", "text_f"):
                sample[f"{name}.npy"] = _npy_bytes(np.stack([np.asarray(w[name]) for w in windows]))
        return sample


def _npy_bytes(array: np.ndarray) -> bytes:
    import io

    buf = io.BytesIO()
    np.save(buf, array.astype(np.float16))
    return buf.getvalue()
