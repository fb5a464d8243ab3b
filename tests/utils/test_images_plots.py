import numpy as np
import torch
from PIL import Image

from ppflow.utils.images import grid, save_grid, to_uint8
from ppflow.utils.plots import line_plot


def test_to_uint8_maps_range_and_layout():
    x = torch.tensor([-1.0, 0.0, 1.0, 2.0]).view(1, 1, 2, 2)
    out = to_uint8(x)
    assert out.shape == (1, 2, 2, 1) and out.dtype == np.uint8
    assert out[0, :, :, 0].tolist() == [[0, 128], [255, 255]]


def test_grid_places_images_row_major():
    imgs = np.stack([np.full((2, 3, 1), i, np.uint8) for i in range(5)])
    g = grid(imgs, nrow=3, pad=1, pad_value=255)
    assert g.shape == (2 * 3 + 1, 3 * 4 + 1, 1)
    assert g[1, 1, 0] == 0 and g[1, 5, 0] == 1 and g[4, 1, 0] == 3 and g[4, 9, 0] == 255  # slot 6 empty


def test_save_grid_and_plot(tmp_path):
    save_grid(torch.zeros(4, 3, 8, 8), tmp_path / "g.png", scale=2)
    assert Image.open(tmp_path / "g.png").size == (2 * (2 * 10 + 2), 2 * (2 * 10 + 2))
    line_plot({"a": ([0, 1, 2], [3.0, 2.0, 1.0]), "b": ([0, 2], [1.0, 1.5])}, tmp_path / "p.png", log_y=True)
    assert Image.open(tmp_path / "p.png").size == (720, 440)


def test_plot_legend_gives_ten_series_ten_colours(tmp_path):
    """Each of ten series has its own legend swatch colour (a verify plot once showed two curves in one blue)."""
    from ppflow.utils.plots import COLORS

    path = line_plot({f"s{i}": ([0, 1], [i, i + 1.0]) for i in range(10)}, tmp_path / "p.png")
    img = np.asarray(Image.open(path).convert("RGB"))
    swatches = {tuple(img[36 + 13 + 16 * i, 720 - 20 - 144]) for i in range(10)}  # the centre of each legend box
    assert len(swatches) == 10 and swatches <= set(COLORS)
