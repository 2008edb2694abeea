"""The two Ray Data stages of generation: window decoding (CPU tasks) and the model replica
(an actor per GPU, or CPU actors when the cluster has none).

Errors are data: a window that cannot be decoded or generated comes out as a row with an
`error` string, and the run goes on.
"""

from __future__ import annotations

import os
import socket
import time

import numpy as np

from dub.errors import short_error
from dub.workflows.generate.candidates import candidate_seed, window_motion

# Columns that flow between stages besides the frames / audio.
WINDOW_COLUMNS = ("video_id", "window_index", "num_windows", "start_s", "valid_s", "prompt", "negative_prompt", "seed")


def window_frame_bytes(clip_fps: float, clip_size: int, sync_fps: float, sync_size: int, window_s: float) -> float:
    """Bytes of one decoded window's uint8 frames at both rates (what each window puts in Ray's
    object store)."""
    return window_s * (clip_fps * clip_size**2 + sync_fps * sync_size**2) * 3


def decode_memory_bytes(
    clip_fps: float, clip_size: int, sync_fps: float, sync_size: int, window_s: float, backend: str = "swscale"
) -> int:
    """Memory a window-decoding task needs: the frames at both rates, their copy into the
    block, and headroom (more with `backend="torch"`). Declaring it also keeps Ray Data from
    fusing decoding into the model actors on a CPU-only cluster (operators with identical remote
    args fuse), so decoding overlaps the model instead of running inside the actor."""
    frames = window_frame_bytes(clip_fps, clip_size, sync_fps, sync_size, window_s)
    # + the worker's own footprint (the Python worker with numpy and PyAV, decoder and swscale
    # buffers): Ray Data 2.60 measured peaks of 573 MiB per decoding worker for 8 s windows on
    # the 2-core box, where 3 x frames is ~165 MiB, and warns below 1.25 x the peak
    need = 3 * frames + 576 * 2**20
    if backend == "torch":
        # torch itself (~0.5 GiB resident after import) and float32 copies of each source frame,
        # which the allocator does not always give back: peaks of one 8 s window measured on the
        # 2-core box were 750-835 MiB from 720p and 0.8-1.6 GiB from 1080p (swscale: ~0.2 GiB)
        need += 1280 * 2**20
    return int(need)


def decode_settings(info, window_s: float, backend: str) -> dict:
    """`decode_windows`'s keyword arguments for a bundle (its frame rates and sizes)."""
    return dict(
        clip_fps=info.clip_fps,
        clip_size=info.clip_size,
        sync_fps=info.sync_fps,
        sync_size=info.sync_size,
        window_s=window_s,
        backend=backend,
    )


def decode_windows(
    batch: dict[str, np.ndarray],
    *,
    clip_fps: float,
    clip_size: int,
    sync_fps: float,
    sync_size: int,
    window_s: float,
    backend: str = "swscale",
) -> dict[str, np.ndarray]:
    """Decode each window's frames at both model rates in one pass over the file. `backend` is
    `decode_window`'s resizer: "swscale" (fast) or "torch" (torchvision's antialiased bicubic,
    as MMAudio; several times slower on CPU)."""
    from dub.workflows.media.decode import FrameTarget, decode_window

    targets = [
        FrameTarget(fps=clip_fps, size=clip_size, mode="resize"),
        FrameTarget(fps=sync_fps, size=sync_size, mode="crop"),
    ]
    n_clip = int(round(window_s * clip_fps))
    n_sync = int(round(window_s * sync_fps))
    n = len(batch["video_id"])
    clip = np.zeros((n, n_clip, clip_size, clip_size, 3), np.uint8)
    sync = np.zeros((n, n_sync, sync_size, sync_size, 3), np.uint8)
    errors, took = [], []
    for i in range(n):
        start = time.perf_counter()
        try:
            frames, _covered = decode_window(
                str(batch["path"][i]), float(batch["start_s"][i]), window_s, targets, backend=backend
            )
            clip[i] = _fit(frames[0], n_clip)
            sync[i] = _fit(frames[1], n_sync)
            errors.append("")
        except Exception as exc:  # noqa: BLE001 - any decoder failure becomes a failed row
            errors.append("decode: " + short_error(exc))
        took.append(time.perf_counter() - start)
    out = {k: batch[k] for k in WINDOW_COLUMNS}
    out.update(clip_frames=clip, sync_frames=sync, error=np.array(errors, dtype=object), t_decode_s=np.array(took))
    return out


