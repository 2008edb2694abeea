"""LAION-CLAP score: RoBERTa tokenizer + text tower, HTS-AT audio tower, checkpoint layout, score.

The conformance tests compare against outputs of the publisher's own code (laion_clap 1.1.7 with
transformers 4.57.1, a tiny random model; see tests/data/clap_fixture/make_fixture.py).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from dub.workflows.metrics.clap import (
    ClapConfig,
    ClapModel,
    ClapPreprocess,
    build_clap,
    clap_htsat_base,
    clap_score,
    clap_state_dict,
    load_clap,
    prepare_clap_audio,
)
from dub.workflows.metrics.embeddings import BackendUnavailable
from dub.workflows.metrics.models.htsat import HTSAT_TINY, HTSATConfig
from dub.workflows.metrics.models.roberta import ByteLevelBPETokenizer, RobertaConfig, bytes_to_unicode
from dub.workflows.metrics.weights import METRIC_WEIGHTS, WeightsLocator

FIXTURE = Path(__file__).parent / "data" / "clap_fixture"
REF = json.loads((FIXTURE / "reference.json").read_text(encoding="utf-8"))
VOCAB, MERGES = FIXTURE / "vocab.json", FIXTURE / "merges.txt"
RAW = ClapPreprocess(remove_mean=False, max_seconds=None, quantize=False)  # what the hook itself does


def tiny_config() -> ClapConfig:
    h, r = REF["config"]["htsat"], REF["config"]["roberta"]
    audio = HTSATConfig(
        embed_dim=h["embed_dim"],
        depths=tuple(h["depths"]),
        num_heads=tuple(h["num_heads"]),
        num_classes=h["num_classes"],
    )
    text = RobertaConfig(
        vocab_size=REF["config"]["vocab_size"],
        hidden=r["hidden_size"],
        layers=r["num_hidden_layers"],
        heads=r["num_attention_heads"],
        intermediate=r["intermediate_size"],
        max_positions=r["max_position_embeddings"],
        type_vocab_size=r["type_vocab_size"],
        pad_id=r["pad_token_id"],
        layer_norm_eps=r["layer_norm_eps"],
    )
    return ClapConfig(audio, text, joint_dim=REF["config"]["joint_dim"])


def fixture_signal(length: int, index: int) -> np.ndarray:
    """The fixture's audio recipe (same as make_fixture.test_signal)."""
    t = np.arange(length, dtype=np.float64) / 48000.0
    chirp = np.sin(2 * np.pi * (220.0 * (index + 1) * t + 150.0 * t * t)) * (0.6 + 0.4 * np.sin(2 * np.pi * 3.0 * t))
    tone = 0.15 * np.sin(2 * np.pi * 5000.0 * t + index)
    square = 0.1 * np.sign(np.sin(2 * np.pi * (2.0 + index) * t))
    return (0.4 * chirp + tone + square + 0.02 * index).astype(np.float32)


def waves() -> list[np.ndarray]:
    out = [fixture_signal(n, i) for i, n in enumerate(REF["audio"]["lengths"])]
    # The same float32 samples as the fixture's: float64 sums in another order differ by
    # ~log2(n) u64 sum|w| (1e-9 relative is plenty; abs 1e-6 for the near-zero signed sum), and
    # the float64 sines of two libms differ by an ulp that float32 rounding almost never sees
    for w, s, a, first in zip(out, REF["audio"]["sums"], REF["audio"]["abs_sums"], REF["audio"]["first"]):
        assert np.sum(w, dtype=np.float64) == pytest.approx(s, rel=1e-9, abs=1e-6)
        assert np.sum(np.abs(w), dtype=np.float64) == pytest.approx(a, rel=1e-9)
        np.testing.assert_array_equal(w[:4], np.asarray(first, dtype=np.float32))
    return out


