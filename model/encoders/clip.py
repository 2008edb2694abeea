"""CLIP image and text features through open_clip, as MMAudio computes them.

Follows MMAudio 1.0.0's use of open_clip (open_clip_torch 3.3.0 in requirements.lock).

MMAudio uses DFN5B CLIP ViT-H/14 (`hf-hub:apple/DFN5B-CLIP-ViT-H-14-384`, whose open_clip config
is the built-in `ViT-H-14-378-quickgelu`). Image features: 384 px frames (bicubic, no crop),
OpenAI mean/std, L2-normalised image embeddings. Text features: every token's final hidden state
after `ln_final`, L2-normalised (not the pooled/projected vector).

Weights come from a local file or directory only; nothing downloads. open_clip is imported lazily
(it is an optional dependency).
"""

from __future__ import annotations

import copy
import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from dub.model.kernels.switch import KernelSwitch
from dub.model.weights.state_dicts import read_state_dict, strict_load

RELEASED_MODEL_NAME = "ViT-H-14-378-quickgelu"
# MMAudio resizes frames to 384 px; the 378 px model's stride-14 patch conv drops the last 6
# pixel rows/columns, so it still sees its 27 x 27 grid.
RELEASED_INPUT_SIZE = 384
OPENAI_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_STD = (0.26862954, 0.26130258, 0.27577711)
WEIGHT_FILE_NAMES = ("open_clip_model.safetensors", "open_clip_pytorch_model.bin", "model.safetensors")
CONFIG_FILE_NAME = "open_clip_config.json"


