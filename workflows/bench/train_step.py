"""`dub bench train-step`: one AdamW training step, flow matching vs MeanFlow.

Times a full step (loss, backward, optimiser) on random latents and random condition
features of the preset's shapes (random weights): plain flow matching, MeanFlow with the
default recipe (25% of samples need the JVP), and MeanFlow with every sample s != t (the
JVP on the whole batch, the worst case). bf16 autocast on CUDA, float32 on CPU unless
`extra["bf16"]` says otherwise (`--bf16`: what `dub train --bf16` runs on a CPU). The preset
`demo` is the bundled model's network, with the recipe's batch given by --batch-size. Falls back
to a per-token MLP when the MF-MJT network cannot be imported, and says so in the notes.

With `extra={"compile": True}` (`dub bench train-step --compile`) it adds the compiled
variants: MeanFlow with a fixed JVP sub-batch (exact 25 %) and the JVP through torch.compile
(CUDA graphs on a GPU), then flow matching and that MeanFlow with the network compiled too, so
the ratio is read against the matching baseline. `compiled_only` skips the eager cases.
Compilation happens in the warm-up calls and is not timed.

With `extra={"like_for_like": True}` (`dub bench train-step --like-for-like`) it times instead
the one ratio that compares like with like: flow matching against MeanFlow (exactly 25 % of each
batch through the JVP) with the same optimisations on both sides, eager and, with `--compile`,
both compiled (the network and the JVP in one torch.compile mode: reduce-overhead, i.e. CUDA
graphs, on a GPU). The two steps alternate in rounds, the order flipped every round, so drift
in the machine's speed falls on both; each row's JSON carries the per-round times and the
MeanFlow row the ratio with its spread over the rounds.
"""

from __future__ import annotations

import statistics
from dataclasses import replace

from dub.workflows.bench import BenchOptions, BenchRow, device_name, resolve_device, time_call

_FALLBACK_PRESET = "tiny"


def run(opts: BenchOptions) -> list[BenchRow]:
    import torch

    from dub.model.flow.jvp import eager_tangent, make_tangent
    from dub.model.flow.meanflow import MeanFlowConfig, flow_matching_loss, meanflow_loss

    device = resolve_device(opts.device)
    cuda = device.startswith("cuda")
    torch.manual_seed(0)
    model, x, cond, empty, what = _setup(opts, device)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
    bf16 = cuda if opts.extra.get("bf16") is None else bool(opts.extra["bf16"])
    dtype = torch.bfloat16 if bf16 else torch.float32
    default = MeanFlowConfig()
    exact = replace(default, exact_ratio=True)
    if opts.extra.get("like_for_like"):
        return _like_for_like(opts, device, model, x, cond, empty, optimizer, dtype, exact, what)
    cases = []  # (stage, objective, cfg, model, tangent, baseline group)
    if not opts.extra.get("compiled_only"):
        cases += [
            ("flow matching", flow_matching_loss, default, model, None, "eager"),
            ("meanflow (25% s != t)", meanflow_loss, default, model, eager_tangent, "eager"),
            # one JVP sub-batch size every step: separates shape churn (new kernels / algorithm
            # searches per size) from the cost of the tangent itself
            ("meanflow (exact 25%)", meanflow_loss, exact, model, eager_tangent, "eager"),
        ]
        if cuda:  # the JVP as CUDA graphs without a compiler (on a CPU it is the row above)
            cases.append(
                ("meanflow (exact 25%, graphed JVP)", meanflow_loss, exact, model, make_tangent("graphed"), "eager")
            )
        cases += [
            (
                "meanflow (all s != t)",
                meanflow_loss,
                replace(default, flow_matching_ratio=0.0),
                model,
                eager_tangent,
                "eager",
            ),
        ]
    if opts.extra.get("compile") or opts.extra.get("compiled_only"):
        compiled_model = torch.compile(model)
        cases += [
            (
                "meanflow (exact 25%, compiled JVP)",
                meanflow_loss,
                exact,
                model,
                make_tangent("compiled", device),
                "eager",
            ),
            ("flow matching (compiled network)", flow_matching_loss, default, compiled_model, None, "compiled"),
            (
                "meanflow (exact 25%, compiled JVP + network)",
                meanflow_loss,
                exact,
                compiled_model,
                make_tangent("compiled", device),
                "compiled",
            ),
        ]
    rows: list[BenchRow] = []
    baselines: dict[str, float] = {}
    for stage, objective, cfg, net, tangent, group in cases:
        step = _step(objective, cfg, net, tangent, x, cond, empty, optimizer, device, dtype)
        warmup = max(1, opts.warmup) + (2 if group == "compiled" or tangent not in (None, eager_tangent) else 0)
        median_ms, peak_mb = time_call(step, repeats=opts.repeats, warmup=warmup, device=device)
        ratio = ""
        if objective is flow_matching_loss:
            baselines[group] = median_ms
        elif group in baselines:
            ratio = f"{median_ms / baselines[group]:.2f}x {'eager' if group == 'eager' else 'compiled'} flow matching; "
        rows.append(
            BenchRow(
                bench="train-step",
                stage=f"{stage}, AdamW step",
                median_ms=median_ms,
                batch_size=x.shape[0],
                dtype=str(dtype).removeprefix("torch."),
                device=device,
                peak_mem_mb=peak_mb,
                note=f"{ratio}{what}; {device_name(device)}",
            )
        )
    return rows


