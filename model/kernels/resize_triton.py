"""Separable two-pass bicubic antialiased resize of uint8 images (Triton on CUDA).

`F.interpolate(x.float(), mode="bicubic", antialias=True)` on CUDA computes every output pixel
from all its taps_x * taps_y inputs (about 180 at a 3.2x downscale) and first copies a
channels-last input to NCHW. Its arithmetic is nevertheless separable: for each y tap it sums
the x taps (float32), then sums those row values weighted by wy (ATen's
`upsample_gen2d_aa_out_frame`, `aten/src/ATen/native/cuda/UpSampleBilinear2d.cu`). A row value
depends only on (input row, output column), so computing it once in a horizontal pass and then
running a vertical pass over the stored rows performs the same float operations in the same
order, with taps_x + taps_y work per pixel:

    pass 1: t[n, y, ox, c]    = sum_k wx[ox, k] * in[n, y, xmin[ox] + k, c]     (float32)
    pass 2: out[n, oy, ox, c] = round(clamp(sum_k wy[oy, k] * t[n, ymin[oy] + k, ox, c], 0, 255))

Sums run k = 0, 1, ... as acc = fma(value, weight, acc): nvcc contracts ATen's
`output += t * wts` into FMAs, and a weight of 0 past a span's end leaves acc unchanged.
Rounding is half to even, like torch.round. The weights follow ATen's CUDA code
(`_compute_weights_span`, `_compute_weights`, `BicubicFilterFunctor` in
`aten/src/ATen/native/cuda/UpSample.cuh`), computed once per (in, out) size with torch,
including the FMAs nvcc forms there (`_axis_weights_cpu`). On an H200 (torch 2.11) the weights
equal the ones F.interpolate uses and the output equals resize_uint8's on 1600 + 512 random
720p frames (scripts/resize_bench.py); summing without FMAs flips ~1 value in 2e5 by 1.

Layouts: the input is read as channels-last uint8 (what `frames_to_images` views), the output
is uint8 (N, C, oh, ow) in channels-last memory, as F.interpolate returns for a channels-last
input. Off CUDA the same two passes run in plain torch (`resize_reference`): each step is a
float32 multiply then add, which is also what Triton's interpreter does for `tl.fma`, so the
tests compare the kernel with it exactly.
"""

from __future__ import annotations

import functools

import torch

try:
    import triton
    import triton.language as tl
except ImportError:  # pragma: no cover - triton ships with torch's CUDA wheels
    triton = None

BICUBIC_A = -0.5  # PIL's bicubic, ATen's antialiased BicubicFilterFunctor (not -0.75)
BLOCK = 1024
# Pass 1's float32 rows for one chunk of images: larger chunks stopped paying at about this
# size when it was timed (scripts/resize_bench.py, docs/benchmarks.md).
TEMP_BYTES = 256 * 2**20


def _fma32(a: torch.Tensor, b, c) -> torch.Tensor:
    """float32 fma: the float64 product of two float32 is exact, then one rounding to float32
    (through float64: a double rounding that can differ from a true fma about once in 2^29)."""
    return (a.double() * b + c).float()


def _bicubic_filter(x: torch.Tensor, fused: bool = True) -> torch.Tensor:
    """ATen's BicubicFilterFunctor in float32: ((a+2)x - (a+3)) x x + 1 for |x| < 1,
    (((x - 5) x + 8) x - 4) a for |x| < 2, with the multiply-adds fused as nvcc (and this CPU
    build of ATen) compile them; fused=False rounds every product (comparisons only)."""
    fma = _fma32 if fused else (lambda a, b, c: a * b + c)
    x = x.abs()
    near = fma(fma(x, BICUBIC_A + 2, -(BICUBIC_A + 3)) * x, x, 1.0)
    far = fma(fma(x - 5, x, 8.0), x, -4.0) * BICUBIC_A
    zero = torch.zeros_like(x)
    return torch.where(x < 1, near, torch.where(x < 2, far, zero))


