#!/usr/bin/env python3
"""BigVGAN's anti-aliased activation, form by form: one activation at the 16 kHz vocoder's
first and last stage sizes, and the whole real-size vocoder (random weights).

    python3 scripts/vocoder_bench.py --device cpu --seconds 2 --threads 2 [--compile]
    python3 scripts/vocoder_bench.py --device cuda --seconds 8 --batch 1 --compile

Forms: "reference" = BigVGAN's upsample -> snake -> downsample; "polyphase" = grouped convs;
"auto" = what dub runs (the Triton kernel on CUDA, the grouped convs elsewhere); "compiled" =
torch.compile (Inductor fuses the shifted-sum form). Each row: median ms and max |form - reference|.
"""

from __future__ import annotations

import argparse
import time

import torch

from dub.model.codec.bigvgan import AntiAliasedActivation, BigVGAN, BigVGANConfig, activation_form, activation_status  # noqa: E402
from dub.workflows.bench import time_call  # noqa: E402


def median_ms(fn, device: str, repeats: int) -> float:
    return time_call(fn, repeats=repeats, warmup=1, device=device)[0]


def forms(module: torch.nn.Module, x: torch.Tensor, device: str, repeats: int, compile: bool) -> list[tuple]:
    rows = []
    with torch.no_grad():
        with activation_form(module, "reference"):
            reference = module(x).float()
        for form in ("reference", "polyphase", "auto"):
            with activation_form(module, form):
                out = module(x).float()
                rows.append((form, median_ms(lambda: module(x), device, repeats), (out - reference).abs().max().item()))
        if compile:
            start = time.perf_counter()
            compiled = torch.compile(module, dynamic=False)
            out = compiled(x).float()
            build = time.perf_counter() - start
            rows.append(
                (
                    f"compiled (build {build:.0f} s)",
                    median_ms(lambda: compiled(x), device, repeats),
                    (out - reference).abs().max().item(),
                )
            )
    return rows


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--seconds", type=float, default=8.0, help="audio per clip (16 kHz, hop 256)")
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    p.add_argument("--compile", action="store_true", help="also time torch.compile (slow to build on a CPU)")
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    config = BigVGANConfig.mmaudio_16k()
    frames = int(round(args.seconds * config.sampling_rate / config.hop_size))
    print(f"device {args.device}; eager activations: {activation_status(args.device)}")
    print(f"{'what':58s} {'form':26s} {'median ms':>10s} {'max|d - ref|':>13s}")
    for channels, length in ((768, 4 * frames), (24, config.hop_size * frames)):
        act = AntiAliasedActivation(channels, config).to(args.device)
        x = 3 * torch.randn(args.batch, channels, length, device=args.device)
        for form, ms, err in forms(act, x, args.device, args.repeats, args.compile):
            print(f"{f'one activation, {args.batch} x {channels} x {length}':58s} {form:26s} {ms:10.2f} {err:13.2e}")
    vocoder = BigVGAN(config).eval().to(args.device)
    mel = torch.randn(args.batch, config.num_mels, frames, device=args.device)
    for form, ms, err in forms(vocoder, mel, args.device, args.repeats, args.compile):
        print(f"{f'BigVGAN 16 kHz, {args.batch} x {args.seconds:g} s, float32':58s} {form:26s} {ms:10.2f} {err:13.2e}")


if __name__ == "__main__":
    main()
