"""MF-MJT: MMAudio's flow-prediction transformer with a second time input (MeanFlow).

Follows MMAudio 1.0.0 (hkchengrex/MMAudio, `mmaudio/model/networks.py`); checked against the publisher's fixtures (tests/test_network.py).

The network predicts the average velocity u(z_t, t, s) over [t, s] (s >= t; t = 0 noise,
t = 1 data). It is MMAudio's network (same modules, same state-dict keys, same arithmetic)
plus `interval_embed`, an embedding of s - t summed into the timestep embedding. Its output
layer starts at zero, so a network loaded from MMAudio weights returns MMAudio's
instantaneous velocity for every s until it is fine-tuned.
"""

from __future__ import annotations

from dataclasses import dataclass, fields

import torch
import torch.nn.functional as F
from torch import nn

from dub.model.network.blocks import FinalBlock, JointBlock, SingleBlock
from dub.model.network.config import SYNC_TOKENS_PER_SEGMENT, NetworkConfig
from dub.model.network.layers import MLP, ChannelLastConv1d, ConvMLP, TimestepEmbedder
from dub.model.network.rotary import rope_rotations

# Buffers derived from the config; never stored in checkpoints (MMAudio drops them too).
DERIVED_BUFFER_KEYS = ("latent_rot", "clip_rot", "t_embed.freqs", "interval_embed.freqs")
INTERVAL_EMBED_PREFIX = "interval_embed."

TimeLike = torch.Tensor | float


@dataclass
class Conditions:
    """Preprocessed conditions (projected once per clip, reused by every sampler step)."""

    clip_f: torch.Tensor  # (B, Nc, D)
    sync_f: torch.Tensor  # (B, N, D), already resampled to the latent length
    text_f: torch.Tensor  # (B, Nt, D)
    clip_f_c: torch.Tensor  # (B, D) pooled clip
    text_f_c: torch.Tensor  # (B, D) pooled text

    @property
    def batch_size(self) -> int:
        return self.clip_f.shape[0]

    def cat(self, other: Conditions) -> Conditions:
        """Batch concatenation (e.g. conditional + unconditional in one network call)."""
        return Conditions(
            **{f.name: torch.cat([getattr(self, f.name), getattr(other, f.name)], dim=0) for f in fields(self)}
        )

    def expand(self, batch_size: int) -> Conditions:
        """Broadcast a batch of one to `batch_size` (a view, no copy)."""
        if self.batch_size == batch_size:
            return self
        if self.batch_size != 1:
            raise ValueError(f"cannot expand conditions of batch {self.batch_size} to {batch_size}")
        return Conditions(
            **{f.name: getattr(self, f.name).expand(batch_size, *getattr(self, f.name).shape[1:]) for f in fields(self)}
        )


def _input_projections(cfg: NetworkConfig) -> dict[str, nn.Sequential]:
    """MMAudio's input projections; v2 swaps SELU for SiLU and adds a SiLU after clip/text Lin
    (which shifts the module indices in the state-dict keys)."""
    d, m = cfg.hidden_dim, cfg.mlp_multiple_of  # m: the gated MLPs' width rounding
    act = nn.SiLU if cfg.v2 else nn.SELU
    extra = [nn.SiLU()] if cfg.v2 else []
    return {
        "audio_input_proj": nn.Sequential(
            ChannelLastConv1d(cfg.latent_dim, d, kernel_size=7, padding=3), act(), ConvMLP(d, d * 4, 7, m)
        ),
        "clip_input_proj": nn.Sequential(nn.Linear(cfg.clip_dim, d), *extra, ConvMLP(d, d * 4, 3, m)),
        "sync_input_proj": nn.Sequential(
            ChannelLastConv1d(cfg.sync_dim, d, kernel_size=7, padding=3), act(), ConvMLP(d, d * 4, 3, m)
        ),
        "text_input_proj": nn.Sequential(nn.Linear(cfg.text_dim, d), *extra, MLP(d, d * 4, m)),
    }


