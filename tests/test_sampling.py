"""Samplers: time grids, MeanFlow k-step, MMAudio Euler, reproducible noise."""

from __future__ import annotations

import pytest
import torch

from dub.model.flow.sampling import make_noise, sample_euler, sample_meanflow, time_grid
from tests.meanflow_helpers import VelocityMLP


def test_time_grids():
    assert time_grid(1).tolist() == [0.0, 1.0]
    assert time_grid(4).tolist() == [0.0, 0.25, 0.5, 0.75, 1.0]
    # float32 grid points against Python floats: approx's rel 1e-6 covers float32's 6e-8
    assert time_grid([0.0, 0.3, 1.0]).tolist() == pytest.approx([0.0, 0.3, 1.0])
    assert time_grid(torch.tensor([0.2, 0.6])).tolist() == pytest.approx([0.2, 0.6])
    for bad in (0, -2, [0.0], [0.0, 0.5, 0.5, 1.0], [0.0, 0.7, 0.3, 1.0], [-0.1, 1.0], [0.0, 1.2], [[0.0, 1.0]]):
        with pytest.raises(ValueError):
            time_grid(bad)
    with pytest.raises(TypeError):
        time_grid(True)


class RecordingField:
    def __init__(self, fn):
        self.fn = fn
        self.intervals: list[tuple[float, float]] = []

    def __call__(self, z, t, s):
        assert t.shape == s.shape == (z.shape[0],)
        self.intervals.append((float(t[0]), float(s[0])))
        return self.fn(z, t, s)


def _flat(intervals: list[tuple[float, float]]) -> list[float]:
    return [time for pair in intervals for time in pair]


def test_one_step_is_noise_plus_average_velocity():
    mlp = VelocityMLP(dim=3).eval()
    noise = make_noise((5, 3), torch.Generator().manual_seed(0))
    field = RecordingField(mlp)
    with torch.no_grad():
        out = sample_meanflow(field, noise)
        expected = noise + mlp(noise, torch.zeros(5), torch.ones(5))
    assert field.intervals == [(0.0, 1.0)]
    # assert_close's float32 defaults here and below (rtol 1.3e-6 ~ 22u, atol 1e-5): the same
    # float32 operations, at most in another grouping
    torch.testing.assert_close(out, expected)


def test_k_step_meanflow_follows_the_grid():
    mlp = VelocityMLP(dim=3).eval()
    noise = make_noise((5, 3), torch.Generator().manual_seed(0))
    field = RecordingField(mlp)
    with torch.no_grad():
        out = sample_meanflow(field, noise, steps=[0.0, 0.4, 1.0])
        z = noise + 0.4 * mlp(noise, torch.zeros(5), torch.full((5,), 0.4))
        z = z + 0.6 * mlp(z, torch.full((5,), 0.4), torch.ones(5))
    assert _flat(field.intervals) == pytest.approx([0.0, 0.4, 0.4, 1.0])
    torch.testing.assert_close(out, z)
    field3 = RecordingField(mlp)
    with torch.no_grad():
        sample_meanflow(field3, noise, steps=3)
    assert _flat(field3.intervals) == pytest.approx([0.0, 1 / 3, 1 / 3, 2 / 3, 2 / 3, 1.0])


def test_euler_matches_hand_rolled_loop():
    mlp = VelocityMLP(dim=3).eval()
    noise = make_noise((4, 3), torch.Generator().manual_seed(1))
    field = RecordingField(mlp)
    with torch.no_grad():
        out = sample_euler(field, noise, steps=7)
        ts = torch.linspace(0, 1, 8)
        z = noise
        for i in range(7):
            t = ts[i].expand(4)
            z = z + (ts[i + 1] - ts[i]) * mlp(z, t, t)
    assert [a for a, _ in field.intervals] == pytest.approx(ts[:-1].tolist())
    assert all(a == b for a, b in field.intervals)  # instantaneous flow: s = t
    # the sampler's grid and linspace may differ in the last bit of a step: a few float32
    # roundings per step, compounded over 7 steps
    torch.testing.assert_close(out, z, atol=1e-6, rtol=1e-5)


RATES = torch.tensor([-1.0, 0.5, 2.0])  # dz/dt = A z with A = diag(RATES)


def linear_average_velocity(z, t, s):
    """Exact average velocity of dz/dt = A z over [t, s]: (exp(A (s - t)) - 1) / (s - t) · z."""
    h = (s - t)[:, None]
    safe = torch.where(h > 0, h, torch.ones_like(h))
    return torch.where(h > 0, torch.expm1(RATES * safe) / safe, RATES.expand_as(z)) * z


