#!/usr/bin/env python3
"""Write full-size RANDOM weights for a generation model bundle (default mmaudio-small-16k) into a
weights folder, under the registry's stored names and in the layouts the loaders read, so that

    python scripts/random_generate_weights.py /tmp/genw
    DUB_WEIGHTS_DIR=/tmp/genw dub generate -m manifest.parquet -o out --model mmaudio-small-16k

runs end to end at real size without downloading anything: for timing `dub generate` itself (a
GPU run). The audio is meaningless (random networks); only the timings and the wiring are real.

Every role of the bundle (model/runtime/bundles.py) is built with dub's own classes at the
bundle's configuration, random init, and saved as safetensors:
  network      MF-MJT at the bundle's preset (MMAudio's layout for mmaudio-*: no interval embedding;
               a `dub train` checkpoint's for mf-mjt-*: all keys and its NetworkConfig in the metadata)
  clip         open_clip DFN5B ViT-H/14-378 (quick GELU), open_clip's key names
  clip_config  open_clip_config.json with that model_cfg (optional role)
  synchformer  the visual branch under the publisher's `vfeat_extractor.` prefix
  vae          MMAudio's VAE (16k or 44k), raw conv weights as in v1-16.pth / v1-44.pth
  vocoder      BigVGAN (MMAudio's 16k, or BigVGAN-v2 44k), weight norm already folded
  vocoder_config  the 44k BigVGAN's config.json (optional role)
Parameters are stored as bfloat16 by default (half the disk; the loaders copy them into their
float32 modules), buffers (the VAE's data statistics, BigVGAN's filters) in their own dtype.

The published files have checksums, which random ones fail: `dub generate` verifies through the
registry's cache (`<file>.dub-verify.json`), so each file written gets a cache entry saying
"unverifiable: random weights", with its sha256 (the run then need not hash gigabytes).
`dub weights verify` re-hashes and reports them as mismatches (true: they are not the
publisher's files), overwriting that entry: run this script again before the next generate.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

NOTE = "random weights for timing, not a real model"
DTYPES = ("bfloat16", "float32")


def _state(module, dtype) -> dict:
    """The module's state dict, contiguous on the CPU, floating parameters cast to `dtype`
    (buffers keep theirs: they are constants or statistics, not weights)."""
    params = {name for name, _ in module.named_parameters()}
    return {
        k: (v.to(dtype) if k in params and v.is_floating_point() else v).detach().cpu().contiguous()
        for k, v in module.state_dict().items()
    }


def _network(bundle, dtype):
    from dub.model.network.transformer import INTERVAL_EMBED_PREFIX, MFMJT
    from dub.model.runtime.bundles import network_config
    from dub.model.weights.checkpoint import CONFIG_METADATA_KEY

    config = network_config(bundle)
    state = _state(MFMJT(config), dtype)
    if bundle.weights["network"][0] == "mmaudio":  # MMAudio's checkpoints are plain flow networks
        return {k: v for k, v in state.items() if not k.startswith(INTERVAL_EMBED_PREFIX)}, {}
    return state, {CONFIG_METADATA_KEY: json.dumps(config.as_dict(), sort_keys=True)}  # as `dub train` stores it


def _clip(bundle, dtype):
    from dub.model.encoders.clip import build_clip_model, released_model_cfg

    return _state(build_clip_model(released_model_cfg()), dtype), {}


def _synchformer(bundle, dtype):
    from dub.model.encoders.synchformer import Synchformer, SynchformerConfig

    return _state(Synchformer(SynchformerConfig.released()), dtype), {}  # keys are vfeat_extractor.*


def _codec_configs(bundle):
    """(mel, VAE, vocoder) configurations of the bundle's MMAudio codec ("mmaudio-16k" / "-44k")."""
    from dub.model.codec.mmaudio import released_configs

    return released_configs(bundle.codec.removeprefix("mmaudio-"))


