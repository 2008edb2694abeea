"""Model bundles: the encoders, codec, network and weights files that make one usable model,
with its sampler defaults. `dub generate --model NAME` picks one.

    demo                  the bundled default: demo encoders + demo codec (no downloads) and a
                          small MF-MJT network shipped in model/assets/default/ (a toy, see
                          model/demo); runs on a laptop CPU.
    mmaudio-*             MMAudio's released networks with CLIP + Synchformer + VAE + BigVGAN:
                          25 Euler steps, CFG 4.5 (the multi-step baseline).
    mf-mjt-small-16k      your own MF-MJT checkpoint (from `dub train`) on MMAudio's small 16k
                          stack: one step.

Weights files are named by role -> (registry model, file) and resolved through the local
weights registry (model/weights/registry.py); nothing downloads.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, NamedTuple

from dub.model.weights.registry import MissingWeightsError, WeightsRegistry, file_digests

ASSETS_DIR = Path(__file__).resolve().parents[1] / "assets"
EncodersKind = Literal["demo", "mmaudio"]
CodecKind = Literal["demo", "mmaudio-16k", "mmaudio-44k"]
# Roles a bundle can run without (built-in defaults exist for them).
OPTIONAL_ROLES = frozenset({"clip_config", "vocoder_config"})
SAMPLE_RATES: dict[str, int] = {"demo": 16_000, "mmaudio-16k": 16_000, "mmaudio-44k": 44_100}
# Frame rates and sizes of the encoder protocol (docs/ARCHITECTURE.md), the same for both stacks.
CLIP_FPS, CLIP_SIZE, SYNC_FPS, SYNC_SIZE = 8, 384, 25, 224


class UnknownBundleError(ValueError):
    pass


class DemoNotTrainedError(MissingWeightsError):
    """The bundled demo network file is absent: it has not been trained (or shipped) yet."""


class IncompatibleBundleError(ValueError):
    pass


@dataclass(frozen=True)
class SamplerDefaults:
    """Default sampler of a bundle; the fields of dub.model.runtime.generator.SamplerConfig."""

    sampler: Literal["meanflow", "euler"]
    steps: int
    cfg: float
    rescale: Literal["std", "proj", "none"]
    phi: float

    def as_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclass(frozen=True)
class ModelBundle:
    name: str
    description: str
    network_preset: str
    encoders: EncodersKind
    codec: CodecKind
    weights: Mapping[str, tuple[str, str]]  # role -> (registry model, file)
    sampler: SamplerDefaults
    network_overrides: Mapping[str, Any] = field(default_factory=dict)  # NetworkConfig fields over the preset
    network_asset: str | None = None  # network weights shipped under model/assets instead of the registry
    window_s: float = 8.0  # clip length the network was trained on

    @property
    def sample_rate(self) -> int:
        return SAMPLE_RATES[self.codec]

    def as_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["weights"] = {role: list(ref) for role, ref in self.weights.items()}
        d["network_overrides"] = dict(self.network_overrides)
        return d

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ModelBundle:
        d = dict(data)
        d["weights"] = {role: (ref[0], ref[1]) for role, ref in d.get("weights", {}).items()}
        d["sampler"] = SamplerDefaults(**d["sampler"])
        d["network_overrides"] = dict(d.get("network_overrides") or {})
        return cls(**d)


def _mmaudio_weights(network: tuple[str, str], rate: Literal["16k", "44k"]) -> dict[str, tuple[str, str]]:
    weights = {
        "network": network,
        "clip": ("clip-dfn5b-h14-384", "open_clip_pytorch_model.bin"),
        "clip_config": ("clip-dfn5b-h14-384", "open_clip_config.json"),
        "synchformer": ("mmaudio-ext", "synchformer_state_dict.pth"),
    }
    if rate == "16k":
        weights.update(vae=("mmaudio-ext", "v1-16.pth"), vocoder=("mmaudio-ext", "best_netG.pt"))
    else:
        weights.update(
            vae=("mmaudio-ext", "v1-44.pth"),
            vocoder=("bigvgan-v2-44k", "bigvgan_generator.pt"),
            vocoder_config=("bigvgan-v2-44k", "config.json"),
        )
    return weights


# MMAudio's own defaults (mmaudio/eval_utils.py: 25 Euler steps, cfg_strength 4.5), no rescale.
MMAUDIO_SAMPLER = SamplerDefaults("euler", steps=25, cfg=4.5, rescale="none", phi=0.0)
# One MeanFlow step with CFG and the std rescale (SPEC 2.3); provisional until measured.
MF_MJT_SAMPLER = SamplerDefaults("meanflow", steps=1, cfg=4.5, rescale="std", phi=0.7)
# The demo model's, measured on a foley-synth split of its own (docs/benchmarks.md, "Guidance
# at one step"): at one step CFG's difference of two noise-dependent predictions comes out as
# grain, and full std matching (phi 1) with a milder weight keeps the sync at a fraction of
# the grain (log-mel FAD about 3.7x lower than 4.5 / 0.7)
DEMO_SAMPLER = SamplerDefaults("meanflow", steps=1, cfg=2.0, rescale="std", phi=1.0)


def _mmaudio_bundle(preset: str, rate: Literal["16k", "44k"], description: str) -> ModelBundle:
    name = "mmaudio-" + preset.replace("_", "-")
    return ModelBundle(
        name,
        description,
        preset,
        "mmaudio",
        f"mmaudio-{rate}",
        _mmaudio_weights(("mmaudio", f"mmaudio_{preset}.pth"), rate),
        MMAUDIO_SAMPLER,
    )


BUNDLES: dict[str, ModelBundle] = {
    b.name: b
    for b in (
        ModelBundle(
            "demo",
            "bundled demo model: hand-made video features + Griffin-Lim codec + a small MF-MJT "
            "network; no downloads, runs on CPU, toy quality",
            "demo_narrow",
            "demo",
            "demo",
            {},
            DEMO_SAMPLER,
            network_asset="default/mf_mjt_demo.safetensors",
        ),
        _mmaudio_bundle("small_16k", "16k", "MMAudio small, 16 kHz (multi-step baseline)"),
        _mmaudio_bundle("small_44k", "44k", "MMAudio small, 44.1 kHz (multi-step baseline)"),
        _mmaudio_bundle("medium_44k", "44k", "MMAudio medium, 44.1 kHz (multi-step baseline)"),
        _mmaudio_bundle("large_44k", "44k", "MMAudio large, 44.1 kHz (multi-step baseline)"),
        _mmaudio_bundle("large_44k_v2", "44k", "MMAudio large v2, 44.1 kHz (multi-step baseline)"),
        ModelBundle(
            "mf-mjt-small-16k",
            "your MF-MJT small 16 kHz checkpoint on MMAudio's 16 kHz stack (one step)",
            "small_16k",
            "mmaudio",
            "mmaudio-16k",
            _mmaudio_weights(("mf-mjt", "mf_mjt_small_16k.safetensors"), "16k"),
            MF_MJT_SAMPLER,
        ),
    )
}


def resolve_bundle(name: str | ModelBundle) -> ModelBundle:
    if isinstance(name, ModelBundle):
        return name
    try:
        return BUNDLES[name]
    except KeyError:
        listing = "; ".join(f"{b.name}: {b.description}" for b in BUNDLES.values())
        raise UnknownBundleError(f"unknown model {name!r}. Available models: {listing}") from None


def network_config(bundle: ModelBundle):
    """The bundle's NetworkConfig: its preset with its overrides applied."""
    from dub.model.network.config import get_preset

    return dataclasses.replace(get_preset(bundle.network_preset), **dict(bundle.network_overrides))


