"""`dub bench generate`: the latency path of one clip (8 s by default), stage by stage.

Stages, at batch 1 and at `--batch-size`:
    network, one MeanFlow step + CFG: eager as 2 calls (cond, uncond), eager as ONE batch of 2B,
        CUDA graph, and compiled + CUDA graph (opts.extra["compile"], slow to build)
    network, 25 Euler steps + CFG, eager (the multi-step baseline; batch 1)
    VAE decode; vocoder; VAE + vocoder eager, as a CUDA graph, compiled + CUDA graph
    network + VAE + vocoder (the whole latency path): eager, CUDA graph, compiled + CUDA graph
Graph and compiled rows note their largest deviation from the eager output on the same inputs.

Presets: `tiny` (or `demo`): the demo-sized network with a tiny random VAE + BigVGAN and the demo
Griffin-Lim codec, for the CPU. A network preset such as `small_16k`: real sizes with random
weights (built on the device, nothing downloaded), MMAudio's VAE + BigVGAN for its sample rate.
bf16 autocast on CUDA, float32 on the CPU.

opts.extra (all optional): compile (bool), compiled_only (bool: only the compiled stages),
compile_batches (list of batch sizes, default [1]), deadline (time.time() after which no new
stage starts), on_row (called with each finished row), on_check (called with each
optimised-vs-eager comparison, a dict).
This module also holds the stage runner and model builders the other sub-benchmarks share.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, TypeVar

from dub.errors import short_error
from dub.workflows.bench import BenchOptions, BenchRow, resolve_device, time_call

T = TypeVar("T")

TINY_PRESETS = ("tiny", "demo")
# MF-MJT's default one-step guidance and MMAudio's multi-step baseline (model/runtime/bundles.py).
ONE_STEP_GUIDANCE = dict(cfg=4.5, rescale="std", phi=0.7)
EULER_GUIDANCE = dict(cfg=4.5, rescale="none", phi=0.0)
EULER_STEPS = 25
# The latency target on an H200 for network + VAE + vocoder at batch 1.
LATENCY_TARGET_MS = 32.0


# -- stage runner --------------------------------------------------------------------------


class StageRunner:
    """Times stages into BenchRows. A stage that raises becomes a row whose note starts with
    "ERROR"; past `opts.extra["deadline"]` stages are recorded as "not run" instead of started."""

    def __init__(self, bench: str, opts: BenchOptions, device: str, dtype: str) -> None:
        self.bench, self.opts, self.device, self.dtype = bench, opts, device, dtype
        self.rows: list[BenchRow] = []
        self.deadline: float | None = opts.extra.get("deadline")
        self.on_row: Callable[[BenchRow], None] | None = opts.extra.get("on_row")
        self.on_check: Callable[[dict], None] | None = opts.extra.get("on_check")

    def seconds_left(self) -> float:
        return math.inf if self.deadline is None else self.deadline - time.time()

    def has_time(self, need_s: float = 0.0) -> bool:
        return self.seconds_left() > need_s

    def add(self, row: BenchRow) -> BenchRow:
        self.rows.append(row)
        if self.on_row is not None:
            self.on_row(row)
        return row

    def skip(self, stage: str, batch: int, reason: str) -> None:
        self.add(
            BenchRow(
                bench=self.bench,
                stage=stage,
                median_ms=0.0,
                batch_size=batch,
                dtype=self.dtype,
                device=self.device,
                note=f"not run: {reason}",
            )
        )

    def fail(self, stage: str, batch: int, exc: BaseException) -> None:
        self.add(
            BenchRow(
                bench=self.bench,
                stage=stage,
                median_ms=0.0,
                batch_size=batch,
                dtype=self.dtype,
                device=self.device,
                note=f"ERROR {short_error(exc)}",
            )
        )
        free_cuda_cache(self.device)

    def measure(
        self,
        stage: str,
        fn: Callable[[], object],
        *,
        batch: int,
        audio_s: float | None = None,
        slow: bool = False,
        note: str = "",
        need_s: float = 0.0,
        dtype: str | None = None,
        device: str | None = None,
        repeats: int | None = None,
        warmup: int | None = None,
        reference=None,
        tol: float = 2e-2,
        exact=None,
        describe: Callable[[float], str] | None = None,
    ) -> float | None:
        """Median ms of `fn` (fewer repeats when `slow`), or None when it failed or was not run.
        With `reference` (the eager output), the note also gives fn's deviation from it (and, with
        `exact`, both outputs' distance from float32: see `compare`);
        `describe(median_ms)` appends derived figures (e.g. TFLOP/s) to the note."""
        if not self.has_time(need_s):
            self.skip(stage, batch, "out of the time budget")
            return None
        if repeats is None:
            repeats = min(self.opts.repeats, 3) if slow else self.opts.repeats
        warmup = self.opts.warmup if warmup is None else warmup
        try:
            if reference is not None:  # an optimised path: first its deviation from the eager output
                note = f"{note}; {self.deviation(f'{stage}, batch {batch}', fn(), reference, tol, exact)}"
            median_ms, peak_mb = time_call(
                fn, repeats=max(1, repeats), warmup=max(0, warmup), device=device or self.device
            )
        except Exception as exc:  # noqa: BLE001 - a failing stage must not stop the others
            self.fail(stage, batch, exc)
            return None
        if describe is not None:
            note = f"{note}; {describe(median_ms)}"
        self.add(
            BenchRow(
                bench=self.bench,
                stage=stage,
                median_ms=median_ms,
                batch_size=batch,
                dtype=dtype or self.dtype,
                device=device or self.device,
                audio_s=audio_s,
                peak_mem_mb=peak_mb,
                note=note,
            )
        )
        return median_ms

    def deviation(self, name: str, fast, eager, tol: float = 2e-2, exact=None) -> str:
        """Compare an optimised output with the eager one; report it to `on_check`; a note fragment."""
        check = compare(name, fast, eager, tol, exact)
        if self.on_check is not None:
            self.on_check(check)
        verdict = "within" if check["pass"] else "OUTSIDE"
        cosine = (
            f"; cosine min {check['cosine_min']:.5f}, mean {check['cosine_mean']:.5f}" if "cosine_min" in check else ""
        )
        if exact is None:
            return (
                f"max|fast - eager| = {check['max_abs_err']:.2e} ({check['rel_err']:.1e} of max|eager|, "
                f"{verdict} {tol:g}){cosine}"
            )
        return (
            f"max|fast - eager| = {check['max_abs_err']:.2e}; from float32: fast {check['fast_vs_float32']:.2e},"
            f" eager {check['eager_vs_float32']:.2e} ({verdict} {tol:g} or {BF16_SLACK}x eager's)"
        )

    def profile(
        self, stage: str, fn: Callable[[], object], *, batch: int, audio_s: float | None = None, note: str = ""
    ) -> None:
        """CUDA only: a row with the summed kernel time of one call of `fn` and its top kernels
        (torch.profiler), to show where a stage's time goes. Profiling problems are noted, not raised."""
        if not self.device.startswith("cuda") or not self.has_time(5):
            return
        try:
            total_ms, count, top = kernel_profile(fn)
        except Exception as exc:  # noqa: BLE001 - the profile is a bonus
            self.add(
                BenchRow(
                    bench=self.bench,
                    stage=f"{stage}: kernel profile",
                    median_ms=0.0,
                    batch_size=batch,
                    dtype=self.dtype,
                    device=self.device,
                    note=f"not run: profiler {short_error(exc, 150)}",
                )
            )
            return
        self.add(
            BenchRow(
                bench=self.bench,
                stage=f"{stage}: kernel time (one call, torch.profiler)",
                median_ms=total_ms,
                batch_size=batch,
                dtype=self.dtype,
                device=self.device,
                audio_s=audio_s,
                note=f"{note}; {count} kernels; top: {top}",
            )
        )

    def attempt(self, stage: str, batch: int, build: Callable[[], T], need_s: float = 0.0) -> T | None:
        """Run a setup step (build a graph, compile); its failure is recorded against `stage`."""
        if not self.has_time(need_s):
            self.skip(stage, batch, "out of the time budget")
            return None
        try:
            return build()
        except Exception as exc:  # noqa: BLE001
            self.fail(stage, batch, exc)
            return None