@functools.lru_cache(maxsize=16)
def _axis_weights_cpu(
    in_size: int, out_size: int, fuse_center: bool = True, fuse_filter: bool = True
) -> tuple[torch.Tensor, torch.Tensor]:
    """ATen CUDA's float32 steps, vectorised over the output index.

    nvcc contracts each use of center = scale * (i + 0.5) (center -/+ support, xmin - center)
    into one fma (fuse_center); ATen's CPU code rounds center first (fuse_center=False, which
    with fuse_filter reproduces this CPU build's weights: tests/test_resize_triton.py).
    """
    f32 = torch.float32
    scale = torch.tensor(in_size, dtype=f32) / out_size  # area_pixel_compute_scale: float32 in / out
    support = 2.0 * scale if scale >= 1 else torch.tensor(2.0)  # interp_size 4 (bicubic) / 2
    invscale = 1.0 / scale if scale >= 1 else torch.tensor(1.0)
    # float64 holds the product and the sums below exactly, so .float() is the fma's one rounding
    center = scale.double() * (torch.arange(out_size, dtype=torch.float64) + 0.5)
    if not fuse_center:
        center = center.float().double()
    # int() truncates toward zero, as the C++ casts do
    xmin = ((center - support).float() + 0.5).to(torch.int32).clamp_min(0)
    xsize = ((center + support).float() + 0.5).to(torch.int32).clamp_max(in_size) - xmin
    taps = int(xsize.max())
    xmin_m_center = (xmin.double() - center).float()
    weights = torch.zeros(out_size, taps, dtype=f32)
    total = torch.zeros(out_size, dtype=f32)
    for j in range(taps):  # sequential float32 sum, ATen's total_w order
        w = _bicubic_filter((j + xmin_m_center + 0.5) * invscale, fuse_filter)
        w = torch.where(j < xsize, w, torch.zeros_like(w))
        weights[:, j] = w
        total = total + w
    weights = torch.where(total[:, None] != 0, weights / total[:, None], weights)
    return xmin, weights


@functools.lru_cache(maxsize=32)
def axis_weights(
    in_size: int, out_size: int, device: str = "cpu", fuse_center: bool = True
) -> tuple[torch.Tensor, torch.Tensor]:
    """(first tap (out,) int32, weights (out, taps) float32, zero past each span) for one axis."""
    xmin, weights = _axis_weights_cpu(in_size, out_size, fuse_center)
    return xmin.to(device), weights.to(device)


def _channels_last(images: torch.Tensor) -> torch.Tensor:
    """(N, C, H, W) -> its (N, H, W, C) contiguous view (copying only if memory is not NHWC)."""
    if images.dtype != torch.uint8 or images.ndim != 4:
        raise TypeError(f"expected uint8 (N, C, H, W) images, got {images.dtype} {tuple(images.shape)}")
    nhwc = images.permute(0, 2, 3, 1)
    return nhwc if nhwc.is_contiguous() else nhwc.contiguous()


def resize_reference(images: torch.Tensor, size: tuple[int, int], *, fuse_center: bool = True) -> torch.Tensor:
    """The two passes in plain float32 torch (any device): float32 (N, C, oh, ow) before rounding.
    fuse_center=False takes ATen CPU's weights instead of CUDA's (tests)."""
    x = _channels_last(images).float()
    for axis, out_size in ((2, size[1]), (1, size[0])):  # width first, then height (ATen's order)
        start, weights = axis_weights(x.shape[axis], out_size, str(x.device), fuse_center)
        index = (start[:, None] + torch.arange(weights.shape[1], device=x.device)).clamp_max(x.shape[axis] - 1)
        shape = list(x.shape)
        shape[axis] = out_size
        acc = torch.zeros(shape, device=x.device)
        shape = [out_size if d == axis else 1 for d in range(4)]
        for k in range(weights.shape[1]):
            acc = acc + x.index_select(axis, index[:, k]) * weights[:, k].view(shape)
        x = acc
    return x.permute(0, 3, 1, 2)


def round_uint8(x: torch.Tensor) -> torch.Tensor:
    """What resize_uint8 does to F.interpolate's float result: clamp, round half to even, uint8."""
    return x.clamp(0, 255).round().to(torch.uint8)


