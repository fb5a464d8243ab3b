import json

import pytest

from ppflow.data.fashion_mnist import default_dir

pytestmark = pytest.mark.skipif(not (default_dir() / "t10k-images-idx3-ubyte.gz").exists(),
                                reason="Fashion-MNIST not installed (apt-get install dataset-fashion-mnist)")


def test_quick_demo_leaves_a_full_report(tmp_path):
    from ppflow.cli import main

    out = tmp_path / "demo"
    assert main(["demo", "--quick", "--out", str(out), "--steps", "4", "--num-eval", "20"]) == 0
    for name in ("report.md", "report.html", "results.json", "samples.png", "loss.png", "profile_ratio.png"):
        assert (out / name).exists(), name
    res = json.loads((out / "results.json").read_text())["results"]
    assert set(res) == {"SiT baseline", "PPF-2", "PPF-2, CFG everywhere", "SiT -> PPF-2 adapter, +5%"}
    ad, sit = res["SiT -> PPF-2 adapter, +5%"], res["SiT baseline"]  # issue 25: the speed adapter row
    assert sit["source"] is True and sit["paired_agreement"] == 1 and sit["method"] == "scratch"
    assert ad["method"] == "lora-distill" and ad["data_free"] is True and 0 < ad["extra_params"] < 0.5
    assert 0 <= ad["paired_agreement"] <= 1 and ad["paired_psnr"] > 0 and ad["flops_bound"] > 1.3
    assert ad["train_compute"] == pytest.approx(sit["train_compute"] * (1 + ad["conversion_compute"]))
    assert ad["conversion_compute"] <= 1.0 and ad["speedup"] > 0
    ppf = res["PPF-2"]
    assert ppf["test_flops_percent_no_cfg"] == pytest.approx(61.2, abs=1.0)  # 8x8 over 4x4 at 32x32, tiny width
    assert ppf["flops_bound"] > 1.5 and ppf["classifier_fid"] > 0 and 0 <= ppf["class_accuracy"] <= 1
    assert ppf["speedup"] > 0 and ppf["train_steps"] == 7 and ppf["train_compute"] == pytest.approx(1.0, abs=0.1)
    assert len(ppf["profile_loss"]) == 4 and res["SiT baseline"]["heldout_loss_ratio"] == 1
    report = (out / "report.md").read_text()
    assert "ppflow train" in report and f"ppflow demo --quick --out {out}" in report
    # a second run reuses the finished training runs instead of training again
    assert main(["demo", "--quick", "--out", str(out), "--steps", "4", "--num-eval", "20"]) == 0
    eq = tmp_path / "eq"
    assert main(["demo", "--quick", "--out", str(eq), "--steps", "4", "--num-eval", "20", "--protocol", "equal-steps"]) == 0
    assert json.loads((eq / "results.json").read_text())["results"]["PPF-2"]["train_steps"] == 4
    assert "--protocol equal-steps" in (eq / "report.md").read_text()


def test_repro_smoke_runs_every_row(tmp_path):
    from ppflow.cli import main

    out = tmp_path / "repro"
    docs = tmp_path / "docs" / "results.md"
    assert main(["repro", "--preset", "smoke", "--out", str(out), "--steps", "4", "--docs", str(docs)]) == 0
    res = json.loads((out / "results.json").read_text())["results"]
    assert len(res) == 14
    assert res["PPF-2"]["train_steps"] == 7 and res["SiT"]["train_steps"] == 4  # equal compute
    assert res["same-patch control"]["train_steps"] == 4  # two stages of the base patch: the baseline's cost
    adapted = res["PPF-2 adapted +25%, lstsq skip"]
    assert adapted["train_steps"] == 1 and adapted["classifier_fid"] is not None
    assert adapted["train_compute"] > 1  # the source's training plus the fine-tune
    assert adapted["run_dir"] != res["PPF-2"]["run_dir"]  # its own run, started from the adapted SiT
    swap = res["swap: PPF-2 coarse + SiT fine"]
    assert swap["profile_loss"][:2] == res["PPF-2"]["profile_loss"][:2]  # coarse bins from the PPF model
    assert swap["profile_loss"][2:] == pytest.approx(res["SiT"]["profile_loss"][2:], rel=1e-5)
    assert swap["test_flops_percent"] == pytest.approx(res["PPF-2"]["test_flops_percent"], rel=0.05)
    ablation = res["PPF-2, CFG everywhere"]
    assert ablation["test_flops_percent"] > res["PPF-2"]["test_flops_percent"]
    assert [p["steps"] for p in res["SiT"]["pareto"]] == [3, 4] and "pareto" not in res["PPF-2, paper's v output"]
    assert res["SiT"]["pareto"][-1]["classifier_fid"] == res["SiT"]["classifier_fid"]  # 4 steps: the main metrics
    assert "speedup" not in res["PPF-2 adapted +10%, pooled v"] and res["PPF-2 adapted +10%, pooled v"]["flops_bound"] > 1
    text = docs.read_text()
    assert "(results/samples.png)" in text and (docs.parent / "results" / "samples.png").exists()
    assert "(results/pareto.png)" in text and "Quality against sampling cost" in text
    assert "Protocol: equal training compute" in text