def kernel_profile(fn: Callable[[], object], top: int = 6) -> tuple[float, int, str]:
    """(summed device time in ms, number of device events, 'name ms (share)' of the top ones)
    of one call of `fn` after a warm-up call."""
    import torch
    from torch.profiler import ProfilerActivity, profile

    fn()
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        fn()
        torch.cuda.synchronize()
    return top_kernels(prof, top)


def top_kernels(prof, top: int = 6) -> tuple[float, int, str]:
    """(summed device time in ms, number of device events, 'name ms (share)' of the top ones)
    of a finished torch.profiler run."""
    from torch.autograd import DeviceType

    totals: dict[str, float] = {}
    count = 0
    for event in prof.events():
        if event.device_type == DeviceType.CUDA:
            totals[event.name] = totals.get(event.name, 0.0) + event.time_range.elapsed_us()
            count += 1
    total = sum(totals.values())
    if total <= 0:
        raise RuntimeError("the profiler recorded no device activity")
    ranked = sorted(totals.items(), key=lambda kv: -kv[1])[:top]
    listing = ", ".join(f"{name[:70]} {us / 1000:.2f} ms ({100 * us / total:.0f}%)" for name, us in ranked)
    return total / 1000.0, count, listing


def free_cuda_cache(device: str) -> None:
    if not device.startswith("cuda"):
        return
    import torch

    try:
        torch.cuda.synchronize()
        torch.cuda.empty_cache()
    except Exception:  # noqa: BLE001 - a poisoned context: later stages will report their own errors
        pass


