"""Gaussian feature statistics and the Frechet distance between them (FID, sFID, classifier FID)."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


@dataclass
class FeatureStats:
    """Mean (D,) and covariance (D, D) of a feature set, in float64; `n` = number of vectors (0 if unknown).
    `factor` (n, D), kept when n <= D, satisfies factor.T @ factor == sigma: FID then costs an (n, n) eigenproblem
    instead of a (D, D) one."""

    mu: np.ndarray
    sigma: np.ndarray
    n: int = 0
    factor: np.ndarray | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        self.mu = np.atleast_1d(np.asarray(self.mu, dtype=np.float64))
        self.sigma = np.atleast_2d(np.asarray(self.sigma, dtype=np.float64))
        d = self.mu.shape[0]
        if self.mu.ndim != 1 or self.sigma.shape != (d, d):
            raise ValueError(f"statistics need mu (D,) and sigma (D, D), got {self.mu.shape} and {self.sigma.shape}")

    @property
    def dim(self) -> int:
        return int(self.mu.shape[0])


def feature_stats(features: np.ndarray) -> FeatureStats:
    """Mean and unbiased covariance (as ADM's np.cov) of (N, D) features."""
    f = np.asarray(features, dtype=np.float64)
    if f.ndim != 2 or len(f) < 2:
        raise ValueError(f"need (N, D) features with N >= 2 to estimate a covariance, got shape {f.shape}")
    mu = f.mean(axis=0)
    centered = (f - mu) / np.sqrt(len(f) - 1)  # (N, D)
    sigma = centered.T @ centered  # (D, D), the unbiased covariance
    return FeatureStats(mu, sigma, len(f), centered if len(f) <= f.shape[1] else None)


def sqrtm_psd(a: np.ndarray) -> np.ndarray:
    """Principal square root of a symmetric positive semi-definite matrix (negative round-off eigenvalues -> 0)."""
    a = np.asarray(a, dtype=np.float64)
    w, v = np.linalg.eigh((a + a.T) / 2)
    return (v * np.sqrt(np.clip(w, 0, None))) @ v.T


def _sum_sqrt_eigvals(m: np.ndarray) -> float:
    """Sum of the square roots of a symmetric PSD matrix's eigenvalues (negative round-off -> 0)."""
    return float(np.sqrt(np.clip(np.linalg.eigvalsh((m + m.T) / 2), 0, None)).sum())


def trace_sqrt_product(a: FeatureStats, b: FeatureStats) -> float:
    """tr(sqrt(S_a @ S_b)) through a symmetric matrix with the same eigenvalues: A S_b A^T for a low-rank factor
    S_a = A^T A, else L^T S_a L for a Cholesky factor S_b = L L^T, else sqrt(S_a) S_b sqrt(S_a). Exact on
    singular covariances (fewer vectors than dimensions), where scipy's sqrtm of the product is not."""
    if b.factor is not None and (a.factor is None or len(b.factor) < len(a.factor)):
        a, b = b, a  # tr sqrt(S_a S_b) = tr sqrt(S_b S_a): use the smaller factor
    if a.factor is not None:
        return _sum_sqrt_eigvals(a.factor @ b.sigma @ a.factor.T)  # (n, n)
    try:
        chol = np.linalg.cholesky(b.sigma)  # (D, D) lower
        return _sum_sqrt_eigvals(chol.T @ a.sigma @ chol)
    except np.linalg.LinAlgError:  # singular: fall back to the symmetric square root
        root = sqrtm_psd(a.sigma)
        return _sum_sqrt_eigvals(root @ b.sigma @ root)


def frechet_distance(a: FeatureStats, b: FeatureStats) -> float:
    """||mu_a - mu_b||^2 + tr(S_a) + tr(S_b) - 2 tr(sqrt(S_a S_b)): the Frechet distance of two Gaussians (FID)."""
    if a.dim != b.dim:
        raise ValueError(f"statistics have different feature sizes ({a.dim} vs {b.dim}): were they computed with the "
                         "same network and layer?")
    diff = a.mu - b.mu
    d = diff @ diff + np.trace(a.sigma) + np.trace(b.sigma) - 2 * trace_sqrt_product(a, b)
    return float(max(d, 0.0))


def fid_from_features(features_a: np.ndarray, features_b: np.ndarray | FeatureStats) -> float:
    """FID between two (N, D) feature sets (the second may be precomputed statistics)."""
    sb = features_b if isinstance(features_b, FeatureStats) else feature_stats(features_b)
    return frechet_distance(feature_stats(features_a), sb)
