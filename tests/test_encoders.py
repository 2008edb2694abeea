"""Encoders: Synchformer against the MMAudio fixture, CLIP through open_clip (tiny random configs),
safe weight loading and the visual/text encoder protocol."""

from __future__ import annotations

import copy
import json
import pickle
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file
from torch import nn

from dub.model.encoders.clip import (
    OPENAI_MEAN,
    OPENAI_STD,
    ClassTokenBlock,
    ClipEncoder,
    build_clip_model,
    default_input_size,
    load_clip_encoder,
    read_clip_state_dict,
    released_model_cfg,
    resize_uint8,
    tiny_model_cfg,
)
from dub.model.encoders.mmaudio import MMAudioEncoders, VisualTextEncoder, sync_pixels
from dub.model.encoders.synchformer import (
    Synchformer,
    SynchformerConfig,
    load_synchformer,
    num_segments,
    segment_frames,
    synchformer_features,
    tubelet_embed,
)
from tests.requirements import require, require_module

try:  # optional dependency (the `clip` extra); Synchformer tests must run without it
    import open_clip  # noqa: F401

    HAVE_OPEN_CLIP = True
except ImportError:
    HAVE_OPEN_CLIP = False
needs_open_clip = require(HAVE_OPEN_CLIP, reason="open_clip_torch is not installed (the test and clip extras)")


def assert_conforms(out: torch.Tensor, ref: torch.Tensor, name: str) -> None:
    """The MMAudio fixture README's acceptance bound: max|out - ref| <= 1e-4 max(1, max|ref|)."""
    assert out.shape == ref.shape, f"{name}: shape {tuple(out.shape)} != {tuple(ref.shape)}"
    err = (out - ref).abs().max().item()
    bound = 1e-4 * max(1.0, ref.abs().max().item())
    assert err <= bound, f"{name}: max|out-ref| = {err:.3g} > {bound:.3g}"


@pytest.fixture(scope="module")
def sync_fixture(fixtures_root: Path):
    root = fixtures_root / "synchformer"
    config = SynchformerConfig.from_fixture_json(root / "config.json")
    return config, root / "weights.safetensors", load_file(str(root / "io.safetensors"))


def tiny_synchformer(seed: int = 0) -> Synchformer:
    torch.manual_seed(seed)
    config = SynchformerConfig(embed_dim=32, depth=1, num_heads=2, crop_size=32, agg_num_heads=2, agg_ff_dim=64)
    return Synchformer(config).eval()


def tiny_clip(seed: int = 0) -> ClipEncoder:
    torch.manual_seed(seed)
    return ClipEncoder.from_config(tiny_model_cfg())


def random_frames(*shape: int, seed: int = 0) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, shape, dtype=torch.uint8, generator=gen)


# --- Synchformer -------------------------------------------------------------------------------


@pytest.mark.conformance
def test_conformance_synchformer(sync_fixture):
    config, weights, io = sync_fixture
    fixture_input = json.loads((weights.parent / "config.json").read_text())["input"]
    assert config.crop_size == fixture_input["H"] and config.segment_frames == fixture_input["segment_size"]

    model = load_synchformer(weights, config)
    segments = segment_frames(io["frames"], segment=config.segment_frames, stride=fixture_input["step_size"])
    assert_conforms(segments, io["segments"], "segments")
    with torch.no_grad():
        assert_conforms(model(io["segments"]), io["synchformer_out"], "synchformer_out")
    assert_conforms(synchformer_features(model, io["frames"]), io["features"], "features")
    # Chunked segments give the same features as one batch.
    assert_conforms(synchformer_features(model, io["frames"], batch_size=3), io["features"], "features (chunked)")


def test_released_config_size_and_geometry():
    config = SynchformerConfig.released()
    with torch.device("meta"):
        model = Synchformer(config)
        reference_agg = nn.TransformerEncoderLayer(768, 12, 3072, batch_first=True, norm_first=True)
    vfe = model.vfeat_extractor
    count = lambda module: sum(p.numel() for p in module.parameters())  # noqa: E731
    # The ViT-B/16 part (2-D patch embed, CLS, pos, 12 x (norm1, attn, norm2, mlp), norm) is exactly
    # timm's vit_base_patch16_224 without its head: 85,798,656 parameters.
    vit_b = (
        count(vfe.patch_embed)
        + vfe.cls_token.numel()
        + vfe.pos_embed.numel()
        + count(vfe.norm)
        + sum(count(b.norm1) + count(b.attn) + count(b.norm2) + count(b.mlp) for b in vfe.blocks)
    )
    assert vit_b == 85_798_656
    # Divided attention adds one time attention per block, the same size as the space attention.
    assert all(count(b.timeattn) == count(b.attn) for b in vfe.blocks)
    # The aggregation layer is one nn.TransformerEncoderLayer(768, 12, 3072) plus its CLS token.
    assert count(vfe.spatial_attn_agg) == count(reference_agg) + 768
    assert 110e6 < count(model) < 130e6

    assert vfe.pos_embed.shape == (1, 14 * 14 + 1, 768)
    segments = torch.empty(3, 1, 16, 3, 224, 224, device="meta")
    assert model(segments).shape == (3, 1, 8, 768)