def close(ours, ref) -> None:
    """max|ours - ref| <= 1e-4 max(1, max|ref|): the acceptance bound the MMAudio fixtures publish,
    kept for every publisher fixture. Our float32 forwards (other code, other summation orders)
    use under 1% of it: 6e-7 on the order-1 embeddings, 8e-5 dB on log mels whose scale is
    100 dB (the floor, amin 1e-10; the STFT's rounding, largest relative to quiet bins, is
    4.34 dB x that relative error). A wrong layout, window or formula moves them by > 1e-2."""
    ours, ref = np.asarray(ours, dtype=np.float64), np.asarray(ref, dtype=np.float64)
    assert ours.shape == ref.shape
    np.testing.assert_allclose(ours, ref, rtol=0, atol=1e-4 * max(1.0, float(np.abs(ref).max())))


def fixture_state(config: ClapConfig) -> dict[str, torch.Tensor]:
    """The fixture's learned tensors plus the constant buffers (STFT kernels, mel matrix,
    relative position indices, shift masks) computed by our own modules."""
    from safetensors.torch import load_file

    state = load_file(str(FIXTURE / "weights.safetensors"))
    own = ClapModel(config).state_dict()
    missing = {k: v for k, v in own.items() if k not in state}
    assert missing and all(
        any(c in k for c in ("spectrogram_extractor", "logmel_extractor", "relative_position_index", "attn_mask"))
        for k in missing
    )
    return {**state, **missing}


def publisher_checkpoint(config: ClapConfig) -> dict:
    """A checkpoint as LAION-CLAP's training wrote it: DDP prefix, "state_dict" wrapper, training
    extras, and the old persistent `position_ids` buffer."""
    state = {f"module.{k}": v for k, v in fixture_state(config).items()}
    state["module.text_branch.embeddings.position_ids"] = torch.arange(config.text.max_positions)[None]
    return {"epoch": 15, "name": "tiny", "state_dict": state}


@pytest.fixture(scope="module")
def scorer():
    config = tiny_config()
    return load_clap(fixture_state(config), "cpu", config, VOCAB, MERGES, RAW)


# ----------------------------------------------------------------------------- tokenizer


def test_byte_table_is_a_bijection_onto_printable_characters():
    table = bytes_to_unicode()
    assert sorted(table) == list(range(256)) and len(set(table.values())) == 256
    assert all(ch.isprintable() and not ch.isspace() for ch in table.values())
    assert table[ord("A")] == "A" and table[ord(" ")] == "\u0120"  # 'Ġ', as in RoBERTa's vocab


@pytest.mark.conformance
def test_tokenizer_matches_roberta_tokenizer():
    tok = ByteLevelBPETokenizer(VOCAB, MERGES, max_length=77)
    for text, pieces in zip(REF["texts"], REF["tokens"]):
        assert tok.tokenize(text) == pieces, text
    ids, mask = tok(REF["texts"])
    assert ids.dtype == torch.int64 and ids.shape == (len(REF["texts"]), 77)
    assert ids.tolist() == REF["input_ids"]
    assert mask.tolist() == REF["attention_mask"]
    assert mask[-1].sum() == 77 and ids[-1, -1] == tok.eos_id  # truncated to 75 tokens + <s> </s>


def test_tokenizer_rejects_a_vocabulary_without_roberta_specials(tmp_path):
    (tmp_path / "vocab.json").write_text(json.dumps({"a": 0}), encoding="utf-8")
    with pytest.raises(ValueError, match="<s>"):
        ByteLevelBPETokenizer(tmp_path / "vocab.json", MERGES)


# ----------------------------------------------------------------------------- layout


@pytest.mark.conformance
def test_full_size_model_has_the_publisher_keys_and_shapes():
    listing = json.loads((FIXTURE / "htsat_base_keys.json").read_text(encoding="utf-8"))
    with torch.device("meta"):
        model = ClapModel(clap_htsat_base())
    assert {k: list(v.shape) for k, v in model.state_dict().items()} == listing
    assert listing["audio_projection.0.weight"] == [512, 1024]
    assert listing["text_branch.embeddings.word_embeddings.weight"] == [50265, 768]


def test_preset_sizes():
    base = clap_htsat_base()
    assert base.audio.num_features == 1024 and base.audio.frames == 1001 and base.audio.freq_ratio == 4
    assert (base.text.hidden, base.text.layers, base.text.heads, base.text.max_positions) == (768, 12, 12, 514)
    assert ClapConfig.from_dict(json.loads(json.dumps(base.as_dict()))) == base
    HTSAT_TINY.validate()
    with pytest.raises(ValueError, match="frames"):
        HTSATConfig(hop_size=100).validate()


