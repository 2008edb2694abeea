"""CLAP score for text-to-audio runs: cosine similarity of LAION-CLAP text and audio embeddings.

The LAION-CLAP model (HTSAT audio tower + RoBERTa text tower) is not implemented in this
version; `build_clap` reports the missing weight file, or that the model is missing when the
file is there. `clap_score` is the av-benchmark definition once embeddings exist.
"""

from __future__ import annotations

import numpy as np

from workflows.metrics.embeddings import BackendUnavailable
from workflows.metrics.weights import MissingWeights, WeightsLocator

__all__ = ["build_clap", "clap_score"]


def clap_score(text_embeddings: np.ndarray, audio_embeddings: np.ndarray) -> np.ndarray:
    """Per-pair cosine similarity of (N, D) text and audio embeddings."""
    t = np.atleast_2d(np.asarray(text_embeddings, dtype=np.float64))
    a = np.atleast_2d(np.asarray(audio_embeddings, dtype=np.float64))
    t = t / np.maximum(np.linalg.norm(t, axis=-1, keepdims=True), 1e-12)
    a = a / np.maximum(np.linalg.norm(a, axis=-1, keepdims=True), 1e-12)
    return np.sum(t * a, axis=-1)


def build_clap(locator: WeightsLocator):
    try:
        path = locator.path("laion_clap")
    except MissingWeights as exc:
        raise BackendUnavailable(str(exc)) from exc
    raise BackendUnavailable(f"{path.name} found, but the LAION-CLAP model is not implemented in this version")