def dtype_name(device: str) -> str:
    return "bfloat16" if device.startswith("cuda") else "float32"


BF16_SLACK = 1.5  # an optimised bf16 path may be this much further from float32 than the eager bf16 path


def compare(name: str, fast, eager, tol: float, exact=None) -> dict:
    """max |fast - eager| absolute and relative to max |eager|; passes when relative <= tol.

    With `exact` (the same computation in float32), it also passes when `fast` is no further
    from float32 than BF16_SLACK x the eager path's own distance: "within bf16 tolerance" for
    deep stacks (a random-weight BigVGAN in bf16 drifts ~3 % of its peak whatever the form)."""
    err = (fast.float() - eager.float()).abs().max().item()
    scale = eager.float().abs().max().item()
    rel = err / scale if scale > 0 else (0.0 if err == 0 else math.inf)
    finite = math.isfinite(err) and math.isfinite(scale)
    check = {
        "check": name,
        "max_abs_err": err,
        "max_abs_ref": scale,
        "rel_err": rel,
        "tol": tol,
        "pass": bool(finite and rel <= tol),
        **_cosines(fast, eager),
    }
    if exact is not None:
        fast_err = (fast.float() - exact.float()).abs().max().item()
        eager_err = (eager.float() - exact.float()).abs().max().item()
        check.update(fast_vs_float32=fast_err, eager_vs_float32=eager_err, float32_slack=BF16_SLACK)
        within = math.isfinite(fast_err) and fast_err <= BF16_SLACK * eager_err + 1e-6 * scale
        check["pass"] = bool(check["pass"] or within)
    return check


def _cosines(fast, eager) -> dict:
    """Cosine similarity of each feature vector (the last axis) with its eager counterpart, the
    least and the mean: how a downstream network sees an approximation such as FP8, where a max
    error alone says little about direction."""
    import torch.nn.functional as F

    if fast.dim() == 0 or fast.shape != eager.shape:
        return {}
    cos = F.cosine_similarity(
        fast.float().reshape(-1, fast.shape[-1]), eager.float().reshape(-1, eager.shape[-1]), dim=-1
    )
    return {"cosine_min": cos.min().item(), "cosine_mean": cos.mean().item()}


# -- model builders --------------------------------------------------------------------------


@dataclass
class GenerateStack:
    network: Any  # dub.model.network.transformer.MFMJT
    vae: Any  # dub.model.codec.vae.VAE
    vocoder: Any  # dub.model.codec.bigvgan.BigVGAN
    demo_codec: Any | None  # dub.model.demo.DemoCodec on tiny presets
    description: str


def network_config_for(preset: str, duration_s: float):
    """The NetworkConfig a preset name means here (tiny/demo: the demo bundle's network)."""
    from dub.model.network.config import get_preset
    from dub.model.runtime.bundles import network_config, resolve_bundle

    cfg = network_config(resolve_bundle("demo")) if preset in TINY_PRESETS else get_preset(preset)
    return cfg if abs(duration_s - 8.0) < 1e-9 else cfg.with_duration(duration_s)