# ----------------------------------------------------------------------------- conformance


@pytest.mark.conformance
def test_front_end_and_branches_match_the_reference(scorer):
    model = scorer.model
    clip0 = torch.from_numpy(prepare_clap_audio(waves()[0], preprocess=RAW))[None]
    with torch.inference_mode():
        log_mel = model.audio_branch.log_mel(clip0)
        close(log_mel[0, 0, ::50], REF["clip0_log_mel_rows"])
        close(model.audio_branch(clip0)[0], REF["clip0_branch_embedding"])
        ids, mask = scorer.tokenizer(REF["texts"][:2])
        close(model.text_branch(ids, mask)[1], REF["pooled_first_two"])


@pytest.mark.conformance
def test_text_embeddings_match_the_reference(scorer):
    emb = scorer.text_embeddings(REF["texts"])
    assert emb.shape == (len(REF["texts"]), REF["config"]["joint_dim"]) and emb.dtype == np.float32
    close(emb, REF["text_embedding"])
    # normalised in float32: the norm of joint_dim terms rounds by ~joint_dim u (measured 6e-8)
    np.testing.assert_allclose(np.linalg.norm(emb, axis=1), 1.0, atol=1e-5)


@pytest.mark.conformance
def test_audio_embeddings_match_the_reference(scorer):
    close(scorer.audio_embeddings(waves()), REF["audio_embedding"])


@pytest.mark.conformance
def test_quantized_audio_embeddings_match_the_numpy_path_of_the_hook(scorer):
    quantizing = type(scorer)(scorer.model, scorer.tokenizer, "cpu", ClapPreprocess(False, None, True))
    wavs = waves()[:2]
    ours = quantizing.audio_embeddings(wavs)
    close(ours, REF["audio_embedding_quantized"][:2])
    # the int16 round trip is not a no-op: it moves samples by up to 2^-16, embeddings far beyond
    # float32 rounding (1e-7)
    assert not np.allclose(ours, scorer.audio_embeddings(wavs), atol=1e-7)


@pytest.mark.conformance
def test_clap_score_equals_independent_cosine(scorer):
    texts, wavs = REF["texts"][:5], waves()
    got = scorer.scores(texts, wavs)
    t = torch.tensor(REF["text_embedding"][:5], dtype=torch.float64)
    a = torch.tensor(REF["audio_embedding"], dtype=torch.float64)
    expected = torch.cosine_similarity(t, a, dim=-1).numpy()  # av-benchmark's formula on the reference's embeddings
    # our unit embeddings are each within close()'s 1e-4 of the reference's: a cosine of two
    # moves by at most the sum, 2e-4
    np.testing.assert_allclose(got, expected, atol=2e-4)
    # the same float64 inputs, another order of a 16-term dot product and norms: ~1e-15 apart
    np.testing.assert_allclose(clap_score(REF["text_embedding"][:5], REF["audio_embedding"]), expected, atol=1e-12)
    with pytest.raises(ValueError, match="texts for"):
        scorer.scores(texts[:2], wavs)


# ----------------------------------------------------------------------------- loading


@pytest.mark.parametrize("suffix", [".pth", ".safetensors"])
@pytest.mark.conformance
def test_publisher_layout_loads_strictly_from_file(tmp_path, suffix):
    config = tiny_config()
    ckpt = publisher_checkpoint(config)
    path = tmp_path / f"tiny{suffix}"
    if suffix == ".pth":
        torch.save(ckpt, path)
    else:
        from safetensors.torch import save_file

        save_file({k: v.contiguous() for k, v in ckpt["state_dict"].items()}, str(path))
    scorer = load_clap(path, "cpu", config, VOCAB, MERGES, RAW)
    close(scorer.text_embeddings(REF["texts"][:3]), REF["text_embedding"][:3])
    close(scorer.audio_embeddings(waves()[:1]), REF["audio_embedding"][:1])


