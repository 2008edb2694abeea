#!/usr/bin/env python3
"""Frame resize for the encoders, three ways, on random 720p uint8 frames (B, T, 720, 1280, 3):

    python3 scripts/resize_bench.py --device cuda --out resize.json
    python3 scripts/resize_bench.py --device cpu            # smoke test: B=1, T=4, fewer repeats

Workloads: "sync" (Synchformer: short side 224, centre crop 224; T=200) and "clip" (384 x 384,
T=64). Methods: (a) "interpolate" = dub.model.encoders.clip.resize_uint8 with DUB_TRITON_RESIZE=0,
i.e. as dub ran it before the Triton resize (float F.interpolate of the channels-last view on
CUDA; ATen's native uint8 kernel on CPU);
(b) "interpolate-nchw" = the same float F.interpolate on a contiguous NCHW float copy made
beforehand (the layout cost of (a) removed); (c) "separable" = dub.model.kernels.resize_triton
(Triton on CUDA, its torch reference on CPU). Median of --repeats after --warmup
(`dub.workflows.bench.time_call`: CUDA-synchronised wall time). Each row: median ms and, against (a), max |difference| and differing uint8 values;
row (d), untimed: (c)'s algorithm in plain torch (no FMAs) on the first 16 frames.
Also: each axis' weights against the ones the device's F.interpolate uses (read back from
one-hot rows), fused (FMA) and unfused filter arithmetic.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch
import torch.nn.functional as F

from dub.model.encoders.clip import SEPARABLE_RESIZE, center_crop, frames_to_images, short_side_size  # noqa: E402
from dub.model.kernels import resize_triton  # noqa: E402
from dub.workflows.bench import time_call  # noqa: E402
from dub.workflows.bench.encoders import CLIP_SIZE, REAL_SOURCE, SYNC_SIZE, clip_resize, random_frames, sync_resize  # noqa: E402


def without_triton(resize):
    """resize_uint8's F.interpolate path: the Triton resize switched off for the call."""

    def call(*args):
        with SEPARABLE_RESIZE.turned(False):
            return resize(*args)

    return call


def target_size(workload: str, height: int, width: int) -> tuple[int, int]:
    return short_side_size(height, width, SYNC_SIZE) if workload == "sync" else (CLIP_SIZE, CLIP_SIZE)


def finish(images: torch.Tensor, workload: str) -> torch.Tensor:
    return center_crop(images, SYNC_SIZE) if workload == "sync" else images


def weight_check(device: str, sizes: set[tuple[int, int]]) -> list[dict]:
    """Our weights against the device F.interpolate's, read back by resizing one-hot rows:
    mismatching values for each (fuse_center, fuse_filter) variant, (True, True) the default."""
    rows = []
    for in_size, out_size in sorted(sizes):
        eye = torch.eye(in_size, device=device).view(in_size, 1, 1, in_size)
        atens = F.interpolate(eye, size=(1, out_size), mode="bicubic", antialias=True).view(in_size, out_size).T.cpu()
        row = {"in": in_size, "out": out_size}
        for fuse_center in (True, False):
            for fuse_filter in (True, False):
                start, weights = resize_triton._axis_weights_cpu(in_size, out_size, fuse_center, fuse_filter)
                dense = torch.zeros(out_size, in_size)
                index = (start[:, None] + torch.arange(weights.shape[1])).clamp_max(in_size - 1).long()
                dense.scatter_add_(1, index, weights)
                key = f"center{'F' if fuse_center else 'R'}_filter{'F' if fuse_filter else 'R'}"
                row[key] = int((dense != atens).sum())
                if fuse_center and fuse_filter:
                    row["max_abs_diff"] = float((dense - atens).abs().max())
        rows.append(row)
    return rows


def interpolate_nchw(frames: torch.Tensor, size: tuple[int, int], workload: str):
    """(b): F.interpolate on a contiguous NCHW float copy made now (freed with the closure)."""
    nchw = frames_to_images(frames).float().contiguous()
    return lambda: finish(
        resize_triton.round_uint8(F.interpolate(nchw, size=size, mode="bicubic", antialias=True, align_corners=False)),
        workload,
    )


