"""Synchformer's divided attention as one Triton kernel per call (CUDA, inference).

In each MotionFormer block, every token attends either along time (the 8 tokens of its patch
position) or along space (the 196 tokens of its frame), plus the shared CLS token. With
`F.scaled_dot_product_attention` that takes a strided gather of q, a concatenation of the CLS
key/value onto every group's keys and values, transposes back and a concatenation of the
output: several full copies of activations per attention, and the time attention becomes
~450 k attention problems of 8 queries x 9 keys (192 segments x 12 heads x 196 patches), each
padded to the flash/efficient kernels' query tiles, and more of them than one CUDA grid axis
holds (65 535; which of torch's kernels then runs it was not profiled).

`grouped_attention` reads q, k and v straight from the qkv projection's output and writes each
query's result straight into the (tokens, heads * head_dim) layout the output projection
reads; the CLS key/value enter as the online softmax's starting state rather than as copies.
Query tiles are BLOCK_M consecutive (group, element) pairs; a tile's keys are the whole groups
it touches, masked to each query's own group (for time attention a 64-query tile holds 8
groups; compute is negligible there, memory traffic is what counts).

The CLS token's own query (one per segment and head, over all tokens) stays with SDPA.
`TRITON_INTERPRET=1` runs the kernel on CPU tensors, which is how the tests check it.
"""

from __future__ import annotations

import math

import torch

try:
    import triton
    import triton.language as tl
except ImportError:  # pragma: no cover - triton ships with torch's CUDA wheels
    triton = None

# Launch configuration (query tile, key tile, warps): the fastest of the five tried for both
# attentions by scripts/sync_attention_bench.py on an H200 (batch of 8 clips, bf16); the figures
# are in docs/benchmarks.md.
BLOCK_M = 64
BLOCK_N = 32
NUM_WARPS = 4


