"""Small real training shards for the train tests, written in the documented sample format
(the extract pipeline's own encoder) with the generate pipeline's ShardWriter."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from dub.workflows.extract.sample import encode_sample, window_key
from dub.workflows.generate.sinks import ShardWriter

# 2 s windows at the demo rates: 63 latents (31.25/s), 16 clip frames (8 fps), 5 sync segments.
SHAPES = {"latent_mean": (63, 20), "latent_std": (63, 20), "clip_f": (16, 16), "sync_f": (40, 16), "text_f": (8, 16)}
# 8 s windows, the demo bundle's generation window: what a checkpoint must take to generate with it
SHAPES_8S = {
    "latent_mean": (250, 20),
    "latent_std": (250, 20),
    "clip_f": (64, 16),
    "sync_f": (192, 16),
    "text_f": (8, 16),
}
TINY_ARCHITECTURE = {"hidden_dim": 32, "depth": 2, "fused_depth": 1, "num_heads": 2}


def write_synthetic_shards(
    out_dir: Path,
    *,
    samples: int = 12,
    shard_size: int = 4,
    seed: int = 0,
    audio_only_every: int = 4,
    shapes: dict[str, tuple[int, int]] | None = None,
    window_s: float = 2.0,
    bundle: str = "synthetic",
) -> list[Path]:
    """`samples` windows whose latents follow their clip features (so there is something to
    learn), every `audio_only_every`-th one audio-only, recorded as `window_s` windows made
    with `bundle` (the model bundle training's evaluation generates with). Returns the shard paths."""
    rng = np.random.default_rng(seed)
    shapes = shapes or SHAPES
    writer = ShardWriter(out_dir, shard_size)
    for i in range(samples):
        clip = rng.standard_normal(shapes["clip_f"]).astype(np.float32)
        n = shapes["latent_mean"][0]
        trend = np.resize(np.repeat(clip[:, :1], -(-n // clip.shape[0]), axis=0), (n, 1))  # follows the video
        mean = (0.5 + 2.0 * trend + rng.standard_normal(shapes["latent_mean"])).astype(np.float32)
        has_video = audio_only_every == 0 or (i + 1) % audio_only_every != 0
        arrays = {
            "latent_mean": mean,
            "latent_std": np.full(shapes["latent_std"], 0.01, np.float32),
            "clip_f": clip if has_video else np.zeros_like(clip),
            "sync_f": rng.standard_normal(shapes["sync_f"]).astype(np.float32)
            if has_video
            else np.zeros(shapes["sync_f"], np.float32),
            "text_f": rng.standard_normal(shapes["text_f"]).astype(np.float32),
        }
        meta = {
            "video_id": f"{i:020x}",
            "window_index": 0,
            "num_windows": 1,
            "start_s": 0.0,
            "length_s": window_s,
            "valid_s": window_s,
            "prompt": f"clip {i}",
            "has_prompt": True,
            "has_video": has_video,
            "sample_rate": 16000,
            "bundle": bundle,
        }
        writer.add(window_key(meta["video_id"], 0), encode_sample(arrays, meta))
    writer.close()
    return sorted(Path(out_dir).glob("shard-*.tar"))


def assert_evaluated_every_step(result, steps: list[int], resize: str) -> None:
    """Training's checkpoint evaluations (--val-manifest/--sample-every): one per step in `steps`,
    each a finished generate run of the validation clip, made from frames resized as the shards
    were (`resize`), and a report with onset scores."""
    import json

    assert [e["step"] for e in result.evaluations] == steps
    for evaluation in result.evaluations:
        assert "error" not in evaluation, evaluation
        assert evaluation["generate"]["done"] == 1 and "onset_ap_mean" in evaluation["summary"]
        assert (Path(evaluation["dir"]) / "report" / "report.parquet").is_file()
        run = json.loads((Path(evaluation["dir"]) / "generated" / "run.json").read_text())
        assert run["config"]["resize"] == resize and run["config"]["checkpoint"] == evaluation["checkpoint"]
