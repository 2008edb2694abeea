"""DeSync: the full Synchformer (audio branch + sync head) against av-benchmark's own code, strict
loading of the whole checkpoint layout, av-benchmark's first/last-14-segment windowing, and a real
video file end to end with a tiny model."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from dub.workflows.metrics.desync import (
    OFFSET_GRID_S,
    SynchformerOffsetPredictor,
    build_offset_predictor,
    desync_score,
    desync_segment_windows,
    desync_windows,
)
from dub.workflows.metrics.embeddings import BackendUnavailable
from dub.workflows.metrics.models.synchformer_sync import (
    FullSynchformer,
    FullSynchformerConfig,
    SyncMelFrontEnd,
    load_full_synchformer,
    mel_filterbank,
    num_audio_segments,
    num_video_segments,
)
from dub.workflows.metrics.weights import WeightsLocator
from tests.report_helpers import write_clip
from tests.requirements import require_module

FIXTURE = Path(__file__).parent / "data" / "synchformer_sync_fixture"
TINY = FullSynchformerConfig.tiny()
PREFIXES = {"vfeat_extractor", "afeat_extractor", "vproj", "aproj", "transformer"}


def assert_conforms(out: torch.Tensor, ref: torch.Tensor, name: str) -> None:
    """max|out - ref| <= 1e-4 max(1, max|ref|): the acceptance bound of every publisher fixture
    here (the MMAudio fixtures publish it). Our float32 forwards (other code, other orders) use
    0.2-0.5% of it; the AST log mel 5%, the STFT's rounding being large relative to quiet bins."""
    assert out.shape == ref.shape, f"{name}: shape {tuple(out.shape)} != {tuple(ref.shape)}"
    err = (out.float() - ref.float()).abs().max().item()
    bound = 1e-4 * max(1.0, ref.abs().max().item())
    assert err <= bound, f"{name}: max|out-ref| = {err:.3g} > {bound:.3g}"


@pytest.fixture(scope="module")
def fixture_io() -> dict[str, torch.Tensor]:
    return load_file(str(FIXTURE / "io.safetensors"))


@pytest.fixture(scope="module")
def fixture_model() -> FullSynchformer:
    return load_full_synchformer(FIXTURE / "weights.safetensors", config=TINY)


def random_tiny(seed: int = 0) -> FullSynchformer:
    """A tiny model whose every parameter is random (the reference zero-initialises many)."""
    torch.manual_seed(seed)
    model = FullSynchformer(TINY)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape) / (p.shape[1:].numel() ** 0.5 if p.ndim > 1 and p.shape[0] > 1 else 3.0))
    return model.eval()


# ----------------------------------------------------------------------------- conformance


@pytest.mark.conformance
def test_fixture_config_is_the_tiny_config():
    meta = json.loads((FIXTURE / "config.json").read_text())
    v, a, h = TINY.visual, TINY.audio, TINY.head
    assert meta["visual"] == {
        "embed_dim": v.embed_dim,
        "depth": v.depth,
        "num_heads": v.num_heads,
        "crop_size": v.crop_size,
        "agg_num_heads": v.agg_num_heads,
        "agg_ff_dim": v.agg_ff_dim,
    }
    assert meta["audio"] == {
        "hidden_size": a.hidden_size,
        "depth": a.depth,
        "num_heads": a.num_heads,
        "intermediate_size": a.intermediate_size,
    }
    assert meta["head"] == {
        "n_embd": h.n_embd,
        "n_layer": h.n_layer,
        "n_head": h.n_head,
        "pos_len": TINY.head_positions,
    }
    # every key av-benchmark's Synchformer has is a key of ours, and nothing else
    assert sorted(FullSynchformer(TINY).state_dict()) == meta["keys"]
    assert {k.split(".")[0] for k in meta["keys"]} == PREFIXES


@pytest.mark.conformance
def test_audio_front_end_matches_torchaudio_melspectrogram(fixture_io):
    """wav -> the AST input exactly as av-benchmark's encode_audio_with_sync makes it."""
    wav = fixture_io["wav"]  # (1, 21480): 3 segments, the last 1000 samples unused
    assert num_audio_segments(wav.shape[-1]) == 3
    segments = wav.unfold(-1, 10240, 5120)
    assert_conforms(SyncMelFrontEnd()(segments), fixture_io["ast_input"][:, :, 0], "ast_input")


