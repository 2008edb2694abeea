"""Where metric models find their weights: the project's weights registry (`model/weights/registry.py`).

Every weighted metric names the one file it needs; a missing file becomes a `MissingWeights`
carrying the registry's message (which file, where it goes, where it comes from), so the
report prints it instead of crashing or writing a silent zero. Nothing is downloaded.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from dub.model.weights.registry import MissingWeightsError, WeightsRegistry

__all__ = ["METRIC_WEIGHTS", "MetricWeights", "MissingWeights", "WeightsLocator"]


@dataclass(frozen=True)
class MetricWeights:
    model_name: str  # registry model name
    file_name: str  # as published; the registry also finds its converted .safetensors form


METRIC_WEIGHTS: dict[str, MetricWeights] = {
    "panns_cnn14_16k": MetricWeights("panns", "Cnn14_16k_mAP=0.438.pth"),
    "vggish": MetricWeights("vggish", "vggish-10086976.pth"),
    "passt": MetricWeights("passt", "passt-s-f128-p16-s10-ap.476-swa.pt"),
    # DeSync needs the whole file (visual + audio branches and the sync head), not only the
    # visual branch the generator uses
    "synchformer": MetricWeights("mmaudio-ext", "synchformer_state_dict.pth"),
    "laion_clap": MetricWeights("laion-clap", "music_speech_audioset_epoch_15_esc_89.98.pt"),
    # IB-score uses the vision and audio towers; the file holds all six modalities
    "imagebind": MetricWeights("imagebind", "imagebind_huge.pth"),
}


class MissingWeights(FileNotFoundError):
    """A metric's weight file is not available locally; the message names it."""


class WeightsLocator:
    """Resolves a metric's weight file in the registry rooted at `root` (None: the registry's
    default, $DUB_WEIGHTS_DIR or ~/.cache/dub/weights)."""

    def __init__(self, root: str | Path | None = None) -> None:
        self.registry = WeightsRegistry(root)
        self.root = self.registry.root

    def path(self, key: str) -> Path:
        spec = METRIC_WEIGHTS[key]
        try:
            return Path(self.registry.path(spec.model_name, spec.file_name))
        except MissingWeightsError as exc:
            raise MissingWeights(str(exc)) from exc
