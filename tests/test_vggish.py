"""VGGish backend for FAD: torchvggish key names, log-mel front end, embeddings, registry wiring."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from dub.workflows.metrics.embeddings import BackendUnavailable, VGGishBackend, build_backend
from dub.workflows.metrics.models.vggish import (
    EXAMPLE_FRAMES,
    MEL_BANDS,
    MIN_SAMPLES,
    SAMPLE_RATE,
    VGGish,
    VGGishConfig,
    VGGishFrontEnd,
    htk_mel_matrix,
    load_vggish,
    load_vggish_pca,
)
from dub.workflows.metrics.weights import METRIC_WEIGHTS, WeightsLocator

TINY = VGGishConfig(channels=(4, 4, 8, 8, 8, 8), hidden=32)  # keeps the 128-d embedding
CONV_KEYS = ("features.0", "features.3", "features.6", "features.8", "features.11", "features.13")
LINEAR_KEYS = ("embeddings.0", "embeddings.2", "embeddings.4")


def torchvggish_shapes(config: VGGishConfig) -> dict[str, tuple[int, ...]]:
    """Key -> shape of a torchvggish state dict, written out from its architecture."""
    shapes: dict[str, tuple[int, ...]] = {}
    cins = (1,) + config.channels[:-1]
    for key, cin, cout in zip(CONV_KEYS, cins, config.channels):
        shapes[f"{key}.weight"], shapes[f"{key}.bias"] = (cout, cin, 3, 3), (cout,)
    dims = (config.channels[-1] * 6 * 4, config.hidden, config.hidden, config.embedding_size)
    for key, din, dout in zip(LINEAR_KEYS, dims[:-1], dims[1:]):
        shapes[f"{key}.weight"], shapes[f"{key}.bias"] = (dout, din), (dout,)
    return shapes


def random_state(config: VGGishConfig, seed: int) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    # scaled so activations stay O(1) through the full-size network
    return {
        k: torch.randn(shape, generator=gen) / np.sqrt(np.prod(shape[1:]) if len(shape) > 1 else 100.0)
        for k, shape in torchvggish_shapes(config).items()
    }


def noise(seconds: float, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return (0.1 * rng.standard_normal(int(round(seconds * SAMPLE_RATE)))).astype(np.float32)


# ----------------------------------------------------------------------------- checkpoint


def test_full_size_keys_and_shapes_are_torchvggish():
    with torch.device("meta"):
        state = VGGish().state_dict()
    expected = torchvggish_shapes(VGGishConfig())
    assert expected["embeddings.0.weight"] == (4096, 12288)
    assert {k: tuple(v.shape) for k, v in state.items()} == expected


def test_random_torchvggish_state_dict_loads_strictly(tmp_path):
    state = random_state(TINY, seed=1)
    torch.save(state, tmp_path / "tiny.pth")
    from safetensors.torch import save_file

    save_file(state, str(tmp_path / "tiny.safetensors"))
    examples = torch.randn(3, EXAMPLE_FRAMES, MEL_BANDS, generator=torch.Generator().manual_seed(2))
    outputs = []
    for name in ("tiny.pth", "tiny.safetensors"):
        model = load_vggish(tmp_path / name, TINY)
        # both files keep every bit: same weights, same code, bit-identical outputs below
        assert all(torch.equal(v, state[k]) for k, v in model.state_dict().items())
        with torch.no_grad():
            outputs.append(model(examples))
    assert outputs[0].shape == (3, 128) and torch.equal(outputs[0], outputs[1])
    assert (outputs[0] < 0).any()  # raw embeddings: no ReLU on the last layer (av-benchmark)
    with torch.no_grad():  # torchvggish flattens (N, C, H, W) via transpose(1, 3), transpose(1, 2)
        conv = model.features(examples[:, None]).transpose(1, 3).transpose(1, 2).reshape(3, -1)
        # the same numbers in another memory layout: the GEMMs may block otherwise, float32
        # rounding of 192- and 32-term dot products of order-1 values (~sqrt(n) u): 1e-6 + 1e-5|x|
        assert torch.allclose(model.embeddings(conv), outputs[0], atol=1e-6)
    relu = VGGishConfig(channels=TINY.channels, hidden=TINY.hidden, final_relu=True)
    with torch.no_grad():  # the same pre-activations, then max(x, 0) either way: bit-identical
        assert torch.equal(load_vggish(tmp_path / "tiny.pth", relu)(examples), outputs[0].clamp(min=0))


def test_wrong_shapes_and_keys_are_refused_naming_the_key(tmp_path):
    state = random_state(TINY, seed=3)
    state["features.3.weight"] = torch.zeros(5, 4, 3, 3)
    torch.save(state, tmp_path / "bad_shape.pth")
    with pytest.raises(ValueError, match=r"features\.3\.weight: checkpoint \(5, 4, 3, 3\) vs"):
        load_vggish(tmp_path / "bad_shape.pth", TINY)
    state = random_state(TINY, seed=3)
    del state["embeddings.4.bias"]
    state["embeddings.6.weight"] = torch.zeros(1)
    torch.save(state, tmp_path / "bad_keys.pth")
    with pytest.raises(ValueError, match=r"(?s)embeddings\.4\.bias.*embeddings\.6\.weight"):
        load_vggish(tmp_path / "bad_keys.pth", TINY)
    torch.save({"something": torch.zeros(2)}, tmp_path / "other.pth")
    with pytest.raises(ValueError, match="no VGGish state dict"):
        load_vggish(tmp_path / "other.pth", TINY)


def test_pca_postprocessing_quantises_like_torchvggish(tmp_path):
    rng = np.random.default_rng(4)
    vectors, means = rng.standard_normal((128, 128)), rng.standard_normal(128)
    torch.save({"pca_eigen_vectors": vectors, "pca_means": means}, tmp_path / "pca.pth")  # numpy, as published
    pca = load_vggish_pca(tmp_path / "pca.pth")
    emb = torch.from_numpy(rng.standard_normal((5, 128))).float()
    out = pca(emb).numpy()
    projected = (vectors @ (emb.numpy().T.astype(np.float64) - means[:, None])).T  # torchvggish's column form
    expected = np.round((np.clip(projected, -2, 2) + 2) * 255 / 4)
    assert out.min() >= 0 and out.max() <= 255 and np.all(out == np.round(out))
    assert np.mean(out == expected) > 0.99  # float32 vs float64 may flip a rounding at .5
    assert np.max(np.abs(out - expected)) <= 1


# ----------------------------------------------------------------------------- front end


def test_front_end_example_counts():
    front = VGGishFrontEnd()
    one = front(torch.from_numpy(noise(0.96)))
    assert one.shape == (1, EXAMPLE_FRAMES, MEL_BANDS) and torch.isfinite(one).all()
    assert front(torch.from_numpy(noise(0.96)), pad_short=False).shape[0] == 0  # as torchvggish
    # 5 s: 1 + (80000 - 400) // 160 = 498 frames -> 5 whole examples of 96
    assert front(torch.from_numpy(noise(5.0))).shape == (5, EXAMPLE_FRAMES, MEL_BANDS)
    assert front(torch.from_numpy(noise(MIN_SAMPLES / SAMPLE_RATE)), pad_short=False).shape[0] == 1
    assert front(torch.from_numpy(noise(2.0))).shape[0] == 2
    with pytest.raises(ValueError, match="mono"):
        front(torch.zeros(2, 16000))


def test_log_mel_frames_are_uncentred_periodic_hann_magnitudes():
    wav = noise(1.0, seed=5).astype(np.float64)
    log_mel = VGGishFrontEnd().log_mel(torch.from_numpy(wav)).numpy()
    assert log_mel.shape == (1 + (len(wav) - 400) // 160, MEL_BANDS)
    k = 37
    window = np.hanning(401)[:-1]  # the periodic Hann of length 400
    magnitude = np.abs(np.fft.rfft(wav[k * 160 : k * 160 + 400] * window, 512))
    # float64 both ways: two FFTs' rounding (~60 u64 ||X||, ||X|| ~ 45 here) moves a band by
    # ~3e-13, which the + 0.01 floor turns into at most ~3e-11 of its log
    np.testing.assert_allclose(log_mel[k], np.log(magnitude @ htk_mel_matrix() + 0.01), rtol=1e-9, atol=1e-9)


def test_mel_bands_follow_the_htk_scale_from_125_to_7500_hz():
    weights = htk_mel_matrix()
    assert weights.shape == (257, 64) and np.all(weights[0] == 0) and weights.max() <= 1.0
    hz = np.linspace(0, 8000, 257)
    assert np.all(weights[hz < 125] == 0) and np.all(weights[hz > 7500] == 0)
    centres_mel = np.linspace(1127 * np.log1p(125 / 700), 1127 * np.log1p(7500 / 700), 66)[1:-1]
    centres_hz = 700 * np.expm1(centres_mel / 1127)
    front = VGGishFrontEnd()
    t = np.arange(SAMPLE_RATE) / SAMPLE_RATE
    for band in (10, 40):  # a tone at a band's centre lights that band most
        tone = torch.from_numpy(np.sin(2 * np.pi * centres_hz[band] * t))
        assert int(front.log_mel(tone).mean(dim=0).argmax()) == band


# ----------------------------------------------------------------------------- backend


def test_backend_embeds_every_example_of_every_clip(tmp_path):
    torch.save(random_state(TINY, seed=6), tmp_path / "tiny.pth")
    backend = VGGishBackend(tmp_path / "tiny.pth", config=TINY, batch=4)
    feats = backend.features([noise(5.0, seed=7), noise(0.3, seed=8)])  # 5 examples + 1 padded
    assert feats.embeddings.shape == (6, 128) and feats.embeddings.dtype == np.float64
    assert feats.logits is None and backend.info.comparable and backend.info.sample_rate == SAMPLE_RATE
    alone = backend.features([noise(0.3, seed=8)]).embeddings
    # batching changes nothing but the float32 GEMMs' blocking: ~sqrt(n) u per layer, order-1 values
    np.testing.assert_allclose(feats.embeddings[5:], alone, rtol=1e-5, atol=1e-6)
    assert not np.allclose(feats.embeddings[0], feats.embeddings[1])


def test_build_backend_loads_the_registry_file_as_downloaded_or_imported(tmp_path):
    from safetensors.torch import save_file

    spec = METRIC_WEIGHTS["vggish"]
    state = random_state(VGGishConfig(), seed=9)  # full size, torchvggish key names
    downloaded = tmp_path / "downloaded" / spec.model_name / spec.file_name
    imported = tmp_path / "imported" / spec.model_name / spec.file_name.replace(".pth", ".safetensors")
    for path in (downloaded, imported):
        path.parent.mkdir(parents=True)
    torch.save(state, downloaded)
    save_file(state, str(imported))  # where `dub weights import` puts the converted file
    del state
    clips = [noise(2.0, seed=10), noise(1.0, seed=11)]
    results = []
    for root in ("downloaded", "imported"):
        backend = build_backend("vggish", WeightsLocator(tmp_path / root))
        results.append(backend.features(clips).embeddings)
        del backend
    assert results[0].shape == (3, 128) and np.all(np.isfinite(results[0]))
    assert results[0].std(axis=0).max() > 0
    np.testing.assert_array_equal(results[0], results[1])  # the same bits loaded, the same code


def test_build_backend_without_weights_names_the_file(tmp_path):
    with pytest.raises(BackendUnavailable, match=r"missing weights file vggish-10086976\.pth"):
        build_backend("vggish", WeightsLocator(tmp_path))
