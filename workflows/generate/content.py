"""What a generated clip sounds like, in AudioSet terms (`dub generate`, where PANNs weights are
present): its top tags and its speech and music probabilities, and `--reject speech,music` to
keep such candidates out of `--candidates` selection (unwanted speech or music in V2A output).

Probabilities are PANNs CNN14's clip-level sigmoid outputs (multi-label: each class on its
own, as the model was trained). A candidate is flagged when a rejected kind's probability is at
least REJECT_THRESHOLD, the usual decision point of a sigmoid tagger. Tag names come from
AudioSet's `class_labels_indices.csv` when it sits beside the PANNs weights file; else a tag is
its class number.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path

import numpy as np

# AudioSet ontology indices (the 527-class order of PANNs' outputs)
CLASS_INDEX = {"speech": 0, "music": 137}
REJECTABLE = tuple(CLASS_INDEX)
REJECT_THRESHOLD = 0.5
TOP_TAGS = 3
LABELS_FILE = "class_labels_indices.csv"


def reject_problem(reject: tuple[str, ...]) -> str | None:
    unknown = sorted(set(reject) - set(REJECTABLE))
    return f"--reject takes {', '.join(REJECTABLE)}; got {', '.join(unknown)}" if unknown else None


@dataclass(frozen=True)
class ContentFlags:
    speech_prob: float
    music_prob: float
    top_tags: list[str]
    top_probs: list[float]

    def flagged(self, reject: tuple[str, ...]) -> bool:
        return any(getattr(self, f"{kind}_prob") >= REJECT_THRESHOLD for kind in reject)


class ContentTagger:
    """PANNs CNN14 as a tagger: `flags(wavs at sample_rate)` -> one ContentFlags per clip."""

    sample_rate = 16000

    def __init__(self, backend, labels: list[str] | None = None) -> None:
        self.backend = backend  # dub.workflows.metrics.embeddings.PannsBackend (or one like it)
        self.labels = labels

    def flags(self, wavs: list[np.ndarray]) -> list[ContentFlags]:
        logits = self.backend.features(wavs).logits
        probs = 1.0 / (1.0 + np.exp(-np.asarray(logits, np.float64)))
        out = []
        for p in probs:
            top = np.argsort(-p)[:TOP_TAGS]
            names = [self.labels[i] if self.labels and i < len(self.labels) else f"class {i}" for i in top]
            out.append(
                ContentFlags(
                    float(p[CLASS_INDEX["speech"]]), float(p[CLASS_INDEX["music"]]), names, [float(p[i]) for i in top]
                )
            )
        return out


def tagger_available(weights_dir: str | None = None) -> bool:
    """Whether the PANNs weights are in the weights folder (without loading them)."""
    from dub.workflows.metrics.embeddings import BackendUnavailable, available_weights
    from dub.workflows.metrics.weights import WeightsLocator

    try:
        available_weights(WeightsLocator(weights_dir), "panns_cnn14_16k")
    except BackendUnavailable:
        return False
    return True


def load_tagger(weights_dir: str | None = None, device: str = "cpu") -> ContentTagger | None:
    """The tagger from the PANNs weights in the weights folder; None when they are not there."""
    from dub.workflows.metrics.embeddings import BackendUnavailable, PannsBackend, available_weights
    from dub.workflows.metrics.weights import WeightsLocator

    try:
        path = available_weights(WeightsLocator(weights_dir), "panns_cnn14_16k")
    except BackendUnavailable:
        return None
    return ContentTagger(PannsBackend(path, device), _labels(Path(path).with_name(LABELS_FILE)))


def _labels(path: Path) -> list[str] | None:
    if not path.is_file():
        return None
    with path.open(newline="", encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    return [row["display_name"] for row in sorted(rows, key=lambda r: int(r["index"]))]