def test_mel_filterbank_is_torchaudios():
    torchaudio = require_module("torchaudio")
    ref = torchaudio.functional.melscale_fbanks(513, 0.0, 8000.0, 128, 16000, norm=None, mel_scale="htk")
    # torchaudio builds the triangles in float32 (corner frequencies up to 8 kHz), ours in float64:
    # mel values up to 2840 round by ~1.2e-4 (half an ulp), over a band spacing of ~22 mel that
    # is ~1e-5 of a weight (at most 1); measured 1.3e-5
    assert np.abs(mel_filterbank() - ref.numpy()).max() < 5e-5


@pytest.mark.conformance
def test_conformance_audio_video_features(fixture_model, fixture_io):
    model = fixture_model
    assert_conforms(model.audio_segments_features(fixture_io["wav"]), fixture_io["afeat"], "afeat")
    with torch.no_grad():
        assert_conforms(model.extract_afeats(fixture_io["ast_input"][:, :, 0]), fixture_io["afeat"], "afeat (AST)")
    # a segment subset is the same features as slicing all of them
    assert_conforms(
        model.audio_segments_features(fixture_io["wav"][0], [2, 0]), fixture_io["afeat"][:, [2, 0]], "afeat subset"
    )
    frames = fixture_io["frames"]  # (1, 24, 32, 32, 3) uint8: 2 segments
    assert_conforms(model.video_segments_features(frames), fixture_io["vfeat"], "vfeat")
    assert_conforms(
        model.video_segments_features(frames[0], [1], batch_size=1), fixture_io["vfeat"][:, [1]], "vfeat subset"
    )


@pytest.mark.conformance
def test_conformance_offset_head_and_desync(fixture_model, fixture_io):
    """The 24-segment (8 s) features cut as av_bench/evaluate.py does: [:, :14] and [:, -14:]."""
    vis, aud = fixture_io["vis24"], fixture_io["aud24"]
    first = fixture_model.offset_logits(vis[:, :14], aud[:, :14])
    last = fixture_model.offset_logits(vis[:, -14:], aud[:, -14:])
    assert_conforms(first, fixture_io["logits_first"], "logits first 14")
    assert_conforms(last, fixture_io["logits_last"], "logits last 14")
    # argmax of logits whose top two are >= 0.55 apart (far beyond the tolerance): the same grid
    # points, ours float64, the fixture's float32 (|offset| <= 2: 1.2e-7 apart)
    offsets_first = OFFSET_GRID_S[first.argmax(-1).numpy()]
    offsets_last = OFFSET_GRID_S[last.argmax(-1).numpy()]
    np.testing.assert_allclose(offsets_first, fixture_io["offsets_first"].numpy(), atol=1e-6)
    np.testing.assert_allclose(offsets_last, fixture_io["offsets_last"].numpy(), atol=1e-6)
    assert not np.array_equal(offsets_first, offsets_last)  # the fixture tells the two windows apart
    ours = desync_score(list(offsets_first) + list(offsets_last))  # float64 against the fixture's float32
    assert ours == pytest.approx(fixture_io["desync"].item(), abs=1e-6)


# ----------------------------------------------------------------------------- loading


def test_released_geometry_on_meta():
    config = FullSynchformerConfig.released()
    assert config.head_positions == 198 and config.audio.time_patches == 6 and config.audio.freq_patches == 12
    with torch.device("meta"):
        model = FullSynchformer(config)
    shapes = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    assert {k.split(".")[0] for k in shapes} == PREFIXES
    assert shapes["transformer.pos_emb_cfg.pos_emb"] == (1, 198, 768)
    assert shapes["transformer.off_head.weight"] == (21, 768)
    assert shapes["afeat_extractor.ast.embeddings.position_embeddings"] == (1, 74, 768)
    assert shapes["afeat_extractor.ast.embeddings.patch_embeddings.projection.weight"] == (768, 1, 16, 16)
    assert shapes["afeat_extractor.ast.encoder.layer.11.attention.attention.query.weight"] == (768, 768)
    assert shapes["afeat_extractor.freq_attn_agg.self_attn.in_proj_weight"] == (3 * 768, 768)
    assert shapes["transformer.blocks.2.mlp.2.weight"] == (768, 4 * 768)
    assert "transformer.blocks.3.ln1.weight" not in shapes
    assert shapes["vproj.weight"] == shapes["aproj.weight"] == (768, 768)
    vis = torch.empty(2, 14, 8, 768, device="meta")
    aud = torch.empty(2, 14, 6, 768, device="meta")
    assert model.offset_logits(vis, aud).shape == (2, 21)