def test_demo_inception_metrics(tmp_path, inception_weights):
    from ppflow.experiments.demo import DemoConfig, run_demo

    cfg = DemoConfig.quick(out=str(tmp_path / "d"), steps=2, num_eval=8, eval_batch=8, inception=True,
                           inception_ref=8)
    run_demo(cfg)
    res = json.loads((tmp_path / "d" / "results.json").read_text())["results"]
    for r in res.values():
        assert r["inception_fid"] > 0 and 0 <= r["precision"] <= 1 and 0 <= r["recall"] <= 1
    assert "Inception FID" in (tmp_path / "d" / "report.md").read_text()


def test_interrupted_demo_leaves_checkpoints_and_a_partial_report(tmp_path, monkeypatch):
    from ppflow.experiments.demo import Demo, DemoConfig

    def interrupted(self, models):
        raise KeyboardInterrupt

    monkeypatch.setattr(Demo, "grids", interrupted)
    cfg = DemoConfig.quick(out=str(tmp_path / "d"), steps=2, num_eval=8, eval_batch=8)
    with pytest.raises(KeyboardInterrupt):
        Demo(cfg).run()
    report = (tmp_path / "d" / "report.md").read_text()
    assert "partial" in report and (tmp_path / "d" / "loss.png").exists()
    for label in ("sit_baseline", "ppf_2"):
        assert (tmp_path / "d" / "runs" / label / "checkpoints" / "last.pt").exists()
    monkeypatch.undo()
    Demo(cfg).run()  # the same command again reuses the finished runs and completes the report
    assert "partial" not in (tmp_path / "d" / "report.md").read_text()


def test_regeneration_keeps_the_hand_written_findings():
    from ppflow.experiments.repro import FINDINGS, keep_findings

    old = f"# T\n\nold text\n\n{FINDINGS[0]}\n## Findings\n- PPF wins\n{FINDINGS[1]}\n\n## Results\nold table\n"
    new = "# T\n\nnew text\n\n## Results\nnew table\n"
    out = keep_findings(new, old)
    assert out.index("new text") < out.index("- PPF wins") < out.index("new table") and "old table" not in out
    assert keep_findings(new, "no markers") == new


def test_switch_preset_trains_the_controls_it_names():
    """`ppflow repro --preset switch`: the margin and pooled-init contestants reach `ppflow train` as options."""
    from ppflow.experiments.demo import Demo
    from ppflow.experiments.repro import repro_config

    demo = Demo(repro_config("switch", out="unused"))
    o = {m.label: demo.train_overrides(m) for m in demo.cfg.models if not m.same_as}
    assert o["control, margin 0.1"]["flow.stage_margin"] == 0.1 and "flow.stage_margin" not in o["control"]
    assert o["PPF-2 pooled init"]["model.stage_init"] == "pooled" and "model.stage_init" not in o["PPF-2"]
    assert o["control"]["max_steps"] == o["SiT"]["max_steps"] < o["PPF-2"]["max_steps"]  # equal compute
    assert demo.model_config(demo.spec("control, pooled init")).stage_init == "pooled"