def resize_uint8(images: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Bicubic antialiased resize of uint8 (N, C, H, W), bit-exact with torchvision's v2 Resize.

    torchvision resizes uint8 natively on CPU and through float32 (clamp, round) elsewhere. On
    CUDA the same float32 arithmetic runs as two separable Triton passes (model/kernels/resize_triton.py:
    equal output, faster: docs/benchmarks.md); F.interpolate remains the fallback.
    """
    if images.dtype != torch.uint8:
        raise TypeError(f"expected uint8 images, got {images.dtype}")
    if tuple(images.shape[-2:]) == tuple(size):
        return images
    if images.device.type == "cpu":
        return F.interpolate(images, size=size, mode="bicubic", antialias=True, align_corners=False)
    if images.device.type == "cuda" and SEPARABLE_RESIZE.usable_for(images):
        from dub.model.kernels.resize_triton import resize_triton

        try:
            return resize_triton(images, (int(size[0]), int(size[1])))
        except Exception as exc:  # noqa: BLE001 - a kernel that fails to build must not fail a run
            SEPARABLE_RESIZE.disable(exc)
    return _interpolate_uint8(images, size)


def _interpolate_uint8(images: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    out = F.interpolate(images.float(), size=size, mode="bicubic", antialias=True, align_corners=False)
    return out.clamp_(0, 255).round_().to(torch.uint8)


def _check_separable_resize(device: torch.device, dtype: torch.dtype) -> str | None:
    """The kernels against F.interpolate on random frames, down (antialiased) and up. The two
    sum in other orders, so a value may round the other way (tests/test_resize_triton.py saw up
    to 0.015 % of values off by 1); more is wrong."""
    from dub.model.kernels.resize_triton import resize_triton

    generator = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (2, 3, 72, 128), generator=generator, dtype=torch.uint8).to(device)
    for size in ((40, 40), (96, 171)):
        got, reference = resize_triton(images, size).int(), _interpolate_uint8(images, size).int()
        worst, differ = (got - reference).abs().max().item(), (got != reference).float().mean().item()
        if worst > 1 or differ > 1e-3:
            return f"to {size}: values off by up to {worst}, {differ:.3%} of them differ"
    return None


SEPARABLE_RESIZE = KernelSwitch(
    "the Triton resize",
    "DUB_TRITON_RESIZE",
    "dub.model.kernels.resize_triton",
    "F.interpolate",
    self_check=_check_separable_resize,
)


def short_side_size(height: int, width: int, short: int) -> tuple[int, int]:
    """(h, w) after resizing the short side to `short` (torchvision's rounding: int())."""
    if width <= height:
        return int(short * height / width), short
    return short, int(short * width / height)


def center_crop(images: torch.Tensor, size: int) -> torch.Tensor:
    height, width = images.shape[-2:]
    if height < size or width < size:
        raise ValueError(f"cannot centre-crop {height}x{width} images to {size}x{size}")
    top, left = int(round((height - size) / 2.0)), int(round((width - size) / 2.0))
    return images[..., top : top + size, left : left + size]


def frames_to_images(frames: torch.Tensor) -> torch.Tensor:
    """uint8 (B, T, H, W, 3) -> uint8 (B*T, 3, H, W) (a view, channels-last in memory)."""
    if frames.ndim != 5 or frames.shape[-1] != 3:
        raise ValueError(f"frames must be uint8 (B, T, H, W, 3); got shape {tuple(frames.shape)}")
    if frames.dtype != torch.uint8:
        raise TypeError(f"frames must be uint8 (decoded video); got {frames.dtype}")
    return frames.flatten(0, 1).permute(0, 3, 1, 2)


def released_model_cfg() -> dict[str, Any]:
    """open_clip's model config for DFN5B ViT-H/14-378 (quick GELU)."""
    import open_clip

    cfg = open_clip.get_model_config(RELEASED_MODEL_NAME)
    if cfg is None:
        raise RuntimeError(f"this open_clip has no built-in config '{RELEASED_MODEL_NAME}'; upgrade open_clip_torch")
    return copy.deepcopy(cfg)


def tiny_model_cfg(
    *,
    embed_dim: int = 32,
    image_size: int = 32,
    patch_size: int = 8,
    vision_width: int = 32,
    vision_layers: int = 1,
    text_width: int = 32,
    text_heads: int = 2,
    text_layers: int = 1,
    context_length: int = 77,
) -> dict[str, Any]:
    """A small random open_clip config with the released tokenizer (vocab 49408), for tests and demos."""
    return {
        "embed_dim": embed_dim,
        "quick_gelu": True,
        "vision_cfg": {
            "image_size": image_size,
            "layers": vision_layers,
            "width": vision_width,
            "head_width": vision_width // 2,
            "patch_size": patch_size,
        },
        "text_cfg": {
            "context_length": context_length,
            "vocab_size": 49408,
            "width": text_width,
            "heads": text_heads,
            "layers": text_layers,
        },
    }


def default_input_size(model_cfg: Mapping[str, Any]) -> int:
    """MMAudio's 384 px for the released vision tower; the model's own image size otherwise."""
    vision = model_cfg["vision_cfg"]
    if vision.get("image_size") == 378 and vision.get("patch_size") == 14:
        return RELEASED_INPUT_SIZE
    size = vision["image_size"]
    return int(size if isinstance(size, int) else size[0])


def build_clip_model(model_cfg: Mapping[str, Any]) -> nn.Module:
    """An open_clip CLIP with random weights (no download, no pretrained towers)."""
    from open_clip.model import CLIP

    cfg = copy.deepcopy(dict(model_cfg))
    if cfg.pop("custom_text", False) or "hf_model_name" in cfg.get("text_cfg", {}):
        raise ValueError("only open_clip's built-in text tower is supported (MMAudio's DFN5B layout)")
    if "timm_model_name" in cfg.get("vision_cfg", {}):
        raise ValueError("timm vision towers are not supported (MMAudio's DFN5B uses open_clip's ViT)")
    return CLIP(**cfg).eval()


def read_clip_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """Tensors from a .safetensors file or a torch checkpoint loaded with weights_only=True
    (bare or under "state_dict", DDP's "module." prefix removed)."""
    return read_state_dict(path, wrappers=("state_dict",), strip=("module.",), what="CLIP weights")


def _resolve_weights(source: Path) -> tuple[Path, dict[str, Any] | None]:
    if source.is_file():
        return source, None
    if not source.is_dir():
        raise FileNotFoundError(f"CLIP weights not found: {source} (give a local file or directory)")
    config = None
    if (source / CONFIG_FILE_NAME).is_file():
        raw = json.loads((source / CONFIG_FILE_NAME).read_text())
        config = raw.get("model_cfg", raw)
    for name in WEIGHT_FILE_NAMES:
        if (source / name).is_file():
            return source / name, config
    raise FileNotFoundError(f"no CLIP weights in {source}: expected one of {', '.join(WEIGHT_FILE_NAMES)}")


class ClassTokenBlock(nn.Module):
    """The vision tower's last residual block computing only the class token's output (N, 1, D):
    the pooled image embedding reads nothing else, so the other 729 tokens' attention output,
    out-projection and MLP (~2.4 % of ViT-H/14's FLOPs) are skipped. The class token's row is
    the same computation as in the full block (its query attends to every token's key/value).
    Holds the block's own submodules under their names, so state dicts are unchanged."""

    def __init__(self, block: nn.Module) -> None:
        super().__init__()
        for name in ("ln_1", "attn", "ls_1", "ln_2", "mlp", "ls_2"):
            setattr(self, name, getattr(block, name))

    def forward(self, x: torch.Tensor, attn_mask: torch.Tensor | None = None) -> torch.Tensor:
        if attn_mask is not None:
            raise ValueError("the vision tower's class-token block takes no attention mask")
        tokens = self.ln_1(x)
        cls = x[:, :1] + self.ls_1(self.attn(tokens[:, :1], tokens, tokens, need_weights=False)[0])
        return cls + self.ls_2(self.mlp(self.ln_2(cls)))


def use_class_token_block(visual: nn.Module) -> bool:
    """Swap the last block of an open_clip VisionTransformer for `ClassTokenBlock` when its
    output is only the class token's pooled embedding (pool "tok", no attention pooling, no
    token output, batch-first blocks of the plain residual kind). Returns whether it did."""
    from open_clip.transformer import ResidualAttentionBlock

    transformer = getattr(visual, "transformer", None)
    blocks = getattr(transformer, "resblocks", None)
    eligible = (
        blocks is not None
        and len(blocks) > 0
        and getattr(visual, "pool_type", None) == "tok"
        and getattr(visual, "attn_pool", None) is None
        and not getattr(visual, "output_tokens", False)
        and getattr(transformer, "batch_first", False)
        and type(blocks[-1]) is ResidualAttentionBlock
        and not hasattr(blocks[-1], "ln_1_kv")
    )
    if eligible:
        blocks[-1] = ClassTokenBlock(blocks[-1])
    return eligible


def load_clip_state(model: nn.Module, state: Mapping[str, torch.Tensor]) -> None:
    """Strict load with a readable report of missing, unexpected and mis-shaped tensors."""
    strict_load(model, state, "CLIP checkpoint", detail=" config")


class ClipEncoder(nn.Module):
    """Per-frame image embeddings and per-token text hidden states of an open_clip CLIP."""

    def __init__(self, model: nn.Module, *, input_size: int | None = None) -> None:
        super().__init__()
        from open_clip.tokenizer import SimpleTokenizer

        self.model = model.eval()
        self.class_token_block = use_class_token_block(model.visual)
        image_size = model.visual.image_size
        self.input_size = int(input_size or (image_size[0] if isinstance(image_size, Sequence) else image_size))
        self.tokenizer = SimpleTokenizer(context_length=model.context_length)
        self.register_buffer("mean", torch.tensor(OPENAI_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(OPENAI_STD).view(1, 3, 1, 1), persistent=False)

    @classmethod
    def from_config(cls, model_cfg: Mapping[str, Any], *, input_size: int | None = None) -> ClipEncoder:
        """Random weights (tests, demos); load real weights with `load_clip_encoder`."""
        return cls(build_clip_model(model_cfg), input_size=input_size or default_input_size(model_cfg))

    @property
    def device(self) -> torch.device:
        return self.mean.device

    @property
    def image_dim(self) -> int:
        return int(self.model.visual.output_dim)

    @property
    def text_dim(self) -> int:
        return int(self.model.transformer.width)

    @property
    def text_seq_len(self) -> int:
        return int(self.model.context_length)

    def _autocast(self) -> torch.autocast:
        return torch.autocast("cuda", dtype=torch.bfloat16, enabled=self.device.type == "cuda")

    def preprocess(self, images: torch.Tensor) -> torch.Tensor:
        """uint8 (N, 3, H, W) -> normalised float (N, 3, S, S) on the encoder's device."""
        images = resize_uint8(images.to(self.device), (self.input_size, self.input_size))
        return (images.float() / 255.0 - self.mean) / self.std

    @torch.no_grad()
    def image_features(self, frames: torch.Tensor, *, batch_size: int | None = None) -> torch.Tensor:
        """uint8 frames (B, T, H, W, 3) -> unit-norm image embeddings (B, T, image_dim), float32."""
        images = frames_to_images(frames)
        chunk = batch_size or max(1, images.shape[0])
        outputs = []
        for start in range(0, images.shape[0], chunk):
            pixels = self.preprocess(images[start : start + chunk])
            with self._autocast():
                features = self.model.encode_image(pixels)
            outputs.append(F.normalize(features.float(), dim=-1))
        if not outputs:
            return torch.zeros(*frames.shape[:2], self.image_dim, device=self.device)
        return torch.cat(outputs).view(*frames.shape[:2], -1)

    def tokenize(self, prompts: Sequence[str]) -> torch.Tensor:
        if isinstance(prompts, str):
            raise TypeError("prompts must be a list of strings, not one string")
        return self.tokenizer(list(prompts)).to(self.device)

    @torch.no_grad()
    def text_features(self, prompts: Sequence[str]) -> torch.Tensor:
        """Prompts -> per-token final hidden states after ln_final, unit-norm (B, context_length, text_dim)."""
        tokens = self.tokenize(prompts)
        model = self.model
        with self._autocast():
            cast_dtype = model.transformer.get_cast_dtype()
            x = model.token_embedding(tokens).to(cast_dtype) + model.positional_embedding.to(cast_dtype)
            x = model.transformer(x, attn_mask=model.attn_mask)
            x = model.ln_final(x)
        return F.normalize(x.float(), dim=-1)


def load_clip_encoder(
    source: str | Path,
    *,
    model_cfg: Mapping[str, Any] | None = None,
    input_size: int | None = None,
    device: str | torch.device = "cpu",
) -> ClipEncoder:
    """CLIP from a local weights file or directory (never downloads).

    A directory may hold `open_clip_config.json` (used when `model_cfg` is None) and one of
    open_clip_model.safetensors / open_clip_pytorch_model.bin. Without any config the released
    DFN5B ViT-H/14-378 architecture is assumed.
    """
    weights, dir_cfg = _resolve_weights(Path(source))
    cfg = dict(model_cfg or dir_cfg or released_model_cfg())
    model = build_clip_model(cfg)
    load_clip_state(model, read_clip_state_dict(weights))
    return ClipEncoder(model, input_size=input_size or default_input_size(cfg)).to(device)