def codec_configs(preset: str, sample_rate: int):
    """(MelConfig, VAEConfig, BigVGANConfig): MMAudio's for real presets, tiny random ones for tiny."""
    from dub.model.codec.bigvgan import BigVGANConfig
    from dub.model.codec.mel import MelConfig
    from dub.model.codec.vae import VAEConfig

    if preset in TINY_PRESETS:
        vocoder = BigVGANConfig(
            num_mels=80,
            upsample_rates=(4, 4, 2, 2, 2, 2),
            upsample_kernel_sizes=(8, 8, 4, 4, 4, 4),
            upsample_initial_channel=128,
            resblock_kernel_sizes=(3,),
            resblock_dilation_sizes=((1, 3),),
            sampling_rate=16_000,
        )
        return MelConfig.mmaudio_16k(), VAEConfig(data_dim=80, embed_dim=20, hidden_dim=32), vocoder
    if sample_rate == 16_000:
        return MelConfig.mmaudio_16k(), VAEConfig.mmaudio_16k(), BigVGANConfig.mmaudio_16k()
    return MelConfig.mmaudio_44k(), VAEConfig.mmaudio_44k(), BigVGANConfig.bigvgan_v2_44k_128band_512x()


def randomize_parameters_(module, seed: int):
    """Random weights in every parameter (MMAudio zero-initialises adaLN and output layers, which
    would make the network output exactly zero): matrices N(0, clip(1/sqrt(fan_in), 0.02, 0.2)),
    norm weights and latent_std 1 + N(0, 0.1), other vectors N(0, 0.05). Drawn on the device."""
    import torch

    with torch.no_grad():
        first = next(module.parameters(), None)
        if first is None:
            return module
        gen = torch.Generator(device=first.device).manual_seed(seed)
        for name, p in module.named_parameters():
            noise = torch.randn(p.shape, generator=gen, device=p.device, dtype=torch.float32)
            if name.endswith("norm.weight") or name == "latent_std":
                value = 1 + 0.1 * noise
            elif p.ndim >= 2:
                value = min(max(1 / math.sqrt(p[0].numel()), 0.02), 0.2) * noise
            else:
                value = 0.05 * noise
            p.copy_(value.to(p.dtype))
    return module


def build_network(preset: str, device: str, duration_s: float = 8.0, seed: int = 0):
    """MF-MJT of the preset with random weights, built directly on `device`, eval mode."""
    import torch

    from dub.model.network.transformer import MFMJT

    cfg = network_config_for(preset, duration_s)
    with torch.device(device):
        net = MFMJT(cfg)
    return randomize_parameters_(net, seed).eval()


def build_stack(preset: str, device: str, duration_s: float = 8.0, seed: int = 0) -> GenerateStack:
    import torch

    from dub.model.codec.bigvgan import BigVGAN
    from dub.model.codec.vae import VAE

    net = build_network(preset, device, duration_s, seed)
    _mel, vae_cfg, vocoder_cfg = codec_configs(preset, net.config.sample_rate)
    with torch.device(device):
        vae = VAE(vae_cfg).eval()
        vocoder = BigVGAN(vocoder_cfg).eval()
    demo_codec = None
    if preset in TINY_PRESETS:
        from dub.model.demo import DemoCodec

        demo_codec = DemoCodec(latent_dim=net.config.latent_dim).to(device)
        what = "demo-sized MF-MJT, tiny random VAE + BigVGAN (16 kHz layout), demo Griffin-Lim codec"
    else:
        what = f"{preset} MF-MJT, MMAudio VAE + BigVGAN {net.config.sample_rate // 1000} kHz, random weights"
    return GenerateStack(net, vae.to(device), vocoder.to(device), demo_codec, what)


def random_inputs(cfg, batch: int, device: str, seed: int = 0) -> list:
    """[noise, clip_f, sync_f, text_f] of the network's shapes (float32, on `device`)."""
    import torch

    gen = torch.Generator(device="cpu").manual_seed(seed)
    shapes = [
        (cfg.latent_seq_len, cfg.latent_dim),
        (cfg.clip_seq_len, cfg.clip_dim),
        (cfg.sync_seq_len, cfg.sync_dim),
        (cfg.text_seq_len, cfg.text_dim),
    ]
    return [torch.randn(batch, *s, generator=gen).to(device) for s in shapes]


