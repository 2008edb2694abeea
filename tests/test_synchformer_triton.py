"""Synchformer's Triton divided attention (model/kernels/synchformer_triton.py) against the SDPA form.

Run as a module with TRITON_INTERPRET=1 (chosen before triton is imported) it writes the
kernel path's and the reference's results for CASES:

    TRITON_INTERPRET=1 python -m tests.test_synchformer_triton OUT.safetensors
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

from dub.model.encoders import synchformer
from dub.model.kernels import synchformer_triton
from tests.triton_helpers import hopper_resource_usage, run_under_interpreter

PROJECT_ROOT = Path(__file__).resolve().parents[1]

# (segments, heads, head_dim, frames, patches): the released geometry's 8 x 196 tokens (space
# groups longer than a tile, tiles that straddle two groups), a head_dim that is not a power of
# two, groups that do not divide the tile, one patch, the released head_dim 64. float32 only:
# Triton 3.8's interpreter multiplies bf16 `tl.dot` operands wrongly (a 16 x 16 product off by
# ~1e10), so bf16 is checked where it runs, on the GPU (scripts/gpu_bench.py's correctness part).
CASES = [(2, 2, 16, 8, 196), (1, 3, 24, 8, 9), (2, 1, 16, 3, 70), (1, 2, 16, 8, 1), (2, 2, 64, 8, 25)]
TILES = [(64, 64), (32, 16)]  # (query tile, key tile) besides the default


def case_qkv(i: int) -> torch.Tensor:
    segments, heads, head_dim, frames, patches = CASES[i]
    generator = torch.Generator().manual_seed(i)
    qkv = torch.randn(segments, 1 + frames * patches, 3 * heads * head_dim, generator=generator)
    return 2 * qkv  # scores of a few units: a softmax that is not flat


def main(out: str) -> None:
    from safetensors.torch import save_file

    tensors = {}
    for i, (_, heads, _, frames, patches) in enumerate(CASES):
        qkv = case_qkv(i)
        for along_time in (True, False):
            shape = dict(frames=frames, patches=patches, along_time=along_time)
            tag = f"{i}.{'time' if along_time else 'space'}"
            tensors[f"{tag}.kernel"] = synchformer.divided_attention_triton(qkv, heads, **shape)
            tensors[f"{tag}.reference"] = synchformer.divided_attention(qkv.double(), heads, **shape)
            # the other launch configurations scripts/sync_attention_bench.py times
            for block_m, block_n in TILES:
                result = synchformer_triton.grouped_attention(qkv, heads, block_m=block_m, block_n=block_n, **shape)
                tensors[f"{tag}.{block_m}x{block_n}"] = result[:, 1:].contiguous()
    # the kernel as torch.compile (Inductor) sees it: one opaque op with a fake shape function
    compiled = torch.compile(lambda qkv: synchformer._divided_attention_kernel_op(qkv, 3, 8, 9, True) * 2)
    tensors["compiled"] = compiled(case_qkv(1))
    tensors["compiled.kernel_ran"] = torch.tensor(synchformer.GROUPED_ATTENTION.error is None)
    save_file(tensors, out)


def test_triton_divided_attention_matches_sdpa_form_under_interpreter(tmp_path: Path) -> None:
    """Same attention, other summation order: within 1e-5 of the float64 reference (relative
    to its peak). The kernel's float32 rounding: dot products of <= 64 terms (q k), an exp, and
    sums of <= 197 terms (p v, online-softmax rescaling) give worst-case ~(64 + 197 + a few) u
    ~ 1.6e-5 of the peak and, as independent roundings, ~sqrt of that count, ~1e-6."""
    got = run_under_interpreter("tests.test_synchformer_triton", tmp_path)
    for i, (segments, heads, head_dim, frames, patches) in enumerate(CASES):
        for kind in ("time", "space"):
            kernel, reference = got[f"{i}.{kind}.kernel"], got[f"{i}.{kind}.reference"]
            assert kernel.shape == (segments, 1 + frames * patches, heads * head_dim)
            assert kernel.dtype == torch.float32
            error = ((kernel.double() - reference).abs().max() / reference.abs().max()).item()
            assert error < 1e-5, (i, kind, error)
            for block_m, block_n in TILES:
                other = got[f"{i}.{kind}.{block_m}x{block_n}"].double()
                error = ((other - reference[:, 1:]).abs().max() / reference.abs().max()).item()
                assert error < 1e-5, (i, kind, block_m, block_n, error)
    assert got["compiled.kernel_ran"].item()
    # the same kernel on the same input, times 2 (exact): bit-identical
    torch.testing.assert_close(got["compiled"], 2 * got["1.time.kernel"], rtol=0, atol=0)


def test_divided_attention_is_the_released_blocks_attention() -> None:
    """The reference form is what DividedAttention runs off CUDA: its output through `proj`."""
    torch.manual_seed(0)
    attention = synchformer.DividedAttention(32, 4, qkv_bias=True).eval()
    x = torch.randn(2, 1 + 8 * 5, 32)
    with torch.no_grad():
        for along_time in (True, False):
            shape = dict(frames=8, patches=5, along_time=along_time)
            expected = attention.proj(synchformer.divided_attention(attention.qkv(x), 4, **shape))
            # off CUDA the module runs exactly these calls: bit-identical
            torch.testing.assert_close(attention(x, **shape), expected, rtol=0, atol=0)


def test_a_failing_kernel_falls_back_to_the_sdpa_form_once(monkeypatch) -> None:
    """Here (no GPU, no interpreter) launching the kernel fails: the op warns once, switches the
    kernel off and returns the SDPA form's result, also on the calls after."""
    if synchformer_triton.triton is None:
        pytest.skip("triton is not installed")
    monkeypatch.setattr(synchformer.GROUPED_ATTENTION, "error", None)  # restored after the test
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    qkv = case_qkv(1)
    expected = synchformer.divided_attention(qkv, 3, frames=8, patches=9, along_time=True)
    with pytest.warns(RuntimeWarning, match="divided attention failed") as caught:
        for _ in range(3):
            got = synchformer._divided_attention_kernel_op(qkv, 3, 8, 9, True)
            torch.testing.assert_close(got, expected, rtol=0, atol=0)  # the fallback is this very call
    assert len(caught) == 1 and synchformer.GROUPED_ATTENTION.error is not None


