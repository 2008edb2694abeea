"""`dub bench encoders`: visual and text features for one clip (8 s by default), batch 1 and
`--batch-size`.

Stages: frame resize from decoded uint8 (720p -> 384 x 384 for CLIP, short side -> 224 + centre
crop for Synchformer) on the device and, on CUDA, on the CPU for comparison, plus the pinned
host -> device upload; CLIP image features over the clip's frames at 8 fps (64 for 8 s); CLIP
text features (77 tokens); Synchformer over the 25 fps frames (24 segments for 8 s); the demo
encoders on tiny presets. Presets: a real one such as `small_16k` builds DFN5B ViT-H/14 at 384
(open_clip config, random weights) and the released Synchformer size; `tiny` builds a tiny
open_clip config, a one-block Synchformer and the demo encoders (CPU, 640 x 360 sources).
CUDA runs bf16 autocast with PyTorch SDPA attention (flash kernels where eligible).

opts.extra: fp8 (bool: last, CLIP and Synchformer with FP8 linear layers, after compiling when
compile is set), compile (bool: also torch.compile CLIP's vision tower and Synchformer, timed at the
largest batch), compiled_only (only those compiled stages), deadline, on_row (see
workflows/bench/generate.py).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from dub.errors import short_error
from dub.workflows.bench import BenchOptions, BenchRow, resolve_device
from dub.workflows.bench.generate import TINY_PRESETS, StageRunner, dtype_name, free_cuda_cache

CLIP_FPS = 8
SYNC_FPS = 25
CLIP_SIZE = 384
SYNC_SIZE = 224
REAL_SOURCE = (1280, 720)  # (width, height) of the decoded frames the resize stages start from
TINY_SOURCE = (640, 360)
PROMPT = "a dog barks while a car drives past on a wet street"
H200_BF16_PEAK_TFLOPS = 790.0  # dense bf16 matmul measured on an H200 (docs/benchmarks.md)


@dataclass
class EncoderStack:
    encoders: Any | None  # dub.model.encoders.mmaudio.MMAudioEncoders (CLIP + Synchformer), None without open_clip
    synchformer_only: Any | None  # dub.model.encoders.synchformer.Synchformer when CLIP could not be built
    demo: Any | None  # dub.model.demo.DemoEncoders on tiny presets
    clip_cfg: dict | None
    description: str
    missing: str = ""  # why CLIP is absent


def tiny_synchformer_config():
    from dub.model.encoders.synchformer import SynchformerConfig

    return SynchformerConfig(embed_dim=32, depth=1, num_heads=2, agg_num_heads=2, agg_ff_dim=64)


def build_encoders(preset: str, device: str) -> EncoderStack:
    """CLIP + Synchformer with random weights built on `device` (tiny sizes for tiny presets)."""
    import torch

    from dub.model.encoders.synchformer import Synchformer, SynchformerConfig

    tiny = preset in TINY_PRESETS
    with torch.device(device):
        synchformer = Synchformer(tiny_synchformer_config() if tiny else SynchformerConfig.released()).eval()
    demo = None
    if tiny:
        from dub.model.demo import DemoEncoders

        demo = DemoEncoders().to(device)
    try:
        from dub.model.encoders.clip import ClipEncoder, released_model_cfg, tiny_model_cfg
        from dub.model.encoders.mmaudio import MMAudioEncoders

        clip_cfg = tiny_model_cfg() if tiny else released_model_cfg()
        with torch.device(device):
            clip = ClipEncoder.from_config(clip_cfg)
    except ImportError as exc:  # open_clip is optional (not on the GPU image unless carried)
        return EncoderStack(None, synchformer, demo, None, "Synchformer only", missing=short_error(exc))
    what = (
        "tiny open_clip + 1-block Synchformer + demo encoders"
        if tiny
        else "DFN5B ViT-H/14 @384 (open_clip) + Synchformer ViT-B/16, random weights"
    )
    return EncoderStack(MMAudioEncoders(clip, synchformer, device), None, demo, clip_cfg, what)


def vit_flops_per_image(model_cfg: dict, input_size: int) -> float:
    """Matmul FLOPs of one image through an open_clip ViT: per layer 24 n d^2 (qkv, proj, 4x MLP)
    + 4 n^2 d (scores and weighted sum), n = patches + 1 class token."""
    vision = model_cfg["vision_cfg"]
    width, layers, patch = vision["width"], vision["layers"], vision["patch_size"]
    mlp = vision.get("mlp_ratio", 4.0)
    n = (input_size // patch) ** 2 + 1
    return layers * (2 * n * width * width * (4 + 2 * mlp) + 4 * n * n * width)


def random_frames(batch: int, count: int, width: int, height: int, device: str, seed: int = 0):
    import torch

    gen = torch.Generator(device=device).manual_seed(seed)
    return torch.randint(0, 256, (batch, count, height, width, 3), generator=gen, dtype=torch.uint8, device=device)


def clip_resize(frames, size: int):
    """Decoded uint8 (B, T, H, W, 3) -> uint8 (B*T, 3, size, size): CLIP's bicubic resize, no crop."""
    from dub.model.encoders.clip import frames_to_images, resize_uint8

    return resize_uint8(frames_to_images(frames), (size, size))