def test_state_dict_quirks():
    config = tiny_config()
    ckpt = publisher_checkpoint(config)
    state = clap_state_dict(ckpt)
    assert "text_branch.embeddings.position_ids" not in state and not any(k.startswith("module.") for k in state)
    ckpt["state_dict"]["module.text_branch.embeddings.position_ids"] = torch.zeros(1, config.text.max_positions)
    with pytest.raises(ValueError, match="position_ids"):
        clap_state_dict(ckpt)


def test_mismatched_checkpoint_is_refused_with_the_keys_named():
    config = tiny_config()
    state = fixture_state(config)
    del state["text_projection.2.bias"]
    state["audio_branch.extra"] = torch.zeros(1)
    with pytest.raises(ValueError, match=r"text_projection\.2\.bias[\s\S]*audio_branch\.extra"):
        load_clap(state, "cpu", config, VOCAB, MERGES)
    wider = ClapConfig(
        HTSATConfig(embed_dim=8, depths=(2, 2, 2, 2), num_heads=(1, 1, 2, 2), num_classes=5),
        config.text,
        joint_dim=config.joint_dim,
    )
    with pytest.raises(ValueError, match="shape mismatch"):
        load_clap(fixture_state(config), "cpu", wider, VOCAB, MERGES)


# ----------------------------------------------------------------------------- preprocessing


def test_repeat_pad_crop_and_av_benchmark_cuts():
    x = np.arange(1, 4, dtype=np.float32)  # 3 samples into 10
    # tiling, cutting and padding copy samples: exact; the mean of 1, 2, 3 is exact in float32 too
    np.testing.assert_array_equal(prepare_clap_audio(x, 10, preprocess=RAW), [1, 2, 3, 1, 2, 3, 1, 2, 3, 0])
    np.testing.assert_array_equal(prepare_clap_audio(np.arange(12.0), 10, preprocess=RAW), np.arange(10.0))
    centred = prepare_clap_audio(x, 10, preprocess=ClapPreprocess(remove_mean=True, max_seconds=None))
    np.testing.assert_allclose(centred, [-1, 0, 1, -1, 0, 1, -1, 0, 1, 0])
    cut = prepare_clap_audio(
        np.ones(100, np.float32), 10, sample_rate=10, preprocess=ClapPreprocess(remove_mean=False, max_seconds=0.4)
    )
    np.testing.assert_array_equal(cut, [1, 1, 1, 1, 1, 1, 1, 1, 0, 0])  # 4 samples, tiled twice, padded
    q = prepare_clap_audio(
        np.array([0.5, -2.0, 1e-5], np.float32),
        3,
        preprocess=ClapPreprocess(remove_mean=False, max_seconds=None, quantize=True),
    )
    # float32 results against float64 fractions: numpy's default rtol 1e-7 (~1.7 u32)
    np.testing.assert_allclose(q, [16383 / 32767, -1.0, 0.0])
    assert prepare_clap_audio(x, 10).dtype == np.float32
    with pytest.raises(ValueError, match="empty"):
        prepare_clap_audio(np.zeros(0), 10)
    with pytest.raises(ValueError, match="NaN"):
        prepare_clap_audio(np.array([np.nan]), 10)


# ----------------------------------------------------------------------------- registry


def test_build_clap_names_each_missing_file(tmp_path):
    with pytest.raises(BackendUnavailable, match=METRIC_WEIGHTS["laion_clap"].file_name):
        build_clap(WeightsLocator(tmp_path))
    config = tiny_config()
    (tmp_path / "laion-clap").mkdir()
    torch.save(publisher_checkpoint(config), tmp_path / "laion-clap" / METRIC_WEIGHTS["laion_clap"].file_name)
    with pytest.raises(BackendUnavailable, match=r"vocab\.json.*roberta-base"):
        build_clap(WeightsLocator(tmp_path), config=config)
    (tmp_path / "roberta-base").mkdir()
    (tmp_path / "roberta-base" / "vocab.json").write_bytes(VOCAB.read_bytes())
    with pytest.raises(BackendUnavailable, match=r"merges\.txt"):
        build_clap(WeightsLocator(tmp_path), config=config)
    (tmp_path / "roberta-base" / "merges.txt").write_bytes(MERGES.read_bytes())
    scorer = build_clap(WeightsLocator(tmp_path), config=config)
    close(scorer.text_embeddings(REF["texts"][:2]), REF["text_embedding"][:2])
