"""Audio codec: MMAudio conformance (mel, VAE, BigVGAN) and tiny random codec behaviour."""

from __future__ import annotations

import dataclasses
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from dub.model.codec.bigvgan import (
    AntiAliasedActivation,
    BigVGAN,
    BigVGANConfig,
    activation_form,
    activation_status,
    kaiser_sinc_filter,
    load_bigvgan,
    weight_norm_state_dict,
)
from dub.model.codec.mel import MelConfig, MelConverter
from dub.model.codec.mmaudio import Codec, MMAudioCodec, build_mmaudio_codec
from dub.model.codec.vae import VAE, VAEConfig, load_vae

PROJECT_ROOT = Path(__file__).resolve().parents[1]


def assert_conforms(out: torch.Tensor, ref: torch.Tensor, name: str) -> None:
    """The fixture README's tolerance: max|out - ref| <= 1e-4 * max(1, max|ref|), the acceptance
    bound published with MMAudio's float32 CPU outputs. (The mels also need MKL's CPU-independent
    FFT path: tests/codec_helpers.py says why.)"""
    assert out.shape == ref.shape, f"{name}: shape {tuple(out.shape)} != reference {tuple(ref.shape)}"
    err = (out.detach().float() - ref).abs().max().item()
    bound = 1e-4 * max(1.0, ref.abs().max().item())
    assert err <= bound, f"{name}: max abs error {err:.3g} > {bound:.3g}"


# The anti-aliased activation in two float32 forms (polyphase / shifted sums / compiled / Triton)
# against BigVGAN's order of operations, |x| up to ~13: independent roundings of the 6-term
# up-sampling phases and the 12-term low-pass grow like sqrt(18) u ||h||_1 max|y| ~ 4e-6 per form
# (||h||_1 ~ 1.2 for these sinc filters), two forms apart ~8e-6; measured 3e-6.
ACT_TOL = 1e-5
# A vocoder whose weights were refolded from (g, v): g * v / ||v|| lands within 1.3 u of the
# module's own weights, a perturbation carried through ~20 convolutions in sequence and a final
# conv scaled x50 (tests push it into the clamp): about sqrt(20) x 1.3u x 50 ~ 2e-5 at pre-tanh
# values of order 1, outputs no more (tanh / clamp have slope <= 1); measured 5.5e-6. Used as
# rtol = atol: 2e-5 at |wav| = 1.
BIGVGAN_REFOLD_TOL = 1e-5


def read_json(path: Path) -> dict:
    return json.loads(path.read_text())


# ----------------------------------------------------------------------------------------- mel


@pytest.fixture(scope="module")
def fixture_mels(fixtures_root: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, torch.Tensor]:
    out = tmp_path_factory.mktemp("mels") / "mels.safetensors"
    env = {**os.environ, "MKL_CBWR": "COMPATIBLE"}
    subprocess.run(
        [sys.executable, "-m", "tests.codec_helpers", str(fixtures_root), str(out)],
        cwd=PROJECT_ROOT,
        env=env,
        check=True,
        timeout=300,
    )
    return load_file(str(out))


def _check_mel_set(fixtures_root: Path, name: str, fixture_mels: dict[str, torch.Tensor]) -> None:
    folder = fixtures_root / name
    config = MelConfig.from_dict(read_json(folder / "config.json"))
    io = load_file(str(folder / "io.safetensors"))
    converter = MelConverter(config)
    assert_conforms(converter.mel_basis, io["mel_basis"], f"{name}.mel_basis")
    assert_conforms(converter.window, io["window"], f"{name}.window")
    assert fixture_mels[name].shape[-1] == config.num_frames(io["wave"].shape[-1])
    assert_conforms(fixture_mels[name], io["mel"], f"{name}.mel")


@pytest.mark.conformance
def test_conformance_mel16k(fixtures_root: Path, fixture_mels: dict[str, torch.Tensor]) -> None:
    _check_mel_set(fixtures_root, "mel16k", fixture_mels)


@pytest.mark.conformance
def test_conformance_mel44k(fixtures_root: Path, fixture_mels: dict[str, torch.Tensor]) -> None:
    _check_mel_set(fixtures_root, "mel44k", fixture_mels)