def autocast_for(device: str, cache: bool = True):
    """bf16 autocast on CUDA, off on the CPU. `cache=False` inside CUDA-graph captures: the
    weight-cast cache is not capture-safe (see model/runtime/fast.py)."""
    import torch

    return torch.autocast(
        device.split(":")[0], dtype=torch.bfloat16, enabled=device.startswith("cuda"), cache_enabled=cache
    )


def eager_latents(
    net, guidance, noise, clip_f, sync_f, text_f, *, euler_steps: int | None = None, batched: bool = True
):
    """The eager path of `Generator.latents` (same calls): one MeanFlow step, or Euler steps."""
    import torch

    from dub.model.flow.guidance import needs_uncond
    from dub.model.flow.sampling import guided_field, sample_euler, sample_meanflow

    with torch.no_grad(), autocast_for(str(noise.device)):
        cond = net.preprocess_conditions(clip_f, sync_f, text_f)
        uncond = net.empty_conditions(noise.shape[0]) if needs_uncond(guidance) else None

        def predict(z, t, s, c):
            return net.predict_flow(z, t, c, s=s)

        field = guided_field(predict, cond, uncond, guidance, cat=(lambda a, b: a.cat(b)) if batched else None)
        x = sample_meanflow(field, noise, steps=1) if euler_steps is None else sample_euler(field, noise, euler_steps)
        return net.unnormalize(x.float())


@contextmanager
def true_float32():
    """float32 convolutions and matmuls without TF32 (cuDNN allows TF32 by default): the exact
    side of a bf16 comparison."""
    import torch

    saved = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = saved


def eager_decode(vae, vocoder, latents):
    """VAE + vocoder under the bench's autocast, as `Generator.decode` returns waveforms."""
    import torch

    from dub.model.runtime.fast import decode_latents

    with torch.no_grad(), autocast_for(str(latents.device), cache=False):  # also captured as a graph
        wav = decode_latents(vae, vocoder, latents)
    return wav.float().clamp(-1, 1)


# -- the benchmark ---------------------------------------------------------------------------


def run(opts: BenchOptions) -> list[BenchRow]:
    import torch

    from dub.model.flow.guidance import Guidance

    device = resolve_device(opts.device)
    cuda = device.startswith("cuda")
    if cuda:
        torch.backends.cudnn.benchmark = True  # conv algorithms for the VAE and vocoder
    runner = StageRunner("generate", opts, device, dtype_name(device))
    stack = runner.attempt("build models", 1, lambda: build_stack(opts.preset, device, opts.duration_s))
    if stack is None:
        return runner.rows
    guidance = Guidance(**ONE_STEP_GUIDANCE)
    with torch.inference_mode():
        if not opts.extra.get("compiled_only"):
            for b in sorted({1, max(1, opts.batch_size)}):
                _batch_stages(runner, stack, guidance, b, opts.duration_s)
                free_cuda_cache(device)
        if opts.extra.get("compile") or opts.extra.get("compiled_only"):
            for b in opts.extra.get("compile_batches", [1]):
                _compiled_stages(runner, stack, guidance, b, opts.duration_s)
    return runner.rows


