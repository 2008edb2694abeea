"""Optimised inference paths: one MeanFlow step with CFG as a CUDA graph, and a compiled decoder.

The eager path (`dub.model.runtime.generator.Generator`) stays the reference. These wrappers call the very
same functions (`preprocess_conditions`, `guided_field` with cond and uncond as ONE batch of 2B,
`sample_meanflow`, `unnormalize`, the codec's decode) under the same bf16 autocast, so a
replayed graph computes the eager arithmetic; only launch overhead goes away.

    CudaGraphCall(fn, example_inputs)        capture fn once (warm-up on a side stream), then
                                             replay it on new inputs copied into static buffers
    OneStepGraph(network, guidance, batch)   features + noise -> latents (or waveforms)
    compile_decoder(vae, vocoder, ...)       torch.compile of VAE decode + vocoder, with an
                                             eager fallback that says why
    DecoderGraph(vae, vocoder, batch, ...)   latents -> waveforms at one batch size (padded,
                                             chunked), compiled or not, replayed as a CUDA graph
    in_fixed_batches(fn, x, rows)            any row-wise fn at one batch size (padded, chunked)

On the CPU (or with `use_graph=False`) everything runs eagerly through the same code, which is
how the CPU tests check the wiring against the Generator.
"""

from __future__ import annotations

import functools
import time
from collections.abc import Sequence
from dataclasses import dataclass, fields

import torch

from dub.errors import short_error
from dub.model.flow.guidance import Guidance, needs_uncond
from dub.model.flow.sampling import guided_field, sample_meanflow, time_grid
from dub.model.kernels.graphs import CudaGraphCall, FallbackOnError, TensorFn, in_fixed_batches, pad_rows
from dub.model.network.transformer import MFMJT, Conditions


def _autocast(device: torch.device, dtype: torch.dtype) -> torch.autocast:
    # The autocast weight-cast cache is not safe under graph capture (cached casts made during
    # capture are freed when the context exits), so it is off everywhere; casts are exact anyway.
    enabled = device.type == "cuda" and dtype != torch.float32
    return torch.autocast(device.type, dtype=dtype, enabled=enabled, cache_enabled=False)


