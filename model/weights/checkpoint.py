"""Loading and saving MF-MJT weights: MMAudio checkpoints (.pth, weights only) and our own
safetensors checkpoints, which carry the resolved NetworkConfig in their metadata.

Nothing is ever unpickled beyond tensors: `.pth` files go through `torch.load(weights_only=True)`.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from dub.model.network.config import NetworkConfig, get_preset, sample_rate_for_latent_dim
from dub.model.network.layers import gated_hidden_dim
from dub.model.network.transformer import DERIVED_BUFFER_KEYS, INTERVAL_EMBED_PREFIX, MFMJT
from dub.model.weights.state_dicts import (  # noqa: F401 - UnsafeCheckpointError is re-exported for callers
    WRAPPER_KEYS,
    StateDict,
    UnsafeCheckpointError,
    read_state_dict,
    safetensors_metadata,
    strict_load,
    strip_prefixes,
)
from dub.storage.atomic import atomic_path

CONFIG_METADATA_KEY = "dub.network_config"
USER_METADATA_KEY = "dub.metadata"
TORCH_SUFFIXES = (".pth", ".pt")
# Prefixes added by DistributedDataParallel and torch.compile.
WRAPPER_PREFIXES = ("module.", "_orig_mod.")
DEFAULT_DURATION_S = 8.0


class CheckpointMismatchError(ValueError):
    """The state dict does not fit the network (missing/unexpected keys, shape mismatches)."""


# --------------------------------------------------------------------------- reading files


def load_state_dict_file(path: str | os.PathLike) -> StateDict:
    """Tensors of a `.safetensors` file, or of a `.pth`/`.pt` file loaded with weights_only=True
    (bare, or nested under one of WRAPPER_KEYS)."""
    return read_state_dict(path, wrappers=WRAPPER_KEYS, suffixes=TORCH_SUFFIXES, what="checkpoint")


def _is_interval_key(key: str) -> bool:
    return key.startswith(INTERVAL_EMBED_PREFIX)


# --------------------------------------------------------------------- config inference


def _count_blocks(state_dict: Mapping[str, torch.Tensor], prefix: str) -> int:
    pattern = re.compile(rf"^{re.escape(prefix)}\.(\d+)\.")
    indices = {int(m.group(1)) for k in state_dict if (m := pattern.match(k))}
    return max(indices) + 1 if indices else 0


def _shape(state_dict: Mapping[str, torch.Tensor], key: str) -> tuple[int, ...]:
    try:
        return tuple(state_dict[key].shape)
    except KeyError:
        raise ValueError(
            f"not an MMAudio / MF-MJT network state dict: key {key!r} is missing "
            f"({len(state_dict)} keys, e.g. {sorted(state_dict)[:5]})"
        ) from None


def infer_network_config(
    state_dict: Mapping[str, torch.Tensor],
    duration_s: float = DEFAULT_DURATION_S,
    *,
    num_heads: int | None = None,
    mlp_ratio: float = 4.0,
    sample_rate: int | None = None,
    mean_flow: bool = True,
) -> NetworkConfig:
    """NetworkConfig from tensor shapes. Heads come from the q_norm width (the head dim);
    the sample rate (hence sequence lengths) from latent_dim (20 -> 16 kHz, 40 -> 44.1 kHz)
    unless given. `mean_flow` is True by default: a plain MMAudio checkpoint gains a
    zero-initialised interval embedding."""
    sd = strip_prefixes(state_dict, WRAPPER_PREFIXES)
    hidden, latent_dim, _ = _shape(sd, "audio_input_proj.0.weight")
    _, clip_dim = _shape(sd, "clip_input_proj.0.weight")
    _, sync_dim, _ = _shape(sd, "sync_input_proj.0.weight")
    _, text_dim = _shape(sd, "text_input_proj.0.weight")
    text_seq_len, _ = _shape(sd, "empty_string_feat")
    joint = _count_blocks(sd, "joint_blocks")
    fused = _count_blocks(sd, "fused_blocks")
    # MMAudio builds no joint block when fused_depth == depth: read the widths off a fused block then
    first_block = "joint_blocks.0.latent_block" if joint or not fused else "fused_blocks.0"
    (head_dim,) = _shape(sd, f"{first_block}.attn.q_norm.weight")
    if num_heads is None:
        if hidden % head_dim:
            raise ValueError(f"hidden dim {hidden} is not a multiple of the q_norm width {head_dim}")
        num_heads = hidden // head_dim
    multiple_of = _mlp_multiple_of(sd, hidden)
    ffn_key = f"{first_block}.ffn.w1.weight"
    ffn_width = _shape(sd, ffn_key)[0]
    if gated_hidden_dim(int(hidden * mlp_ratio), multiple_of) != ffn_width:
        raise ValueError(
            f"{ffn_key} has {ffn_width} channels, which mlp_ratio={mlp_ratio} does not give for "
            f"hidden dim {hidden}; pass the mlp_ratio the network was built with"
        )
    mean_flow = mean_flow or any(_is_interval_key(k) for k in sd)
    config = NetworkConfig(
        latent_dim=latent_dim,
        clip_dim=clip_dim,
        sync_dim=sync_dim,
        text_dim=text_dim,
        hidden_dim=hidden,
        depth=joint + fused,
        fused_depth=fused,
        num_heads=num_heads,
        mlp_ratio=mlp_ratio,
        mlp_multiple_of=multiple_of,
        text_seq_len=text_seq_len,
        v2="clip_input_proj.2.w1.weight" in sd,
        mean_flow=mean_flow,
    )
    return config.with_duration(duration_s, sample_rate or sample_rate_for_latent_dim(latent_dim))


def _mlp_multiple_of(sd: Mapping[str, torch.Tensor], hidden: int) -> int:
    """The rounding of gated MLP widths, read off the global condition MLP (nominal width 4 x
    hidden whatever mlp_ratio is): the largest power of two up to MMAudio's 256 that gives it."""
    key = "global_cond_mlp.w1.weight"
    width = _shape(sd, key)[0]
    for multiple_of in (256, 128, 64, 32, 16, 8, 4, 2, 1):
        if gated_hidden_dim(4 * hidden, multiple_of) == width:
            return multiple_of
    raise ValueError(f"{key} has {width} channels, which no MLP rounding gives for hidden dim {hidden}")


