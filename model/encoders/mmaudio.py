"""The visual/text encoder protocol and its MMAudio implementation (CLIP + Synchformer).

Frames arrive as uint8 (B, T, H, W, 3) from the media module: CLIP frames at `clip_fps`,
sync frames at `sync_fps` (already `sync_size` square, short side resized then centre-cropped).
Encoders move them to their device, convert and normalise.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Protocol, runtime_checkable

import torch

from dub.model.encoders.synchformer import Synchformer, synchformer_features
from dub.model.kernels.graphs import CompiledOrEager, in_fixed_batches

if TYPE_CHECKING:
    from dub.model.encoders.clip import ClipEncoder

FP8_TOWERS = ("clip", "synchformer")  # what MMAudioEncoders.use_fp8 can convert
# What it converts unless told: CLIP only. Synchformer's matrices (K = 768) are too small for FP8
# to pay for its quantisation: measured on an H200 (docs/benchmarks.md) it was no faster than
# bf16, so converting it only added error.
FP8_DEFAULT_TOWERS = ("clip",)
CLIP_FPS = 8
CLIP_SIZE = 384
SYNC_FPS = 25
SYNC_SIZE = 224


@runtime_checkable
class VisualTextEncoder(Protocol):
    clip_fps: int
    clip_size: int
    sync_fps: int
    sync_size: int
    clip_dim: int
    sync_dim: int
    text_dim: int
    text_seq_len: int

    def clip_features(self, frames: torch.Tensor) -> torch.Tensor:
        """uint8 (B, T, H, W, 3) at clip_fps -> (B, T, clip_dim)."""
        ...

    def sync_features(self, frames: torch.Tensor) -> torch.Tensor:
        """uint8 (B, T, H, W, 3) at sync_fps -> (B, 8 * segments, sync_dim)."""
        ...

    def text_features(self, prompts: list[str]) -> torch.Tensor:
        """Prompts -> (B, text_seq_len, text_dim)."""
        ...


def sync_pixels(frames: torch.Tensor, size: int, device: torch.device) -> torch.Tensor:
    """uint8 (B, T, H, W, 3) -> float (B, T, 3, size, size) in [-1, 1] on `device`.

    Frames not already `size` square get MMAudio's transform here: short side to `size`
    (bicubic, antialiased), centre crop.
    """
    from dub.model.encoders.clip import center_crop, frames_to_images, resize_uint8, short_side_size

    images = frames_to_images(frames.to(device))
    height, width = images.shape[-2:]
    if (height, width) != (size, size):
        images = center_crop(resize_uint8(images, short_side_size(height, width, size)), size)
    pixels = (images.float() / 255.0 - 0.5) / 0.5
    return pixels.reshape(*frames.shape[:2], 3, size, size)


class MMAudioEncoders:
    """CLIP (image + text) and Synchformer features exactly as MMAudio computes them."""

    clip_fps = CLIP_FPS
    sync_fps = SYNC_FPS

    def __init__(
        self,
        clip: ClipEncoder,
        synchformer: Synchformer,
        device: str | torch.device = "cpu",
        *,
        clip_batch_size: int | None = None,
        sync_batch_size: int | None = None,
    ) -> None:
        self.device = torch.device(device)
        self.clip = clip.to(self.device).eval()
        self.synchformer = synchformer.to(self.device).eval()
        self.clip_batch_size = clip_batch_size
        self.sync_batch_size = sync_batch_size
        self.windows_per_call: int | None = None  # set by compile_towers

    @property
    def clip_size(self) -> int:
        return self.clip.input_size

    @property
    def sync_size(self) -> int:
        return self.synchformer.config.crop_size

    @property
    def clip_dim(self) -> int:
        return self.clip.image_dim

    @property
    def sync_dim(self) -> int:
        return self.synchformer.embed_dim

    @property
    def text_dim(self) -> int:
        return self.clip.text_dim

    @property
    def text_seq_len(self) -> int:
        return self.clip.text_seq_len

    def compile_towers(self, windows: int | None = None, **compile_kwargs) -> str:
        """torch.compile CLIP's vision tower and Synchformer's MotionFormer in place; the first
        calls compile (about a minute each at real sizes), and a tower that fails to compile
        runs eagerly (`dub.model.kernels.graphs.CompiledOrEager`). Compiled code is specialised to its input
        shapes, so with `windows` every call runs in batches of exactly that many windows (the
        last padded; windows never interact): a short last batch reuses the compiled code
        instead of compiling again for minutes."""
        kwargs = {"dynamic": False, **compile_kwargs}
        self.clip.model.visual = CompiledOrEager(self.clip.model.visual, **kwargs)
        self.synchformer.vfeat_extractor = CompiledOrEager(self.synchformer.vfeat_extractor, **kwargs)
        self.windows_per_call = windows
        fixed = f", {windows} windows per call" if windows else ""
        return f"CLIP vision tower + Synchformer torch.compile'd (eager if compiling fails){fixed}"

    def use_fp8(self, towers: Sequence[str] = FP8_DEFAULT_TOWERS) -> str:
        """Run the linear layers of CLIP's vision tower (its attention projections included, via
        `dub.model.kernels.fp8.ProjectedAttention`) and/or of Synchformer's MotionFormer in FP8 (`dub.model.kernels.fp8`,
        an approximation: see there). Call before `compile_towers`. `towers` picks them; CLIP's
        alone unless told (FP8_DEFAULT_TOWERS: Synchformer measured no faster in FP8)."""
        from dub.model.kernels.fp8 import convert_linears_to_fp8, fp8_supported

        unknown = sorted(set(towers) - set(FP8_TOWERS))
        if unknown or not towers:
            raise ValueError(f"FP8 towers must be a non-empty subset of {FP8_TOWERS}, got {tuple(towers)}")
        ok, why = fp8_supported(self.device)
        if not ok:
            raise RuntimeError(f"FP8 is not available on {self.device}: {why}")
        modules = {
            "clip": (self.clip.model, "visual", "CLIP's vision tower"),
            "synchformer": (self.synchformer, "vfeat_extractor", "Synchformer"),
        }
        n = sum(convert_linears_to_fp8(getattr(owner, name)) for owner, name, _ in (modules[t] for t in towers))
        names = " and ".join(modules[t][2] for t in FP8_TOWERS if t in towers)
        return f"{n} linear layers of {names} in FP8 (e4m3, row-wise scales)"

    def clip_features(self, frames: torch.Tensor) -> torch.Tensor:
        return in_fixed_batches(
            lambda f: self.clip.image_features(f, batch_size=self.clip_batch_size), frames, self.windows_per_call
        )

    def sync_features(self, frames: torch.Tensor) -> torch.Tensor:
        return in_fixed_batches(self._sync_features, frames, self.windows_per_call)

    @torch.no_grad()
    def _sync_features(self, frames: torch.Tensor) -> torch.Tensor:
        pixels = sync_pixels(frames, self.sync_size, self.device)
        on_cuda = self.device.type == "cuda"
        if on_cuda:
            pixels = pixels.to(torch.bfloat16)  # halves the overlapping-segment copy; autocast runs bf16 anyway
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=on_cuda):
            features = synchformer_features(self.synchformer, pixels, batch_size=self.sync_batch_size)
        return features.float()

    def text_features(self, prompts: list[str]) -> torch.Tensor:
        return self.clip.text_features(prompts)
