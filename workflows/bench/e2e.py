"""`dub bench e2e`: the throughput path, measured two ways (each row says which).

1. "model-side" (every machine, no Ray or PyAV needed): decoded uint8 source frames of
   `--batch-size` different clips (720p for real presets, 640 x 360 for tiny) go through the
   whole model path as one batch: pinned host -> device upload on a copy stream (double
   buffered, overlapping the previous batch), resize on the device, CLIP + Synchformer + CLIP
   text, one MeanFlow step with CFG (CUDA graph), VAE + vocoder (CUDA graph), audio back to
   the host. Per-stage times come from CUDA events (wall clock on the CPU); the total row gives
   clips/s and the GPU busy fraction: compute-stream stage time / wall time, and the union of
   the kernels' intervals from torch.profiler / wall time. Video decoding is NOT in these rows
   (see `dub bench media` for its CPU cost). Two more rows give `dub generate`'s replica: the
   pageable upload of windows decoded at the target sizes (CUDA), and the total without the
   on-device resize plus that upload, composed from the measured rows.
2. "ray" (where Ray and PyAV import, e.g. the CPU dev machine): a true end-to-end
   `dub.workflows.generate.run.run_generate` over synthetic H.264 clips with the demo stack and a
   random tiny checkpoint: decode tasks, model actor, remux to mp4. Reports clips/s of the
   whole run and the per-window stage times from its report.

opts.extra: compile / compiled_only (torch.compile CLIP's vision tower and Synchformer in the
model-side pipeline; compiled_only also skips the Ray run), fp8 (linear layers in FP8, real
presets only: True as `dub generate --fp8`, CLIP's only; "all": Synchformer's too), deadline,
on_row (see workflows/bench/generate.py).
"""

from __future__ import annotations

import statistics
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path

from dub.errors import short_error
from dub.workflows.bench import BenchOptions, BenchRow, resolve_device, time_call
from dub.workflows.bench.encoders import (
    CLIP_FPS,
    CLIP_SIZE,
    PROMPT,
    REAL_SOURCE,
    SYNC_FPS,
    SYNC_SIZE,
    TINY_SOURCE,
    build_encoders,
    clip_resize,
    random_frames,
    sync_resize,
)
from dub.workflows.bench.generate import (
    ONE_STEP_GUIDANCE,
    TINY_PRESETS,
    StageRunner,
    build_stack,
    dtype_name,
    eager_decode,
    free_cuda_cache,
    top_kernels,
)

MODEL_SIDE = "model-side"
THROUGHPUT_TARGET = 6.0  # clips of 8 s per second per H200, end to end (the target)


class StageClock:
    """Per-stage times of one pipeline iteration: CUDA events on the current stream (read after
    a sync), or wall clock on the CPU."""

    def __init__(self, cuda: bool) -> None:
        self.cuda = cuda
        self.marks: list[tuple[str, object, object]] = []

    @contextmanager
    def stage(self, name: str, stream=None):
        import torch

        if self.cuda:
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record(stream)
            yield
            end.record(stream)
        else:
            start = time.perf_counter()
            yield
            end = time.perf_counter()
        self.marks.append((name, start, end))

    def times_ms(self) -> dict[str, float]:
        out: dict[str, float] = {}
        for name, start, end in self.marks:
            ms = start.elapsed_time(end) if self.cuda else (end - start) * 1000.0
            out[name] = out.get(name, 0.0) + ms
        return out