def _step(objective, cfg, net, tangent, x, cond, empty, optimizer, device: str, dtype):
    """One training step (loss, backward, AdamW) as a callable, its noise from its own generator."""
    import torch

    generator = torch.Generator(device).manual_seed(0)
    kwargs = {} if tangent is None else {"tangent": tangent}

    def step() -> None:
        with torch.autocast(device.split(":")[0], dtype=torch.bfloat16, enabled=dtype == torch.bfloat16):
            loss, _ = objective(net, x, cond=cond, empty=empty, cfg=cfg, generator=generator, **kwargs)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    return step


# timed steps per round and side: a round's median of a few steps smooths single hiccups while
# rounds stay short enough to alternate often
_STEPS_PER_ROUND = 3


def _like_for_like(opts: BenchOptions, device: str, model, x, cond, empty, optimizer, dtype, exact, what: str):
    import torch

    from dub.model.flow.jvp import eager_tangent, make_tangent
    from dub.model.flow.meanflow import flow_matching_loss, meanflow_loss

    levels = ["eager"] + (["compiled"] if opts.extra.get("compile") else [])
    rounds = max(3, opts.repeats)
    rows: list[BenchRow] = []
    for level in levels:
        if level == "eager":
            net, tangent = model, eager_tangent
        else:  # the network in the JVP's own mode, so neither side has an optimisation the other lacks
            net = torch.compile(model, mode="reduce-overhead" if device.startswith("cuda") else None)
            tangent = make_tangent("compiled", device)
        sides = {
            "flow matching": _step(flow_matching_loss, exact, net, None, x, cond, empty, optimizer, device, dtype),
            "meanflow (exact 25%)": _step(meanflow_loss, exact, net, tangent, x, cond, empty, optimizer, device, dtype),
        }
        for _ in range(max(1, opts.warmup) + (2 if level == "compiled" else 0)):  # builds happen here
            for step in sides.values():
                step()
        times: dict[str, list[float]] = {name: [] for name in sides}
        peaks: dict[str, list[float]] = {name: [] for name in sides}  # CUDA only: None on a CPU
        for r in range(rounds):
            for name in list(sides)[:: 1 if r % 2 == 0 else -1]:
                ms, peak = time_call(sides[name], repeats=_STEPS_PER_ROUND, warmup=0, device=device)
                times[name].append(ms)
                peaks[name] += [] if peak is None else [peak]
        fm_ms, mf_ms = times.values()
        ratios = [mf / fm for mf, fm in zip(mf_ms, fm_ms)]
        ratio = statistics.median(ratios)
        common = {"like_for_like": True, "optimisations": level, "rounds": rounds, "steps_per_round": _STEPS_PER_ROUND}
        spread = f"{ratio:.2f}x [{min(ratios):.2f}, {max(ratios):.2f}] flow matching over {rounds} alternating rounds; "
        for name, ms in times.items():
            meanflow = name.startswith("meanflow")
            extra = {**common, "round_ms": [round(t, 3) for t in ms]}
            if meanflow:
                extra.update(meanflow_over_flow_matching=ratio, ratio_min=min(ratios), ratio_max=max(ratios))
            rows.append(
                BenchRow(
                    bench="train-step",
                    stage=f"{name}, {level}, like for like, AdamW step",
                    median_ms=statistics.median(ms),
                    batch_size=x.shape[0],
                    dtype=str(dtype).removeprefix("torch."),
                    device=device,
                    peak_mem_mb=max(peaks[name], default=None),
                    note=f"{spread if meanflow else ''}{what}; {device_name(device)}",
                    extra=extra,
                )
            )
    return rows


