"""MeanFlow training objective (Geng et al. 2025) in MMAudio's time convention (SPEC §2.2).

t = 0 is noise, t = 1 is data: z_t = (1 - t)·e + t·x, v = x - e. The model predicts the
average velocity u(z_t, t, s) over [t, s], s >= t, so z_s = z_t + (s - t)·u. The MeanFlow
identity u = v + (s - t)·du/dt (total derivative along the flow, s fixed) gives the
stop-gradient target

    u_tgt = v + (s - t) · JVP(u_theta, (z, t, s), tangents (v, 1, 0)).

Generic over a velocity model `model(z, t, s, **cond) -> u` whose samples do not interact
(no batch norm): the JVP and the guidance pass run on sub-batches.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, replace
from typing import NamedTuple

import torch

from dub.model.flow.guidance import per_sample
from dub.model.flow.jvp import TangentFn, eager_tangent

ConditionGroups = Sequence[Sequence[str]]

# MMAudio drops clip and sync features together and text on its own.
DEFAULT_GROUPS: tuple[tuple[str, ...], ...] = (("clip_f", "sync_f"), ("text_f",))


@dataclass(frozen=True)
class MeanFlowConfig:
    flow_matching_ratio: float = 0.75  # probability that s = t (plain flow matching on that sample)
    # exactly round(ratio * batch) samples with s = t (chosen at random) instead of a coin per
    # sample: the JVP sub-batch then has one size, which a compiled or graphed tangent needs to
    # stay compiled / captured once. None: a coin per sample here; `dub train` turns it on
    # exactly when its JVP is compiled or graphed (`exact_ratio_for`)
    exact_ratio: bool | None = None
    time_mu: float = -0.4  # logit-normal location, MeanFlow convention (1 = noise)
    time_sigma: float = 1.0
    # location of MeanFlow's second draw (None: time_mu). Both draws from one narrow distribution
    # give short intervals; one step jumps the whole path, so a second draw towards the data
    # (below time_mu) trains the long intervals that jump takes
    data_time_mu: float | None = None
    adaptive_p: float = 1.0  # loss weight 1 / (mse + eps)^p, detached; 0 = plain MSE
    adaptive_eps: float = 1e-3
    guidance_omega: float = 1.0  # guidance folded into training; omega = 1, kappa = 0 is off
    guidance_kappa: float = 0.0
    guidance_t_min: float = 0.0  # guidance only where guidance_t_min <= t <= guidance_t_max (our t)
    guidance_t_max: float = 1.0
    cond_dropout: float = 0.1  # per sample and per condition group

    def __post_init__(self) -> None:
        for name in ("flow_matching_ratio", "cond_dropout", "guidance_t_min", "guidance_t_max"):
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"MeanFlowConfig.{name} must be in [0, 1], got {value}")
        if self.time_sigma <= 0.0:
            raise ValueError(f"MeanFlowConfig.time_sigma must be > 0, got {self.time_sigma}")
        if self.adaptive_p < 0.0 or self.adaptive_eps <= 0.0:
            raise ValueError(
                f"adaptive weighting needs p >= 0 and eps > 0, got p={self.adaptive_p}, eps={self.adaptive_eps}"
            )
        if self.guidance_t_min > self.guidance_t_max:
            raise ValueError(f"guidance_t_min {self.guidance_t_min} > guidance_t_max {self.guidance_t_max}")

    @property
    def guided(self) -> bool:
        return self.guidance_omega != 1.0 or self.guidance_kappa != 0.0

    def as_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping) -> MeanFlowConfig:
        return cls(**data)


def sample_times(
    batch: int,
    cfg: MeanFlowConfig,
    device: torch.device | str | None = None,
    generator: torch.Generator | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(t, s) of shape (batch,), float32, 0 <= t <= s <= 1.

    MeanFlow draws two logit-normal times in its convention (1 = noise; the second centred on
    `data_time_mu` when set) and calls the larger one the noise-side time; mapped to ours
    (x -> 1 - x) the larger draw becomes the smaller t.
    With probability `flow_matching_ratio` the data-side time collapses onto it (s = t); with
    `exact_ratio`, exactly round(flow_matching_ratio * batch) randomly chosen samples do.
    """
    second = cfg.time_mu if cfg.data_time_mu is None else cfg.data_time_mu
    spread = cfg.time_sigma * _randn((batch, 2), generator, device)
    draws = torch.sigmoid(torch.stack([cfg.time_mu + spread[:, 0], second + spread[:, 1]], dim=1))
    noise_side, data_side = draws.max(dim=1).values, draws.min(dim=1).values
    coins = _rand((batch,), generator, device)
    if cfg.exact_ratio:  # the k smallest coins: a uniformly random subset of size k
        ranks = coins.argsort().argsort()
        same = ranks < round(cfg.flow_matching_ratio * batch)
    else:
        same = coins < cfg.flow_matching_ratio
    data_side = torch.where(same, noise_side, data_side)
    return 1.0 - noise_side, 1.0 - data_side


