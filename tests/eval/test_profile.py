import json
import math

import pytest
import torch

from ppflow.cli import main
from ppflow.eval.profile import loss_profile
from ppflow.models import create_model
from tests.conftest import randomize

M, S = 0.3, 0.5  # data ~ N(M, S^2) per pixel: the exact velocity and its loss are known in closed form


def exact_velocity(x, t, y=None):
    tt = t.view(-1, 1, 1, 1)
    var = tt**2 * S**2 + (1 - tt) ** 2  # Var(x_t)
    cov = tt * S**2 - (1 - tt)  # Cov(x1 - x0, x_t)
    return M + cov / var * (x - tt * M)  # E[x1 - x0 | x_t]


def exact_loss(t: float) -> float:
    """E ||v* - (x1 - x0)||^2 per pixel: Var(x1 - x0 | x_t)."""
    var, cov = t**2 * S**2 + (1 - t) ** 2, t * S**2 - (1 - t)
    return S**2 + 1 - cov**2 / var


def test_profile_of_the_exact_velocity_is_its_analytic_loss():
    x1 = M + S * torch.randn(4000, 1, 8, 8, generator=torch.Generator().manual_seed(1))
    prof = loss_profile({"exact": exact_velocity}, x1, bins=5, seed=3, batch_size=1000)
    assert prof.edges == [0.0, 0.2, 0.4, 0.6, 0.8, 1.0] and prof.samples_per_bin == 4000
    for k, got in enumerate(prof.curves["exact"]):
        a, b = prof.edges[k], prof.edges[k + 1]
        want = sum(exact_loss(a + (b - a) * (i + 0.5) / 200) for i in range(200)) / 200  # bin average
        assert got == pytest.approx(want, rel=0.02)


def test_a_point_mass_has_zero_loss_under_its_exact_velocity():
    point = torch.full((1, 1, 4, 4), 0.7)
    prof = loss_profile({"exact": lambda x, t, y=None: (point - x) / (1 - t).view(-1, 1, 1, 1)},
                        point.expand(64, 1, 4, 4).clone(), bins=4)
    assert max(prof.curves["exact"]) < 1e-8


def test_models_see_the_same_draws_and_all_stages_pins_each_patch():
    ppf = randomize(create_model("PPF-tiny-2", schedule="0.5:8x8,1:4x4", in_channels=1, num_classes=10,
                                 input_size=16, learn_sigma=False)).eval()
    x1, y = torch.randn(32, 1, 16, 16), torch.arange(32) % 10
    prof = loss_profile({"a": ppf, "b": ppf}, x1, y, bins=4, all_stages=True)
    assert set(prof.curves) == {"a", "a [8x8]", "a [4x4]", "b", "b [8x8]", "b [4x4]"}
    assert prof.curves["a"] == prof.curves["b"] and prof.boundaries == {"a": [0.5], "b": [0.5]}
    # the model's own stage choice = the pinned curve of that stage, bin by bin
    assert prof.curves["a"][:2] == prof.curves["a [8x8]"][:2] and prof.curves["a"][2:] == prof.curves["a [4x4]"][2:]
    assert prof.curves["a [8x8]"][3] != prof.curves["a [4x4]"][3]
    assert prof.ratio("b", "a") == [1.0] * 4 and math.isclose(prof.mean("a", 0.5, 1.0), sum(prof.curves["a"][2:]) / 2)


def test_profile_cli_json_and_files(tmp_path, capsys):
    kw = {"in_channels": 1, "num_classes": 10, "input_size": 16, "learn_sigma": False}
    randomize(create_model("PPF-tiny-2", schedule="0.5:8x8,1:4x4", **kw)).save_pretrained(tmp_path / "ppf")
    randomize(create_model("SiT-tiny/4", schedule="1:4x4", **kw), seed=1).save_pretrained(tmp_path / "sit")
    swap = f"{tmp_path / 'ppf'}+{tmp_path / 'sit'}"
    rc = main(["profile", str(tmp_path / "sit"), f"ppf={tmp_path / 'ppf'}", f"swap={swap}", "--data", "digits",
               "--num", "16", "--bins", "4", "--out", str(tmp_path / "prof"), "--json"])
    assert rc == 0
    out = json.loads(capsys.readouterr().out)
    assert out["bin_edges"] == [0, 0.25, 0.5, 0.75, 1] and set(out["loss"]) == {"sit", "ppf", "swap"}
    assert out["loss"]["swap"][:2] == out["loss"]["ppf"][:2]  # coarse range from the PPF model
    assert out["loss"]["swap"][2:] == pytest.approx(out["loss"]["sit"][2:], rel=1e-5)  # fine range from the SiT
    for name in ("profile.csv", "profile.json", "profile.png", "profile_ratio.png"):
        assert (tmp_path / "prof" / name).exists()
    assert main(["profile", str(tmp_path / "missing"), "--data", "digits"]) == 2
    assert "ppflow profile:" in capsys.readouterr().err
    rc = main(["profile", str(tmp_path / "sit"), "--data", "fashion-mnist", "--data-path", str(tmp_path)])
    assert rc == 2 and "cannot read --data fashion-mnist" in capsys.readouterr().err