def _batch_stages(runner: StageRunner, stack: GenerateStack, guidance, b: int, duration_s: float) -> None:
    import functools

    from dub.model.flow.guidance import Guidance
    from dub.model.runtime.fast import OneStepGraph, decode_latents

    net, vae, vocoder = stack.network, stack.vae, stack.vocoder
    cuda = runner.device.startswith("cuda")
    where = "CUDA graph" if cuda else "fast path (eager on cpu)"
    inputs = random_inputs(net.config, b, runner.device, seed=b)
    audio_s = b * duration_s
    base = f"{stack.description}; cfg 4.5 std rescale 0.7"

    def eager_one(batched: bool = True):
        return eager_latents(net, guidance, *inputs, batched=batched)

    if b == 1:
        runner.measure(
            "network 1 step + CFG, eager, cond and uncond as 2 calls",
            lambda: eager_one(False),
            batch=b,
            audio_s=audio_s,
            note=base,
        )
    runner.measure(
        "network 1 step + CFG, eager, cond+uncond in one batch", eager_one, batch=b, audio_s=audio_s, note=base
    )
    runner.profile(
        "network 1 step + CFG, eager, cond+uncond in one batch", eager_one, batch=b, audio_s=audio_s, note=base
    )
    reference = runner.attempt("network 1 step + CFG, eager reference", b, eager_one)
    stage = f"network 1 step + CFG, {where}"
    graph = runner.attempt(stage, b, lambda: OneStepGraph(net, guidance, b))
    if graph is not None and reference is not None:
        runner.measure(
            stage,
            lambda: graph(*inputs),
            batch=b,
            audio_s=audio_s,
            reference=reference,
            note=f"{base}; capture {graph.build_s:.1f} s",
        )
    if b == 1:
        euler = Guidance(**EULER_GUIDANCE)
        runner.measure(
            f"network {EULER_STEPS} Euler steps + CFG, eager (baseline)",
            lambda: eager_latents(net, euler, *inputs, euler_steps=EULER_STEPS),
            batch=b,
            audio_s=audio_s,
            slow=True,
            note=f"{stack.description}; cfg 4.5 no rescale; cond+uncond in one batch",
        )
    if reference is None:
        return
    _decoder_stages(runner, stack, reference, b, audio_s, cuda, where)
    runner.measure(
        "network + VAE + vocoder, eager",
        lambda: eager_decode(vae, vocoder, eager_one()),
        batch=b,
        audio_s=audio_s,
        slow=True,
        note=base,
    )
    stage = f"network + VAE + vocoder, {where}"
    full = runner.attempt(
        stage, b, lambda: OneStepGraph(net, guidance, b, decode=functools.partial(decode_latents, vae, vocoder))
    )
    wav_ref = runner.attempt("VAE + vocoder, eager reference", b, lambda: eager_decode(vae, vocoder, reference))
    if full is not None and wav_ref is not None:
        target = f"; target < {LATENCY_TARGET_MS:.0f} ms on an H200" if b == 1 and cuda else ""
        runner.measure(
            stage, lambda: full(*inputs), batch=b, audio_s=audio_s, slow=True, reference=wav_ref, note=f"{base}{target}"
        )


def _decoder_stages(
    runner: StageRunner, stack: GenerateStack, latents, b: int, audio_s: float, cuda: bool, where: str
) -> None:
    import torch

    from dub.model.codec.bigvgan import BigVGAN, activation_form, activation_status
    from dub.model.kernels.graphs import CudaGraphCall

    vae, vocoder, device = stack.vae, stack.vocoder, runner.device

    def vae_only():
        with autocast_for(device):
            return vae.decode(latents.transpose(1, 2).to(vae.data_mean))

    mel = runner.attempt("VAE decode", b, vae_only)
    if mel is None:
        return

    def vocoder_only():
        with autocast_for(device):
            return vocoder(mel)

    runner.measure("VAE decode", vae_only, batch=b, audio_s=audio_s, note=stack.description)
    published = exact = None
    if isinstance(vocoder, BigVGAN):
        # the forms of the anti-aliased activation in bf16 against BigVGAN's order, and all of
        # them against float32: bf16 alone moves a deep random-weight vocoder by a few percent
        with activation_form(vocoder, "reference"):
            published = vocoder_only()
            with torch.no_grad(), true_float32():
                exact = vocoder(mel.float()) if cuda else None
    runner.measure(
        "vocoder (BigVGAN)",
        vocoder_only,
        batch=b,
        audio_s=audio_s,
        slow=True,
        reference=published,
        exact=exact,
        note=f"{stack.description}; anti-aliased activations: {activation_status(device)}",
    )
    if isinstance(vocoder, BigVGAN):  # what each form of the anti-aliased activation costs
        with activation_form(vocoder, "polyphase"):
            runner.measure(
                "vocoder (BigVGAN), activations as grouped convs",
                vocoder_only,
                batch=b,
                audio_s=audio_s,
                slow=True,
                reference=published,
                exact=exact,
                note=f"{stack.description}; for comparison",
            )
        with activation_form(vocoder, "reference"):
            runner.measure(
                "vocoder (BigVGAN), BigVGAN's upsample -> snake -> downsample",
                vocoder_only,
                batch=b,
                audio_s=audio_s,
                slow=True,
                note=f"{stack.description}; the published order",
            )
    del published, exact
    runner.measure(
        "VAE + vocoder, eager",
        lambda: eager_decode(vae, vocoder, latents),
        batch=b,
        audio_s=audio_s,
        slow=True,
        note=stack.description,
    )
    runner.profile(
        "VAE + vocoder, eager",
        lambda: eager_decode(vae, vocoder, latents),
        batch=b,
        audio_s=audio_s,
        note=stack.description,
    )
    if cuda:
        stage = f"VAE + vocoder, {where}"
        graph = runner.attempt(stage, b, lambda: CudaGraphCall(lambda z: eager_decode(vae, vocoder, z), [latents]))
        if graph is not None:
            runner.measure(
                stage,
                lambda: graph(latents),
                batch=b,
                audio_s=audio_s,
                slow=True,
                reference=eager_decode(vae, vocoder, latents),
                note=f"{stack.description}; capture {graph.capture_s:.1f} s",
            )
    if stack.demo_codec is not None:
        with torch.no_grad():
            runner.measure(
                "demo codec decode (Griffin-Lim, 32 iterations)",
                lambda: stack.demo_codec.decode(latents),
                batch=b,
                audio_s=audio_s,
                slow=True,
                dtype="float32",
                note="the demo bundle's codec (no VAE, no vocoder)",
            )