def test_tubelet_embed_is_the_3d_convolution():
    """The patch embedding as one matrix product: the convolution's numbers (float64), tokens in
    (t, h, w) order, remainders dropped as the convolution drops them, any input layout."""
    torch.manual_seed(0)
    conv = nn.Conv3d(3, 24, kernel_size=(2, 16, 16), stride=(2, 16, 16)).double()
    for shape in [(2, 3, 16, 64, 48), (1, 3, 17, 70, 33)]:
        x = torch.randn(*shape, dtype=torch.float64)
        strided = torch.randn(shape[0], shape[2], shape[1], *shape[3:], dtype=torch.float64).transpose(1, 2)
        for frames in (x, strided):
            tokens, thw = tubelet_embed(frames, conv)
            expected = conv(frames)
            assert thw == tuple(expected.shape[2:])
            # float64 dot products of 3 x 2 x 16 x 16 = 1536 terms in two orders: independent
            # roundings ~sqrt(1536) u64 sum|w x| (sum|w x| ~ 20) ~ 1e-13 apart
            torch.testing.assert_close(tokens, expected.flatten(2).transpose(1, 2), rtol=1e-12, atol=1e-12)


def test_synchformer_rejects_frames_of_another_size(sync_fixture):
    config, weights, _ = sync_fixture
    model = load_synchformer(weights, config)
    wrong = torch.zeros(1, 1, config.segment_frames, 3, config.crop_size + 16, config.crop_size)
    with pytest.raises(ValueError, match="resize/crop"):
        model(wrong)
    with pytest.raises(ValueError, match="at least 16 frames"):
        segment_frames(torch.zeros(1, 15, 3, 8, 8))


@pytest.mark.conformance
def test_load_synchformer_reports_bad_checkpoints(sync_fixture, tmp_path):
    config, weights, io = sync_fixture
    state = load_file(str(weights))

    # Keys outside vfeat_extractor (the released file's audio branch, ...) are ignored.
    extra = dict(state, **{"afeat_extractor.anything": torch.zeros(3)})
    pth = tmp_path / "synchformer_state_dict.pth"
    torch.save(extra, pth)
    with torch.no_grad():
        out = load_synchformer(pth, config)(io["segments"][:1])
    assert_conforms(out, io["synchformer_out"][:1], "synchformer_out via .pth")

    missing = {k: v for k, v in state.items() if not k.endswith("temp_embed")}
    with pytest.raises(ValueError, match="missing keys.*temp_embed"):
        load_synchformer(missing, config)
    with pytest.raises(ValueError, match="unexpected keys.*blocks.9"):
        load_synchformer(dict(state, **{"vfeat_extractor.blocks.9.norm1.weight": torch.ones(1)}), config)
    with pytest.raises(ValueError, match="shape mismatches"):
        load_synchformer(state, SynchformerConfig.from_dict({**config.as_dict(), "crop_size": 64}))
    with pytest.raises(ValueError, match="no 'vfeat_extractor"):
        load_synchformer({"head.weight": torch.zeros(1)}, config)


class _RunsCode:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (Path.write_text, (self.marker, "code ran"))


def test_loading_refuses_a_pickle_that_runs_code(tmp_path):
    marker = tmp_path / "pwned.txt"
    evil = tmp_path / "evil.pth"
    with evil.open("wb") as handle:
        pickle.dump({"vfeat_extractor.cls_token": _RunsCode(marker)}, handle, protocol=2)
    torch.save({"vfeat_extractor.cls_token": _RunsCode(marker)}, tmp_path / "evil_torch.pth")

    for path in (evil, tmp_path / "evil_torch.pth"):
        with pytest.raises(ValueError, match="refusing to load"):
            load_synchformer(path)
        with pytest.raises(ValueError, match="refusing to load"):
            read_clip_state_dict(path)
    assert not marker.exists()


