#!/usr/bin/env python3
"""One call for the GPU machine: `dub bench` on real sizes (random weights, nothing downloaded)
plus the fast-path-vs-eager correctness checks, all under one time budget.

    python3 scripts/gpu_bench.py --device cuda --preset small_16k --batch-size 8 --out OUT
    python3 scripts/gpu_bench.py --device cpu --preset tiny --batch-size 2 --repeats 1 --out OUT  # CPU smoke test

It runs the sub-benchmark modules directly (the same `run(opts)` that `dub bench` calls, rows
in the same format), each part in a child process of its own: a CUDA error that poisons the
context (Inductor once crashed on the decoder), an out-of-memory or a hang costs only that
part. Rows stream to a temporary file as each stage finishes, so a part stopped at its time
limit keeps what it measured; OUT gets only gpu_bench.json (rewritten after every part) and,
from gpu_bench.sh, gpu_bench.log. Parts, in order of value: correctness, generate (eager and
CUDA graphs), e2e (model-side throughput), encoders, train-step, then torch.compile variants
of generate, encoders and e2e while the budget lasts (`--parts` picks, e.g. for a second run).

Writes OUT/gpu_bench.json: {"device", "command", "env", "parts", "checks", "rows"}; "rows" are
`dub bench --json` rows.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


@dataclass(frozen=True)
class Part:
    name: str
    module: str | None  # dub.workflows.bench.<module>; None: the correctness checks
    max_s: float  # time limit on an H200 (the whole run must fit 8 minutes)
    extra: dict = field(default_factory=dict)
    train_batch: bool = False  # uses --train-batch-size instead of --batch-size


PARTS = (
    Part("correctness", None, 90),  # includes compiling the JVP of the real-size network
    Part("generate", "generate", 100),
    Part("e2e", "e2e", 90),
    Part("encoders", "encoders", 75),
    Part("train-step", "train_step", 60, train_batch=True),
    Part("train-step-compiled", "train_step", 240, {"compiled_only": True}, train_batch=True),
    # MeanFlow over flow matching with the same optimisations on both sides, alternating rounds
    Part("train-step-like-for-like", "train_step", 60, {"like_for_like": True}, train_batch=True),
    Part(
        "train-step-like-for-like-compiled",
        "train_step",
        240,
        {"like_for_like": True, "compile": True},
        train_batch=True,
    ),
    Part("generate-compiled", "generate", 150, {"compiled_only": True, "compile_batches": [1]}),
    Part("encoders-compiled", "encoders", 90, {"compiled_only": True}),
    Part("e2e-compiled", "e2e", 150, {"compiled_only": True}),
    Part("encoders-fp8", "encoders", 120, {"compiled_only": True, "fp8": True}),
    Part("e2e-fp8", "e2e", 150, {"compiled_only": True, "fp8": True}),
    Part("media", "media", 45),  # the host's decoding capacity (carried PyAV wheel)
    # FP8 for Synchformer too, for comparison (not the default: see FP8_TOWERS in model/encoders/mmaudio.py)
    Part("e2e-fp8-all", "e2e", 150, {"compiled_only": True, "fp8": "all"}),
)
MIN_PART_S = 25.0  # do not start a part with less time than this left
TEARDOWN_S = 10.0  # a child stops starting stages this long before its limit


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", default="cuda")
    p.add_argument("--preset", default="small_16k")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--train-batch-size", type=int, default=32, help="batch of the train-step part (the issue: 32)")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--duration", type=float, default=8.0)
    p.add_argument(
        "--budget-s",
        type=float,
        default=float(os.environ.get("GPU_BENCH_BUDGET_S", 440)),
        help="total time for all parts (default 440 s: the run must fit 8 minutes)",
    )
    p.add_argument(
        "--part-limit-scale",
        type=float,
        default=1.0,
        help="multiply each part's own time limit (sized for a GPU) by this, e.g. on a slow or busy CPU",
    )
    p.add_argument(
        "--parts",
        default=",".join(part.name for part in PARTS),
        help="comma-separated parts to run, in the listed order",
    )
    p.add_argument("--no-compile", action="store_true", help="skip the torch.compile parts")
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads in the children (0: torch's default)")
    p.add_argument("--out", default=os.environ.get("OUT", "out/gpu_bench"))
    p.add_argument("--child", default=None, help=argparse.SUPPRESS)
    p.add_argument("--deadline", type=float, default=None, help=argparse.SUPPRESS)
    p.add_argument("--rows-file", default=None, help=argparse.SUPPRESS)
    return p.parse_args(argv)


# -- parent ------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.child:
        return child_main(args)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    wanted = [name.strip() for name in args.parts.split(",") if name.strip()]
    unknown = sorted(set(wanted) - {part.name for part in PARTS})
    if unknown:
        print(f"unknown parts {unknown}; choose from {[part.name for part in PARTS]}", file=sys.stderr)
        return 2
    # the parts' row streams live outside OUT: only the JSON and the log come back from the GPU machine
    work = Path(tempfile.mkdtemp(prefix="dub-gpu-bench-"))
    try:
        return run_parts(args, out, work, wanted)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def run_parts(args: argparse.Namespace, out: Path, work: Path, wanted: list[str]) -> int:
    started = time.time()
    deadline = started + args.budget_s
    result = {
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "device": None,
        "env": environment(),
        "budget_s": args.budget_s,
        "parts": {},
        "checks": [],
        "rows": [],
    }
    log(started, f"gpu_bench: {args.device} preset {args.preset} batch {args.batch_size}, budget {args.budget_s:.0f} s")
    by_name = {part.name: part for part in PARTS}
    for part in (by_name[name] for name in dict.fromkeys(wanted)):  # the order --parts gives
        if args.no_compile and "compiled" in part.name:
            result["parts"][part.name] = {"status": "skipped", "reason": "--no-compile"}
            continue
        left = deadline - time.time()
        if left < MIN_PART_S:
            result["parts"][part.name] = {"status": "skipped", "reason": f"only {left:.0f} s of the budget left"}
            log(started, f"part {part.name}: skipped ({left:.0f} s left)")
            continue
        result["parts"][part.name] = run_part(
            args, part, min(part.max_s * args.part_limit_scale, left), work, started, result
        )
        write_result(out, result, started)
    write_result(out, result, started)
    print_summary(result)
    return 0


def log(started: float, message: str) -> None:
    print(f"[{time.time() - started:6.1f} s] {message}", flush=True)


def run_part(args: argparse.Namespace, part: Part, limit_s: float, work: Path, started: float, result: dict) -> dict:
    rows_file = work / f"rows_{part.name}.jsonl"
    rows_file.unlink(missing_ok=True)
    command = [
        sys.executable,
        str(Path(__file__).resolve()),
        "--child",
        part.name,
        "--device",
        args.device,
        "--preset",
        args.preset,
        "--batch-size",
        str(args.batch_size),
        "--train-batch-size",
        str(args.train_batch_size),
        "--repeats",
        str(args.repeats),
        "--warmup",
        str(args.warmup),
        "--duration",
        str(args.duration),
        "--threads",
        str(args.threads),
        "--deadline",
        str(time.time() + limit_s - TEARDOWN_S),
        "--rows-file",
        str(rows_file),
    ]
    log(started, f"part {part.name}: start (limit {limit_s:.0f} s)")
    t0 = time.time()
    # own session: a timed-out part is killed with its compile workers, and only those
    proc = subprocess.Popen(command, cwd=ROOT, start_new_session=True)
    status = "ok"
    try:
        code = proc.wait(timeout=limit_s)
        if code != 0:
            status = f"exit code {code}"
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        status = f"killed at its {limit_s:.0f} s limit"
        # a compile killed mid-write can leave a truncated .so in Inductor's cache that breaks
        # every later import of it ("file too short"): later parts get a fresh cache
        os.environ["TORCHINDUCTOR_CACHE_DIR"] = tempfile.mkdtemp(prefix="inductor-after-kill-", dir=work)
    seconds = time.time() - t0
    info = collect(rows_file, result)
    log(started, f"part {part.name}: {status} after {seconds:.0f} s, {info['rows']} rows")
    return {"status": status, "seconds": round(seconds, 1), **info}


def collect(rows_file: Path, result: dict) -> dict:
    """Fold a child's JSON lines into the result; returns the part's own summary."""
    info: dict = {"rows": 0, "errors": []}
    if not rows_file.exists():
        return info
    for line in rows_file.read_text().splitlines():
        try:
            item = json.loads(line)
        except json.JSONDecodeError:
            continue  # a line cut by a kill
        kind, payload = item.get("kind"), item.get("payload")
        if kind == "row":
            result["rows"].append(payload)
            info["rows"] += 1
        elif kind == "check":
            result["checks"].append(payload)
        elif kind == "error":
            info["errors"].append(payload)
        elif kind == "info":
            result["device"] = result["device"] or payload.get("device_name")
            info.update({k: v for k, v in payload.items() if k != "device_name"})
    return info


def write_result(out: Path, result: dict, started: float) -> None:
    result["wall_s"] = round(time.time() - started, 1)
    from dub.storage.atomic import write_json_atomic

    write_json_atomic(out / "gpu_bench.json", result)


def environment() -> dict:
    env = {"python": sys.version.split()[0]}
    try:
        import torch

        env.update(torch=torch.__version__, cuda=torch.version.cuda, cuda_available=torch.cuda.is_available())
    except Exception as exc:  # noqa: BLE001
        env["torch"] = f"unavailable: {exc}"
    for name in ("triton", "open_clip", "av", "ray"):
        try:
            module = __import__(name)
            env[name] = getattr(module, "__version__", "present")
        except Exception:  # noqa: BLE001
            env[name] = None
    return env


def float32_note(check: dict) -> str:
    if "fast_vs_float32" not in check:
        return ""
    return (
        f"; from float32: {check['fast_vs_float32']:.3e} vs the eager path's own {check['eager_vs_float32']:.3e}"
        f" (passes within {check['float32_slack']}x)"
    )


def print_summary(result: dict) -> None:
    print(f"\n== dub bench on {result['device']} ({result['wall_s']:.0f} s) ==", flush=True)
    print(f"{'bench':10} {'stage':66} {'b':>3} {'median ms':>10} {'RTF':>8} {'clips/s':>8} {'peak MB':>8}")
    for r in result["rows"]:
        rtf = "" if r.get("rtf") is None else f"{r['rtf']:.4f}"
        cps = "" if r.get("clips_per_s") is None else f"{r['clips_per_s']:.2f}"
        peak = "" if r.get("peak_mem_mb") is None else f"{r['peak_mem_mb']:.0f}"
        flag = "  " + r["note"][:120] if r["note"].startswith(("ERROR", "not run")) else ""
        print(
            f"{r['bench']:10} {r['stage'][:66]:66} {r['batch_size']:>3} {r['median_ms']:>10.2f} {rtf:>8} "
            f"{cps:>8} {peak:>8}{flag}"
        )
    print("\n== fast path vs eager ==")
    for c in result["checks"]:
        print(
            f"{'PASS' if c['pass'] else 'FAIL'}  {c['check']}: max abs {c['max_abs_err']:.3e}, "
            f"relative {c['rel_err']:.2e} (tolerance {c['tol']:g})" + float32_note(c)
        )
    print("\n== parts ==")
    for name, part in result["parts"].items():
        errors = part.get("errors") or []
        print(
            f"{name:20} {part.get('status')}  {part.get('seconds', '')} s  {part.get('reason', '')}"
            + (f"  errors: {errors[0][:200]}" if errors else "")
        )
    sys.stdout.flush()


# -- child -------------------------------------------------------------------------------------


def child_main(args: argparse.Namespace) -> int:
    rows_file = Path(args.rows_file)
    emitted: set[int] = set()

    def emit(kind: str, payload) -> None:
        with rows_file.open("a") as f:
            f.write(json.dumps({"kind": kind, "payload": payload}, default=str) + "\n")

    def on_row(row) -> None:
        emitted.add(id(row))
        emit("row", row.as_dict())
        print(
            f"    {row.bench:10} {row.stage[:70]:70} b{row.batch_size:<3} {row.median_ms:10.2f} ms"
            + (f"  {row.note[:160]}" if row.note.startswith(("ERROR", "not run")) else ""),
            flush=True,
        )

    try:
        import torch

        from dub.workflows.bench import BenchOptions, device_name, resolve_device

        if args.threads > 0:
            torch.set_num_threads(args.threads)
        device = resolve_device(args.device)
        emit("info", {"device_name": device_name(device), "torch": torch.__version__})
        part = next(p for p in PARTS if p.name == args.child)
        extra = {"deadline": args.deadline, "on_row": on_row, "on_check": lambda c: emit("check", c), **part.extra}
        opts = BenchOptions(
            device=device,
            preset=args.preset,
            batch_size=args.train_batch_size if part.train_batch else args.batch_size,
            repeats=args.repeats,
            warmup=args.warmup,
            duration_s=args.duration,
            extra=extra,
        )
        if part.module is None:
            correctness(opts, lambda c: emit("check", c))
            return 0
        import importlib

        module = importlib.import_module(f"dub.workflows.bench.{part.module}")
        for row in module.run(opts):
            if id(row) not in emitted:  # modules without on_row support report at the end
                on_row(row)
        return 0
    except Exception:  # noqa: BLE001 - whatever broke, the parent records it and goes on
        text = traceback.format_exc()
        print(text, file=sys.stderr, flush=True)
        emit("error", text[-2000:])
        return 1


def correctness(opts, report) -> None:
    """The fast paths against the eager `Generator` on the same inputs (bf16 autocast on CUDA):
    one step + CFG latents, the whole path to waveforms, a padded batch, and bf16 vs float32."""
    import torch

    from dub.model.codec.bigvgan import activation_form, activation_status
    from dub.model.codec.mel import MelConverter
    from dub.model.codec.mmaudio import MMAudioCodec
    from dub.model.runtime.fast import OneStepGraph
    from dub.model.runtime.generator import Generator, SamplerConfig, WindowBatch, noise_for_seeds
    from dub.workflows.bench.generate import (
        ONE_STEP_GUIDANCE,
        build_stack,
        codec_configs,
        compare,
        random_inputs,
        true_float32,
    )

    cuda = opts.device.startswith("cuda")
    stack = build_stack(opts.preset, opts.device, opts.duration_s)
    net = stack.network
    mel_cfg, _vae_cfg, _voc_cfg = codec_configs(opts.preset, net.config.sample_rate)
    codec = MMAudioCodec(MelConverter(mel_cfg).to(opts.device), stack.vae, stack.vocoder).eval()
    sampler = SamplerConfig(sampler="meanflow", steps=1, **ONE_STEP_GUIDANCE)
    dtype = torch.bfloat16 if cuda else torch.float32
    b = min(4, max(2, opts.batch_size))
    what = "CUDA graph" if cuda else "eager fallback"
    _, clip_f, sync_f, text_f = random_inputs(net.config, b, opts.device, seed=7)
    batch = WindowBatch(None, None, prompts=[""] * b, negative_prompts=[""] * b, seeds=list(range(b)))
    noise = noise_for_seeds(batch.seeds, (net.config.latent_seq_len, net.config.latent_dim), opts.device)

    eager = Generator(net, None, codec, device=opts.device, dtype=dtype)
    lat_ref = eager.latents(clip_f, sync_f, text_f, batch, sampler)
    wav_ref = eager.decode(lat_ref, batch)
    lat32 = None
    if cuda:  # the same step in float32: how far bf16 itself moves the latents
        with true_float32():
            lat32 = Generator(net, None, codec, device=opts.device, dtype=torch.float32).latents(
                clip_f, sync_f, text_f, batch, sampler
            )
    fast = OneStepGraph(net, sampler.guidance, b, dtype=dtype)
    report(
        compare(
            f"one step + CFG latents, {what} vs eager Generator (batch {b})",
            fast(noise, clip_f, sync_f, text_f),
            lat_ref,
            2e-2,
        )
    )
    padded = OneStepGraph(net, sampler.guidance, b + 1, dtype=dtype)
    report(
        compare(
            f"one step + CFG latents, {what} captured for {b + 1}, called with {b} (padded)",
            padded(noise, clip_f, sync_f, text_f),
            lat_ref,
            2e-2,
            exact=lat32,
        )
    )
    full = OneStepGraph(net, sampler.guidance, b, decode=codec.decode, dtype=dtype)
    report(
        compare(
            f"network + VAE + vocoder waveforms, {what} vs eager Generator (batch {b})",
            full(noise, clip_f, sync_f, text_f),
            wav_ref,
            2e-2,
        )
    )
    with activation_form(stack.vocoder, "reference"):
        wav_published = eager.decode(lat_ref, batch)
        with true_float32():  # how far bf16 itself moves the waveform: the yardstick for the fast forms
            wav_exact = Generator(net, None, codec, device=opts.device, dtype=torch.float32).decode(lat_ref, batch)
    report(
        compare(
            f"waveforms, vocoder activations {activation_status(opts.device)} vs BigVGAN's order (batch {b})",
            wav_ref,
            wav_published,
            2e-2,
            exact=wav_exact,
        )
    )
    graphed = Generator(net, None, codec, device=opts.device, dtype=dtype)
    if graphed.use_fast_decoder(b + 1):  # CUDA only: the decoder `dub generate` replicas replay
        report(
            compare(
                f"VAE + vocoder waveforms, {graphed.fast_decoder.note} (called with {b}) vs eager Generator",
                graphed.decode(lat_ref, batch),
                wav_ref,
                2e-2,
                exact=wav_exact,
            )
        )
    del wav_exact
    activation_check(opts.device, report)
    synchformer_check(opts.device, opts.preset, report)
    if cuda:
        report(
            compare(
                f"one step + CFG latents, bf16 {what} vs float32 eager (precision, informational)",
                fast(noise, clip_f, sync_f, text_f),
                lat32,
                1e-1,
            )
        )
    tangent_check(net, clip_f, sync_f, text_f, dtype, report)


def activation_check(device: str, report) -> None:
    """BigVGAN's anti-aliased activation at the 16 kHz vocoder's first and last stage sizes, in
    float32 and bf16: the eager form this device uses (the Triton kernel on CUDA) against
    BigVGAN's own order of operations in float32."""
    import dataclasses

    import torch

    from dub.model.codec.bigvgan import AntiAliasedActivation, BigVGANConfig, activation_status
    from dub.workflows.bench.generate import compare

    config = BigVGANConfig.mmaudio_16k()
    for channels, length in ((768, 2000), (24, 128000)):
        torch.manual_seed(channels)
        act = AntiAliasedActivation(channels, dataclasses.replace(config)).to(device)
        with torch.no_grad():
            act.act.alpha.normal_(0.0, 0.5)
            act.act.beta.normal_(0.0, 0.5)
            x = 3 * torch.randn(2, channels, length, device=device)
            for dtype, tol in ((torch.float32, 1e-4), (torch.bfloat16, 2e-2)):
                x_in = x.to(dtype)  # the reference sees the same (rounded) input, in float32
                report(
                    compare(
                        f"anti-aliased activation {channels} x {length} {str(dtype)[6:]}, "
                        f"{activation_status(device)} vs BigVGAN's order in float32",
                        act(x_in).float(),
                        act.reference_forward(x_in.float()),
                        tol,
                    )
                )