# -- resolving weights files ---------------------------------------------------------------


def asset_path(bundle: ModelBundle) -> Path | None:
    return None if bundle.network_asset is None else ASSETS_DIR / bundle.network_asset


def weight_paths(
    bundle: ModelBundle,
    registry: WeightsRegistry,
    *,
    checkpoint: str | Path | None = None,
    verify: bool = False,
    network: bool = True,
) -> dict[str, Path]:
    """role -> local path of every weights file the bundle needs (optional roles only when
    present). All missing files are reported together, each with where it goes and its URL.
    `network=False`: only the encoders' and codec's files (feature extraction never runs the
    network, which for the demo bundle may not be trained yet)."""
    paths: dict[str, Path] = {}
    problems: list[str] = []
    if network and checkpoint is not None:
        path = Path(checkpoint).expanduser()
        if not path.is_file():
            problems.append(f"checkpoint not found: {path}")
        paths["network"] = path
    elif network and bundle.network_asset is not None:
        path = asset_path(bundle)
        if not path.is_file():
            raise DemoNotTrainedError(
                f"the bundled {bundle.name!r} model is not trained yet: {path} does not exist. Pass your own "
                "network with --checkpoint FILE (from `dub train`), or pick a model with downloadable weights "
                f"(`dub weights list`; models: {', '.join(BUNDLES)})."
            )
        paths["network"] = path
    for role, (model, file) in bundle.weights.items():
        if role == "network" and ("network" in paths or not network):
            continue  # an explicit checkpoint replaces the bundle's network file
        if role in OPTIONAL_ROLES:
            found = registry.locate(model, file)
            if found is not None:
                paths[role] = found
            continue
        try:
            paths[role] = registry.path(model, file, verify=verify)
        except MissingWeightsError as err:
            problems.append(str(err))
    if problems:
        raise MissingWeightsError(
            f"model {bundle.name!r} needs {len(problems)} weights file(s) that are not in {registry.root}:\n- "
            + "\n- ".join(problems)
        )
    return paths


