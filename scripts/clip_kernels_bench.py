#!/usr/bin/env python3
"""CLIP ViT-H/14's kernels one at a time at their real shapes: attention under each SDPA backend,
and the four linear layers in bf16 and in FP8, taken apart (quantisation, matmul, bias, fast
accumulation), so one GPU run says where compiled FP8 CLIP's time goes.

    python3 scripts/clip_kernels_bench.py --out $OUT                # GPU, real shapes
    python3 scripts/clip_kernels_bench.py --device cpu --tiny       # smoke test, seconds

Shapes (open_clip ViT-H/14 @ 378 px, DFN5B): 730 tokens per frame, width 1280, 16 heads of dim 80,
MLP 5120, 32 layers; --frames per call (default 64 = one 8 s clip, M = 64 * 730 = 46720 rows).
Inputs are random (std 1 activations, 1/sqrt(K) weights, 0.1 bias) in bf16 on CUDA, float32 on
the CPU (--dtype); FP8 is e4m3 with one scale per row of x and per output channel of W, as
`dub.model.kernels.fp8.Fp8Linear`.

Attention, q/k/v (frames, 16, 730, 80), `F.scaled_dot_product_attention` under
`sdpa_kernel([backend])` for FLASH_ATTENTION, EFFICIENT_ATTENTION, CUDNN_ATTENTION and MATH, on
two layouts: "contiguous" tensors and "qkv views" (heads as strided views of one (frames, 730,
3 * 1280) projection output, as `dub.model.kernels.fp8.ProjectedAttention` and open_clip make them).

Linears (with bias), for qkv 1280->3840, attn-out 1280->1280, fc1 1280->5120, fc2 5120->1280:
  bfloat16 F.linear               the baseline (cuBLAS, bias in the epilogue)
  Fp8Linear                       model/kernels/fp8.py as it is now
  quantise (float32 copy, before) Fp8Linear's quantisation before it stopped copying x to float32
  quantise (dub.model.kernels.fp8)            dub.model.kernels.fp8.quantize_rows: amax per row + divide + cast to e4m3
  _scaled_mm                      the FP8 matmul alone on a pre-quantised x, no bias
  _scaled_mm + bias add           ... then a separate bias add (Fp8Linear's old form)
  _scaled_mm(bias=)               the bias in the matmul's epilogue (Fp8Linear's form now)
  _scaled_mm(fast_accum)          use_fast_accum=True, no bias
  _scaled_mm(bias=, fast_accum)   both
  quantise + _scaled_mm(bias=, fast_accum)   the fastest eager FP8 linear these pieces make
  compiled quantise / compiled Fp8Linear     torch.compile (dynamic=False) of the two, on CUDA
                                  (--compile off|on): Inductor fuses the quantisation, as in
                                  the 966 ms compiled FP8 run. They run after every eager row
                                  (so --budget-s cuts them first).
Fp8Linear before this script = "quantise (float32 copy, before)" + "_scaled_mm + bias add".
torch._scaled_mm's arguments: CUDA's row-wise path takes a bias only with a bf16/fp16 output and
a bias of that dtype (none with a float32 output); use_fast_accum is honoured on Hopper. The CPU
(an emulation: dequantise to float32, matmul, add the bias, cast) takes a float32, bf16 or fp16
bias with a float32 or bf16 output and accepts use_fast_accum, which changes nothing there.

Each row: median ms per call (`dub.workflows.bench.time_call`: CUDA-synchronised wall time over
--inner back-to-back calls, divided by --inner), TFLOP/s (GEMM FLOPs 2MKN, attention 4 B H L^2 D;
quantisation rows give GB/s of their minimal traffic instead) and max|out - ref| / max|ref|
against a float32 reference (TF32 off) on the same (rounded) inputs; quantisation rows compare
the dequantised x with x. A variant that fails (unsupported backend, no FP8 units) is a row with
the error text; the run goes on. "projected" sums each linear form over the four shapes and
scales every row to CLIP's 32 layers x 512 frames (a batch of 8 clips) to compare with the
1098 ms (bf16 compiled) and 966 ms (FP8 compiled) measured for the whole tower on an H200.

Time, assumed for an H100/H200 at the defaults (64 frames, warmup 2, repeats 10, inner 5): every
timed kernel is 0.1-10 ms, so 56 rows x 60 calls is < 10 s; the float32 references < 0.5 s;
CUDA/cuBLAS/cuDNN start-up a few s; the 6 torch.compile builds (2 quantise + 4 Fp8Linear shapes,
no autotuning) ~10-30 s on a cold Inductor cache. --budget-s (default 45) turns every row not
started by then into a "skipped" row, so the script ends within about budget + one row.
Peak GPU memory under 10 GB (the float32 attention reference's 64 x 16 x 730^2 scores).
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import time
import warnings
from pathlib import Path

import torch
import torch.nn.functional as F

from dub.errors import short_error
from dub.model.kernels import fp8  # noqa: E402
from dub.model.kernels.switch import peak_relative_error
from dub.workflows.bench import time_call

# open_clip ViT-H/14 @ 378 px: (378 / 14)^2 + 1 tokens
TOKENS, WIDTH, HEADS, MLP, LAYERS = 730, 1280, 16, 5120, 32
BATCH_FRAMES = 512  # 8 clips x 64 frames: the batch the 1098 / 966 ms were measured on
# --tiny: the same structure, small (every dim a multiple of 16, as torch._scaled_mm needs)
TINY = {"frames": 2, "tokens": 50, "width": 160, "heads": 2, "mlp": 640}
BACKENDS = ("FLASH_ATTENTION", "EFFICIENT_ATTENTION", "CUDNN_ATTENTION", "MATH")
DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}


def linear_shapes(width: int, mlp: int) -> list[tuple[str, int, int]]:
    return [("qkv", width, 3 * width), ("attn-out", width, width), ("fc1", width, mlp), ("fc2", mlp, width)]


def short(exc: BaseException, caught: list | None = None, limit: int = 400) -> str:
    """The exception, and the reasons SDPA warned about (why a kernel was not used)."""
    text = short_error(exc, limit)
    reasons = [str(w.message).strip().replace("\n", " ") for w in caught or []]
    if reasons:
        text += " | " + " | ".join(dict.fromkeys(reasons))
    return text[:limit]


def repeated(fn, inner: int):
    def call():
        for _ in range(inner):
            fn()

    return call


class Runner:
    """Runs variants one by one, each in try/except, and collects their rows."""

    def __init__(self, args, device: str, on_row=None) -> None:
        self.args, self.device, self.on_row = args, device, on_row
        self.start = time.perf_counter()
        self.rows: list[dict] = []

    def over_budget(self) -> bool:
        return self.args.budget_s > 0 and time.perf_counter() - self.start > self.args.budget_s

    @staticmethod
    def empty_row(base: dict) -> dict:
        return {
            **base,
            "median_ms": None,
            "tflops": None,
            "gbps": None,
            "rel_err": None,
            "peak_mb": None,
            "error": None,
        }

    def fail(self, base: dict, error: str) -> None:
        self._add({**self.empty_row(base), "error": error})

    def run(
        self,
        base: dict,
        fn,
        *,
        check=None,
        flops: float | None = None,
        nbytes: float | None = None,
        compile_first: bool = False,
    ) -> None:
        """`fn()` once (building it first when `compile_first`), `check(out)` -> relative error,
        then the median of --repeats timed calls."""
        row = self.empty_row(base)
        if self.over_budget():
            row["error"] = f"skipped: past --budget-s {self.args.budget_s:g} s"
            return self._add(row)
        caught: list = []
        try:
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                built = time.perf_counter()
                out = fn()
                if compile_first:
                    self._sync()
                    row["build_s"] = round(time.perf_counter() - built, 2)
                if check is not None:
                    row["rel_err"] = check(out)
                del out
                ms, peak = time_call(
                    repeated(fn, self.args.inner),
                    repeats=self.args.repeats,
                    warmup=self.args.warmup,
                    device=self.device,
                )
            ms /= self.args.inner
            row["median_ms"], row["peak_mb"] = ms, peak
            if flops:
                row["tflops"] = flops / ms / 1e9
            if nbytes:
                row["gbps"] = nbytes / ms / 1e6
        except Exception as exc:  # one variant failing must not stop the others
            row["error"] = short(exc, caught)
        self._add(row)

    def _sync(self) -> None:
        if self.device.startswith("cuda"):
            torch.cuda.synchronize()

    def _add(self, row: dict) -> None:
        self.rows.append(row)
        if self.on_row is not None:
            self.on_row()
        ms = "" if row["median_ms"] is None else f"{row['median_ms']:10.3f}"
        speed = (
            f"{row['tflops']:8.1f} TF"
            if row["tflops"] is not None
            else f"{row['gbps']:8.0f} GB"
            if row["gbps"] is not None
            else ""
        )
        err = "" if row["rel_err"] is None else f"{row['rel_err']:9.2e}"
        built = f"  (first call, compiling: {row['build_s']:g} s)" if row.get("build_s") is not None else ""
        print(
            f"{row['part']:9s} {row['shape']:22s} {row['variant']:42s} {ms:>10s} {speed:>11s} {err:>9s}"
            + (f"  {row['error']}" if row["error"] else "")
            + built,
            flush=True,
        )


def bench_attention(runner: Runner, frames: int, tokens: int, width: int, heads: int, dtype: torch.dtype) -> None:
    device = runner.device
    head_dim = width // heads
    gen = torch.Generator(device).manual_seed(0)
    qkv = torch.randn(frames, tokens, 3 * width, device=device, dtype=dtype, generator=gen)
    views = [t.reshape(frames, tokens, heads, head_dim).transpose(1, 2) for t in qkv.chunk(3, dim=-1)]
    layouts = {"contiguous": [t.contiguous() for t in views], "qkv views": views}
    flops = 4.0 * frames * heads * tokens * tokens * head_dim
    saved = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = False
    try:  # the reference: the math backend on float32 copies, no TF32
        with torch.nn.attention.sdpa_kernel([torch.nn.attention.SDPBackend.MATH]):
            ref = F.scaled_dot_product_attention(*[t.float() for t in views])
    finally:
        torch.backends.cuda.matmul.allow_tf32 = saved
    shape = f"{frames}x{heads}x{tokens}x{head_dim}"
    for layout, (q, k, v) in layouts.items():
        for name in BACKENDS:
            backend = getattr(torch.nn.attention.SDPBackend, name)

            def call(q=q, k=k, v=v, backend=backend):
                with torch.nn.attention.sdpa_kernel([backend]):
                    return F.scaled_dot_product_attention(q, k, v)

            runner.run(
                {
                    "part": "attention",
                    "shape": shape,
                    "variant": f"{name.lower()} ({layout})",
                    "backend": name,
                    "layout": layout,
                },
                call,
                check=lambda out: peak_relative_error(out, ref),
                flops=flops,
            )


def quantise_float_copy(rows: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Fp8Linear's quantisation as it was: a float32 copy of x first."""
    rows = rows.float()
    scale = rows.abs().amax(dim=1, keepdim=True).clamp(min=1e-12) / fp8.E4M3_MAX
    return (rows / scale).to(fp8.E4M3), scale


