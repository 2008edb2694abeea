"""A real tiny demo-stack network with random weights, saved as a checkpoint for generate tests."""

from __future__ import annotations

from pathlib import Path

from dub.model.network.transformer import MFMJT
from dub.model.runtime.bundles import network_config, resolve_bundle
from dub.model.weights.checkpoint import save_checkpoint
from tests.network_helpers import randomize_parameters_


def random_demo_checkpoint(path: Path, seed: int = 0) -> Path:
    net = randomize_parameters_(MFMJT(network_config(resolve_bundle("demo"))), seed)
    save_checkpoint(net, path)
    return Path(path)


def flash_clips_manifest(root: Path, events: list[list[float]], seconds: float) -> Path:
    """One small silent clip per entry of `events` (flashes at those times), ingested: the
    manifest's path. For runs whose selection or levels depend on what the video shows."""
    from dub.workflows.ingest import IngestConfig, ingest
    from tests.video_factory import make_video

    for k, times in enumerate(events):
        make_video(
            root / "videos" / f"clip{k}.mp4",
            seconds=seconds,
            fps=25,
            size=(96, 64),
            pattern="flash_events",
            events=list(times),
        )
    manifest = root / "manifest.parquet"
    ingest([root / "videos"], manifest, IngestConfig(workers=0))
    return manifest
