import json

import pytest

from ppflow.cli import main


@pytest.mark.parametrize("argv, culprit", [
    (["--model", "PPF-QQ-9"], "unknown model name 'PPF-QQ-9'"),
    (["--model", "PPF-XL-7"], "2 or 3 stages"),
    (["--model", "PPF-B-2", "--image-size", "200"], "latent 25x25 is not divisible"),
    (["--image-size", "250"], "--image-size 250 is not a multiple of --vae-factor 8"),
    (["--schedule", "0.5:3x3,1:2x2"], "patch 3x3 is not a multiple of the base patch"),
    (["--cfg", "1,2,3"], "3 CFG scales"),
    (["--cfg", "abc"], "--cfg 'abc'"),
    (["--cfg", "nan"], "finite"),
    (["--vae-factor", "0"], "--vae-factor must be >= 1"),
    (["--latent-size", "-32"], "--latent-size must be >= 1"),
])
def test_bad_input_is_one_line_naming_the_culprit(argv, culprit, capsys):
    assert main(["flops", *argv]) == 2
    err = capsys.readouterr().err
    assert err.startswith("ppflow flops: error:") and culprit in err and "Traceback" not in err


def test_json_output(capsys):
    assert main(["flops", "--model", "PPF-XL-2", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["paper_fraction"] == pytest.approx(0.622, abs=0.002)