def _compiled_stages(runner: StageRunner, stack: GenerateStack, guidance, b: int, duration_s: float) -> None:
    """torch.compile of the network step and of the decoder, each replayed as a CUDA graph
    (compiled eagerly on the CPU)."""
    from dub.model.kernels.graphs import CudaGraphCall
    from dub.model.runtime.fast import OneStepGraph, compile_decoder

    device = runner.device
    net, vae, vocoder = stack.network, stack.vae, stack.vocoder
    audio_s = b * duration_s
    cuda = device.startswith("cuda")
    how = "compiled + CUDA graph" if cuda else "compiled"
    inputs = random_inputs(net.config, b, device, seed=b)
    reference = runner.attempt(f"network 1 step + CFG, {how}", b, lambda: eager_latents(net, guidance, *inputs))
    if reference is None:
        return
    base = f"{stack.description}; torch.compile (default mode)"

    stage = f"network 1 step + CFG, {how}"
    started = time.perf_counter()
    graph = runner.attempt(stage, b, lambda: OneStepGraph(net, guidance, b, compile=True, use_graph=cuda), need_s=60)
    if graph is not None:
        runner.measure(
            stage,
            lambda: graph(*inputs),
            batch=b,
            audio_s=audio_s,
            reference=reference,
            note=f"{base}; compile + capture {time.perf_counter() - started:.0f} s",
        )

    stage = f"VAE + vocoder, {how}"
    decoder = runner.attempt(stage, b, lambda: compile_decoder(vae, vocoder, example_latents=reference), need_s=60)
    wav_ref = runner.attempt(stage, b, lambda: eager_decode(vae, vocoder, reference))
    if decoder is None or wav_ref is None:
        return
    if decoder.kind != "compiled":
        runner.skip(stage, b, decoder.note)
        return

    def compiled_decode(z):
        with autocast_for(device, cache=False):
            wav = decoder.fn(z)
        return wav.float().clamp(-1, 1)

    dec_graph = runner.attempt(stage, b, lambda: CudaGraphCall(compiled_decode, [reference], use_graph=cuda))
    if dec_graph is not None:
        runner.measure(
            stage,
            lambda: dec_graph(reference),
            batch=b,
            audio_s=audio_s,
            slow=True,
            reference=wav_ref,
            note=f"{base}; compile {decoder.build_s:.0f} s",
        )

    stage = f"network + VAE + vocoder, {how}"
    started = time.perf_counter()
    full = runner.attempt(
        stage, b, lambda: OneStepGraph(net, guidance, b, decode=decoder.fn, compile=True, use_graph=cuda), need_s=30
    )
    if full is not None:
        target = f"; target < {LATENCY_TARGET_MS:.0f} ms on an H200" if b == 1 and cuda else ""
        runner.measure(
            stage,
            lambda: full(*inputs),
            batch=b,
            audio_s=audio_s,
            slow=True,
            reference=wav_ref,
            note=f"{base}; build {time.perf_counter() - started:.0f} s{target}",
        )
    free_cuda_cache(device)