def weights_hash(bundle: ModelBundle, registry: WeightsRegistry, paths: Mapping[str, Path]) -> str:
    """One sha256 over every weights file's sha256 (registry files use the registry's cache):
    identifies the weights a run used, so a changed file means a different run."""
    lines = []
    refs = dict(bundle.weights)
    for role in sorted(paths):
        ref = refs.get(role)
        if ref is not None and paths[role] == registry.locate(*ref):
            digest = registry.digest(*ref)
        else:
            digest = file_digests(paths[role]).sha256
        lines.append(f"{role}={digest}")
    return hashlib.sha256("\n".join(lines).encode()).hexdigest()


# -- info and loading ----------------------------------------------------------------------


@dataclass(frozen=True)
class BundleInfo:
    """What a run needs to know about a model before loading it (cheap: hashes, no weights)."""

    name: str
    description: str
    sample_rate: int
    window_s: float
    clip_fps: int
    clip_size: int
    sync_fps: int
    sync_size: int
    sampler: dict[str, Any]
    weights_hash: str
    weights: dict[str, str]  # role -> path
    checkpoint: str | None = None

    def as_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def bundle_info(
    name: str | ModelBundle,
    checkpoint: str | Path | None = None,
    registry: WeightsRegistry | None = None,
    *,
    verify: bool = True,
) -> BundleInfo:
    """Sizes, rates, sampler defaults and the weights hash of a bundle, without loading weights.
    Raises the missing-weights (or demo-not-trained) and verification errors up front, so a run
    fails before starting any worker (and workers find the verification cached)."""
    bundle = resolve_bundle(name)
    registry = registry or WeightsRegistry()
    paths = weight_paths(bundle, registry, checkpoint=checkpoint, verify=verify)
    return BundleInfo(
        name=bundle.name,
        description=bundle.description,
        sample_rate=bundle.sample_rate,
        window_s=_checkpoint_window_s(checkpoint) or bundle.window_s,
        clip_fps=CLIP_FPS,
        clip_size=CLIP_SIZE,
        sync_fps=SYNC_FPS,
        sync_size=SYNC_SIZE,
        sampler=sampler_defaults(bundle, checkpoint).as_dict(),
        weights_hash=weights_hash(bundle, registry, paths),
        weights={role: str(p) for role, p in sorted(paths.items())},
        checkpoint=None if checkpoint is None else str(checkpoint),
    )


