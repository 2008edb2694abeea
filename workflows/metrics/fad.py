"""Fréchet distance between two sets of embeddings (the "FAD" of audio generation papers).

    FD = ||mu_a - mu_b||^2 + Tr(S_a) + Tr(S_b) - 2 Tr sqrt(S_a S_b)

with sample means and covariances (ddof=1). The trace term is computed from eigenvalues,
never from `scipy.linalg.sqrtm` (deprecated `disp=`, complex round-off, slow):

- stats route (N >= D): Tr sqrt(S_a S_b) = sum sqrt(eig(S_a^1/2 S_b S_a^1/2)), a symmetric
  PSD matrix, so `eigh` applies and tiny negative round-off eigenvalues are clipped to 0.
- sample route (N < D, the usual case for a few hundred clips of 2048-d PANNs features):
  with centred data A (Na, D), B (Nb, D), the non-zero eigenvalues of S_a S_b are the
  squared singular values of A B^T / sqrt((Na-1)(Nb-1)), so the trace term is the nuclear
  norm of that small (Na, Nb) matrix: exact, symmetric in a and b, no D x D matrix needed.
"""

from __future__ import annotations

import numpy as np

__all__ = ["frechet_distance", "frechet_distance_from_stats", "gaussian_stats"]


def _as_samples(x: np.ndarray, name: str) -> np.ndarray:
    arr = np.asarray(x, dtype=np.float64)
    if arr.ndim != 2:
        raise ValueError(f"{name} must be a 2-D array (N samples, D dims), got shape {arr.shape}")
    if arr.shape[0] < 2:
        raise ValueError(f"{name} needs at least 2 samples for a covariance (ddof=1), got {arr.shape[0]}")
    if not np.all(np.isfinite(arr)):
        raise ValueError(f"{name} contains NaN or inf; check the embedding backend's input audio")
    return arr


def gaussian_stats(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean (D,) and covariance (D, D) of (N, D) samples, ddof=1, in float64."""
    arr = _as_samples(x, "x")
    return arr.mean(axis=0), np.cov(arr, rowvar=False, ddof=1).reshape(arr.shape[1], arr.shape[1])


def _psd_sqrt(s: np.ndarray) -> np.ndarray:
    w, v = np.linalg.eigh((s + s.T) / 2)
    return (v * np.sqrt(np.clip(w, 0.0, None))) @ v.T


def frechet_distance_from_stats(mu_a: np.ndarray, sigma_a: np.ndarray, mu_b: np.ndarray, sigma_b: np.ndarray) -> float:
    """Fréchet distance between N(mu_a, sigma_a) and N(mu_b, sigma_b) (eigenvalue route)."""
    mu_a, mu_b = np.asarray(mu_a, np.float64), np.asarray(mu_b, np.float64)
    sigma_a, sigma_b = np.asarray(sigma_a, np.float64), np.asarray(sigma_b, np.float64)
    if mu_a.shape != mu_b.shape or sigma_a.shape != sigma_b.shape or sigma_a.shape != mu_a.shape * 2:
        raise ValueError(f"shape mismatch: mu {mu_a.shape} / {mu_b.shape}, sigma {sigma_a.shape} / {sigma_b.shape}")
    root_a = _psd_sqrt(sigma_a)
    middle = root_a @ sigma_b @ root_a
    eig = np.linalg.eigvalsh((middle + middle.T) / 2)
    trace_sqrt = float(np.sqrt(np.clip(eig, 0.0, None)).sum())
    diff = mu_a - mu_b
    value = float(diff @ diff + np.trace(sigma_a) + np.trace(sigma_b) - 2.0 * trace_sqrt)
    return max(value, 0.0)  # a distance: clip the last round-off below zero


def frechet_distance(a: np.ndarray, b: np.ndarray, method: str = "auto") -> float:
    """Fréchet distance between the Gaussians fitted to two embedding sets.

    a: (Na, D), b: (Nb, D) arrays (one row per clip), Na, Nb >= 2. Mean and covariance use
    ddof=1. Returns a float >= 0: ~0 for identical sets, symmetric in (a, b), finite when
    N < D (rank-deficient covariances). Works in float64 whatever the input dtype.
    method: "auto" (cheaper route), "eig" (D x D covariances) or "svd" (Na x Nb cross term);
    both give the same value up to round-off.
    """
    if method not in ("auto", "eig", "svd"):
        raise ValueError(f"method must be 'auto', 'eig' or 'svd', got {method!r}")
    a = _as_samples(a, "a")
    b = _as_samples(b, "b")
    if a.shape[1] != b.shape[1]:
        raise ValueError(f"embedding sizes differ: a has D={a.shape[1]}, b has D={b.shape[1]}")
    na, nb, d = a.shape[0], b.shape[0], a.shape[1]
    mu_a, mu_b = a.mean(axis=0), b.mean(axis=0)
    use_eig = method == "eig" or (method == "auto" and na * nb * min(na, nb) > d**3)
    if use_eig:  # the D x D eigen-decomposition is the cheaper route for many samples
        return frechet_distance_from_stats(
            mu_a, np.cov(a, rowvar=False, ddof=1).reshape(d, d), mu_b, np.cov(b, rowvar=False, ddof=1).reshape(d, d)
        )
    ca, cb = a - mu_a, b - mu_b
    trace_a = float(np.sum(ca * ca)) / (na - 1)
    trace_b = float(np.sum(cb * cb)) / (nb - 1)
    cross = (ca @ cb.T) / np.sqrt((na - 1) * (nb - 1))
    trace_sqrt = float(np.linalg.svd(cross, compute_uv=False).sum())
    diff = mu_a - mu_b
    return max(float(diff @ diff + trace_a + trace_b - 2.0 * trace_sqrt), 0.0)