# --- CLIP ----------------------------------------------------------------------------------------


def test_resize_matches_torchvision():
    tv = require_module("torchvision.transforms.v2.functional")
    from torchvision.transforms import InterpolationMode

    images = random_frames(3, 3, 30, 45)
    for size in ((16, 16), (64, 40)):
        expected = tv.resize(images, list(size), interpolation=InterpolationMode.BICUBIC, antialias=True)
        # on the CPU both run ATen's native uint8 bicubic kernel (integer arithmetic): bit-identical
        assert torch.equal(resize_uint8(images, size), expected)

    frames = random_frames(1, 2, 30, 45, 3)
    expected = tv.center_crop(
        tv.resize(frames[0].permute(0, 3, 1, 2), [24], interpolation=InterpolationMode.BICUBIC), [24]
    )
    got = sync_pixels(frames, 24, torch.device("cpu"))[0]
    # the same uint8 pixels through the same formula: equal, within allclose's defaults a fortiori
    assert torch.allclose(got, (expected.float() / 255 - 0.5) / 0.5)


@needs_open_clip
def test_released_clip_architecture_takes_384px_frames():
    cfg = released_model_cfg()
    assert cfg["vision_cfg"]["image_size"] == 378 and cfg["quick_gelu"]
    assert default_input_size(cfg) == 384
    with torch.device("meta"):
        model = build_clip_model(cfg)
        assert model.encode_image(torch.empty(2, 3, 384, 384)).shape == (2, 1024)
    assert model.transformer.width == 1024 and model.context_length == 77


@needs_open_clip
@pytest.mark.parametrize("layers", [1, 3])
@pytest.mark.conformance
def test_clip_image_features_are_unit_norm_and_match_open_clip(layers):
    torch.manual_seed(0)
    model = build_clip_model(tiny_model_cfg(vision_layers=layers))
    reference = copy.deepcopy(model)  # open_clip's own tower, every token through the last block
    encoder = ClipEncoder(model)
    assert encoder.class_token_block and isinstance(model.visual.transformer.resblocks[-1], ClassTokenBlock)
    assert model.state_dict().keys() == reference.state_dict().keys()
    frames = random_frames(2, 3, 40, 50, 3)
    features = encoder.image_features(frames)
    assert features.shape == (2, 3, encoder.image_dim) and features.dtype == torch.float32
    # L2-normalised in float32: the norm rounds by ~sqrt(dim) u
    assert torch.allclose(features.norm(dim=-1), torch.ones(2, 3), atol=1e-5)
    assert not torch.allclose(features[0, 0], features[0, 1])

    # MMAudio's path: torchvision bicubic resize (no crop), [0, 1], OpenAI normalisation, encode_image.
    tv = require_module("torchvision.transforms.v2.functional")
    from torchvision.transforms import InterpolationMode

    size = encoder.input_size
    images = tv.resize(frames.flatten(0, 1).permute(0, 3, 1, 2), [size, size], InterpolationMode.BICUBIC)
    pixels = tv.normalize(images.float() / 255, list(OPENAI_MEAN), list(OPENAI_STD))
    with torch.no_grad():
        expected = reference.encode_image(pixels, normalize=True).view(2, 3, -1)
    # unit vectors, float32: our last block runs the class token alone, open_clip's all tokens,
    # so the GEMMs differ in shape and blocking (~sqrt(n) u per layer, a few layers): 1e-5 + 1e-5|x|
    assert torch.allclose(features, expected, atol=1e-5)
    # Batching the frames does not change them beyond float32 rounding of another GEMM blocking
    assert torch.allclose(encoder.image_features(frames, batch_size=4), features, atol=1e-6)


