"""Network configuration: the MF-MJT (MMAudio) constructor arguments as data, and the presets.

Sequence lengths follow MMAudio's `sequence_config.py`: they are derived from the clip
duration and the audio sample rate, so the same weights can run at any duration.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any, NamedTuple

# Audio front end per sample rate: mel hop length (samples per spectrogram frame).
MEL_HOP_BY_SAMPLE_RATE: dict[int, int] = {16000: 256, 44100: 512}
LATENT_DOWNSAMPLE = 2  # the VAE halves the mel frame rate
# Latent channel count identifies the codec, hence the sample rate (MMAudio's two VAEs).
SAMPLE_RATE_BY_LATENT_DIM: dict[int, int] = {20: 16000, 40: 44100}

CLIP_FPS = 8
SYNC_FPS = 25
SYNC_FRAMES_PER_SEGMENT = 16
SYNC_SEGMENT_STRIDE = 8
SYNC_TOKENS_PER_SEGMENT = 8  # Synchformer gives 8 feature frames per 16-frame segment


class SequenceLengths(NamedTuple):
    latent: int
    clip: int
    sync: int


def latents_per_second(sample_rate: int) -> float:
    return sample_rate / _mel_hop(sample_rate) / LATENT_DOWNSAMPLE


def sequence_lengths(duration_s: float, sample_rate: int) -> SequenceLengths:
    """(latent, clip, sync) token counts for a clip of `duration_s` seconds, as MMAudio derives them.

    8 s at 16 kHz -> (250, 64, 192); 8 s at 44.1 kHz -> (345, 64, 192).
    """
    if duration_s <= 0:
        raise ValueError(f"duration must be positive, got {duration_s} s")
    hop = _mel_hop(sample_rate)
    latent = int(math.ceil(duration_s * sample_rate / hop / LATENT_DOWNSAMPLE))
    clip = int(duration_s * CLIP_FPS)
    sync_frames = duration_s * SYNC_FPS
    segments = (sync_frames - SYNC_FRAMES_PER_SEGMENT) // SYNC_SEGMENT_STRIDE + 1
    if segments < 1:
        raise ValueError(
            f"duration {duration_s} s is shorter than one Synchformer segment "
            f"({SYNC_FRAMES_PER_SEGMENT} frames at {SYNC_FPS} fps = "
            f"{SYNC_FRAMES_PER_SEGMENT / SYNC_FPS} s): use a longer duration"
        )
    sync = int(segments * SYNC_TOKENS_PER_SEGMENT)
    return SequenceLengths(latent, clip, sync)


def _mel_hop(sample_rate: int) -> int:
    try:
        return MEL_HOP_BY_SAMPLE_RATE[sample_rate]
    except KeyError:
        raise ValueError(
            f"unsupported sample rate {sample_rate} Hz: MMAudio codecs exist for {sorted(MEL_HOP_BY_SAMPLE_RATE)} Hz"
        ) from None


def sample_rate_for_latent_dim(latent_dim: int) -> int:
    try:
        return SAMPLE_RATE_BY_LATENT_DIM[latent_dim]
    except KeyError:
        raise ValueError(
            f"cannot tell the sample rate from latent_dim={latent_dim} (known: "
            f"{SAMPLE_RATE_BY_LATENT_DIM}); pass sample_rate explicitly"
        ) from None


@dataclass(frozen=True)
class NetworkConfig:
    """Constructor arguments of MMAudio's network, plus `mean_flow` (the MF-MJT interval input)."""

    latent_dim: int
    clip_dim: int
    sync_dim: int
    text_dim: int
    hidden_dim: int
    depth: int
    fused_depth: int
    num_heads: int
    mlp_ratio: float = 4.0
    # gated MLP widths are rounded up to a multiple of this (MMAudio: 256). A network much
    # narrower than MMAudio's (the demo_narrow preset) takes a smaller one, or its MLPs would be
    # several times its width and dominate a training step
    mlp_multiple_of: int = 256
    latent_seq_len: int = 250
    clip_seq_len: int = 64
    sync_seq_len: int = 192
    text_seq_len: int = 77
    v2: bool = False
    mean_flow: bool = True

    def __post_init__(self) -> None:
        problems = []
        if self.hidden_dim % self.num_heads:
            problems.append(f"hidden_dim {self.hidden_dim} is not divisible by num_heads {self.num_heads}")
        elif (self.hidden_dim // self.num_heads) % 2:
            problems.append(f"head dim {self.hidden_dim // self.num_heads} must be even (rotary pairs)")
        # MMAudio builds depth - fused_depth joint blocks, none when fused_depth == depth (the
        # clip and text streams then enter only through their pooled global condition). Outside
        # [0, depth] its block counts would no longer add up to `depth`.
        if not 0 <= self.fused_depth <= self.depth:
            problems.append(f"fused_depth {self.fused_depth} must be in [0, depth={self.depth}]")
        if self.mlp_multiple_of < 1:
            problems.append(f"mlp_multiple_of must be >= 1, got {self.mlp_multiple_of}")
        if self.sync_seq_len % SYNC_TOKENS_PER_SEGMENT:
            problems.append(f"sync_seq_len {self.sync_seq_len} must be a multiple of {SYNC_TOKENS_PER_SEGMENT}")
        for name in ("latent_seq_len", "clip_seq_len", "sync_seq_len", "text_seq_len"):
            if getattr(self, name) < 1:
                problems.append(f"{name} must be >= 1")
        if self.v2 and self.hidden_dim % 2:
            problems.append("v2 uses hidden_dim timestep frequencies: hidden_dim must be even")
        if problems:
            raise ValueError("invalid NetworkConfig: " + "; ".join(problems))

    @property
    def head_dim(self) -> int:
        return self.hidden_dim // self.num_heads

    @property
    def joint_depth(self) -> int:
        return self.depth - self.fused_depth

    def as_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> NetworkConfig:
        """Build from a dict such as MMAudio's constructor kwargs or `arch.json`; absent optional
        fields take their defaults, unknown fields are an error."""
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"unknown NetworkConfig fields {unknown}; valid fields: {sorted(known)}")
        values = dict(data)
        if "mlp_ratio" in values:
            values["mlp_ratio"] = float(values["mlp_ratio"])
        return cls(**values)

    @property
    def sample_rate(self) -> int:
        """Audio sample rate implied by the latent width (20 -> 16 kHz, 40 -> 44.1 kHz)."""
        return sample_rate_for_latent_dim(self.latent_dim)

    def with_duration(self, duration_s: float, sample_rate: int | None = None) -> NetworkConfig:
        """The same network for clips of `duration_s` seconds (only sequence lengths change)."""
        lengths = sequence_lengths(duration_s, sample_rate if sample_rate is not None else self.sample_rate)
        return dataclasses.replace(
            self, latent_seq_len=lengths.latent, clip_seq_len=lengths.clip, sync_seq_len=lengths.sync
        )


