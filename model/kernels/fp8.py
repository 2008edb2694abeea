"""FP8 (e4m3) linear layers for the visual encoders' throughput path (opt-in: `--fp8`).

CLIP ViT-H/14 is ~64 TFLOP per 8 s clip, 91 % of it in linear layers, and already runs at
~60 % of the H200's bf16 peak compiled; FP8 matrix units double that peak. `Fp8Linear` keeps
the weight in float8 e4m3 with one scale per output channel and quantises each input row on
the fly (its own amax), then multiplies with `torch._scaled_mm` (row-wise scales, float32
accumulation). That is an approximation, not a faster way to the same numbers: e4m3 keeps 3
mantissa bits, so each product carries ~2-4 % relative error (tests measure the features'
deviation), which is why it is a flag and changes the run's config hash.

Needs a GPU with FP8 matrix units (compute capability 8.9+: Ada, Hopper); the CPU runs the same
`torch._scaled_mm` call (slowly), which is how the tests check it.
"""

from __future__ import annotations

import torch
import torch.nn as nn

E4M3 = torch.float8_e4m3fn
# What `dub generate --fp8` computes, in its run identity: a change here changes the features, so
# runs started under another recipe start afresh instead of mixing the two.
FP8_RECIPE = "e4m3 row-wise, fast accumulation; CLIP's vision tower only"
E4M3_MAX = float(torch.finfo(E4M3).max)  # 448
_ALIGN = 16  # torch._scaled_mm needs both matrix dims of the weight to be multiples of 16


def fp8_supported(device: torch.device | str) -> tuple[bool, str]:
    """Whether FP8 matmuls run on `device`, and why not."""
    device = torch.device(device)
    if not hasattr(torch, "_scaled_mm"):
        return False, "this torch has no torch._scaled_mm"
    if device.type == "cuda":
        major, minor = torch.cuda.get_device_capability(device)
        if (major, minor) < (8, 9):
            return False, f"compute capability {major}.{minor} has no FP8 matrix units (needs 8.9+)"
    return True, ""


