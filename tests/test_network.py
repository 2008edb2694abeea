"""MF-MJT network: MMAudio conformance, interval embedding, weight loading, presets, JVP."""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from torch.nn.attention import SDPBackend, sdpa_kernel

from dub.model.network.config import NETWORK_PRESETS, NetworkConfig, sequence_lengths
from dub.model.network.rotary import rope_rotations
from dub.model.network.transformer import MFMJT
from dub.model.weights.checkpoint import (
    CheckpointMismatchError,
    UnsafeCheckpointError,
    infer_network_config,
    load_checkpoint,
    load_network,
    load_state_dict_file,
    save_checkpoint,
)
from tests.network_helpers import euler_cfg, random_features, random_tiny_network, randomize_parameters_
from tests.requirements import PYTEST_HAS_SUBTESTS, require

INPUT_NAMES = {"latent", "clip_f", "sync_f", "text_f", "t"}
# The tiny preset at 2 s (63 latents): the same layout as 8 s, a quarter of the CPU time.
TINY_2S = NETWORK_PRESETS["tiny"].with_duration(2.0)


def assert_close_to_reference(name: str, out: torch.Tensor, ref: torch.Tensor) -> None:
    """The acceptance bound published with the fixtures (their README): our float32 forward
    against MMAudio's own float32 CPU run, 1e-4 relative to the output's scale (at least 1)."""
    assert out.shape == ref.shape, f"{name}: shape {tuple(out.shape)} != reference {tuple(ref.shape)}"
    err = (out.detach().float() - ref).abs().max().item()
    tol = 1e-4 * max(1.0, ref.abs().max().item())
    assert err <= tol, f"{name}: max |out - ref| = {err:.3g} > {tol:.3g}"


# ------------------------------------------------------------------------------ fixtures


@pytest.fixture(scope="module")
def network_fixture(fixtures_root: Path):
    root = fixtures_root / "network"
    config = NetworkConfig.from_dict(json.loads((root / "arch.json").read_text()))
    sampler = json.loads((root / "sampler.json").read_text())
    io = load_file(str(root / "io.safetensors"))
    return root, config, sampler, io


@pytest.fixture(scope="module")
def fixture_model(network_fixture) -> MFMJT:
    root, config, _, _ = network_fixture
    return load_network(root / "weights.safetensors", config=config)


def compute_fixture_outputs(model: MFMJT, io: dict[str, torch.Tensor], sampler: dict) -> dict[str, torch.Tensor]:
    latent, t = io["latent"], io["t"]
    batch = latent.shape[0]
    with torch.no_grad():
        cond = model.preprocess_conditions(io["clip_f"], io["sync_f"], io["text_f"])
        empty = model.empty_conditions(batch)
        final, states = euler_cfg(
            model,
            latent,
            cond,
            empty,
            num_steps=sampler["num_steps"],
            cfg_strength=sampler["cfg_strength"],
            t0=sampler.get("t0", 0.0),
            t1=sampler.get("t1", 1.0),
        )
        out = {
            "flow_cond": model.predict_flow(latent, t, cond),
            "flow_empty": model.predict_flow(latent, t, empty),
            "euler_cfg": final,
            "normalized": model.normalize(latent),
            "unnormalized": model.unnormalize(latent),
            "t_emb": model.timestep_embedding(t),
            "latent_rot": model.latent_rot,
            "clip_rot": model.clip_rot,
        }
        out.update({f"euler_state_{i}": s for i, s in enumerate(states)})
        for field in dataclasses.fields(cond):
            out[f"cond.{field.name}"] = getattr(cond, field.name)
            out[f"empty.{field.name}"] = getattr(empty, field.name)
    return out


# --------------------------------------------------------------------------- conformance


