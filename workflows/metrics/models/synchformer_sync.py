"""The full Synchformer (Iashin et al. 2024) that DeSync needs: visual + audio branches and the sync head.

Follows av-benchmark (hkchengrex/av-benchmark) commit 050a5cd; checked against its outputs (tests/test_desync.py).

MMAudio's released `synchformer_state_dict.pth` holds the whole model; the generator uses only its
visual branch (`dub.model.encoders.synchformer`, keys `vfeat_extractor.*`). The offset classifier that
av-benchmark's DeSync calls (`Synchformer.compare_v_a`) needs the rest too, so every key of the
file is consumed here (strict over the whole file):

    vfeat_extractor.*               MotionFormer, reused from dub.model.encoders.synchformer (not duplicated)
    afeat_extractor.ast.*           AST (HF's ASTModel layout: embeddings, encoder.layer.N, layernorm)
    afeat_extractor.freq_attn_agg.* one pre-norm TransformerEncoderLayer + CLS over the frequency
                                    patches of each time step (the same layer as the visual branch's
                                    spatial aggregation, so dub.model.encoders.synchformer's class is reused)
    vproj.*, aproj.*                linear projections into the head's width
    transformer.*                   the sync head: input LayerNorms, OFF/MOD tokens, a learned
                                    198-position embedding, minGPT blocks (key/query/value/proj,
                                    mlp.0/mlp.2), ln_f, off_head -> 21 offset classes

Facts taken from av-benchmark (`av_bench/synchformer/*.py`, `extract.py`, `extract_video.py`):

- segments: video 16 frames at 25 fps, stride 8 (0.64 s every 0.32 s); audio 10240 samples at
  16 kHz, stride 5120 (the same spans). Segments are encoded independently, so only the segments
  the head will see need to be computed.
- audio front end per segment: torchaudio MelSpectrogram(16 kHz, win 400, hop 160, n_fft 1024,
  128 mels; i.e. periodic Hann, centre reflect padding, power 2, HTK mel scale, no filter
  normalisation) -> 65 frames; log(x + 1e-6); zero-pad (after the log) to 66 frames;
  (x + 4.2677393) / (2 * 4.5689974). The AST then sees (66 time, 128 mel) and patches it 16 x 16
  with stride 10 x 10: 12 frequency x 6 time tokens, + CLS + distillation token.
- audio features: AST output without its two special tokens, aggregated over frequency -> 6
  tokens per segment; video: 8 tokens per segment.
- head input: (B, 14, 8, D) video and (B, 14, 6, D) audio features; its position embedding has
  exactly 1 + 14 * 8 + 1 + 14 * 6 = 198 entries, so the head takes exactly 14 segments.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from dub.model.encoders.mmaudio import sync_pixels
from dub.model.encoders.synchformer import MotionFormer, SpatialAggregation, SynchformerConfig
from dub.model.weights.state_dicts import read_state_dict, strict_load

__all__ = [
    "AUDIO_SEGMENT_SAMPLES",
    "AUDIO_STRIDE_SAMPLES",
    "AudioBranchConfig",
    "AudioFeatureExtractor",
    "FullSynchformer",
    "FullSynchformerConfig",
    "HEAD_SEGMENTS",
    "NUM_OFFSET_CLASSES",
    "SAMPLE_RATE",
    "SyncHead",
    "SyncHeadConfig",
    "SyncMelFrontEnd",
    "VIDEO_FPS",
    "VIDEO_SEGMENT_FRAMES",
    "VIDEO_STRIDE_FRAMES",
    "load_full_synchformer",
    "mel_filterbank",
    "num_audio_segments",
    "num_video_segments",
]

SAMPLE_RATE = 16000
VIDEO_FPS = 25.0
VIDEO_SEGMENT_FRAMES = 16
VIDEO_STRIDE_FRAMES = 8
AUDIO_SEGMENT_SAMPLES = 10240  # 0.64 s, the span of 16 frames at 25 fps
AUDIO_STRIDE_SAMPLES = 5120  # 0.32 s
HEAD_SEGMENTS = 14  # the head's 198 positions: 1 + 14 * 8 + 1 + 14 * 6
NUM_OFFSET_CLASSES = 21  # -2.0 .. +2.0 s in 0.2 s steps

MEL_WINDOW = 400
MEL_HOP = 160
MEL_FFT = 1024
MEL_BANDS = 128
SPEC_FRAMES = 66  # 1 + 10240 / 160 = 65 frames, padded to the 66 the AST was trained on
LOG_OFFSET = 1e-6
MEL_MEAN = -4.2677393
MEL_STD = 4.5689974


def num_video_segments(num_frames: int) -> int:
    """Segments of 16 frames, stride 8, in `num_frames` frames (0 when fewer than 16)."""
    return 0 if num_frames < VIDEO_SEGMENT_FRAMES else (num_frames - VIDEO_SEGMENT_FRAMES) // VIDEO_STRIDE_FRAMES + 1


def num_audio_segments(num_samples: int) -> int:
    """Segments of 10240 samples, stride 5120, in `num_samples` samples (0 when fewer than 10240)."""
    if num_samples < AUDIO_SEGMENT_SAMPLES:
        return 0
    return (num_samples - AUDIO_SEGMENT_SAMPLES) // AUDIO_STRIDE_SAMPLES + 1


# ------------------------------------------------------------------------------ configs


@dataclass(frozen=True)
class AudioBranchConfig:
    """The AST of the audio branch (HF ASTConfig's defaults, position embedding cut to 66 frames)."""

    hidden_size: int = 768
    depth: int = 12
    num_heads: int = 12
    intermediate_size: int = 3072
    patch_size: int = 16
    freq_stride: int = 10
    time_stride: int = 10
    n_mels: int = MEL_BANDS
    spec_frames: int = SPEC_FRAMES
    qkv_bias: bool = True
    norm_eps: float = 1e-12  # HF ASTConfig.layer_norm_eps
    agg_norm_eps: float = 1e-6  # the frequency aggregation layer

    @property
    def freq_patches(self) -> int:
        return (self.n_mels - self.patch_size) // self.freq_stride + 1

    @property
    def time_patches(self) -> int:
        """Audio tokens per segment (6 for the released model)."""
        return (self.spec_frames - self.patch_size) // self.time_stride + 1


@dataclass(frozen=True)
class SyncHeadConfig:
    """The sync transformer (`GlobalTransformer`): minGPT blocks over [OFF, video, MOD, audio]."""

    n_embd: int = 768
    n_layer: int = 3
    n_head: int = 8
    num_classes: int = NUM_OFFSET_CLASSES
    segments: int = HEAD_SEGMENTS
    norm_eps: float = 1e-5  # plain nn.LayerNorm


@dataclass(frozen=True)
class FullSynchformerConfig:
    visual: SynchformerConfig = dataclasses.field(default_factory=SynchformerConfig)
    audio: AudioBranchConfig = dataclasses.field(default_factory=AudioBranchConfig)
    head: SyncHeadConfig = dataclasses.field(default_factory=SyncHeadConfig)

    @property
    def head_positions(self) -> int:
        """1 + S * 8 + 1 + S * 6 = 198 for the released model."""
        return 2 + self.head.segments * (self.visual.temporal_resolution + self.audio.time_patches)

    @classmethod
    def released(cls) -> FullSynchformerConfig:
        """MMAudio's synchformer_state_dict.pth: ViT-B MotionFormer, AST-B, 3-layer 768-wide head."""
        return cls()

    @classmethod
    def tiny(cls, width: int = 16) -> FullSynchformerConfig:
        """A test-size model with the released geometry where it matters (14 segments, 21 classes,
        8 video and 6 audio tokens per segment, 128 mels) and a 32-pixel crop. Same sizes as the
        av-benchmark fixture in tests/data/synchformer_sync_fixture."""
        visual = SynchformerConfig(
            embed_dim=width, depth=1, num_heads=2, crop_size=32, agg_num_heads=2, agg_ff_dim=4 * width
        )
        audio = AudioBranchConfig(hidden_size=width, depth=2, num_heads=2, intermediate_size=2 * width)
        return cls(visual=visual, audio=audio, head=SyncHeadConfig(n_embd=width, n_layer=2, n_head=2))

    def as_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> FullSynchformerConfig:
        unknown = set(data) - {"visual", "audio", "head"}
        if unknown:
            raise ValueError(f"unknown FullSynchformerConfig fields: {sorted(unknown)}")
        return cls(
            visual=SynchformerConfig.from_dict(data.get("visual", {})),
            audio=AudioBranchConfig(**data.get("audio", {})),
            head=SyncHeadConfig(**data.get("head", {})),
        )


# ------------------------------------------------------------------------------ audio front end


def mel_filterbank(
    n_freqs: int = MEL_FFT // 2 + 1,
    n_mels: int = MEL_BANDS,
    sample_rate: int = SAMPLE_RATE,
    f_min: float = 0.0,
    f_max: float | None = None,
) -> np.ndarray:
    """(n_freqs, n_mels) triangles as torchaudio's `melscale_fbanks` draws them by default: HTK
    mel scale (2595 log10(1 + f / 700)), triangles linear in Hz between mel-spaced corners, no
    area normalisation. (VGGish draws its triangles on the mel axis instead: other numbers.)"""
    f_max = sample_rate / 2 if f_max is None else f_max

    def hz_to_mel(hz: Any) -> Any:
        return 2595.0 * np.log10(1.0 + np.asarray(hz, dtype=np.float64) / 700.0)

    bins_hz = np.linspace(0.0, sample_rate // 2, n_freqs)
    corners = 700.0 * (10.0 ** (np.linspace(hz_to_mel(f_min), hz_to_mel(f_max), n_mels + 2) / 2595.0) - 1.0)
    widths = np.diff(corners)
    slopes = corners[None, :] - bins_hz[:, None]
    rising = -slopes[:, :-2] / widths[:-1]
    falling = slopes[:, 2:] / widths[1:]
    return np.maximum(0.0, np.minimum(rising, falling))


class SyncMelFrontEnd:
    """16 kHz audio segments -> the AST's normalised log-mel input, as av-benchmark's
    `encode_audio_with_sync` computes it. A plain object (no nn.Module state), so building the
    model on the meta device and loading weights never touches the window or the filter bank."""

    def __init__(self) -> None:
        self._cache: dict[torch.device, tuple[torch.Tensor, torch.Tensor]] = {}

    def _tensors(self, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        if device not in self._cache:
            window = torch.hann_window(MEL_WINDOW, periodic=True, device=device)
            fbank = torch.from_numpy(mel_filterbank()).to(device=device, dtype=torch.float32)
            self._cache[device] = (window, fbank)
        return self._cache[device]

    def power_mel(self, wav: torch.Tensor) -> torch.Tensor:
        """(..., L) -> (..., 128, 1 + L // 160) power mel spectrogram (centre-padded STFT)."""
        window, fbank = self._tensors(wav.device)
        lead = wav.shape[:-1]
        spec = torch.stft(
            wav.reshape(-1, wav.shape[-1]).float(),
            n_fft=MEL_FFT,
            hop_length=MEL_HOP,
            win_length=MEL_WINDOW,
            window=window,
            center=True,
            pad_mode="reflect",
            normalized=False,
            onesided=True,
            return_complex=True,
        )
        power = spec.abs().pow(2.0)  # (N, 513, frames)
        mel = torch.matmul(power.transpose(-1, -2), fbank).transpose(-1, -2)
        return mel.reshape(*lead, *mel.shape[-2:])

    def __call__(self, segments: torch.Tensor) -> torch.Tensor:
        """(..., 10240) audio segments -> (..., 128, 66) normalised log mel (mel x time)."""
        x = torch.log(self.power_mel(segments) + LOG_OFFSET)
        short = SPEC_FRAMES - x.shape[-1]
        x = F.pad(x, (0, short)) if short > 0 else x[..., :SPEC_FRAMES]  # zeros after the log, as the reference
        return (x - MEL_MEAN) / (2 * MEL_STD)


# ------------------------------------------------------------------------------ AST (audio branch)


class _Dense(nn.Module):
    """A Linear kept under the name `dense`, as HF's AST nests its projections."""

    def __init__(self, dim_in: int, dim_out: int) -> None:
        super().__init__()
        self.dense = nn.Linear(dim_in, dim_out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.dense(x)


class _ASTSelfAttention(nn.Module):
    def __init__(self, config: AudioBranchConfig) -> None:
        super().__init__()
        dim = config.hidden_size
        if dim % config.num_heads:
            raise ValueError(f"AST hidden_size {dim} is not divisible by num_heads {config.num_heads}")
        self.num_heads = config.num_heads
        self.query = nn.Linear(dim, dim, bias=config.qkv_bias)
        self.key = nn.Linear(dim, dim, bias=config.qkv_bias)
        self.value = nn.Linear(dim, dim, bias=config.qkv_bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, length, dim = x.shape

        def heads(t: torch.Tensor) -> torch.Tensor:
            return t.view(n, length, self.num_heads, dim // self.num_heads).transpose(1, 2)

        out = F.scaled_dot_product_attention(heads(self.query(x)), heads(self.key(x)), heads(self.value(x)))
        return out.transpose(1, 2).reshape(n, length, dim)


class _ASTAttention(nn.Module):
    def __init__(self, config: AudioBranchConfig) -> None:
        super().__init__()
        self.attention = _ASTSelfAttention(config)
        self.output = _Dense(config.hidden_size, config.hidden_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.output(self.attention(x))


class ASTLayer(nn.Module):
    """Pre-norm ViT block under HF's names (layernorm_before/after, intermediate, output)."""

    def __init__(self, config: AudioBranchConfig) -> None:
        super().__init__()
        dim, eps = config.hidden_size, config.norm_eps
        self.attention = _ASTAttention(config)
        self.intermediate = _Dense(dim, config.intermediate_size)
        self.output = _Dense(config.intermediate_size, dim)
        self.layernorm_before = nn.LayerNorm(dim, eps=eps)
        self.layernorm_after = nn.LayerNorm(dim, eps=eps)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attention(self.layernorm_before(x))
        return x + self.output(F.gelu(self.intermediate(self.layernorm_after(x))))


class _ASTPatchEmbeddings(nn.Module):
    def __init__(self, config: AudioBranchConfig) -> None:
        super().__init__()
        self.projection = nn.Conv2d(
            1, config.hidden_size, kernel_size=config.patch_size, stride=(config.freq_stride, config.time_stride)
        )


class _ASTEmbeddings(nn.Module):
    def __init__(self, config: AudioBranchConfig) -> None:
        super().__init__()
        dim = config.hidden_size
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.distillation_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.patch_embeddings = _ASTPatchEmbeddings(config)
        # the pretrained AST had 1212 patches; Synchformer keeps the first 12 * 6 + 2 positions
        self.position_embeddings = nn.Parameter(torch.zeros(1, config.freq_patches * config.time_patches + 2, dim))

    def forward(self, spec: torch.Tensor) -> torch.Tensor:
        """(N, time, mel) -> (N, 2 + f * t, D); patches are ordered frequency-major."""
        x = self.patch_embeddings.projection(spec.transpose(1, 2).unsqueeze(1))  # (N, D, f, t)
        x = x.flatten(2).transpose(1, 2)
        special = torch.cat((self.cls_token, self.distillation_token), dim=1).expand(x.shape[0], -1, -1)
        return torch.cat((special.to(x.dtype), x), dim=1) + self.position_embeddings.to(x.dtype)


class _ASTEncoder(nn.Module):
    def __init__(self, config: AudioBranchConfig) -> None:
        super().__init__()
        self.layer = nn.ModuleList(ASTLayer(config) for _ in range(config.depth))


class ASTModel(nn.Module):
    """HF's ASTModel (the `ast` of Synchformer's audio branch): patches, ViT layers, final norm."""

    def __init__(self, config: AudioBranchConfig) -> None:
        super().__init__()
        self.embeddings = _ASTEmbeddings(config)
        self.encoder = _ASTEncoder(config)
        self.layernorm = nn.LayerNorm(config.hidden_size, eps=config.norm_eps)

    def forward(self, spec: torch.Tensor) -> torch.Tensor:
        x = self.embeddings(spec)
        for layer in self.encoder.layer:
            x = layer(x)
        return self.layernorm(x)


class AudioFeatureExtractor(nn.Module):
    """`afeat_extractor`: AST + attention aggregation over frequency -> 6 tokens per segment."""

    def __init__(self, config: AudioBranchConfig) -> None:
        super().__init__()
        self.config = config
        self.ast = ASTModel(config)
        # av-benchmark's FrequencyTransformerEncoderLayer and MotionFormer's spatial aggregation are
        # the same BaseEncoderLayer (CLS + pre-norm nn.TransformerEncoderLayer, GELU): reuse it.
        agg = SynchformerConfig(
            embed_dim=config.hidden_size,
            agg_num_heads=config.num_heads,
            agg_ff_dim=config.intermediate_size,
            agg_norm_eps=config.agg_norm_eps,
        )
        self.freq_attn_agg = SpatialAggregation(agg)

    def forward(self, spec: torch.Tensor) -> torch.Tensor:
        """spec (N, time, mel) = (N, 66, 128) -> (N, 6, D)."""
        cfg = self.config
        if spec.shape[1:] != (cfg.spec_frames, cfg.n_mels):
            raise ValueError(
                f"the audio branch takes (N, {cfg.spec_frames}, {cfg.n_mels}) log-mel segments "
                f"(time, mel); got {tuple(spec.shape)}"
            )
        x = self.ast(spec)[:, 2:]  # without CLS and distillation tokens
        n, _, dim = x.shape
        f, t = cfg.freq_patches, cfg.time_patches
        x = x.view(n, f, t, dim).transpose(1, 2).reshape(n * t, f, dim)  # frequency patches of each time step
        return self.freq_attn_agg(x).view(n, t, dim)


# ------------------------------------------------------------------------------ sync head


class _HeadAttention(nn.Module):
    def __init__(self, config: SyncHeadConfig) -> None:
        super().__init__()
        dim = config.n_embd
        if dim % config.n_head:
            raise ValueError(f"sync head n_embd {dim} is not divisible by n_head {config.n_head}")
        self.n_head = config.n_head
        self.key = nn.Linear(dim, dim)
        self.query = nn.Linear(dim, dim)
        self.value = nn.Linear(dim, dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, length, dim = x.shape

        def heads(t: torch.Tensor) -> torch.Tensor:
            return t.view(n, length, self.n_head, dim // self.n_head).transpose(1, 2)

        out = F.scaled_dot_product_attention(heads(self.query(x)), heads(self.key(x)), heads(self.value(x)))
        return self.proj(out.transpose(1, 2).reshape(n, length, dim))


class _HeadBlock(nn.Module):
    """minGPT block without a causal mask: x + attn(ln1 x), then x + mlp(ln2 x)."""

    def __init__(self, config: SyncHeadConfig) -> None:
        super().__init__()
        dim = config.n_embd
        self.ln1 = nn.LayerNorm(dim, eps=config.norm_eps)
        self.ln2 = nn.LayerNorm(dim, eps=config.norm_eps)
        self.attn = _HeadAttention(config)
        self.mlp = nn.Sequential(nn.Linear(dim, 4 * dim), nn.GELU(), nn.Linear(4 * dim, dim))  # keys mlp.0, mlp.2

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.ln1(x))
        return x + self.mlp(self.ln2(x))


class _PositionEmbedding(nn.Module):
    """Kept under `pos_emb_cfg.pos_emb` (the publisher's name) for state-dict compatibility."""

    def __init__(self, positions: int, dim: int) -> None:
        super().__init__()
        self.pos_emb = nn.Parameter(torch.zeros(1, positions, dim))


class SyncHead(nn.Module):
    """`transformer`: [OFF, video tokens, MOD, audio tokens] -> 21 offset logits from OFF's output."""

    def __init__(self, config: SyncHeadConfig, positions: int) -> None:
        super().__init__()
        dim = config.n_embd
        self.config = config
        self.vis_in_lnorm = nn.LayerNorm(dim, eps=config.norm_eps)
        self.aud_in_lnorm = nn.LayerNorm(dim, eps=config.norm_eps)
        self.OFF_tok = nn.Parameter(torch.zeros(1, 1, dim))  # noqa: N815 - the publisher's key
        self.MOD_tok = nn.Parameter(torch.zeros(1, 1, dim))  # noqa: N815
        self.pos_emb_cfg = _PositionEmbedding(positions, dim)
        self.blocks = nn.Sequential(*(_HeadBlock(config) for _ in range(config.n_layer)))
        self.ln_f = nn.LayerNorm(dim, eps=config.norm_eps)
        self.off_head = nn.Linear(dim, config.num_classes)
        for param in (self.OFF_tok, self.MOD_tok, self.pos_emb_cfg.pos_emb):
            nn.init.normal_(param)  # the reference's torch.randn init

    def forward(self, vis: torch.Tensor, aud: torch.Tensor) -> torch.Tensor:
        """vis (B, Sv, D), aud (B, Sa, D), 2 + Sv + Sa == positions -> (B, num_classes)."""
        b = vis.shape[0]
        positions = self.pos_emb_cfg.pos_emb.shape[1]
        if 2 + vis.shape[1] + aud.shape[1] != positions:
            raise ValueError(
                f"the sync head takes exactly {positions} tokens (OFF + video + MOD + audio); got "
                f"{vis.shape[1]} video and {aud.shape[1]} audio tokens"
            )
        x = torch.cat(
            (
                self.OFF_tok.expand(b, -1, -1),
                self.vis_in_lnorm(vis),
                self.MOD_tok.expand(b, -1, -1),
                self.aud_in_lnorm(aud),
            ),
            dim=1,
        )
        x = self.ln_f(self.blocks(x + self.pos_emb_cfg.pos_emb))
        return self.off_head(x[:, 0])


# ------------------------------------------------------------------------------ the whole model


class FullSynchformer(nn.Module):
    """The whole released Synchformer: segment features of both modalities and the offset logits.

    Attribute names are the checkpoint's top-level key prefixes."""

    def __init__(self, config: FullSynchformerConfig | None = None) -> None:
        super().__init__()
        self.config = config or FullSynchformerConfig.released()
        cfg = self.config
        self.vfeat_extractor = MotionFormer(cfg.visual)
        self.afeat_extractor = AudioFeatureExtractor(cfg.audio)
        self.vproj = nn.Linear(cfg.visual.embed_dim, cfg.head.n_embd)
        self.aproj = nn.Linear(cfg.audio.hidden_size, cfg.head.n_embd)
        self.transformer = SyncHead(cfg.head, cfg.head_positions)
        self.mel = SyncMelFrontEnd()

    @property
    def device(self) -> torch.device:
        return self.vproj.weight.device

    # --- model-level entries (tensors already prepared, as the reference's methods take them)

    def extract_vfeats(self, segments: torch.Tensor) -> torch.Tensor:
        """(B, S, 16, 3, H, W) pixels in [-1, 1] -> (B, S, 8, Dv)."""
        cfg = self.config.visual
        b, s, t, c, h, w = segments.shape
        if t != cfg.segment_frames or c != cfg.in_channels:
            raise ValueError(
                f"video segments must be (B, S, {cfg.segment_frames}, {cfg.in_channels}, H, W); "
                f"got {tuple(segments.shape)}"
            )
        out = self.vfeat_extractor(segments.reshape(b * s, t, c, h, w).transpose(1, 2))
        return out.view(b, s, cfg.temporal_resolution, cfg.embed_dim)

    def extract_afeats(self, spec: torch.Tensor) -> torch.Tensor:
        """(B, S, 128, 66) normalised log mel (mel x time) -> (B, S, 6, Da)."""
        b, s = spec.shape[:2]
        out = self.afeat_extractor(spec.flatten(0, 1).transpose(1, 2))
        return out.view(b, s, *out.shape[1:])

    @torch.no_grad()
    def offset_logits(self, vfeat: torch.Tensor, afeat: torch.Tensor) -> torch.Tensor:
        """Synchformer.compare_v_a: (B, 14, 8, Dv) video and (B, 14, 6, Da) audio features -> (B, 21)."""
        segments = self.config.head.segments
        if vfeat.ndim != 4 or afeat.ndim != 4 or vfeat.shape[:2] != afeat.shape[:2] or vfeat.shape[1] != segments:
            raise ValueError(
                f"the sync head compares exactly {segments} segments of both modalities, "
                f"(B, {segments}, tv, D) each; got video {tuple(vfeat.shape)}, audio {tuple(afeat.shape)}"
            )
        vis = self.vproj(vfeat.to(self.device)).flatten(1, 2)
        aud = self.aproj(afeat.to(self.device)).flatten(1, 2)
        return self.transformer(vis, aud)

    # --- media-level entries

    @torch.no_grad()
    def video_segments_features(
        self, frames: np.ndarray | torch.Tensor, segments: Sequence[int] | None = None, *, batch_size: int = 8
    ) -> torch.Tensor:
        """uint8 frames at 25 fps, (T, H, W, 3) or (B, T, H, W, 3) -> (B, S', 8, Dv) for the segments
        asked (all (T - 16) // 8 + 1 by default), in that order. Frames that are not crop x crop get
        the short-side resize + centre crop here; `batch_size` bounds segments run at once."""
        frames = torch.as_tensor(frames)
        if frames.ndim == 4:
            frames = frames.unsqueeze(0)
        if frames.ndim != 5 or frames.shape[-1] != 3 or frames.dtype != torch.uint8:
            raise ValueError(
                f"frames must be uint8 (T, H, W, 3) or (B, T, H, W, 3); got {frames.dtype} {tuple(frames.shape)}"
            )
        total = num_video_segments(frames.shape[1])
        index = _segment_index(segments, total, "video")
        b, size = frames.shape[0], self.config.visual.crop_size
        outputs = []
        for i in range(0, len(index), batch_size):
            chunk = index[i : i + batch_size]
            clips = torch.stack(
                [frames[:, s * VIDEO_STRIDE_FRAMES : s * VIDEO_STRIDE_FRAMES + VIDEO_SEGMENT_FRAMES] for s in chunk],
                dim=1,
            )  # (B, s, 16, H, W, 3)
            pixels = sync_pixels(clips.flatten(0, 1), size, self.device)  # (B*s, 16, 3, size, size)
            outputs.append(self.extract_vfeats(pixels.view(b, len(chunk), *pixels.shape[1:])))
        return torch.cat(outputs, dim=1)

    @torch.no_grad()
    def audio_segments_features(
        self, wav_16k: np.ndarray | torch.Tensor, segments: Sequence[int] | None = None, *, batch_size: int = 32
    ) -> torch.Tensor:
        """16 kHz mono audio, (L,) or (B, L) -> (B, S', 6, Da) for the segments asked (all
        (L - 10240) // 5120 + 1 by default), in that order."""
        wav = torch.as_tensor(np.asarray(wav_16k, dtype=np.float32) if isinstance(wav_16k, np.ndarray) else wav_16k)
        if wav.ndim == 1:
            wav = wav.unsqueeze(0)
        if wav.ndim != 2:
            raise ValueError(f"audio must be (L,) or (B, L) mono samples at 16 kHz; got shape {tuple(wav.shape)}")
        total = num_audio_segments(wav.shape[-1])
        index = _segment_index(segments, total, "audio")
        windows = wav.to(self.device, torch.float32).unfold(-1, AUDIO_SEGMENT_SAMPLES, AUDIO_STRIDE_SAMPLES)
        outputs = []
        for i in range(0, len(index), batch_size):
            chunk = windows[:, index[i : i + batch_size]]  # (B, s, 10240)
            outputs.append(self.extract_afeats(self.mel(chunk)))
        return torch.cat(outputs, dim=1)


def _segment_index(segments: Sequence[int] | None, total: int, what: str) -> list[int]:
    index = list(range(total)) if segments is None else [int(s) for s in segments]
    if not index:
        raise ValueError(f"no {what} segments to encode ({total} in the input; a segment is 0.64 s)")
    bad = [s for s in index if not 0 <= s < total]
    if bad:
        raise ValueError(f"{what} segment indices {bad[:5]} are outside the {total} segments of the input")
    return index


def load_full_synchformer(
    source: str | Path | Mapping[str, torch.Tensor],
    device: str | torch.device = "cpu",
    config: FullSynchformerConfig | None = None,
) -> FullSynchformer:
    """Build the full Synchformer and load EVERY key of `source` strictly (a missing audio branch or
    head, or any extra key, is an error naming the keys).

    `source`: synchformer_state_dict.pth (torch.load weights_only), its .safetensors conversion,
    or a state dict. The model is built on the meta device (no random init of ~235M parameters)."""
    if isinstance(source, (str, Path)):
        source = read_state_dict(source, wrappers=("state_dict",), what="Synchformer weights")
    config = config or FullSynchformerConfig.released()
    with torch.device("meta"):
        model = FullSynchformer(config)
    v, a, h = config.visual, config.audio, config.head
    strict_load(
        model,
        source,
        "Synchformer checkpoint",
        detail=f" (visual {v.embed_dim}x{v.depth}, audio {a.hidden_size}x{a.depth}, head {h.n_embd}x{h.n_layer})",
        hint="DeSync needs the whole synchformer_state_dict.pth: vfeat_extractor.*, afeat_extractor.*, "
        "vproj.*, aproj.* and transformer.*",
    )
    return model.to(device).eval()