class ModelSidePipeline:
    """Batches of `batch` clips from decoded uint8 frames to waveforms on the host."""

    COPY = "upload frames, pinned host -> device (copy stream)"
    STAGES = (
        "resize on device (CLIP 384, Synchformer 224 crop)",
        "CLIP image features",
        "Synchformer features",
        "CLIP text features",
        "network 1 step + CFG",
        "audio decode",
        "audio to host",
    )

    def __init__(
        self, preset: str, device: str, batch: int, duration_s: float, compile: bool = False, fp8: bool | str = False
    ) -> None:
        import torch

        from dub.model.encoders.synchformer import attention_status
        from dub.model.flow.guidance import Guidance
        from dub.model.kernels.graphs import CudaGraphCall
        from dub.model.runtime.fast import OneStepGraph

        self.device, self.batch, self.cuda = device, batch, device.startswith("cuda")
        self.tiny = preset in TINY_PRESETS
        self.stack = build_stack(preset, device, duration_s)
        if self.tiny:
            from dub.model.demo import DemoEncoders

            self.encoders = DemoEncoders().to(device)  # the demo bundle: hand-made features, Griffin-Lim
            self.what = "demo bundle stack (demo encoders, tiny network, Griffin-Lim codec)"
        else:
            encoders = build_encoders(preset, device)
            if encoders.encoders is None:
                raise RuntimeError(f"CLIP cannot be built: {encoders.missing}; carry open_clip_torch as a wheel")
            self.encoders = encoders.encoders
            self.what = f"{preset}: ViT-H/14 CLIP + Synchformer + MF-MJT + VAE + BigVGAN, random weights"
            self.what += "; " + attention_status(device)
            if fp8:  # True: as `dub generate --fp8` (CLIP only); "all": Synchformer too, for comparison
                from dub.model.encoders.mmaudio import FP8_TOWERS

                self.what += "; " + (self.encoders.use_fp8(FP8_TOWERS) if fp8 == "all" else self.encoders.use_fp8())
            if compile:  # the warm-up batch compiles
                self.encoders.compile_towers()
                self.what += "; CLIP vision tower + Synchformer torch.compile'd"
        cfg = self.stack.network.config
        self.n_clip, self.n_sync = cfg.clip_seq_len, int(round(duration_s * SYNC_FPS))
        self.width, self.height = TINY_SOURCE if self.tiny else REAL_SOURCE
        self.clip_index = torch.tensor(
            [min(self.n_sync - 1, -(-k * SYNC_FPS // CLIP_FPS)) for k in range(self.n_clip)], device=device
        )
        one_clip = random_frames(1, self.n_sync, self.width, self.height, device)[0]
        self.host = one_clip.cpu().pin_memory() if self.cuda else one_clip
        # two device buffers: the next batch uploads while this one computes
        self.buffers = [
            torch.empty((batch, *self.host.shape), dtype=torch.uint8, device=device)
            for _ in range(2 if self.cuda else 1)
        ]
        self.prompts = [f"{PROMPT} ({i})" for i in range(batch)]
        gen = torch.Generator(device="cpu").manual_seed(0)
        self.noise = torch.randn(batch, cfg.latent_seq_len, cfg.latent_dim, generator=gen).to(device)
        net = self.stack.network
        self.step = OneStepGraph(net, Guidance(**ONE_STEP_GUIDANCE), batch)
        if self.tiny:
            self.decode = self.stack.demo_codec.decode
        else:
            vae, vocoder = self.stack.vae, self.stack.vocoder
            example = torch.zeros(batch, cfg.latent_seq_len, cfg.latent_dim, device=device)
            self.decode = CudaGraphCall(lambda z: eager_decode(vae, vocoder, z), [example])
        self.count = 0  # batches processed: picks the buffer in turn
        if self.cuda:
            self.copy_stream = torch.cuda.Stream(device)
            self.uploaded = [torch.cuda.Event() for _ in self.buffers]
            self.consumed = [torch.cuda.Event() for _ in self.buffers]

    def upload(self, slot: int, clock: StageClock) -> None:
        import torch

        buffer = self.buffers[slot]
        if not self.cuda:
            for j in range(self.batch):
                buffer[j].copy_(self.host)
            return
        self.copy_stream.wait_event(self.consumed[slot])
        with torch.cuda.stream(self.copy_stream), clock.stage(self.COPY, self.copy_stream):
            for j in range(self.batch):  # one copy per clip, as separate decoded videos arrive
                buffer[j].copy_(self.host, non_blocking=True)
        self.uploaded[slot].record(self.copy_stream)

    def iteration(self, clock: StageClock):
        """Process the uploaded batch while the next one uploads; returns host waveforms."""
        import torch

        slot = self.count % len(self.buffers)
        self.count += 1
        if self.cuda:
            self.upload(1 - slot, clock)  # prefetch the next batch
            torch.cuda.current_stream().wait_event(self.uploaded[slot])
        frames = self.buffers[slot]
        b = self.batch
        with clock.stage(self.STAGES[0]):
            clip = clip_resize(frames[:, self.clip_index], CLIP_SIZE)
            clip = clip.permute(0, 2, 3, 1).reshape(b, self.n_clip, CLIP_SIZE, CLIP_SIZE, 3)
            sync = sync_resize(frames, SYNC_SIZE).permute(0, 2, 3, 1).reshape(b, self.n_sync, SYNC_SIZE, SYNC_SIZE, 3)
        if self.cuda:
            self.consumed[slot].record()
        with clock.stage(self.STAGES[1]), _bf16(self.cuda):
            clip_f = self.encoders.clip_features(clip).float()
        with clock.stage(self.STAGES[2]), _bf16(self.cuda):
            sync_f = self.encoders.sync_features(sync).float()
        with clock.stage(self.STAGES[3]), _bf16(self.cuda):
            text_f = self.encoders.text_features(self.prompts).float()
        with clock.stage(self.STAGES[4]):
            latents = self.step(self.noise, clip_f, sync_f, text_f)
        with clock.stage(self.STAGES[5]):
            wav = self.decode(latents)
        with clock.stage(self.STAGES[6]):
            out = wav.cpu()  # blocks until this batch is done: the pipeline's real end
        return out

    def prime(self) -> None:
        if self.cuda:
            import torch

            self.upload(0, StageClock(True))
            torch.cuda.synchronize()
        else:
            self.upload(0, StageClock(False))


@contextmanager
def _bf16(cuda: bool):
    import torch

    with torch.autocast("cuda", dtype=torch.bfloat16, enabled=cuda):
        yield


def run(opts: BenchOptions) -> list[BenchRow]:
    device = resolve_device(opts.device)
    runner = StageRunner("e2e", opts, device, dtype_name(device))
    _model_side(runner, opts, device)
    free_cuda_cache(device)
    if not opts.extra.get("compiled_only"):
        _ray_run(runner, opts)
    return runner.rows


def _model_side(runner: StageRunner, opts: BenchOptions, device: str) -> None:
    import torch

    b = max(1, opts.batch_size)
    cuda = device.startswith("cuda")
    if cuda:
        torch.backends.cudnn.benchmark = True
    compiled = bool(opts.extra.get("compile") or opts.extra.get("compiled_only")) and opts.preset not in TINY_PRESETS
    fp8 = (opts.extra.get("fp8") or False) if opts.preset not in TINY_PRESETS else False
    side = (
        MODEL_SIDE
        + (", FP8 CLIP + Synchformer" if fp8 == "all" else ", FP8" if fp8 else "")
        + (", compiled encoders" if compiled else "")
    )
    total_stage = f"{side}: total per batch (pre-decoded frames, no video decode)"
    pipe = runner.attempt(
        total_stage, b, lambda: ModelSidePipeline(opts.preset, device, b, opts.duration_s, compile=compiled, fp8=fp8)
    )
    if pipe is None:
        return
    audio_s = b * opts.duration_s
    iterations = max(1, opts.repeats)
    with torch.inference_mode():
        try:
            pipe.prime()
            for _ in range(max(1, opts.warmup)):
                pipe.iteration(StageClock(cuda))
            clocks, walls = [], []
            for _ in range(iterations):
                if not runner.has_time():
                    break
                clock = StageClock(cuda)
                start = time.perf_counter()
                pipe.iteration(clock)
                walls.append((time.perf_counter() - start) * 1000.0)
                clocks.append(clock)
            if cuda:
                torch.cuda.synchronize()
        except Exception as exc:  # noqa: BLE001
            runner.fail(total_stage, b, exc)
            return
        if not walls:
            runner.skip(total_stage, b, "out of the time budget")
            return
        per_stage = [c.times_ms() for c in clocks]
        names = [ModelSidePipeline.COPY] + list(ModelSidePipeline.STAGES) if cuda else list(ModelSidePipeline.STAGES)
        compute_ms = []
        for per in per_stage:
            compute_ms.append(sum(v for k, v in per.items() if k != ModelSidePipeline.COPY))
        for name in names:
            values = [p[name] for p in per_stage if name in p]
            if not values:
                continue
            timer = "CUDA events" if cuda else "wall clock"
            note = f"{side}; {pipe.what}; {timer}"
            if name == ModelSidePipeline.COPY:
                note += f"; {b} x {pipe.host.numel() / 2**20:.0f} MB, overlaps the previous batch's compute"
            runner.add(
                BenchRow(
                    bench="e2e",
                    stage=f"{side}: {name}",
                    median_ms=statistics.median(values),
                    batch_size=b,
                    dtype="uint8" if "frames" in name or "resize" in name else runner.dtype,
                    device=device,
                    audio_s=audio_s,
                    note=note,
                )
            )
        wall = statistics.median(walls)
        busy = statistics.median(compute_ms) / wall if cuda else None
        note = f"{side}; {pipe.what}; {len(walls)} batches"
        if cuda:
            note += f"; GPU busy {100 * min(busy, 1.0):.0f}% (compute-stream stage events / wall)"
            kernel_busy = _profiled_busy_fraction(pipe)
            note += f"; {kernel_busy}"
            note += f"; target >= {THROUGHPUT_TARGET:.0f} clips/s on an H200 with decode included"
        peak = torch.cuda.max_memory_allocated() / 2**20 if cuda else None
        runner.add(
            BenchRow(
                bench="e2e",
                stage=total_stage,
                median_ms=wall,
                batch_size=b,
                dtype=runner.dtype,
                device=device,
                audio_s=audio_s,
                peak_mem_mb=peak,
                note=note,
            )
        )
    # on the CPU the replica's "upload" is no copy: 0 ms
    upload_ms = _replica_upload_row(runner, pipe, opts) if cuda else 0.0
    resize = [p[ModelSidePipeline.STAGES[0]] for p in per_stage if ModelSidePipeline.STAGES[0] in p]
    if upload_ms is not None and resize:
        runner.add(replica_row(side, wall, statistics.median(resize), upload_ms, b, runner.dtype, device, audio_s))


REPLICA_STAGE = "as dub generate's replica (total - resize on device + pageable upload)"


def replica_row(
    side: str, total_ms: float, resize_ms: float, upload_ms: float, batch: int, dtype: str, device: str, audio_s: float
) -> BenchRow:
    """`dub generate`'s model time per batch, composed from measured rows and labelled so (the
    GPU image has no Ray to run dub generate itself): its decode tasks deliver frames at the
    target sizes, so its replica skips the resize and uploads them from pageable memory."""
    return BenchRow(
        bench="e2e",
        stage=f"{side}: {REPLICA_STAGE}",
        median_ms=total_ms - resize_ms + upload_ms,
        batch_size=batch,
        dtype=dtype,
        device=device,
        audio_s=audio_s,
        note=f"{total_ms:.1f} - {resize_ms:.1f} + {upload_ms:.1f} ms; end to end where `dub bench "
        "media`'s decoding capacity (clips/s) exceeds this row's",
    )


def _replica_upload_row(runner: StageRunner, pipe: ModelSidePipeline, opts: BenchOptions) -> float | None:
    """What `dub generate`'s replica adds to the model-side time: its frames arrive decoded at the
    target sizes in pageable numpy arrays (Ray's object store) and go to the device in its own
    stream of work, not overlapped like the pipeline's pinned copy stream."""
    import numpy as np
    import torch

    stage = "upload decoded windows at target sizes, pageable (as dub generate's replica)"
    b = pipe.batch
    clip = np.zeros((b, pipe.n_clip, CLIP_SIZE, CLIP_SIZE, 3), np.uint8)
    sync = np.zeros((b, pipe.n_sync, SYNC_SIZE, SYNC_SIZE, 3), np.uint8)

    def upload():
        return torch.from_numpy(clip).to(pipe.device), torch.from_numpy(sync).to(pipe.device)

    try:
        median_ms, _ = time_call(upload, repeats=max(1, opts.repeats), warmup=1, device=pipe.device)
    except Exception as exc:  # noqa: BLE001
        runner.fail(stage, b, exc)
        return None
    megabytes = (clip.nbytes + sync.nbytes) / 2**20
    runner.add(
        BenchRow(
            bench="e2e",
            stage=f"{MODEL_SIDE}: {stage}",
            median_ms=median_ms,
            batch_size=b,
            dtype="uint8",
            device=pipe.device,
            audio_s=b * opts.duration_s,
            note=f"{megabytes:.0f} MB, {megabytes / 1024 / (median_ms / 1000):.1f} GB/s; add to the "
            f"total per batch for dub generate's model time",
        )
    )
    return median_ms


def _profiled_busy_fraction(pipe: ModelSidePipeline) -> str:
    """Union of all device activity intervals (kernels, copies) over one profiled iteration / its wall."""
    import torch

    try:
        from torch.autograd import DeviceType
        from torch.profiler import ProfilerActivity, profile

        with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
            start = time.perf_counter()
            pipe.iteration(StageClock(True))
            torch.cuda.synchronize()
            wall_us = (time.perf_counter() - start) * 1e6
        spans = sorted(
            (e.time_range.start, e.time_range.end)
            for e in prof.events()
            if e.device_type == DeviceType.CUDA and e.time_range.end > e.time_range.start
        )
        busy, cur_start, cur_end = 0.0, None, None
        for s, e in spans:
            if cur_end is None or s > cur_end:
                if cur_end is not None:
                    busy += cur_end - cur_start
                cur_start, cur_end = s, e
            else:
                cur_end = max(cur_end, e)
        if cur_end is not None:
            busy += cur_end - cur_start
        if not spans:
            return "profiler saw no device activity"
        _total_ms, _count, listing = top_kernels(prof, top=15)  # where the next speed-up has to come from
        return (
            f"kernels busy {100 * busy / wall_us:.0f}% of a profiled batch "
            f"(torch.profiler, {len(spans)} device events); top kernels: {listing}"
        )
    except Exception as exc:  # noqa: BLE001 - the profiler is a bonus
        return f"profiler unavailable ({short_error(exc, 120)})"


# -- the true end-to-end run (Ray + PyAV) ------------------------------------------------------


def _ray_run(runner: StageRunner, opts: BenchOptions) -> None:
    stage = "ray: run_generate end to end (decode tasks + model actor + mp4 remux)"
    try:
        import av  # noqa: F401
        import ray
    except ImportError as exc:
        runner.skip(stage, max(2, opts.batch_size), f"needs Ray and PyAV ({short_error(exc, 80)})")
        return
    if not runner.has_time(30):
        runner.skip(stage, max(2, opts.batch_size), "out of the time budget")
        return
    started_here = not ray.is_initialized()
    try:
        with tempfile.TemporaryDirectory(prefix="dub-bench-e2e-") as tmp:
            _ray_rows(runner, opts, Path(tmp), stage)
    except Exception as exc:  # noqa: BLE001
        runner.fail(stage, max(2, opts.batch_size), exc)
    finally:
        if started_here and ray.is_initialized():
            ray.shutdown()


def _ray_rows(runner: StageRunner, opts: BenchOptions, tmp: Path, stage: str) -> None:
    import pyarrow.parquet as pq

    from dub.model.runtime.generator import SamplerConfig
    from dub.model.weights.checkpoint import save_checkpoint
    from dub.workflows.bench.generate import build_network
    from dub.workflows.generate.config import GenerateConfig
    from dub.workflows.generate.run import run_generate
    from dub.workflows.ingest import IngestConfig, ingest
    from dub.workflows.media.synth import write_synthetic_video
    from dub.workflows.ray_cluster import connect

    n = max(2, opts.batch_size)
    duration = opts.duration_s
    size = TINY_SOURCE if opts.preset in TINY_PRESETS else REAL_SOURCE
    videos = tmp / "videos"
    for i in range(n):
        # distinct flash times: identical files would be flagged as duplicates by ingest
        write_synthetic_video(
            videos / f"clip_{i:03d}.mp4",
            seconds=duration,
            fps=25.0,
            size=size,
            pattern="flash_events",
            events=[0.5 + 0.25 * i, duration / 2],
        )
    manifest = tmp / "manifest.parquet"
    ingest([videos], manifest, IngestConfig(workers=0))
    checkpoint = save_checkpoint(build_network("tiny", "cpu"), tmp / "demo_random.safetensors")
    start = time.perf_counter()
    resources = connect()
    ray_start_s = time.perf_counter() - start
    sampler = SamplerConfig(sampler="meanflow", steps=1, **ONE_STEP_GUIDANCE)
    cfg = GenerateConfig(
        out_dir=str(tmp / "out"),
        manifest=str(manifest),
        checkpoint=str(checkpoint),
        sampler=sampler,
        batch_size=max(1, opts.batch_size),
        format="mp4",
    )
    summary = run_generate(cfg)
    what = (
        f"ray: demo bundle stack + random tiny checkpoint on {resources.accelerator}, {resources.cpus:.0f} "
        f"Ray CPUs, {n} synthetic {size[0]}x{size[1]} H.264 clips of {duration:g} s"
    )
    runner.add(
        BenchRow(
            bench="e2e",
            stage=stage,
            median_ms=summary.wall_s * 1000.0,
            batch_size=n,
            dtype="float32",
            device=resources.accelerator,
            audio_s=n * duration,
            note=f"{what}; one run (wall incl. actor start and model load; Ray start "
            f"{ray_start_s:.1f} s excluded); {summary.generated} done, {summary.failed} failed, "
            f"{summary.skipped} skipped",
        )
    )
    report = pq.read_table(Path(cfg.out_dir) / "report.parquet").to_pylist()
    done = [r for r in report if r.get("status") == "done"]
    stages = (
        ("t_decode_s", "decode window at both rates (CPU task, PyAV)"),
        ("t_features_s", "features (model actor)"),
        ("t_generate_s", "network (model actor)"),
        ("t_decode_audio_s", "audio decode (model actor)"),
        ("t_write_s", "stitch + mp4 remux (driver)"),
    )
    for key, label in stages:
        values = [float(r[key]) for r in done if r.get(key) is not None]
        if values:
            runner.add(
                BenchRow(
                    bench="e2e",
                    stage=f"ray: {label}",
                    median_ms=statistics.median(values) * 1000.0,
                    batch_size=1,
                    dtype="uint8" if key == "t_decode_s" else "float32",
                    device="cpu" if key in ("t_decode_s", "t_write_s") else resources.accelerator,
                    audio_s=duration,
                    note=f"{what}; median over {len(values)} videos from report.parquet",
                )
            )