def test_mel_presets_match_fixture_configs(fixtures_root: Path) -> None:
    presets = {p.sampling_rate: p for p in (MelConfig.mmaudio_16k(), MelConfig.mmaudio_44k())}
    for name in ("mel16k", "mel44k"):
        config = MelConfig.from_dict(read_json(fixtures_root / name / "config.json"))
        assert config == presets[config.sampling_rate]
        assert MelConfig.from_dict(config.as_dict()) == config


def test_mel_config_rejects_centred_stft(fixtures_root: Path) -> None:
    d = read_json(fixtures_root / "mel16k" / "config.json")
    with pytest.raises(ValueError, match="stft_center"):
        MelConfig.from_dict({**d, "stft_center": True})


# ----------------------------------------------------------------------------------------- VAE


def _vae_outputs(vae: VAE, io: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    with torch.no_grad():
        post = vae.posterior(io["mel"])
        mean, std = vae.encode(io["mel"])
        # encode is posterior's mean and std: the same computation, bit for bit
        assert torch.equal(mean, post.mean) and torch.equal(std, post.std)
        return {
            "enc_moments": post.moments,
            "enc_mean": mean,
            "enc_std": std,
            "enc_logvar": post.logvar,
            "dec": vae.decode(io["z"]),
        }


@pytest.mark.conformance
def test_conformance_vae16k(fixtures_root: Path) -> None:
    folder = fixtures_root / "vae16k"
    config = VAEConfig.from_dict(read_json(folder / "arch.json"))
    io = load_file(str(folder / "io.safetensors"))
    outputs = _vae_outputs(load_vae(folder / "weights.safetensors", config), io)
    for name, out in outputs.items():
        assert_conforms(out, io[name], f"vae16k.{name}")


@pytest.mark.conformance
def test_vae_loads_nested_torch_checkpoint(fixtures_root: Path, tmp_path: Path) -> None:
    folder = fixtures_root / "vae16k"
    config = VAEConfig.from_dict(read_json(folder / "arch.json"))
    raw = load_file(str(folder / "weights.safetensors"))
    path = tmp_path / "vae.pth"
    torch.save({"state_dict": raw, "epoch": 3}, path)
    io = load_file(str(folder / "io.safetensors"))
    with torch.no_grad():
        dec = load_vae(path, config).decode(io["z"])
    assert_conforms(dec, io["dec"], "vae16k.dec via nested .pth")


def test_vae_rejects_wrong_config_and_bad_input(fixtures_root: Path) -> None:
    folder = fixtures_root / "vae16k"
    arch = read_json(folder / "arch.json")
    wrong = VAEConfig.from_dict({**arch, "hidden_dim": 2 * arch["hidden_dim"]})
    with pytest.raises((ValueError, RuntimeError)):
        load_vae(folder / "weights.safetensors", wrong)
    vae = load_vae(folder / "weights.safetensors", VAEConfig.from_dict(arch))
    with pytest.raises(ValueError, match="multiple of"):
        vae.encode(torch.zeros(1, arch["data_dim"], 7))
    with pytest.raises(ValueError, match="channel-first"):
        vae.decode(torch.zeros(1, 5, arch["embed_dim"]))


def test_vae_presets_match_fixture_arch(fixtures_root: Path) -> None:
    arch = read_json(fixtures_root / "vae16k" / "arch.json")
    preset = VAEConfig.mmaudio_16k()
    assert (preset.data_dim, preset.embed_dim) == (arch["data_dim"], arch["embed_dim"])
    assert preset.hidden_dim == arch.get("full_model_hidden_dim", preset.hidden_dim)
    fixture = VAEConfig.from_dict(arch)
    assert (fixture.ch_mult, fixture.num_res_blocks, fixture.down_layers) == (
        preset.ch_mult,
        preset.num_res_blocks,
        preset.down_layers,
    )


# ------------------------------------------------------------------------------------- BigVGAN


@pytest.mark.conformance
def test_conformance_bigvgan16k(fixtures_root: Path) -> None:
    folder = fixtures_root / "bigvgan16k"
    config = BigVGANConfig.from_json(folder / "config.json")
    io = load_file(str(folder / "io.safetensors"))
    stored = load_file(str(folder / "weights.safetensors"))
    legacy_names = read_json(folder / "legacy_key_map.json")
    legacy = {legacy_names.get(k, k): v for k, v in stored.items()}
    assert set(legacy) != set(stored), "the legacy key map renamed nothing"

    with torch.no_grad():
        wav = load_bigvgan(folder / "weights.safetensors", config)(io["mel"])
        wav_legacy = load_bigvgan({"generator": legacy}, config)(io["mel"])
    assert wav.shape[-1] == config.hop_size * io["mel"].shape[-1]
    assert_conforms(wav, io["wav"], "bigvgan16k.wav")
    assert_conforms(wav_legacy, io["wav"], "bigvgan16k.wav (legacy weight_g/weight_v keys)")
    # the same tensors under other key names, folded by the same code: bit-identical
    assert torch.equal(wav_legacy, wav)


@pytest.mark.conformance
def test_bigvgan_filters_equal_fixture_constants(fixtures_root: Path) -> None:
    stored = load_file(str(fixtures_root / "bigvgan16k" / "weights.safetensors"))
    filters = [v for k, v in stored.items() if k.endswith(".filter")]
    assert filters
    computed = kaiser_sinc_filter(0.25, 0.3, filters[0].shape[-1])
    # ours in float64 rounded once, BigVGAN's in float32: window x sinc / (sum of 12 taps), about
    # 15 roundings of taps < 0.45 (~4e-7); measured 3e-8 (one ulp)
    for f in filters:
        torch.testing.assert_close(f, computed, rtol=0, atol=1e-6)


def _activation(channels: int, activation: str = "snakebeta", seed: int = 0) -> AntiAliasedActivation:
    config = dataclasses.replace(BigVGANConfig.mmaudio_16k(), activation=activation)
    act = AntiAliasedActivation(channels, config)
    with torch.no_grad():  # log-scale alpha/beta away from 0 so Snake is far from the identity
        act.act.alpha.normal_(0.0, 0.5, generator=torch.Generator().manual_seed(seed))
        if act.act.beta is not None:
            act.act.beta.normal_(0.0, 0.5, generator=torch.Generator().manual_seed(seed + 1))
    return act


@pytest.mark.parametrize("length", [1, 2, 3, 7, 64, 501])
@pytest.mark.parametrize("activation", ["snake", "snakebeta"])
def test_polyphase_activation_equals_bigvgans_upsample_snake_downsample(length: int, activation: str) -> None:
    """Both polyphase forms (grouped convs eager; shifted sums under torch.compile) give BigVGAN's
    own upsample -> snake -> downsample, edge replication included, down to one sample."""
    act = _activation(6, activation)
    x = 3 * torch.randn(2, 6, length, generator=torch.Generator().manual_seed(length))
    x[..., 0] += 5.0  # distinct edges: a wrong edge replication shows at both ends
    x[..., -1] -= 5.0
    # ACT_TOL: two float32 summation orders of the same 6-tap up-sampling phases, snake and
    # 12-tap low-pass
    with torch.no_grad():
        reference = act.reference_forward(x)
        assert reference.shape == x.shape
        torch.testing.assert_close(act(x), reference, rtol=0, atol=ACT_TOL)
        torch.testing.assert_close(act._shifted_sums_forward(x), reference, rtol=0, atol=ACT_TOL)


def test_polyphase_weights_follow_loaded_filters() -> None:
    """A checkpoint's filters (identical constants in every release) are what the phases use."""
    act = _activation(4)
    state = act.state_dict()
    assert "up_weight" not in state and "phase_taps" not in state  # derived, not checkpoint keys
    state["upsample.filter"] = torch.flip(torch.arange(12.0), [0]).view(1, 1, 12) / 66.0
    state["downsample.lowpass.filter"] = torch.linspace(-1, 1, 12).view(1, 1, 12)
    act.load_state_dict(state)
    x = torch.randn(1, 4, 33, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        torch.testing.assert_close(act(x), act.reference_forward(x), rtol=0, atol=ACT_TOL)


def test_compiled_activation_uses_the_fused_form_and_matches() -> None:
    """Under torch.compile (Inductor on the CPU here) the activation traces the shifted-sum form
    that fuses into one kernel; its output equals BigVGAN's order of operations."""
    act = _activation(8)
    x = torch.randn(2, 8, 40, generator=torch.Generator().manual_seed(4))
    calls = []
    original = act._shifted_sums_forward
    act._shifted_sums_forward = lambda t: calls.append(1) or original(t)
    with torch.no_grad():
        compiled = torch.compile(act, dynamic=False)(x)
        torch.testing.assert_close(compiled, act.reference_forward(x), rtol=0, atol=ACT_TOL)
    assert calls, "torch.compile did not trace the shifted-sum form"


def test_triton_activation_kernel_equals_bigvgans_order(tmp_path: Path) -> None:
    """The fused Triton kernel that runs the activation on CUDA, executed by Triton's interpreter
    on the CPU (same kernel source), against BigVGAN's upsample -> snake -> downsample."""
    from tests.triton_helpers import CASES, run_under_interpreter

    got = run_under_interpreter("tests.triton_helpers", tmp_path)
    for n, (channels, length, kind, dtype) in enumerate(CASES):
        kernel, reference = got[f"{n}.kernel"], got[f"{n}.reference"]
        assert kernel.dtype == dtype and kernel.shape == (2, channels, length), (n, kernel.dtype, kernel.shape)
        # float32: summation order only (ACT_TOL); bf16: the output's own rounding, 2^-9 relative
        # (half an ulp of 8 bits) of each side, plus the float32 terms: 1e-2 ~ 2.6 bf16 ulps
        tol = ACT_TOL if dtype == torch.float32 else 1e-2 * reference.abs().max().item()
        torch.testing.assert_close(kernel.float(), reference, rtol=0, atol=tol, msg=f"case {n} ({kind}, {dtype})")


def test_activation_forms_agree_and_auto_uses_convs_off_cuda() -> None:
    act = _activation(5)
    x = torch.randn(1, 5, 50, generator=torch.Generator().manual_seed(6))
    with torch.no_grad():
        auto = act(x)
        for form in ("polyphase", "reference"):
            with activation_form(act, form):
                torch.testing.assert_close(act(x), auto, rtol=0, atol=ACT_TOL)
    assert act.form == "auto"
    assert "Triton kernel is CUDA only" in activation_status("cpu")


def _publisher_config(resblock: str, activation: str, final_tanh: bool, final_bias: bool) -> dict:
    """A tiny config in the layout of nvidia/bigvgan_v2_44khz_128band_512x/config.json."""
    return {
        "resblock": resblock,
        "num_gpus": 0,
        "batch_size": 4,
        "learning_rate": 0.0001,
        "upsample_rates": [4, 2, 2],
        "upsample_kernel_sizes": [8, 4, 4],
        "upsample_initial_channel": 16,
        "resblock_kernel_sizes": [3, 7],
        "resblock_dilation_sizes": [[1, 3, 5], [1, 3, 5]],
        "use_tanh_at_final": final_tanh,
        "use_bias_at_final": final_bias,
        "activation": activation,
        "snake_logscale": True,
        "use_cqtd_instead_of_mrd": True,
        "cqtd_dilations": [1, 2, 4],
        "mpd_reshapes": [2, 3, 5, 7, 11],
        "segment_size": 65536,
        "num_mels": 12,
        "num_freq": 2049,
        "n_fft": 2048,
        "hop_size": 16,
        "win_size": 2048,
        "sampling_rate": 44100,
        "fmin": 0,
        "fmax": None,
        "fmax_for_loss": None,
        "dist_config": {"dist_backend": "nccl", "dist_url": "tcp://localhost:54321", "world_size": 1},
    }


@pytest.mark.parametrize(
    ("resblock", "activation", "final_tanh", "final_bias", "style"),
    [("1", "snakebeta", False, False, "parametrizations"), ("2", "snake", True, True, "legacy")],
)
def test_bigvgan_publisher_layout_roundtrip(
    tmp_path: Path, resblock: str, activation: str, final_tanh: bool, final_bias: bool, style: str
) -> None:
    config_path = tmp_path / "config.json"
    config_path.write_text(json.dumps(_publisher_config(resblock, activation, final_tanh, final_bias)))
    config = BigVGANConfig.from_json(config_path)
    assert (config.use_tanh_at_final, config.use_bias_at_final, config.sampling_rate) == (final_tanh, final_bias, 44100)

    torch.manual_seed(0)
    model = BigVGAN(config).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith(("alpha", "beta")):
                p.normal_(0.0, 0.3)
        model.conv_post.weight.mul_(50.0)  # push the output past [-1, 1] so the final squashing shows
    sd = weight_norm_state_dict(model, style)
    assert ("conv_post.bias" in sd) == final_bias
    path = tmp_path / "bigvgan_generator.pt"
    torch.save({"generator": sd}, path)

    loaded = load_bigvgan(path, config_path)
    mel = torch.randn(2, 12, 9, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        expected, wav = model(mel), loaded(mel)
    assert wav.shape == (2, 1, 9 * config.hop_size)
    # BIGVGAN_REFOLD_TOL: the loaded weights are g * v / ||v|| refolded
    torch.testing.assert_close(wav, expected, rtol=BIGVGAN_REFOLD_TOL, atol=BIGVGAN_REFOLD_TOL)
    saturated = (wav.abs() == 1.0).float().mean().item()
    if final_tanh:
        assert saturated < 0.5 and wav.abs().max() <= 1.0
    else:
        assert saturated > 0.05, "use_tanh_at_final=False must hard-clamp to [-1, 1]"


def test_bigvgan_accepts_every_config_the_publisher_builds(tmp_path: Path) -> None:
    """BigVGAN sizes stage i with upsample_initial_channel // 2**(i + 1) (floor division) and has
    no divisibility condition: 20 channels over three stages give 10, 5 and 2 channels. It zips
    (rate, kernel) and (kernel, dilations), so a surplus entry is ignored; a resblock other than
    "1" is AMPBlock2."""
    d = {
        **_publisher_config("2", "snakebeta", True, True),
        "upsample_initial_channel": 20,
        "upsample_kernel_sizes": [8, 4, 4, 4],
        "resblock_dilation_sizes": [[1, 3, 5], [1, 3, 5], [1, 2]],
    }
    (tmp_path / "config.json").write_text(json.dumps(d))
    config = BigVGANConfig.from_json(tmp_path / "config.json")
    torch.manual_seed(0)
    model = BigVGAN(config).eval()
    assert [up[0].out_channels for up in model.ups] == [10, 5, 2]
    assert [block.convs[0].in_channels for block in model.resblocks] == [10, 10, 5, 5, 2, 2]
    assert model.conv_post.in_channels == 2 and len(model.resblocks) == 3 * 2
    torch.save({"generator": weight_norm_state_dict(model, "legacy")}, tmp_path / "bigvgan_generator.pt")
    loaded = load_bigvgan(tmp_path / "bigvgan_generator.pt", tmp_path / "config.json")
    mel = torch.randn(1, 12, 5, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        wav = loaded(mel)
        expected = model(mel)
    assert wav.shape == (1, 1, 5 * 16)
    # the loaded weights are g * v / ||v|| refolded (BIGVGAN_REFOLD_TOL)
    torch.testing.assert_close(wav, expected, rtol=BIGVGAN_REFOLD_TOL, atol=BIGVGAN_REFOLD_TOL)
    assert BigVGANConfig.from_dict({**d, "resblock": "3"}).resblock == "2"
    with pytest.raises(ValueError, match="upsample_kernel_sizes"):
        BigVGANConfig.from_dict({**d, "upsample_kernel_sizes": [8, 4]})


def test_bigvgan_rejects_mismatched_config(fixtures_root: Path) -> None:
    folder = fixtures_root / "bigvgan16k"
    d = read_json(folder / "config.json")
    with pytest.raises(ValueError, match="does not match"):
        load_bigvgan(folder / "weights.safetensors", BigVGANConfig.from_dict({**d, "resblock": "2"}))


# --------------------------------------------------------------------------------------- codec


def _tiny_codec(hop: int = 64) -> MMAudioCodec:
    torch.manual_seed(0)
    mel = MelConverter(MelConfig(16_000, 256, hop, 256, 16, 0.0, 8_000.0, "log10"))
    vae = VAE(VAEConfig(data_dim=16, embed_dim=4, hidden_dim=8)).eval()
    vocoder = BigVGAN(
        BigVGANConfig(
            num_mels=16,
            upsample_rates=(4, 4, 4),
            upsample_kernel_sizes=(8, 8, 8),
            upsample_initial_channel=16,
            resblock_kernel_sizes=(3,),
            resblock_dilation_sizes=((1, 3),),
            sampling_rate=16_000,
        )
    ).eval()
    return MMAudioCodec(mel, vae, vocoder)


def test_codec_roundtrip_shapes_follow_latents_per_second() -> None:
    codec = _tiny_codec()
    assert isinstance(codec, Codec)
    num_samples = 8_000  # 0.5 s, not a whole number of latents: encode pads the tail
    wav = 0.5 * torch.rand(2, num_samples, generator=torch.Generator().manual_seed(2)) - 0.25
    mean, std = codec.encode(wav)
    n = math.ceil(num_samples / codec.sample_rate * codec.latents_per_second)
    assert mean.shape == std.shape == (2, n, codec.latent_dim)
    assert bool((std > 0).all()) and torch.isfinite(mean).all()
    out = codec.decode(mean)
    assert out.shape == (2, round(n * codec.sample_rate / codec.latents_per_second))
    assert out.shape[1] >= num_samples and out.abs().max() <= 1.0
    # Items are independent: a batch of one gives the same latents, up to float32 rounding of a
    # batch-dependent blocking (FFT, GEMMs) carried through the log mel, whose quiet bins amplify
    # the FFT's rounding (tests/codec_helpers.py), and ~25 encoder layers: measured 1.7e-6
    mean_one, _ = codec.encode(wav[1:])
    torch.testing.assert_close(mean_one, mean[1:], rtol=1e-4, atol=1e-5)


def test_codec_rejects_bad_input_and_mismatched_parts() -> None:
    codec = _tiny_codec()
    with pytest.raises(ValueError, match=r"\(B, L\)"):
        codec.encode(torch.zeros(1, 1, 4_000))
    with pytest.raises(ValueError, match="channel-last"):
        codec.decode(torch.zeros(1, codec.latent_dim, 10))
    with pytest.raises(ValueError, match="hop"):
        MMAudioCodec(
            MelConverter(MelConfig(16_000, 256, 128, 256, 16, 0.0, 8_000.0, "log10")), codec.vae, codec.vocoder
        )


def test_build_mmaudio_codec_rejects_unknown_kind_and_foreign_weights(fixtures_root: Path) -> None:
    with pytest.raises(ValueError, match="kind"):
        build_mmaudio_codec("32k", vae_weights={}, vocoder_weights={})
    vocoder_weights = fixtures_root / "bigvgan16k" / "weights.safetensors"
    with pytest.raises(KeyError, match="encoder.conv_in.weight"):
        build_mmaudio_codec("16k", vae_weights=vocoder_weights, vocoder_weights=vocoder_weights)


@pytest.mark.parametrize("dtype", ["*fp32", "*bf16"])
@pytest.mark.parametrize("kernel", ["phases", "lowpass"])
def test_triton_activation_kernels_build_for_hopper_without_spills(kernel: str, dtype: str, tmp_path: Path) -> None:
    """The interpreter checks the kernels' arithmetic; this builds the same source for sm_90."""
    from dub.model.kernels import bigvgan_triton
    from tests.triton_helpers import hopper_resource_usage

    if kernel == "phases":
        fn = bigvgan_triton._snake_phases_kernel
        signature = {
            "x_ptr": dtype,
            "phases_ptr": "*fp32",
            "alpha_ptr": "*fp32",
            "inv_beta_ptr": "*fp32",
            "up_ptr": "*fp32",
            "T": "i32",
            "C": "i32",
            "BLOCK": "constexpr",
        }
    else:
        fn = bigvgan_triton._lowpass_kernel
        signature = {"phases_ptr": "*fp32", "out_ptr": dtype, "down_ptr": "*fp32", "T": "i32", "BLOCK": "constexpr"}
    registers, local = hopper_resource_usage(fn, signature, {"BLOCK": bigvgan_triton.BLOCK}, tmp_path)
    # (libdevice's sin keeps a 32-byte stack array for huge arguments: STACK, not spills)
    assert local == 0 and registers <= 128, (registers, local)