def _fit(frames: np.ndarray, count: int) -> np.ndarray:
    """Exactly `count` frames: hold the last frame past the end of a short video (its audio is
    trimmed afterwards), drop any extra frame from rounding."""
    if len(frames) == 0:
        raise ValueError("no frames decoded in this window")
    if len(frames) >= count:
        return frames[:count]
    pad = np.repeat(frames[-1:], count - len(frames), axis=0)
    return np.concatenate([frames, pad], axis=0)


class FittingCalls:
    """A replica's model calls over a batch's windows: all at once until the device runs out of
    memory (a --batch-size too large for this GPU), then halved until they fit; the smaller size
    holds for the replica's later batches, and the replica says so once. (With --compile the
    encoder towers pad every call to --batch-size windows, so halving does not shrink them:
    their out-of-memory windows fail one by one, and the message says to lower --batch-size.)"""

    def __init__(self, device: str) -> None:
        self.device = device
        self.max_windows: int | None = None

    def run(self, call, rows: list[int]) -> None:
        size = self.max_windows or len(rows)
        for start in range(0, len(rows), size):
            self._fitting(call, rows[start : start + size])

    def _fitting(self, call, rows: list[int]) -> None:
        import torch

        try:
            call(rows)
        except torch.OutOfMemoryError as exc:
            if len(rows) == 1:
                raise
            if self.device.startswith("cuda"):
                torch.cuda.empty_cache()
            half = (len(rows) + 1) // 2
            if self.max_windows is None or half < self.max_windows:
                self.max_windows = half
                print(
                    f"dub: model replica on {self.device} ran out of memory with {len(rows)} windows per call "
                    f"({short_error(exc)[:120]}); it now runs at most {half} (lower --batch-size)",
                    flush=True,
                )
            self._fitting(call, rows[:half])
            self._fitting(call, rows[half:])


