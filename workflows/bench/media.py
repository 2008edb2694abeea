"""`dub bench media`: decode speed of the media module on this machine.

Writes a 720p 25 fps H.264 clip (`opts.duration_s`, 8 s by default) to a temp folder and
times `decode_window` over it at the CLIP rate (8 fps, 384x384), the Synchformer rate
(25 fps, 224x224 crop), both in one pass, and both with torch instead of swscale resizing.
The real-time factor is decode time / clip duration; the note gives frames/s.

The last row is the machine's decoding capacity, what end-to-end throughput needs from the
CPUs: both rates in one pass (as `dub generate`'s decode tasks) in one process per CPU but one
(the CPU `dub generate` leaves to a GPU replica), each decoding the clip `repeats` times;
clips/s = clips decoded / wall time. Frames stay in the workers (Ray's object store moves
them in a real run).
"""

from __future__ import annotations

import multiprocessing
import os
import tempfile
import time
from pathlib import Path

from dub.workflows.bench import BenchOptions, BenchRow, time_call

_SIZE = (1280, 720)
_FPS = 25.0


def run(opts: BenchOptions) -> list[BenchRow]:
    from dub.workflows.media.decode import CLIP_TARGET, SYNC_TARGET, decode_window, frame_count
    from dub.workflows.media.synth import write_synthetic_video

    duration = float(opts.duration_s)
    cases = [
        ("decode 8 fps 384x384 (CLIP)", [CLIP_TARGET], "swscale"),
        ("decode 25 fps 224x224 (Synchformer)", [SYNC_TARGET], "swscale"),
        ("decode both rates, one pass", [CLIP_TARGET, SYNC_TARGET], "swscale"),
        ("decode both rates, torch resize", [CLIP_TARGET, SYNC_TARGET], "torch"),
    ]
    rows = []
    with tempfile.TemporaryDirectory(prefix="dub-bench-media-") as tmp:
        clip = write_synthetic_video(Path(tmp) / "bench_720p.mp4", seconds=duration, fps=_FPS, size=_SIZE)
        source_frames = clip.num_frames
        for stage, targets, backend in cases:
            # torch resizing is ~50x slower on CPU: one timed pass is enough to show it
            repeats, warmup = (opts.repeats, opts.warmup) if backend == "swscale" else (1, 0)

            def call(targets=targets, backend=backend):
                return decode_window(clip.path, 0.0, duration, targets, backend=backend)

            median_ms, _ = time_call(call, repeats=repeats, warmup=warmup, device="cpu")
            out_frames = sum(frame_count(duration, t.fps) for t in targets)
            seconds = median_ms / 1000.0
            rows.append(
                BenchRow(
                    bench="media",
                    stage=stage,
                    median_ms=median_ms,
                    batch_size=1,
                    dtype="uint8",
                    device="cpu",
                    audio_s=duration,
                    note=(
                        f"{out_frames / seconds:.0f} out frames/s, {source_frames / seconds:.0f} source frames/s "
                        f"({source_frames} frames 1280x720 H.264, {backend})"
                    ),
                )
            )
        rows.append(_parallel_decode_row(clip.path, duration, source_frames, opts))
    return rows


def decode_workers(cpus: int | None = None) -> int:
    """Decoding processes beside one GPU replica: every CPU but the one its actor holds."""
    cpus = cpus or len(os.sched_getaffinity(0))
    return max(1, cpus - 1)


def _decode_clip_times(path: str, duration: float, times: int) -> int:
    from dub.workflows.media.decode import CLIP_TARGET, SYNC_TARGET, decode_window

    for _ in range(times):
        decode_window(path, 0.0, duration, [CLIP_TARGET, SYNC_TARGET], backend="swscale")
    return times


def _parallel_decode_row(path: str, duration: float, source_frames: int, opts: BenchOptions) -> BenchRow:
    workers = int(opts.extra.get("decode_workers") or decode_workers())
    per_worker = max(1, opts.repeats)
    # spawn: the bench process may hold CUDA and torch threads a fork would copy badly
    with multiprocessing.get_context("spawn").Pool(workers) as pool:
        pool.starmap(_decode_clip_times, [(path, duration, 1)] * workers)  # imports, first decode
        start = time.perf_counter()
        clips = sum(pool.starmap(_decode_clip_times, [(path, duration, per_worker)] * workers))
        wall_ms = (time.perf_counter() - start) * 1000.0
    return BenchRow(
        bench="media",
        stage=f"decode both rates, one pass, {workers} process{'es' if workers > 1 else ''} in parallel",
        median_ms=wall_ms,
        batch_size=clips,
        dtype="uint8",
        device="cpu",
        audio_s=duration * clips,
        note=(
            f"decoding capacity: {clips} clips ({source_frames} frames 1280x720 H.264 each) in {wall_ms / 1000:.1f} s "
            f"on {workers} process{'es' if workers > 1 else ''} ({len(os.sched_getaffinity(0))} CPUs; one left for a GPU replica), swscale"
        ),
    )
