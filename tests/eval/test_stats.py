"""Frechet distance: exact Gaussian answers, agreement with ADM's scipy formula, monotone in a known shift/noise."""

from itertools import pairwise

import numpy as np
import pytest

from ppflow.eval.stats import FeatureStats, feature_stats, fid_from_features, frechet_distance, sqrtm_psd


def random_cov(rng, d, rank=None):
    a = rng.standard_normal((d, rank or d))
    return a @ a.T / d


def adm_frechet(mu1, s1, mu2, s2):
    """ADM evaluator.py's formula (scipy sqrtm of the non-symmetric product)."""
    linalg = pytest.importorskip("scipy.linalg")
    covmean = linalg.sqrtm(s1 @ s2).real
    diff = mu1 - mu2
    return diff @ diff + np.trace(s1) + np.trace(s2) - 2 * np.trace(covmean)


def test_sqrtm_psd_matches_scipy_on_random_covariances():
    linalg = pytest.importorskip("scipy.linalg")
    rng = np.random.default_rng(0)
    for d in (2, 7, 64):
        c = random_cov(rng, d)
        r = sqrtm_psd(c)
        np.testing.assert_allclose(r, linalg.sqrtm(c).real, rtol=1e-7, atol=1e-9)
        np.testing.assert_allclose(r @ r, c, rtol=1e-8, atol=1e-10)


def test_frechet_distance_matches_adm_formula():
    rng = np.random.default_rng(1)
    for d in (3, 32, 128):
        mu1, mu2 = rng.standard_normal(d), rng.standard_normal(d)
        s1, s2 = random_cov(rng, d), random_cov(rng, d)
        got = frechet_distance(FeatureStats(mu1, s1), FeatureStats(mu2, s2))
        assert got == pytest.approx(adm_frechet(mu1, s1, mu2, s2), rel=1e-8)


def test_frechet_distance_exact_for_gaussians():
    # 1-D: (m1 - m2)^2 + (s1 - s2)^2 for standard deviations s1, s2
    assert frechet_distance(FeatureStats([1.0], [[4.0]]), FeatureStats([-2.0], [[9.0]])) == pytest.approx(9 + 1)
    # commuting (diagonal) covariances: ||mu||^2 + sum (sqrt(a) - sqrt(b))^2
    a, b = np.array([1.0, 4.0, 9.0]), np.array([4.0, 4.0, 1.0])
    got = frechet_distance(FeatureStats(np.zeros(3), np.diag(a)), FeatureStats(np.ones(3), np.diag(b)))
    assert got == pytest.approx(3 + ((np.sqrt(a) - np.sqrt(b)) ** 2).sum())


def test_singular_covariances_fewer_samples_than_dims():
    rng = np.random.default_rng(2)
    s1, s2 = random_cov(rng, 50, rank=10), random_cov(rng, 50, rank=12)
    mu = np.zeros(50)
    got = frechet_distance(FeatureStats(mu, s1), FeatureStats(mu, s2))
    # reference: eigenvalues of s1 @ s2 are real, non-negative; tr sqrt = sum of their square roots
    ev = np.clip(np.linalg.eigvals(s1 @ s2).real, 0, None)
    assert got == pytest.approx(np.trace(s1) + np.trace(s2) - 2 * np.sqrt(ev).sum(), rel=1e-6)


def test_all_three_trace_paths_agree():
    # low-rank factor (N <= D), Cholesky (full rank) and symmetric square root (singular, no factor)
    rng = np.random.default_rng(7)
    f1, f2 = rng.standard_normal((12, 20)), rng.standard_normal((15, 20)) * 2 + 1
    a, b = feature_stats(f1), feature_stats(f2)
    assert a.factor is not None and b.factor is not None
    plain_a, plain_b = FeatureStats(a.mu, a.sigma), FeatureStats(b.mu, b.sigma)  # singular, no factor
    want = frechet_distance(a, b)
    # singular covariances: round-off eigenvalues near 0 contribute sqrt(eps)-sized terms, hence rel=1e-7
    assert frechet_distance(plain_a, plain_b) == pytest.approx(want, rel=1e-7)
    assert frechet_distance(plain_a, b) == pytest.approx(want, rel=1e-7)
    assert frechet_distance(b, a) == pytest.approx(want, rel=1e-9)
    full = feature_stats(rng.standard_normal((100, 20)))  # full rank: the Cholesky path
    assert full.factor is None
    assert frechet_distance(plain_a, full) == pytest.approx(frechet_distance(a, full), rel=1e-7)
    assert frechet_distance(full, plain_a) == pytest.approx(adm_frechet(full.mu, full.sigma, a.mu, a.sigma), rel=1e-6)


def test_fid_of_a_set_with_itself_is_zero():
    f = np.random.default_rng(3).standard_normal((200, 16))
    assert fid_from_features(f, f) == pytest.approx(0, abs=1e-9)
    # fewer vectors than dimensions: a rank-deficient covariance, still 0
    g = np.random.default_rng(4).standard_normal((8, 64))
    assert fid_from_features(g, g) == pytest.approx(0, abs=1e-8)


def test_fid_grows_monotonically_with_shift_and_noise():
    rng = np.random.default_rng(5)
    ref = rng.standard_normal((2000, 8))
    base = rng.standard_normal((2000, 8))
    shifts = [fid_from_features(base + s, ref) for s in (0.0, 0.25, 0.5, 1.0, 2.0)]
    noises = [fid_from_features(base + s * rng.standard_normal(base.shape), ref) for s in (0.0, 0.5, 1.0, 2.0)]
    assert all(a < b for a, b in pairwise(shifts)), shifts
    assert all(a < b for a, b in pairwise(noises)), noises
    # a shift by s in every one of d dims adds d * s^2 to the mean term
    assert shifts[-1] - shifts[0] == pytest.approx(8 * 4.0, rel=0.05)


def test_feature_stats_and_errors():
    f = np.random.default_rng(6).standard_normal((10, 3)).astype(np.float32)
    s = feature_stats(f)
    np.testing.assert_allclose(s.mu, f.mean(0), rtol=1e-6)
    np.testing.assert_allclose(s.sigma, np.cov(f.astype(np.float64), rowvar=False))
    assert s.n == 10 and s.sigma.dtype == np.float64
    with pytest.raises(ValueError, match="N >= 2"):
        feature_stats(f[:1])
    with pytest.raises(ValueError, match="different feature sizes"):
        frechet_distance(s, FeatureStats(np.zeros(4), np.eye(4)))
    with pytest.raises(ValueError, match="mu"):
        FeatureStats(np.zeros(3), np.eye(4))