class OneStepGraph:
    """Features + noise -> latents (and waveforms when `decode` is given) for a batch of windows,
    MeanFlow with CFG, cond and uncond in ONE network call of 2B, replayed as a CUDA graph.

    Call with noise (b, N, C), clip_f, sync_f, text_f (raw encoder features, float32) and
    optionally `negative_text_f` (b, Nt, text_dim) for the unconditional branch. b may differ from
    the captured `batch_size`: smaller batches are padded, larger ones run in chunks. Returns
    unnormalised latents (b, N, C) float32, or waveforms (b, L) float32 in [-1, 1] (as
    `Generator.decode` returns them) when `decode(latents) -> wav` is given.

    `compile=True` wraps the latent computation in `torch.compile` before capture (slow to
    build: minutes for real sizes). `use_graph=False` (or the CPU) runs eagerly.
    """

    def __init__(
        self,
        network: MFMJT,
        guidance: Guidance,
        batch_size: int,
        *,
        steps: int | Sequence[float] = 1,
        decode: TensorFn | None = None,
        dtype: torch.dtype = torch.bfloat16,
        use_graph: bool | None = None,
        compile: bool = False,
        compile_mode: str | None = None,
        warmup: int = 2,
        seed: int = 0,
    ) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.network = network
        self.guidance = guidance
        self.batch_size = batch_size
        self.steps = steps
        self.decode = decode
        self.dtype = dtype
        self.device = network.device
        cfg = network.config
        self._has_negative = False
        with torch.inference_mode(False), torch.no_grad(), _autocast(self.device, dtype):
            empty = network.empty_conditions(batch_size)
            # static copies: `set_negative` rewrites them in place, the graph reads them
            self._uncond = Conditions(**{f.name: getattr(empty, f.name).clone() for f in fields(empty)})
            self._default_uncond = Conditions(**{f.name: getattr(empty, f.name).clone() for f in fields(empty)})
        latents_fn: TensorFn = self._latents
        self.compiled = False
        if compile:
            latents_fn = torch.compile(self._latents, mode=compile_mode, dynamic=False)
            self.compiled = True
        self._latents_fn = latents_fn
        gen = torch.Generator(device="cpu").manual_seed(seed)

        def example(*shape: int) -> torch.Tensor:
            return torch.randn(batch_size, *shape, generator=gen).to(self.device)

        examples = [
            example(cfg.latent_seq_len, cfg.latent_dim),
            example(cfg.clip_seq_len, cfg.clip_dim),
            example(cfg.sync_seq_len, cfg.sync_dim),
            example(cfg.text_seq_len, cfg.text_dim),
        ]
        self._call = CudaGraphCall(self._step, examples, use_graph=use_graph, warmup=warmup)
        if compile and not self._call.use_graph:
            self._call(*examples)  # compile now: a compiler failure surfaces here, not mid-run

    @property
    def uses_graph(self) -> bool:
        return self._call.use_graph

    @property
    def build_s(self) -> float:
        return self._call.capture_s

    def accepts(self, sampler: str, steps: int | Sequence[float], guidance: Guidance) -> bool:
        """Whether this graph computes that sampler setting (the Generator's hook asks first)."""
        return sampler == "meanflow" and _same_steps(steps, self.steps) and guidance == self.guidance

    # -- the computation (eager code; captured as is) ---------------------------------------

    def _latents(
        self, noise: torch.Tensor, clip_f: torch.Tensor, sync_f: torch.Tensor, text_f: torch.Tensor
    ) -> torch.Tensor:
        net = self.network
        with _autocast(self.device, self.dtype):
            cond = net.preprocess_conditions(clip_f, sync_f, text_f)
            uncond = self._uncond if needs_uncond(self.guidance) else None

            def predict(z, t, s, c):
                return net.predict_flow(z, t, c, s=s)

            field = guided_field(predict, cond, uncond, self.guidance, cat=lambda a, b: a.cat(b))
            x = sample_meanflow(field, noise, steps=self.steps)
            return net.unnormalize(x.float())

    def _step(self, noise, clip_f, sync_f, text_f) -> torch.Tensor:
        latents = self._latents_fn(noise, clip_f, sync_f, text_f)
        if self.decode is None:
            return latents
        with _autocast(self.device, self.dtype):
            wav = self.decode(latents)
        return wav.float().clamp(-1, 1)

    # -- calling -------------------------------------------------------------------------------

    @torch.no_grad()
    def set_negative(self, negative_text_f: torch.Tensor | None) -> None:
        """Unconditional branch text: a negative prompt's features (batch_size rows), or None for
        the network's empty-string feature. Runs eagerly (small), outside the graph."""
        if negative_text_f is None:
            if self._has_negative:
                for f in fields(self._uncond):
                    getattr(self._uncond, f.name).copy_(getattr(self._default_uncond, f.name))
                self._has_negative = False
            return
        with _autocast(self.device, self.dtype):
            neg = self.network.empty_conditions(self.batch_size, text_f=negative_text_f.to(self.device))
        for f in fields(self._uncond):
            getattr(self._uncond, f.name).copy_(getattr(neg, f.name))
        self._has_negative = True

    def __call__(
        self,
        noise: torch.Tensor,
        clip_f: torch.Tensor,
        sync_f: torch.Tensor,
        text_f: torch.Tensor,
        negative_text_f: torch.Tensor | None = None,
    ) -> torch.Tensor:
        inputs = [noise, clip_f, sync_f, text_f]
        b = noise.shape[0]
        if any(x.shape[0] != b for x in inputs) or (negative_text_f is not None and negative_text_f.shape[0] != b):
            raise ValueError(
                "noise, clip_f, sync_f, text_f (and negative_text_f) must share the batch size, got "
                f"{[x.shape[0] for x in inputs]}"
            )
        outputs = []
        for start in range(0, b, self.batch_size):
            stop = min(b, start + self.batch_size)
            chunk = [pad_rows(x[start:stop].to(self.device, torch.float32), self.batch_size) for x in inputs]
            negative = (
                None
                if negative_text_f is None
                else pad_rows(negative_text_f[start:stop].to(self.device, torch.float32), self.batch_size)
            )
            if needs_uncond(self.guidance):
                self.set_negative(negative)
            outputs.append(self._call(*chunk)[: stop - start])
        return outputs[0] if len(outputs) == 1 else torch.cat(outputs)


def _same_steps(a: int | Sequence[float], b: int | Sequence[float]) -> bool:
    return torch.equal(time_grid(a), time_grid(b))


# -- decoder -----------------------------------------------------------------------------------