def synchformer_check(device: str, preset: str, report) -> None:
    """Synchformer features of one 8 s clip (24 segments, random weights; bf16 autocast on CUDA)
    with the divided attention this device uses (the Triton kernel on CUDA) against the SDPA form,
    with float32 (no TF32) as the yardstick."""
    import torch

    from dub.model.encoders.synchformer import (
        GROUPED_ATTENTION,
        Synchformer,
        SynchformerConfig,
        attention_status,
        synchformer_features,
    )
    from dub.workflows.bench.encoders import tiny_synchformer_config
    from dub.workflows.bench.generate import TINY_PRESETS, compare, true_float32

    config = tiny_synchformer_config() if preset in TINY_PRESETS else SynchformerConfig.released()
    torch.manual_seed(5)
    model = Synchformer(config).eval().to(device)
    frames = torch.rand(1, 200, 3, config.crop_size, config.crop_size, device=device) * 2 - 1
    cuda = device.startswith("cuda")

    def features(kernel: bool) -> torch.Tensor:
        with GROUPED_ATTENTION.turned(kernel), torch.autocast("cuda", dtype=torch.bfloat16, enabled=cuda):
            return synchformer_features(model, frames.to(torch.bfloat16) if cuda else frames).float()

    fast, sdpa = features(True), features(False)
    with true_float32():
        exact = synchformer_features(model, frames).float()
    report(
        compare(
            f"Synchformer features, 24 segments, {attention_status(device)} vs the SDPA form",
            fast,
            sdpa,
            2e-2,
            exact=exact,
        )
    )