def test_synchformer_takes_the_triton_kernel_on_cuda_unless_switched_off(monkeypatch) -> None:
    assert synchformer.GROUPED_ATTENTION.usable() == (synchformer_triton.triton is not None)
    monkeypatch.setenv("DUB_SYNCHFORMER_TRITON", "0")
    assert not synchformer.GROUPED_ATTENTION.usable()


@pytest.mark.parametrize("dtype", ["bf16", "fp32"])
def test_triton_divided_attention_builds_for_hopper_without_spills(dtype: str, tmp_path: Path) -> None:
    pointer = "*bf16" if dtype == "bf16" else "*fp32"
    signature = {
        "qkv_ptr": pointer,
        "out_ptr": pointer,
        "L": "i32",
        "H": "i32",
        "S": "i32",
        "GS": "i32",
        "GROUP_STRIDE": "i32",
        "ELEM_STRIDE": "i32",
        "scale": "fp32",
        "HEAD_DIM": "constexpr",
        "BLOCK_D": "constexpr",
        "BLOCK_M": "constexpr",
        "BLOCK_N": "constexpr",
        "IEEE": "constexpr",
    }
    constexprs = {
        "HEAD_DIM": 64,
        "BLOCK_D": 64,
        "BLOCK_M": synchformer_triton.BLOCK_M,
        "BLOCK_N": synchformer_triton.BLOCK_N,
        "IEEE": dtype == "fp32",
    }
    registers, local = hopper_resource_usage(
        synchformer_triton._grouped_attention_kernel,
        signature,
        constexprs,
        tmp_path,
        num_warps=synchformer_triton.NUM_WARPS,
    )
    # bf16 (what runs on GPUs, under autocast): no spills and at least two blocks per SM (64 K
    # registers each), as in the configuration measured fastest on an H200
    threads = 32 * synchformer_triton.NUM_WARPS
    assert local == 0 and (registers * threads <= 32768 or dtype == "fp32"), (registers, threads, local)


if __name__ == "__main__":
    main(sys.argv[1])


def test_sync_attention_bench_runs_on_cpu(tmp_path: Path) -> None:
    """scripts/sync_attention_bench.py (the GPU comparison of the two forms) at tiny sizes on CPU:
    SDPA rows timed and exact against float32; kernel rows are rows (errors without a GPU)."""
    import json

    from tests.script_helpers import load_script

    bench = load_script("sync_attention_bench")
    bench.main(["--device", "cpu", "--out", str(tmp_path)])
    rows = json.loads((tmp_path / "sync_attention.json").read_text())["rows"]
    sdpa = [row for row in rows if row["form"] == "SDPA form"]
    assert [row["attention"] for row in sdpa] == ["time", "space"]
    # On the CPU the SDPA form is its own float32 reference (true_float32 only turns TF32 off, a
    # CUDA matter): the same computation, error 0; < 1e-6 (17u) still reads "float32 exact".
    # Kernel rows, when they run, carry the kernel's float32 rounding (the interpreter test's
    # 1e-5); the embedding's one GEMM against Conv3d sums 1536 terms in another order (~sqrt(1536)
    # u ~ 2e-6 of the peak); the model rows fall back to the SDPA form here.
    assert all(row["median_ms"] > 0 and row["rel_err_vs_float32"] < 1e-6 for row in sdpa)
    # the rate counts each byte of the minimal traffic once: qkv read (3 widths), output written (1)
    for row in sdpa:
        segments, tokens, width = row["shape"]
        minimal = segments * tokens * (width + width // 3) * 4  # float32 on the CPU
        assert row["gb_per_s"] * row["median_ms"] * 1e6 == pytest.approx(minimal, rel=1e-12)
    kernels = [row for row in rows if "attention" in row and row["form"].startswith("Triton")]
    assert len(kernels) == 2 * (len(bench.CONFIGS) + 1)
    assert all("error" in row or row["rel_err_vs_float32"] < 1e-5 for row in kernels)
    embed = [row for row in rows if "embed" in row]
    assert len(embed) == 2 and all(row["median_ms"] > 0 and row["rel_err_vs_float32"] < 1e-5 for row in embed)
    model = [row for row in rows if "model" in row]
    assert len(model) == 2 and all(row["median_ms"] > 0 and row["rel_err_vs_float32"] < 1e-5 for row in model)