def drop_conditions(
    cond: Mapping[str, torch.Tensor],
    empty: Mapping[str, torch.Tensor] | None,
    groups: ConditionGroups = DEFAULT_GROUPS,
    p: float = 0.1,
    generator: torch.Generator | None = None,
) -> tuple[dict[str, torch.Tensor], tuple[torch.Tensor, ...]]:
    """Replace whole condition groups, per sample, by the broadcast empty features.

    Returns the new conditions and one boolean keep-mask (batch,) per group, in `groups`
    order. Keys outside every group pass through. The replacement keeps gradients flowing
    into learnable empty features.
    """
    out = dict(cond)
    if not cond:
        return out, ()
    batch = _batch_size(cond)
    device = next(iter(cond.values())).device
    masks = []
    for group in groups:
        if p <= 0.0:
            masks.append(torch.ones(batch, dtype=torch.bool, device=device))
            continue
        keep = _rand((batch,), generator, device) >= p
        masks.append(keep)
        for key in group:
            if key not in cond:
                continue
            out[key] = _where_kept(keep, cond[key], _empty_for(key, cond[key], empty))
    return out, tuple(masks)


def empty_like_conditions(
    cond: Mapping[str, torch.Tensor],
    empty: Mapping[str, torch.Tensor],
    groups: ConditionGroups = DEFAULT_GROUPS,
) -> dict[str, torch.Tensor]:
    """Fully unconditional version of `cond`: every grouped key replaced by its empty feature."""
    grouped = {key for group in groups for key in group}
    return {
        key: _empty_for(key, value, empty).expand_as(value) if key in grouped else value for key, value in cond.items()
    }


def exact_ratio_for(cfg: MeanFlowConfig, tangent_kind: str) -> MeanFlowConfig:
    """`cfg` with `exact_ratio` decided where it was left None: on for a compiled or graphed JVP
    (one sub-batch size, one capture), off (a coin per sample) for the eager one."""
    if cfg.exact_ratio is not None:
        return cfg
    return replace(cfg, exact_ratio=tangent_kind in ("compiled", "graphed"))


def meanflow_target(
    model: Callable[..., torch.Tensor],
    z: torch.Tensor,
    t: torch.Tensor,
    s: torch.Tensor,
    v: torch.Tensor,
    cond: Mapping[str, torch.Tensor] | None = None,
    tangent: TangentFn = eager_tangent,
) -> torch.Tensor:
    """u_tgt = v + (s - t)·d/dt u(z, t, s) along dz/dt = v, without gradient, in float32
    (float64 stays float64) whatever autocast computed the JVP in.

    `tangent` computes the derivative on the unwrapped module (`eager_tangent`, or a
    `CompiledTangent`). Samples with s = t need no derivative, so it runs only on the others.
    """
    cond = dict(cond or {})
    target = v.detach().to(torch.promote_types(v.dtype, torch.float32), copy=True)
    moving = (s != t).nonzero().squeeze(1)
    if moving.numel() == 0:
        return target
    sub = _select(cond, moving, z.shape[0])
    z_m, t_m, s_m, v_m = z[moving], t[moving], s[moving], v[moving].to(z.dtype)
    dudt = tangent(unwrap_model(model), z_m, t_m, s_m, v_m, sub)
    step = per_sample(s_m - t_m, dudt).to(target.dtype) * dudt.to(target.dtype)
    target[moving] = target[moving] + step
    return target


def meanflow_loss(
    model: Callable[..., torch.Tensor],
    x: torch.Tensor,
    *,
    cond: Mapping[str, torch.Tensor] | None = None,
    empty: Mapping[str, torch.Tensor] | None = None,
    cfg: MeanFlowConfig = MeanFlowConfig(),
    noise: torch.Tensor | None = None,
    generator: torch.Generator | None = None,
    groups: ConditionGroups = DEFAULT_GROUPS,
    tangent: TangentFn = eager_tangent,
) -> tuple[torch.Tensor, dict[str, float]]:
    """MeanFlow loss on data `x` (batch first). `model` may be DDP-wrapped: the gradient pass
    goes through the wrapper (so gradients synchronise), the JVP through the inner module
    (`tangent`: `eager_tangent` or a `CompiledTangent`, see `make_tangent`).

    `empty` maps condition names to empty (null) features broadcastable to them; it is
    required when conditions are dropped or guidance is folded into training.
    """
    b = _noised_batch(x, cond, empty, cfg, noise, generator, groups, mean_flow=True)
    v = x - b.e
    if cfg.guided:
        v = _guided_velocity(model, b.z, b.t, v, b.cond, b.keep, empty, cfg, groups)
    target = meanflow_target(model, b.z, b.t, b.s, v, b.cond, tangent)
    pred = model(b.z, b.t, b.s, **b.cond)
    loss, mse = _weighted_loss(pred, target, cfg.adaptive_p, cfg.adaptive_eps)
    return loss, _metrics(loss, mse, (b.s == b.t).float().mean(), target)


