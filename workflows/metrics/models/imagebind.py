"""ImageBind's vision and audio towers (Girdhar et al. 2023), the networks behind IB-score.

Follows imagebind-packaged 0.1.2 (facebookresearch/ImageBind); checked against its outputs (tests/test_imagebind.py).

MMAudio's av-benchmark scores audio-visual agreement with `imagebind_model.imagebind_huge(
pretrained=True)` (weights `imagebind_huge.pth`): the cosine similarity of the vision embedding
of the video and the audio embedding of the generated audio. Only those two modalities are
rebuilt here, with the reference's key names so that the released state dict loads as it is.

Vision ("vision" modality; ViT-H/14 for imagebind_huge):
    input (B, 3, 2, 224, 224): two RGB frames (a single frame would be repeated: PadIm2Video);
    Conv3d kernel = stride = (2, 14, 14), no bias -> a (1, 16, 16) grid, flattened to 256 tokens;
    a class token in front, a learned positional embedding (1, 257, D) added; a LayerNorm
    (eps 1e-6) BEFORE the blocks; pre-norm blocks (LayerNorm eps 1e-6, multi-head attention with
    a fused in-projection with bias, exact GELU MLP of ratio 4); head: LayerNorm (eps 1e-6), the
    class token, Linear(D, out, no bias); postprocessing: L2 normalisation.
Audio ("audio" modality; ViT-B):
    input (B, 1, 128, 204): a normalised log-mel clip; Conv2d kernel 16, stride 10, no bias ->
    a (12, 19) grid, 228 tokens, then a LayerNorm (eps 1e-5, the stem's); class token and a
    learned positional embedding (1, 229, D); NO pre-block LayerNorm; the blocks' attention has
    `add_bias_kv` (one learned key and one learned value appended to every sequence); head as
    vision's; postprocessing: L2 normalisation times exp(log_logit_scale) (a fixed buffer, log 20,
    clipped at 100), so audio embeddings have norm 20. The scale does not change a cosine.
Clips: a (B, S, ...) input (S clips per item) is embedded clip by clip and the S postprocessed
embeddings are averaged (not re-normalised), as the reference `ImageBindModel.forward` does for
any input of 5 or more dimensions.

Checkpoint: `imagebind_huge.pth` is the whole `ImageBindModel` state dict (the reference loads it
with `load_state_dict`, strict). Its keys are `modality_{preprocessors,trunks,heads,postprocessors}
.<modality>.…` for the modalities vision, text, audio, depth, thermal and imu. `load_imagebind`
keeps the vision and audio keys, requires every one of them (strict: missing, unexpected or
mis-shaped keys raise ValueError naming them), and IGNORES the text, depth, thermal and imu keys
by name (`IGNORED_MODALITIES`): IB-score never uses them. A key of any other form is an error.
A `.safetensors` conversion is read key by key, so the other modalities are never loaded.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from dub.model.network.layers import GeluMlp
from dub.model.weights.state_dicts import read_state_dict, strict_load

__all__ = [
    "IGNORED_MODALITIES",
    "IMAGEBIND_HUGE",
    "IMAGEBIND_TINY",
    "MODALITIES",
    "ImageBindConfig",
    "ImageBindVisionAudio",
    "checkpoint_shapes",
    "imagebind_state_dict",
    "load_imagebind",
]

MODALITIES = ("vision", "audio")  # what IB-score needs
IGNORED_MODALITIES = ("text", "depth", "thermal", "imu")  # in the released file, never loaded
_PARTS = ("modality_preprocessors", "modality_trunks", "modality_heads", "modality_postprocessors")


@dataclass(frozen=True)
class ImageBindConfig:
    vision_width: int = 1280
    vision_depth: int = 32
    vision_heads: int = 16
    audio_width: int = 768
    audio_depth: int = 12
    audio_heads: int = 12
    out_dim: int = 1024
    # input geometry (the released model's; fixed by its positional embeddings)
    image_size: int = 224
    patch_size: int = 14
    frames: int = 2
    mel_bins: int = 128
    mel_frames: int = 204
    audio_kernel: int = 16
    audio_stride: int = 10
    audio_logit_scale: float = 20.0  # the buffer's initial value; the checkpoint's buffer is loaded

    def as_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping) -> ImageBindConfig:
        return cls(**dict(data))

    @property
    def vision_tokens(self) -> int:
        return 1 + (self.image_size // self.patch_size) ** 2

    @property
    def audio_grid(self) -> tuple[int, int]:
        k, s = self.audio_kernel, self.audio_stride
        return (self.mel_bins - k) // s + 1, (self.mel_frames - k) // s + 1

    @property
    def audio_tokens(self) -> int:
        rows, cols = self.audio_grid
        return 1 + rows * cols


IMAGEBIND_HUGE = ImageBindConfig()  # imagebind_model.imagebind_huge()
# the reference fixture's model (tests/data/imagebind_fixture): real geometry, tiny widths
IMAGEBIND_TINY = ImageBindConfig(
    vision_width=16, vision_depth=2, vision_heads=2, audio_width=16, audio_depth=2, audio_heads=2, out_dim=24
)


# ------------------------------------------------------------------------------ blocks


class _Block(nn.Module):
    def __init__(self, dim: int, heads: int, add_bias_kv: bool) -> None:
        super().__init__()
        # the reference's own module: fused in_proj, out_proj, bias_k / bias_v appended to the keys
        self.attn = nn.MultiheadAttention(dim, heads, add_bias_kv=add_bias_kv, batch_first=True)
        self.norm_1 = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = GeluMlp(dim, 4 * dim)
        self.norm_2 = nn.LayerNorm(dim, eps=1e-6)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.norm_1(x)
        x = x + self.attn(y, y, y, need_weights=False)[0]
        return x + self.mlp(self.norm_2(x))


class _Trunk(nn.Module):
    """`modality_trunks.<m>`: optional pre-block LayerNorm (`pre_transformer_layer.0`), blocks."""

    def __init__(self, dim: int, depth: int, heads: int, pre_norm: bool, add_bias_kv: bool) -> None:
        super().__init__()
        self.pre_transformer_layer = nn.Sequential(nn.LayerNorm(dim, eps=1e-6) if pre_norm else nn.Identity())
        self.blocks = nn.Sequential(*[_Block(dim, heads, add_bias_kv) for _ in range(depth)])

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.blocks(self.pre_transformer_layer(tokens))


class _ClassToken(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x[:, 0]


def _head(dim: int, out_dim: int) -> nn.Sequential:
    """`modality_heads.<m>`: LayerNorm (.0), class token (.1), Linear without bias (.2)."""
    return nn.Sequential(nn.LayerNorm(dim, eps=1e-6), _ClassToken(), nn.Linear(dim, out_dim, bias=False))


class _PosEmbed(nn.Module):
    def __init__(self, tokens: int, dim: int) -> None:
        super().__init__()
        self.pos_embed = nn.Parameter(torch.empty(1, tokens, dim))


class _VisionStem(nn.Module):
    """`rgbt_stem`: proj.0 is the reference's PadIm2Video (no weights), proj.1 the Conv3d."""

    def __init__(self, config: ImageBindConfig) -> None:
        super().__init__()
        kernel = (config.frames, config.patch_size, config.patch_size)
        self.proj = nn.Sequential(nn.Identity(), nn.Conv3d(3, config.vision_width, kernel, stride=kernel, bias=False))
        self.frames = config.frames

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[2] == 1:  # a single image becomes a 2-frame clip (PadIm2Video "repeat")
            x = x.repeat(1, 1, self.frames, 1, 1)
        return self.proj(x).flatten(2).transpose(1, 2)


