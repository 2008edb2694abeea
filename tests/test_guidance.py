"""Classifier-free guidance and its scalar rescalings (SPEC §2.3), on hand-computed tensors."""

from __future__ import annotations

import pytest
import torch

from dub.model.flow.guidance import Guidance, combine, needs_uncond
from dub.model.flow.sampling import guided_field, sample_euler, sample_meanflow

# assert_close without tolerances uses torch's float32 defaults (rtol 1.3e-6 ~ 22u, atol 1e-5):
# a few float32 operations (sums of 4 terms, a std, divisions) on small numbers, against values
# worked out by hand or the same field computed with another batching.

# Two samples of 4 elements each, shaped (B, 2, 2) so the statistics must run over every
# non-batch dim. Sample 0 has a zero unconditional field (guards the divisions).
U_COND = torch.tensor([[1.0, -1.0, 1.0, -1.0], [2.0, 2.0, 0.0, 0.0]]).view(2, 2, 2)
U_UNCOND = torch.tensor([[0.0, 0.0, 0.0, 0.0], [1.0, 1.0, 1.0, 1.0]]).view(2, 2, 2)


def test_plain_cfg_is_mmaudio_form():
    out = combine(U_COND, U_UNCOND, Guidance(cfg=2.0, rescale="none"))
    # u = 2 u_c - u_0
    expected = torch.tensor([[2.0, -2.0, 2.0, -2.0], [3.0, 3.0, -1.0, -1.0]]).view(2, 2, 2)
    torch.testing.assert_close(out, expected)


def test_std_rescale_by_hand():
    out = combine(U_COND, U_UNCOND, Guidance(cfg=2.0, rescale="std", phi=0.7))
    # Both samples: std(u_c) = 1 and std(2 u_c - u_0) = 2, so u <- 0.7·u/2 + 0.3·u = 0.65·u.
    expected = 0.65 * torch.tensor([[2.0, -2.0, 2.0, -2.0], [3.0, 3.0, -1.0, -1.0]]).view(2, 2, 2)
    torch.testing.assert_close(out, expected)
    # phi = 0 is plain CFG; phi = 1 matches std(u_c) exactly.
    plain = combine(U_COND, U_UNCOND, Guidance(cfg=2.0, rescale="none"))
    torch.testing.assert_close(combine(U_COND, U_UNCOND, Guidance(cfg=2.0, rescale="std", phi=0.0)), plain)
    full = combine(U_COND, U_UNCOND, Guidance(cfg=2.0, rescale="std", phi=1.0))
    torch.testing.assert_close(full.reshape(2, -1).std(dim=1, correction=0), torch.ones(2))


def test_projection_rescale_by_hand():
    u_c = torch.tensor([[1.0, 0.0, 0.0, 0.0], [1.0, -1.0, 1.0, -1.0]]).view(2, 2, 2)
    u_0 = torch.tensor([[1.0, 1.0, 0.0, 0.0], [0.0, 0.0, 0.0, 0.0]]).view(2, 2, 2)
    out = combine(u_c, u_0, Guidance(cfg=3.0, rescale="proj"))
    # Sample 0: s* = <u_c,u_0>/||u_0||² = 1/2, u = [.5,.5,0,0] + 3·[.5,-.5,0,0] = [2,-1,0,0]
    #           (plain CFG would give [1,-2,0,0]).
    # Sample 1: u_0 = 0, so s* = 0 and u = 3·u_c.
    expected = torch.tensor([[2.0, -1.0, 0.0, 0.0], [3.0, -3.0, 3.0, -3.0]]).view(2, 2, 2)
    torch.testing.assert_close(out, expected)


def test_weight_at_most_one_returns_conditional_and_needs_no_uncond():
    for w in (0.0, 0.5, 1.0):
        g = Guidance(cfg=w, rescale="std")
        assert not needs_uncond(g)
        assert combine(U_COND, None, g) is U_COND
    assert needs_uncond(Guidance(cfg=1.5))
    with pytest.raises(ValueError, match="unconditional"):
        combine(U_COND, None, Guidance(cfg=2.0))


def test_bf16_inputs_keep_their_dtype():
    out = combine(U_COND.bfloat16(), U_UNCOND.bfloat16(), Guidance(cfg=2.0, rescale="std"))
    assert out.dtype == torch.bfloat16
    # bf16 keeps 8 bits (u = 2^-9 relative): inputs, the std statistics and the result each round,
    # a few bf16 ulps on values up to 3: rtol 1e-2, atol 2e-2 near zero
    torch.testing.assert_close(
        out.float(), combine(U_COND, U_UNCOND, Guidance(cfg=2.0, rescale="std")), atol=2e-2, rtol=1e-2
    )


def test_bad_config_is_rejected():
    with pytest.raises(ValueError, match="rescale"):
        Guidance(cfg=2.0, rescale="cfg++")
    with pytest.raises(ValueError, match="phi"):
        Guidance(cfg=2.0, phi=1.5)


class CountingPredictor:
    """A real tiny conditional predictor u = W·[z, c] that counts calls and the labels it saw."""

    def __init__(self, dim: int = 3) -> None:
        gen = torch.Generator().manual_seed(0)
        self.weight = torch.randn(2 * dim + 2, dim, generator=gen) / dim
        self.calls: list[int] = []

    def __call__(self, z, t, s, cond):
        self.calls.append(z.shape[0])
        return torch.cat([z, cond, t[:, None], s[:, None]], dim=1) @ self.weight


def test_weight_below_one_never_evaluates_uncond():
    predict = CountingPredictor()
    cond = torch.ones(4, 3)
    field = guided_field(predict, cond, None, Guidance(cfg=0.5), cat=lambda a, b: torch.cat([a, b]))
    noise = torch.randn(4, 3, generator=torch.Generator().manual_seed(1))
    out = sample_euler(field, noise, steps=5)
    assert predict.calls == [4] * 5  # one conditional call per step, never a doubled batch
    # Same as sampling the conditional predictor directly.
    direct = sample_euler(lambda z, t, s: predict(z, t, s, cond), noise, steps=5)
    torch.testing.assert_close(out, direct)


@pytest.mark.parametrize("rescale", ["none", "std", "proj"])
def test_batched_cond_uncond_equals_two_calls(rescale):
    cond, uncond = torch.randn(2, 4, 3, generator=torch.Generator().manual_seed(2)).unbind(0)
    noise = torch.randn(4, 3, generator=torch.Generator().manual_seed(3))
    g = Guidance(cfg=4.5, rescale=rescale)
    batched_predict, split_predict = CountingPredictor(), CountingPredictor()
    batched = sample_meanflow(
        guided_field(batched_predict, cond, uncond, g, cat=lambda a, b: torch.cat([a, b])), noise, steps=3
    )
    split = sample_meanflow(guided_field(split_predict, cond, uncond, g), noise, steps=3)
    assert batched_predict.calls == [8] * 3
    assert split_predict.calls == [4] * 6
    torch.testing.assert_close(batched, split)
    # Guidance changes the result (the unconditional branch is really used).
    plain = sample_meanflow(guided_field(CountingPredictor(), cond, uncond, Guidance(cfg=1.0)), noise, steps=3)
    assert (batched - plain).abs().max() > 1e-3