@require(PYTEST_HAS_SUBTESTS, reason="the subtests fixture needs pytest >= 9 (the test extra pins it)")
@pytest.mark.conformance
def test_conformance_network(network_fixture, fixture_model, subtests):
    _, _, sampler, io = network_fixture
    assert sampler["method"] == "euler" and sampler.get("min_sigma", 0.0) == 0.0
    outputs = compute_fixture_outputs(fixture_model, io, sampler)
    references = sorted(set(io) - INPUT_NAMES)
    assert set(references) == set(outputs), (
        f"fixture outputs not reproduced: {sorted(set(references) - set(outputs))}; "
        f"produced but absent from the fixture: {sorted(set(outputs) - set(references))}"
    )
    for name in references:
        with subtests.test(output=name):
            assert_close_to_reference(name, outputs[name], io[name])


@pytest.mark.conformance
def test_mmaudio_key_set_without_mean_flow(network_fixture):
    """With mean_flow=False the state dict is exactly MMAudio's (names and shapes)."""
    root, config, _, _ = network_fixture
    weights = load_file(str(root / "weights.safetensors"))
    plain = MFMJT(dataclasses.replace(config, mean_flow=False))
    assert plain.interval_embed is None
    assert {k: tuple(v.shape) for k, v in plain.state_dict().items()} == {k: tuple(v.shape) for k, v in weights.items()}
    assert set(MFMJT(config).state_dict()) - set(weights) == {
        "interval_embed.mlp.0.weight",
        "interval_embed.mlp.0.bias",
        "interval_embed.mlp.2.weight",
        "interval_embed.mlp.2.bias",
    }


# --------------------------------------------------------------------- interval embedding


@pytest.mark.conformance
def test_interval_embedding_starts_as_mmaudio_velocity(network_fixture):
    root, config, _, io = network_fixture
    model = load_network(root / "weights.safetensors", config=config)
    latent, t = io["latent"], io["t"]
    with torch.no_grad():
        cond = model.preprocess_conditions(io["clip_f"], io["sync_f"], io["text_f"])
        base = model.predict_flow(latent, t, cond)
        assert_close_to_reference("flow_cond", base, io["flow_cond"])
        for s in (t, t + 0.25 * (1 - t), torch.ones_like(t), 1.0):
            # the interval embedding's output layer starts at zero: it adds exact zeros (x + 0 is
            # x) and everything else runs the same kernels in the same order: bit-identical
            assert torch.equal(model.predict_flow(latent, t, cond, s=s), base)

        torch.nn.init.normal_(model.interval_embed.mlp[2].weight, std=0.5, generator=torch.Generator().manual_seed(0))
        to_one = model.predict_flow(latent, t, cond, s=1.0)
        half_way = model.predict_flow(latent, t, cond, s=t + 0.5 * (1 - t))
    assert (to_one - base).abs().max() > 1e-3
    assert (to_one - half_way).abs().max() > 1e-3