def test_linear_field_is_integrated_exactly():
    noise = make_noise((6, 3), torch.Generator().manual_seed(2))
    exact = (noise.double() * torch.exp(RATES.double())).float()
    for steps in (1, 3, [0.0, 0.1, 0.65, 1.0]):  # float32 against float64: a few u per step (defaults)
        torch.testing.assert_close(sample_meanflow(linear_average_velocity, noise, steps), exact)
    # Euler on the instantaneous field is first order: halving the step halves the error.
    errors = [float((sample_euler(linear_average_velocity, noise, k) - exact).abs().max()) for k in (25, 50)]
    print(f"euler max error, 25 vs 50 steps: {errors[0]:.4g} vs {errors[1]:.4g}")
    assert 1.8 < errors[0] / errors[1] < 2.2
    # A constant field is exact for Euler too.
    torch.testing.assert_close(sample_euler(lambda z, t, s: torch.ones_like(z), noise, 25), noise + 1)


def test_same_generator_seed_same_samples():
    mlp = VelocityMLP(dim=2).eval()

    def draw(seed: int) -> torch.Tensor:
        noise = make_noise((8, 2), torch.Generator().manual_seed(seed))
        with torch.no_grad():
            return sample_meanflow(mlp, noise, steps=2)

    torch.testing.assert_close(draw(11), draw(11), rtol=0, atol=0)  # same seed, same code: bit-identical
    assert not torch.equal(draw(11), draw(12))


def test_make_noise_is_standard_normal_and_dtype_independent():
    gen = torch.Generator().manual_seed(3)
    noise = make_noise((200_000,), gen)
    # sampling error: the mean's is 1/sqrt(n) = 0.0022, the std's 1/sqrt(2n) = 0.0016; 0.01 is 4.5 and 6 of them
    assert abs(float(noise.mean())) < 0.01 and abs(float(noise.std()) - 1.0) < 0.01
    a = make_noise((4, 5), torch.Generator().manual_seed(4), dtype=torch.float64)
    b = make_noise((4, 5), torch.Generator().manual_seed(4), dtype=torch.bfloat16)
    assert a.dtype == torch.float64 and b.dtype == torch.bfloat16
    # the same draws rounded to bf16 (8 bits: 2^-9 relative, 2^-8 = 0.004 at worst); values up to ~3
    torch.testing.assert_close(b.double(), a, atol=0.02, rtol=0.01)
    with pytest.raises(TypeError, match="Generator"):
        make_noise((2,), 0)  # type: ignore[arg-type]


def test_field_shape_mismatch_is_reported():
    with pytest.raises(ValueError, match="shape"):
        sample_meanflow(lambda z, t, s: z[:, :1], torch.zeros(2, 3))


@pytest.mark.conformance
def test_guided_euler_reproduces_mmaudio_fixture(fixtures_root):
    """The MMAudio reference: 4 Euler steps with CFG 4.5 (random weights), as produced by
    MMAudio itself. Cond and uncond run as one batch through Conditions.cat."""
    import json

    from safetensors.torch import load_file

    from dub.model.flow.guidance import Guidance
    from dub.model.flow.sampling import guided_field
    from dub.model.network.config import NetworkConfig
    from dub.model.weights.checkpoint import load_network

    root = fixtures_root / "network"
    config = NetworkConfig.from_dict(json.loads((root / "arch.json").read_text()))
    sampler = json.loads((root / "sampler.json").read_text())
    io = load_file(str(root / "io.safetensors"))
    net = load_network(root / "weights.safetensors", config=config)
    assert sampler["method"] == "euler" and (sampler["t0"], sampler["t1"]) == (0.0, 1.0)
    with torch.no_grad():
        cond = net.preprocess_conditions(io["clip_f"], io["sync_f"], io["text_f"])
        uncond = net.empty_conditions(io["latent"].shape[0])
        field = guided_field(
            lambda z, t, s, c: net.predict_flow(z, t, c, s=s),
            cond,
            uncond,
            Guidance(cfg=sampler["cfg_strength"], rescale="none"),
            cat=lambda a, b: a.cat(b),
        )
        out = sample_euler(field, io["latent"], steps=sampler["num_steps"])
    ref = io["euler_cfg"]
    err = float((out - ref).abs().max())
    print(f"guided Euler vs MMAudio fixture: max error {err:.2e}")
    # the fixture README's acceptance bound (tests/test_network.py's assert_close_to_reference)
    assert err <= 1e-4 * max(1.0, float(ref.abs().max()))
