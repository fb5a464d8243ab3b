import json
import math

import pytest

from ppflow.bench.sample import SamplingBenchConfig, bench_sampling, format_report
from ppflow.cli import main
from ppflow.models import create_config
from ppflow.models.flops import evaluation_flops

QUICK = ["--size", "tiny", "--latent-size", "16", "--batch", "2", "--steps", "3", "--repeats", "1", "--warmup", "0",
         "--no-isolate", "--cfg"]


def test_bench_sample_json_structure_and_exact_bounds(capsys):
    assert main(["bench", "sample", *QUICK, "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["baseline"] == "SiT-tiny/2"
    assert set(result["models"]) == {"PPF-tiny-2", "PPF-tiny-3"}
    kw = {"in_channels": 4, "input_size": 16, "num_classes": 1000}
    sit = create_config("SiT-tiny/2", **kw)
    # euler, 3 steps, batch 2: SiT 6 forwards (12 with CFG everywhere); PPF-2 steps split 2 + 1;
    # with stage CFG [1, 3] only stage 1 doubles
    expected = {"PPF-tiny-2": ([4, 2], [4, 4]), "PPF-tiny-3": ([2, 2, 2], [2, 4, 4])}
    for name, m in result["models"].items():
        for key in ("speedup", "bound", "efficiency"):
            assert math.isfinite(m[key]) and m[key] > 0
            assert math.isfinite(m["cfg"][key]) and m["cfg"][key] > 0
        assert m["efficiency"] == pytest.approx(m["speedup"] / m["bound"])
        cfg = create_config(name, **kw)
        plain, guided = expected[name]
        assert result["runs"][name]["forwards"] == plain and result["runs"][f"{name} cfg"]["forwards"] == guided
        assert m["bound"] == pytest.approx(evaluation_flops(sit, [6], 16, 16)[1] / evaluation_flops(cfg, plain, 16, 16)[1])
        assert m["cfg"]["bound"] == pytest.approx(
            evaluation_flops(sit, [12], 16, 16)[1] / evaluation_flops(cfg, guided, 16, 16)[1])
        assert m["bound"] > 1 and m["cfg"]["bound"] > m["bound"]  # stage CFG saves more than patches alone
        assert len(result["runs"][name]["times"]) == 1
        assert m["peak_memory_bytes"] > 0 and m["cfg"]["peak_memory_bytes"] > 0
    assert result["ratios"] == result["models"]  # the key `bench train` uses too


def test_bench_table_and_errors(capsys):
    result = bench_sampling(SamplingBenchConfig(models=("PPF-tiny-2",), baseline="SiT-tiny/2", latent_size=8,
                                                batch=1, steps=2, repeats=1, warmup=0, cfg=False, isolate=False))
    assert "cfg" not in result["models"]["PPF-tiny-2"]
    text = format_report(result)
    assert "PPF-tiny-2" in text and "efficiency" in text
    assert main(["bench", "sample", *QUICK, "--steps", "2"]) == 2  # PPF-3 needs 3 steps
    assert "at least 3 steps" in capsys.readouterr().err