def test_strict_load_from_pth_and_safetensors(tmp_path, fixture_io):
    model = random_tiny(3)
    state = model.state_dict()
    torch.save({k: v.clone() for k, v in state.items()}, tmp_path / "synchformer_state_dict.pth")
    save_file({k: v.contiguous() for k, v in state.items()}, str(tmp_path / "synchformer.safetensors"))
    vis, aud = fixture_io["vis24"][:, :14], fixture_io["aud24"][:, :14]
    expected = model.offset_logits(vis, aud)
    for name in ("synchformer_state_dict.pth", "synchformer.safetensors"):
        loaded = load_full_synchformer(tmp_path / name, config=TINY)
        # both files keep every bit; same weights, same code, same inputs: bit-identical
        assert torch.equal(loaded.offset_logits(vis, aud), expected), name
        wav = fixture_io["wav"]
        assert torch.equal(loaded.audio_segments_features(wav), model.audio_segments_features(wav)), name

    visual_only = {k: v for k, v in state.items() if k.startswith("vfeat_extractor.")}
    with pytest.raises(ValueError, match=r"missing keys: .*afeat_extractor\.") as err:
        load_full_synchformer(visual_only, config=TINY)
    assert "transformer.*" in str(err.value)  # the hint names what DeSync needs
    with pytest.raises(ValueError, match=r"unexpected keys: afeat_extractor\.classifier\.weight"):
        load_full_synchformer({**state, "afeat_extractor.classifier.weight": torch.zeros(3)}, config=TINY)
    with pytest.raises(ValueError, match="shape mismatch"):
        load_full_synchformer(state, config=FullSynchformerConfig.tiny(width=32))


def test_head_rejects_anything_but_14_segments(fixture_model, fixture_io):
    with pytest.raises(ValueError, match="exactly 14 segments"):
        fixture_model.offset_logits(fixture_io["vis24"][:, :13], fixture_io["aud24"][:, :13])
    with pytest.raises(ValueError, match="exactly 14 segments"):
        fixture_model.offset_logits(fixture_io["vis24"], fixture_io["aud24"])


# ----------------------------------------------------------------------------- windowing


def test_segment_windows_follow_av_benchmark():
    # an 8 s clip: 200 frames at 25 fps and 128000 samples at 16 kHz are 24 segments each
    assert num_video_segments(200) == 24 and num_audio_segments(8 * 16000) == 24
    assert desync_segment_windows(24) == [range(0, 14), range(10, 24)]
    assert desync_windows(8.0) == [(0.0, 4.8), (3.2, 8.0)]
    # exactly 14 segments (4.8 s): both windows are the same segments, and both count
    assert desync_segment_windows(14) == [range(0, 14), range(0, 14)]
    assert desync_windows(4.8) == [(0.0, 4.8), (0.0, 4.8)]
    # under 14 segments: no window (the head takes exactly 198 tokens), so no offsets
    assert desync_segment_windows(13) == [] and desync_windows(4.7) == [] and desync_windows(0.5) == []
    # the last window ends on the 0.32 s segment grid, not at the clip's end
    assert desync_windows(8.1) == [(0.0, 4.8), (3.2, 8.0)]
    assert num_video_segments(15) == 0 and num_audio_segments(10239) == 0
    # decimal fractions in binary floating point: approx absorbs 0.3's representation error
    assert desync_score([-0.4, 0.2]) == pytest.approx(0.3) and np.isnan(desync_score([]))


def test_predictor_windows_are_the_first_and_last_14_of_all_segments():
    """On an 8 s clip (24 segments) the predictor's two logits are the head on features[:, :14] and
    features[:, -14:] of ALL segments, as av-benchmark computes them (it encodes only the segments
    it needs, which must not change anything)."""
    model = random_tiny(5)
    rng = np.random.default_rng(0)
    frames = rng.integers(0, 256, (200, 32, 32, 3), dtype=np.uint8)
    wav = (0.3 * rng.standard_normal(8 * 16000)).astype(np.float32)
    vfeat, afeat = model.video_segments_features(frames), model.audio_segments_features(wav)
    assert vfeat.shape == (1, 24, 8, 16) and afeat.shape == (1, 24, 6, 16)
    expected = torch.cat(
        [model.offset_logits(vfeat[:, :14], afeat[:, :14]), model.offset_logits(vfeat[:, -14:], afeat[:, -14:])]
    ).numpy()
    predictor = SynchformerOffsetPredictor(model, batch_size=5)
    logits = predictor.window_logits(frames, wav)
    assert_conforms(torch.from_numpy(logits), torch.from_numpy(expected), "window logits")
    offsets = predictor.segment_offsets(frames, wav)
    assert offsets == [float(OFFSET_GRID_S[i]) for i in expected.argmax(-1)]
    # a longer audio track does not move the windows past the video's end (the shorter stream bounds both)
    longer = np.concatenate([wav, wav[:16000]])
    assert_conforms(
        torch.from_numpy(predictor.window_logits(frames, longer)),
        torch.from_numpy(expected),
        "logits with 1 s more audio",
    )
    # stereo (channels, L) is averaged to mono
    assert predictor.segment_offsets(frames, np.stack([wav, wav])) == offsets
    # under 14 segments: no offsets
    assert predictor.segment_offsets(frames[:119], wav) == []


