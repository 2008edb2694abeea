"""The visual encoders' throughput switches: FP8 linear layers (`--fp8`) against float32 on the
CPU's torch._scaled_mm, which conversions happen, the features on a real decoded clip,
`dub generate --fp8` refusing a bundle without those encoders; and the compiled towers
(`--compile`) running at one batch shape."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn as nn
from typer.testing import CliRunner

from dub.cli import app
from dub.model.encoders.mmaudio import FP8_TOWERS
from dub.model.kernels.fp8 import (
    FP8_RECIPE,
    Fp8Linear,
    ProjectedAttention,
    bias_in_scaled_mm,
    convert_linears_to_fp8,
    fp8_supported,
)
from dub.workflows.bench.encoders import build_encoders
from dub.workflows.media.decode import FrameTarget, decode_window

SAMPLE = Path(__file__).resolve().parents[1] / "dub" / "samples" / "green_gem_bounce.mp4"


def _relative(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a.float() - b.float()).norm() / b.float().norm()).item()


@pytest.mark.parametrize("bias", [True, False])
def test_fp8_linear_is_the_linear_to_e4m3_precision(bias: bool) -> None:
    torch.manual_seed(0)
    linear = nn.Linear(64, 96, bias=bias)
    fp8 = Fp8Linear(linear)
    x = torch.randn(3, 7, 64) * torch.logspace(-2, 2, 64)  # rows and columns of very different scale
    with torch.no_grad():
        want, got = linear(x), fp8(x)
        assert got.shape == want.shape and got.dtype == torch.float32
        # e4m3 keeps 3 mantissa bits: ~2-4 % relative error per product sum, never float32's 1e-7
        assert 1e-3 < _relative(got, want) < 0.06
        assert fp8.weight_fp8.dtype == torch.float8_e4m3fn and fp8.weight_scale.shape == (1, 96)
        assert fp8(x.to(torch.bfloat16)).dtype == torch.bfloat16
    assert fp8_supported("cpu") == (True, "")


def test_bias_in_the_matmul_epilogue_is_the_bias_added_after() -> None:
    """Where `torch._scaled_mm` takes the bias (the CPU does; tried once per device) it is added
    to the float32 accumulator: in float32 the same numbers as adding it after the product."""
    torch.manual_seed(1)
    fused = Fp8Linear(nn.Linear(32, 48))
    assert fused.fused_bias and bias_in_scaled_mm("cpu")
    added = Fp8Linear(nn.Linear(32, 48))
    added.load_state_dict(fused.state_dict())
    added.fused_bias = False
    x = torch.randn(5, 32)
    # the same float32 accumulator, scaled, plus the bias: one rounding either way, bit-identical
    with torch.no_grad():
        torch.testing.assert_close(fused(x), added(x), rtol=0, atol=0)


def test_conversion_rewrites_attention_and_skips_unaligned_layers() -> None:
    model = nn.Sequential(
        nn.Linear(32, 64),
        nn.GELU(),
        nn.Linear(64, 10),  # 10 outputs: not a multiple of 16
        nn.MultiheadAttention(32, 4, batch_first=True),
        nn.MultiheadAttention(32, 4, batch_first=False),
    )  # (L, B, D) layout: left alone
    assert convert_linears_to_fp8(model) == 3
    assert isinstance(model[0], Fp8Linear) and type(model[2]) is nn.Linear
    assert isinstance(model[3], ProjectedAttention)
    assert isinstance(model[3].in_proj, Fp8Linear) and isinstance(model[3].out_proj, Fp8Linear)
    assert type(model[4]) is nn.MultiheadAttention
    assert convert_linears_to_fp8(model) == 0  # idempotent


def test_projected_attention_is_multihead_attention() -> None:
    """The rewrite that lets attention's projections be FP8 computes nn.MultiheadAttention
    exactly when its projections stay float: self-attention, a mask, cross-attention, and one
    query token over all tokens (the vision tower's class-token block)."""
    torch.manual_seed(1)
    mha = nn.MultiheadAttention(48, 4, batch_first=True).eval()
    rewritten = ProjectedAttention(mha)
    x, y = torch.randn(2, 9, 48), torch.randn(2, 9, 48)
    mask = torch.zeros(9, 9)
    mask[:, -3:] = float("-inf")
    with torch.no_grad():
        for q, kv, m in ((x, x, None), (x, x, mask), (x, y, None), (x[:, :1], x, None)):
            want = mha(q, kv, kv, need_weights=False, attn_mask=m)[0]
            got, weights = rewritten(q, kv, kv, need_weights=False, attn_mask=m)
            assert weights is None
            # F.linear + SDPA against MHA's fused path: other kernels, float32 rounding of 48-term
            # dot products and a 9-key softmax on values of order 1 (rtol ~170u)
            torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)


def _tiny_encoders_and_sample_frames():
    """Tiny random CLIP + Synchformer (seed 0) and 2 s of a real clip at both of their rates."""
    torch.manual_seed(0)
    enc = build_encoders("tiny", "cpu").encoders
    decoded = decode_window(SAMPLE, 0.0, 2.0, [FrameTarget(8, 384, "resize"), FrameTarget(25, 224, "crop")])
    clip_frames, sync_frames = (torch.from_numpy(f).unsqueeze(0) for f in decoded.frames)
    return enc, clip_frames, sync_frames