def _setup(opts: BenchOptions, device: str):
    """(model, latents, conditions, empty features, description) on `device`."""
    import torch

    try:
        from dub.model.network.config import NETWORK_PRESETS
        from dub.model.network.transformer import MFMJT
    except ImportError as exc:
        return _mlp_setup(opts, device, f"MLP fallback (MF-MJT unavailable: {exc})")

    if opts.preset == "demo":
        from dub.model.runtime.bundles import network_config, resolve_bundle

        preset, config = "demo", network_config(resolve_bundle("demo"))
    else:
        preset = opts.preset if opts.preset in NETWORK_PRESETS else _FALLBACK_PRESET
        config = NETWORK_PRESETS[preset]
    if opts.duration_s != 8.0:
        config = config.with_duration(opts.duration_s)
    if not config.mean_flow:
        config = replace(config, mean_flow=True)
    model = MFMJT(config).to(device).train()
    b = opts.batch_size
    x = torch.randn(b, config.latent_seq_len, config.latent_dim, device=device)
    cond = {
        "clip_f": torch.randn(b, config.clip_seq_len, config.clip_dim, device=device),
        "sync_f": torch.randn(b, config.sync_seq_len, config.sync_dim, device=device),
        "text_f": torch.randn(b, config.text_seq_len, config.text_dim, device=device),
    }
    empty = {"clip_f": model.empty_clip_feat, "sync_f": model.empty_sync_feat, "text_f": model.empty_string_feat}
    params = sum(p.numel() for p in model.parameters()) / 1e6
    substituted = "" if preset == opts.preset else f" (no network preset {opts.preset!r})"
    what = f"MF-MJT {preset}{substituted}, {params:.1f} M params, random weights, {config.latent_seq_len} latents"
    return model, x, cond, empty, what


def _mlp_setup(opts: BenchOptions, device: str, what: str):
    import torch
    from torch import nn

    class TokenMLP(nn.Module):
        def __init__(self, dim: int = 20, hidden: int = 512) -> None:
            super().__init__()
            self.net = nn.Sequential(
                nn.Linear(dim + 2, hidden), nn.SiLU(), nn.Linear(hidden, hidden), nn.SiLU(), nn.Linear(hidden, dim)
            )

        def forward(self, z, t, s):
            times = torch.stack([t, s - t], dim=-1).to(z.dtype)[:, None].expand(-1, z.shape[1], -1)
            return self.net(torch.cat([z, times], dim=-1))

    model = TokenMLP().to(device)
    x = torch.randn(opts.batch_size, 250, 20, device=device)
    return model, x, {}, None, what