def bench_linear(runner: Runner, name: str, m: int, k: int, n: int, dtype: torch.dtype, compiled: bool) -> None:
    """The eager variants of one linear shape, or (`compiled`) its torch.compile rows."""
    device = runner.device
    gen = torch.Generator(device).manual_seed(k * 7 + n)
    x = torch.randn(m, k, device=device, dtype=dtype, generator=gen)
    w = (torch.randn(n, k, device=device, generator=gen) / math.sqrt(k)).to(dtype)
    b = (0.1 * torch.randn(n, device=device, generator=gen)).to(dtype)
    saved = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = False
    try:
        ref_nobias = x.float() @ w.float().t()
    finally:
        torch.backends.cuda.matmul.allow_tf32 = saved
    ref = ref_nobias + b.float()
    flops = 2.0 * m * k * n
    quant_bytes = m * k * (x.element_size() + 1) + 4 * m  # read x once, write e4m3 + scales
    shape = f"{name} {k}->{n}"
    base = {"part": "linear", "shape": shape, "layer": name, "m": m, "k": k, "n": n}

    def vs(target):
        return lambda out: peak_relative_error(out, target)

    def dequantised(out):
        x_fp8, scale = out
        return peak_relative_error(x_fp8.float() * scale, x.float())

    linear = torch.nn.Linear(k, n, device=device, dtype=dtype)
    with torch.no_grad():
        linear.weight.copy_(w)
        linear.bias.copy_(b)
    module = None
    try:
        module = fp8.Fp8Linear(linear)
    except Exception as exc:
        runner.fail({**base, "variant": "compiled Fp8Linear" if compiled else "Fp8Linear"}, short(exc))
    if compiled:
        if module is not None:
            for variant, target, check, kw in (
                ("compiled quantise (dub.model.kernels.fp8)", fp8.quantize_rows, dequantised, {"nbytes": quant_bytes}),
                ("compiled Fp8Linear", module, vs(ref), {"flops": flops}),
            ):
                holder = {}

                def call(target=target, holder=holder):
                    if "fn" not in holder:
                        holder["fn"] = torch.compile(target, dynamic=False)
                    return holder["fn"](x)

                runner.run({**base, "variant": variant}, call, check=check, compile_first=True, **kw)
        return

    runner.run(
        {**base, "variant": f"{str(dtype).removeprefix('torch.')} F.linear"},
        lambda: F.linear(x, w, b),
        check=vs(ref),
        flops=flops,
    )
    cuda = device.startswith("cuda")
    mm_dtype = torch.bfloat16 if cuda or dtype != torch.float32 else torch.float32
    if module is not None:
        runner.run({**base, "variant": "Fp8Linear"}, lambda: module(x), check=vs(ref), flops=flops)
    runner.run(
        {**base, "variant": "quantise (float32 copy, before)"},
        lambda: quantise_float_copy(x),
        check=dequantised,
        nbytes=quant_bytes,
    )
    runner.run(
        {**base, "variant": "quantise (dub.model.kernels.fp8)"},
        lambda: fp8.quantize_rows(x),
        check=dequantised,
        nbytes=quant_bytes,
    )
    if module is not None:
        x_fp8, x_scale = fp8.quantize_rows(x)
        w_t, w_scale, bias = module.weight_fp8.t(), module.weight_scale, b.to(mm_dtype)

        def gemm(with_bias: bool, fast: bool):
            return lambda: torch._scaled_mm(
                x_fp8,
                w_t,
                scale_a=x_scale,
                scale_b=w_scale,
                bias=bias if with_bias else None,
                out_dtype=mm_dtype,
                use_fast_accum=fast,
            )

        plain = gemm(False, False)
        runner.run({**base, "variant": "_scaled_mm"}, plain, check=vs(ref_nobias), flops=flops)
        runner.run({**base, "variant": "_scaled_mm + bias add"}, lambda: plain() + bias, check=vs(ref), flops=flops)
        runner.run({**base, "variant": "_scaled_mm(bias=)"}, gemm(True, False), check=vs(ref), flops=flops)
        runner.run({**base, "variant": "_scaled_mm(fast_accum)"}, gemm(False, True), check=vs(ref_nobias), flops=flops)
        runner.run({**base, "variant": "_scaled_mm(bias=, fast_accum)"}, gemm(True, True), check=vs(ref), flops=flops)

        def fastest():
            xq, xs = fp8.quantize_rows(x)
            return torch._scaled_mm(
                xq, w_t, scale_a=xs, scale_b=w_scale, bias=bias, out_dtype=mm_dtype, use_fast_accum=True
            )

        runner.run({**base, "variant": "quantise + _scaled_mm(bias=, fast_accum)"}, fastest, check=vs(ref), flops=flops)
        del x_fp8, x_scale


