"""The weights-free demo stack (model/demo) and the demo model bundle (model/runtime/bundles.py)."""

from __future__ import annotations

import dataclasses
import os
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F

from dub.model.demo import DemoCodec, DemoEncoders
from dub.model.demo.features import (
    _IMPACT_DECAY,
    _IMPACT_HOLD,
    SYNC_FPS,
    _event_descriptors,
    _foreground_look,
    _pooled_frames,
    num_sync_segments,
    sync_token_times,
)

SR = 16_000


def random_frames(batch: int, frames: int, size: int, seed: int) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (batch, frames, size, size, 3), generator=gen, dtype=torch.uint8)


def textured_still(frames: int, size: int, seed: int) -> torch.Tensor:
    """One textured frame held for `frames` frames (a static shot)."""
    gen = torch.Generator().manual_seed(seed)
    still = (60 + torch.randint(0, 80, (size, size, 3), generator=gen)).to(torch.uint8)
    return still.expand(1, frames, size, size, 3).clone()


def tokens_near(frames: set[int], num_frames: int, reach: float) -> set[int]:
    """Token indices whose moment (`sync_token_times`) is within `reach` frames of `frames`."""
    times = sync_token_times(num_frames) * SYNC_FPS
    return {i for i, t in enumerate(times.tolist()) if any(abs(t - k) <= reach for k in frames)}


def changed_tokens(a: torch.Tensor, b: torch.Tensor) -> set[int]:
    return set((a - b).abs().amax(dim=-1)[0].nonzero().flatten().tolist())


# -- features ------------------------------------------------------------------------------


def test_clip_and_sync_shapes_for_an_8_s_clip_at_real_sizes():
    enc = DemoEncoders(clip_dim=64, sync_dim=48)
    clip = enc.clip_features(random_frames(1, 64, 384, seed=0))
    sync = enc.sync_features(random_frames(1, 200, 224, seed=1))
    assert clip.shape == (1, 64, 64) and clip.dtype == torch.float32
    assert sync.shape == (1, 192, 48) and sync.dtype == torch.float32
    assert torch.allclose(clip.norm(dim=-1), torch.ones(1, 64), atol=1e-5)


