"""Transformer blocks of the MMAudio network (adaLN-modulated single blocks, joint blocks over

Follows MMAudio 1.0.0 (hkchengrex/MMAudio, `mmaudio/model/transformer_layers.py`).
[latent, clip, text], final block). Names match MMAudio's state-dict keys.

Attention goes through `F.scaled_dot_product_attention`; for forward-mode AD (MeanFlow JVP)
the caller selects the math kernel with `torch.nn.attention.sdpa_kernel(SDPBackend.MATH)`.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from dub.model.network.layers import MLP, ChannelLastConv1d, ConvMLP, RMSNorm, modulate
from dub.model.network.rotary import apply_rope

QKV = tuple[torch.Tensor, torch.Tensor, torch.Tensor]


def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """Unmasked multi-head attention: (B, H, L, Dh) x3 -> (B, L, H*Dh), heads merged as (h, d)."""
    # contiguous inputs: MMAudio reports cuDNN SDPA failures in training without them.
    out = F.scaled_dot_product_attention(q.contiguous(), k.contiguous(), v.contiguous())
    b, h, n, d = out.shape
    return out.transpose(1, 2).reshape(b, n, h * d)


class SelfAttention(nn.Module):
    """q/k/v projection (one linear, channels interleaved as (head, dim, q/k/v)) with RMS-normed q, k."""

    def __init__(self, dim: int, num_heads: int) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.qkv = nn.Linear(dim, dim * 3, bias=True)
        self.q_norm = RMSNorm(self.head_dim)
        self.k_norm = RMSNorm(self.head_dim)

    def pre_attention(self, x: torch.Tensor, rot: torch.Tensor | None) -> QKV:
        b, n, _ = x.shape
        qkv = self.qkv(x).view(b, n, self.num_heads, self.head_dim, 3).permute(4, 0, 2, 1, 3)
        q, k, v = qkv.unbind(0)  # each (B, H, N, Dh)
        q = self.q_norm(q)
        k = self.k_norm(k)
        if rot is not None:
            q = apply_rope(q, rot)
            k = apply_rope(k, rot)
        return q, k, v


Modulation = tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor] | None


class SingleBlock(nn.Module):
    """MMAudio's MMDitSingleBlock. `kernel_size` 1 uses linear layers (text stream), otherwise
    convolutions over the sequence. A pre-only block only produces q/k/v (2-chunk modulation)."""

    def __init__(
        self,
        dim: int,
        num_heads: int,
        mlp_ratio: float = 4.0,
        *,
        pre_only: bool = False,
        kernel_size: int = 3,
        mlp_multiple_of: int = 256,
    ) -> None:
        super().__init__()
        self.pre_only = pre_only
        self.norm1 = nn.LayerNorm(dim, elementwise_affine=False)
        self.attn = SelfAttention(dim, num_heads)
        if pre_only:
            self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(dim, 2 * dim, bias=True))
            return
        if kernel_size == 1:
            self.linear1: nn.Module = nn.Linear(dim, dim)
            self.ffn: nn.Module = MLP(dim, int(dim * mlp_ratio), mlp_multiple_of)
        else:
            self.linear1 = ChannelLastConv1d(dim, dim, kernel_size, padding=kernel_size // 2)
            self.ffn = ConvMLP(dim, int(dim * mlp_ratio), kernel_size, mlp_multiple_of)
        self.norm2 = nn.LayerNorm(dim, elementwise_affine=False)
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(dim, 6 * dim, bias=True))

    def pre_attention(self, x: torch.Tensor, c: torch.Tensor, rot: torch.Tensor | None) -> tuple[QKV, Modulation]:
        modulation = self.adaLN_modulation(c)
        if self.pre_only:
            shift_msa, scale_msa = modulation.chunk(2, dim=-1)
            rest: Modulation = None
        else:
            shift_msa, scale_msa, gate_msa, shift_mlp, scale_mlp, gate_mlp = modulation.chunk(6, dim=-1)
            rest = (gate_msa, shift_mlp, scale_mlp, gate_mlp)
        qkv = self.attn.pre_attention(modulate(self.norm1(x), shift_msa, scale_msa), rot)
        return qkv, rest

    def post_attention(self, x: torch.Tensor, attn_out: torch.Tensor, rest: Modulation) -> torch.Tensor:
        if self.pre_only or rest is None:
            return x
        gate_msa, shift_mlp, scale_mlp, gate_mlp = rest
        x = x + self.linear1(attn_out) * gate_msa
        return x + self.ffn(modulate(self.norm2(x), shift_mlp, scale_mlp)) * gate_mlp

    def forward(self, x: torch.Tensor, c: torch.Tensor, rot: torch.Tensor | None) -> torch.Tensor:
        qkv, rest = self.pre_attention(x, c, rot)
        return self.post_attention(x, attention(*qkv), rest)


class JointBlock(nn.Module):
    """Latent, clip and text streams with one attention over the sequence [latent, clip, text].

    In the last joint block (pre_only) clip and text only give keys/values.
    """

    def __init__(
        self, dim: int, num_heads: int, mlp_ratio: float = 4.0, *, pre_only: bool = False, mlp_multiple_of: int = 256
    ) -> None:
        super().__init__()
        self.pre_only = pre_only
        m = mlp_multiple_of
        self.latent_block = SingleBlock(dim, num_heads, mlp_ratio, pre_only=False, kernel_size=3, mlp_multiple_of=m)
        self.clip_block = SingleBlock(dim, num_heads, mlp_ratio, pre_only=pre_only, kernel_size=3, mlp_multiple_of=m)
        self.text_block = SingleBlock(dim, num_heads, mlp_ratio, pre_only=pre_only, kernel_size=1, mlp_multiple_of=m)

    def forward(
        self,
        latent: torch.Tensor,
        clip_f: torch.Tensor,
        text_f: torch.Tensor,
        global_c: torch.Tensor,
        extended_c: torch.Tensor,
        latent_rot: torch.Tensor,
        clip_rot: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        x_qkv, x_mod = self.latent_block.pre_attention(latent, extended_c, latent_rot)
        c_qkv, c_mod = self.clip_block.pre_attention(clip_f, global_c, clip_rot)
        t_qkv, t_mod = self.text_block.pre_attention(text_f, global_c, None)
        joint = [torch.cat([x_qkv[i], c_qkv[i], t_qkv[i]], dim=2) for i in range(3)]
        out = attention(*joint)
        n_latent, n_clip = latent.shape[1], clip_f.shape[1]
        latent = self.latent_block.post_attention(latent, out[:, :n_latent], x_mod)
        if not self.pre_only:
            clip_f = self.clip_block.post_attention(clip_f, out[:, n_latent : n_latent + n_clip], c_mod)
            text_f = self.text_block.post_attention(text_f, out[:, n_latent + n_clip :], t_mod)
        return latent, clip_f, text_f


class FinalBlock(nn.Module):
    """adaLN (shift, scale) then a kernel-7 convolution to the latent channels."""

    def __init__(self, dim: int, out_dim: int) -> None:
        super().__init__()
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(dim, 2 * dim, bias=True))
        self.norm = nn.LayerNorm(dim, elementwise_affine=False)
        self.conv = ChannelLastConv1d(dim, out_dim, kernel_size=7, padding=3)

    def forward(self, x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        shift, scale = self.adaLN_modulation(c).chunk(2, dim=-1)
        return self.conv(modulate(self.norm(x), shift, scale))
