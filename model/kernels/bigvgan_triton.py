"""BigVGAN's anti-aliased Snake as two Triton kernels (CUDA, eager and CUDA graphs).

Each output sample k of `AntiAliasedActivation` is, in the polyphase form of `dub.model.codec.bigvgan`
(7-tap phases, edges replicated by clamping indices):

    e(q), o(q) = snake(sum_j U[0, j] x[q + j - 3]), snake(sum_j U[1, j] x[q + j - 3])   (q in [0, T))
    out[k]     = sum_i D[0, i] e'(k + i - 3) + D[1, i] o'(k + i - 3)

where e' and o' clamp q into [0, T), except that past the right end e' takes the odd phase's
last value and before the left end o' takes the even phase's first (the 2x signal's edge
replication).

Pass 1 writes e and o (float32) once per sample; pass 2 reads them back for the low-pass.
The first version computed both in one kernel and recomputed the two phases for each of the
7 low-pass taps (14 accurate sines and 98 multiply-adds per output): on an H200 that kernel
was compute-bound and most of the vocoder's time (docs/benchmarks.md). Two passes
do 2 sines and 28 multiply-adds per output for 16 more bytes of memory traffic, and give
the same numbers (same float operations in the same order).

`TRITON_INTERPRET=1` runs the same kernels on CPU tensors, which is how the tests check them.
"""

from __future__ import annotations

import torch

try:
    import triton
    import triton.language as tl
except ImportError:  # pragma: no cover - triton ships with torch's CUDA wheels
    triton = None

BLOCK = 512


if triton is not None:

    @triton.jit
    def _snake_phases_kernel(x_ptr, phases_ptr, alpha_ptr, inv_beta_ptr, up_ptr, T, C, BLOCK: tl.constexpr):
        """phases[row, 0, q] = e(q), phases[row, 1, q] = o(q) in float32; x is (rows, T)."""
        row = tl.program_id(0)  # b * C + c
        q = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
        mask = q < T
        c = row % C
        alpha = tl.load(alpha_ptr + c)
        inv_beta = tl.load(inv_beta_ptr + c)
        base = row.to(tl.int64) * T
        even = tl.zeros([BLOCK], dtype=tl.float32)
        odd = tl.zeros([BLOCK], dtype=tl.float32)
        for j in tl.static_range(7):
            idx = tl.minimum(tl.maximum(q + (j - 3), 0), T - 1)
            xv = tl.load(x_ptr + base + idx, mask=mask, other=0.0).to(tl.float32)
            even += tl.load(up_ptr + j) * xv
            odd += tl.load(up_ptr + 7 + j) * xv
        se = tl.sin(even * alpha)
        so = tl.sin(odd * alpha)
        even = even + se * se * inv_beta
        odd = odd + so * so * inv_beta
        phases = phases_ptr + 2 * base  # (rows, 2, T)
        tl.store(phases + q, even, mask=mask)
        tl.store(phases + T + q, odd, mask=mask)

    @triton.jit
    def _lowpass_kernel(phases_ptr, out_ptr, down_ptr, T, BLOCK: tl.constexpr):
        """out[row, k] = the 7-tap low-pass of both phases, with the 2x signal's edge replication."""
        row = tl.program_id(0)
        k = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
        base = row.to(tl.int64) * T
        phases = phases_ptr + 2 * base
        acc = tl.zeros([BLOCK], dtype=tl.float32)
        for i in tl.static_range(7):
            q = k + (i - 3)
            qc = tl.minimum(tl.maximum(q, 0), T - 1)  # always in range: no mask
            even = tl.load(phases + qc)
            odd = tl.load(phases + T + qc)
            acc += tl.load(down_ptr + i) * tl.where(q >= T, odd, even)
            acc += tl.load(down_ptr + 7 + i) * tl.where(q < 0, even, odd)
        tl.store(out_ptr + base + k, acc.to(out_ptr.dtype.element_ty), mask=k < T)


def anti_aliased_snake(
    x: torch.Tensor, alpha: torch.Tensor, inv_beta: torch.Tensor, up_taps: torch.Tensor, down_taps: torch.Tensor
) -> torch.Tensor:
    """x (B, C, T) -> (B, C, T) in x's dtype. alpha and inv_beta: (C,) float32, Snake's
    frequency and 1 / (beta + eps) after any log scale; up_taps, down_taps: (2, 7) float32
    from `dub.model.codec.mmaudio.bigvgan.polyphase_weights`."""
    if triton is None:
        raise RuntimeError("triton is not installed")
    if x.ndim != 3:
        raise ValueError(f"expected (B, C, T), got {tuple(x.shape)}")
    b, c, t = x.shape
    x = x.contiguous()
    out = torch.empty_like(x)
    phases = torch.empty(b * c, 2, t, device=x.device, dtype=torch.float32)
    f32 = dict(device=x.device, dtype=torch.float32)
    grid = (b * c, triton.cdiv(t, BLOCK))
    _snake_phases_kernel[grid](
        x,
        phases,
        alpha.to(**f32).contiguous(),
        inv_beta.to(**f32).contiguous(),
        up_taps.to(**f32).contiguous(),
        t,
        c,
        BLOCK=BLOCK,
    )
    _lowpass_kernel[grid](phases, out, down_taps.to(**f32).contiguous(), t, BLOCK=BLOCK)
    return out