class GenerateReplica:
    """One model replica. Ray Data builds one per actor and calls it with batches of windows
    from any videos."""

    def __init__(
        self,
        model: str,
        checkpoint: str | None,
        sampler: dict,
        device: str,
        save_features: bool = False,
        batch_size: int = 1,
        compile: bool = False,
        fp8: bool = False,
        candidates: int = 1,
    ):
        import torch

        from dub.model.runtime.bundles import load_generator
        from dub.model.runtime.generator import SamplerConfig

        if device == "cpu":
            # Ray gives each CPU actor its CPUs; torch would otherwise spawn one thread per core.
            torch.set_num_threads(max(1, torch.get_num_threads()))
        elif str(device).startswith("cuda"):
            # a replica sees the same few shapes all run long (graphs at --batch-size): let cuDNN
            # time its convolution algorithms once per shape, as `dub bench` measured them
            torch.backends.cudnn.benchmark = True
        self.replica_id = f"{socket.gethostname()}:{os.getpid()}"
        self.memory = FittingCalls(device)
        self.generator = load_generator(model, checkpoint=checkpoint, device=device)
        self.sampler = SamplerConfig(**sampler)
        self.save_features = save_features
        self.candidates = candidates  # noise draws per window (dub.workflows.generate.candidates)
        # FP8 changes the features, so it is not a fast path that may quietly fall back: it
        # raises (e.g. a GPU without FP8 units) rather than make audio the run did not ask for
        self.fp8 = self.generator.encoders.use_fp8() if fp8 else None
        self.fast_paths = self._use_fast_paths(batch_size * candidates, compile)
        if self.fast_paths or self.fp8:  # one line per replica in the run's log: what this run really uses
            print(
                f"dub: model replica on {device}: " + "; ".join(filter(None, [self.fp8, *self.fast_paths])), flush=True
            )

    def _use_fast_paths(self, batch_size: int, compile: bool) -> list[str]:
        """The latency paths (CUDA graphs; torch.compile with `compile`). Each falls back to the
        eager code, which computes the same thing, and says why."""
        gen = self.generator
        builders = {
            "one-step network": lambda: gen.use_fast_step(batch_size, self.sampler, compile=compile),
            "decoder": lambda: gen.use_fast_decoder(batch_size, compile=compile),
        }
        if compile and hasattr(gen.encoders, "compile_towers"):
            builders["encoder towers"] = lambda: gen.encoders.compile_towers(windows=batch_size)
        active = []
        for name, build in builders.items():
            try:
                what = build()
            except Exception as exc:  # noqa: BLE001 - the eager path computes the same thing
                print(f"dub: the {name} fast path is unavailable, running it eagerly: {short_error(exc)}", flush=True)
                continue
            if what:
                active.append(what)
        return active

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        call_start = time.time()  # wall clock: the driver compares calls of one replica
        n = len(batch["video_id"])
        errors = list(batch["error"])
        ok = [i for i in range(n) if not errors[i]]
        audio: dict[int, np.ndarray] = {}
        timings = {"features_s": 0.0, "generate_s": 0.0, "decode_audio_s": 0.0}
        feats: dict[int, dict[str, np.ndarray]] = {}
        if ok:
            try:
                self.memory.run(lambda rows: self._run(batch, rows, audio, timings, feats), ok)
            except Exception:  # noqa: BLE001 - isolate the culprit: retry one window at a time
                for i in ok:
                    if i in audio:
                        continue
                    try:
                        self._run(batch, [i], audio, timings, feats)
                    except Exception as exc:  # noqa: BLE001
                        errors[i] = "generate: " + short_error(exc)
        length = max((a.shape[-1] for a in audio.values()), default=0)
        # (n, L), or (n, candidates, L) when drawing several
        out_audio = np.zeros((n, *((self.candidates,) if self.candidates > 1 else ()), length), np.float32)
        for i, a in audio.items():
            out_audio[i, ..., : a.shape[-1]] = a
        out = {k: batch[k] for k in WINDOW_COLUMNS}
        out.update(
            audio=out_audio,
            error=np.array(errors, dtype=object),
            t_decode_s=batch["t_decode_s"],
            sample_rate=np.full(n, self.generator.sample_rate),
        )
        share = max(1, len(ok))
        for key, value in timings.items():
            out["t_" + key] = np.full(n, value / share)
        # for the run's busy fraction: the gaps between one replica's calls are its waits for input
        out.update(
            replica=np.full(n, self.replica_id, dtype=object),
            t_call_start=np.full(n, call_start),
            t_call_end=np.full(n, time.time()),
        )
        if self.candidates > 1 and batch.get("sync_frames") is not None:  # for the writer's selection
            out["motion"] = np.stack([window_motion(frames) for frames in batch["sync_frames"]])
        if self.save_features:
            for name in ("clip_f", "sync_f", "text_f"):
                shape = next((f[name].shape for f in feats.values()), (0,))
                col = np.zeros((n, *shape), np.float32)
                for i, f in feats.items():
                    col[i] = f[name]
                out[name] = col
        return out

    def _run(self, batch, rows, audio, timings, feats) -> None:
        import torch

        from dub.model.runtime.generator import WindowBatch

        wb = WindowBatch(
            clip_frames=None
            if batch.get("clip_frames") is None
            else torch.from_numpy(np.ascontiguousarray(batch["clip_frames"][rows])),
            sync_frames=None
            if batch.get("sync_frames") is None
            else torch.from_numpy(np.ascontiguousarray(batch["sync_frames"][rows])),
            prompts=[str(batch["prompt"][i]) for i in rows],
            negative_prompts=[str(batch["negative_prompt"][i]) for i in rows],
            seeds=[int(batch["seed"][i]) for i in rows],
        )
        clip_f, sync_f, text_f = self.generator.features(wb)
        n_cand = self.candidates
        if n_cand > 1:  # every window's features once, then N noise draws of each
            expanded = WindowBatch(
                None,
                None,
                [p for p in wb.prompts for _ in range(n_cand)],
                [p for p in wb.negative_prompts for _ in range(n_cand)],
                [candidate_seed(s, k) for s in wb.seeds for k in range(n_cand)],
                wb.timings,
            )
            lat = self.generator.latents(
                *(f.repeat_interleave(n_cand, dim=0) for f in (clip_f, sync_f, text_f)), expanded, self.sampler
            )
        else:
            lat = self.generator.latents(clip_f, sync_f, text_f, wb, self.sampler)
        wav = self.generator.decode(lat, wb).cpu().numpy()
        if n_cand > 1:
            wav = wav.reshape(len(rows), n_cand, -1)
        for j, i in enumerate(rows):
            audio[i] = wav[j]
            if self.save_features:
                feats[i] = {
                    "clip_f": clip_f[j].cpu().numpy(),
                    "sync_f": sync_f[j].cpu().numpy(),
                    "text_f": text_f[j].cpu().numpy(),
                }
        for key, value in wb.timings.items():
            timings[key] += value