def sync_resize(frames, size: int):
    """Decoded uint8 (B, T, H, W, 3) -> uint8 (B*T, 3, size, size): short side to size, centre crop."""
    from dub.model.encoders.clip import center_crop, frames_to_images, resize_uint8, short_side_size

    images = frames_to_images(frames)
    return center_crop(resize_uint8(images, short_side_size(*images.shape[-2:], size)), size)


def run(opts: BenchOptions) -> list[BenchRow]:
    import torch

    device = resolve_device(opts.device)
    cuda = device.startswith("cuda")
    runner = StageRunner("encoders", opts, device, dtype_name(device))
    stack = runner.attempt("build encoders", 1, lambda: build_encoders(opts.preset, device))
    if stack is None:
        return runner.rows
    tiny = opts.preset in TINY_PRESETS
    width, height = TINY_SOURCE if tiny else REAL_SOURCE
    n_clip = int(round(opts.duration_s * CLIP_FPS))
    n_sync = int(round(opts.duration_s * SYNC_FPS))
    clip_size, sync_size = CLIP_SIZE, SYNC_SIZE  # what decoding delivers; a tiny CLIP resizes further
    batches = sorted({1, max(1, opts.batch_size)})

    with torch.inference_mode():
        for b in [] if opts.extra.get("compiled_only") else batches:
            _resize_stages(runner, b, n_clip, n_sync, width, height, clip_size, sync_size, opts.duration_s, cuda)
            _model_stages(runner, stack, b, n_clip, n_sync, clip_size, sync_size, opts.duration_s, label="")
            free_cuda_cache(device)
        compile_now = opts.extra.get("compile") or opts.extra.get("compiled_only")
        if compile_now and stack.encoders is not None:
            b = max(batches)
            if _compile_encoders(runner, stack, b):
                # warm-up calls compile: at least one before timing
                _model_stages(
                    runner,
                    stack,
                    b,
                    n_clip,
                    n_sync,
                    clip_size,
                    sync_size,
                    opts.duration_s,
                    label=", compiled",
                    warmup=max(1, opts.warmup),
                )
        if opts.extra.get("fp8") and stack.encoders is not None:
            _fp8_stages(
                runner,
                stack,
                max(batches),
                n_clip,
                n_sync,
                clip_size,
                sync_size,
                opts.duration_s,
                compiled=bool(compile_now),
            )
    return runner.rows


