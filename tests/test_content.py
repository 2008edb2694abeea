"""Content flags (`dub generate`, where PANNs weights are present) and `--reject speech,music`:
flagged candidates are not chosen, and a clip whose candidates are all flagged says so."""

from __future__ import annotations

import numpy as np
import pyarrow.parquet as pq
import pytest

from dub.workflows.generate.candidates import select_candidate
from dub.workflows.generate.config import GenerateConfig
from dub.workflows.generate.content import CLASS_INDEX, REJECT_THRESHOLD, ContentTagger
from dub.workflows.metrics.embeddings import ClipFeatures


class PositionalBackend:
    """A stand-in for PANNs: the i-th clip of each call gets logits[i] (speech / music by position)."""

    def __init__(self, speech_logits: list[float], music_logit: float = -6.0) -> None:
        self.speech_logits, self.music_logit = speech_logits, music_logit

    def features(self, wavs):
        logits = np.full((len(wavs), 527), -8.0)
        for i in range(len(wavs)):
            logits[i, CLASS_INDEX["speech"]] = self.speech_logits[i % len(self.speech_logits)]
            logits[i, CLASS_INDEX["music"]] = self.music_logit
            logits[i, 300] = 5.0  # a clear top tag
        return ClipFeatures(np.zeros((len(wavs), 4)), logits)


def test_tags_and_probabilities_come_from_the_sigmoid_outputs():
    labels = [f"label {i}" for i in range(527)]
    flags = ContentTagger(PositionalBackend([2.0, -2.0]), labels).flags([np.zeros(16000)] * 2)
    assert flags[0].speech_prob == pytest.approx(1 / (1 + np.exp(-2.0)))
    assert flags[0].flagged(("speech",)) and not flags[1].flagged(("speech",))
    assert not flags[0].flagged(("music",)) and not flags[0].flagged(())
    assert flags[0].top_tags[0] == "label 300" and flags[1].top_tags[0] == "label 300"
    assert ContentTagger(PositionalBackend([0.0])).flags([np.zeros(16000)])[0].top_tags[0] == "class 300"
    assert 1 / (1 + np.exp(-0.0)) == REJECT_THRESHOLD  # a logit of 0 is exactly on the threshold: flagged


def test_selection_skips_flagged_candidates_unless_all_are():
    fps, sr = 25.0, 16000
    times = np.arange(100) / fps
    motion = np.full(100, 0.2, np.float32)
    motion[[20, 50, 80]] = 8.0
    rng = np.random.default_rng(0)
    quiet = [rng.standard_normal(4 * sr).astype(np.float32) * 1e-3 for _ in range(3)]
    best = quiet[1].copy()
    for t in (0.8, 2.0, 3.2):
        best[int(t * sr) : int(t * sr) + 800] += rng.standard_normal(800).astype(np.float32)
    clips = [quiet[0], best, quiet[2]]
    assert select_candidate(clips, sr, motion, times, fps).chosen == 1
    assert select_candidate(clips, sr, motion, times, fps, allowed=[True, False, True]).chosen in (0, 2)
    assert select_candidate(clips, sr, motion, times, fps, allowed=[False, False, False]).chosen == 1


def test_reject_names_bad_kinds_and_missing_weights_before_ray(tmp_path, monkeypatch):
    with pytest.raises(ValueError, match="--reject takes speech, music"):
        GenerateConfig(out_dir="o", manifest="m.parquet", reject=("laughter",))
    from dub.workflows.generate.run import GenerateError, run_generate
    from tests.generate_helpers import random_demo_checkpoint

    monkeypatch.setenv("DUB_WEIGHTS_DIR", str(tmp_path / "no_weights"))
    manifest = tmp_path / "m.parquet"
    manifest.write_bytes(b"never read")
    cfg = GenerateConfig(
        out_dir=str(tmp_path / "out"),
        manifest=str(manifest),
        reject=("speech",),
        checkpoint=str(random_demo_checkpoint(tmp_path / "demo.safetensors")),
    )
    with pytest.raises(GenerateError, match="needs PANNs CNN14 weights"):
        run_generate(cfg)
    assert not (tmp_path / "out").exists()


def test_generate_reject_keeps_the_unflagged_candidate_and_records_the_flags(ray_session, tmp_path, monkeypatch):
    """Candidates 0 and 1 of every clip are tagged as speech, 2 is not: with --reject speech
    every clip keeps candidate 2 whatever its sync score, and report.parquet holds its flags."""
    import dub.workflows.generate.run as run_module
    import dub.workflows.generate.writer as writer_module
    from tests.generate_helpers import flash_clips_manifest, random_demo_checkpoint

    monkeypatch.setattr(run_module, "tagger_available", lambda: True)  # the driver's check
    # the clip writer, which runs in the driver on the embedded local Ray
    monkeypatch.setattr(writer_module, "load_tagger", lambda: ContentTagger(PositionalBackend([3.0, 3.0, -3.0])))
    manifest = flash_clips_manifest(tmp_path, [[0.5, 1.2], [0.5, 1.4]], seconds=2.0)
    run_module.run_generate(
        GenerateConfig(
            out_dir=str(tmp_path / "out"),
            manifest=str(manifest),
            batch_size=2,
            candidates=3,
            reject=("speech",),
            checkpoint=str(random_demo_checkpoint(tmp_path / "demo.safetensors")),
        )
    )
    rows = pq.read_table(tmp_path / "out" / "report.parquet").to_pylist()
    assert [r["candidate_chosen"] for r in rows] == [2, 2]
    for row in rows:
        assert row["speech_prob"] < REJECT_THRESHOLD and row["content_rejected"] is False
        assert row["audioset_tags"][0] == "class 300" and len(row["audioset_tag_probs"]) == 3
