"""Scores from audio-classifier logits (PANNs / PaSST): KL divergence and Inception Score.

Definitions as av-benchmark reports them ("KL-PANNS-softmax", "ISC-PANNS"):
- KL per clip = KL(softmax(reference logits) || softmax(generated logits)), i.e. how badly the
  generated clip's class distribution explains the reference clip's; lower is better. Computed
  with exact log-softmax (av-benchmark adds 1e-6 to the probabilities; the difference is
  below 1e-5 for 527 classes) and clipped at 0 against round-off.
- IS = exp(E_x KL(p(y|x) || p(y))) over generated clips, computed on `splits` shuffled
  splits (seeded) and reported as mean and std over splits; higher is better.
"""

from __future__ import annotations

import numpy as np

__all__ = ["inception_score", "kl_softmax", "log_softmax", "softmax"]

_EPS = 1e-6


def log_softmax(logits: np.ndarray) -> np.ndarray:
    z = np.asarray(logits, dtype=np.float64)
    z = z - z.max(axis=-1, keepdims=True)
    return z - np.log(np.exp(z).sum(axis=-1, keepdims=True))


def softmax(logits: np.ndarray) -> np.ndarray:
    return np.exp(log_softmax(logits))


def kl_softmax(generated_logits: np.ndarray, reference_logits: np.ndarray) -> np.ndarray:
    """Per-clip KL(p_ref || p_gen) from (N, C) logits of paired clips; returns (N,)."""
    gen = np.atleast_2d(generated_logits)
    ref = np.atleast_2d(reference_logits)
    if gen.shape != ref.shape:
        raise ValueError(f"paired logits differ in shape: generated {gen.shape}, reference {ref.shape}")
    log_ref, log_gen = log_softmax(ref), log_softmax(gen)
    return np.maximum(np.sum(np.exp(log_ref) * (log_ref - log_gen), axis=-1), 0.0)


def inception_score(logits: np.ndarray, splits: int = 10, seed: int = 2020) -> tuple[float, float]:
    """(mean, std) Inception Score of (N, C) classifier logits; splits capped at N."""
    probs = softmax(np.atleast_2d(logits))
    n = len(probs)
    if n == 0:
        return float("nan"), float("nan")
    probs = probs[np.random.default_rng(seed).permutation(n)]
    scores = []
    for part in np.array_split(probs, min(splits, n)):
        marginal = part.mean(axis=0, keepdims=True)
        kl = np.sum(part * (np.log(part + _EPS) - np.log(marginal + _EPS)), axis=-1)
        scores.append(float(np.exp(kl.mean())))
    return float(np.mean(scores)), float(np.std(scores))