# ----------------------------------------------------------------------------- end to end


def test_clip_offsets_end_to_end_from_a_video_file(tmp_path):
    model = random_tiny(7)
    weights_dir = tmp_path / "weights"
    (weights_dir / "mmaudio-ext").mkdir(parents=True)
    torch.save(model.state_dict(), weights_dir / "mmaudio-ext" / "synchformer_state_dict.pth")
    predictor = build_offset_predictor(WeightsLocator(weights_dir), config=TINY)

    rng = np.random.default_rng(1)
    n = 150  # 6 s at 25 fps: 17 segments
    frames = np.full((n, 48, 64, 3), 60, dtype=np.uint8)  # not square: short side to 32, centre crop
    for i in range(n):
        y, x = rng.integers(0, 32, 2)
        frames[i, y : y + 16, x : x + 16] = 220
    wav = (0.2 * rng.standard_normal(6 * 16000)).astype(np.float32)
    clip = write_clip(tmp_path / "clip.mp4", frames)

    offsets = predictor.clip_offsets(str(clip), wav)
    # grid points (isclose: the offsets may come back as float32), and their mean in another order
    assert len(offsets) == 2 and all(np.isclose(OFFSET_GRID_S, o).any() for o in offsets)
    assert desync_score(offsets) == pytest.approx(np.mean(np.abs(offsets)))
    # the same file, cut to 4.8 s as av-benchmark's --audio_length does: 14 segments, one window twice
    cut = SynchformerOffsetPredictor(predictor.model, max_duration_s=4.8).clip_offsets(str(clip), wav)
    assert len(cut) == 2 and cut[0] == cut[1] == offsets[0]
    # a clip under 4.8 s gets no offsets
    short = write_clip(tmp_path / "short.mp4", frames[:100])
    assert predictor.clip_offsets(str(short), wav[: 4 * 16000]) == []


def test_build_offset_predictor_says_why_it_cannot(tmp_path):
    with pytest.raises(BackendUnavailable, match="synchformer_state_dict.pth"):
        build_offset_predictor(WeightsLocator(tmp_path))
    folder = tmp_path / "mmaudio-ext"
    folder.mkdir()
    (folder / "synchformer_state_dict.pth").write_bytes(b"")
    with pytest.raises(BackendUnavailable, match="found, but it cannot be used for DeSync"):
        build_offset_predictor(WeightsLocator(tmp_path), config=TINY)
    visual_only = {k: v for k, v in random_tiny().state_dict().items() if k.startswith("vfeat_extractor.")}
    torch.save(visual_only, folder / "synchformer_state_dict.pth")
    with pytest.raises(BackendUnavailable, match=r"cannot be used for DeSync(.|\n)*missing keys"):
        build_offset_predictor(WeightsLocator(tmp_path), config=TINY)


def test_importing_desync_does_not_import_torch():
    code = "import sys, dub.workflows.metrics.desync as d; print('torch' in sys.modules, len(d.OFFSET_GRID_S))"
    out = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        check=True,
        cwd=Path(__file__).resolve().parents[1],
    )
    assert out.stdout.split() == ["False", "21"]


def test_candidate_scoring_by_desync_decodes_once_and_scores_as_clip_offsets(tmp_path):
    """`--select desync` scores each candidate as the report's DeSync would (clip_offsets on the
    candidate resampled to 16 kHz), decoding the clip's frames once for all of them."""
    from dub.workflows.generate.candidates import ModelScorer
    from dub.workflows.media.audio import resample

    predictor = SynchformerOffsetPredictor(random_tiny(7))
    rng = np.random.default_rng(2)
    frames = rng.integers(0, 256, (150, 32, 32, 3), dtype=np.uint8)
    clip = write_clip(tmp_path / "clip.mp4", frames)
    candidates = [(0.2 * rng.standard_normal(6 * 22050)).astype(np.float32) for _ in range(3)]
    decodes = []
    decode = predictor.frames
    predictor.frames = lambda path: decodes.append(path) or decode(path)
    scorer = object.__new__(ModelScorer)
    scorer.metric, scorer.model = "desync", predictor
    scores = scorer.scores(candidates, 22050, str(clip), prompt="")
    assert len(decodes) == 1
    expected = [desync_score(predictor.clip_offsets(str(clip), resample(a, 22050, 16000))) for a in candidates]
    assert scores == expected  # offsets are grid values from the same model on the same frames: exact
