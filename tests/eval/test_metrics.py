"""Inception Score and improved precision / recall against hand-computed answers."""

import numpy as np
import pytest
import torch

from ppflow.eval.metrics import inception_score, manifold_radii, precision_recall


def test_inception_score_of_a_uniform_classifier_is_one():
    assert inception_score(np.full((100, 1008), 1 / 1008)) == pytest.approx(1.0)


def test_inception_score_of_confident_balanced_predictions_is_the_class_count():
    probs = np.eye(10)[np.arange(1000) % 10]  # one-hot, every class equally often
    assert inception_score(probs) == pytest.approx(10.0)
    # confident but always the same class: no diversity
    assert inception_score(np.eye(10)[np.zeros(50, dtype=int)]) == pytest.approx(1.0)


def test_inception_score_averages_splits_like_adm():
    a = np.eye(4)[np.arange(8) % 4]  # split score 4
    b = np.eye(4)[np.arange(8) % 2]  # split score 2
    assert inception_score(np.concatenate([a, b]), split_size=8) == pytest.approx(3.0)
    # one split: confident predictions, so IS = exp(entropy of the marginal (3/8, 3/8, 1/8, 1/8))
    m = np.array([3, 3, 1, 1]) / 8
    assert inception_score(np.concatenate([a, b]), split_size=16) == pytest.approx(np.exp(-(m * np.log(m)).sum()))


def brute_force_pr(ref, samples, k):
    def radii(x):
        d = ((x[:, None] - x[None]) ** 2).sum(-1)
        return np.sort(d, axis=1)[:, k]

    rr, rs = radii(ref), radii(samples)
    d = ((ref[:, None] - samples[None]) ** 2).sum(-1)  # (R, S)
    precision = (d <= rr[:, None]).any(0).mean()
    recall = (d <= rs[None, :]).any(1).mean()
    return precision, recall


def test_precision_recall_matches_brute_force_and_batching():
    rng = np.random.default_rng(0)
    ref = rng.standard_normal((40, 5))
    samples = 0.6 * rng.standard_normal((30, 5)) + 0.8
    want = brute_force_pr(ref, samples, 3)
    assert precision_recall(ref, samples, k=3) == pytest.approx(want)
    assert precision_recall(ref, samples, k=3, batch_size=7) == pytest.approx(want)
    assert 0 < want[0] < 1 and 0 < want[1] < 1  # the example is not degenerate


def test_precision_recall_extremes():
    rng = np.random.default_rng(1)
    ref = rng.standard_normal((20, 4))
    assert precision_recall(ref, ref.copy()) == (1.0, 1.0)
    assert precision_recall(ref, ref + 100.0) == (0.0, 0.0)
    # samples collapsed onto one reference point: precise, no recall beyond its neighbourhood
    p, r = precision_recall(ref, np.repeat(ref[:1], 10, axis=0))
    assert p == 1.0 and r < 0.5


def test_manifold_radii_excludes_self():
    x = torch.tensor([[0.0], [1.0], [3.0], [6.0], [10.0]])
    # squared distance to the 1st and 2nd nearest other point
    assert manifold_radii(x, k=1).tolist() == [1.0, 1.0, 4.0, 9.0, 16.0]
    assert manifold_radii(x, k=2).tolist() == [9.0, 4.0, 9.0, 16.0, 49.0]
    with pytest.raises(ValueError, match="more than k"):
        manifold_radii(x[:2], k=3)