def decode_latents(vae, vocoder, latents: torch.Tensor) -> torch.Tensor:
    """Channel-last latents (B, N, C) -> waveforms (B, L): VAE decode then vocoder (as
    `MMAudioCodec.decode`, without its checks, so it traces cleanly)."""
    mel = vae.decode(latents.transpose(1, 2).to(vae.data_mean))
    return vocoder(mel).squeeze(1)


@dataclass
class DecoderPath:
    """A decode function and what it is: "compiled", or "eager" with the reason in `note`."""

    fn: TensorFn
    kind: str
    note: str
    build_s: float = 0.0


def compile_decoder(
    vae,
    vocoder,
    *,
    example_latents: torch.Tensor | None = None,
    mode: str | None = None,
    dtype: torch.dtype = torch.bfloat16,
) -> DecoderPath:
    """`torch.compile` of VAE decode + vocoder, checked on `example_latents` (B, N, C) when given.

    Inductor once crashed on this decoder (SPEC §3: CUDA misaligned address), so any failure
    falls back to the eager decoder and says so in `note`. A crash that poisons the CUDA context
    cannot be recovered in-process: run this in its own process when that matters (the GPU
    benchmark script does).
    """
    eager = functools.partial(decode_latents, vae, vocoder)
    start = time.perf_counter()
    try:
        compiled = torch.compile(eager, mode=mode, dynamic=False)
    except Exception as exc:  # noqa: BLE001 - no compiler on this platform
        return DecoderPath(eager, "eager", f"torch.compile unavailable ({short_error(exc)}); eager decoder")
    if example_latents is None:
        return DecoderPath(FallbackOnError(compiled, eager), "compiled", "torch.compile (checked at first call)")
    device = example_latents.device
    try:
        with torch.no_grad(), _autocast(device, dtype):
            compiled(example_latents)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
    except Exception as exc:  # noqa: BLE001 - Inductor/Triton failures of any kind
        return DecoderPath(
            eager, "eager", f"torch.compile failed ({short_error(exc)}); eager decoder", time.perf_counter() - start
        )
    return DecoderPath(
        compiled, "compiled", f"torch.compile ok (mode={mode or 'default'})", time.perf_counter() - start
    )


class DecoderGraph:
    """Latents (b, N, C) -> waveforms (b, L) float32 in [-1, 1], as `Generator.decode` returns
    them, through VAE decode + vocoder captured as a CUDA graph at `batch_size` rows (smaller
    batches padded, larger ones chunked, like `OneStepGraph`).

    `compile=True` compiles the decoder first (`compile_decoder`, eager fallback with the reason
    in `note`); the vocoder's anti-aliased activations then fuse into one kernel each. On the CPU
    (or `use_graph=False`) it runs eagerly/compiled without a graph.
    """

    def __init__(
        self,
        vae,
        vocoder,
        batch_size: int,
        num_latents: int,
        *,
        dtype: torch.dtype = torch.bfloat16,
        compile: bool = False,
        compile_mode: str | None = None,
        use_graph: bool | None = None,
        warmup: int = 2,
        seed: int = 0,
    ) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.batch_size, self.dtype = batch_size, dtype
        self.device = vae.data_mean.device
        gen = torch.Generator(device="cpu").manual_seed(seed)
        example = torch.randn(batch_size, num_latents, vae.config.embed_dim, generator=gen).to(self.device)
        if compile:
            self.path = compile_decoder(vae, vocoder, example_latents=example, mode=compile_mode, dtype=dtype)
        else:
            self.path = DecoderPath(functools.partial(decode_latents, vae, vocoder), "eager", "eager decoder")
        self._call = CudaGraphCall(self._decode, [example], use_graph=use_graph, warmup=warmup)

    @property
    def uses_graph(self) -> bool:
        return self._call.use_graph

    @property
    def note(self) -> str:
        graph = "CUDA graph" if self.uses_graph else "no graph"
        return f"{self.path.note}; {graph}, batch {self.batch_size}"

    def _decode(self, latents: torch.Tensor) -> torch.Tensor:
        with _autocast(self.device, self.dtype):
            wav = self.path.fn(latents)
        return wav.float().clamp(-1, 1)

    def __call__(self, latents: torch.Tensor) -> torch.Tensor:
        return in_fixed_batches(
            lambda chunk: self._call(chunk.to(self.device, torch.float32)), latents, self.batch_size
        )