if triton is not None:

    @triton.jit
    def _resample_axis_kernel(
        in_ptr, out_ptr, start_ptr, w_ptr, total, OE, E, L, taps, FINAL: tl.constexpr, BLOCK: tl.constexpr
    ):
        """out[b, o, e] = sum_k w[o, k] * in[b, start[o] + k, e] over a flat (b, o, e) index;
        in is (B, L, E), out (B, O, E), both contiguous. Pass 1: b = (n, y), o = ox, e = c;
        pass 2: b = n, o = oy, e = (ox, c). FINAL: clamp, round and store uint8."""
        f = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
        mask = f < total
        b = f // OE
        r = f - b * OE
        o = r // E
        e = r - o * E
        start = tl.load(start_ptr + o, mask=mask, other=0)
        base = b * (L * E) + e
        acc = tl.zeros([BLOCK], dtype=tl.float32)
        for k in range(taps):
            idx = tl.minimum(start + k, L - 1)  # past a span's end the weight is 0: any row will do
            v = tl.load(in_ptr + base + idx * E, mask=mask, other=0).to(tl.float32)
            w = tl.load(w_ptr + o * taps + k, mask=mask, other=0.0)
            acc = tl.fma(v, w, acc)
        if FINAL:
            acc = tl.minimum(tl.maximum(acc, 0.0), 255.0)
            # adding then subtracting 1.5 * 2^23 rounds float32 |x| < 2^22 half to even (torch.round)
            acc = (acc + 12582912.0) - 12582912.0
            tl.store(out_ptr + f, acc.to(tl.uint8), mask=mask)
        else:
            tl.store(out_ptr + f, acc, mask=mask)


def _launch(src: torch.Tensor, dst: torch.Tensor, start: torch.Tensor, weights: torch.Tensor, final: bool) -> None:
    """src (B, L, E) -> dst (B, O, E) along L."""
    b, length, e = src.shape
    out_size = dst.shape[1]
    total = b * out_size * e
    if max(total, src.numel()) >= 2**31:
        raise ValueError("chunk too large for int32 indexing")
    _resample_axis_kernel[(triton.cdiv(total, BLOCK),)](
        src, dst, start, weights, total, out_size * e, e, length, weights.shape[1], FINAL=final, BLOCK=BLOCK
    )


def resize_triton(images: torch.Tensor, size: tuple[int, int], *, temp_bytes: int = TEMP_BYTES) -> torch.Tensor:
    """The two passes as Triton kernels (CUDA, or CPU under TRITON_INTERPRET=1): uint8 (N, C, oh, ow),
    channels-last memory. Images go through in chunks so pass 1's float32 rows stay near temp_bytes."""
    if triton is None:
        raise RuntimeError("triton is not installed")
    src = _channels_last(images)
    n, h, w, c = src.shape
    oh, ow = size
    device = str(src.device)
    xstart, wx = axis_weights(w, ow, device)
    ystart, wy = axis_weights(h, oh, device)
    out = torch.empty(n, oh, ow, c, dtype=torch.uint8, device=src.device)
    chunk = max(1, min(n, temp_bytes // (h * ow * c * 4)))
    rows = torch.empty(chunk, h, ow, c, dtype=torch.float32, device=src.device)
    for i in range(0, n, chunk):
        m = min(chunk, n - i)
        _launch(src[i : i + m].view(m * h, w, c), rows[:m].view(m * h, ow, c), xstart, wx, final=False)
        _launch(rows[:m].view(m, h, ow * c), out[i : i + m].view(m, oh, ow * c), ystart, wy, final=True)
    return out.permute(0, 3, 1, 2)


def resize_uint8_separable(images: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Drop-in for `dub.model.encoders.clip.resize_uint8`: uint8 (N, C, H, W) -> uint8 (N, C, oh, ow)
    (channels-last memory). Triton on CUDA; elsewhere the same two passes in torch."""
    size = (int(size[0]), int(size[1]))
    if tuple(images.shape[-2:]) == size:
        return images
    if images.device.type == "cuda":
        return resize_triton(images, size)
    return round_uint8(resize_reference(images, size))
