"""PaSST backend (FD/KL/IS-PaSST as av-benchmark): conformance with hear21passt on a tiny random
model, the released checkpoint's key layout, loading, the front end, and the report backend.

The fixture in tests/data/passt_fixture was made by hear21passt 0.0.26 itself (make_fixture.py
there): its AugmentMelSTFT at get_basic_model's settings and PasstBasicWrapper(mode="all")
around a tiny random PaSST, on clips zero-padded to 10 s exactly as av-benchmark pads them.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from dub.workflows.metrics.classifiers import inception_score, kl_softmax
from dub.workflows.metrics.embeddings import BackendUnavailable, PasstBackend, build_backend
from dub.workflows.metrics.models.passt import (
    CLIP_SAMPLES,
    PASST_S_SWA,
    PASST_TINY,
    SAMPLE_RATE,
    Passt,
    PasstConfig,
    PasstMelFrontEnd,
    checkpoint_shapes,
    fit_clip,
    kaldi_mel_banks,
    load_passt,
)
from dub.workflows.metrics.weights import METRIC_WEIGHTS, WeightsLocator

FIXTURE = Path(__file__).parent / "data" / "passt_fixture"
SOUNDS = Path(__file__).resolve().parents[1] / "workflows" / "datasets" / "sounds"


@pytest.fixture(scope="module")
def meta() -> dict:
    return json.loads((FIXTURE / "fixture.json").read_text())


@pytest.fixture(scope="module")
def io() -> dict[str, torch.Tensor]:
    return load_file(str(FIXTURE / "io.safetensors"))


@pytest.fixture(scope="module")
def tiny(meta) -> Passt:
    config = PasstConfig.from_dict(meta["tiny_config"])
    assert config == PASST_TINY
    return load_passt(FIXTURE / "weights.safetensors", config)


def assert_matches(ours: torch.Tensor, ref: torch.Tensor) -> None:
    """max|ours - ref| <= 1e-4 max(1, max|ref|), the acceptance bound of every publisher fixture
    here (the MMAudio fixtures publish it). The tiny model's outputs use 0.3% of it (float32
    forwards by other code). The log mel uses 10%: the STFT's rounding is large relative to
    quiet bins, log(E + 1e-5) caps it, and the fixture's own float32 rounding (against a float64
    run) is 1.8e-5 on values up to 2: two float32 front ends are at most ~2x that apart."""
    assert ours.shape == ref.shape
    tol = 1e-4 * max(1.0, float(ref.abs().max()))
    err = float((ours - ref).abs().max())
    assert err <= tol, f"max |ours - reference| = {err:.3g} > {tol:.3g}"


def recordings() -> list[np.ndarray]:
    """The CC0 recordings foley-synth uses, at 32 kHz: real audio, 0.3 to 0.5 s each."""
    from dub.workflows.metrics.media_io import read_audio

    return [read_audio(p, SAMPLE_RATE) for p in sorted(SOUNDS.glob("*.wav"))]


# ----------------------------------------------------------------------------- conformance


@pytest.mark.conformance
def test_front_end_matches_hear21passt(io, meta):
    front = PasstMelFrontEnd()
    for name in ("a", "b"):
        wav = io[f"wav_{name}"]
        mel = front(wav[None])[0]
        assert mel.shape == (128, 1 + (wav.numel() - 1) // 320)
        assert_matches(mel, io[f"mel_{name}"])
    padded = torch.stack([fit_clip(io["wav_a"]), fit_clip(io["wav_b"])])
    mel = front(padded)
    assert mel.shape[-1] == meta["padded_frames"] == 1000
    assert_matches(mel[..., :16], io["mel_padded_head"])


@pytest.mark.conformance
def test_embedding_and_logits_match_av_benchmark_split(tiny, io, meta):
    # av-benchmark: out = get_basic_model(mode="all")(wav); logits = out[:, :527]; features = out[:, 527:]
    assert meta["wrapper_output_dim"] == tiny.config.num_classes + tiny.config.embed_dim
    padded = torch.stack([fit_clip(io["wav_a"]), fit_clip(io["wav_b"])])
    assert padded.shape == (2, CLIP_SAMPLES)
    with torch.no_grad():
        embedding, logits = tiny(padded)
    assert_matches(embedding, io["embedding"])
    assert_matches(logits, io["logits"])
    assert float(io["embedding"][0].sub(io["embedding"][1]).abs().max()) > 0.1  # the clips differ


@pytest.mark.conformance
def test_short_input_cuts_the_time_embedding_as_the_reference(tiny, io):
    with torch.no_grad():
        embedding, logits = tiny.net(io["mel_a"][None])  # 60 frames -> 5 of the 99 time positions
    assert_matches(embedding[0], io["short_embedding_a"])
    assert_matches(logits[0], io["short_logits_a"])
    with pytest.raises(ValueError, match="time embedding has only 99"):
        tiny.net(torch.zeros(1, 128, 1100))


# ----------------------------------------------------------------------------- checkpoint


@pytest.mark.conformance
def test_full_size_keys_and_shapes_are_the_released_layout(meta):
    shapes = checkpoint_shapes(PASST_S_SWA)
    expected = {k: tuple(v) for k, v in meta["full_checkpoint_shapes"].items()}  # from hear21passt's PaSST
    assert shapes == expected
    assert len(shapes) == 5 + 2 + 12 * 12 + 2 + 4 + 2 == 159
    assert shapes["patch_embed.proj.weight"] == (768, 1, 16, 16)
    assert shapes["freq_new_pos_embed"] == (1, 768, 12, 1) and shapes["time_new_pos_embed"] == (1, 768, 1, 99)
    assert shapes["head.1.weight"] == (527, 768) and shapes["head_dist.weight"] == (527, 768)
    assert meta["wrapper_extra_keys"] == ["device_proxy"]  # the only key the wrapper adds besides net.*


def test_checkpoint_round_trip_pt_safetensors_and_wrapped_forms(tmp_path, io):
    state = load_file(str(FIXTURE / "weights.safetensors"))
    torch.save(state, tmp_path / "plain.pt")  # the released form: a plain state dict
    torch.save({"model": state}, tmp_path / "nested.pt")  # unwrapped by the reference filter too
    torch.save(
        {"device_proxy": torch.zeros(1), **{f"net.{k}": v for k, v in state.items()}}, tmp_path / "wrapper.pt"
    )  # a PasstBasicWrapper state dict
    save_file(state, str(tmp_path / "converted.safetensors"))
    wav = fit_clip(io["wav_a"])[None]
    outputs = []
    for name in ("plain.pt", "nested.pt", "wrapper.pt", "converted.safetensors"):
        model = load_passt(tmp_path / name, PASST_TINY)
        assert not model.training
        # every form stores the same bits; same weights, same code: bit-identical outputs below
        assert all(torch.equal(v, state[k]) for k, v in model.net.state_dict().items())
        with torch.no_grad():
            outputs.append(model(wav))
    for embedding, logits in outputs[1:]:
        assert torch.equal(embedding, outputs[0][0]) and torch.equal(logits, outputs[0][1])


def test_mismatched_checkpoints_are_refused_naming_the_keys(tmp_path):
    state = load_file(str(FIXTURE / "weights.safetensors"))
    broken = dict(state)
    del broken["head_dist.bias"]
    broken["blocks.2.norm1.weight"] = torch.ones(32)
    torch.save(broken, tmp_path / "keys.pt")
    with pytest.raises(ValueError, match=r"(?s)missing keys?: head_dist\.bias.*unexpected keys?: blocks\.2\.norm1"):
        load_passt(tmp_path / "keys.pt", PASST_TINY)
    with pytest.raises(ValueError, match=r"time_new_pos_embed: checkpoint \(1, 32, 1, 99\) vs"):
        load_passt(FIXTURE / "weights.safetensors", PasstConfig(embed_dim=32, depth=2, num_heads=4, input_frames=2000))
    with pytest.raises(ValueError, match="missing keys"):  # the tiny file is no full-size model
        load_passt(FIXTURE / "weights.safetensors", PASST_S_SWA)
    torch.save({"something": torch.zeros(2)}, tmp_path / "other.pt")
    with pytest.raises(ValueError, match="no PaSST state dict"):
        load_passt(tmp_path / "other.pt", PASST_TINY)


# ----------------------------------------------------------------------------- front end, independently


def test_kaldi_mel_banks_match_torchaudio():
    import torchaudio.compliance.kaldi as kaldi

    ref, _ = kaldi.get_mel_banks(128, 1024, 32000.0, 0.0, 15000.0, 100.0, -500.0, 1.0)
    ours = kaldi_mel_banks()
    assert ours.shape == (128, 513) and torch.all(ours[:, -1] == 0)
    # torchaudio builds them in float32: mel values up to 3600 round by ~2.4e-4 (an ulp), over a
    # band spacing of ~27 mel that is ~1e-5 of a weight (at most 1); ours are float64
    assert float((ours[:, :-1] - ref.double()).abs().max()) < 1e-4
    hz = torch.arange(513) * 31.25
    assert torch.all(ours[:, hz > 15000] == 0) and float(ours.max()) <= 1.0


def test_one_frame_by_hand():
    """Pre-emphasis, a symmetric 800-point Hann centred in 1024, power, mel, log, (x + 4.5) / 5."""
    rng = np.random.default_rng(3)
    wav = 0.1 * rng.standard_normal(32000)
    mel = PasstMelFrontEnd().double()(torch.from_numpy(wav)[None])[0].numpy()
    y = wav[1:] - 0.97 * wav[:-1]
    k = 40  # an interior frame: centred at k * 320, no padding involved
    window = np.zeros(1024)
    window[112:912] = np.hanning(800)  # numpy's hanning is the symmetric window
    frame = y[k * 320 - 512 : k * 320 + 512] * window
    power = np.abs(np.fft.rfft(frame)) ** 2
    expected = (np.log(kaldi_mel_banks().numpy() @ power + 1e-5) + 4.5) / 5
    # the front end's window and banks are float32 constants (held in float64): a few u32 of
    # relative error in the log mel, measured 2.5e-6; rtol 1e-5 (~170 u32), atol for values near 0
    np.testing.assert_allclose(mel[:, k], expected, rtol=1e-5, atol=1e-6)


def test_fit_clip_pads_and_cuts_like_av_benchmark():
    x = torch.arange(1, 11, dtype=torch.float32)  # cutting and zero-padding copy values: exact
    assert torch.equal(fit_clip(x, 4), x[:4])
    assert torch.equal(fit_clip(x, 12), torch.cat([x, torch.zeros(2)]))
    assert fit_clip(torch.zeros(3, CLIP_SAMPLES + 5)).shape == (3, CLIP_SAMPLES)


# ----------------------------------------------------------------------------- backend


def test_backend_on_real_audio_gives_features_for_kl_and_is(tmp_path):
    torch.save(load_file(str(FIXTURE / "weights.safetensors")), tmp_path / "tiny.pt")
    backend = PasstBackend(tmp_path / "tiny.pt", config=PASST_TINY, batch=4)
    assert backend.info.name == "passt" and backend.info.sample_rate == 32000 and backend.info.comparable
    clips = recordings()
    long_clip = np.concatenate([clips[0]] * 30)  # 15 s: cut to its first 10 s
    feats = backend.features(clips + [long_clip])
    n = len(clips) + 1
    assert feats.embeddings.shape == (n, 32) and feats.embeddings.dtype == np.float64
    assert feats.logits.shape == (n, 527) and np.all(np.isfinite(feats.logits))
    # batching (4 + 3) changes nothing; the long clip is its first 10 s. Other batch shapes may
    # block the float32 GEMMs otherwise: ~sqrt(n) u per layer on values of order 1 (measured 5e-7)
    alone = backend.features([clips[2]])
    np.testing.assert_allclose(feats.embeddings[2], alone.embeddings[0], rtol=1e-5, atol=1e-5)
    first = long_clip[:CLIP_SAMPLES]
    np.testing.assert_allclose(feats.logits[-1], backend.features([first]).logits[0], rtol=1e-5, atol=1e-5)
    # DC removed as av-benchmark's loader does: an offset changes nothing, unless switched off.
    # x + 0.25 in float32 drops the samples' last bits (u |x + 0.25|, ~1e-7 of a sample), which
    # the log mel and the net carry (measured 7e-7); the offset itself, kept, moves them by 5e-2
    shifted = backend.features([clips[1] + 0.25])
    np.testing.assert_allclose(shifted.embeddings[0], feats.embeddings[1], rtol=1e-4, atol=1e-4)
    backend.remove_dc = False
    assert not np.allclose(backend.features([clips[1] + 0.25]).embeddings[0], feats.embeddings[1], atol=1e-3)
    # KL and IS from the logits (workflows/metrics/classifiers.py)
    kl = kl_softmax(feats.logits[:3], feats.logits[3:6])
    # KL of a distribution with itself: every term p (log p - log p) is exactly 0
    assert kl.shape == (3,) and np.all(kl > 0) and np.allclose(kl_softmax(feats.logits, feats.logits), 0)
    mean, std = inception_score(feats.logits, splits=2)
    assert np.isfinite(mean) and mean >= 1.0 and np.isfinite(std)
    empty = backend.features([])
    assert empty.embeddings.shape == (0, 32) and empty.logits.shape == (0, 527)


def test_build_backend_loads_the_full_size_registry_file(tmp_path):
    spec = METRIC_WEIGHTS["passt"]
    assert spec.file_name == "passt-s-f128-p16-s10-ap.476-swa.pt"
    with pytest.raises(BackendUnavailable, match=r"passt-s-f128-p16-s10-ap\.476-swa\.pt"):
        build_backend("passt", WeightsLocator(tmp_path))
    path = tmp_path / spec.model_name / spec.file_name
    path.parent.mkdir()
    torch.manual_seed(5)
    torch.save(Passt(PASST_S_SWA).net.state_dict(), path)  # full size, the publisher's key names
    backend = build_backend("passt", WeightsLocator(tmp_path))
    assert isinstance(backend, PasstBackend)
    feats = backend.features(recordings()[:1])
    assert feats.embeddings.shape == (1, 768) and feats.logits.shape == (1, 527)
    assert np.all(np.isfinite(feats.embeddings)) and np.all(np.isfinite(feats.logits))
