"""Run in a subprocess with TRITON_INTERPRET=1 (the interpreter must be chosen before triton is
imported): BigVGAN's fused Triton activation on CPU tensors next to BigVGAN's own order of
operations, saved for tests/test_codec.py to compare.

    TRITON_INTERPRET=1 python -m tests.triton_helpers OUT.safetensors
"""

from __future__ import annotations

import dataclasses
import sys

import torch
from safetensors.torch import save_file

from model import bigvgan_triton
from model.bigvgan import AntiAliasedActivation, BigVGANConfig

# (channels, length, snake kind, input dtype): down to one sample, both kinds, bf16 input
CASES = [(3, 1, "snakebeta", torch.float32), (3, 2, "snake", torch.float32), (4, 7, "snakebeta", torch.float32),
         (5, 300, "snake", torch.float32), (2, 513, "snakebeta", torch.float32),
         (4, 260, "snakebeta", torch.bfloat16)]


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
