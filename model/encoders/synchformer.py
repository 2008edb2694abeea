"""Synchformer visual branch (MotionFormer with divided space-time attention) as pure PyTorch.

Follows Synchformer's visual branch as MMAudio 1.0.0 bundles it (`mmaudio/ext/synchformer/`); checked against the publisher's fixtures (tests/test_encoders.py).

Weight-compatible with the `vfeat_extractor.*` keys of the released `synchformer_state_dict.pth`
that MMAudio uses for its sync features. Semantics follow the MMAudio fixture README §5.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from dub.model.kernels.switch import KernelSwitch, self_check_tolerance, self_check_verdict
from dub.model.network.layers import GeluMlp
from dub.model.weights.state_dicts import read_state_dict, strict_load

KEY_PREFIX = "vfeat_extractor."


@dataclass(frozen=True)
class SynchformerConfig:
    embed_dim: int = 768
    depth: int = 12
    num_heads: int = 12
    mlp_ratio: float = 4.0
    patch_size: int = 16
    temporal_patch_size: int = 2  # frames per tubelet
    temporal_resolution: int = 8  # tubelets (output tokens) per segment
    crop_size: int = 224
    in_channels: int = 3
    qkv_bias: bool = True
    norm_eps: float = 1e-6
    agg_num_heads: int = 12
    agg_ff_dim: int = 3072
    agg_norm_eps: float = 1e-6

    @property
    def segment_frames(self) -> int:
        return self.temporal_resolution * self.temporal_patch_size

    @property
    def grid_size(self) -> int:
        return self.crop_size // self.patch_size

    @property
    def num_spatial_patches(self) -> int:
        return self.grid_size**2

    @classmethod
    def released(cls) -> SynchformerConfig:
        """The ViT-B/16 MotionFormer of the released Synchformer (224 crop, 768 wide, 12 x 12)."""
        return cls()

    @classmethod
    def from_fixture_json(cls, path: str | Path) -> SynchformerConfig:
        """Read the MMAudio fixture's config.json (`patched` + `VIT` + `spatial_agg_layer`)."""
        raw = json.loads(Path(path).read_text())
        try:
            vit, patched, agg = raw["VIT"], raw.get("patched", {}), raw["spatial_agg_layer"]
        except KeyError as err:
            raise ValueError(f"{path}: not a Synchformer fixture config (missing section {err})") from err

        def pick(key: str) -> Any:
            return patched[key] if key in patched else vit[key]

        crop = patched.get("TEST_CROP_SIZE", patched.get("TRAIN_CROP_SIZE", 224))
        return cls(
            embed_dim=int(pick("EMBED_DIM")),
            depth=int(pick("DEPTH")),
            num_heads=int(pick("NUM_HEADS")),
            mlp_ratio=float(vit["MLP_RATIO"]),
            patch_size=int(vit["PATCH_SIZE"]),
            temporal_patch_size=int(vit["PATCH_SIZE_TEMP"]),
            temporal_resolution=int(vit["TEMPORAL_RESOLUTION"]),
            crop_size=int(crop),
            in_channels=int(vit.get("CHANNELS", 3)),
            qkv_bias=bool(vit.get("QKV_BIAS", True)),
            agg_num_heads=int(agg["nhead"]),
            agg_ff_dim=int(agg["dim_feedforward"]),
            agg_norm_eps=float(agg["layer_norm_eps"]),
        )

    def as_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> SynchformerConfig:
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = set(data) - names
        if unknown:
            raise ValueError(f"unknown SynchformerConfig fields: {sorted(unknown)}")
        return cls(**data)


def _attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    # SDPA folds every leading dim into the batch; flash/efficient kernels want 4-D inputs.
    lead = q.shape[:-2]
    out = F.scaled_dot_product_attention(
        q.reshape(-1, 1, *q.shape[-2:]), k.reshape(-1, 1, *k.shape[-2:]), v.reshape(-1, 1, *v.shape[-2:])
    )
    return out.reshape(*lead, *out.shape[-2:])


