"""`ppflow bench train` and `bench gpu`: structure, exact FLOPs bounds, the official dense-mask attention, memory."""

import json
import math

import pytest
import torch

from ppflow.bench import gpu as gpu_bench
from ppflow.bench.attention import use_attention
from ppflow.bench.memory import peak_rss_bytes, reset_peak, rss_bytes
from ppflow.bench.workers import Worker, WorkerError
from ppflow.cli import main
from ppflow.models import create_config, create_model
from ppflow.models.flops import train_flops

QUICK = ["--size", "tiny", "--latent-size", "8", "--batch", "4", "--repeats", "2", "--warmup", "0"]


def test_bench_train_json_ratios_and_exact_training_flops_bound(capsys):
    assert main(["bench", "train", *QUICK, "--no-isolate", "--json"]) == 0
    captured = capsys.readouterr()
    assert "estimated" in captured.err  # the estimate comes first
    result = json.loads(captured.out)
    assert result["baseline"] == "SiT-tiny/2" and set(result["ratios"]) == {"PPF-tiny-2", "PPF-tiny-3"}
    kw = {"in_channels": 4, "input_size": 8, "num_classes": 1000}
    # batch 4, stratified: ppf2 splits 2 + 2 (spans 1/2, 1/2), ppf3 2 + 1 + 1 (1/2, 1/4, 1/4) in every step
    counts = {"SiT-tiny/2": [4], "PPF-tiny-2": [2, 2], "PPF-tiny-3": [2, 1, 1]}
    base = train_flops(create_config("SiT-tiny/2", **kw), [4], 8, 8)["total"]
    for name, m in result["ratios"].items():
        assert result["runs"][name]["stage_counts"] == [counts[name]] * 2
        for key in ("speedup", "bound", "efficiency"):
            assert math.isfinite(m[key]) and m[key] > 0
        assert m["efficiency"] == pytest.approx(m["speedup"] / m["bound"])
        assert m["bound"] == pytest.approx(base / train_flops(create_config(name, **kw), counts[name], 8, 8)["total"])
        assert m["peak_memory_bytes"] > 0 and m["baseline_peak_memory_bytes"] > 0
    assert result["ratios"]["PPF-tiny-3"]["bound"] > result["ratios"]["PPF-tiny-2"]["bound"] > 1


def test_bench_train_in_child_processes_reports_each_models_memory(capsys):
    argv = ["bench", "train", *QUICK, "--models", "PPF-tiny-2", "--repeats", "1", "--dtype", "bf16"]
    assert main(argv) == 0
    text = capsys.readouterr().out
    assert "peak RSS of a child process" in text and "bfloat16" in text and "PPF-tiny-2" in text


def test_bench_errors_are_one_line(capsys):
    assert main(["bench", "train", *QUICK, "--models", "SiT-tiny/2", "--no-isolate"]) == 2
    assert "same model twice" in capsys.readouterr().err
    assert main(["bench", "train", *QUICK, "--models", "PPF-Q-9"]) == 2  # --size tiny leaves 'PPF-tiny-9'
    assert "PPF presets have 2 or 3 stages" in capsys.readouterr().err
    assert main(["bench", "train", "--dtype", "int8"]) == 2
    assert "choose one of fp32, bf16" in capsys.readouterr().err


def test_a_child_process_error_is_one_line():
    with pytest.raises(WorkerError, match="JSONDecodeError"):
        Worker("json:loads", {"s": "{"}, "broken").ready()


def test_dense_block_diagonal_mask_attention_equals_per_stage_sdpa():
    torch.manual_seed(0)
    model = create_model("PPF-tiny-3", input_size=8, in_channels=2, num_classes=5)
    for p in model.parameters():  # zero-init adaLN/outputs would hide a difference
        torch.nn.init.normal_(p, std=0.05)
    x, t, y = torch.randn(5, 2, 8, 8), torch.tensor([0.1, 0.9, 0.6, 0.2, 0.8]), torch.tensor([0, 1, 2, 3, 4])
    per_group = model(x, t, y)
    dense = use_attention(model, "dense-mask")(x, t, y)  # one packed row, (T, T) block-diagonal mask
    torch.testing.assert_close(dense, per_group, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(use_attention(model, "sdpa")(x, t, y), per_group, atol=0, rtol=0)


def test_peak_memory_resets_and_rises():
    assert reset_peak(torch.device("cpu")) in (True, False)
    before = peak_rss_bytes()
    big = torch.ones(64 * 2**20 // 4)  # 64 MiB, touched
    assert peak_rss_bytes() >= before and peak_rss_bytes() >= rss_bytes() > 0
    del big


def test_bench_gpu_dry_run_writes_every_part(tmp_path, capsys):
    out = tmp_path / "g"
    assert main(["bench", "gpu", "--dry-run", "--no-isolate", "--out", str(out), "--dtype", "fp32"]) == 0
    result = json.loads((out / "bench-gpu.json").read_text())
    assert list(result["parts"]) == ["sampling", "attention", "flux", "compile", "diffusers"]
    for name, part in result["parts"].items():
        assert "error" not in part, (name, part)
    a = result["parts"]["sampling"]
    assert a["runs"]["SiT-tiny/2"]["extrapolated_seconds"]["250"] == pytest.approx(
        a["runs"]["SiT-tiny/2"]["seconds"] / 4 * 250)
    assert set(result["parts"]["attention"]["ratios"]) == {"PPF-tiny-2 sdpa"}
    e = result["parts"]["diffusers"]
    assert e["wan2.1-14b"]["schedule"] == "ppf3-video" and len(e["wan2.1-14b"]["stage_seconds"]) == 3
    assert e["qwen-image"]["flops_bound"] > 1.2 and e["qwen-image"]["measured_bound"] > 0
    md = (out / "bench-gpu.md").read_text()
    assert "dry run" in md and "(d) training step: torch.compile" in md and "(e) the PPFlow diffusers hook" in md
    assert main(["bench", "gpu", "--out", str(out)]) == 2  # no CUDA here: one line, no traceback
    assert "CUDA" in capsys.readouterr().err


def test_bench_gpu_flux_part_skips_without_ppflow_flux(tmp_path, monkeypatch):
    monkeypatch.setattr(gpu_bench, "load_flux", lambda: None)
    cfg = gpu_bench.GpuBenchConfig(out=str(tmp_path), dry_run=True, device="cpu", parts=("c",))
    result = gpu_bench.run_gpu_suite(cfg)
    assert result["parts"]["flux"]["skipped"] == gpu_bench.FLUX_MISSING
    assert gpu_bench.FLUX_MISSING in (tmp_path / "bench-gpu.md").read_text()