# ------------------------------------------------------------------------------ loading


def apply_state_dict(model: MFMJT, state_dict: Mapping[str, torch.Tensor]) -> MFMJT:
    """Load weights strictly, except that a checkpoint without the interval embedding (any
    MMAudio checkpoint) keeps the model's zero-output initialisation of it. Derived buffers
    (`latent_rot`, `clip_rot`, `*.freqs`) in the checkpoint are ignored, as MMAudio does."""
    sd = {k: v for k, v in strip_prefixes(state_dict, WRAPPER_PREFIXES).items() if k not in DERIVED_BUFFER_KEYS}
    has_interval = any(_is_interval_key(k) for k in sd)
    strict_load(
        model,
        sd,
        "checkpoint",
        against="network",
        detail=f" (config: {json.dumps(model.config.as_dict())})",
        hint="Check the preset / config (or pass config=None to infer it from the weights).",
        error=CheckpointMismatchError,
        # flow-matching (MMAudio) checkpoint: the interval embedding gets its zero-output init
        may_be_missing=None if has_interval else _is_interval_key,
    )
    if not has_interval:
        # fixed seed: loading the same checkpoint twice gives the same network
        model.initialize_interval_embedding(generator=torch.Generator().manual_seed(0))
    return model


def _resolve_config(
    config: NetworkConfig | str | None,
    state_dict: StateDict,
    stored: NetworkConfig | None,
    duration_s: float | None,
) -> NetworkConfig:
    if isinstance(config, NetworkConfig):
        return config
    if isinstance(config, str):
        resolved = get_preset(config)  # presets are 8 s configs
    elif config is None:
        if stored is None:
            return infer_network_config(state_dict, DEFAULT_DURATION_S if duration_s is None else duration_s)
        resolved = stored
    else:
        raise TypeError(f"config must be a NetworkConfig, a preset name or None, got {type(config).__name__}")
    return resolved if duration_s is None else resolved.with_duration(duration_s)


def load_network(
    source: str | os.PathLike | Mapping[str, torch.Tensor],
    config: NetworkConfig | str | None = None,
    duration_s: float | None = None,
) -> MFMJT:
    """Build an MFMJT and load weights from a file or a state dict (on CPU, float32, eval mode).

    config: a NetworkConfig (used as is), a preset name, or None (the config stored in a dub
    checkpoint, else inferred from tensor shapes). `duration_s` sets the sequence lengths of a
    preset / stored / inferred config; None keeps the preset's or the stored config's lengths
    and gives inferred configs 8 s (MMAudio's training duration).
    """
    stored = None
    if isinstance(source, Mapping):
        state_dict = dict(source)
    else:
        path = Path(source)
        state_dict = load_state_dict_file(path)
        if path.suffix == ".safetensors":
            raw = safetensors_metadata(path).get(CONFIG_METADATA_KEY)
            stored = NetworkConfig.from_dict(json.loads(raw)) if raw else None
    resolved = _resolve_config(config, state_dict, stored, duration_s)
    # Build on the meta device: a checkpoint that does not fit fails before any allocation, and
    # a real one skips initialising ~1e9 parameters only to overwrite them.
    with torch.device("meta"):
        model = MFMJT(resolved)
    return apply_state_dict(model, state_dict).eval()


# ------------------------------------------------------------------------------- saving


def save_checkpoint(model: MFMJT, path: str | os.PathLike, metadata: Mapping[str, Any] | None = None) -> Path:
    """Write the weights as safetensors with the resolved NetworkConfig (and `metadata`, any
    JSON-serialisable mapping) in the file's metadata. Written atomically."""
    from safetensors.torch import save_file

    path = Path(path)
    if path.suffix != ".safetensors":
        raise ValueError(f"checkpoints are written as .safetensors, got {path.name!r}")
    header = {"format": "pt", CONFIG_METADATA_KEY: json.dumps(model.config.as_dict(), sort_keys=True)}
    if metadata is not None:
        try:
            header[USER_METADATA_KEY] = json.dumps(dict(metadata), sort_keys=True)
        except TypeError as err:
            raise ValueError(f"checkpoint metadata must be JSON-serialisable: {err}") from None
    tensors = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    with atomic_path(path) as tmp:
        save_file(tensors, str(tmp), metadata=header)
    return path


def load_checkpoint(path: str | os.PathLike) -> tuple[MFMJT, dict[str, Any]]:
    """(model, metadata) from a checkpoint written by `save_checkpoint`; the model has exactly
    the stored config. A safetensors file without a stored config gets an inferred one."""
    path = Path(path)
    if path.suffix != ".safetensors":
        raise ValueError(f"load_checkpoint reads .safetensors files written by save_checkpoint, got {path.name!r}")
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    user = checkpoint_metadata(path)
    model = load_network(path)
    return model, user


def checkpoint_metadata(path: str | os.PathLike) -> dict[str, Any]:
    """The `metadata` that `save_checkpoint` stored ({} where it stored none); the tensors are
    not read."""
    header = safetensors_metadata(path)
    return json.loads(header[USER_METADATA_KEY]) if USER_METADATA_KEY in header else {}
