"""KernelSwitch's self-check: a Triton kernel that computes wrong numbers is switched off.

Run as a module with TRITON_INTERPRET=1 it runs the three kernels' self-checks on CPU tensors
(float32; the interpreter cannot multiply bf16 `tl.dot` operands, see
tests/test_synchformer_triton.py) and saves their verdicts:

    TRITON_INTERPRET=1 python -m tests.test_kernel_switch OUT.safetensors
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from dub.model.codec import bigvgan
from dub.model.encoders import clip as clip_encoder
from dub.model.encoders import synchformer
from dub.model.kernels import resize_triton
from dub.model.kernels.switch import KernelSwitch
from tests.triton_helpers import run_under_interpreter

CPU = torch.device("cpu")
CHECKS = {
    "synchformer": synchformer._check_divided_attention,
    "bigvgan": bigvgan._check_fused_activation,
    "resize": clip_encoder._check_separable_resize,
}


def main(out: str) -> None:
    from safetensors.torch import save_file

    verdicts = {name: check(CPU, torch.float32) for name, check in CHECKS.items()}
    save_file(
        {
            name: torch.tensor(list((verdict or "").encode()) or [0], dtype=torch.uint8)
            for name, verdict in verdicts.items()
        },
        out,
    )


def test_the_triton_kernels_pass_their_self_checks_under_interpreter(tmp_path: Path) -> None:
    got = run_under_interpreter("tests.test_kernel_switch", tmp_path)
    for name in CHECKS:
        assert got[name].tolist() == [0], (name, bytes(got[name].tolist()).decode())


# The kernels replaced by torch computations whose numbers are known: a kernel that is right up to
# bf16 rounding passes, one off by a few percent (a wrong tile, a wrong scale) does not.


def _attention_in(dtype: torch.dtype, gain: float):
    def kernel(qkv, heads, **shape):
        return (synchformer.divided_attention(qkv.to(dtype), heads, **shape) * gain).to(qkv.dtype)

    return kernel


def _activation_in(dtype: torch.dtype, gain: float):
    def kernel(self, x):
        return (self._grouped_conv_forward(x.to(dtype).float()) * gain).to(x.dtype)

    return kernel


def _resize_with(antialias: bool):
    def kernel(images, size):
        out = F.interpolate(images.float(), size=size, mode="bicubic", antialias=antialias, align_corners=False)
        return out.clamp(0, 255).round().to(torch.uint8)

    return kernel


@pytest.mark.parametrize(
    "dtype, gain, passes",
    [
        (torch.bfloat16, 1.0, True),
        (torch.float32, 1.0, True),
        (torch.bfloat16, 1.05, False),
        (torch.float32, 1.001, False),
    ],
)
def test_attention_and_activation_checks_tell_rounding_from_wrong_numbers(monkeypatch, dtype, gain, passes) -> None:
    monkeypatch.setattr(synchformer, "divided_attention_triton", _attention_in(dtype, gain))
    monkeypatch.setattr(bigvgan.AntiAliasedActivation, "_fused_kernel_forward", _activation_in(dtype, gain))
    for check in (synchformer._check_divided_attention, bigvgan._check_fused_activation):
        verdict = check(CPU, dtype)
        assert (verdict is None) == passes, (check.__name__, verdict)


def test_resize_check_flags_a_resize_without_antialiasing(monkeypatch) -> None:
    monkeypatch.setattr(resize_triton, "resize_triton", _resize_with(antialias=True))
    assert clip_encoder._check_separable_resize(CPU, torch.uint8) is None
    monkeypatch.setattr(resize_triton, "resize_triton", _resize_with(antialias=False))
    assert "differ" in clip_encoder._check_separable_resize(CPU, torch.uint8)


def test_the_switch_checks_once_per_device_and_dtype_and_turns_off_when_a_check_disagrees(monkeypatch) -> None:
    calls: list[tuple[torch.device, torch.dtype]] = []
    verdicts = {torch.float32: None, torch.bfloat16: "max error 5e-02"}

    def check(device: torch.device, dtype: torch.dtype) -> str | None:
        calls.append((device, dtype))
        return verdicts[dtype]

    switch = KernelSwitch(
        "a kernel", "DUB_TEST_KERNEL", "dub.model.kernels.synchformer_triton", "the reference", self_check=check
    )
    x = torch.zeros(2)
    assert switch.usable_for(x) and switch.usable_for(x)
    assert calls == [(CPU, torch.float32)]
    with pytest.warns(RuntimeWarning, match="self-check on cpu \\(bfloat16\\) disagreed: max error 5e-02"):
        assert not switch.usable_for(x.bfloat16())
    assert not switch.usable_for(x)  # off for the rest of the process, every dtype
    assert "disagreed" in switch.describe("cuda", "kernel", "reference")
    assert len(calls) == 2

    monkeypatch.setenv("DUB_TEST_KERNEL", "0")
    fresh = KernelSwitch(
        "a kernel", "DUB_TEST_KERNEL", "dub.model.kernels.synchformer_triton", "the reference", self_check=check
    )
    assert not fresh.usable_for(x) and len(calls) == 2  # switched off: not even checked


def test_the_check_runs_without_the_callers_autocast() -> None:
    """A caller's bf16 autocast (Synchformer runs under one) must not lower the float32
    reference the check compares against."""
    seen = []

    def check(device: torch.device, dtype: torch.dtype) -> str | None:
        seen.append((torch.ones(2, 2) @ torch.ones(2, 2)).dtype)
        return None

    switch = KernelSwitch(
        "a kernel", "DUB_TEST_KERNEL", "dub.model.kernels.synchformer_triton", "the reference", self_check=check
    )
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert (torch.ones(2, 2) @ torch.ones(2, 2)).dtype == torch.bfloat16
        assert switch.usable_for(torch.zeros(1))
    assert seen == [torch.float32]


def test_a_check_that_raises_switches_the_kernel_off() -> None:
    def check(device: torch.device, dtype: torch.dtype) -> str | None:
        raise RuntimeError("no kernel image for this GPU")

    switch = KernelSwitch(
        "a kernel", "DUB_TEST_KERNEL", "dub.model.kernels.synchformer_triton", "the reference", self_check=check
    )
    with pytest.warns(RuntimeWarning, match="no kernel image"):
        assert not switch.usable_for(torch.zeros(1))
    assert switch.error == "RuntimeError: no kernel image for this GPU"


if __name__ == "__main__":
    main(sys.argv[1])