if triton is not None:

    @triton.jit
    def _grouped_attention_kernel(
        qkv_ptr,
        out_ptr,
        L,
        H,
        S,
        GS,
        GROUP_STRIDE,
        ELEM_STRIDE,
        scale,
        HEAD_DIM: tl.constexpr,
        BLOCK_D: tl.constexpr,
        BLOCK_M: tl.constexpr,
        BLOCK_N: tl.constexpr,
        IEEE: tl.constexpr,
    ):
        """qkv (N, L, 3, H, HEAD_DIM), out (N, L, H, HEAD_DIM), both contiguous. Group element
        (g, i), g < GS // S, i < S, is token 1 + g * GROUP_STRIDE + i * ELEM_STRIDE; token 0 is CLS."""
        pid_nh = tl.program_id(0)
        tile = tl.program_id(1)
        n = pid_nh // H
        h = pid_nh % H
        row_qkv = 3 * H * HEAD_DIM
        row_out = H * HEAD_DIM
        qkv = qkv_ptr + n.to(tl.int64) * L * row_qkv + h * HEAD_DIM
        out = out_ptr + n.to(tl.int64) * L * row_out + h * HEAD_DIM
        d = tl.arange(0, BLOCK_D)
        d_ok = d < HEAD_DIM

        m = tile * BLOCK_M + tl.arange(0, BLOCK_M)
        m_ok = m < GS
        group = m // S
        token = 1 + group * GROUP_STRIDE + (m % S) * ELEM_STRIDE
        q_mask = m_ok[:, None] & d_ok[None, :]
        q = tl.load(qkv + token[:, None] * row_qkv + d[None, :], mask=q_mask, other=0.0)

        # the CLS key/value: every query sees them; they start the online softmax
        k_cls = tl.load(qkv + H * HEAD_DIM + d, mask=d_ok, other=0.0).to(tl.float32)
        v_cls = tl.load(qkv + 2 * H * HEAD_DIM + d, mask=d_ok, other=0.0).to(tl.float32)
        row_max = tl.sum(q.to(tl.float32) * k_cls[None, :], axis=1) * scale
        row_sum = tl.full([BLOCK_M], 1.0, dtype=tl.float32)
        acc = tl.zeros([BLOCK_M, BLOCK_D], dtype=tl.float32) + v_cls[None, :]

        # keys: every element of the groups this tile touches
        first = tile * BLOCK_M
        last = tl.minimum(first + BLOCK_M, GS) - 1
        key_start = (first // S) * S
        key_end = (last // S + 1) * S
        for start in range(key_start, key_end, BLOCK_N):
            kn = start + tl.arange(0, BLOCK_N)
            kn_ok = kn < key_end
            k_group = kn // S
            k_token = 1 + k_group * GROUP_STRIDE + (kn % S) * ELEM_STRIDE
            kv_mask = kn_ok[:, None] & d_ok[None, :]
            k = tl.load(qkv + H * HEAD_DIM + k_token[:, None] * row_qkv + d[None, :], mask=kv_mask, other=0.0)
            v = tl.load(qkv + 2 * H * HEAD_DIM + k_token[:, None] * row_qkv + d[None, :], mask=kv_mask, other=0.0)
            if IEEE:
                s = tl.dot(q, tl.trans(k), input_precision="ieee")
            else:
                s = tl.dot(q, tl.trans(k))
            same = (group[:, None] == k_group[None, :]) & kn_ok[None, :]
            s = tl.where(same, s * scale, float("-inf"))
            new_max = tl.maximum(row_max, tl.max(s, axis=1))
            correction = tl.exp(row_max - new_max)
            p = tl.exp(s - new_max[:, None])
            row_sum = row_sum * correction + tl.sum(p, axis=1)
            if IEEE:
                pv = tl.dot(p.to(v.dtype), v, input_precision="ieee")
            else:
                pv = tl.dot(p.to(v.dtype), v)
            acc = acc * correction[:, None] + pv
            row_max = new_max

        result = acc / row_sum[:, None]
        tl.store(out + token[:, None] * row_out + d[None, :], result.to(out_ptr.dtype.element_ty), mask=q_mask)


def grouped_attention(
    qkv: torch.Tensor,
    heads: int,
    frames: int,
    patches: int,
    along_time: bool,
    out: torch.Tensor | None = None,
    *,
    block_m: int = BLOCK_M,
    block_n: int = BLOCK_N,
    num_warps: int = NUM_WARPS,
) -> torch.Tensor:
    """Divided attention of every non-CLS token of `qkv` (N, 1 + frames * patches, 3 * D), laid
    out as the qkv projection writes it (q, k, v blocks, heads inside each), with tokens ordered
    (frame, patch). Returns `out` (N, L, D): rows 1.. hold the attention output in the layout
    the output projection reads; row 0 (CLS) is left for the caller."""
    if triton is None:
        raise RuntimeError("triton is not installed")
    n, length, width = qkv.shape
    dim = width // 3
    if width % 3 or dim % heads or length != 1 + frames * patches:
        raise ValueError(f"qkv {tuple(qkv.shape)} does not match {heads} heads, {frames} frames x {patches} patches")
    head_dim = dim // heads
    qkv = qkv.contiguous()
    if out is None:
        out = torch.empty(n, length, dim, device=qkv.device, dtype=qkv.dtype)
    if along_time:  # groups: patch positions; elements: frames
        group_len, group_stride, elem_stride = frames, 1, patches
    else:  # groups: frames; elements: patch positions
        group_len, group_stride, elem_stride = patches, patches, 1
    grouped = frames * patches
    grid = (n * heads, triton.cdiv(grouped, block_m))
    _grouped_attention_kernel[grid](
        qkv,
        out,
        length,
        heads,
        group_len,
        grouped,
        group_stride,
        elem_stride,
        1.0 / math.sqrt(head_dim),
        HEAD_DIM=head_dim,
        BLOCK_D=max(16, triton.next_power_of_2(head_dim)),
        BLOCK_M=block_m,
        BLOCK_N=block_n,
        IEEE=qkv.dtype == torch.float32,
        num_warps=num_warps,
    )
    return out