def test_encoders_in_fp8_give_nearly_the_same_features_on_a_real_clip() -> None:
    enc, clip_frames, sync_frames = _tiny_encoders_and_sample_frames()
    with torch.inference_mode():
        clip_ref, sync_ref = enc.clip_features(clip_frames), enc.sync_features(sync_frames)
        note = enc.use_fp8(FP8_TOWERS)
        clip_fp8, sync_fp8 = enc.clip_features(clip_frames), enc.sync_features(sync_frames)
    # CLIP: attention in/out projections + 2 MLP layers; the one-block Synchformer: 9 layers
    assert note.startswith("13 linear layers")
    for name, got, want in (("clip", clip_fp8, clip_ref), ("sync", sync_fp8, sync_ref)):
        assert got.shape == want.shape
        cosine = torch.nn.functional.cosine_similarity(got.flatten(1), want.flatten(1)).min().item()
        # e4m3 rounds each operand by up to 2^-4; with row-wise scales the errors average out in
        # the dot products (a few % per layer, test_fp8_linear_is_the_linear_to_e4m3_precision),
        # and 13 such layers keep the features' direction: cosine > 0.99
        assert cosine > 0.99, (name, cosine)
        assert _relative(got, want) > 1e-4, f"{name}: FP8 changed nothing, so it did not run"


def test_generate_fp8_refuses_the_demo_bundle(tmp_path: Path) -> None:
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a bell rings\n")
    result = CliRunner().invoke(app, ["generate", "--prompts", str(prompts), "-o", str(tmp_path / "out"), "--fp8"])
    assert result.exit_code != 0
    assert "--fp8 runs CLIP's vision tower in FP8; the 'demo' bundle does not use it" in " ".join(
        result.output.split()
    )  # rich wraps long lines


def test_fp8_changes_the_run_identity_and_compile_does_not() -> None:
    from dub.workflows.generate.config import GenerateConfig

    plain = GenerateConfig(out_dir="out", manifest="m.parquet")
    assert "fp8" not in plain.identity("w")  # runs made before the flag existed keep their hash
    assert GenerateConfig(out_dir="out", manifest="m.parquet", compile=True).config_hash("w") == plain.config_hash("w")
    fp8 = GenerateConfig(out_dir="out", manifest="m.parquet", fp8=True)
    assert fp8.config_hash("w") != plain.config_hash("w")
    assert fp8.identity("w")["fp8"] == FP8_RECIPE  # a new recipe (e.g. towers, accumulation) is a new run


def test_compiled_towers_see_one_batch_shape_and_keep_the_features() -> None:
    """`dub generate --compile` runs the towers in batches of exactly --batch-size windows, so a
    short batch reuses the compiled code: 3 windows at 2 per call (the last padded) give the
    uncompiled features, and every tower call saw 2 windows."""
    from dub.model.kernels.graphs import in_fixed_batches

    seen = []
    out = in_fixed_batches(lambda f: seen.append(f.shape[0]) or f * 2, torch.arange(5.0).view(5, 1), 2)
    assert seen == [2, 2, 2] and out.flatten().tolist() == [0.0, 2.0, 4.0, 6.0, 8.0]

    torch.manual_seed(0)
    enc = build_encoders("tiny", "cpu").encoders
    decoded = decode_window(SAMPLE, 0.0, 2.0, [FrameTarget(8, 384, "resize"), FrameTarget(25, 224, "crop")])
    clip_frames, sync_frames = (torch.from_numpy(f).unsqueeze(0).repeat(3, 1, 1, 1, 1) for f in decoded.frames)
    clip_frames[1] = 255 - clip_frames[1]  # windows that differ
    sync_frames[2] = sync_frames[2].flip(1)
    with torch.inference_mode():
        want = enc.clip_features(clip_frames), enc.sync_features(sync_frames)
        assert "2 windows per call" in enc.compile_towers(windows=2, backend="eager")
        got = enc.clip_features(clip_frames), enc.sync_features(sync_frames)
    for g, w in zip(got, want):
        assert g.shape == w.shape
        # the same modules (backend "eager") on batches of 2 instead of 3: other GEMM shapes,
        # float32 rounding (~sqrt(n) u per layer) on features of order 1
        torch.testing.assert_close(g, w, rtol=1e-5, atol=1e-5)
    assert enc.clip.model.visual.failed is None and enc.synchformer.vfeat_extractor.failed is None


def test_fp8_for_clip_only_leaves_synchformer_in_its_own_precision() -> None:
    """`use_fp8()`, what `dub generate --fp8` runs (CLIP only): CLIP's features change (FP8
    ran), Synchformer's are bit for bit the same."""
    enc, clip_frames, sync_frames = _tiny_encoders_and_sample_frames()
    with torch.inference_mode():
        clip_ref, sync_ref = enc.clip_features(clip_frames), enc.sync_features(sync_frames)
        note = enc.use_fp8()
        clip_fp8, sync_same = enc.clip_features(clip_frames), enc.sync_features(sync_frames)
    assert note == "4 linear layers of CLIP's vision tower in FP8 (e4m3, row-wise scales)"
    assert _relative(clip_fp8, clip_ref) > 1e-4
    # Synchformer untouched, the same input, the same kernels: bit-identical
    torch.testing.assert_close(sync_same, sync_ref, rtol=0, atol=0)
    with pytest.raises(ValueError, match="non-empty subset"):
        enc.use_fp8(("clip", "vae"))
