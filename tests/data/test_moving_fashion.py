"""Moving Fashion-MNIST clips: paths inside the frame, the motion check, the classifier crops."""

import numpy as np
import pytest
import torch

from ppflow.data.moving_fashion import DIRECTIONS, captions, centre_crops, centroids, direction_of, make_clips


def _items(n=12):
    g = np.random.default_rng(0)
    return g.integers(0, 256, (n, 28, 28), dtype=np.uint8), np.arange(n) % 10


def test_clips_move_one_pixel_a_frame_in_their_direction():
    x, y = _items()
    clips, cls, dirs = make_clips(x, y, 40, seed=3, frames=8, size=32, item=20)
    assert clips.shape == (40, 1, 8, 32, 32) and clips.min() >= -1 and clips.max() <= 1
    assert (direction_of(clips) == dirs).all()  # the motion check recovers every direction
    move = centroids(clips)[:, -1] - centroids(clips)[:, 0]  # (n, 2)
    want = torch.tensor([(0, -7), (0, 7), (-7, 0), (7, 0)], dtype=torch.float32)[torch.as_tensor(dirs)]
    torch.testing.assert_close(move, want, atol=1e-3, rtol=0)
    assert captions(cls[:2], dirs[:2], [str(i) for i in range(10)])[0] == f"a {cls[0]} moving {DIRECTIONS[dirs[0]]}"
    with pytest.raises(ValueError, match="does not fit"):
        make_clips(x, y, 2, item=28)


def test_centre_crops_cut_the_item_out_of_every_frame():
    x, y = _items(2)
    clips, _, _ = make_clips(x, y, 3, seed=1)
    crops = centre_crops(clips, 20)
    assert crops.shape == (3 * 8, 32, 32) and crops.dtype == np.uint8
    assert crops[:, :2].max() == 0 and crops[:, 30:].max() == 0  # padded as Fashion-MNIST's 28 px in 32