def quantize_rows(rows: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(M, K) -> its e4m3 values and float32 scales (M, 1): each row divided by its own
    amax / 448, in float32. The amax of a bf16/fp16 row is taken in that dtype (abs and max are
    exact there, so it equals the float32 one) and the division promotes each element to
    float32 on the fly: the result is bit-identical to quantising a float32 copy of `rows`,
    without making that copy."""
    if rows.dtype not in (torch.bfloat16, torch.float16, torch.float32):
        rows = rows.float()  # float64 & co: round to float32 first, as before
    scale = rows.abs().amax(dim=1, keepdim=True).float().clamp(min=1e-12) / E4M3_MAX
    return (rows / scale).to(E4M3), scale


_BIAS_IN_SCALED_MM: dict[str, bool] = {}


def bias_in_scaled_mm(device: torch.device | str) -> bool:
    """Whether `torch._scaled_mm(..., bias=...)` works on `device`, tried once per device with a
    16 x 16 row-wise product (the CPU's emulation takes a bias of any float dtype; CUDA's
    row-wise kernels one of the output dtype, bf16 here). Where it does not, the bias is added
    after the matmul."""
    device = torch.device(device)
    key = str(device)
    if key not in _BIAS_IN_SCALED_MM:
        dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
        ones = torch.ones(16, 16, device=device)
        try:
            torch._scaled_mm(
                ones.to(E4M3),
                ones.to(E4M3).t(),
                scale_a=torch.ones(16, 1, device=device),
                scale_b=torch.ones(1, 16, device=device),
                bias=ones[0].to(dtype),
                out_dtype=dtype,
                use_fast_accum=True,
            )  # as Fp8Linear calls it
            _BIAS_IN_SCALED_MM[key] = True
        except Exception:  # noqa: BLE001 - whatever the platform says, the bias is added afterwards
            _BIAS_IN_SCALED_MM[key] = False
    return _BIAS_IN_SCALED_MM[key]


class Fp8Linear(nn.Module):
    """Inference stand-in for an `nn.Linear`: y = x W^T + b with W in e4m3 (per output channel
    scale) and x quantised per row; output in the autocast dtype when autocast is on, else in
    x's dtype."""

    def __init__(self, linear: nn.Linear) -> None:
        super().__init__()
        self.in_features, self.out_features = linear.in_features, linear.out_features
        w = linear.weight.detach().float()
        scale = w.abs().amax(dim=1, keepdim=True).clamp(min=1e-12) / E4M3_MAX
        self.register_buffer("weight_fp8", (w / scale).to(E4M3))  # (out, in), row-major
        self.register_buffer("weight_scale", scale.t().contiguous())  # (1, out)
        self.register_buffer("bias", None if linear.bias is None else linear.bias.detach().float().clone())
        # decided here, on the device the layer is converted on, so compiled graphs see a constant
        self.fused_bias = linear.bias is not None and bias_in_scaled_mm(linear.weight.device)
        # open_clip asks its MLP's first layer for the weight dtype (it knows int8 stand-ins by this name)
        self.int8_original_dtype = linear.weight.dtype

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        device_type = x.device.type
        if torch.is_autocast_enabled(device_type):
            out_dtype = torch.get_autocast_dtype(device_type)
        else:
            out_dtype = x.dtype
        x_fp8, x_scale = quantize_rows(x.reshape(-1, self.in_features))
        # CUDA's row-wise scaled matmul writes bf16 only; the CPU's also writes float32
        mm_dtype = torch.bfloat16 if x.is_cuda or out_dtype != torch.float32 else torch.float32
        # the bias in the matmul's epilogue (added to the float32 accumulator, rounded once) where
        # the platform takes it: it must have the output's dtype on CUDA (bf16)
        fused_bias = self.fused_bias
        # fast accumulation (Hopper's FP8 tensor cores add partial sums without promoting them to
        # float32 at every step): measured on an H200 at CLIP's four linears, 8-14 % faster with
        # the same error against float32 (clip_kernels_bench, docs/benchmarks.md); the CPU ignores it
        y = torch._scaled_mm(
            x_fp8,
            self.weight_fp8.t(),
            scale_a=x_scale,
            scale_b=self.weight_scale,
            bias=self.bias.to(mm_dtype) if fused_bias else None,
            out_dtype=mm_dtype,
            use_fast_accum=True,
        )
        if self.bias is not None and not fused_bias:
            y = y + self.bias.to(y.dtype)
        return y.to(out_dtype).reshape(*x.shape[:-1], self.out_features)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, e4m3 row-wise"


class ProjectedAttention(nn.Module):
    """`nn.MultiheadAttention` (batch first, plain projections) rewritten as its in-projection,
    `scaled_dot_product_attention` and its out-projection, so the projections can be any
    linear module (`Fp8Linear`). Same call and return as the module it replaces (open_clip's
    blocks call `attn(q, k, v, need_weights=False, attn_mask=...)[0]`)."""

    def __init__(self, mha: nn.MultiheadAttention, linear: type[nn.Module] | None = None) -> None:
        super().__init__()
        if not supports_projected_attention(mha):
            raise ValueError(
                "only batch-first nn.MultiheadAttention with one in-projection, no bias_k/bias_v, "
                "no zero attention and no dropout can be rewritten"
            )
        self.num_heads, self.embed_dim = mha.num_heads, mha.embed_dim
        in_proj = nn.Linear(mha.embed_dim, 3 * mha.embed_dim, bias=mha.in_proj_bias is not None)
        out_proj = nn.Linear(mha.embed_dim, mha.embed_dim, bias=mha.out_proj.bias is not None)
        in_proj.to(mha.in_proj_weight)
        out_proj.to(mha.out_proj.weight)
        with torch.no_grad():
            in_proj.weight.copy_(mha.in_proj_weight)
            out_proj.weight.copy_(mha.out_proj.weight)
            if mha.in_proj_bias is not None:
                in_proj.bias.copy_(mha.in_proj_bias)
            if mha.out_proj.bias is not None:
                out_proj.bias.copy_(mha.out_proj.bias)
        self.in_proj = in_proj if linear is None else linear(in_proj)
        self.out_proj = out_proj if linear is None else linear(out_proj)

    def forward(
        self,
        query: torch.Tensor,
        key: torch.Tensor,
        value: torch.Tensor,
        need_weights: bool = False,
        attn_mask: torch.Tensor | None = None,
        **_unused,
    ) -> tuple[torch.Tensor, None]:
        if need_weights:
            raise ValueError("ProjectedAttention does not return attention weights")
        b, n, d = query.shape
        if key is query and value is query:  # self-attention: one projection matmul
            q, k, v = self.in_proj(query).chunk(3, dim=-1)
        elif key is value:  # e.g. the class token's query over all tokens: one matmul for k and v
            q = self.in_proj(query)[..., :d]
            _, k, v = self.in_proj(key).chunk(3, dim=-1)
        else:
            q = self.in_proj(query)[..., :d]
            k = self.in_proj(key)[..., d : 2 * d]
            v = self.in_proj(value)[..., 2 * d :]
        heads = [x.reshape(x.shape[0], x.shape[1], self.num_heads, -1).transpose(1, 2) for x in (q, k, v)]
        if attn_mask is not None and attn_mask.dtype != torch.bool:
            attn_mask = attn_mask.to(heads[0].dtype)
        out = torch.nn.functional.scaled_dot_product_attention(*heads, attn_mask=attn_mask)
        return self.out_proj(out.transpose(1, 2).reshape(b, n, d)), None


def supports_projected_attention(mha: nn.MultiheadAttention) -> bool:
    return (
        mha.batch_first
        and mha._qkv_same_embed_dim
        and mha.bias_k is None
        and mha.bias_v is None
        and not mha.add_zero_attn
        and mha.dropout == 0.0
    )


def convert_linears_to_fp8(module: nn.Module) -> int:
    """Replace every eligible `nn.Linear` under `module` by an `Fp8Linear`, in place; returns
    how many. `nn.MultiheadAttention` (whose forward reads its weights directly) becomes a
    `ProjectedAttention` with FP8 projections where it can (two layers). Skipped: layers whose
    dims are not multiples of 16."""
    count = 0
    for name, child in list(module.named_children()):
        if isinstance(child, nn.MultiheadAttention):
            if child.embed_dim % _ALIGN == 0 and supports_projected_attention(child):
                setattr(module, name, ProjectedAttention(child, linear=Fp8Linear))
                count += 2
            continue
        if isinstance(child, nn.Linear) and not isinstance(child, Fp8Linear):
            if child.in_features % _ALIGN == 0 and child.out_features % _ALIGN == 0:
                setattr(module, name, Fp8Linear(child))
                count += 1
            continue
        count += convert_linears_to_fp8(child)
    return count