@needs_open_clip
@pytest.mark.conformance
def test_clip_text_features_are_per_token_hidden_states():
    encoder = tiny_clip()
    prompts = ["a dog barking in the rain", "glass breaking on a tiled floor"]
    features = encoder.text_features(prompts)
    assert features.shape == (2, 77, encoder.text_dim)
    assert torch.allclose(features.norm(dim=-1), torch.ones(2, 77), atol=1e-5)  # float32 L2 norm
    assert (features[0] - features[1]).abs().max() > 1e-2
    # a batch of one against a batch of two: the GEMMs may block otherwise (no bit equality
    # promised), float32 rounding of unit vectors, as for the image batching above
    assert torch.allclose(encoder.text_features(prompts[:1]), features[:1], atol=1e-6)

    # open_clip's pooled text embedding is the end-of-text token's hidden state, projected: the same
    # hidden states (before our L2 norm) must reproduce it.
    model = encoder.model
    tokens = encoder.tokenize(prompts)
    with torch.no_grad():
        hidden = model.ln_final(
            model.transformer(model.token_embedding(tokens) + model.positional_embedding, attn_mask=model.attn_mask)
        )
        pooled = model.encode_text(tokens, normalize=True)
    # the same modules in the same order (ours under the encoder's autocast context, a no-op for
    # float32 on the CPU): float32 rounding at most, unit vectors
    assert torch.allclose(torch.nn.functional.normalize(hidden, dim=-1), features, atol=1e-6)
    eot = hidden[torch.arange(2), tokens.argmax(dim=-1)]
    # open_clip projects inside encode_text with its own GEMM shapes: float32, unit vectors
    assert torch.allclose(torch.nn.functional.normalize(eot @ model.text_projection, dim=-1), pooled, atol=1e-5)
    with pytest.raises(TypeError):
        encoder.text_features("one string")


@needs_open_clip
def test_clip_weights_load_back_from_local_safetensors(tmp_path):
    cfg = tiny_model_cfg()
    original = tiny_clip(seed=1)
    folder = tmp_path / "tiny-clip"
    folder.mkdir()
    save_file(original.model.state_dict(), str(folder / "open_clip_model.safetensors"))
    (folder / "open_clip_config.json").write_text(json.dumps({"model_cfg": cfg}))

    frames = random_frames(1, 4, 32, 32, 3, seed=2)
    prompts = ["footsteps on gravel"]
    for loaded in (
        load_clip_encoder(folder),
        load_clip_encoder(folder / "open_clip_model.safetensors", model_cfg=cfg),
    ):
        # the file keeps every bit: same weights, same code, same inputs, bit-identical
        assert torch.equal(loaded.image_features(frames), original.image_features(frames))
        assert torch.equal(loaded.text_features(prompts), original.text_features(prompts))

    # A freshly initialised model differs, so the equality above came from the file.
    assert not torch.equal(tiny_clip(seed=3).image_features(frames), original.image_features(frames))
    with pytest.raises(ValueError, match="shape mismatches"):
        load_clip_encoder(folder / "open_clip_model.safetensors", model_cfg=tiny_model_cfg(text_width=48))
    with pytest.raises(FileNotFoundError, match="no CLIP weights"):
        load_clip_encoder(tmp_path)


# --- Encoder protocol ----------------------------------------------------------------------------


@needs_open_clip
@pytest.mark.parametrize("seconds", [8.0, 5.0])
def test_mmaudio_encoders_protocol_shapes(seconds):
    encoders = MMAudioEncoders(tiny_clip(), tiny_synchformer(), device="cpu")
    assert isinstance(encoders, VisualTextEncoder)
    assert (encoders.clip_fps, encoders.sync_fps) == (8, 25)

    clip_frames = int(encoders.clip_fps * seconds)
    sync_frames = int(encoders.sync_fps * seconds)
    segments = num_segments(sync_frames)
    if seconds == 8.0:
        assert (clip_frames, sync_frames, segments) == (64, 200, 24)

    size = encoders.sync_size
    clip_f = encoders.clip_features(random_frames(2, clip_frames, 36, 48, 3))
    sync_f = encoders.sync_features(random_frames(2, sync_frames, size, size, 3, seed=1))
    text_f = encoders.text_features(["a car passing by", ""])
    assert clip_f.shape == (2, clip_frames, encoders.clip_dim)
    assert sync_f.shape == (2, 8 * segments, encoders.sync_dim)
    assert text_f.shape == (2, encoders.text_seq_len, encoders.text_dim) == (2, 77, encoders.text_dim)
    for features in (clip_f, sync_f, text_f):
        assert torch.isfinite(features).all()


@needs_open_clip
def test_sync_features_resize_frames_of_another_size():
    encoders = MMAudioEncoders(tiny_clip(), tiny_synchformer(), device="cpu")
    size = encoders.sync_size
    frames = random_frames(1, 24, size + 8, size + 20, 3)
    features = encoders.sync_features(frames)
    # Same as resizing first: short side to `size`, centre crop, then [-1, 1].
    expected = synchformer_features(encoders.synchformer, sync_pixels(frames, size, torch.device("cpu")))
    assert features.shape == (1, 16, encoders.sync_dim)
    # sync_features runs exactly this (same pixels, same batches, same kernels): bit-identical
    assert torch.equal(features, expected)
    with pytest.raises(TypeError, match="uint8"):
        encoders.sync_features(frames.float())