def tangent_check(net, clip_f, sync_f, text_f, dtype, report) -> None:
    """MeanFlow training: the compiled JVP (CUDA graphs on a GPU) against eager forward-mode AD."""
    import torch

    from dub.model.flow.jvp import eager_tangent, make_tangent
    from dub.workflows.bench.generate import compare

    device = clip_f.device
    gen = torch.Generator(device="cpu").manual_seed(3)
    b, cfg = clip_f.shape[0], net.config
    z, v = (torch.randn(b, cfg.latent_seq_len, cfg.latent_dim, generator=gen).to(device) for _ in range(2))
    t = 0.8 * torch.rand(b, generator=gen).to(device)
    s = t + (1 - t) * torch.rand(b, generator=gen).to(device)
    cond = {"clip_f": clip_f, "sync_f": sync_f, "text_f": text_f}
    with torch.autocast(device.type, dtype=dtype, enabled=device.type == "cuda" and dtype != torch.float32):
        ref = eager_tangent(net, z, t, s, v, cond).float()
        graphed = make_tangent("graphed", device)
        graphed(net, z, t, s, v, cond)  # captures
        with torch.no_grad():
            z2, v2 = z.flip(0).contiguous(), v.flip(0).contiguous()  # new inputs through the captured graph
        ref2 = eager_tangent(net, z2, t, s, v2, cond).float()
        got2 = graphed(net, z2, t, s, v2, cond).float()
        # reported before the compiled JVP starts: compiling it can outlast the part's limit
        report(
            compare(
                f"MeanFlow JVP (training target), graphed (replayed on new inputs) vs eager (batch {b})",
                got2,
                ref2,
                5e-2,
            )
        )
        got = make_tangent("compiled", device)(net, z, t, s, v, cond).float()
    report(compare(f"MeanFlow JVP (training target), compiled vs eager forward-mode AD (batch {b})", got, ref, 5e-2))


if __name__ == "__main__":
    sys.exit(main())
