"""Inception Score and improved precision / recall (Kynkaanniemi et al. 2019) as ADM's evaluator computes them."""

from __future__ import annotations

import numpy as np
import torch


def inception_score(probs: np.ndarray, split_size: int = 5000) -> float:
    """exp(E_x KL(p(y|x) || p(y))) of class probabilities (N, K), averaged over consecutive splits of `split_size`
    (ADM: 5000; the marginal p(y) is estimated per split)."""
    p = np.asarray(probs, dtype=np.float64)
    if p.ndim != 2 or len(p) == 0:
        raise ValueError(f"probabilities must be (N, K) with N > 0, got shape {p.shape}")
    scores = []
    for i in range(0, len(p), split_size):
        part = p[i: i + split_size]
        marginal = part.mean(axis=0, keepdims=True)  # (1, K)
        with np.errstate(divide="ignore", invalid="ignore"):
            kl = np.where(part > 0, part * (np.log(part) - np.log(marginal)), 0.0).sum(axis=1)  # (n,)
        scores.append(np.exp(kl.mean()))
    return float(np.mean(scores))


def _sq_dists(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Squared Euclidean distances (n, m) between rows of a (n, D) and b (m, D)."""
    d = a.pow(2).sum(1, keepdim=True) - 2 * a @ b.T + b.pow(2).sum(1)[None]  # (n, m)
    return d.clamp_(min=0)


def _as_tensor(x: np.ndarray | torch.Tensor, device) -> torch.Tensor:
    return torch.as_tensor(np.asarray(x) if not isinstance(x, torch.Tensor) else x).to(device, torch.float32)


@torch.no_grad()
def manifold_radii(features: np.ndarray | torch.Tensor, k: int = 3, batch_size: int = 10000,
                   device: torch.device | str = "cpu") -> torch.Tensor:
    """Squared distance of each vector to its k-th nearest neighbour in the same set (itself excluded), (N,)."""
    f = _as_tensor(features, device)
    if len(f) <= k:
        raise ValueError(f"need more than k={k} feature vectors to estimate a manifold, got {len(f)}")
    radii = torch.empty(len(f), device=device)
    for i in range(0, len(f), batch_size):
        d = _sq_dists(f[i: i + batch_size], f)  # (b, N); column of the vector itself is 0
        radii[i: i + batch_size] = d.kthvalue(k + 1, dim=1).values  # kth smallest after the self-distance
    return radii


@torch.no_grad()
def precision_recall(ref: np.ndarray | torch.Tensor, samples: np.ndarray | torch.Tensor, k: int = 3,
                     batch_size: int = 10000, device: torch.device | str = "cpu") -> tuple[float, float]:
    """(precision, recall): the share of samples inside the reference manifold, and of reference vectors inside the
    sample manifold; a manifold is the union of balls reaching each vector's k-th nearest neighbour."""
    r, s = _as_tensor(ref, device), _as_tensor(samples, device)
    radii_r = manifold_radii(r, k, batch_size, device)
    radii_s = manifold_radii(s, k, batch_size, device)
    sample_in = torch.zeros(len(s), dtype=torch.bool, device=device)
    ref_in = torch.zeros(len(r), dtype=torch.bool, device=device)
    for i in range(0, len(r), batch_size):
        for j in range(0, len(s), batch_size):
            d = _sq_dists(r[i: i + batch_size], s[j: j + batch_size])  # (b_r, b_s)
            ref_in[i: i + batch_size] |= (d <= radii_s[None, j: j + batch_size]).any(dim=1)
            sample_in[j: j + batch_size] |= (d <= radii_r[i: i + batch_size, None]).any(dim=0)
    return float(sample_in.float().mean()), float(ref_in.float().mean())