def flow_matching_loss(
    model: Callable[..., torch.Tensor],
    x: torch.Tensor,
    *,
    cond: Mapping[str, torch.Tensor] | None = None,
    empty: Mapping[str, torch.Tensor] | None = None,
    cfg: MeanFlowConfig = MeanFlowConfig(),
    noise: torch.Tensor | None = None,
    generator: torch.Generator | None = None,
    groups: ConditionGroups = DEFAULT_GROUPS,
) -> tuple[torch.Tensor, dict[str, float]]:
    """Plain conditional flow matching (s = t, target v, unweighted MSE) with the same
    condition dropout; t is one logit-normal draw (cfg.time_mu/sigma, MeanFlow convention)."""
    b = _noised_batch(x, cond, empty, cfg, noise, generator, groups, mean_flow=False)
    target = (x - b.e).float()
    pred = model(b.z, b.t, b.t, **b.cond)
    loss, mse = _weighted_loss(pred, target, 0.0, 1.0)
    return loss, _metrics(loss, mse, torch.ones((), device=x.device), target)


def unwrap_model(model: Callable[..., torch.Tensor]) -> Callable[..., torch.Tensor]:
    """The module under DistributedDataParallel / torch.compile wrappers (function transforms
    such as torch.func.jvp cannot go through DDP's forward)."""
    while True:
        if isinstance(model, torch.nn.parallel.DistributedDataParallel):
            model = model.module
        elif isinstance(model, torch.nn.Module) and hasattr(model, "_orig_mod"):
            model = model._orig_mod
        else:
            return model


class _NoisedBatch(NamedTuple):
    t: torch.Tensor  # (B,) times
    s: torch.Tensor  # (B,) interval ends (s = t for flow matching)
    cond: dict[str, torch.Tensor]  # after condition dropout
    keep: tuple[torch.Tensor, ...]  # per condition group, which samples kept it
    e: torch.Tensor  # noise
    z: torch.Tensor  # z_t = (1 - t)·e + t·x


def _noised_batch(
    x: torch.Tensor,
    cond: Mapping[str, torch.Tensor] | None,
    empty: Mapping[str, torch.Tensor] | None,
    cfg: MeanFlowConfig,
    noise: torch.Tensor | None,
    generator: torch.Generator | None,
    groups: ConditionGroups,
    *,
    mean_flow: bool,
) -> _NoisedBatch:
    """The preamble both objectives share: input checks, times, condition dropout, noise and
    interpolation, drawn in this order from `generator` (the order fixes what a seed gives).
    MeanFlow draws (t, s) with `sample_times`; flow matching one logit-normal t and s = t."""
    cond = dict(cond or {})
    _check_inputs(x, cond, empty, cfg.cond_dropout > 0.0 or (mean_flow and cfg.guided), noise)
    batch, device = x.shape[0], x.device
    if mean_flow:
        t, s = sample_times(batch, cfg, device, generator)
    else:
        t = s = 1.0 - torch.sigmoid(cfg.time_mu + cfg.time_sigma * _randn((batch,), generator, device))
    cond, keep = drop_conditions(cond, empty, groups, cfg.cond_dropout, generator)
    e = noise if noise is not None else _randn(tuple(x.shape), generator, device, x.dtype)
    z = per_sample(1.0 - t, x) * e + per_sample(t, x) * x
    return _NoisedBatch(t, s, cond, keep, e, z)


def _guided_velocity(
    model: Callable[..., torch.Tensor],
    z: torch.Tensor,
    t: torch.Tensor,
    v: torch.Tensor,
    cond: dict[str, torch.Tensor],
    keep: tuple[torch.Tensor, ...],
    empty: Mapping[str, torch.Tensor] | None,
    cfg: MeanFlowConfig,
    groups: ConditionGroups,
) -> torch.Tensor:
    """MeanFlow's training-time guidance: v~ = omega·v + kappa·u_c + (1 - omega - kappa)·u_0,
    with the model's own detached instantaneous velocities (s = t), only on samples whose
    conditions were all kept and whose t lies in the guidance range."""
    apply = (t >= cfg.guidance_t_min) & (t <= cfg.guidance_t_max)
    for kept in keep:
        apply = apply & kept
    chosen = apply.nonzero().squeeze(1)
    if chosen.numel() == 0:
        return v
    sub = _select(cond, chosen, z.shape[0])
    uncond = empty_like_conditions(sub, empty or {}, groups)
    z_c, t_c = z[chosen], t[chosen]
    inner = unwrap_model(model)
    mixed = cfg.guidance_omega * v[chosen]
    with torch.no_grad():
        if cfg.guidance_kappa != 0.0:  # both branches as one batch
            both = {key: torch.cat([sub[key], uncond[key]]) for key in sub}
            u = inner(torch.cat([z_c, z_c]), torch.cat([t_c, t_c]), torch.cat([t_c, t_c]), **both)
            u_cond, u_uncond = u.to(v.dtype).split(chosen.numel())
            mixed = mixed + cfg.guidance_kappa * u_cond
        else:  # kappa = 0 (MeanFlow's main recipe) needs the unconditional branch alone
            u_uncond = inner(z_c, t_c, t_c, **uncond).to(v.dtype)
    mixed = mixed + (1.0 - cfg.guidance_omega - cfg.guidance_kappa) * u_uncond
    out = v.clone()
    out[chosen] = mixed
    return out