def sampler_defaults(name: str | ModelBundle, checkpoint: str | Path | None = None) -> SamplerDefaults:
    """The sampler a model runs by default: its bundle's, except that weights trained with
    MeanFlow's guidance folded in (their metadata says so) default to cfg 1: the one step is
    already guided, and CFG on top would guide twice."""
    bundle = resolve_bundle(name)
    weights = checkpoint if checkpoint is not None else asset_path(bundle)
    if _checkpoint_metadata(weights).get("guidance_in_weights"):
        return dataclasses.replace(bundle.sampler, cfg=1.0)
    return bundle.sampler


def _checkpoint_window_s(checkpoint: str | Path | None) -> float | None:
    """The window a `dub train` checkpoint was trained on (stored in its metadata), if any."""
    value = _checkpoint_metadata(checkpoint).get("window_s")
    try:
        return float(value) if value is not None else None
    except (ValueError, TypeError):
        return None


def _checkpoint_metadata(checkpoint: str | Path | None) -> dict[str, Any]:
    """What `dub train` stored in a checkpoint's metadata; {} for other or unreadable files."""
    if checkpoint is None or Path(checkpoint).suffix != ".safetensors":
        return {}
    from dub.model.weights.checkpoint import checkpoint_metadata

    try:
        meta = checkpoint_metadata(checkpoint)
    except (OSError, ValueError, TypeError, AttributeError):
        return {}
    return meta if isinstance(meta, dict) else {}


class LoadedBundle(NamedTuple):
    bundle: ModelBundle
    encoders: Any  # encoder protocol (DemoEncoders | MMAudioEncoders)
    codec: Any  # codec protocol (DemoCodec | MMAudioCodec)
    network: Any  # dub.model.network.transformer.MFMJT


def load_bundle(
    bundle: str | ModelBundle,
    registry: WeightsRegistry | None = None,
    device: str = "cpu",
    *,
    checkpoint: str | Path | None = None,
    verify: bool = True,
) -> LoadedBundle:
    """Build the bundle's encoders, codec and network on `device` (eval mode).

    `checkpoint` replaces the bundle's network weights (its NetworkConfig comes from the file).
    With `verify`, registry files are checked against their checksums (cached while unchanged).
    """
    bundle = resolve_bundle(bundle)
    registry = registry or WeightsRegistry()
    paths = weight_paths(bundle, registry, checkpoint=checkpoint, verify=verify)
    network = _load_network(bundle, paths["network"], explicit=checkpoint is not None)
    encoders = build_encoders(bundle, paths, device, network.config)
    codec = build_codec(bundle, paths, device, network.config)
    check_compatible(network.config, encoders, codec)
    return LoadedBundle(bundle, encoders, codec, network.to(device).eval())


def load_feature_stack(
    bundle: str | ModelBundle, registry: WeightsRegistry | None = None, device: str = "cpu", *, verify: bool = True
):
    """(encoders, codec) of a bundle, without its network (what `dub extract` runs)."""
    bundle = resolve_bundle(bundle)
    paths = weight_paths(bundle, registry or WeightsRegistry(), verify=verify, network=False)
    return build_encoders(bundle, paths, device), build_codec(bundle, paths, device)


def load_generator(
    name: str | ModelBundle,
    checkpoint: str | Path | None = None,
    device: str = "cpu",
    registry: WeightsRegistry | None = None,
):
    """A dub.model.runtime.generator.Generator for the bundle (what a generate worker runs)."""
    import torch

    from dub.model.runtime.generator import Generator

    loaded = load_bundle(name, registry, device, checkpoint=checkpoint)
    dtype = torch.bfloat16 if str(device).startswith("cuda") else torch.float32  # bf16 autocast on GPUs
    return Generator(loaded.network, loaded.encoders, loaded.codec, device=device, dtype=dtype)


