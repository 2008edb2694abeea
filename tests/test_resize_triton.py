"""dub.model.kernels.resize_triton: the two-pass torch reference against F.interpolate (CPU float), the
Triton kernel under Triton's interpreter against that reference, and an offline sm_90 build.

Run as a module with TRITON_INTERPRET=1 (chosen before triton is imported) it writes the
kernel's and the reference's results for INTERPRETER_CASES:

    TRITON_INTERPRET=1 python -m tests.test_resize_triton OUT.safetensors
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from dub.model.kernels import resize_triton
from dub.model.kernels.resize_triton import resize_reference, resize_uint8_separable, round_uint8
from tests.triton_helpers import hopper_resource_usage, run_under_interpreter

PROJECT_ROOT = Path(__file__).resolve().parents[1]

# ((H, W), (oh, ow), N): MMAudio's two 720p resizes, an upscale, odd sizes, the identity
REFERENCE_CASES = [
    ((720, 1280), (224, 398), 2),
    ((720, 1280), (384, 384), 2),
    ((40, 50), (70, 90), 3),
    ((37, 53), (23, 71), 3),
    ((61, 29), (80, 19), 2),
    ((31, 45), (31, 45), 2),
]
# ((H, W), (oh, ow), N, temp_bytes, channels-last input): small temp_bytes forces chunks
INTERPRETER_CASES = [
    ((48, 64), (15, 20), 2, 1 << 30, True),
    ((40, 50), (70, 90), 2, 1 << 30, True),
    ((37, 53), (23, 71), 3, 1, True),
    ((29, 61), (19, 80), 2, 40_000, False),
    ((16, 24), (16, 24), 1, 1 << 30, True),
]


def random_images(n: int, height: int, width: int, seed: int, channels_last: bool = True) -> torch.Tensor:
    """uint8 (N, 3, H, W); channels-last memory like `frames_to_images` unless told otherwise."""
    gen = torch.Generator().manual_seed(seed)
    frames = torch.randint(0, 256, (n, height, width, 3), generator=gen, dtype=torch.uint8)
    images = frames.permute(0, 3, 1, 2)
    return images if channels_last else images.contiguous()


@pytest.mark.parametrize("src, size, n", REFERENCE_CASES)
def test_two_pass_reference_matches_interpolate(src, size, n) -> None:
    """Against CPU F.interpolate: with ATen CPU's weights the float results agree to float32
    rounding (ATen's CPU kernels sum in other orders: vectorised, some steps in float64); with
    the CUDA weights (the default) to within the weights' last bits (up to 3.4e-3 at 720p).
    After clamp and round a last-bit difference can flip a value by 1: seen, CPU weights 0 to 1
    values per case, CUDA weights up to 132 of 884736 (0.015%)."""
    images = random_images(n, *src, seed=sum(src))
    torch_float = F.interpolate(images.float(), size=size, mode="bicubic", antialias=True, align_corners=False)
    # on [0, 255]: float32 sums of ~10 taps, ~u 255 per term (1.5e-4 at worst), 1e-3; the CUDA
    # weights differ in their last bits as said above (3.4e-3 seen), 1e-2
    for fuse_center, tol in ((False, 1e-3), (True, 1e-2)):
        ours = resize_reference(images, size, fuse_center=fuse_center)
        assert ours.shape == torch_float.shape
        assert (ours - torch_float).abs().max().item() < tol
        a, b = round_uint8(ours).int(), round_uint8(torch_float).int()
        assert (a - b).abs().max().item() <= 1
        assert (a != b).sum().item() <= 1e-3 * a.numel()


@pytest.mark.skipif(
    torch.backends.cpu.get_cpu_capability() == "DEFAULT",
    reason="ATen's CPU build without FMA rounds the filter's products separately",
)
@pytest.mark.parametrize(
    "in_size, out_size", [(1280, 398), (720, 224), (1280, 384), (720, 384), (50, 90), (64, 20), (37, 23)]
)
def test_axis_weights_equal_atens_cpu_weights(in_size: int, out_size: int) -> None:
    """The weight formula with the centre rounded as ATen's CPU code does (the CUDA default fuses
    it into FMAs) against ATen's own CPU weights, read back by resizing one-hot rows (H = 1:
    the vertical weight is 1). (Elsewhere ATen's CPU code forms the filter argument in float64,
    a rare last-bit difference: 1 weight at 1080 -> 224.)"""
    eye = torch.eye(in_size).view(in_size, 1, 1, in_size)
    atens = F.interpolate(eye, size=(1, out_size), mode="bicubic", antialias=True).view(in_size, out_size).T
    start, weights = resize_triton._axis_weights_cpu(in_size, out_size, fuse_center=False)
    ours = torch.zeros(out_size, in_size)
    index = (start[:, None] + torch.arange(weights.shape[1])).clamp_max(in_size - 1).long()
    ours.scatter_add_(1, index, weights)  # clamped taps carry weight 0
    assert torch.equal(ours, atens)  # the same formula, the same roundings (see the docstring)


def test_separable_entry_point_on_cpu() -> None:
    images = random_images(2, 37, 53, seed=3)
    out = resize_uint8_separable(images, (23, 71))
    assert out.dtype == torch.uint8 and out.shape == (2, 3, 23, 71)
    assert out.is_contiguous(memory_format=torch.channels_last)
    assert torch.equal(out, round_uint8(resize_reference(images, (23, 71))))  # off CUDA it runs exactly this
    assert resize_uint8_separable(images, (37, 53)) is images  # like resize_uint8
    with pytest.raises(TypeError):
        resize_uint8_separable(images.float(), (10, 10))


def test_resize_uint8_takes_the_triton_resize_on_cuda_unless_switched_off(monkeypatch) -> None:
    """dub.model.encoders.clip.resize_uint8 runs the kernel on CUDA (where it equals F.interpolate's
    result: scripts/resize_bench.py on an H200); DUB_TRITON_RESIZE=0 keeps F.interpolate."""
    from dub.model.encoders import clip as clip_encoder

    assert clip_encoder.SEPARABLE_RESIZE.usable() == (resize_triton.triton is not None)
    monkeypatch.setenv("DUB_TRITON_RESIZE", "0")
    assert not clip_encoder.SEPARABLE_RESIZE.usable()


def main(out: str) -> None:
    from safetensors.torch import save_file

    tensors = {}
    for i, (src, size, n, temp_bytes, channels_last) in enumerate(INTERPRETER_CASES):
        images = random_images(n, *src, seed=i, channels_last=channels_last)
        tensors[f"{i}.kernel"] = resize_triton.resize_triton(images, size, temp_bytes=temp_bytes).contiguous()
        tensors[f"{i}.reference"] = round_uint8(resize_reference(images, size)).contiguous()
    save_file(tensors, out)


def test_triton_kernel_equals_reference_under_interpreter(tmp_path: Path) -> None:
    """Same weights and summation order; Triton's interpreter runs tl.fma as a float32 multiply
    then add, which is the reference's arithmetic, so the results must be identical."""
    got = run_under_interpreter("tests.test_resize_triton", tmp_path)
    for i, (_, size, n, _, _) in enumerate(INTERPRETER_CASES):
        kernel, reference = got[f"{i}.kernel"], got[f"{i}.reference"]
        assert kernel.shape == (n, 3, *size) and kernel.dtype == torch.uint8
        assert torch.equal(kernel, reference), f"case {i}: {(kernel != reference).sum().item()} pixels differ"


@pytest.mark.parametrize("final", [False, True], ids=["horizontal", "vertical"])
def test_triton_kernels_build_for_hopper_without_spills(final: bool, tmp_path: Path) -> None:
    signature = {
        "in_ptr": "*fp32" if final else "*u8",
        "out_ptr": "*u8" if final else "*fp32",
        "start_ptr": "*i32",
        "w_ptr": "*fp32",
        "total": "i32",
        "OE": "i32",
        "E": "i32",
        "L": "i32",
        "taps": "i32",
        "FINAL": "constexpr",
        "BLOCK": "constexpr",
    }
    registers, local = hopper_resource_usage(
        resize_triton._resample_axis_kernel, signature, {"FINAL": final, "BLOCK": resize_triton.BLOCK}, tmp_path
    )
    assert local == 0 and registers <= 128, (registers, local)


if __name__ == "__main__":
    main(sys.argv[1])