def projected(rows: list[dict], frames: int) -> dict:
    """Each form scaled to CLIP's whole tower on 512 frames: linears summed over the four shapes
    (only forms measured on all four), attention per backend and layout; x 32 layers."""
    scale = LAYERS * BATCH_FRAMES / frames
    out: dict = {
        "note": f"ms for {LAYERS} layers x {BATCH_FRAMES} frames (median x {scale:g}); "
        "H200 whole tower: bf16 compiled 1098 ms, FP8 compiled 966 ms"
    }
    linears: dict[str, list[float]] = {}
    for row in rows:
        if row["part"] == "linear" and row.get("median_ms") is not None:
            linears.setdefault(row["variant"], []).append(row["median_ms"])
    out["linears"] = {v: round(sum(ms) * scale, 1) for v, ms in linears.items() if len(ms) == 4}
    out["attention"] = {
        row["variant"]: round(row["median_ms"] * scale, 1)
        for row in rows
        if row["part"] == "attention" and row.get("median_ms") is not None
    }
    return out


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", default="cuda")
    p.add_argument("--tiny", action="store_true", help=f"small shapes for a CPU smoke test: {TINY}")
    p.add_argument("--frames", type=int, default=None, help="frames per call (default 64; --tiny: 2)")
    p.add_argument("--dtype", choices=sorted(DTYPES), default=None, help="default: bf16 on CUDA, fp32 elsewhere")
    p.add_argument("--parts", default="attention,linear", help="comma-separated: attention, linear")
    p.add_argument("--warmup", type=int, default=None, help="default: 2 on CUDA, 1 elsewhere")
    p.add_argument("--repeats", type=int, default=None, help="default: 10 on CUDA, 2 elsewhere")
    p.add_argument("--inner", type=int, default=None, help="calls per timed sample (default: 5 on CUDA, 1 elsewhere)")
    p.add_argument(
        "--compile",
        choices=("auto", "on", "off"),
        default="auto",
        help="the torch.compile rows (auto: on CUDA only; slow to build on a CPU)",
    )
    p.add_argument("--budget-s", type=float, default=45.0, help="rows not started by then are skipped (0: none)")
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    p.add_argument(
        "--out",
        type=Path,
        default=None,
        help="folder for clip_kernels.json (a path ending in .json is the file itself)",
    )
    args = p.parse_args(argv)
    device = args.device
    cuda = device.startswith("cuda")
    if args.threads:
        torch.set_num_threads(args.threads)
    dims = dict(TINY) if args.tiny else {"frames": 64, "tokens": TOKENS, "width": WIDTH, "heads": HEADS, "mlp": MLP}
    if args.frames:
        dims["frames"] = args.frames
    dtype = DTYPES[args.dtype or ("bf16" if cuda else "fp32")]
    args.warmup = args.warmup if args.warmup is not None else (2 if cuda else 1)
    args.repeats = args.repeats or (10 if cuda else 2)
    args.inner = args.inner or (5 if cuda else 1)
    compile = args.compile == "on" or (args.compile == "auto" and cuda)
    parts = {s.strip() for s in args.parts.split(",") if s.strip()}
    m = dims["frames"] * dims["tokens"]

    if cuda:
        name = torch.cuda.get_device_name(device)
        capability = ".".join(map(str, torch.cuda.get_device_capability(device)))
    else:
        name, capability = f"cpu ({platform.machine()}, {torch.get_num_threads()} threads)", None
    result = {
        "device": name,
        "capability": capability,
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "cudnn": torch.backends.cudnn.version() if cuda else None,
        "dtype": str(dtype).removeprefix("torch."),
        **dims,
        "m": m,
        "warmup": args.warmup,
        "repeats": args.repeats,
        "inner": args.inner,
        "compile": compile,
        "fp8_supported": list(fp8.fp8_supported(device)),
        "bias_in_scaled_mm": fp8.bias_in_scaled_mm(torch.device(device)),
        "rows": [],
    }
    print(
        f"device {name} (capability {capability}); torch {torch.__version__}; {result['dtype']}; "
        f"{dims['frames']} frames x {dims['tokens']} tokens (M = {m}); FP8 {result['fp8_supported']}"
    )
    print(f"{'part':9s} {'shape':22s} {'variant':42s} {'median ms':>10s} {'speed':>11s} {'max err':>9s}")
    path = None if args.out is None else args.out if args.out.suffix == ".json" else args.out / "clip_kernels.json"

    def save() -> None:  # after every row, so a run killed by a timeout keeps what it measured
        result["rows"] = runner.rows
        result["elapsed_s"] = round(time.perf_counter() - runner.start, 1)
        result["projected"] = projected(runner.rows, dims["frames"])
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(json.dumps(result, indent=2))

    runner = Runner(args, device, on_row=save)
    try:
        with torch.inference_mode():
            if "attention" in parts:
                bench_attention(runner, dims["frames"], dims["tokens"], dims["width"], dims["heads"], dtype)
                if cuda:
                    torch.cuda.empty_cache()
            if "linear" in parts:
                for compiled in (False, True) if compile else (False,):
                    for layer, k, n in linear_shapes(dims["width"], dims["mlp"]):
                        bench_linear(runner, layer, m, k, n, dtype, compiled)
                        if cuda:
                            torch.cuda.empty_cache()
    finally:
        save()
        if path is not None:
            print(f"wrote {path}")
    print(f"projected to {LAYERS} layers x {BATCH_FRAMES} frames (ms):")
    for group in ("linears", "attention"):
        for variant, ms in result["projected"][group].items():
            print(f"  {group:9s} {variant:42s} {ms:10.1f}")
    print(f"elapsed {result['elapsed_s']} s")
    return result


if __name__ == "__main__":
    main()