class MFMJT(nn.Module):
    def __init__(self, config: NetworkConfig) -> None:
        super().__init__()
        self.config = config
        cfg = config
        d = cfg.hidden_dim

        for name, module in _input_projections(cfg).items():
            self.add_module(name, module)
        self.clip_cond_proj = nn.Linear(d, d)
        self.text_cond_proj = nn.Linear(d, d)
        self.global_cond_mlp = MLP(d, d * 4, cfg.mlp_multiple_of)
        # each Synchformer segment yields 8 feature frames; one learned embedding per frame slot
        self.sync_pos_emb = nn.Parameter(torch.zeros(1, 1, SYNC_TOKENS_PER_SEGMENT, cfg.sync_dim))
        self.final_layer = FinalBlock(d, cfg.latent_dim)

        n_freq, max_period = (d, 1.0) if cfg.v2 else (256, 10000.0)
        self.t_embed = TimestepEmbedder(d, n_freq, max_period)
        self.interval_embed = TimestepEmbedder(d, n_freq, max_period) if cfg.mean_flow else None

        self.joint_blocks = nn.ModuleList(
            [
                JointBlock(
                    d,
                    cfg.num_heads,
                    cfg.mlp_ratio,
                    pre_only=(i == cfg.joint_depth - 1),
                    mlp_multiple_of=cfg.mlp_multiple_of,
                )
                for i in range(cfg.joint_depth)
            ]
        )
        self.fused_blocks = nn.ModuleList(
            [
                SingleBlock(d, cfg.num_heads, cfg.mlp_ratio, kernel_size=3, mlp_multiple_of=cfg.mlp_multiple_of)
                for _ in range(cfg.fused_depth)
            ]
        )

        # Frozen data: identity normalisation until a checkpoint provides the statistics, and
        # the CLIP encoding of "" (zeros until loaded). Parameters, as in MMAudio's checkpoints.
        self.latent_mean = nn.Parameter(torch.zeros(1, 1, cfg.latent_dim), requires_grad=False)
        self.latent_std = nn.Parameter(torch.ones(1, 1, cfg.latent_dim), requires_grad=False)
        self.empty_string_feat = nn.Parameter(torch.zeros(cfg.text_seq_len, cfg.text_dim), requires_grad=False)
        # learned null tokens for classifier-free guidance
        self.empty_clip_feat = nn.Parameter(torch.zeros(1, cfg.clip_dim))
        self.empty_sync_feat = nn.Parameter(torch.zeros(1, cfg.sync_dim))

        self.register_buffer("latent_rot", torch.empty(0), persistent=False)
        self.register_buffer("clip_rot", torch.empty(0), persistent=False)
        self._reset_rotations()
        self.initialize_weights()

    # ----------------------------------------------------------------------------- set-up

    def initialize_weights(self) -> None:
        """MMAudio's initialisation (xavier linears, zero adaLN and output layers), and the
        interval embedding with a zero output layer."""

        def basic_init(module: nn.Module) -> None:
            if isinstance(module, nn.Linear):
                nn.init.xavier_uniform_(module.weight)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)

        self.apply(basic_init)
        nn.init.normal_(self.t_embed.mlp[0].weight, std=0.02)
        nn.init.normal_(self.t_embed.mlp[2].weight, std=0.02)
        for block in self.joint_blocks:
            for stream in (block.latent_block, block.clip_block, block.text_block):
                nn.init.zeros_(stream.adaLN_modulation[-1].weight)
                nn.init.zeros_(stream.adaLN_modulation[-1].bias)
        for block in self.fused_blocks:
            nn.init.zeros_(block.adaLN_modulation[-1].weight)
            nn.init.zeros_(block.adaLN_modulation[-1].bias)
        for layer in (self.final_layer.adaLN_modulation[-1], self.final_layer.conv):
            nn.init.zeros_(layer.weight)
            nn.init.zeros_(layer.bias)
        nn.init.zeros_(self.sync_pos_emb)
        nn.init.zeros_(self.empty_clip_feat)
        nn.init.zeros_(self.empty_sync_feat)
        self.initialize_interval_embedding()

    def initialize_interval_embedding(self, generator: torch.Generator | None = None) -> None:
        """Zero output layer: the interval input then has no effect (pure MMAudio velocity)."""
        if self.interval_embed is None:
            return
        nn.init.normal_(self.interval_embed.mlp[0].weight, std=0.02, generator=generator)
        nn.init.zeros_(self.interval_embed.mlp[0].bias)
        nn.init.zeros_(self.interval_embed.mlp[2].weight)
        nn.init.zeros_(self.interval_embed.mlp[2].bias)

    def _reset_rotations(self) -> None:
        cfg = self.config
        device = self.latent_mean.device
        # float32 tables (float64 if the model is float64), whatever dtype the model is cast to
        dtype = torch.float64 if self.latent_mean.dtype == torch.float64 else torch.float32
        self.latent_rot = rope_rotations(cfg.latent_seq_len, cfg.head_dim).to(device, dtype)
        self.clip_rot = rope_rotations(
            cfg.clip_seq_len, cfg.head_dim, freq_scaling=cfg.latent_seq_len / cfg.clip_seq_len
        ).to(device, dtype)

    def _apply(self, fn, recurse: bool = True):  # type: ignore[override]
        # .to(bfloat16) / .to_empty() would degrade or wipe the derived tables: rebuild them.
        super()._apply(fn, recurse)
        self._reset_rotations()
        for embedder in (self.t_embed, self.interval_embed):
            if embedder is not None:
                embedder.reset_buffers()
        return self

    # ------------------------------------------------------------------------ conditions

    def _check_sequence(self, name: str, x: torch.Tensor, length: int, dim: int) -> None:
        if x.ndim != 3 or x.shape[1] != length or x.shape[2] != dim:
            raise ValueError(
                f"{name} must have shape (batch, {length}, {dim}) for this network "
                f"(config {self.config.latent_seq_len} latents / {self.config.clip_seq_len} clip / "
                f"{self.config.sync_seq_len} sync tokens), got {tuple(x.shape)}; "
                "check the clip duration and the feature extractor"
            )

    def _embed_clip(self, clip_f: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        self._check_sequence("clip_f", clip_f, self.config.clip_seq_len, self.config.clip_dim)
        clip = self.clip_input_proj(clip_f)
        return clip, self.clip_cond_proj(clip.mean(dim=1))

    def _embed_text(self, text_f: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        self._check_sequence("text_f", text_f, self.config.text_seq_len, self.config.text_dim)
        text = self.text_input_proj(text_f)
        return text, self.text_cond_proj(text.mean(dim=1))

    def _embed_sync(self, sync_f: torch.Tensor) -> torch.Tensor:
        cfg = self.config
        self._check_sequence("sync_f", sync_f, cfg.sync_seq_len, cfg.sync_dim)
        b = sync_f.shape[0]
        segments = cfg.sync_seq_len // SYNC_TOKENS_PER_SEGMENT
        sync = (sync_f.view(b, segments, SYNC_TOKENS_PER_SEGMENT, -1) + self.sync_pos_emb).flatten(1, 2)
        sync = self.sync_input_proj(sync)
        # half-pixel-centre nearest resampling to the latent length, exactly as MMAudio
        sync = F.interpolate(sync.transpose(1, 2), size=cfg.latent_seq_len, mode="nearest-exact")
        return sync.transpose(1, 2)

    def preprocess_conditions(self, clip_f: torch.Tensor, sync_f: torch.Tensor, text_f: torch.Tensor) -> Conditions:
        """Project clip (B, Nc, clip_dim), sync (B, Ns, sync_dim), text (B, Nt, text_dim) features."""
        if not clip_f.shape[0] == sync_f.shape[0] == text_f.shape[0]:
            raise ValueError(
                f"clip_f, sync_f and text_f must share the batch size, got "
                f"{clip_f.shape[0]}, {sync_f.shape[0]}, {text_f.shape[0]}"
            )
        clip, clip_c = self._embed_clip(clip_f)
        text, text_c = self._embed_text(text_f)
        return Conditions(clip_f=clip, sync_f=self._embed_sync(sync_f), text_f=text, clip_f_c=clip_c, text_f_c=text_c)

    def empty_feature_sequences(self, batch_size: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Raw "null" features (clip, sync, text), e.g. for condition dropout in training."""
        cfg = self.config
        return (
            self.empty_clip_feat[None].expand(batch_size, cfg.clip_seq_len, -1),
            self.empty_sync_feat[None].expand(batch_size, cfg.sync_seq_len, -1),
            self.empty_string_feat[None].expand(batch_size, -1, -1),
        )

    def empty_conditions(self, batch_size: int, text_f: torch.Tensor | None = None) -> Conditions:
        """Unconditional branch for CFG. `text_f` (1 or batch_size, Nt, text_dim), e.g. a negative
        prompt's features, replaces the empty-string feature."""
        clip_f, sync_f, empty_text = self.empty_feature_sequences(1)
        clip, clip_c = self._embed_clip(clip_f)
        sync = self._embed_sync(sync_f)
        if text_f is not None and text_f.shape[0] not in (1, batch_size):
            raise ValueError(f"negative text features have batch {text_f.shape[0]}, expected 1 or {batch_size}")
        text, text_c = self._embed_text(empty_text if text_f is None else text_f)
        expand = lambda x: x.expand(batch_size, *x.shape[1:])  # noqa: E731
        return Conditions(
            clip_f=expand(clip),
            sync_f=expand(sync),
            text_f=expand(text),
            clip_f_c=expand(clip_c),
            text_f_c=expand(text_c),
        )

    # ------------------------------------------------------------------------------ time

    def _batch_times(self, t: TimeLike, batch_size: int, like: torch.Tensor, name: str) -> torch.Tensor:
        t = torch.as_tensor(t, device=like.device)
        if not t.is_floating_point():
            t = t.to(torch.float32)
        if t.ndim == 0:
            return t.expand(batch_size)
        if t.shape != (batch_size,):
            raise ValueError(f"{name} must be a scalar or have shape ({batch_size},), got {tuple(t.shape)}")
        return t

    def timestep_embedding(self, t: torch.Tensor) -> torch.Tensor:
        """MMAudio's timestep embedding (after its MLP) of t (B,) -> (B, D)."""
        return self.t_embed(t)

    def time_embedding(self, t: torch.Tensor, s: torch.Tensor | None = None) -> torch.Tensor:
        """t_embed(t) + interval_embed(s - t); s None means s = t."""
        emb = self.t_embed(t)
        if self.interval_embed is not None:
            emb = emb + self.interval_embed(torch.zeros_like(t) if s is None else s - t)
        return emb

    # ------------------------------------------------------------------------- prediction

    def predict_flow(
        self, latent: torch.Tensor, t: TimeLike, cond: Conditions, s: TimeLike | None = None
    ) -> torch.Tensor:
        """Average velocity u(latent, t, s) (B, N, C); s=None means s=t (instantaneous velocity).

        `latent` is normalised and channel-last. A network built with mean_flow=False has no
        interval input and returns its instantaneous velocity whatever s is.
        """
        cfg = self.config
        self._check_sequence("latent", latent, cfg.latent_seq_len, cfg.latent_dim)
        b = latent.shape[0]
        if cond.batch_size != b:
            raise ValueError(f"conditions have batch {cond.batch_size} but the latent has batch {b}")
        t = self._batch_times(t, b, latent, "t")
        s = None if s is None else self._batch_times(s, b, latent, "s")

        x = self.audio_input_proj(latent)
        global_c = self.global_cond_mlp(cond.clip_f_c + cond.text_f_c)
        global_c = (self.time_embedding(t, s) + global_c).unsqueeze(1)  # (B, 1, D)
        extended_c = global_c + cond.sync_f  # (B, N, D) per-token condition

        clip_f, text_f = cond.clip_f, cond.text_f
        for joint in self.joint_blocks:
            x, clip_f, text_f = joint(x, clip_f, text_f, global_c, extended_c, self.latent_rot, self.clip_rot)
        for block in self.fused_blocks:
            x = block(x, extended_c, self.latent_rot)
        # MMAudio conditions the final layer on global_c (its issue #55); kept for its weights.
        return self.final_layer(x, global_c)

    def forward(
        self,
        latent: torch.Tensor,
        t: TimeLike,
        s: TimeLike | None = None,
        *,
        clip_f: torch.Tensor,
        sync_f: torch.Tensor,
        text_f: torch.Tensor,
    ) -> torch.Tensor:
        return self.predict_flow(latent, t, self.preprocess_conditions(clip_f, sync_f, text_f), s)

    # ------------------------------------------------------------------------ latent scale

    def normalize(self, x: torch.Tensor) -> torch.Tensor:
        """VAE latent -> network scale (not in place, unlike MMAudio)."""
        return (x - self.latent_mean) / self.latent_std

    def unnormalize(self, x: torch.Tensor) -> torch.Tensor:
        """Network scale -> VAE latent."""
        return x * self.latent_std + self.latent_mean

    @property
    def device(self) -> torch.device:
        return self.latent_mean.device
