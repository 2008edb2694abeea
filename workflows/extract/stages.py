"""The Ray Data stages of `dub extract`.

    window rows -> decode frames (generate's `decode_windows`) + read the window's audio
                -> encoder actors: CLIP/sync/text features + codec posterior of the audio

Errors are data, as in generate: a window that cannot be decoded or encoded comes out with an
`error` string and zero arrays, and the run goes on.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from dub.errors import short_error
from dub.workflows.generate.stages import WINDOW_COLUMNS, FittingCalls, decode_windows

# The one weights role extraction does not need (features and latents come from the rest).


def window_samples(window_s: float, sample_rate: int) -> int:
    return int(round(window_s * sample_rate))


def read_window_audio(path: str, start_s: float, window_s: float, sample_rate: int) -> np.ndarray:
    """Mono float32 audio of [start_s, start_s + window_s) at `sample_rate`, zero-padded to the
    exact window length (a clip shorter than the window ends in silence)."""
    from dub.workflows.media.audio import read_audio

    audio = read_audio(path, sample_rate=sample_rate, start_s=start_s, duration_s=window_s)
    length = window_samples(window_s, sample_rate)
    out = np.zeros(length, np.float32)
    out[: min(length, len(audio))] = audio[:length]
    return out


def decode_training_windows(
    batch: dict[str, np.ndarray],
    *,
    clip_fps: float,
    clip_size: int,
    sync_fps: float,
    sync_size: int,
    window_s: float,
    sample_rate: int,
    backend: str = "swscale",
) -> dict[str, np.ndarray]:
    """Frames at both model rates (generate's decoder, `backend` its resizer) plus the window's
    audio track."""
    out = decode_windows(
        batch,
        clip_fps=clip_fps,
        clip_size=clip_size,
        sync_fps=sync_fps,
        sync_size=sync_size,
        window_s=window_s,
        backend=backend,
    )
    return _with_audio(batch, out, window_s, sample_rate)


def read_audio_windows(batch: dict[str, np.ndarray], *, window_s: float, sample_rate: int) -> dict[str, np.ndarray]:
    """Audio-only rows (text-to-audio): the window's audio, no frames."""
    n = len(batch["video_id"])
    out = {k: batch[k] for k in WINDOW_COLUMNS}
    out.update(error=np.array([""] * n, dtype=object), t_decode_s=np.zeros(n))
    return _with_audio(batch, out, window_s, sample_rate)


def _with_audio(
    batch: dict[str, np.ndarray], out: dict[str, np.ndarray], window_s: float, sample_rate: int
) -> dict[str, np.ndarray]:
    n = len(batch["video_id"])
    audio = np.zeros((n, window_samples(window_s, sample_rate)), np.float32)
    errors = list(out["error"])
    for i in range(n):
        if errors[i]:
            continue
        start = time.perf_counter()
        try:
            audio[i] = read_window_audio(str(batch["path"][i]), float(batch["start_s"][i]), window_s, sample_rate)
        except Exception as exc:  # noqa: BLE001 - an unreadable audio track fails this window only
            errors[i] = "audio: " + short_error(exc)
        out["t_decode_s"][i] += time.perf_counter() - start
    out.update(audio=audio, error=np.array(errors, dtype=object), path=batch["path"])
    return out


def feature_weight_paths(model: str) -> dict[str, Path]:
    """role -> local file of every weights file the bundle's encoders and codec need (checked
    against their checksums, cached); not the network's."""
    from dub.model.runtime.bundles import resolve_bundle, weight_paths
    from dub.model.weights.registry import WeightsRegistry

    return weight_paths(resolve_bundle(model), WeightsRegistry(), verify=True, network=False)


def load_feature_stack(model: str, device: str):
    """(encoders, codec) of a bundle, without its network."""
    from dub.model.runtime.bundles import load_feature_stack as load

    return load(model, device=device)


def describe(obj) -> str:
    """A short description of an encoder/codec for the sample metadata."""
    fields = ("latent_dim", "sample_rate", "latents_per_second", "clip_dim", "sync_dim", "text_dim", "text_seq_len")
    parts = [f"{name}={getattr(obj, name)}" for name in fields if hasattr(obj, name)]
    return f"{type(obj).__name__}({', '.join(parts)})"


def sync_token_count(window_s: float, sync_fps: float) -> int:
    """Synchformer tokens in a window: 8 per 16-frame segment with stride 8."""
    frames = int(round(window_s * sync_fps))
    return 0 if frames < 16 else ((frames - 16) // 8 + 1) * 8


class ExtractReplica:
    """Encoders and codec on one device; turns a batch of decoded windows into training arrays."""

    def __init__(self, model: str, device: str, window_s: float):
        import torch

        if device == "cpu":
            torch.set_num_threads(max(1, torch.get_num_threads()))
        self.device = device
        self.memory = FittingCalls(device)
        self.encoders, self.codec = load_feature_stack(model, device)
        self.window_s = window_s
        self.description = {"encoders": describe(self.encoders), "codec": describe(self.codec)}
        e, sr = self.encoders, int(self.codec.sample_rate)
        probe = torch.zeros(1, window_samples(window_s, sr), device=device)
        latents = self.codec.encode(probe)[0].shape[1]
        self.shapes = {
            "latent_mean": (latents, self.codec.latent_dim),
            "latent_std": (latents, self.codec.latent_dim),
            "clip_f": (int(round(window_s * e.clip_fps)), e.clip_dim),
            "sync_f": (sync_token_count(window_s, e.sync_fps), e.sync_dim),
            "text_f": (e.text_seq_len, e.text_dim),
        }

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        n = len(batch["video_id"])
        errors = list(batch["error"])
        arrays = {name: np.zeros((n, *shape), np.float32) for name, shape in self.shapes.items()}
        ok = [i for i in range(n) if not errors[i]]
        took = 0.0
        if ok:
            start = time.perf_counter()
            try:
                self.memory.run(lambda rows: self._encode(batch, rows, arrays), ok)
            except Exception:  # noqa: BLE001 - find the culprit: one window at a time
                for i in ok:
                    try:
                        self._encode(batch, [i], arrays)
                    except Exception as exc:  # noqa: BLE001
                        errors[i] = "encode: " + short_error(exc)
            took = time.perf_counter() - start
        out = {k: batch[k] for k in WINDOW_COLUMNS}
        out.update(arrays)
        out.update(
            error=np.array(errors, dtype=object),
            has_video=np.full(n, "clip_frames" in batch),
            path=batch["path"],
            t_decode_s=batch["t_decode_s"],
            t_encode_s=np.full(n, took / max(1, len(ok))),
            latents_per_second=np.full(n, float(self.codec.latents_per_second)),
            **{k: np.full(n, v, dtype=object) for k, v in self.description.items()},
        )
        return out

    def _encode(self, batch: dict[str, np.ndarray], rows: list[int], arrays: dict[str, np.ndarray]) -> None:
        import torch

        with torch.inference_mode():
            wav = torch.from_numpy(np.ascontiguousarray(batch["audio"][rows])).to(self.device)
            mean, std = self.codec.encode(wav)
            result = {
                "latent_mean": mean,
                "latent_std": std,
                "text_f": self.encoders.text_features([str(batch["prompt"][i]) for i in rows]),
            }
            if "clip_frames" in batch:
                clip = torch.from_numpy(np.ascontiguousarray(batch["clip_frames"][rows]))
                sync = torch.from_numpy(np.ascontiguousarray(batch["sync_frames"][rows]))
                result["clip_f"] = self.encoders.clip_features(clip.to(self.device))
                result["sync_f"] = self.encoders.sync_features(sync.to(self.device))
        for name, value in result.items():
            value = value.float().cpu().numpy()
            if value.shape[1:] != self.shapes[name]:
                raise ValueError(
                    f"{name} has shape {value.shape[1:]}, expected {self.shapes[name]} for a {self.window_s} s window"
                )
            arrays[name][rows] = value


def empty_text_features(model: str, device: str) -> np.ndarray:
    """The text encoder's features of "" (what a from-scratch network's empty text should be)."""
    encoders, _ = load_feature_stack(model, device)
    return encoders.text_features([""])[0].float().cpu().numpy()
