"""MeanFlow objective (SPEC §2.2): exact targets on Gaussian data, condition dropout,
training-time guidance, DDP, bf16 autocast, and one-step learning on a 2-D mixture."""

from __future__ import annotations

import copy
import math

import pytest
import torch

from dub.model.flow.jvp import CompiledTangent, GraphedTangent, eager_tangent, make_tangent, resolve_tangent_kind
from dub.model.flow.meanflow import (
    MeanFlowConfig,
    drop_conditions,
    empty_like_conditions,
    exact_ratio_for,
    flow_matching_loss,
    meanflow_loss,
    meanflow_target,
    sample_times,
)
from dub.model.flow.sampling import make_noise, sample_euler, sample_meanflow
from tests.meanflow_helpers import (
    GaussianAverageVelocity,
    TinyAttentionVelocity,
    VelocityMLP,
    random_conditions,
    sample_mixture,
    sliced_wasserstein,
    train,
)

MU = torch.tensor([1.0, -2.0, 0.5], dtype=torch.float64)


def _times(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    t = 0.95 * torch.rand(n, generator=gen, dtype=torch.float64)
    s = t + (1 - t) * torch.rand(n, generator=gen, dtype=torch.float64)
    s[:4] = t[:4]  # some instantaneous samples too
    return t, s


def test_jvp_target_equals_exact_average_velocity_on_gaussian_data():
    exact = GaussianAverageVelocity(MU, sigma=0.5)
    t, s = _times(64, seed=0)
    z = torch.randn(64, 3, generator=torch.Generator().manual_seed(1), dtype=torch.float64) * 2
    v = exact(z, t, t)  # the marginal (conditional-mean) velocity
    # The closed form really is the average of the field: compare with an RK4 integral.
    z_s, h = z.clone(), (s - t)[:, None] / 200
    for k in range(200):
        tau = t + (s - t) * k / 200
        half, end = tau + h[:, 0] / 2, tau + h[:, 0]
        k1 = exact(z_s, tau, tau)
        k2 = exact(z_s + h / 2 * k1, half, half)
        k3 = exact(z_s + h / 2 * k2, half, half)
        k4 = exact(z_s + h * k3, end, end)
        z_s = z_s + h / 6 * (k1 + 2 * k2 + 2 * k3 + k4)
    moving = s > t
    # RK4's global error is O(h^4) with h <= 1/200 (~6e-10 times the field's 5th-derivative
    # scale); measured 3e-11
    torch.testing.assert_close((z_s - z)[moving] / (s - t)[moving, None], exact(z, t, s)[moving], atol=1e-8, rtol=0)

    target = meanflow_target(exact, z, t, s, v)
    err = float((target - exact(z, t, s)).abs().max())
    print(f"exact Gaussian model: max |u_tgt - u| = {err:.2e}")
    # float64 throughout: the closed form and its forward-mode derivative round ~10 operations on
    # values up to 8, ~1e-14 (measured 4e-15); 1e-12 leaves room and still sees a relative slip
    # of the derivative far below the 5e-2 of the wrong models below
    assert err < 1e-12 * max(1.0, float(exact(z, t, s).abs().max()))
    # Wrong models: one that ignores s (instantaneous velocity), one of another Gaussian.
    instantaneous = lambda z_, t_, s_: exact(z_, t_, t_)  # noqa: E731
    wrong_sigma = GaussianAverageVelocity(MU, sigma=1.0)
    for name, wrong in (("ignores s", instantaneous), ("sigma 1.0", wrong_sigma)):
        gap = float((meanflow_target(wrong, z, t, s, v) - wrong(z, t, s)).abs().max())
        print(f"wrong model ({name}): max |u_tgt - u| = {gap:.3f}")
        assert gap > 0.05


def test_meanflow_loss_vanishes_for_the_exact_model():
    # Point-mass data (sigma = 0): the per-sample velocity x - e IS the marginal velocity, so
    # the exact average velocity has zero loss on every sample, not only in expectation.
    cfg = MeanFlowConfig(flow_matching_ratio=0.0, adaptive_p=0.0, cond_dropout=0.0)
    x = MU.expand(256, 3).clone()
    noise = torch.randn(256, 3, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    _, good = meanflow_loss(
        GaussianAverageVelocity(MU, 0.0), x, cfg=cfg, noise=noise, generator=torch.Generator().manual_seed(3)
    )
    _, bad = meanflow_loss(
        GaussianAverageVelocity(MU, 0.5), x, cfg=cfg, noise=noise, generator=torch.Generator().manual_seed(3)
    )
    print(f"point-mass data: mse exact {good['mse']:.2e}, wrong sigma {bad['mse']:.3f}")
    assert good["frac_s_eq_t"] == 0.0
    # zero up to rounding: the times are float32 draws, so the model and the target agree to
    # ~u32 (mse ~2e-15 measured); the wrong model sits at > 1e-2
    assert good["mse"] < 1e-10
    assert bad["mse"] > 1e-2


def test_instantaneous_samples_need_no_jvp():
    calls = []

    def model(z, t, s):
        calls.append(z.shape[0])
        return z

    v = torch.randn(5, 3)
    t = torch.rand(5)
    target = meanflow_target(model, torch.randn(5, 3), t, t.clone(), v)
    assert calls == [] and torch.equal(target, v)
    s = t.clone()
    s[1] = 1.0
    meanflow_target(model, torch.randn(5, 3), t, s, v)
    assert calls == [1]  # only the sample with s != t is differentiated


def test_sample_times_follow_the_meanflow_recipe():
    n = 40_000
    cfg = MeanFlowConfig()
    t, s = sample_times(n, cfg, generator=torch.Generator().manual_seed(4))
    assert t.shape == s.shape == (n,) and t.dtype == torch.float32
    assert bool((t >= 0).all() and (s <= 1).all() and (t <= s).all())
    frac_equal = float((s == t).float().mean())
    # binomial sampling error sqrt(p (1 - p) / n) = 0.0022 for these fractions: 0.01 is 4.6 of it
    assert abs(frac_equal - 0.75) < 0.01
    # In MeanFlow's convention (1 = noise) 1 - t is the larger of two logit-normal draws and
    # 1 - s (when distinct) the smaller: at the one-draw median m, P(1 - t <= m) = 1/4.
    median = 1 / (1 + math.exp(0.4))
    assert abs(float((1 - t <= median).float().mean()) - 0.25) < 0.01
    t0, s0 = sample_times(n, MeanFlowConfig(flow_matching_ratio=0.0), generator=torch.Generator().manual_seed(4))
    assert bool((s0 > t0).all())
    assert abs(float((1 - s0 <= median).float().mean()) - 0.75) < 0.01


def test_a_second_draw_towards_the_data_trains_the_long_jumps_one_step_takes():
    """data_time_mu centres MeanFlow's second draw apart from the first: with the first at the
    noise end (1.5) and the second towards the data (-1.5), intervals longer than 0.8 of the path
    become common; with both at 1.5 they almost never occur. Unset, the draws are bit for bit the
    one-location ones (same random numbers, same arithmetic)."""
    n = 40_000
    gen = lambda: torch.Generator().manual_seed(6)  # noqa: E731
    one = MeanFlowConfig(flow_matching_ratio=0.0, time_mu=1.5)
    apart = MeanFlowConfig(flow_matching_ratio=0.0, time_mu=1.5, data_time_mu=-1.5)
    t1, s1 = sample_times(n, one, generator=gen())
    t2, s2 = sample_times(n, apart, generator=gen())
    assert bool((t2 <= s2).all() and (t2 >= 0).all() and (s2 <= 1).all())
    # P(interval > 0.8): ~0.03 % for one location (sampling error ~0.01 %), ~11.8 % apart
    # (binomial error 0.16 %): thresholds far from both
    assert float((s1 - t1 > 0.8).float().mean()) < 0.005
    assert float((s2 - t2 > 0.8).float().mean()) > 0.08
    same = MeanFlowConfig(flow_matching_ratio=0.0, time_mu=1.5, data_time_mu=1.5)
    t3, s3 = sample_times(n, same, generator=gen())
    assert torch.equal(t3, t1) and torch.equal(s3, s1)


def test_dropout_replaces_exactly_the_dropped_groups():
    torch.manual_seed(0)
    net = TinyAttentionVelocity()
    cond = random_conditions(400, torch.Generator().manual_seed(5), net)
    cond["other"] = torch.randn(400, 2)
    out, (keep_visual, keep_text) = drop_conditions(
        cond, net.empty(), p=0.3, generator=torch.Generator().manual_seed(6)
    )
    for keep, keys in ((keep_visual, ("clip_f", "sync_f")), (keep_text, ("text_f",))):
        assert 0.6 < float(keep.float().mean()) < 0.8  # p = 0.7 over 400 draws: std 0.023, 4.4 of it
        for key in keys:
            empty = net.empty()[key].detach().expand_as(cond[key])
            # rows are selected, never computed: bit-identical
            torch.testing.assert_close(out[key][keep], cond[key][keep], rtol=0, atol=0)
            torch.testing.assert_close(out[key][~keep], empty[~keep], rtol=0, atol=0)
    assert not torch.equal(keep_visual, keep_text)  # groups drop independently
    assert out["other"] is cond["other"]
    # Gradients reach the learnable empty features through the replacement.
    out["clip_f"].sum().backward()
    assert net.empty_clip_feat.grad is not None and float(net.empty_clip_feat.grad.abs().sum()) > 0
    same, masks = drop_conditions(cond, net.empty(), p=0.0)
    assert all(bool(m.all()) for m in masks) and all(same[k] is cond[k] for k in cond)
    with pytest.raises(ValueError, match="empty feature"):
        drop_conditions(cond, {"clip_f": net.empty_clip_feat}, p=0.5, generator=torch.Generator().manual_seed(0))


def test_conditions_without_empty_features_are_refused():
    net = TinyAttentionVelocity()
    cond = random_conditions(2, torch.Generator().manual_seed(0), net)
    with pytest.raises(ValueError, match="empty"):
        meanflow_loss(net, torch.randn(2, 5, 4), cond=cond, cfg=MeanFlowConfig())


def _expected_guided_mse(net, x, cond, noise, cfg, seed):
    """Recompute the guided target by hand, replaying the loss's random draws."""
    gen = torch.Generator().manual_seed(seed)
    t, s = sample_times(x.shape[0], cfg, generator=gen)
    dropped, (keep_visual, keep_text) = drop_conditions(cond, net.empty(), p=cfg.cond_dropout, generator=gen)
    z = (1 - t)[:, None, None] * noise + t[:, None, None] * x
    v = x - noise
    with torch.no_grad():
        u_c = net(z, t, t, **dropped)
        u_0 = net(z, t, t, **empty_like_conditions(dropped, net.empty()))
    guided = cfg.guidance_omega * v + cfg.guidance_kappa * u_c + (1 - cfg.guidance_omega - cfg.guidance_kappa) * u_0
    apply = keep_visual & keep_text & (t <= cfg.guidance_t_max)
    v_tilde = torch.where(apply[:, None, None], guided, v)
    target = meanflow_target(net, z, t, s, v_tilde, dropped)
    with torch.no_grad():
        mse = (net(z, t, s, **dropped) - target).square().mean()
    return float(mse), apply


@pytest.mark.parametrize("kappa", [0.3, 0.0])  # 0: the unconditional branch runs alone
def test_training_time_guidance_mixes_the_models_own_velocities(kappa):
    torch.manual_seed(1)
    net = TinyAttentionVelocity()
    gen = torch.Generator().manual_seed(7)
    x = torch.randn(64, 5, 4, generator=gen)
    noise = torch.randn(64, 5, 4, generator=gen)
    cond = random_conditions(64, gen, net)
    cfg = MeanFlowConfig(guidance_omega=2.0, guidance_kappa=kappa, guidance_t_max=0.6, cond_dropout=0.3, adaptive_p=0.0)
    _, metrics = meanflow_loss(
        net, x, cond=cond, empty=net.empty(), cfg=cfg, noise=noise, generator=torch.Generator().manual_seed(8)
    )
    expected, apply = _expected_guided_mse(net, x, cond, noise, cfg, seed=8)
    assert 0 < int(apply.sum()) < 64  # some samples guided, some not (dropped or t too large)
    # the same float32 computation replayed with other batchings (cond and uncond apart): a mean
    # of squares, rel 1e-5 (~170u)
    assert metrics["mse"] == pytest.approx(expected, rel=1e-5)
    unguided = MeanFlowConfig(cond_dropout=0.3, adaptive_p=0.0)
    _, plain = meanflow_loss(
        net, x, cond=cond, empty=net.empty(), cfg=unguided, noise=noise, generator=torch.Generator().manual_seed(8)
    )
    assert abs(plain["mse"] - metrics["mse"]) > 1e-3


def test_flow_matching_loss_regresses_the_instantaneous_velocity():
    torch.manual_seed(2)
    net = TinyAttentionVelocity()
    gen = torch.Generator().manual_seed(9)
    x, noise = torch.randn(2, 16, 5, 4, generator=gen).unbind(0)
    cond = random_conditions(16, gen, net)
    cfg = MeanFlowConfig(cond_dropout=0.2)
    loss, metrics = flow_matching_loss(
        net, x, cond=cond, empty=net.empty(), cfg=cfg, noise=noise, generator=torch.Generator().manual_seed(10)
    )
    replay = torch.Generator().manual_seed(10)
    t = 1 - torch.sigmoid(cfg.time_mu + cfg.time_sigma * torch.randn(16, generator=replay))
    dropped, _ = drop_conditions(cond, net.empty(), p=0.2, generator=replay)
    z = (1 - t)[:, None, None] * noise + t[:, None, None] * x
    expected = (net(z, t, t, **dropped) - (x - noise)).square().mean()
    assert metrics["frac_s_eq_t"] == 1.0
    torch.testing.assert_close(loss, expected)  # the same float32 ops replayed: torch's defaults


def test_bf16_autocast_runs_with_attention_guidance_and_dropout():
    torch.manual_seed(3)
    net = TinyAttentionVelocity()
    gen = torch.Generator().manual_seed(11)
    x = torch.randn(32, 5, 4, generator=gen)
    cond = random_conditions(32, gen, net)
    cfg = MeanFlowConfig(flow_matching_ratio=0.25, guidance_omega=1.5, guidance_kappa=0.2)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss, metrics = meanflow_loss(net, x, cond=cond, empty=net.empty(), cfg=cfg, generator=gen)
        fm_loss, _ = flow_matching_loss(net, x, cond=cond, empty=net.empty(), cfg=cfg, generator=gen)
    assert loss.dtype == torch.float32 and math.isfinite(metrics["loss"]) and math.isfinite(metrics["u_tgt_abs_mean"])
    (loss + fm_loss).backward()
    grads = [p.grad for p in net.parameters() if p.requires_grad]
    assert all(g is not None and bool(torch.isfinite(g).all()) for g in grads)


def test_ddp_wrapped_model_matches_unwrapped_gradients(tmp_path):
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel

    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1)
    try:
        torch.manual_seed(4)
        plain = TinyAttentionVelocity()
        wrapped = DistributedDataParallel(copy.deepcopy(plain))
        gen = torch.Generator().manual_seed(12)
        x, noise = torch.randn(2, 16, 5, 4, generator=gen).unbind(0)
        cond = random_conditions(16, gen, plain)
        cfg = MeanFlowConfig(flow_matching_ratio=0.25, guidance_omega=1.5)
        results = []
        for model, empty in ((plain, plain.empty()), (wrapped, wrapped.module.empty())):
            loss, metrics = meanflow_loss(
                model, x, cond=cond, empty=empty, cfg=cfg, noise=noise, generator=torch.Generator().manual_seed(13)
            )
            loss.backward()
            results.append(metrics)
        # one rank: DDP averages over 1 (exact), the same computation otherwise (measured:
        # bit-identical); float32 tolerances in case its buckets reorder a sum
        assert results[0] == pytest.approx(results[1], rel=1e-6)
        for (name, p), q in zip(plain.named_parameters(), wrapped.module.parameters()):
            if not p.requires_grad:
                continue
            assert p.grad is not None and q.grad is not None, name
            torch.testing.assert_close(q.grad, p.grad, rtol=1e-5, atol=1e-7, msg=name)
        assert float(sum(p.grad.abs().sum() for p in plain.parameters() if p.grad is not None)) > 0
    finally:
        dist.destroy_process_group()


def _small_mfmjt(seed: int):
    """The real MF-MJT network at toy sizes, with every weight random (MMAudio zero-inits many)."""
    from dub.model.network.config import NetworkConfig
    from dub.model.network.transformer import MFMJT

    config = NetworkConfig(
        latent_dim=4,
        clip_dim=6,
        sync_dim=5,
        text_dim=6,
        hidden_dim=16,
        depth=2,
        fused_depth=1,
        num_heads=2,
        latent_seq_len=12,
        clip_seq_len=4,
        sync_seq_len=8,
        text_seq_len=3,
    )
    net = MFMJT(config)
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for param in net.parameters():
            if param.requires_grad:
                param.copy_(0.2 * torch.randn(param.shape, generator=gen))
    empty = {"clip_f": net.empty_clip_feat, "sync_f": net.empty_sync_feat, "text_f": net.empty_string_feat}
    cond = {
        "clip_f": torch.randn(8, config.clip_seq_len, config.clip_dim, generator=gen),
        "sync_f": torch.randn(8, config.sync_seq_len, config.sync_dim, generator=gen),
        "text_f": torch.randn(8, config.text_seq_len, config.text_dim, generator=gen),
    }
    x = torch.randn(8, config.latent_seq_len, config.latent_dim, generator=gen)
    return net, x, cond, empty


def test_exact_ratio_fixes_the_number_of_jvp_samples_per_batch():
    cfg = MeanFlowConfig(exact_ratio=True)
    subsets = set()
    for seed in range(20):
        t, s = sample_times(32, cfg, generator=torch.Generator().manual_seed(seed))
        assert int((s == t).sum()) == 24 and bool((t <= s).all())
        subsets.add(tuple((s != t).nonzero().squeeze(1).tolist()))
    assert len(subsets) == 20  # a random subset each time, not the same samples
    # over many batches every position is equally likely to need the JVP
    counts = torch.zeros(32)
    for seed in range(400):
        t, s = sample_times(32, cfg, generator=torch.Generator().manual_seed(seed))
        counts += (s != t).float()
    # expected 100 each, binomial std 8.7: +-40 is 4.6 of it
    assert float(counts.min()) > 60 and float(counts.max()) < 140
    for ratio, batch, expected in ((0.0, 5, 0), (1.0, 5, 5), (0.5, 7, 4)):
        t, s = sample_times(
            batch,
            MeanFlowConfig(flow_matching_ratio=ratio, exact_ratio=True),
            generator=torch.Generator().manual_seed(0),
        )
        assert int((s == t).sum()) == expected


def _jvp_inputs(x: torch.Tensor, cond: dict, n: int, seed: int):
    """n samples' (z, t, s, v) with 0 <= t <= s <= 1 and their conditions: a JVP sub-batch."""
    gen = torch.Generator().manual_seed(seed)
    z, v = torch.randn(2, n, *x.shape[1:], generator=gen).unbind(0)
    t = 0.8 * torch.rand(n, generator=gen)
    s = t + (1 - t) * torch.rand(n, generator=gen)
    return z, t, s, v, {k: c[:n] for k, c in cond.items()}


def test_compiled_tangent_computes_the_eager_jvp():
    """The compiled tangent (the fast path for training on a GPU, see make_tangent) is the same
    derivative as the eager forward-mode AD, on the real network with every weight random."""
    net, x, cond, empty = _small_mfmjt(seed=9)
    # 2 samples: the size of the JVP sub-batch in the loss below (8 x 25 %), so one compilation
    z, t, s, v, cond2 = _jvp_inputs(x, cond, 2, seed=10)
    compiled = CompiledTangent()
    expected = eager_tangent(net, z, t, s, v, cond2)
    got = compiled(net, z, t, s, v, cond2)
    assert float(expected.abs().max()) > 0.1
    # Inductor fuses and reorders the float32 forward-mode graph: ~10u relative on tangents up
    # to ~17 (measured 1e-5 absolute, a third of the tolerance)
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-5)
    # through the loss: same target, same loss and gradient as the eager path
    cfg = MeanFlowConfig(exact_ratio=True, cond_dropout=0.0)
    losses, grads = [], []
    for tangent in (eager_tangent, compiled):
        net.zero_grad()
        loss, _ = meanflow_loss(
            net, x, cond=cond, empty=empty, cfg=cfg, tangent=tangent, generator=torch.Generator().manual_seed(11)
        )
        loss.backward()
        losses.append(loss.detach())
        grads.append(torch.cat([p.grad.flatten() for p in net.parameters() if p.grad is not None]))
    # the targets' float32 differences carried into the loss (a mean: smaller) and back through
    # the network (gradients of small parameters: atol); measured 0 and 7e-8
    torch.testing.assert_close(losses[1], losses[0], rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(grads[1], grads[0], rtol=1e-3, atol=1e-5)
    assert make_tangent("eager") is eager_tangent and isinstance(make_tangent("compiled"), CompiledTangent)
    with pytest.raises(ValueError, match="eager"):
        make_tangent("fd")


def test_graphed_tangent_wraps_the_eager_jvp_once_per_shape():
    """The CUDA-graph tangent (`--jvp graphed`) runs on the CPU through the same wrapper without
    a graph: the eager JVP's numbers, one wrapper per input shape, under autocast too."""
    net, x, cond, _ = _small_mfmjt(seed=12)
    z, t, s, v, cond = _jvp_inputs(x, cond, 3, seed=13)
    graphed = make_tangent("graphed")
    assert isinstance(graphed, GraphedTangent)
    expected = eager_tangent(net, z, t, s, v, cond)
    # without a graph the wrapper runs eager_tangent itself: bit-identical, here and below
    torch.testing.assert_close(graphed(net, z, t, s, v, cond), expected, rtol=0, atol=0)
    torch.testing.assert_close(graphed(net, z, t, s, v, cond), expected, rtol=0, atol=0)
    assert graphed.captures == 1
    two = {k: c[:2] for k, c in cond.items()}
    torch.testing.assert_close(
        graphed(net, z[:2], t[:2], s[:2], v[:2], two),
        eager_tangent(net, z[:2], t[:2], s[:2], v[:2], two),
        rtol=0,
        atol=0,
    )
    assert graphed.captures == 2
    with torch.autocast("cpu", dtype=torch.bfloat16):
        low = graphed(net, z, t, s, v, cond)
    assert graphed.captures == 3 and low.dtype == torch.bfloat16
    # bf16 (2^-9 relative per rounding) through the network's layers: a few %, under 10 %
    assert ((low.float() - expected).norm() / expected.norm()).item() < 0.1


def test_fast_tangents_fall_back_to_the_eager_jvp_with_the_reason():
    """A compiler or capture failure at the first step must cost the fast path, not the run."""
    net, x, cond, _ = _small_mfmjt(seed=14)
    z, t, s, v, cond = _jvp_inputs(x, cond, 2, seed=15)
    expected = eager_tangent(net, z, t, s, v, cond)

    def broken_backend(graph_module, example_inputs):
        raise RuntimeError("no compiler here")

    # a graph on CPU tensors cannot be captured: the same path as a capture error on a GPU
    for tangent, reason in (
        (CompiledTangent(backend=broken_backend), "no compiler here"),
        (GraphedTangent(use_graph=True), "CUDA graphs need CUDA tensors"),
    ):
        with pytest.warns(RuntimeWarning, match="using the eager JVP"):
            got = tangent(net, z, t, s, v, cond)
        torch.testing.assert_close(got, expected, rtol=0, atol=0)  # the fallback is eager_tangent itself
        assert reason in tangent.failed
        torch.testing.assert_close(tangent(net, z, t, s, v, cond), expected, rtol=0, atol=0)


def test_a_fast_tangent_that_computes_another_derivative_is_dropped_at_its_first_step():
    """The first call per shape is checked against eager forward-mode AD: a fast path that is
    wrong (here: off by 10 %) must not become the training target."""
    net, x, cond, _ = _small_mfmjt(seed=16)
    z, t, s, v, cond = _jvp_inputs(x, cond, 2, seed=17)
    expected = eager_tangent(net, z, t, s, v, cond)

    class OffByTenPercent(GraphedTangent):
        def _fast(self, inner, z, t, s, v, cond):
            return 1.1 * eager_tangent(inner, z, t, s, v, cond)

    wrong = OffByTenPercent()
    with pytest.warns(RuntimeWarning, match="differs from eager forward-mode AD"):
        torch.testing.assert_close(wrong(net, z, t, s, v, cond), expected, rtol=0, atol=0)
    assert "differs" in wrong.failed
    torch.testing.assert_close(wrong(net, z, t, s, v, cond), expected, rtol=0, atol=0)
    # a right one is checked once per shape and kept
    right = GraphedTangent()
    for _ in range(2):
        torch.testing.assert_close(right(net, z, t, s, v, cond), expected, rtol=0, atol=0)
    assert right.failed is None and list(right.verified.values()) == [0.0]
    unchecked = OffByTenPercent(verify=False)
    assert not torch.equal(unchecked(net, z, t, s, v, cond), expected) and unchecked.failed is None


def test_auto_tangent_is_graphed_on_cuda_and_eager_on_cpu_with_the_exact_ratio_to_match():
    assert resolve_tangent_kind("auto", "cuda") == "graphed"
    assert resolve_tangent_kind("auto", "cpu") == "eager" and make_tangent("auto", "cpu") is eager_tangent
    assert resolve_tangent_kind("compiled", "cpu") == "compiled"
    default = MeanFlowConfig()
    assert default.exact_ratio is None
    assert exact_ratio_for(default, "graphed").exact_ratio is True
    assert exact_ratio_for(default, "compiled").exact_ratio is True
    assert exact_ratio_for(default, "eager").exact_ratio is False
    chosen = MeanFlowConfig(exact_ratio=False)  # the user's explicit choice stands
    assert exact_ratio_for(chosen, "graphed").exact_ratio is False


def test_jvp_through_mfmjt_matches_finite_differences():
    net, x, cond, _ = _small_mfmjt(seed=6)
    net = net.double()
    cond = {k: v.double() for k, v in cond.items()}
    gen = torch.Generator().manual_seed(7)
    z, v = torch.randn(2, *x.shape, generator=gen, dtype=torch.float64).unbind(0)
    t = 0.8 * torch.rand(8, generator=gen, dtype=torch.float64)
    s = t + (1 - t) * torch.rand(8, generator=gen, dtype=torch.float64)
    target = meanflow_target(net, z, t, s, v, cond)
    h = 1e-5
    with torch.no_grad():
        dudt = (net(z + h * v, t + h, s, **cond) - net(z - h * v, t - h, s, **cond)) / (2 * h)
    expected = v + (s - t)[:, None, None] * dudt
    err = float((target - expected).abs().max())
    print(f"MF-MJT JVP vs central differences: max error {err:.2e} (|dudt| max {float(dudt.abs().max()):.2f})")
    # float64, h = 1e-5: truncation h^2 |u3| / 6 ~ 1e-10 |u3| (u3 the third derivative) and rounding u64 |u| / h ~ 1e-11
    # (tests/test_network.py's JVP test: why h is not larger)
    assert err < 1e-6 * max(1.0, float(expected.abs().max()))


def test_meanflow_loss_trains_mfmjt_under_bf16_autocast():
    net, x, cond, empty = _small_mfmjt(seed=8)
    cfg = MeanFlowConfig(flow_matching_ratio=0.25, guidance_omega=1.5, guidance_kappa=0.1)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss, metrics = meanflow_loss(
            net, x, cond=cond, empty=empty, cfg=cfg, generator=torch.Generator().manual_seed(9)
        )
    assert loss.dtype == torch.float32 and all(math.isfinite(value) for value in metrics.values())
    loss.backward()
    missing = [
        name
        for name, p in net.named_parameters()
        if p.requires_grad and (p.grad is None or not torch.isfinite(p.grad).all())
    ]
    assert missing == []


# ---------------------------------------------------------------------------------------
# Learning on a 2-D mixture of 8 Gaussians (radius 2, std 0.15); equal budgets (steps,
# batch, optimiser, seeds) for MeanFlow and flow matching. Figures: sliced Wasserstein-1
# (64 fixed directions) to 2000 held-out points; two independent data draws score ~0.03.


def _mixture(n: int, gen: torch.Generator) -> torch.Tensor:
    return sample_mixture(n, gen)


def _trained(objective: str, hidden: int, steps: int) -> VelocityMLP:
    torch.manual_seed(0)
    model = VelocityMLP(hidden=hidden)
    loss_fn = meanflow_loss if objective == "meanflow" else flow_matching_loss
    cfg = MeanFlowConfig(cond_dropout=0.0)
    train(model, loss_fn, _mixture, steps=steps, batch=256, seed=1, cfg=cfg)
    return model.eval()


def _scores(hidden: int, steps: int) -> dict[str, float]:
    held_out = sample_mixture(2000, torch.Generator().manual_seed(123))
    noise = make_noise((2000, 2), torch.Generator().manual_seed(7))
    mf, fm = _trained("meanflow", hidden, steps), _trained("flow_matching", hidden, steps)
    with torch.no_grad():
        return {
            "meanflow_1": sliced_wasserstein(sample_meanflow(mf, noise, 1), held_out),
            "flow_matching_1": sliced_wasserstein(sample_meanflow(fm, noise, 1), held_out),
            "flow_matching_euler25": sliced_wasserstein(sample_euler(fm, noise, 25), held_out),
        }


def _check_learning(hidden: int, steps: int, margin: float) -> None:
    scores = _scores(hidden, steps)
    print(f"\nsliced W1 (hidden {hidden}, {steps} steps): " + ", ".join(f"{k} {v:.4f}" for k, v in scores.items()))
    assert scores["meanflow_1"] < 0.5 * scores["flow_matching_1"]
    assert scores["meanflow_1"] < margin * scores["flow_matching_euler25"]


def test_meanflow_beats_flow_matching_in_one_step_fast():
    # Measured (seeds 1-3): meanflow_1 ~0.22, flow_matching_1 ~0.90, euler25 ~0.12 (ratio ~1.9).
    _check_learning(hidden=128, steps=1000, margin=2.5)


@pytest.mark.slow
def test_meanflow_beats_flow_matching_in_one_step():
    # Measured: meanflow_1 0.061 / 0.083, euler25 0.041 / 0.048 for training seeds 1 / 2 (ratio 1.5-1.7).
    _check_learning(hidden=256, steps=3000, margin=2.0)


GAUSS_MU, GAUSS_SIGMA = torch.tensor([1.5, -1.0]), 0.3


def _gaussian(n: int, gen: torch.Generator) -> torch.Tensor:
    return GAUSS_MU + GAUSS_SIGMA * torch.randn(n, 2, generator=gen)


def test_one_step_map_agrees_with_the_integral_of_the_instantaneous_field():
    """Interpretation of "the one-step map of a trained model equals the integral of its
    instantaneous field": the instantaneous field is the model at s = t, u(z, tau, tau);
    integrating it (200 Euler steps) from the noise must land where the one average-velocity
    step e + u(e, 0, 1) lands. On Gaussian data (flow map affine, exact map x = mu + sigma·e)
    MeanFlow training (25% of samples with s != t) makes the two agree. Trained on s = t
    samples only (flow_matching_ratio = 1: the target reduces to v, MeanFlow is flow
    matching), the same MLP learns the same kind of field but never u for s != t, so its
    one-step map stays far from its own integral."""
    noise = make_noise((1000, 2), torch.Generator().manual_seed(8))
    exact = GAUSS_MU + GAUSS_SIGMA * noise
    gaps = {}
    for ratio in (0.75, 1.0):
        torch.manual_seed(0)
        model = VelocityMLP(hidden=128)
        train(
            model,
            meanflow_loss,
            _gaussian,
            steps=1000,
            batch=256,
            seed=1,
            cfg=MeanFlowConfig(cond_dropout=0.0, flow_matching_ratio=ratio),
        )
        with torch.no_grad():
            one, integral = sample_meanflow(model, noise, 1), sample_euler(model, noise, 200)
        gaps[ratio] = {
            "one_vs_integral": float((one - integral).norm(dim=1).mean()),
            "integral_vs_exact": float((integral - exact).norm(dim=1).mean()),
        }
    print(f"\nmean distances, MeanFlow: {gaps[0.75]}; s = t only: {gaps[1.0]}")
    # Measured: 0.038 vs 0.59; both integrals are ~0.1 from the exact map.
    assert gaps[0.75]["one_vs_integral"] < 0.1
    assert gaps[1.0]["one_vs_integral"] > 0.3
    for ratio in (0.75, 1.0):
        assert gaps[ratio]["integral_vs_exact"] < 0.25  # both learnt the instantaneous field