class _AudioStem(nn.Module):
    def __init__(self, config: ImageBindConfig) -> None:
        super().__init__()
        self.proj = nn.Conv2d(1, config.audio_width, config.audio_kernel, stride=config.audio_stride, bias=False)
        self.norm_layer = nn.LayerNorm(config.audio_width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm_layer(self.proj(x).flatten(2).transpose(1, 2))


class _Preprocessor(nn.Module):
    """`modality_preprocessors.<m>`: stem tokens, class token in front, positional embedding."""

    def __init__(self, stem: nn.Module, tokens: int, dim: int) -> None:
        super().__init__()
        self.rgbt_stem = stem
        self.cls_token = nn.Parameter(torch.empty(1, 1, dim))
        self.pos_embedding_helper = _PosEmbed(tokens, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        tokens = self.rgbt_stem(x)
        tokens = torch.cat([self.cls_token.expand(tokens.shape[0], -1, -1), tokens], dim=1)
        return tokens + self.pos_embedding_helper.pos_embed


class _Normalize(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.normalize(x, dim=-1, p=2)


class _LogitScale(nn.Module):
    """The reference's LearnableLogitScaling(learnable=False): a buffer, in the checkpoint."""

    def __init__(self, init: float, max_scale: float = 100.0) -> None:
        super().__init__()
        self.max_scale = max_scale
        self.register_buffer("log_logit_scale", torch.tensor(float(init)).log())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.clip(self.log_logit_scale.exp(), max=self.max_scale) * x


class ImageBindVisionAudio(nn.Module):
    """The vision and audio parts of `ImageBindModel`, with its module (and so key) names."""

    def __init__(self, config: ImageBindConfig = IMAGEBIND_HUGE) -> None:
        super().__init__()
        self.config = config
        vw, aw = config.vision_width, config.audio_width
        self.modality_preprocessors = nn.ModuleDict(
            {
                "vision": _Preprocessor(_VisionStem(config), config.vision_tokens, vw),
                "audio": _Preprocessor(_AudioStem(config), config.audio_tokens, aw),
            }
        )
        self.modality_trunks = nn.ModuleDict(
            {
                "vision": _Trunk(vw, config.vision_depth, config.vision_heads, pre_norm=True, add_bias_kv=False),
                "audio": _Trunk(aw, config.audio_depth, config.audio_heads, pre_norm=False, add_bias_kv=True),
            }
        )
        self.modality_heads = nn.ModuleDict({"vision": _head(vw, config.out_dim), "audio": _head(aw, config.out_dim)})
        self.modality_postprocessors = nn.ModuleDict(
            {
                "vision": _Normalize(),
                "audio": nn.Sequential(_Normalize(), _LogitScale(config.audio_logit_scale)),
            }
        )

    def _embed(self, modality: str, x: torch.Tensor) -> torch.Tensor:
        tokens = self.modality_trunks[modality](self.modality_preprocessors[modality](x))
        return self.modality_postprocessors[modality](self.modality_heads[modality](tokens))

    def vision_clips(self, clips: torch.Tensor) -> torch.Tensor:
        """(M, 3, 2, 224, 224) normalised frame pairs -> (M, out_dim) unit embeddings."""
        return self._embed("vision", clips)

    def audio_clips(self, mels: torch.Tensor) -> torch.Tensor:
        """(M, 1, 128, 204) normalised mel clips -> (M, out_dim) embeddings of norm exp(scale)."""
        return self._embed("audio", mels)

    def forward(self, modality: str, x: torch.Tensor) -> torch.Tensor:
        """As `ImageBindModel({modality: x})[modality]`: a (B, S, ...) input gives the mean over S of
        the S clip embeddings; a (B, ...) input one embedding per item."""
        per_item = 6 if modality == "vision" else 5
        if x.ndim == per_item:
            b, s = x.shape[:2]
            return self._embed(modality, x.reshape(b * s, *x.shape[2:])).reshape(b, s, -1).mean(dim=1)
        return self._embed(modality, x)


# ------------------------------------------------------------------------------ loading


def _modality(key: str) -> str | None:
    parts = key.split(".")
    return parts[1] if len(parts) > 2 and parts[0] in _PARTS else None


def imagebind_state_dict(source: str | Path | Mapping) -> dict[str, torch.Tensor]:
    """The vision and audio entries of an ImageBind state dict (file or mapping), as float32. The
    other modalities' entries are dropped by name; any key that is not `modality_<part>.<one of
    the six modalities>.…` raises ValueError (it is not an ImageBind checkpoint)."""
    keep = set(MODALITIES)
    known = keep | set(IGNORED_MODALITIES)
    if isinstance(source, (str, Path)) and Path(source).suffix == ".safetensors" and Path(source).is_file():
        from safetensors import safe_open

        with safe_open(str(source), framework="pt", device="cpu") as f:
            keys = list(f.keys())
            _check_keys(keys, known, source)
            return {k: f.get_tensor(k).float() for k in keys if _modality(k) in keep}
    state = read_state_dict(source, strip=("module.",), suffixes=(".pth", ".pt", ".bin"), what="ImageBind weights file")
    _check_keys(list(state), known, source)
    return {k: v.float() for k, v in state.items() if _modality(k) in keep}


def _check_keys(keys: list[str], known: set[str], source) -> None:
    strange = sorted(k for k in keys if _modality(k) not in known)
    if strange:
        raise ValueError(
            f"{source} is not an ImageBind state dict: {len(strange)} keys are not "
            f"modality_<part>.<{'|'.join(sorted(known))}>.… (first: {strange[:5]})"
        )
    if not any(_modality(k) in MODALITIES for k in keys):
        raise ValueError(f"{source} holds no vision or audio keys of ImageBind")


def load_imagebind(
    path: str | Path | Mapping, config: ImageBindConfig = IMAGEBIND_HUGE, device: str = "cpu"
) -> ImageBindVisionAudio:
    """The vision and audio towers from `imagebind_huge.pth` (read weights-only), its safetensors
    conversion, or a mapping; every vision/audio key must match `config` exactly."""
    state = imagebind_state_dict(path)
    with torch.device("meta"):  # no random init of weights about to be overwritten
        model = ImageBindVisionAudio(config)
    strict_load(
        model,
        state,
        str(path) if not isinstance(path, Mapping) else "the state dict",
        against=f"ImageBind vision/audio towers {config}",
    )
    return model.eval().to(device)


def checkpoint_shapes(config: ImageBindConfig = IMAGEBIND_HUGE) -> dict[str, tuple[int, ...]]:
    """Key -> shape of the vision and audio entries the released state dict holds for `config`."""
    with torch.device("meta"):
        return {k: tuple(v.shape) for k, v in ImageBindVisionAudio(config).state_dict().items()}