def bench_workload(
    workload: str, batch: int, count: int, device: str, warmup: int, repeats: int, temp_mb: list[float]
) -> list[dict]:
    width, height = REAL_SOURCE
    frames = random_frames(batch, count, width, height, device, seed=len(workload))
    size = target_size(workload, height, width)
    short = SYNC_SIZE if workload == "sync" else CLIP_SIZE
    current = without_triton(sync_resize if workload == "sync" else clip_resize)
    reference = current(frames, short)
    label = f"{workload} {batch}x{count} {height}x{width} -> {size[0]}x{size[1]}"
    rows = []

    def record(method: str, fn) -> None:
        ms, _peak = time_call(fn, repeats=repeats, warmup=warmup, device=device)
        out = fn()
        diff = (out.int() - reference.int()).abs()
        rows.append(
            {
                "workload": workload,
                "method": method,
                "median_ms": ms,
                "max_abs_diff": int(diff.max()),
                "differing": int((diff != 0).sum()),
                "values": diff.numel(),
                "channels_last": out.is_contiguous(memory_format=torch.channels_last),
            }
        )
        print(f"{label:34s} {method:24s} {ms:10.2f} {rows[-1]['max_abs_diff']:11d} {rows[-1]['differing']:9d}")

    record("(a) interpolate", lambda: current(frames, short))
    record("(b) interpolate-nchw", interpolate_nchw(frames, size, workload))
    if device.startswith("cuda"):
        torch.cuda.empty_cache()
    record(
        "(c) separable", lambda: finish(resize_triton.resize_uint8_separable(frames_to_images(frames), size), workload)
    )
    # the same weights summed without FMAs (torch's separate multiply and add), first 16 frames
    subset = frames_to_images(frames)[:16]
    plain = finish(resize_triton.round_uint8(resize_triton.resize_reference(subset, size)), workload)
    diff = (plain.int() - reference[:16].int()).abs()
    rows.append(
        {
            "workload": workload,
            "method": "(d) no-FMA torch, 16 fr",
            "max_abs_diff": int(diff.max()),
            "differing": int((diff != 0).sum()),
            "values": diff.numel(),
        }
    )
    print(f"{label:34s} {rows[-1]['method']:24s} {'':>10s} {rows[-1]['max_abs_diff']:11d} {rows[-1]['differing']:9d}")
    for mb in temp_mb if device.startswith("cuda") else []:
        record(
            f"(c) separable {mb:g} MiB",
            lambda mb=mb: finish(
                resize_triton.resize_triton(frames_to_images(frames), size, temp_bytes=int(mb * 2**20)), workload
            ),
        )
    return rows


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--batch", type=int, default=None, help="clips (default: 8 on CUDA, 1 on CPU)")
    p.add_argument("--sync-frames", type=int, default=None, help="frames per clip (default: 200 on CUDA, 4 on CPU)")
    p.add_argument("--clip-frames", type=int, default=None, help="frames per clip (default: 64 on CUDA, 4 on CPU)")
    p.add_argument("--warmup", type=int, default=None, help="default: 2 on CUDA, 1 on CPU")
    p.add_argument("--repeats", type=int, default=None, help="default: 10 on CUDA, 2 on CPU")
    p.add_argument(
        "--temp-mb", type=float, nargs="*", default=[], help="also time (c) with these pass-1 chunk sizes (MiB)"
    )
    p.add_argument("--out", type=Path, default=None, help="write the results as JSON here")
    args = p.parse_args()
    device = args.device
    cuda = device.startswith("cuda")
    batch = args.batch or (8 if cuda else 1)
    frames_per = {"sync": args.sync_frames or (200 if cuda else 4), "clip": args.clip_frames or (64 if cuda else 4)}
    warmup = args.warmup if args.warmup is not None else (2 if cuda else 1)
    repeats = args.repeats or (10 if cuda else 2)
    width, height = REAL_SOURCE
    name = torch.cuda.get_device_name(device) if cuda else "cpu"
    result = {
        "device": name,
        "torch": torch.__version__,
        "triton": getattr(resize_triton.triton, "__version__", None),
        "batch": batch,
        "frames": frames_per,
        "warmup": warmup,
        "repeats": repeats,
        "rows": [],
    }
    sizes = {(width, size[1]) for size in (target_size(w, height, width) for w in frames_per)}
    sizes |= {(height, size[0]) for size in (target_size(w, height, width) for w in frames_per)}
    result["weights"] = weight_check(device, sizes)
    print(f"device {name}; torch {torch.__version__}")
    for row in result["weights"]:  # F: fused into FMAs as nvcc does, R: rounded separately
        print(
            f"weights {row['in']:5d} -> {row['out']:4d} differing from F.interpolate's: "
            + ", ".join(f"{k} {v:g}" for k, v in row.items() if k not in ("in", "out"))
        )
    print(f"{'workload':34s} {'method':24s} {'median ms':>10s} {'max|d - a|':>11s} {'differ':>9s}")
    with torch.inference_mode():
        for workload, count in frames_per.items():
            result["rows"] += bench_workload(workload, batch, count, device, warmup, repeats, args.temp_mb)
            if cuda:
                torch.cuda.empty_cache()
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=2))
        print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
