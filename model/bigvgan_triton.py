"""BigVGAN's anti-aliased Snake as ONE Triton kernel (CUDA, eager and CUDA graphs).

Each output sample k of `AntiAliasedActivation` is, in the polyphase form of `model.bigvgan`
(7-tap phases, edges replicated by clamping indices):

    e(q), o(q) = snake(sum_j U[0, j] x[q + j - 3]), snake(sum_j U[1, j] x[q + j - 3])   (q clamped to [0, T))
    out[k]     = sum_i D[0, i] e'(k + i - 3) + D[1, i] o'(k + i - 3)

where past the right end e' takes the odd phase's last value and before the left end o' takes
the even phase's first (the 2x signal's edge replication). The kernel recomputes the two up
phases for each of the 7 low-pass taps instead of storing them: 49 cached loads and 14 sines
per output against one read of x and one write, where the unfused form moves the 2x signal
through memory several times (the vocoder's dominant cost on an H200, docs/benchmarks.md).

`TRITON_INTERPRET=1` runs the same kernel on CPU tensors, which is how the tests check it.
"""

from __future__ import annotations

import torch

try:
    import triton
    import triton.language as tl
except ImportError:  # pragma: no cover - triton ships with torch's CUDA wheels
    triton = None

BLOCK = 256


def available() -> bool:
    return triton is not None


if triton is not None:

    @triton.jit
    def _anti_aliased_snake_kernel(x_ptr, out_ptr, alpha_ptr, inv_beta_ptr, up_ptr, down_ptr, T, C,
                                   BLOCK: tl.constexpr):
        row = tl.program_id(0)  # b * C + c
        k = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
        c = row % C
        alpha = tl.load(alpha_ptr + c)
        inv_beta = tl.load(inv_beta_ptr + c)
        base = row.to(tl.int64) * T
        acc = tl.zeros([BLOCK], dtype=tl.float32)
        for i in tl.static_range(7):
            q = k + (i - 3)
            qc = tl.minimum(tl.maximum(q, 0), T - 1)
            even = tl.zeros([BLOCK], dtype=tl.float32)
            odd = tl.zeros([BLOCK], dtype=tl.float32)
            for j in tl.static_range(7):
                idx = tl.minimum(tl.maximum(qc + (j - 3), 0), T - 1)  # always in range: no mask
                xv = tl.load(x_ptr + base + idx).to(tl.float32)
                even += tl.load(up_ptr + j) * xv
                odd += tl.load(up_ptr + 7 + j) * xv
            se = tl.sin(even * alpha)
            so = tl.sin(odd * alpha)
            even = even + se * se * inv_beta
            odd = odd + so * so * inv_beta
            acc += tl.load(down_ptr + i) * tl.where(q >= T, odd, even)
            acc += tl.load(down_ptr + 7 + i) * tl.where(q < 0, even, odd)
        tl.store(out_ptr + base + k, acc.to(out_ptr.dtype.element_ty), mask=k < T)


def anti_aliased_snake(x: torch.Tensor, alpha: torch.Tensor, inv_beta: torch.Tensor, up_taps: torch.Tensor,
                       down_taps: torch.Tensor) -> torch.Tensor:
    """x (B, C, T) -> (B, C, T) in x's dtype. alpha and inv_beta: (C,) float32, Snake's
    frequency and 1 / (beta + eps) after any log scale; up_taps, down_taps: (2, 7) float32
    from `model.bigvgan.polyphase_weights`."""
    if triton is None:
        raise RuntimeError("triton is not installed")
    if x.ndim != 3:
        raise ValueError(f"expected (B, C, T), got {tuple(x.shape)}")
    b, c, t = x.shape
    x = x.contiguous()
    out = torch.empty_like(x)
    f32 = dict(device=x.device, dtype=torch.float32)
    grid = (b * c, triton.cdiv(t, BLOCK))
    _anti_aliased_snake_kernel[grid](x, out, alpha.to(**f32).contiguous(), inv_beta.to(**f32).contiguous(),
                                     up_taps.to(**f32).contiguous(), down_taps.to(**f32).contiguous(), t, c,
                                     BLOCK=BLOCK)
    return out
