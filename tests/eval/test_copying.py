"""The copy check: nearest-neighbour RMS distances, and its verdict on samples that are copies and on ones that are not."""

import pytest
import torch

from ppflow.eval.copying import RATIO_LIMIT, copy_check, nearest_rms


def test_nearest_rms_is_the_root_mean_square_distance_to_the_closest_reference():
    samples = torch.tensor([[0.0, 0.0], [1.0, 1.0]]).view(2, 1, 1, 2)
    refs = torch.tensor([[0.0, 2.0], [1.0, 1.0], [3.0, 3.0]]).view(3, 1, 1, 2)
    torch.testing.assert_close(nearest_rms(samples, refs), torch.tensor([1.0, 0.0], dtype=torch.float64))
    with pytest.raises(ValueError, match="differ in shape"):
        nearest_rms(samples, torch.zeros(3, 1, 1, 3))


def test_copies_of_the_training_images_are_flagged_and_fresh_samples_are_not():
    g = torch.Generator().manual_seed(0)
    train, holdout, fresh = (torch.randn(64, 1, 8, 8, generator=g) for _ in range(3))
    copies = copy_check(train[:32] + 0.01 * torch.randn(32, 1, 8, 8, generator=g), train, holdout)
    assert copies.copying and copies.near_share == 1.0 and copies.ratio < 0.02
    assert copies.images == 64 and copies.samples == 32 and "COPYING" in copies.describe()
    ok = copy_check(fresh, train, holdout)
    assert not ok.copying and ok.near_share == 0.0 and RATIO_LIMIT < ok.ratio < 1.1
    assert "no sign of copying" in ok.describe() and ok.to_dict()["copying"] is False


def test_mirrored_copies_count_when_the_model_trained_with_flips():
    g = torch.Generator().manual_seed(1)
    train, holdout = torch.randn(16, 1, 4, 4, generator=g), torch.randn(16, 1, 4, 4, generator=g)
    mirrored = train.flip(-1)
    assert not copy_check(mirrored, train, holdout).copying
    flipped = copy_check(mirrored, train, holdout, mirror=True)
    assert flipped.copying and flipped.train == 0.0 and flipped.images == 16


def test_the_check_needs_both_image_sets():
    with pytest.raises(ValueError, match="held-out"):
        copy_check(torch.zeros(2, 1, 2, 2), torch.zeros(2, 1, 2, 2), torch.zeros(0, 1, 2, 2))
