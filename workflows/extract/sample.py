"""The training-shard sample: one model window of one clip, as WebDataset entries.

    key  <video_id>_w<window index>          (no dots: WebDataset splits names at the first dot)
    latent_mean.npy   float32 (N, C)   codec posterior mean of the window's audio, channel-last
    latent_std.npy    float32 (N, C)   codec posterior std
    clip_f.npy        (Nc, clip_dim)   visual features at clip_fps (zeros when has_video is false)
    sync_f.npy        (Ns, sync_dim)   sync features, 8 tokens per segment (zeros when has_video is false)
    text_f.npy        (Nt, text_dim)   text features of the prompt ("" gives the encoder's empty text)
    json              video_id, window_index, num_windows, start_s, length_s, valid_s, prompt,
                      has_prompt, has_video, source, bundle, encoders, codec, sample_rate,
                      latents_per_second, feature_dtype

Features are float32, or float16 with `--feature-dtype float16` (half the bytes; the trainer
casts to float32). Latents stay float32: they are the regression target.

Audio-only clips (text-to-audio) have `has_video: false`; their clip/sync arrays are zeros of
the usual shape so every sample collates alike, and the trainer substitutes the network's
learned empty clip/sync features, which are not known when the shards are written.
"""

from __future__ import annotations

import io
import json
from typing import Any

import numpy as np

ARRAY_FIELDS = ("latent_mean", "latent_std", "clip_f", "sync_f", "text_f")
FEATURE_FIELDS = ("clip_f", "sync_f", "text_f")
META_FIELDS = ("video_id", "window_index", "start_s", "length_s", "has_video", "sample_rate")
FEATURE_DTYPES = ("float32", "float16")
# Files beside the shards in a `dub extract` output directory.
EXTRACT_INFO_FILE = "extract.json"
EMPTY_TEXT_FILE = "empty_text_f.npy"


class SampleError(ValueError):
    """A shard sample that is not a training sample in the documented format."""


def window_key(video_id: str, window_index: int) -> str:
    if "." in video_id or "/" in video_id:
        raise ValueError(f"video id {video_id!r} cannot be a WebDataset key (no dots or slashes allowed)")
    return f"{video_id}_w{int(window_index)}"


def video_id_of_key(key: str) -> str:
    return key.rsplit("_w", 1)[0]


def npy_bytes(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, np.ascontiguousarray(array), allow_pickle=False)
    return buf.getvalue()


def encode_sample(
    arrays: dict[str, np.ndarray], meta: dict[str, Any], feature_dtype: str = "float32"
) -> dict[str, bytes]:
    """WebDataset entries (without the key) for one window."""
    if feature_dtype not in FEATURE_DTYPES:
        raise ValueError(f"feature dtype must be one of {FEATURE_DTYPES}, got {feature_dtype!r}")
    missing = [name for name in ARRAY_FIELDS if name not in arrays]
    if missing:
        raise ValueError(f"training sample lacks {missing}")
    sample = {}
    for name in ARRAY_FIELDS:
        dtype = np.float32 if name not in FEATURE_FIELDS else np.dtype(feature_dtype)
        sample[f"{name}.npy"] = npy_bytes(np.asarray(arrays[name]).astype(dtype, copy=False))
    sample["json"] = json.dumps({**meta, "feature_dtype": feature_dtype}, sort_keys=True).encode()
    return sample


def decode_sample(raw: dict[str, Any]) -> dict[str, Any]:
    """Arrays (float32) and metadata of one raw WebDataset sample (entries as bytes).

    Raises SampleError naming what is missing or unreadable.
    """
    key = raw.get("__key__", "?")
    out: dict[str, Any] = {"__key__": key}
    for name in ARRAY_FIELDS:
        data = raw.get(f"{name}.npy")
        if data is None:
            present = sorted(k for k in raw if not k.startswith("__"))
            raise SampleError(f"sample {key!r} has no {name}.npy (has {present})")
        try:
            array = np.load(io.BytesIO(data), allow_pickle=False)
        except Exception as exc:  # noqa: BLE001 - numpy raises several types for bad bytes
            raise SampleError(f"sample {key!r}: {name}.npy is not a readable .npy array ({exc})") from None
        if array.ndim != 2:
            raise SampleError(f"sample {key!r}: {name} must be 2-D (length, channels), got shape {array.shape}")
        out[name] = array.astype(np.float32, copy=False)
    if raw.get("json") is None:
        raise SampleError(f"sample {key!r} has no json metadata")
    try:
        meta = json.loads(raw["json"])
    except ValueError as exc:
        raise SampleError(f"sample {key!r}: json metadata is not valid JSON ({exc})") from None
    absent = [name for name in META_FIELDS if name not in meta]
    if absent:
        raise SampleError(f"sample {key!r}: json metadata lacks {absent}")
    if out["latent_mean"].shape != out["latent_std"].shape:
        raise SampleError(
            f"sample {key!r}: latent_mean {out['latent_mean'].shape} and latent_std {out['latent_std'].shape} differ"
        )
    out["meta"] = meta
    return out
