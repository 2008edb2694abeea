"""scripts/random_generate_weights.py (random full-size weights for timing `dub generate` without
downloads): every role lands at the registry's stored path, passes the registry check that
`dub generate` runs, and reads back through dub's own loaders at the bundle's real sizes."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from dub.model.runtime.bundles import BUNDLES, build_codec, load_bundle, network_config, weight_paths
from dub.model.weights.registry import MissingWeightsError, WeightsRegistry, safetensors_metadata
from tests.script_helpers import load_script

# Every role but CLIP (~1e9 parameters, 2 GB even in bf16): ~1.1 GB on disk, ~10 s on 2 cores.
SMALL_ROLES = ("network", "clip_config", "synchformer", "vae", "vocoder")


def test_roles_land_where_the_registry_looks_and_load_at_full_size(tmp_path: Path) -> None:
    """Each written role of mmaudio-small-16k is at its stored path, passes the verification that
    `dub generate` runs (the files carry no publisher checksum: the script marks them), and reads
    back through the role's own loader with the values written; the one role not asked for (CLIP)
    is the only one `weight_paths` reports missing."""
    script = load_script("random_generate_weights")
    assert script.main([str(tmp_path), "--roles", ",".join(SMALL_ROLES)]) == 0
    bundle, registry = BUNDLES["mmaudio-small-16k"], WeightsRegistry(tmp_path)
    for role in SMALL_ROLES:
        model, file = bundle.weights[role]
        assert registry.locate(model, file) == tmp_path / registry.known_file(model, file).stored_relpath
    with pytest.raises(MissingWeightsError) as missing:
        weight_paths(bundle, registry, verify=True)  # a failed verification would raise another error
    assert "needs 1 weights file" in str(missing.value) and "open_clip_pytorch_model.bin" in str(missing.value)

    paths = {role: registry.locate(*bundle.weights[role]) for role in SMALL_ROLES}
    assert safetensors_metadata(paths["network"])["note"] == script.NOTE
    written = load_file(str(paths["network"]))
    assert written["audio_input_proj.0.weight"].dtype == torch.bfloat16
    assert not any(k.startswith("interval_embed.") for k in written)  # MMAudio's checkpoint layout
    from dub.model.runtime.bundles import _load_network

    network = _load_network(bundle, paths["network"], explicit=False)
    assert network.config == network_config(bundle)
    loaded = network.state_dict()
    assert all(torch.equal(loaded[k], v.float()) for k, v in written.items())

    from dub.model.encoders.synchformer import load_synchformer

    sync = load_synchformer(paths["synchformer"])
    sync_written = load_file(str(paths["synchformer"]))
    assert sync.embed_dim == 768 and sum(v.numel() for v in sync.state_dict().values()) > 100e6
    assert all(torch.equal(sync.state_dict()[k], v.float()) for k, v in sync_written.items())

    codec = build_codec(bundle, paths, "cpu")
    assert (codec.sample_rate, codec.latent_dim) == (16_000, 20)
    vocoder_written = load_file(str(paths["vocoder"]))
    assert torch.equal(codec.vocoder.state_dict()["conv_pre.weight"], vocoder_written["conv_pre.weight"].float())
    assert vocoder_written["resblocks.0.activations.0.upsample.filter"].dtype == torch.float32  # buffers keep theirs
    assert load_file(str(paths["vae"]))["data_std"].dtype == torch.float32

    clip_cfg = json.loads(paths["clip_config"].read_text())["model_cfg"]
    assert clip_cfg["vision_cfg"]["image_size"] == 378 and clip_cfg["embed_dim"] == 1024


def test_44k_bundle_writes_the_optional_vocoder_config_the_loader_reads(tmp_path: Path) -> None:
    """The 44.1 kHz bundles have an optional vocoder config role: the script writes it in the
    publisher's field names, and the registry and BigVGAN's config reader take it."""
    from dub.model.codec.bigvgan import BigVGANConfig

    script = load_script("random_generate_weights")
    assert script.main([str(tmp_path), "--model", "mmaudio-small-44k", "--roles", "vocoder_config"]) == 0
    registry = WeightsRegistry(tmp_path)
    found = registry.locate(*BUNDLES["mmaudio-small-44k"].weights["vocoder_config"])
    assert found is not None
    assert BigVGANConfig.from_json(found) == BigVGANConfig.bigvgan_v2_44k_128band_512x()


def test_refuses_the_demo_bundle_and_unknown_roles(tmp_path: Path) -> None:
    """Mistakes stop before anything is written: the demo ships its own weights, and a role the
    bundle does not have is named."""
    script = load_script("random_generate_weights")
    with pytest.raises(SystemExit) as demo:
        script.main([str(tmp_path), "--model", "demo"])
    assert demo.value.code == 2
    with pytest.raises(SystemExit) as role:
        script.main([str(tmp_path), "--roles", "network,vocoder_config"])  # a 44k-only role
    assert role.value.code == 2
    assert not tmp_path.exists() or not any(tmp_path.iterdir())


@pytest.mark.slow  # CLIP ViT-H/14 at full size: 3.1 GB of disk and ~6 GB of memory, ~25 s on 2 cores
def test_full_bundle_loads_end_to_end(tmp_path: Path) -> None:
    """With every role written, `load_bundle` (verification on, as `dub generate` loads it) builds
    the whole mmaudio-small-16k stack and its widths agree."""
    assert load_script("random_generate_weights").main([str(tmp_path)]) == 0
    loaded = load_bundle("mmaudio-small-16k", WeightsRegistry(tmp_path), "cpu")
    assert loaded.encoders.clip_dim == 1024 and loaded.encoders.sync_dim == 768
    assert loaded.codec.latent_dim == loaded.network.config.latent_dim == 20
