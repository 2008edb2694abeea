"""Video-to-audio generation for a batch of windows: features -> MF-MJT -> latents -> waveform.

Pure PyTorch. The caller (a Ray actor in `workflows.generate`) hands over decoded uint8 frames,
prompts and one noise seed per window; everything here is batched across windows of
different videos. Conditions are preprocessed once per batch and reused by every sampler step.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from dataclasses import asdict, dataclass, field

import torch

from dub.model.flow.guidance import Guidance, needs_uncond
from dub.model.flow.sampling import guided_field, sample_euler, sample_meanflow

SAMPLERS = ("meanflow", "euler")  # one-step/k-step MeanFlow, or the flow-matching baseline


@dataclass(frozen=True)
class SamplerConfig:
    sampler: str = "meanflow"  # meanflow | euler
    steps: int = 1
    cfg: float = 1.0  # classifier-free guidance weight w (w <= 1: no unconditional pass)
    rescale: str = "std"  # std | proj | none
    phi: float = 0.7  # strength of the std rescale

    def __post_init__(self) -> None:
        if self.sampler not in SAMPLERS:
            raise ValueError(f"unknown sampler {self.sampler!r}: use one of {SAMPLERS}")
        if self.steps < 1:
            raise ValueError(f"steps must be >= 1, got {self.steps}")
        _ = self.guidance  # validates rescale and phi now, not at the first batch of a run

    @property
    def guidance(self) -> Guidance:
        return Guidance(cfg=self.cfg, rescale=self.rescale, phi=self.phi)

    def as_dict(self) -> dict:
        return asdict(self)


@dataclass
class WindowBatch:
    """One batch of windows. Frames may be None for text-to-audio (empty video tokens)."""

    clip_frames: torch.Tensor | None  # (B, Tc, H, W, 3) uint8
    sync_frames: torch.Tensor | None  # (B, Ts, H, W, 3) uint8
    prompts: list[str]
    negative_prompts: list[str]
    seeds: list[int]
    timings: dict[str, float] = field(default_factory=dict)


def noise_for_seeds(seeds: list[int], shape: tuple[int, ...], device: torch.device | str) -> torch.Tensor:
    """One noise tensor per window from its own seed, drawn on the CPU so the bytes do not
    depend on the device or on which other windows share the batch."""
    out = []
    for seed in seeds:
        gen = torch.Generator(device="cpu").manual_seed(int(seed) % (2**63 - 1))
        out.append(torch.randn(shape, generator=gen, dtype=torch.float32))
    return torch.stack(out).to(device)


# ~80 MB on the device at MMAudio's 77 x 1024 float32 text features
TEXT_CACHE_PROMPTS = 256


class Generator:
    """Encoders + network + codec on one device; `generate(batch)` -> waveforms (B, L)."""

    def __init__(self, network, encoders, codec, *, device: str = "cpu", dtype: torch.dtype = torch.float32):
        self.network = network.to(device).eval()
        self.encoders = encoders
        self.codec = codec
        self.device = torch.device(device)
        self.dtype = dtype
        self.fast_step = None  # dub.model.runtime.fast.OneStepGraph, when use_fast_step() was called
        self.fast_decoder = None  # dub.model.runtime.fast.DecoderGraph, when use_fast_decoder() was called
        self._text_cache: OrderedDict[str, torch.Tensor] = OrderedDict()  # prompt -> features, least recent first

    def use_fast_step(self, batch_size: int, sampler: SamplerConfig, *, compile: bool = False) -> str | None:
        """Capture one MeanFlow step with CFG (cond + uncond as one batch) as a CUDA graph for
        this sampler setting; later `latents()` calls that match it replay the graph. On CUDA, or
        anywhere with `compile=True` (torch.compile first; on the CPU without a graph: the eager
        path is the same arithmetic). Returns what is active, or None when the eager step stays."""
        if sampler.sampler != "meanflow" or (self.device.type != "cuda" and not compile):
            return None
        from dub.model.runtime.fast import OneStepGraph

        self.fast_step = OneStepGraph(
            self.network, sampler.guidance, batch_size, steps=sampler.steps, dtype=self.dtype, compile=compile
        )
        how = "compiled" if compile else "eager"
        graph = "CUDA graph" if self.fast_step.uses_graph else "no graph"
        return f"one-step network {how}; {graph}, batch {batch_size}"

    def use_fast_decoder(self, batch_size: int, *, compile: bool = False) -> str | None:
        """Decode latents through `dub.model.runtime.fast.DecoderGraph` (VAE + vocoder as a CUDA graph,
        compiled with `compile=True`): MMAudio codecs only, on CUDA or with `compile`. Returns
        what is active, or None when the eager decoder stays."""
        vae, vocoder = getattr(self.codec, "vae", None), getattr(self.codec, "vocoder", None)
        if vae is None or vocoder is None or (self.device.type != "cuda" and not compile):
            return None
        from dub.model.codec.bigvgan import activation_status
        from dub.model.runtime.fast import DecoderGraph

        self.fast_decoder = DecoderGraph(
            vae, vocoder, batch_size, self.network.config.latent_seq_len, dtype=self.dtype, compile=compile
        )
        return f"VAE + vocoder: {self.fast_decoder.note}; vocoder activations: {activation_status(self.device)}"

    @property
    def sample_rate(self) -> int:
        return self.codec.sample_rate

    def _autocast(self):
        enabled = self.device.type == "cuda" and self.dtype != torch.float32
        return torch.autocast(self.device.type, dtype=self.dtype, enabled=enabled)

    def _text(self, prompts: list[str]) -> torch.Tensor:
        """Text features; the empty prompt maps to the network's learned empty-string feature.
        Prompts seen recently come from a cache: a run's --prompt / --negative-prompt (or a
        data set's few captions) would otherwise go through the text tower in every batch."""
        cfg = self.network.config
        feats = torch.empty(len(prompts), cfg.text_seq_len, cfg.text_dim, device=self.device)
        empty = [i for i, p in enumerate(prompts) if not p.strip()]
        if empty:
            feats[empty] = self.network.empty_string_feat.to(self.device, torch.float32)
        new = list(dict.fromkeys(p for p in prompts if p.strip() and p not in self._text_cache))
        if new:
            encoded = self.encoders.text_features(new).to(self.device, torch.float32)
            self._text_cache.update((p, f.clone()) for p, f in zip(new, encoded))  # not views of the batch
        for i, prompt in enumerate(prompts):
            if prompt.strip():
                feats[i] = self._text_cache[prompt]
                self._text_cache.move_to_end(prompt)
        while len(self._text_cache) > TEXT_CACHE_PROMPTS:
            self._text_cache.popitem(last=False)
        return feats

    def _seconds_since(self, start: float) -> float:
        """A stage's time. On CUDA it waits for the stage's kernels first: without that a stage
        takes the time its launches took and the next one that waits (the audio's copy to the
        host) takes the rest, and the run's stage breakdown says nothing (one sync per stage per
        batch; the next stage's first launch is the GPU's only idle time)."""
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        return time.perf_counter() - start

    @torch.inference_mode()
    def features(self, batch: WindowBatch) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        cfg = self.network.config
        n = len(batch.seeds)
        start = time.perf_counter()
        with self._autocast():
            if batch.clip_frames is None:
                clip_f = self.network.empty_clip_feat.to(self.device).expand(n, cfg.clip_seq_len, -1)
                sync_f = self.network.empty_sync_feat.to(self.device).expand(n, cfg.sync_seq_len, -1)
            else:
                clip_f = self.encoders.clip_features(batch.clip_frames.to(self.device))
                sync_f = self.encoders.sync_features(batch.sync_frames.to(self.device))
            text_f = self._text(batch.prompts)
        batch.timings["features_s"] = self._seconds_since(start)
        return clip_f.float(), sync_f.float(), text_f.float()

    @torch.inference_mode()
    def latents(self, clip_f, sync_f, text_f, batch: WindowBatch, sampler: SamplerConfig) -> torch.Tensor:
        net = self.network
        cfg = net.config
        start = time.perf_counter()
        _check_length("clip", clip_f.shape[1], cfg.clip_seq_len)
        _check_length("sync", sync_f.shape[1], cfg.sync_seq_len)
        noise = noise_for_seeds(batch.seeds, (cfg.latent_seq_len, cfg.latent_dim), self.device)
        guidance = sampler.guidance
        if self.fast_step is not None and self.fast_step.accepts(sampler.sampler, sampler.steps, guidance):
            negative = None
            if needs_uncond(guidance) and any(p.strip() for p in batch.negative_prompts):
                negative = self._text(batch.negative_prompts)
            x = self.fast_step(noise, clip_f, sync_f, text_f, negative_text_f=negative)
            batch.timings["generate_s"] = self._seconds_since(start)
            return x
        with self._autocast():
            cond = net.preprocess_conditions(clip_f, sync_f, text_f)
            uncond = None
            if needs_uncond(guidance):
                negative = None
                if any(p.strip() for p in batch.negative_prompts):
                    negative = self._text(batch.negative_prompts)
                uncond = net.empty_conditions(len(batch.seeds), text_f=negative)

            def predict(z, t, s, c):
                return net.predict_flow(z, t, c, s=s)

            field = guided_field(predict, cond, uncond, guidance, cat=lambda a, b: a.cat(b))
            if sampler.sampler == "meanflow":
                x = sample_meanflow(field, noise, steps=sampler.steps)
            else:
                x = sample_euler(field, noise, steps=sampler.steps)
            x = net.unnormalize(x.float())
        batch.timings["generate_s"] = self._seconds_since(start)
        return x

    @torch.inference_mode()
    def decode(self, latents: torch.Tensor, batch: WindowBatch) -> torch.Tensor:
        start = time.perf_counter()
        if self.fast_decoder is not None and latents.shape[1] == self.network.config.latent_seq_len:
            wav = self.fast_decoder(latents)
        else:
            with self._autocast():
                wav = self.codec.decode(latents).float().clamp(-1, 1)
        batch.timings["decode_audio_s"] = self._seconds_since(start)
        return wav

    def generate(self, batch: WindowBatch, sampler: SamplerConfig) -> torch.Tensor:
        clip_f, sync_f, text_f = self.features(batch)
        lat = self.latents(clip_f, sync_f, text_f, batch, sampler)
        return self.decode(lat, batch)


def _check_length(name: str, got: int, want: int) -> None:
    if got != want:
        raise ValueError(
            f"{name} features have {got} tokens but the network expects {want}: the window duration "
            f"does not match the model's (decode windows of the model's duration)"
        )