def _metrics(loss: torch.Tensor, mse: torch.Tensor, frac_equal: torch.Tensor, target: torch.Tensor) -> dict[str, float]:
    # One device->host copy for all figures.
    values = torch.stack([loss.detach().float(), mse.detach().mean(), frac_equal.float(), target.abs().mean()]).tolist()
    return dict(zip(("loss", "mse", "frac_s_eq_t", "u_tgt_abs_mean"), values))


def _weighted_loss(pred: torch.Tensor, target: torch.Tensor, p: float, eps: float) -> tuple[torch.Tensor, torch.Tensor]:
    if pred.shape != target.shape:
        raise ValueError(f"model output {tuple(pred.shape)} does not match the data shape {tuple(target.shape)}")
    err = pred.float() - target
    mse = err.square().reshape(err.shape[0], -1).mean(dim=1)
    if p > 0.0:
        weight = (mse.detach() + eps).pow(-p)
        return (weight * mse).mean(), mse
    return mse.mean(), mse


def _check_inputs(
    x: torch.Tensor,
    cond: Mapping[str, torch.Tensor],
    empty: Mapping[str, torch.Tensor] | None,
    needs_empty: bool,
    noise: torch.Tensor | None,
) -> None:
    if x.dim() < 2:
        raise ValueError(f"x must be batch-first with at least one feature dim, got shape {tuple(x.shape)}")
    if noise is not None and noise.shape != x.shape:
        raise ValueError(f"noise shape {tuple(noise.shape)} differs from x shape {tuple(x.shape)}")
    if cond and empty is None and needs_empty:
        raise ValueError(
            "condition dropout and training-time guidance need the empty (null) features: pass "
            "empty={name: tensor} or set cond_dropout=0 and guidance_omega=1, guidance_kappa=0"
        )
    for key, value in cond.items():
        if value.shape[0] != x.shape[0]:
            raise ValueError(f"condition {key!r} has batch {value.shape[0]}, data has {x.shape[0]}")


def _empty_for(key: str, value: torch.Tensor, empty: Mapping[str, torch.Tensor] | None) -> torch.Tensor:
    if empty is None or key not in empty:
        raise ValueError(f"no empty feature for condition {key!r}: add it to `empty` (have {sorted(empty or {})})")
    null = empty[key].to(device=value.device, dtype=value.dtype)
    try:
        torch.broadcast_shapes(null.shape, value.shape)
    except RuntimeError:
        raise ValueError(
            f"empty feature for {key!r} has shape {tuple(null.shape)}, which does not broadcast to {tuple(value.shape)}"
        ) from None
    return null


def _where_kept(keep: torch.Tensor, value: torch.Tensor, null: torch.Tensor) -> torch.Tensor:
    return torch.where(per_sample(keep, value), value, null)


def _select(cond: Mapping[str, torch.Tensor], index: torch.Tensor, batch: int) -> dict[str, torch.Tensor]:
    return {key: value[index] if value.shape[0] == batch else value for key, value in cond.items()}


def _batch_size(cond: Mapping[str, torch.Tensor]) -> int:
    sizes = {key: value.shape[0] for key, value in cond.items()}
    if len(set(sizes.values())) != 1:
        raise ValueError(f"conditions disagree on the batch size: {sizes}")
    return next(iter(sizes.values()))


def _generator_device(
    generator: torch.Generator | None, device: torch.device | str | None
) -> torch.device | str | None:
    return generator.device if generator is not None else device


def _randn(shape: tuple[int, ...], generator, device, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    out = torch.randn(shape, generator=generator, device=_generator_device(generator, device))
    return out.to(device=device, dtype=dtype)


def _rand(shape: tuple[int, ...], generator, device) -> torch.Tensor:
    return torch.rand(shape, generator=generator, device=_generator_device(generator, device)).to(device)