def _fp8_stages(
    runner: StageRunner,
    stack: EncoderStack,
    b: int,
    n_clip: int,
    n_sync: int,
    clip_size: int,
    sync_size: int,
    duration_s: float,
    compiled: bool,
) -> None:
    """CLIP and Synchformer with their linear layers in FP8 (`MMAudioEncoders.use_fp8`, an
    approximation): time, and the features' deviation from the bf16 ones on the same frames."""
    enc = stack.encoders
    clip_frames = random_frames(b, n_clip, clip_size, clip_size, runner.device, seed=1)
    sync_frames = random_frames(b, n_sync, sync_size, sync_size, runner.device, seed=2)
    label = ", FP8" + (" compiled" if compiled else "")
    refs = runner.attempt(
        f"CLIP image features, {n_clip} frames{label}",
        b,
        lambda: (enc.clip_features(clip_frames), enc.sync_features(sync_frames)),
    )
    from dub.model.encoders.mmaudio import FP8_TOWERS

    # both towers, to keep timing Synchformer's FP8 form too (`dub generate --fp8` converts CLIP's only)
    what = runner.attempt(f"CLIP image features, {n_clip} frames{label}", b, lambda: enc.use_fp8(FP8_TOWERS))
    if refs is None or what is None:
        return
    note = f"{stack.description}; {what}; deviation is FP8's (e4m3) against bf16 features"
    warmup = max(1, runner.opts.warmup) + (1 if compiled else 0)  # a conversion under compile recompiles
    runner.measure(
        f"CLIP image features, {n_clip} frames{label}",
        lambda: enc.clip_features(clip_frames),
        batch=b,
        audio_s=b * duration_s,
        slow=True,
        warmup=warmup,
        reference=refs[0],
        tol=0.1,
        note=note,
    )
    runner.measure(
        f"Synchformer, {(n_sync - 16) // 8 + 1} segments{label}",
        lambda: enc.sync_features(sync_frames),
        batch=b,
        audio_s=b * duration_s,
        slow=True,
        warmup=warmup,
        reference=refs[1],
        tol=0.1,
        note=note,
    )