def _load_network(bundle: ModelBundle, path: Path, *, explicit: bool):
    from dub.model.weights.checkpoint import load_network

    if explicit or bundle.network_asset is not None:
        # our own checkpoints carry their NetworkConfig (and any window length)
        return load_network(path, config=None, duration_s=None if _has_stored_config(path) else bundle.window_s)
    return load_network(path, config=network_config(bundle), duration_s=None)


def _has_stored_config(path: Path) -> bool:
    if path.suffix != ".safetensors":
        return False
    from dub.model.weights.checkpoint import CONFIG_METADATA_KEY
    from dub.model.weights.state_dicts import safetensors_metadata

    return CONFIG_METADATA_KEY in safetensors_metadata(path)


def build_encoders(bundle: ModelBundle, paths: Mapping[str, Path], device: str, config=None):
    """The bundle's visual/text encoders; demo sizes follow the network config when given."""
    if bundle.encoders == "demo":
        from dub.model.demo import DemoEncoders

        cfg = config if config is not None else network_config(bundle)
        return DemoEncoders(
            clip_dim=cfg.clip_dim, sync_dim=cfg.sync_dim, text_dim=cfg.text_dim, text_seq_len=cfg.text_seq_len
        ).to(device)
    if bundle.encoders == "mmaudio":
        from dub.model.encoders.clip import load_clip_encoder
        from dub.model.encoders.mmaudio import MMAudioEncoders
        from dub.model.encoders.synchformer import load_synchformer

        model_cfg = None
        if "clip_config" in paths:
            raw = json.loads(Path(paths["clip_config"]).read_text())
            model_cfg = raw.get("model_cfg", raw)
        clip = load_clip_encoder(paths["clip"], model_cfg=model_cfg, device=device)
        return MMAudioEncoders(clip, load_synchformer(paths["synchformer"]), device)
    raise IncompatibleBundleError(f"unknown encoders kind {bundle.encoders!r} in bundle {bundle.name!r}")


def build_codec(bundle: ModelBundle, paths: Mapping[str, Path], device: str, config=None):
    """The bundle's codec; the demo codec's width follows the network's latent_dim when given."""
    if bundle.codec == "demo":
        from dub.model.demo import DemoCodec

        cfg = config if config is not None else network_config(bundle)
        return DemoCodec(latent_dim=cfg.latent_dim).to(device)
    if bundle.codec in ("mmaudio-16k", "mmaudio-44k"):
        from dub.model.codec.mmaudio import build_mmaudio_codec

        kind = "16k" if bundle.codec == "mmaudio-16k" else "44k"
        codec = build_mmaudio_codec(kind, paths["vae"], paths["vocoder"], paths.get("vocoder_config"))
        return codec.to(device)
    raise IncompatibleBundleError(f"unknown codec kind {bundle.codec!r} in bundle {bundle.name!r}")


def check_compatible(config, encoders, codec) -> None:
    """The network's condition and latent widths must match what the encoders and codec give."""
    pairs = [
        ("clip_dim", getattr(encoders, "clip_dim", None)),
        ("sync_dim", getattr(encoders, "sync_dim", None)),
        ("text_dim", getattr(encoders, "text_dim", None)),
        ("text_seq_len", getattr(encoders, "text_seq_len", None)),
        ("latent_dim", getattr(codec, "latent_dim", None)),
    ]
    wrong = [
        f"network {name}={getattr(config, name)} but the {'codec' if name == 'latent_dim' else 'encoders'} give {value}"
        for name, value in pairs
        if value is not None and value != getattr(config, name)
    ]
    if wrong:
        raise IncompatibleBundleError(
            "the network does not fit this model's encoders/codec: "
            + "; ".join(wrong)
            + ". Use a checkpoint trained for this model."
        )