@pytest.mark.parametrize("duration_s", [0.64, 1.0, 2.5, 5.0])
def test_shapes_follow_duration(duration_s):
    enc = DemoEncoders()
    t_clip, t_sync = int(duration_s * 8), int(duration_s * 25)
    clip = enc.clip_features(random_frames(2, max(t_clip, 1), 48, seed=2))
    sync = enc.sync_features(random_frames(2, t_sync, 32, seed=3))
    assert clip.shape == (2, max(t_clip, 1), enc.clip_dim)
    assert sync.shape == (2, ((t_sync - 16) // 8 + 1) * 8, enc.sync_dim)


def test_sync_needs_one_segment():
    with pytest.raises(ValueError, match="at least 16 frames"):
        DemoEncoders().sync_features(random_frames(1, 15, 32, seed=0))


def test_bad_frames_are_rejected_with_the_expected_layout():
    with pytest.raises(ValueError, match=r"uint8 \(B, T, H, W, 3\)"):
        DemoEncoders().clip_features(torch.zeros(1, 4, 3, 32, 32, dtype=torch.uint8))


def test_features_are_deterministic_bit_for_bit():
    clip_frames, sync_frames = random_frames(2, 16, 96, seed=4), random_frames(2, 40, 64, seed=5)
    a, b = DemoEncoders(), DemoEncoders()
    assert torch.equal(a.clip_features(clip_frames), b.clip_features(clip_frames))
    assert torch.equal(a.sync_features(sync_frames), b.sync_features(sync_frames))
    # a different seed is a different (still fixed) projection
    assert not torch.equal(a.clip_features(clip_frames), DemoEncoders(seed=7).clip_features(clip_frames))


def test_clip_features_tell_scenes_apart():
    enc = DemoEncoders()
    frames = torch.cat([textured_still(4, 96, seed=10), textured_still(4, 96, seed=11)], dim=1)
    frames[:, 4:, :, :, 2] = 250  # second shot: strongly blue
    f = enc.clip_features(frames)[0]
    same_shot = torch.dot(f[0], f[3]).item()
    across_cut = torch.dot(f[0], f[4]).item()
    assert same_shot == pytest.approx(1.0, abs=1e-5)
    assert across_cut < 0.9


def test_sync_tokens_are_in_time_order_and_land_near_every_latent_frame():
    """Token i describes (i + 0.5) / 24 s of an 8 s window; the network resamples 192 tokens to
    250 latents nearest-exact, so latent n (centred at (n + 0.5) / 31.25 s) gets token
    floor((n + 0.5) * 192 / 250), whose moment is at most half a token (1/48 s) away."""
    times = sync_token_times(200)
    assert times.shape == (192,)
    torch.testing.assert_close(times, (torch.arange(192, dtype=torch.float64) + 0.5) / 24)
    latent_t = (torch.arange(250, dtype=torch.float64) + 0.5) / 31.25
    token = torch.nn.functional.interpolate(torch.arange(192.0)[None, None], size=250, mode="nearest-exact")[
        0, 0
    ].long()
    assert (times[token] - latent_t).abs().max() <= 1 / 48 + 1e-9


@pytest.mark.parametrize("k", [17, 20, 33])
def test_a_flash_moves_only_the_tokens_at_its_moment(k):
    enc = DemoEncoders()
    base = textured_still(48, 64, seed=12)
    flashed = base.clone()
    flashed[:, k] = 255
    diff = (enc.sync_features(flashed) - enc.sync_features(base)).abs().amax(dim=-1)[0]
    changed = set(diff.nonzero().flatten().tolist())
    # the change into frame k and back out of it (k + 1), the centroid's velocity and
    # acceleration use one frame either side: nothing further than two frames away moves,
    # except the impact's trace, which lasts _IMPACT_HOLD frames after it
    assert changed and changed <= tokens_near(set(range(k, k + _IMPACT_HOLD)), 48, reach=2.0)
    assert not changed <= tokens_near({k}, 48, reach=2.0)  # the trace is there
    peak_time = sync_token_times(48)[int(diff.argmax())] * SYNC_FPS
    assert abs(peak_time - k) <= 1.0  # the strongest change is at the flash, not a neighbour


def test_a_one_frame_shake_moves_the_tokens_at_its_moment():
    enc = DemoEncoders()
    base = textured_still(40, 64, seed=13)
    base[:, :, 20:36, 20:36] = 230  # a bright square
    shaken = base.clone()
    k = 25
    shaken[:, k] = torch.roll(base[:, k], shifts=(6, 6), dims=(1, 2))  # the square jumps for one frame
    changed = changed_tokens(enc.sync_features(shaken), enc.sync_features(base))
    assert changed and changed <= tokens_near(set(range(k, k + _IMPACT_HOLD)), 40, reach=2.0)


def test_motion_energy_grows_with_motion():
    enc = DemoEncoders()
    base = textured_still(24, 64, seed=14)
    small, large = base.clone(), base.clone()
    small[:, 10, 0:8, 0:8] = 255
    large[:, 10] = 255
    ref = enc.sync_features(base)
    token = int((sync_token_times(24) * SYNC_FPS - 10).abs().argmin())  # the token at frame 10
    far = int((sync_token_times(24) * SYNC_FPS - 2).abs().argmin())  # 8 frames before it
    d_small = (enc.sync_features(small) - ref)[0, token].norm()
    d_large = (enc.sync_features(large) - ref)[0, token].norm()
    assert torch.equal(enc.sync_features(small)[0, far], ref[0, far])
    assert 0 < d_small < d_large


def bouncing_square(rgb: tuple[int, int, int], bounce_frame: int = 20, frames: int = 40) -> torch.Tensor:
    """A 10 x 10 square of colour `rgb` falls 2 px a frame, reverses at `bounce_frame`, rises."""
    clip = torch.full((1, frames, 64, 64, 3), 200, dtype=torch.uint8)
    for f in range(frames):
        y = 2 + 2 * f if f <= bounce_frame else 2 + 2 * (2 * bounce_frame - f)
        clip[0, f, y : y + 10, 27:37] = torch.tensor(rgb, dtype=torch.uint8)
    return clip


def test_a_bounce_is_a_peak_of_acceleration_at_its_frame():
    """A square falls at constant speed, reverses at frame 20 (a bounce) and rises: |acceleration|
    of the foreground centroid (event descriptor 8) peaks at frame 20, and a square that keeps
    falling at the same speed has no such peak while it is in the picture (until frame 26)."""

    acc = _event_descriptors(_pooled_frames(bouncing_square((220, 40, 40)), 32))[0, :, 8]
    steady = _event_descriptors(_pooled_frames(bouncing_square((220, 40, 40), bounce_frame=40), 32))[0, :, 8]
    assert int(acc[5:35].argmax()) + 5 == 20
    assert acc[20] > 10 * steady[5:25].max()


# Event descriptor columns: the foreground's colour, the impact, its trace, and their products.
LOOK, IMPACT, TRACE, LOOK_AT_IMPACT, LOOK_IN_TRACE = slice(12, 15), 15, 16, slice(17, 20), slice(20, 23)


def test_the_look_of_what_bounces_rides_on_its_impact():
    """What sounds depends on what is hit and when: at the bounce the token carries the square's
    colour times the impact, and a trace of it that fades frame by frame afterwards, not before."""
    for rgb in ((220, 40, 40), (40, 80, 220)):
        ev = _event_descriptors(_pooled_frames(bouncing_square(rgb), 32))[0]
        colour = (torch.tensor(rgb) / 255 - 0.5) * 2
        # pooling blends the square's edge cells with the grey floor, which shrinks the look
        # towards grey but cannot turn its direction: a cosine, not equality
        assert F.cosine_similarity(ev[5:35, LOOK], colour.expand(30, 3), dim=-1).min() > 0.95
        assert int(ev[5:35, IMPACT].argmax()) + 5 == 20
        assert ev[20, IMPACT] > 10 * ev[5:18, IMPACT].max()
        assert F.cosine_similarity(ev[20, LOOK_AT_IMPACT], colour, dim=0) > 0.95
        # the trace holds the impact and decays by _IMPACT_DECAY a frame unless a new one is larger
        after = ev[20, TRACE] * _IMPACT_DECAY ** torch.arange(1, 6)
        assert torch.all(ev[21:26, TRACE] >= after * (1 - 1e-6))
        assert ev[25, TRACE] < 0.5 * ev[20, TRACE]
        assert ev[:18, TRACE].max() < 0.1 * ev[20, TRACE]  # nothing before (not even the window's edge)
        assert ev[20 + _IMPACT_HOLD + 1 : 35, TRACE].max() < 0.1 * ev[20, TRACE]  # and it ends
        assert torch.allclose(ev[:, LOOK_IN_TRACE], ev[:, LOOK] * ev[:, TRACE : TRACE + 1] * 2)


def test_clip_features_see_a_small_object_s_colour_through_its_background():
    """The foreground look of the clip descriptor: the moving square's colour, zero for a still clip."""
    red = _foreground_look(_pooled_frames(bouncing_square((220, 40, 40)), 32))[0]
    blue = _foreground_look(_pooled_frames(bouncing_square((40, 80, 220)), 32))[0]
    assert (red[5:35, 0] > 0).all() and (red[5:35, 2] < 0).all()
    assert (blue[5:35, 0] < 0).all() and (blue[5:35, 2] > 0).all()
    still = _foreground_look(_pooled_frames(textured_still(12, 64, seed=3), 32))
    assert torch.equal(still, torch.zeros_like(still))


def test_text_features_hashed_bag_of_words():
    enc = DemoEncoders(text_dim=32, text_seq_len=4)
    out = enc.text_features(["A dog barks", "a DOG barks!", "barks dog", "", "one two three four five six"])
    assert out.shape == (5, 4, 32)
    assert torch.equal(out[0], out[1])  # case and punctuation do not matter
    assert not torch.equal(out[0], out[2])  # word order does (one word per position)
    assert torch.equal(out[3], torch.zeros(4, 32))
    norms = out.norm(dim=-1)
    assert torch.allclose(norms[0], torch.tensor([1.0, 1.0, 1.0, 0.0]))
    assert torch.allclose(norms[4], torch.ones(4))  # words past the end summed into the last slot
    # the same word sits at the same place whatever the prompt
    assert torch.equal(enc.text_features(["dog"])[0, 0], enc.text_features(["dog runs"])[0, 0])


def test_text_features_do_not_depend_on_the_process_hash_seed():
    code = (
        "import torch, sys; from dub.model.demo import DemoEncoders; "
        "sys.stdout.buffer.write(DemoEncoders().text_features(['rain on a tin roof']).numpy().tobytes())"
    )
    seed = "2" if os.environ.get("PYTHONHASHSEED") == "1" else "1"
    other = subprocess.run(
        [sys.executable, "-c", code],
        env=dict(os.environ, PYTHONHASHSEED=seed),
        capture_output=True,
        check=True,
        cwd=os.path.dirname(os.path.dirname(__file__)),
    ).stdout
    assert other == DemoEncoders().text_features(["rain on a tin roof"]).numpy().tobytes()


# -- codec ---------------------------------------------------------------------------------


def bursts(onsets_s: list[float], length: int, seed: int) -> torch.Tensor:
    """Decaying noise bursts (clicks, hits) starting at known times."""
    gen = torch.Generator().manual_seed(seed)
    wav = torch.zeros(1, length)
    n = int(0.04 * SR)
    envelope = torch.exp(-torch.arange(n) / (0.008 * SR))
    for t in onsets_s:
        start = int(t * SR)
        wav[0, start : start + n] = 0.4 * torch.randn(n, generator=gen) * envelope
    return wav


def energy_onsets(wav: torch.Tensor, refractory_s: float = 0.25) -> list[float]:
    """Times where short-time energy first rises above 5 % of its maximum."""
    hop, win = 64, 256
    energy = wav.unfold(-1, win, hop).pow(2).mean(-1)
    above = energy > 0.05 * energy.max()
    onsets: list[float] = []
    for i in range(1, len(above)):
        t = i * hop / SR
        if above[i] and not above[i - 1] and (not onsets or t - onsets[-1] > refractory_s):
            onsets.append(t)
    return onsets


def test_codec_round_trip_keeps_onsets_within_one_hop():
    codec = DemoCodec()
    truth = [0.31, 1.0, 1.73, 2.5, 3.14, 4.62, 5.05, 6.9]
    wav = bursts(truth, 8 * SR, seed=0)
    mean, std = codec.encode(wav)
    out = codec.decode(mean)
    reference, decoded = energy_onsets(wav[0]), energy_onsets(out[0])
    assert len(reference) == len(truth)
    assert len(decoded) == len(reference), (reference, decoded)
    hop_s = codec.hop_length / SR
    for ref, got in zip(reference, decoded):
        assert abs(got - ref) <= hop_s, (ref, got)
    assert torch.all(std == codec.latent_std)


def test_codec_round_trip_of_a_steady_room_tone_starts_without_an_onset():
    """Events over a steady noise floor, as foley-synth renders them: the decoded floor is there
    from the first sample. A decode that began with zeros made the floor's start an onset, in 18
    of 30 foley-synth recordings (dub report counted it against precision)."""
    from dub.workflows.metrics.onsets import detect_onsets

    codec = DemoCodec()
    truth = [1.0, 2.5, 4.62, 6.9]
    tone = 0.003 * torch.randn(1, 8 * SR, generator=torch.Generator().manual_seed(3))
    out = codec.decode(codec.encode(bursts(truth, 8 * SR, seed=1) + tone)[0])[0]
    first, floor = out[: codec.pad].square().mean().sqrt(), out[SR // 2 : SR - 800].square().mean().sqrt()
    # Griffin-Lim's phase is not the noise's, so the levels agree only roughly: within 2x
    assert 0.5 < float(first / floor) < 2.0
    detected = detect_onsets(out.numpy(), SR).times_s
    assert len(detected) == len(truth) and min(detected) > truth[0] - 0.05, detected


def test_codec_lengths_follow_latents_per_second():
    codec = DemoCodec()
    assert codec.latents_per_second == 31.25
    mean, std = codec.encode(torch.zeros(2, 8 * SR))
    assert mean.shape == std.shape == (2, 250, codec.latent_dim)
    assert codec.decode(mean[:1]).shape == (1, 8 * SR)
    odd = codec.encode(torch.zeros(1, SR + 100))[0]
    assert odd.shape[1] == 32  # ceil((16000 + 100) / 512)
    assert codec.decode(odd).shape[1] == 32 * codec.hop_length
    with pytest.raises(ValueError, match=r"\(B, N, 20\)"):
        codec.decode(torch.zeros(1, 10, 7))


def test_codec_is_deterministic_and_keeps_loudness_order():
    codec = DemoCodec()
    gen = torch.Generator().manual_seed(3)
    quiet = 0.05 * torch.randn(1, SR, generator=gen)
    loud = 10 * quiet
    lat_q, lat_l = codec.encode(quiet)[0], codec.encode(loud)[0]
    assert torch.equal(codec.decode(lat_q), codec.decode(lat_q))
    assert codec.decode(lat_l).pow(2).mean() > 50 * codec.decode(lat_q).pow(2).mean()
    silence = codec.decode(codec.encode(torch.zeros(1, SR))[0])
    assert silence.abs().max() < 1e-3


# -- the demo bundle -----------------------------------------------------------------------


def test_unknown_bundle_lists_the_names():
    from dub.model.runtime.bundles import BUNDLES, UnknownBundleError, resolve_bundle

    with pytest.raises(UnknownBundleError) as info:
        resolve_bundle("mmaudio-huge")
    for name in BUNDLES:
        assert name in str(info.value)
    assert {"demo", "mmaudio-small-16k", "mmaudio-large-44k-v2", "mf-mjt-small-16k"} <= set(BUNDLES)


def test_untrained_demo_network_is_a_clear_error(tmp_path):
    from dub.model.runtime.bundles import BUNDLES, DemoNotTrainedError, bundle_info, load_bundle
    from dub.model.weights.registry import WeightsRegistry

    absent = dataclasses.replace(BUNDLES["demo"], network_asset="default/not_there.safetensors")
    for call in (
        lambda: bundle_info(absent, registry=WeightsRegistry(tmp_path)),
        lambda: load_bundle(absent, WeightsRegistry(tmp_path)),
    ):
        with pytest.raises(DemoNotTrainedError, match="not trained yet") as info:
            call()
        assert "not_there.safetensors" in str(info.value) and "--checkpoint" in str(info.value)


def test_mmaudio_bundle_lists_every_missing_file(tmp_path):
    from dub.model.runtime.bundles import bundle_info
    from dub.model.weights.registry import MissingWeightsError, WeightsRegistry

    with pytest.raises(MissingWeightsError) as info:
        bundle_info("mmaudio-small-16k", registry=WeightsRegistry(tmp_path))
    message = str(info.value)
    for name in (
        "mmaudio_small_16k.pth",
        "v1-16.pth",
        "best_netG.pt",
        "synchformer_state_dict.pth",
        "open_clip_pytorch_model.bin",
        "https://huggingface.co/hkchengrex/MMAudio",
    ):
        assert name in message
    assert "open_clip_config.json" not in message  # optional: the built-in config is used


def test_demo_encoders_and_codec_fit_the_demo_network():
    from dub.model.network.config import DEMO_STACK_WIDTHS, get_preset
    from dub.model.runtime.bundles import BUNDLES, build_codec, build_encoders, check_compatible, network_config

    bundle = BUNDLES["demo"]
    config = network_config(bundle)
    encoders, codec = build_encoders(bundle, {}, "cpu"), build_codec(bundle, {}, "cpu")
    assert isinstance(encoders, DemoEncoders) and isinstance(codec, DemoCodec)
    check_compatible(config, encoders, codec)
    assert config == get_preset("demo_narrow")  # what `dub train` makes on demo-stack shards
    # `dub train --preset tiny`: the wider network bundled before, its widths from the shards
    check_compatible(dataclasses.replace(get_preset("tiny"), **DEMO_STACK_WIDTHS), encoders, codec)
    assert codec.sample_rate == bundle.sample_rate == config.sample_rate == 16_000
    assert round(bundle.window_s * codec.latents_per_second) == config.latent_seq_len
    assert bundle.window_s * 8 == config.clip_seq_len
    assert num_sync_segments(int(bundle.window_s * 25)) * 8 == config.sync_seq_len


def test_demo_bundle_generates_with_a_checkpoint(tmp_path):
    from dub.model.network.transformer import MFMJT
    from dub.model.runtime.bundles import BUNDLES, bundle_info, load_generator, network_config
    from dub.model.runtime.generator import SamplerConfig, WindowBatch
    from dub.model.weights.checkpoint import save_checkpoint
    from dub.model.weights.registry import WeightsRegistry

    torch.manual_seed(0)
    checkpoint = save_checkpoint(MFMJT(network_config(BUNDLES["demo"])), tmp_path / "demo.safetensors")
    registry = WeightsRegistry(tmp_path / "weights")
    info = bundle_info("demo", checkpoint=checkpoint, registry=registry)
    assert info.sample_rate == 16_000 and len(info.weights_hash) == 64
    generator = load_generator("demo", checkpoint=checkpoint, registry=registry)
    batch = WindowBatch(
        clip_frames=random_frames(1, 64, 32, seed=20),
        sync_frames=random_frames(1, 200, 32, seed=21),
        prompts=["a door slams"],
        negative_prompts=[""],
        seeds=[7],
    )
    wav = generator.generate(batch, SamplerConfig(**info.sampler))
    assert wav.shape == (1, 8 * 16_000) and torch.isfinite(wav).all() and wav.abs().max() > 0


def test_weights_trained_with_guidance_default_to_cfg_one(tmp_path):
    """MeanFlow's training-time guidance puts CFG in the weights: `dub generate` on such a
    checkpoint must not guide a second time by default; other weights keep the bundle's CFG."""
    from dub.model.network.transformer import MFMJT
    from dub.model.runtime.bundles import BUNDLES, bundle_info, network_config, sampler_defaults
    from dub.model.weights.checkpoint import save_checkpoint
    from dub.model.weights.registry import WeightsRegistry

    net = MFMJT(network_config(BUNDLES["demo"]))
    guided = save_checkpoint(net, tmp_path / "guided.safetensors", metadata={"guidance_in_weights": True})
    plain = save_checkpoint(net, tmp_path / "plain.safetensors", metadata={"guidance_in_weights": False})
    bundle_cfg = BUNDLES["demo"].sampler.cfg
    assert bundle_cfg > 1.0
    assert sampler_defaults("demo", guided).cfg == 1.0
    assert sampler_defaults("demo", plain).cfg == bundle_cfg
    registry = WeightsRegistry(tmp_path / "weights")
    assert bundle_info("demo", checkpoint=guided, registry=registry).sampler["cfg"] == 1.0


def test_generator_encodes_each_recent_prompt_once():
    """A run's --prompt and --negative-prompt repeat in every batch: the text tower sees each
    distinct prompt once, the features are the ones it gave, and the cache stays bounded."""
    from dub.model.runtime import generator as generator_module
    from dub.model.runtime.bundles import load_generator

    gen = load_generator("demo")
    encoded: list[list[str]] = []
    text_features = gen.encoders.text_features

    def counting(prompts):
        encoded.append(list(prompts))
        return text_features(prompts)

    gen.encoders.text_features = counting
    first = gen._text(["a dog barks", "", "rain", "a dog barks"])
    again = gen._text(["rain", "a dog barks", "thunder"])
    assert encoded == [["a dog barks", "rain"], ["thunder"]]
    torch.testing.assert_close(first[0], text_features(["a dog barks"])[0], rtol=0, atol=0)
    torch.testing.assert_close(first[3], first[0], rtol=0, atol=0)
    torch.testing.assert_close(again[0], first[2], rtol=0, atol=0)
    torch.testing.assert_close(first[1], gen.network.empty_string_feat.float(), rtol=0, atol=0)

    many = [f"prompt {i}" for i in range(generator_module.TEXT_CACHE_PROMPTS + 10)]
    gen._text(many)
    assert len(gen._text_cache) == generator_module.TEXT_CACHE_PROMPTS
    assert "a dog barks" not in gen._text_cache and many[-1] in gen._text_cache  # least recent out first