def _resize_stages(
    runner: StageRunner,
    b: int,
    n_clip: int,
    n_sync: int,
    width: int,
    height: int,
    clip_size: int,
    sync_size: int,
    duration_s: float,
    cuda: bool,
) -> None:
    import torch

    device = runner.device
    audio_s = b * duration_s
    src = f"{width}x{height}"
    frames = runner.attempt("frames", b, lambda: random_frames(b, n_sync, width, height, device))
    if frames is None:
        return
    # CLIP's 8 fps frames are a subset of the 25 fps decode (sample-and-hold)
    clip_index = torch.tensor([min(n_sync - 1, -(-k * SYNC_FPS // CLIP_FPS)) for k in range(n_clip)], device=device)
    clip_frames = frames[:, clip_index]
    runner.measure(
        f"resize {src} -> {clip_size} (CLIP, {n_clip} frames), on {device}",
        lambda: clip_resize(clip_frames, clip_size),
        batch=b,
        audio_s=audio_s,
        dtype="uint8",
        note="bicubic antialias, uint8 in and out",
    )
    runner.measure(
        f"resize {src} -> {sync_size} crop (Synchformer, {n_sync} frames), on {device}",
        lambda: sync_resize(frames, sync_size),
        batch=b,
        audio_s=audio_s,
        dtype="uint8",
        note="short side bicubic antialias + centre crop, uint8 in and out",
    )
    if cuda:
        # one pinned decoded clip, uploaded once per clip of the batch (as separate videos arrive)
        host = runner.attempt("pin host frames", b, lambda: frames[0].cpu().pin_memory())
        if host is not None:
            target = torch.empty_like(frames)

            def upload():
                for j in range(b):
                    target[j].copy_(host, non_blocking=True)

            runner.measure(
                f"upload {n_sync} frames {src} uint8 per clip, pinned host -> device",
                upload,
                batch=b,
                audio_s=audio_s,
                dtype="uint8",
                note=f"{b} x {host.numel() / 2**20:.0f} MB",
            )
        if b == 1 and host is not None:
            # one pass each: CPU resizing is what the GPU path replaces
            threads = f"torch on {torch.get_num_threads()} CPU threads, for comparison"
            runner.measure(
                f"resize {src} -> {clip_size} (CLIP, {n_clip} frames), on cpu",
                lambda: clip_resize(host[None, clip_index.cpu()], clip_size),
                batch=b,
                audio_s=audio_s,
                dtype="uint8",
                device="cpu",
                repeats=1,
                warmup=0,
                note=threads,
            )
            runner.measure(
                f"resize {src} -> {sync_size} crop (Synchformer, {n_sync} frames), on cpu",
                lambda: sync_resize(host[None], sync_size),
                batch=b,
                audio_s=audio_s,
                dtype="uint8",
                device="cpu",
                repeats=1,
                warmup=0,
                note=threads,
            )


def _model_stages(
    runner: StageRunner,
    stack: EncoderStack,
    b: int,
    n_clip: int,
    n_sync: int,
    clip_size: int,
    sync_size: int,
    duration_s: float,
    label: str,
    warmup: int | None = None,
) -> None:
    from dub.model.encoders.synchformer import attention_status

    device = runner.device
    audio_s = b * duration_s
    clip_frames = random_frames(b, n_clip, clip_size, clip_size, device, seed=1)
    sync_frames = random_frames(b, n_sync, sync_size, sync_size, device, seed=2)
    enc = stack.encoders
    if enc is not None:
        tflop = vit_flops_per_image(stack.clip_cfg, enc.clip_size) * b * n_clip / 1e12

        def throughput(ms: float) -> str:
            rate = tflop / (ms / 1000.0)
            share = ""
            if device.startswith("cuda"):
                share = f" = {100 * rate / H200_BF16_PEAK_TFLOPS:.0f}% of an H200's bf16 peak"
            return f"{tflop / b:.1f} TFLOP/clip (matmuls incl. attention), {rate:.0f} TFLOP/s{share}"

        runner.measure(
            f"CLIP image features, {n_clip} frames{label}",
            lambda: enc.clip_features(clip_frames),
            batch=b,
            audio_s=audio_s,
            slow=True,
            warmup=warmup,
            describe=throughput,
            note=f"{stack.description}; model input {enc.clip_size} px",
        )
        if not label and b > 1:
            runner.profile(
                f"CLIP image features, {n_clip} frames",
                lambda: enc.clip_features(clip_frames),
                batch=b,
                audio_s=audio_s,
                note=stack.description,
            )
        if not label:
            runner.measure(
                "CLIP text features (77 tokens)",
                lambda: enc.text_features([PROMPT] * b),
                batch=b,
                audio_s=audio_s,
                note=stack.description,
            )
        runner.measure(
            f"Synchformer, {(n_sync - 16) // 8 + 1} segments{label}",
            lambda: enc.sync_features(sync_frames),
            batch=b,
            audio_s=audio_s,
            slow=True,
            warmup=warmup,
            note=f"{stack.description}; {attention_status(device)}",
        )
    else:
        runner.skip("CLIP image and text features", b, f"open_clip unavailable ({stack.missing})")
        if stack.synchformer_only is not None:
            runner.measure(
                f"Synchformer, {(n_sync - 16) // 8 + 1} segments{label}",
                lambda: _synchformer_only(stack.synchformer_only, sync_frames, sync_size),
                batch=b,
                audio_s=audio_s,
                slow=True,
                note="Synchformer ViT-B/16, random weights",
            )
    if stack.demo is not None and not label:
        demo = stack.demo
        runner.measure(
            f"demo clip features, {n_clip} frames",
            lambda: demo.clip_features(clip_frames),
            batch=b,
            audio_s=audio_s,
            dtype="float32",
            note="hand-made features (demo bundle)",
        )
        runner.measure(
            f"demo sync features, {n_sync} frames",
            lambda: demo.sync_features(sync_frames),
            batch=b,
            audio_s=audio_s,
            dtype="float32",
            note="hand-made features (demo bundle)",
        )
        runner.measure(
            "demo text features",
            lambda: demo.text_features([PROMPT] * b),
            batch=b,
            audio_s=audio_s,
            dtype="float32",
            note="hashed bag of words (demo bundle)",
        )


def _synchformer_only(model, frames, size: int):
    import torch

    from dub.model.encoders.mmaudio import sync_pixels
    from dub.model.encoders.synchformer import synchformer_features

    cuda = frames.device.type == "cuda"
    pixels = sync_pixels(frames, size, frames.device)
    with torch.autocast("cuda", dtype=torch.bfloat16, enabled=cuda):
        return synchformer_features(model, pixels.to(torch.bfloat16) if cuda else pixels)


def _compile_encoders(runner: StageRunner, stack: EncoderStack, b: int) -> bool:
    built = runner.attempt("torch.compile CLIP vision tower + Synchformer", b, stack.encoders.compile_towers, need_s=40)
    return built is not None
