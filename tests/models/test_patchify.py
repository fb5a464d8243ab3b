import pytest
import torch

from ppflow.models.patchify import patchify, unpatchify


@pytest.mark.parametrize("patch", [(2, 2), (4, 4), (2, 4), (4, 2), (8, 8), (1, 1)])
@pytest.mark.parametrize("hw", [(16, 16), (8, 24)])
def test_round_trip(patch, hw):
    x = torch.randn(3, 5, *hw)
    tok = patchify(x, *patch)
    assert tok.shape == (3, (hw[0] // patch[0]) * (hw[1] // patch[1]), 5 * patch[0] * patch[1])
    # unpatchify's layout is (row, col, channel) per token; reorder patchify's (channel, row, col)
    ph, pw = patch
    tok_rsc = tok.view(3, -1, 5, ph, pw).permute(0, 1, 3, 4, 2).reshape(tok.shape)
    assert torch.equal(unpatchify(tok_rsc, ph, pw, *hw), x)


def test_patchify_equals_strided_conv():
    x = torch.randn(2, 3, 8, 12)
    w = torch.randn(7, 3, 4, 2)
    conv = torch.nn.functional.conv2d(x, w, stride=(4, 2)).flatten(2).transpose(1, 2)  # (N, L, D)
    lin = patchify(x, 4, 2) @ w.reshape(7, -1).T
    torch.testing.assert_close(lin, conv)


def test_token_order_is_row_major():
    x = torch.arange(16.0).view(1, 1, 4, 4)
    tok = patchify(x, 2, 2)
    assert tok[0, 1].tolist() == [2.0, 3.0, 6.0, 7.0]  # second token = top-right patch