def test_adapt_preset_budgets_kept_checkpoints_and_coarse_only_swap(tmp_path):
    """`--preset adapt` at smoke size: +P% rows get P% of the baseline's training compute in their own step
    cost, the kept SiT checkpoints are evaluated, and a coarse-only fine-tune leaves the fine projections alone."""
    import torch

    from ppflow.convert import load_model
    from ppflow.experiments.demo import Demo, DemoConfig
    from ppflow.experiments.repro import adapt_models

    cfg = DemoConfig.quick(out=str(tmp_path / "a"), steps=20, num_eval=10, eval_batch=10, profile_bins=4,
                           models=adapt_models("tiny", 20, keep=10), timing_models=["SiT"])
    demo = Demo(cfg)
    steps = {m.label: demo.steps(m) for m in cfg.models if not (m.swap or m.same_as)}
    only = demo.spec("+25% coarse-only, lstsq skip")
    assert demo.train_flops_fraction(only) < 0.35 < demo.train_flops_fraction(demo.spec("+25% shared, lstsq skip"))
    assert steps["+25% coarse-only, lstsq skip"] == round(0.25 * 20 / demo.train_flops_fraction(only))
    assert steps["+25% coarse-only, lstsq skip"] > steps["+25% shared, lstsq skip"] > 5  # 5 = 25% of 20 SiT steps
    demo.run()
    res = json.loads((tmp_path / "a" / "results.json").read_text())["results"]
    assert res["SiT at 10"]["train_compute"] == 0.5 and res["SiT at 10"]["classifier_fid"] is not None
    assert res["SiT at 10"]["classifier_fid"] != res["SiT"]["classifier_fid"]  # the kept weights, not the last
    for pct in (10, 25):
        assert res[f"+{pct}% coarse-only, lstsq skip"]["train_compute"] == pytest.approx(1 + pct / 100, abs=0.03)
    few = res["+5% adapter, 256 images"]  # few-shot: flow matching on 256 images, its samples checked for copies
    assert few["method"] == "lora flow matching" and few["data_free"] is False
    assert few["copy_ratio"] > 0 and isinstance(few["copying"], bool)
    swap = res["+25% coarse-only + SiT fine"]
    assert swap["profile_loss"][2:] == pytest.approx(res["SiT"]["profile_loss"][2:], rel=1e-5)
    assert swap["profile_loss"][:2] == res["+25% coarse-only, lstsq skip"]["profile_loss"][:2]
    sit = load_model(res["SiT"]["run_dir"]).state_dict()  # the EMA weights the adaptation started from
    coarse = load_model(res["+25% coarse-only, lstsq skip"]["run_dir"]).state_dict()
    for a, b in (("final_layer.unpatchify.1.linear.weight", "final_layer.unpatchify.0.linear.weight"),
                 ("x_embedder.1.proj.weight", "x_embedder.0.proj.weight")):
        assert torch.equal(coarse[a], sit[b])  # the fine stage's projections never got a gradient
    assert not torch.equal(coarse["blocks.0.attn.qkv.weight"], sit["blocks.0.attn.qkv.weight"])


def test_search_preset_pits_each_searched_schedule_against_the_hand_set_one():
    """`--preset search`: a searched row per budget beside the hand-set one, same options, equal training compute."""
    from ppflow.cli import main
    from ppflow.experiments.demo import Demo
    from ppflow.experiments.repro import repro_config

    searched = {"PPF-2": "0.4:8x8,1:4x4", "PPF-3": "0.3:8x8,0.6:4x8,1:4x4"}
    demo = Demo(repro_config("search", out="unused", searched=searched, probe_only={"PPF-2": "0.4:8x8,1:4x4"}))
    rows = {m.label: m for m in demo.cfg.models}
    assert list(rows) == ["SiT", "PPF-2 hand-set", "PPF-2 budget, searched", "PPF-2 budget, probe-only search",
                          "PPF-3 hand-set", "PPF-3 budget, searched", "PPF-3 budget, probe-only search"]
    assert rows["PPF-2 budget, probe-only search"].same_as == "PPF-2 budget, searched"  # one schedule, one model
    assert rows["PPF-3 budget, probe-only search"].schedule == "0.5:8x8,0.75:8x4,1:4x4"  # the default (docs)
    assert rows["PPF-3 budget, probe-only search"].same_as is None
    assert rows["PPF-3 budget, searched"].schedule == searched["PPF-3"]
    assert rows["PPF-2 budget, searched"].model == rows["PPF-2 hand-set"].model == {"coarse_output": "noise_skip",
                                                                                     "stage_init": "pooled"}
    assert rows["PPF-3 budget, searched"].cfg_scales == [2.0] * 3
    o = {label: demo.train_overrides(m) for label, m in rows.items()}
    assert o["SiT"]["max_steps"] < o["PPF-2 hand-set"]["max_steps"]  # equal compute: cheaper steps, more of them
    assert o["PPF-2 budget, searched"]["model.schedule"] == searched["PPF-2"]
    default = repro_config("search", out="unused").models  # the schedules docs/schedules.md found
    assert [m.label for m in default if not m.same_as] == ["SiT", "PPF-2 hand-set", "PPF-2 budget, probe-only search",
                                                          "PPF-3 hand-set", "PPF-3 budget, probe-only search"]
    assert [repro_config(p, out="unused").steps for p in ("fmnist", "switch", "search", "adapt", "smoke")] == \
        [1400, 1400, 1400, 5600, 4]  # the baseline's steps (switch/search once fell to the smoke size)
    with pytest.raises(ValueError, match="needs the searched schedules"):
        repro_config("search", out="unused", searched={"PPF-2": ""})
    assert main(["repro", "--preset", "fmnist", "--searched", "PPF-2=1:4x4"]) == 2
    assert main(["repro", "--preset", "search", "--probe-only", "PPF-4=1:4x4"]) == 2
    with pytest.raises(ValueError, match="needs the probe-only schedules"):
        repro_config("search", out="unused", probe_only={"PPF-3": ""})
    same = {m.label: m for m in repro_config("search", out="unused", searched={"PPF-3": "0.3:8x8,0.6:4x8,1:4x4"}).models}
    assert same["PPF-2 budget, searched"].same_as == "PPF-2 hand-set"  # the hand-set schedule found: not trained twice
    assert same["PPF-3 budget, searched"].same_as is None
    assert repro_config("search", out="unused", seed=1).seed == 1
