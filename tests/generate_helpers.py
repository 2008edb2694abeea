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