def _split_heads(qkv: torch.Tensor, heads: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(N, L, 3 * D) -> q, k, v views (N, heads, L, D // heads): q, k, v are three contiguous
    blocks, heads split as (h, d) inside each."""
    n, length, width = qkv.shape
    return qkv.view(n, length, 3, heads, width // (3 * heads)).permute(2, 0, 3, 1, 4).unbind(0)


def divided_attention(qkv: torch.Tensor, heads: int, *, frames: int, patches: int, along_time: bool) -> torch.Tensor:
    """Attention along time or along space from the qkv projection's output (N, L, 3 * D) ->
    (N, L, D) before the output projection. The CLS query sees all tokens; each group's queries
    see the CLS key/value plus the group. Tokens are CLS, then (frame, patch)."""
    n, length, width = qkv.shape
    q, k, v = _split_heads(qkv, heads)
    cls_out = _attention(q[:, :, :1], k, v)  # (n, h, 1, dh)

    def grouped(t: torch.Tensor) -> torch.Tensor:
        t = t[:, :, 1:].unflatten(2, (frames, patches))  # tokens are (time, space)
        return t.transpose(2, 3) if along_time else t  # (n, h, groups, seq, dh)

    qg, kg, vg = grouped(q), grouped(k), grouped(v)
    groups = qg.shape[2]
    cls_k = k[:, :, None, :1].expand(-1, -1, groups, -1, -1)
    cls_v = v[:, :, None, :1].expand(-1, -1, groups, -1, -1)
    out = _attention(qg, torch.cat((cls_k, kg), dim=3), torch.cat((cls_v, vg), dim=3))
    if along_time:
        out = out.transpose(2, 3)
    out = torch.cat((cls_out, out.flatten(2, 3)), dim=2)  # (n, h, L, dh)
    return out.transpose(1, 2).reshape(n, length, width // 3)


def divided_attention_triton(
    qkv: torch.Tensor, heads: int, *, frames: int, patches: int, along_time: bool
) -> torch.Tensor:
    """`divided_attention` with the groups in one Triton kernel (model/kernels/synchformer_triton.py) that
    reads qkv and writes the output in place, without the copies; CLS's own query through SDPA."""
    from dub.model.kernels.synchformer_triton import grouped_attention

    out = grouped_attention(qkv, heads, frames, patches, along_time)
    q, k, v = _split_heads(qkv, heads)
    cls_out = F.scaled_dot_product_attention(q[:, :, :1], k, v)  # (n, h, 1, dh)
    out[:, 0] = cls_out.flatten(1)
    return out


def _check_divided_attention(device: torch.device, dtype: torch.dtype) -> str | None:
    """The kernel against the SDPA form in float32 on random q/k/v of the released head size,
    both directions; space groups of 70 tokens straddle the 64-query tiles."""
    heads, frames, patches = 2, 4, 70
    generator = torch.Generator().manual_seed(0)
    qkv = 2 * torch.randn(1, 1 + frames * patches, 3 * heads * 64, generator=generator)
    qkv = qkv.to(device=device, dtype=dtype)
    for along_time in (True, False):
        shape = dict(frames=frames, patches=patches, along_time=along_time)
        wrong = self_check_verdict(
            divided_attention_triton(qkv, heads, **shape),
            divided_attention(qkv.float(), heads, **shape),
            self_check_tolerance(dtype),
        )
        if wrong:
            return f"{'time' if along_time else 'space'} attention: {wrong}"
    return None


GROUPED_ATTENTION = KernelSwitch(
    "Synchformer's Triton divided attention",
    "DUB_SYNCHFORMER_TRITON",
    "dub.model.kernels.synchformer_triton",
    "SDPA with concatenated CLS keys",
    self_check=_check_divided_attention,
)


def attention_status(device: str | torch.device) -> str:
    """How DividedAttention runs on `device` (for benchmark notes and logs)."""
    return "Synchformer attention: " + GROUPED_ATTENTION.describe(
        torch.device(device).type, "Triton kernel", "SDPA form"
    )


@torch.library.custom_op("dub::synchformer_divided_attention", mutates_args=())
def _divided_attention_kernel_op(
    qkv: torch.Tensor, heads: int, frames: int, patches: int, along_time: bool
) -> torch.Tensor:
    """The Triton form as one opaque op, so torch.compile neither traces into the kernel launch
    nor breaks its graph there; falls back to the SDPA form if the kernel fails or its
    self-check disagrees (once, warned)."""
    shape = dict(frames=frames, patches=patches, along_time=along_time)
    if GROUPED_ATTENTION.usable_for(qkv):  # a compiled graph keeps calling this op after a failure
        try:
            return divided_attention_triton(qkv, heads, **shape)
        except Exception as exc:  # noqa: BLE001 - a kernel that fails to build must not fail a run
            GROUPED_ATTENTION.disable(exc)
    return divided_attention(qkv, heads, **shape)


@_divided_attention_kernel_op.register_fake
def _(qkv: torch.Tensor, heads: int, frames: int, patches: int, along_time: bool) -> torch.Tensor:
    return qkv.new_empty(*qkv.shape[:-1], qkv.shape[-1] // 3)


class DividedAttention(nn.Module):
    """Attention along time or along space with a shared CLS token (`divided_attention`); on
    CUDA, without autograd, through the Triton kernel (the same attention summed in another
    order; `DUB_SYNCHFORMER_TRITON=0` keeps the SDPA form)."""

    def __init__(self, dim: int, num_heads: int, qkv_bias: bool) -> None:
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"embed_dim {dim} is not divisible by num_heads {num_heads}")
        self.num_heads = num_heads
        self.qkv = nn.Linear(dim, 3 * dim, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor, *, frames: int, patches: int, along_time: bool) -> torch.Tensor:
        qkv = self.qkv(x)
        if qkv.is_cuda and not torch.is_grad_enabled() and GROUPED_ATTENTION.usable():
            out = _divided_attention_kernel_op(qkv, self.num_heads, frames, patches, along_time)
        else:
            out = divided_attention(qkv, self.num_heads, frames=frames, patches=patches, along_time=along_time)
        return self.proj(out)


class DividedSpaceTimeBlock(nn.Module):
    """Time attention (norm3) first, then space attention (norm1), then the MLP (norm2)."""

    def __init__(self, config: SynchformerConfig) -> None:
        super().__init__()
        dim, eps = config.embed_dim, config.norm_eps
        self.norm1 = nn.LayerNorm(dim, eps=eps)
        self.attn = DividedAttention(dim, config.num_heads, config.qkv_bias)
        self.timeattn = DividedAttention(dim, config.num_heads, config.qkv_bias)
        self.norm2 = nn.LayerNorm(dim, eps=eps)
        self.mlp = GeluMlp(dim, int(dim * config.mlp_ratio))
        self.norm3 = nn.LayerNorm(dim, eps=eps)

    def forward(self, x: torch.Tensor, *, frames: int, patches: int) -> torch.Tensor:
        x = x + self.timeattn(self.norm3(x), frames=frames, patches=patches, along_time=True)
        x = x + self.attn(self.norm1(x), frames=frames, patches=patches, along_time=False)
        return x + self.mlp(self.norm2(x))


class PatchEmbed(nn.Module):
    def __init__(self, conv: nn.Module) -> None:
        super().__init__()
        self.proj = conv


def tubelet_embed(x: torch.Tensor, conv: nn.Conv3d) -> tuple[torch.Tensor, tuple[int, int, int]]:
    """`conv` (stride == kernel: non-overlapping tubelets) as one matrix product: x (N, C, T, H, W)
    -> tokens (N, t * h * w, D) ordered (t, h, w), and (t, h, w). The same sums as the
    convolution, and the tokens come out in the order the blocks read, without cuDNN's 3-D
    convolution or the transpose after it (one copy of the input, to gather the tubelets)."""
    n, c, length, height, width = x.shape
    kt, kh, kw = conv.kernel_size
    if tuple(conv.stride) != (kt, kh, kw) or conv.padding != (0, 0, 0) or conv.groups != 1:
        raise ValueError("tubelet_embed needs a convolution with stride == kernel, no padding, one group")
    t, h, w = length // kt, height // kh, width // kw
    x = x[:, :, : t * kt, : h * kh, : w * kw]  # what the convolution leaves out
    tubelets = x.reshape(n, c, t, kt, h, kh, w, kw).permute(0, 2, 4, 6, 1, 3, 5, 7).reshape(n * t * h * w, -1)
    tokens = F.linear(tubelets, conv.weight.reshape(conv.out_channels, -1), conv.bias)
    return tokens.view(n, t * h * w, conv.out_channels), (t, h, w)


class InProjAttention(nn.Module):
    """Multi-head self-attention with nn.MultiheadAttention's parameter names ([Wq; Wk; Wv] stacked)."""

    def __init__(self, dim: int, num_heads: int) -> None:
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"aggregation d_model {dim} is not divisible by nhead {num_heads}")
        self.num_heads = num_heads
        self.in_proj_weight = nn.Parameter(torch.empty(3 * dim, dim))
        self.in_proj_bias = nn.Parameter(torch.zeros(3 * dim))
        self.out_proj = nn.Linear(dim, dim)
        nn.init.xavier_uniform_(self.in_proj_weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, length, dim = x.shape
        qkv = F.linear(x, self.in_proj_weight, self.in_proj_bias)
        q, k, v = qkv.view(n, length, 3, self.num_heads, dim // self.num_heads).permute(2, 0, 3, 1, 4)
        out = F.scaled_dot_product_attention(q, k, v)
        return self.out_proj(out.transpose(1, 2).reshape(n, length, dim))


class SpatialAggregation(nn.Module):
    """Pre-norm transformer encoder layer over one time step's patches; returns the CLS output."""

    def __init__(self, config: SynchformerConfig) -> None:
        super().__init__()
        dim, eps = config.embed_dim, config.agg_norm_eps
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.self_attn = InProjAttention(dim, config.agg_num_heads)
        self.linear1 = nn.Linear(dim, config.agg_ff_dim)
        self.linear2 = nn.Linear(config.agg_ff_dim, dim)
        self.norm1 = nn.LayerNorm(dim, eps=eps)
        self.norm2 = nn.LayerNorm(dim, eps=eps)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x (N, P, D) -> (N, D)."""
        x = torch.cat((self.cls_token.expand(x.shape[0], -1, -1).to(x.dtype), x), dim=1)
        x = x + self.self_attn(self.norm1(x))
        x = x + self.linear2(F.gelu(self.linear1(self.norm2(x))))
        return x[:, 0]


class MotionFormer(nn.Module):
    """The `vfeat_extractor` of Synchformer: 16 frames -> 8 spatially aggregated tokens."""

    def __init__(self, config: SynchformerConfig) -> None:
        super().__init__()
        self.config = config
        dim, p = config.embed_dim, config.patch_size
        # The 2-D patch embedding is in the checkpoint but never used by the forward pass.
        self.patch_embed = PatchEmbed(nn.Conv2d(config.in_channels, dim, kernel_size=p, stride=p))
        self.patch_embed_3d = PatchEmbed(
            nn.Conv3d(
                config.in_channels,
                dim,
                kernel_size=(config.temporal_patch_size, p, p),
                stride=(config.temporal_patch_size, p, p),
            )
        )
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.pos_embed = nn.Parameter(torch.zeros(1, config.num_spatial_patches + 1, dim))
        self.temp_embed = nn.Parameter(torch.zeros(1, config.temporal_resolution, dim))
        self.blocks = nn.ModuleList(DividedSpaceTimeBlock(config) for _ in range(config.depth))
        self.norm = nn.LayerNorm(dim, eps=config.norm_eps)
        self.spatial_attn_agg = SpatialAggregation(config)
        for param in (self.cls_token, self.pos_embed, self.temp_embed, self.spatial_attn_agg.cls_token):
            nn.init.trunc_normal_(param, std=0.02)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x (N, C, T, H, W) -> (N, temporal_resolution, D)."""
        cfg = self.config
        shape = tuple(x.shape)
        x, (frames, gh, gw) = tubelet_embed(x, self.patch_embed_3d.proj)  # (N, t*h*w, D), tokens (t, h, w)
        n, _, dim = x.shape
        patches = gh * gw
        if frames != cfg.temporal_resolution or patches != cfg.num_spatial_patches:
            raise ValueError(
                f"Synchformer expects {cfg.segment_frames} frames of {cfg.crop_size}x{cfg.crop_size} "
                f"per segment ({cfg.temporal_resolution} x {cfg.num_spatial_patches} tokens); "
                f"got {frames} x {patches} tokens from input {shape}: resize/crop the frames first"
            )
        pos = self.pos_embed[:, 1:, None] + self.temp_embed[:, None]  # (1, P, t, D)
        pos = pos.transpose(1, 2).reshape(1, frames * patches, dim)
        cls = (self.cls_token + self.pos_embed[:, :1]).expand(n, -1, -1)
        x = torch.cat((cls.to(x.dtype), x + pos.to(x.dtype)), dim=1)
        for block in self.blocks:
            x = block(x, frames=frames, patches=patches)
        x = self.norm(x[:, 1:])  # (N, t*P, D)
        x = self.spatial_attn_agg(x.reshape(n * frames, patches, dim))
        return x.view(n, frames, dim)


class Synchformer(nn.Module):
    """MMAudio's sync-feature extractor: (B', S', 16, 3, H, W) in [-1, 1] -> (B', S', 8, D)."""

    def __init__(self, config: SynchformerConfig | None = None) -> None:
        super().__init__()
        self.config = config or SynchformerConfig.released()
        self.vfeat_extractor = MotionFormer(self.config)

    @property
    def embed_dim(self) -> int:
        return self.config.embed_dim

    def forward(self, segments: torch.Tensor) -> torch.Tensor:
        cfg = self.config
        if segments.ndim != 6 or segments.shape[2] != cfg.segment_frames or segments.shape[3] != cfg.in_channels:
            raise ValueError(
                f"Synchformer input must be (B, S, {cfg.segment_frames}, {cfg.in_channels}, H, W); "
                f"got {tuple(segments.shape)}"
            )
        b, s, t, c, h, w = segments.shape
        x = segments.reshape(b * s, t, c, h, w).transpose(1, 2)  # (B'S', C, T, H, W)
        return self.vfeat_extractor(x).view(b, s, cfg.temporal_resolution, cfg.embed_dim)


def segment_frames(frames: torch.Tensor, segment: int = 16, stride: int = 8) -> torch.Tensor:
    """Cut (B, T, C, H, W) into overlapping segments -> (B*S, 1, segment, C, H, W), segment index fastest."""
    if frames.ndim != 5:
        raise ValueError(f"frames must be (B, T, C, H, W); got shape {tuple(frames.shape)}")
    b, t = frames.shape[:2]
    if t < segment:
        raise ValueError(f"need at least {segment} frames for one sync segment; got {t}")
    windows = frames.unfold(1, segment, stride)  # (B, S, C, H, W, segment)
    windows = windows.permute(0, 1, 5, 2, 3, 4)  # (B, S, segment, C, H, W)
    return windows.reshape(-1, 1, *windows.shape[2:])


def num_segments(num_frames: int, segment: int = 16, stride: int = 8) -> int:
    return 0 if num_frames < segment else (num_frames - segment) // stride + 1


@torch.no_grad()
def synchformer_features(model: Synchformer, frames: torch.Tensor, *, batch_size: int | None = None) -> torch.Tensor:
    """Sync features for (B, T, C, H, W) frames in [-1, 1] -> (B, S*8, D), segment-major.

    `batch_size` bounds how many segments run at once (memory); None runs them all together.
    """
    cfg = model.config
    b = frames.shape[0]
    segments = segment_frames(frames, segment=cfg.segment_frames, stride=cfg.segment_frames // 2)
    chunk = batch_size or segments.shape[0]
    outputs = [model(segments[i : i + chunk]) for i in range(0, segments.shape[0], chunk)]
    out = torch.cat(outputs, dim=0)  # (B*S, 1, t, D)
    return out.reshape(b, -1, cfg.embed_dim)


def load_synchformer(
    source: str | Path | Mapping[str, torch.Tensor], config: SynchformerConfig | None = None
) -> Synchformer:
    """Build a Synchformer and load `vfeat_extractor.*` weights strictly (other keys are ignored).

    `source` is a .safetensors file, a torch checkpoint (loaded with weights_only=True) or a state dict.
    """
    if isinstance(source, (str, Path)):
        source = read_state_dict(source, wrappers=("state_dict",), what="Synchformer weights")
    state = {k: v for k, v in source.items() if k.startswith(KEY_PREFIX)}
    if not state:
        raise ValueError(f"no '{KEY_PREFIX}*' keys in the Synchformer checkpoint; is this synchformer_state_dict.pth?")
    model = Synchformer(config)
    strict_load(
        model,
        state,
        "Synchformer checkpoint",
        detail=f" config (embed_dim={model.config.embed_dim}, depth={model.config.depth}, "
        f"crop_size={model.config.crop_size})",
    )
    return model.eval()