def _preset(latent_dim: int, num_heads: int, depth: int, fused_depth: int, v2: bool = False) -> NetworkConfig:
    lengths = sequence_lengths(8.0, SAMPLE_RATE_BY_LATENT_DIM[latent_dim])
    return NetworkConfig(
        latent_dim=latent_dim,
        clip_dim=1024,
        sync_dim=768,
        text_dim=1024,
        hidden_dim=64 * num_heads,
        depth=depth,
        fused_depth=fused_depth,
        num_heads=num_heads,
        latent_seq_len=lengths.latent,
        clip_seq_len=lengths.clip,
        sync_seq_len=lengths.sync,
        text_seq_len=77,
        v2=v2,
    )


# MMAudio's released sizes (mmaudio/model/networks.py), 8 s clips.
NETWORK_PRESETS: dict[str, NetworkConfig] = {
    "small_16k": _preset(20, num_heads=7, depth=12, fused_depth=8),
    "small_44k": _preset(40, num_heads=7, depth=12, fused_depth=8),
    "medium_44k": _preset(40, num_heads=14, depth=12, fused_depth=8),
    "large_44k": _preset(40, num_heads=14, depth=21, fused_depth=14),
    "large_44k_v2": _preset(40, num_heads=14, depth=21, fused_depth=14, v2=True),
    # Tests and demos: real 8 s / 16 kHz sequence lengths, tiny widths.
    "tiny": NetworkConfig(
        latent_dim=20,
        clip_dim=32,
        sync_dim=32,
        text_dim=32,
        hidden_dim=64,
        depth=2,
        fused_depth=1,
        num_heads=2,
        latent_seq_len=250,
        clip_seq_len=64,
        sync_seq_len=192,
        text_seq_len=77,
    ),
}

# The demo stack's feature widths (model/demo's encoders and codec) and prompt length.
DEMO_STACK_WIDTHS = {"latent_dim": 20, "clip_dim": 64, "sync_dim": 64, "text_dim": 64, "text_seq_len": 8}
# The demo bundle's network: one joint block, 32 wide, gated MLPs 4x its width. A training step
# on two CPU cores is bound by passes over activations (tokens x width), so a narrow network
# trains fast enough there to take more steps; with them it learns foley-synth as well as the
# "tiny" preset on the demo stack, which it replaced (docs/benchmarks.md, "`dub train` samples/s").
NETWORK_PRESETS["demo_narrow"] = dataclasses.replace(
    NETWORK_PRESETS["tiny"],
    **DEMO_STACK_WIDTHS,
    hidden_dim=32,
    depth=1,
    fused_depth=0,
    num_heads=2,
    mlp_multiple_of=128,
)


def get_preset(name: str) -> NetworkConfig:
    try:
        return NETWORK_PRESETS[name]
    except KeyError:
        raise ValueError(f"unknown network preset {name!r}; valid presets: {sorted(NETWORK_PRESETS)}") from None