def test_plain_flow_network_ignores_s():
    config = dataclasses.replace(TINY_2S, mean_flow=False)
    model = random_tiny_network(config, seed=1)
    feats = random_features(config, 2, seed=2)
    latent = torch.randn(2, config.latent_seq_len, config.latent_dim, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        cond = model.preprocess_conditions(**feats)
        # without the interval embedding s is never read: the same computation, bit for bit
        assert torch.equal(model.predict_flow(latent, 0.3, cond, s=0.9), model.predict_flow(latent, 0.3, cond))


# ------------------------------------------------------------------------ loading errors


@pytest.fixture()
def fixture_weights(network_fixture) -> dict[str, torch.Tensor]:
    root = network_fixture[0]
    return load_file(str(root / "weights.safetensors"))


def test_wrong_preset_name_lists_valid_ones(fixture_weights):
    with pytest.raises(ValueError) as info:
        load_network(fixture_weights, config="small_17k")
    message = str(info.value)
    assert "small_17k" in message
    for name in NETWORK_PRESETS:
        assert name in message


def test_missing_key_is_named(network_fixture, fixture_weights):
    del fixture_weights["fused_blocks.1.attn.k_norm.weight"]
    with pytest.raises(CheckpointMismatchError, match=r"missing key.*\n.*fused_blocks\.1\.attn\.k_norm\.weight"):
        load_network(fixture_weights, config=network_fixture[1])


def test_unexpected_key_is_named(network_fixture, fixture_weights):
    fixture_weights["joint_blocks.1.clip_block.ffn.w1.weight"] = torch.zeros(256, 32, 3)
    with pytest.raises(CheckpointMismatchError, match=r"unexpected key.*\n.*joint_blocks\.1\.clip_block\.ffn\.w1"):
        load_network(fixture_weights, config=network_fixture[1])


def test_shape_mismatch_names_key_and_both_shapes(network_fixture, fixture_weights):
    config = network_fixture[1]
    fixture_weights["final_layer.conv.bias"] = torch.zeros(config.latent_dim + 1)
    with pytest.raises(CheckpointMismatchError) as info:
        load_network(fixture_weights, config=config)
    message = str(info.value)
    assert f"final_layer.conv.bias: checkpoint ({config.latent_dim + 1},) vs network ({config.latent_dim},)" in message


def test_preset_shape_mismatch_is_reported(fixture_weights):
    with pytest.raises(CheckpointMismatchError, match="shape mismatch"):
        load_network(fixture_weights, config="small_16k")


def test_derived_buffers_in_checkpoint_are_ignored(network_fixture, fixture_weights, fixture_model):
    config = network_fixture[1]
    fixture_weights["latent_rot"] = torch.zeros(3)
    fixture_weights["clip_rot"] = torch.zeros(3)
    fixture_weights["t_embed.freqs"] = torch.zeros(3)
    model = load_network(fixture_weights, config=config)
    # recomputed by the same functions from the same config: bit-identical
    assert torch.equal(model.latent_rot, fixture_model.latent_rot)
    assert torch.equal(model.t_embed.freqs, fixture_model.t_embed.freqs)


@pytest.mark.conformance
def test_pth_state_dict_loads_weights_only(tmp_path, network_fixture, fixture_weights):
    _, config, _, io = network_fixture
    path = tmp_path / "mmaudio_like.pth"
    torch.save(fixture_weights, path)
    model = load_network(path, config=config)
    with torch.no_grad():
        flow = model.predict_flow(
            io["latent"], io["t"], model.preprocess_conditions(io["clip_f"], io["sync_f"], io["text_f"])
        )
    assert_close_to_reference("flow_cond", flow, io["flow_cond"])


class _CodeOnLoad:
    """Unpickling this would create a directory: the proof that code ran."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.makedirs, (str(self.marker),))


def test_pickle_needing_code_is_refused(tmp_path):
    marker = tmp_path / "code_ran"
    path = tmp_path / "evil.pth"
    torch.save({"audio_input_proj.0.weight": torch.zeros(1), "payload": _CodeOnLoad(marker)}, path)
    with pytest.raises(UnsafeCheckpointError, match="refusing to load"):
        load_state_dict_file(path)
    with pytest.raises(UnsafeCheckpointError):
        load_network(path, config="tiny")
    assert not marker.exists()


def test_unknown_file_type_and_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError):
        load_state_dict_file(tmp_path / "absent.safetensors")
    other = tmp_path / "weights.npz"
    other.write_bytes(b"x")
    with pytest.raises(ValueError, match=r"\.safetensors, \.pth or \.pt"):
        load_state_dict_file(other)


def test_safetensors_round_trip_is_bit_identical(tmp_path, fixture_model, network_fixture):
    _, config, _, io = network_fixture
    model = fixture_model
    # make the interval embedding matter so its weights are checked too
    saved = {k: v.clone() for k, v in model.interval_embed.state_dict().items()}
    randomize_parameters_(model.interval_embed, seed=5)
    try:
        path = save_checkpoint(model, tmp_path / "net.safetensors", metadata={"step": 7, "objective": "meanflow"})
        loaded, metadata = load_checkpoint(path)
        assert metadata == {"step": 7, "objective": "meanflow"}
        assert loaded.config == model.config == config
        with torch.no_grad():
            for net_s in (None, 0.9):
                outs = []
                for net in (model, loaded):
                    cond = net.preprocess_conditions(io["clip_f"], io["sync_f"], io["text_f"])
                    outs.append(net.predict_flow(io["latent"], io["t"], cond, s=net_s))
                # the same bits in every weight, the same kernels: bit-identical outputs
                assert torch.equal(outs[0], outs[1])
    finally:
        model.interval_embed.load_state_dict(saved)


# ------------------------------------------------------------------------------------ v2


def test_v2_tiny_round_trips_through_save_infer_load(tmp_path):
    config = dataclasses.replace(TINY_2S, v2=True)
    model = random_tiny_network(config, seed=11)
    assert "clip_input_proj.2.w1.weight" in model.state_dict()  # v2 shifts module indices
    assert model.t_embed.freqs.numel() == config.hidden_dim // 2
    path = save_checkpoint(model, tmp_path / "v2.safetensors")

    state_dict = load_state_dict_file(path)
    assert infer_network_config(state_dict, duration_s=2.0) == config
    feats = random_features(config, 2, seed=12)
    latent = torch.randn(2, config.latent_seq_len, config.latent_dim, generator=torch.Generator().manual_seed(13))
    t, s = torch.tensor([0.2, 0.7]), torch.tensor([0.5, 1.0])
    with torch.no_grad():
        ref = model(latent, t, s, **feats)
        for loaded in (load_network(state_dict, duration_s=2.0), load_network(path), load_checkpoint(path)[0]):
            assert loaded.config == config
            # safetensors keeps every bit of every weight; same code and inputs: bit-identical
            assert torch.equal(loaded(latent, t, s, **feats), ref)


@pytest.mark.conformance
def test_infer_config_from_mmaudio_layout(fixture_weights, network_fixture):
    config = network_fixture[1]
    inferred = infer_network_config(fixture_weights)
    expected_lengths = sequence_lengths(8.0, 16000)
    assert (
        dataclasses.replace(
            config,
            latent_seq_len=expected_lengths.latent,
            clip_seq_len=expected_lengths.clip,
            sync_seq_len=expected_lengths.sync,
        )
        == inferred
    )
    with pytest.raises(ValueError, match="mlp_ratio"):
        infer_network_config(fixture_weights, mlp_ratio=16.0)


# ------------------------------------------------------------------------------- presets


@pytest.mark.parametrize(
    ("preset", "reference"),
    [
        ("small_16k", 157.3e6),
        ("small_44k", 157.3e6),
        ("medium_44k", 621.8e6),
        ("large_44k", 1.03e9),
        ("large_44k_v2", 1.03e9),
    ],
)
def test_preset_parameter_counts(preset, reference):
    config = NETWORK_PRESETS[preset]
    for mean_flow in (False, True):  # MMAudio's own layout, and with the interval embedding
        with torch.device("meta"):
            model = MFMJT(dataclasses.replace(config, mean_flow=mean_flow))
        count = sum(p.numel() for p in model.parameters())
        # the published counts have 3-4 significant digits; the interval MLP adds ~0.5%
        assert abs(count - reference) / reference < 0.01, f"{preset}: {count / 1e6:.2f} M parameters"


def test_sequence_lengths_follow_mmaudio():
    assert sequence_lengths(8, 16000) == (250, 64, 192)
    assert sequence_lengths(8, 44100) == (345, 64, 192)
    assert sequence_lengths(10, 16000) == (313, 80, 240)
    for name in ("small_16k", "large_44k"):
        preset = NETWORK_PRESETS[name]
        assert preset.with_duration(8.0) == preset
    with pytest.raises(ValueError, match="sample rate"):
        sequence_lengths(8, 22050)
    with pytest.raises(ValueError, match="segment"):
        sequence_lengths(0.5, 16000)


def test_config_dict_round_trip_and_validation():
    for config in NETWORK_PRESETS.values():
        assert NetworkConfig.from_dict(json.loads(json.dumps(config.as_dict()))) == config
    with pytest.raises(ValueError, match="unknown NetworkConfig fields"):
        NetworkConfig.from_dict({**NETWORK_PRESETS["tiny"].as_dict(), "hidden": 3})
    with pytest.raises(ValueError, match="divisible"):
        dataclasses.replace(NETWORK_PRESETS["tiny"], num_heads=3)


def test_all_fused_network_as_mmaudio_builds_it(tmp_path):
    """MMAudio accepts fused_depth == depth and builds no joint block (range(depth - fused_depth));
    the clip and text features then act only through the pooled global condition. Such a network
    runs, saves, and its config is inferred back from the state dict."""
    config = dataclasses.replace(TINY_2S, fused_depth=TINY_2S.depth)
    model = random_tiny_network(config, seed=61)
    assert len(model.joint_blocks) == 0 and len(model.fused_blocks) == config.depth
    feats = random_features(config, 2, seed=62)
    latent = torch.randn(2, config.latent_seq_len, config.latent_dim, generator=torch.Generator().manual_seed(63))
    with torch.no_grad():
        u = model(latent, torch.tensor([0.2, 0.7]), 1.0, **feats)
    assert u.shape == latent.shape and torch.isfinite(u).all()
    path = save_checkpoint(model, tmp_path / "all_fused.safetensors")
    assert infer_network_config(load_state_dict_file(path), duration_s=2.0) == config
    with pytest.raises(ValueError, match=r"fused_depth 3 must be in \[0, depth=2\]"):
        dataclasses.replace(TINY_2S, fused_depth=3)


def test_narrow_mlp_rounding_builds_narrow_mlps_and_is_inferred_back(tmp_path):
    """MMAudio rounds every gated MLP up to a multiple of 256, which for a 32-wide network is
    eight times its width; `mlp_multiple_of` 128 gives the nominal 2/3 x 4 x 32 = 85 -> 128. A
    file of such a network (or a plain state dict without dub's metadata) must load back as the
    same network: the rounding is read off the tensor shapes, as the largest that gives them
    (64 would give the same widths here)."""
    config = dataclasses.replace(TINY_2S, hidden_dim=32, depth=1, fused_depth=0, mlp_multiple_of=128)
    model = random_tiny_network(config, seed=71)
    widths = {name: p.shape[0] for name, p in model.state_dict().items() if name.endswith(".w1.weight")}
    assert set(widths.values()) == {128}, widths
    assert NETWORK_PRESETS["small_16k"].mlp_multiple_of == 256
    assert dataclasses.replace(config, mlp_multiple_of=256) != config
    assert MFMJT(dataclasses.replace(config, mlp_multiple_of=256)).global_cond_mlp.w1.out_features == 256
    path = save_checkpoint(model, tmp_path / "narrow.safetensors")
    assert infer_network_config(load_state_dict_file(path), duration_s=2.0) == config
    same_widths = dataclasses.replace(config, mlp_multiple_of=64)
    assert MFMJT(same_widths).state_dict().keys() == model.state_dict().keys()
    assert all(p.shape == model.state_dict()[k].shape for k, p in MFMJT(same_widths).state_dict().items())
    assert load_network(path).config == config
    with pytest.raises(ValueError, match="mlp_multiple_of must be >= 1"):
        dataclasses.replace(config, mlp_multiple_of=0)


def test_ten_second_tiny_network_runs():
    config = NETWORK_PRESETS["tiny"].with_duration(10.0)
    assert (config.latent_seq_len, config.clip_seq_len, config.sync_seq_len) == (313, 80, 240)
    model = random_tiny_network(config, seed=21)
    assert model.latent_rot.shape == (1, 313, config.head_dim // 2, 2, 2)
    assert torch.equal(  # the network's buffer is this call's result: bit-identical
        model.clip_rot, rope_rotations(80, config.head_dim, freq_scaling=313 / 80)
    )
    feats = random_features(config, 2, seed=22)
    latent = torch.randn(2, 313, config.latent_dim, generator=torch.Generator().manual_seed(23))
    with torch.no_grad():
        cond = model.preprocess_conditions(**feats).cat(model.empty_conditions(2))
        u = model.predict_flow(latent.repeat(2, 1, 1), torch.full((4,), 0.25), cond, s=1.0)
    assert u.shape == (4, 313, config.latent_dim) and torch.isfinite(u).all()
    assert (u[:2] - u[2:]).abs().max() > 1e-4  # conditions matter
    with pytest.raises(ValueError, match=r"latent must have shape \(batch, 313, 20\)"):
        model.predict_flow(latent[:, :250], 0.25, cond)


def test_negative_prompt_replaces_empty_text():
    config = TINY_2S
    model = random_tiny_network(config, seed=31)
    negative = random_features(config, 3, seed=32)["text_f"]
    with torch.no_grad():
        plain = model.empty_conditions(3)
        neg = model.empty_conditions(3, text_f=negative)
        direct = model.preprocess_conditions(*model.empty_feature_sequences(3)[:2], negative)
    assert torch.equal(plain.clip_f, neg.clip_f)  # the negative prompt touches text only: same computation
    # a batch of 1 broadcast against a batch of 3: GEMM blocking may differ, float32 rounding of
    # order-1 values (torch's float32 defaults: rtol 1.3e-6 ~ 22u, atol 1e-5)
    torch.testing.assert_close(neg.text_f_c, direct.text_f_c)
    assert (neg.text_f_c[0] - neg.text_f_c[1]).abs().max() > 1e-4
    assert (neg.text_f_c - plain.text_f_c).abs().max() > 1e-4


def test_half_precision_cast_keeps_float32_tables():
    config = TINY_2S
    model = random_tiny_network(config, seed=41).to(torch.bfloat16)
    assert model.latent_rot.dtype == torch.float32 and model.t_embed.freqs.dtype == torch.float32
    # the tables stay float32 under .to(bfloat16) and are this call's result: bit-identical
    assert torch.equal(model.latent_rot, rope_rotations(config.latent_seq_len, config.head_dim))
    feats = random_features(config, 1, seed=42, dtype=torch.bfloat16)
    latent = torch.randn(1, config.latent_seq_len, config.latent_dim).to(torch.bfloat16)
    with torch.no_grad():
        u = model(latent, torch.tensor([0.5]), 1.0, **feats)
    assert u.dtype == torch.bfloat16 and torch.isfinite(u.float()).all()


# ----------------------------------------------------------------------------------- JVP


# torch's own JVP decompositions call the deprecated torch.jit.script
@pytest.mark.filterwarnings("ignore:`torch.jit.script` is deprecated:FutureWarning")
def test_jvp_under_math_sdpa_matches_finite_difference():
    config = TINY_2S
    model = random_tiny_network(config, seed=51).double()
    feats = random_features(config, 2, seed=52, dtype=torch.float64)
    gen = torch.Generator().manual_seed(53)
    z = torch.randn(2, config.latent_seq_len, config.latent_dim, generator=gen, dtype=torch.float64)
    dz = torch.randn(z.shape, generator=gen, dtype=torch.float64)
    t = torch.tensor([0.3, 0.6], dtype=torch.float64)
    s = torch.tensor([0.8, 0.9], dtype=torch.float64)
    dt, ds = torch.ones_like(t), torch.full_like(s, 0.5)

    with torch.no_grad():
        cond = model.preprocess_conditions(**feats)

    def u(z_, t_, s_):
        return model.predict_flow(z_, t_, cond, s=s_)

    with sdpa_kernel(SDPBackend.MATH), torch.no_grad():
        value, tangent = torch.func.jvp(u, (z, t, s), (dz, dt, ds))
        h = 1e-5
        finite = (u(z + h * dz, t + h * dt, s + h * ds) - u(z - h * dz, t - h * dt, s - h * ds)) / (2 * h)
        plain = u(z, t, s)
    # value is the JVP's primal: the same float64 forward as `plain`, but forward-mode AD may run
    # other kernels or decompositions in another order, so bit equality is not promised. Each is
    # within ~L sqrt(n) u64 max|u| of exact arithmetic (independent roundings of an n-term dot
    # product grow like sqrt(n)): L ~ 20 sequential layers (input projections, 2 blocks of ~7,
    # the final layer), n <= 1792 (the k=7 ConvMLP's 256 x 7 terms), u64 = 2^-53. (A float32 run
    # of this network lands 17 u32 max|u| from the float64 one: amplification 17, far below 840.)
    torch.testing.assert_close(value, plain, rtol=0, atol=2 * 20 * 1792**0.5 * 2**-53 * plain.abs().max().item())
    assert tangent.abs().max() > 1e-3
    # Central differences, h = 1e-5: truncation h^2 |u'''| / 6 and rounding u64 |u| / h ~ 5e-11;
    # measured 5.5e-9 against a tangent of scale 8, the 1e-7 x scale leaves 100-fold room. h is
    # this small because SELU (input projections) has a kink at 0: with h = 1e-4 some of the
    # 8064 pre-activations cross it and the quotient is off by 0.05; at 1e-5 none does (seeded).
    torch.testing.assert_close(tangent, finite, rtol=1e-6, atol=1e-7 * finite.abs().max().item())


def test_conv_columns_by_stacked_slices_are_the_unfolded_ones() -> None:
    """The CPU way of building a convolution's columns copies exactly what unfold views (the
    CUDA way), so both devices run the same GEMM on the same numbers."""
    from dub.model.network.layers import _columns

    x = torch.randn(2, 19, 5, generator=torch.Generator().manual_seed(3))
    for k in (1, 3, 7):
        assert torch.equal(_columns(x, k), x.unfold(1, k, 1).flatten(2))


@pytest.mark.parametrize("in_ch, out_ch, kernel, bias", [(6, 10, 3, False), (5, 4, 7, True), (3, 8, 1, True)])
def test_channel_last_conv_as_one_matmul_equals_the_convolution(in_ch, out_ch, kernel, bias) -> None:
    """ChannelLastConv1d runs as a GEMM over the unfolded sequence (no layout conversions on a
    GPU): the convolution's numbers and its forward-mode derivative (the MeanFlow JVP)."""
    from dub.model.network.layers import ChannelLastConv1d

    gen = torch.Generator().manual_seed(in_ch * kernel)
    conv = ChannelLastConv1d(in_ch, out_ch, kernel, padding=kernel // 2, bias=bias).double()
    x, dx = torch.randn(2, 2, 13, in_ch, generator=gen, dtype=torch.float64).unbind(0)
    assert conv._as_matmul()

    def as_conv(x_):
        return torch.nn.functional.conv1d(x_.transpose(1, 2), conv.weight, conv.bias, padding=kernel // 2).transpose(
            1, 2
        )

    # float64 sums of at most in_ch x kernel = 35 products, in two orders: each within
    # 35 u64 sum|w x| (< 10 here) of exact, ~8e-14 apart at worst
    with torch.no_grad():
        torch.testing.assert_close(conv(x), as_conv(x), rtol=1e-12, atol=1e-12)
        got = torch.func.jvp(conv, (x,), (dx,))
        want = torch.func.jvp(as_conv, (x,), (dx,))
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)
    # and its gradients (training backpropagates through the column building)
    grads = [torch.autograd.grad(f(x.requires_grad_()).square().sum(), (x, conv.weight)) for f in (conv, as_conv)]
    for a, b in zip(*grads):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)
    x = x.detach()
    strided = ChannelLastConv1d(in_ch, out_ch, kernel, stride=2, padding=kernel // 2).double()
    assert not strided._as_matmul()  # other shapes keep nn.Conv1d's path
    assert strided(x).shape == (2, 7, out_ch)
