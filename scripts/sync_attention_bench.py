#!/usr/bin/env python3
"""Synchformer's divided attention, SDPA form against the Triton kernel, and whole Synchformer:

    python3 scripts/sync_attention_bench.py --out OUT        # CUDA: a batch of 8 clips (192 segments)
    TRITON_INTERPRET=1 python3 scripts/sync_attention_bench.py --device cpu   # smoke test, tiny sizes

Attention rows: random qkv (segments, 1 + 8 x 196, 3 x 768), bf16 on CUDA, along time and along
space: `dub.model.encoders.synchformer.divided_attention` (SDPA with the CLS key/value concatenated) and
`dub.model.kernels.synchformer_triton.grouped_attention` (+ SDPA for the CLS query) in several launch
configurations (query tile, key tile, warps); each with its median ms, the GB/s of the minimal
traffic (qkv read once, output written once) and its max |error| relative to the peak of the
same attention in float32 (no TF32). Model rows: the released Synchformer (random weights, bf16
autocast as `dub` runs it) over 24 segments per clip, eager, kernel on and off
(DUB_SYNCHFORMER_TRITON), with the feature error against float32. Embedding rows: the tubelet
embedding as cuDNN's 3-D convolution (as before) and as `tubelet_embed`'s one GEMM.

On an H100/H200 this takes ~20 s (assumed: a few hundred ms per timed call at most).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from dub.errors import short_error
from dub.model.encoders.synchformer import (  # noqa: E402
    GROUPED_ATTENTION,
    Synchformer,
    SynchformerConfig,
    divided_attention,
    divided_attention_triton,
    synchformer_features,
    tubelet_embed,
)
from dub.model.kernels import synchformer_triton  # noqa: E402
from dub.model.kernels.switch import peak_relative_error
from dub.workflows.bench import time_call
from dub.workflows.bench.generate import true_float32  # noqa: E402

# (query tile, key tile, warps); the first is the default (synchformer_triton's constants)
CONFIGS = [
    (synchformer_triton.BLOCK_M, synchformer_triton.BLOCK_N, synchformer_triton.NUM_WARPS),
    (64, 64, 4),
    (64, 32, 8),
    (32, 32, 4),
    (128, 32, 8),
]


def attention_rows(args, device: str, dtype: torch.dtype) -> list[dict]:
    generator = torch.Generator(device="cpu").manual_seed(0)
    dim = args.heads * args.head_dim
    qkv = torch.randn(args.segments, 1 + args.frames * args.patches, 3 * dim, generator=generator).to(device, dtype)
    moved = minimal_bytes(qkv)
    rows = []
    for along_time in (True, False):
        kind = "time" if along_time else "space"
        shape = dict(frames=args.frames, patches=args.patches, along_time=along_time)
        with true_float32():
            exact = divided_attention(qkv.float(), args.heads, **shape)
        forms = [("SDPA form", lambda shape=shape: divided_attention(qkv, args.heads, **shape))]
        if synchformer_triton.triton is not None:
            for block_m, block_n, warps in CONFIGS:

                def kernel(block_m=block_m, block_n=block_n, warps=warps, shape=shape):
                    return synchformer_triton.grouped_attention(
                        qkv, args.heads, block_m=block_m, block_n=block_n, num_warps=warps, **shape
                    )

                forms.append((f"Triton {block_m}x{block_n} w{warps} (groups only)", kernel))
            forms.append(
                (
                    "Triton default + CLS query (SDPA)",
                    lambda shape=shape: divided_attention_triton(qkv, args.heads, **shape),
                )
            )
        for name, fn in forms:
            row = {"attention": kind, "form": name, "shape": list(qkv.shape), "dtype": str(dtype)[6:]}
            try:
                ms, peak = time_call(fn, repeats=args.repeats, warmup=args.warmup, device=device)
                out = fn()
                part = (slice(None), slice(1, None)) if "groups only" in name else (slice(None),)
                row.update(
                    median_ms=ms,
                    gb_per_s=moved / ms / 1e6,
                    peak_mb=peak,
                    rel_err_vs_float32=peak_relative_error(out[part], exact[part]),
                )
            except Exception as exc:  # noqa: BLE001 - a configuration that cannot run is a row, not the end
                row["error"] = short_error(exc)
            rows.append(row)
            print_row(f"{kind} attention", name, row)
    return rows


def minimal_bytes(qkv: torch.Tensor) -> float:
    """The traffic no attention can avoid: q, k and v read once, the output (a third of qkv's
    width) written once. The rate column divides this by the time."""
    return qkv.numel() * qkv.element_size() * (1 + 1 / 3)


def embed_rows(args, device: str, dtype: torch.dtype) -> list[dict]:
    """The tubelet (patch) embedding: cuDNN's 3-D convolution + transpose, as before, against
    `tubelet_embed`'s one matrix product, on the segments' (N, C, T, H, W) view."""
    config = SynchformerConfig.released() if not args.tiny else SynchformerConfig(embed_dim=args.heads * args.head_dim)
    conv = torch.nn.Conv3d(3, config.embed_dim, kernel_size=(2, 16, 16), stride=(2, 16, 16)).to(device)
    segments = torch.rand(args.segments, 16, 3, config.crop_size, config.crop_size, device=device).transpose(1, 2)
    with true_float32():
        exact = tubelet_embed(segments, conv)[0]
    cuda = device.startswith("cuda")
    forms = [
        ("Conv3d + transpose", lambda: conv(segments).flatten(2).transpose(1, 2)),
        ("tubelet_embed (one GEMM)", lambda: tubelet_embed(segments, conv)[0]),
    ]
    rows = []
    for name, fn in forms:

        def run(fn=fn):
            with torch.autocast("cuda", dtype=torch.bfloat16, enabled=cuda):
                return fn()

        row = {"embed": f"{tuple(segments.shape)} -> {config.embed_dim}", "form": name, "dtype": str(dtype)[6:]}
        try:
            ms, peak = time_call(run, repeats=args.repeats, warmup=args.warmup, device=device)
            row.update(median_ms=ms, peak_mb=peak, rel_err_vs_float32=peak_relative_error(run(), exact))
        except Exception as exc:  # noqa: BLE001
            row["error"] = short_error(exc)
        rows.append(row)
        print_row("tubelet embedding", name, row)
    return rows


def model_rows(args, device: str) -> list[dict]:
    cuda = device.startswith("cuda")
    config = (
        SynchformerConfig.released()
        if not args.tiny
        else SynchformerConfig(
            embed_dim=args.heads * args.head_dim, depth=1, num_heads=args.heads, agg_num_heads=args.heads, agg_ff_dim=64
        )
    )
    torch.manual_seed(1)
    model = Synchformer(config).eval().to(device)
    frames = torch.rand(args.clips, args.clip_frames, 3, config.crop_size, config.crop_size, device=device) * 2 - 1
    with true_float32():
        exact = synchformer_features(model, frames).float()
    pixels = frames.to(torch.bfloat16) if cuda else frames
    rows = []
    for on in (False, True):
        name = "Triton kernel" if on else "SDPA form (DUB_SYNCHFORMER_TRITON=0)"

        def run(on=on):
            with GROUPED_ATTENTION.turned(on), torch.autocast("cuda", dtype=torch.bfloat16, enabled=cuda):
                return synchformer_features(model, pixels)

        row = {"model": f"Synchformer, {args.clips} clips x {(args.clip_frames - 16) // 8 + 1} segments", "form": name}
        try:
            ms, peak = time_call(run, repeats=args.repeats, warmup=args.warmup, device=device)
            row.update(
                median_ms=ms,
                peak_mb=peak,
                rel_err_vs_float32=peak_relative_error(run(), exact),
                kernel_error=GROUPED_ATTENTION.error,
            )
        except Exception as exc:  # noqa: BLE001
            row["error"] = short_error(exc)
        rows.append(row)
        print_row("Synchformer", name, row)
    return rows


def print_row(what: str, form: str, row: dict) -> None:
    if "error" in row:
        print(f"{what:18s} {form:42s} ERROR {row['error']}")
        return
    rate = f"{row['gb_per_s']:8.0f}" if "gb_per_s" in row else f"{'':8s}"
    print(f"{what:18s} {form:42s} {row['median_ms']:10.2f} {rate} {row['rel_err_vs_float32']:10.2e}")


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--tiny", action="store_true", help="small sizes (default on CPU)")
    p.add_argument("--repeats", type=int, default=None, help="default: 10 on CUDA, 1 on CPU")
    p.add_argument("--warmup", type=int, default=None, help="default: 2 on CUDA, 0 on CPU")
    p.add_argument("--out", type=Path, default=None, help="write sync_attention.json into this folder")
    args = p.parse_args(argv)
    cuda = args.device.startswith("cuda")
    args.tiny = args.tiny or not cuda
    args.repeats = args.repeats or (10 if cuda else 1)
    args.warmup = args.warmup if args.warmup is not None else (2 if cuda else 0)
    # released: 8 clips of 8 s = 192 segments of 8 frames x 196 patches, 12 heads of 64
    args.heads, args.head_dim, args.frames = (2, 16, 8) if args.tiny else (12, 64, 8)
    args.patches, args.segments = (196, 2) if args.tiny else (196, 192)
    args.clips, args.clip_frames = (1, 24) if args.tiny else (8, 200)
    dtype = torch.bfloat16 if cuda else torch.float32
    name = torch.cuda.get_device_name(args.device) if cuda else "cpu"
    print(f"device {name}; torch {torch.__version__}; triton {getattr(synchformer_triton.triton, '__version__', None)}")
    print(f"{'':18s} {'form':42s} {'median ms':>10s} {'GB/s':>8s} {'vs fp32':>10s}")
    result = {"device": name, "torch": torch.__version__, "repeats": args.repeats, "warmup": args.warmup, "rows": []}
    with torch.inference_mode():
        result["rows"] += attention_rows(args, args.device, dtype)
        result["rows"] += embed_rows(args, args.device, dtype)
        result["rows"] += model_rows(args, args.device)
    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "sync_attention.json").write_text(json.dumps(result, indent=2))
        print(f"wrote {args.out / 'sync_attention.json'}")
    return result


if __name__ == "__main__":
    main()