def _vae(bundle, dtype):
    from dub.model.codec.vae import VAE

    return _state(VAE(_codec_configs(bundle)[1]), dtype), {}


def _vocoder_config(bundle):
    return _codec_configs(bundle)[2]


def _vocoder(bundle, dtype):
    from dub.model.codec.bigvgan import BigVGAN

    return _state(BigVGAN(_vocoder_config(bundle)), dtype), {}


def _clip_config_json(bundle) -> dict:
    from dub.model.encoders.clip import released_model_cfg

    return {"model_cfg": released_model_cfg(), "note": NOTE}  # the loader reads "model_cfg"


def _vocoder_config_json(bundle) -> dict:
    return _vocoder_config(bundle).as_dict()  # the publisher's config.json field names


WEIGHT_ROLES = {
    "network": _network,
    "clip": _clip,
    "synchformer": _synchformer,
    "vae": _vae,
    "vocoder": _vocoder,
}
JSON_ROLES = {"clip_config": _clip_config_json, "vocoder_config": _vocoder_config_json}


def generation_bundles() -> list[str]:
    """Bundles whose weights come from the registry (the demo ships its own)."""
    from dub.model.runtime.bundles import BUNDLES

    return [name for name, b in BUNDLES.items() if b.weights and b.encoders == "mmaudio"]


def write_role(registry, bundle, role: str, dtype_name: str = "bfloat16") -> Path:
    """Write one role's random weights (or config json) where the registry looks for it."""
    import torch
    from safetensors.torch import save_file

    from dub.model.weights.registry import mark_unverifiable

    model_name, file_name = bundle.weights[role]
    target = registry.root / registry.known_file(model_name, file_name).stored_relpath
    target.parent.mkdir(parents=True, exist_ok=True)
    if role in JSON_ROLES:
        target.write_text(json.dumps(JSON_ROLES[role](bundle), indent=2) + "\n")
        return target
    state, metadata = WEIGHT_ROLES[role](bundle, getattr(torch, dtype_name))
    save_file(state, str(target), metadata={"note": NOTE, **metadata})
    # dub generate verifies registry files (through this cache); say what these are instead of a checksum result
    mark_unverifiable(target, f"{NOTE} (scripts/random_generate_weights.py); not the publisher's file")
    return target


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("out", type=Path, help="weights folder to write (pass it as DUB_WEIGHTS_DIR)")
    p.add_argument("--model", default="mmaudio-small-16k", help="bundle (default: %(default)s)")
    p.add_argument(
        "--roles",
        default=None,
        help="comma-separated roles to write (default: every role of the bundle)",
    )
    p.add_argument("--dtype", choices=DTYPES, default="bfloat16", help="storage dtype of parameters")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)

    import torch

    from dub.model.runtime.bundles import BUNDLES
    from dub.model.weights.registry import WeightsRegistry

    choices = generation_bundles()
    if args.model not in choices:
        p.error(f"--model must be one of {', '.join(choices)} (the demo bundle ships its own weights)")
    bundle = BUNDLES[args.model]
    roles = list(bundle.weights) if args.roles is None else [r.strip() for r in args.roles.split(",") if r.strip()]
    unknown = [r for r in roles if r not in bundle.weights]
    if unknown or not roles:
        p.error(f"--roles: {unknown or 'none given'}; {args.model} has roles {', '.join(bundle.weights)}")
    if "clip" in roles or "clip_config" in roles:
        try:
            import open_clip  # noqa: F401 - dub builds CLIP through open_clip
        except ImportError:
            print("error: the clip roles need open_clip (pip install open_clip_torch)", file=sys.stderr)
            return 1

    registry = WeightsRegistry(args.out)
    torch.manual_seed(args.seed)
    for role in roles:
        start = time.perf_counter()
        target = write_role(registry, bundle, role, args.dtype)
        size = target.stat().st_size / 1e6
        print(f"{role:15s} {size:9.1f} MB -> {target} ({time.perf_counter() - start:.1f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
