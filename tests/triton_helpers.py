"""Helpers for the Triton kernels' tests.

`hopper_resource_usage` builds a kernel for sm_90 offline. Run as a module in a subprocess with
TRITON_INTERPRET=1 (the interpreter must be chosen before triton is imported), this file saves
BigVGAN's fused Triton activation on CPU tensors next to BigVGAN's own order of operations, for
tests/test_codec.py to compare:

    TRITON_INTERPRET=1 python -m tests.triton_helpers OUT.safetensors
"""

from __future__ import annotations

import dataclasses
import re
import subprocess
import sys
from pathlib import Path

import torch
from safetensors.torch import save_file

from dub.model.codec.bigvgan import AntiAliasedActivation, BigVGANConfig
from dub.model.kernels import bigvgan_triton

# (channels, length, snake kind, input dtype): down to one sample, both kinds, bf16 input
CASES = [
    (3, 1, "snakebeta", torch.float32),
    (3, 2, "snake", torch.float32),
    (4, 7, "snakebeta", torch.float32),
    (5, 300, "snake", torch.float32),
    (2, 513, "snakebeta", torch.float32),
    (3, 1100, "snake", torch.float32),
    (4, 260, "snakebeta", torch.bfloat16),
]


def run_under_interpreter(module: str, workdir: Path) -> dict[str, torch.Tensor]:
    """Run `python -m module OUT` with TRITON_INTERPRET=1 (the interpreter must be chosen before
    triton is imported, hence a fresh process) and return the tensors it saved to OUT."""
    import os

    from safetensors.torch import load_file

    out = workdir / f"{module.rsplit('.', 1)[-1]}.safetensors"
    subprocess.run(
        [sys.executable, "-m", module, str(out)],
        cwd=Path(__file__).resolve().parents[1],
        env={**os.environ, "TRITON_INTERPRET": "1"},
        check=True,
        timeout=300,
    )
    return load_file(str(out))


def hopper_resource_usage(fn, signature: dict, constexprs: dict, workdir: Path, num_warps: int = 4) -> tuple[int, int]:
    """(registers, local memory bytes) of a Triton kernel built the way the GPU machine builds it
    (Triton -> PTX -> ptxas for sm_90, offline, no GPU needed; cuobjdump from Triton's package), so
    a kernel that cannot compile, or spills to local memory, fails in CI and not on a GPU."""
    import triton
    from triton.backends.compiler import GPUTarget

    source = triton.compiler.ASTSource(fn=fn, signature=signature, constexprs=constexprs)
    compiled = triton.compile(source, target=GPUTarget("cuda", 90, 32), options={"num_warps": num_warps})
    cubin = workdir / f"{fn.__name__}.cubin"
    cubin.write_bytes(compiled.asm["cubin"])
    cuobjdump = Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / "cuobjdump"
    usage = subprocess.run(
        [str(cuobjdump), "--dump-resource-usage", str(cubin)], capture_output=True, text=True, check=True, timeout=60
    ).stdout
    return tuple(int(re.search(rf"{field}:(\d+)", usage).group(1)) for field in ("REG", "LOCAL"))


def main(out: str) -> None:
    tensors = {}
    for n, (channels, length, kind, dtype) in enumerate(CASES):
        torch.manual_seed(n)
        act = AntiAliasedActivation(channels, dataclasses.replace(BigVGANConfig.mmaudio_16k(), activation=kind))
        with torch.no_grad():
            act.act.alpha.normal_(0.0, 0.5)
            if act.act.beta is not None:
                act.act.beta.normal_(0.0, 0.5)
            x = (3 * torch.randn(2, channels, length)).to(dtype)
            alpha, inv_beta = act.act.frequency_and_inverse_beta()
            up, down = act.phase_taps.unbind(0)
            tensors[f"{n}.kernel"] = bigvgan_triton.anti_aliased_snake(x, alpha, inv_beta, up, down)
            tensors[f"{n}.reference"] = act.reference_forward(x.float())
    save_file(tensors, out)


if __name__ == "__main__":
    main(sys.argv[1])
