"""Small-scale reproduction of the paper's main table on Fashion-MNIST (`ppflow repro --preset fmnist`).

Rows, under the paper's protocol (equal training compute for models from scratch):
- the SiT baseline; PPF-2 and PPF-3 from scratch (ppflow's default coarse output `noise_skip`), with stage CFG
  and with CFG everywhere;
- the remedy ablation: PPF-2 with the paper's plain `v` output;
- the same-patch control `0.5:4x4,1:4x4` (two stages, both the base patch): the stage machinery alone;
- adaptation from the trained baseline with +10% and +25% of its steps: pooled (official) and least-squares
  inits, each coarse output;
- stage swaps (PPF's coarse stage + SiT's fine stage and the reverse), which attribute the gap to a stage;
- the loss profile of every model, and FID against sampling cost for SiT, PPF-2 and PPF-3 at several step counts.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from .config import ADAPTER
from .demo import Demo, DemoConfig, DemoModel

PRESETS = ("fmnist", "smoke", "switch", "adapt", "search")
SKIP = {"coarse_output": "noise_skip"}


def repro_models(size: str, base: int, cfg_scale: float = 2.0) -> list[DemoModel]:
    s2, s3, same = "0.5:8x8,1:4x4", "0.5:8x8,0.75:4x8,1:4x4", "0.5:4x4,1:4x4"
    p10, p25 = max(1, base // 10), max(1, base // 4)
    lr = 1e-4  # fine-tuning a trained model at the from-scratch rate (1e-3) undoes much of it, as DiT/SiT/PPFlow
    return [
        DemoModel("SiT", f"SiT-{size}/4", "1:4x4"),
        DemoModel("PPF-2", f"PPF-{size}-2", s2, model=SKIP),
        DemoModel("PPF-2, CFG everywhere", f"PPF-{size}-2", s2, same_as="PPF-2", cfg_scales=[cfg_scale] * 2),
        DemoModel("PPF-3", f"PPF-{size}-3", s3, model=SKIP),
        DemoModel("PPF-3, CFG everywhere", f"PPF-{size}-3", s3, same_as="PPF-3", cfg_scales=[cfg_scale] * 3),
        DemoModel("PPF-2, paper's v output", f"PPF-{size}-2", s2),
        DemoModel("same-patch control", f"PPF-{size}-2", same, cfg_scales=[cfg_scale] * 2),
        DemoModel("PPF-2 adapted +10%, pooled v", f"PPF-{size}-2", s2, adapt_from="SiT", steps=p10, lr=lr),
        DemoModel("PPF-2 adapted +10%, pooled skip", f"PPF-{size}-2", s2, adapt_from="SiT", steps=p10, lr=lr,
                  model=SKIP),
        DemoModel("PPF-2 adapted +10%, lstsq v", f"PPF-{size}-2", s2, adapt_from="SiT", steps=p10, lr=lr,
                  init="lstsq"),
        DemoModel("PPF-2 adapted +10%, lstsq skip", f"PPF-{size}-2", s2, adapt_from="SiT", steps=p10, lr=lr,
                  model=SKIP, init="lstsq"),
        DemoModel("PPF-2 adapted +25%, lstsq skip", f"PPF-{size}-2", s2, adapt_from="SiT", steps=p25, lr=lr,
                  model=SKIP, init="lstsq"),
        DemoModel("swap: PPF-2 coarse + SiT fine", "StageSwap", s2, swap=["PPF-2", "SiT"]),
        DemoModel("swap: SiT coarse + PPF-2 fine", "StageSwap", s2, swap=["SiT", "PPF-2"]),
    ]


def switch_models(size: str, cfg_scale: float = 2.0) -> list[DemoModel]:
    """The stage-machinery experiment: what costs quality at the switch (same-patch control, margin, stage init)."""
    s2, same, both = "0.5:8x8,1:4x4", "0.5:4x4,1:4x4", [cfg_scale] * 2
    pooled = {"stage_init": "pooled"}
    return [
        DemoModel("SiT", f"SiT-{size}/4", "1:4x4"),
        DemoModel("control", f"PPF-{size}-2", same, cfg_scales=both),
        DemoModel("control, margin 0.1", f"PPF-{size}-2", same, cfg_scales=both, train={"flow.stage_margin": 0.1}),
        DemoModel("control, pooled init", f"PPF-{size}-2", same, cfg_scales=both, model=pooled),
        DemoModel("PPF-2", f"PPF-{size}-2", s2, model=SKIP),
        DemoModel("PPF-2, CFG everywhere", f"PPF-{size}-2", s2, same_as="PPF-2", cfg_scales=both),
        DemoModel("PPF-2 pooled init", f"PPF-{size}-2", s2, model={**SKIP, **pooled}),
        DemoModel("PPF-2 pooled init, CFG everywhere", f"PPF-{size}-2", s2, same_as="PPF-2 pooled init",
                  cfg_scales=both),
    ]


def adapt_models(size: str, base: int, cfg_scale: float = 2.0, keep: int | None = None) -> list[DemoModel]:
    """Converting a trained SiT to PPFlow with a few % of its training compute (`ppflow repro --preset adapt`).

    `shared`: the paper's adaptation (one backbone fine-tuned on both stages). `coarse-only`: a copy of the
    adapted model trained on the coarse stage alone (`flow.shares 1,0`), sampled as a stage swap with the untouched
    SiT serving the fine stage (the same sampling FLOPs; twice the weights in memory). `adapter`: a stage-gated
    speed adapter on the frozen SiT, distilled from it (ppflow.train.distill): data-free from the teacher's CFG
    trajectories, on data, few-shot (the flow-matching target on the first 256 training images, rank 8, lr 3e-3:
    `ppflow adapt --images 256`, with a copy check of its samples), guided (CFG baked into the coarse stage,
    sampled with CFG 1 there), and a 3-stage one.
    Sampled with CFG in every stage unless said; PPF steps are the budget over the step's training FLOPs.
    """
    s2, s3, both, keep = "0.5:8x8,1:4x4", "0.5:8x8,0.75:4x8,1:4x4", [cfg_scale] * 2, keep or max(1, base // 4)
    lr = 1e-3  # the from-scratch rate: at 1e-4 the coarse stage barely moves in a +25% budget (pilot: FID 152 vs 114)
    skip, only = {"coarse_output": "noise_skip"}, {"flow.shares": "1,0"}
    rows = [DemoModel("SiT", f"SiT-{size}/4", "1:4x4", train={"keep_every": keep})]
    rows += [DemoModel(f"SiT at {k}", f"SiT-{size}/4", "1:4x4", same_as="SiT", checkpoint=k)
             for k in range(keep, base, keep)]
    for pct in (5, 10, 25):
        shared = {"adapt_from": "SiT", "lr": lr, "cfg_scales": both, "budget": pct / 100}
        rows.append(DemoModel(f"+{pct}% shared, lstsq skip", f"PPF-{size}-2", s2, model=skip, init="lstsq", **shared))
        rows.append(DemoModel(f"+{pct}% coarse-only, lstsq skip", f"PPF-{size}-2", s2, model=skip, init="lstsq",
                              adapt_from="SiT", lr=lr, cfg_scales=both, budget=pct / 100, train=only))
        rows.append(DemoModel(f"+{pct}% coarse-only + SiT fine", "StageSwap", s2, cfg_scales=both,
                              swap=[f"+{pct}% coarse-only, lstsq skip", "SiT"]))
    ad = {"adapt_from": "SiT", "adapter_ema": 0.99}
    cache = {"cache": "teacher-states-ppf2.safetensors"}  # one teacher cache for the data-free PPF-2 adapters
    for pct in (2, 5, 10):
        rows.append(DemoModel(f"+{pct}% adapter, data-free", f"SiT-{size}/4", s2, budget=pct / 100,
                              adapter={**ADAPTER, **cache}, cfg_scales=both, **ad))
    rows += [
        DemoModel("+5% adapter, data", f"SiT-{size}/4", s2, budget=0.05, adapter={**ADAPTER, "data_free": False},
                  cfg_scales=both, **ad),
        DemoModel("+5% adapter, 256 images", f"SiT-{size}/4", s2, budget=0.05, lr=3e-3, train={"data.limit": 256},
                  adapter={**ADAPTER, "data_free": False, "mix": 1.0, "rank": 8}, cfg_scales=both, **ad),
        DemoModel("+5% adapter, data-free, guided", f"SiT-{size}/4", s2, budget=0.05,
                  adapter={**ADAPTER, **cache, "guided": cfg_scale}, cfg_scales=[1.0, cfg_scale], **ad),
        DemoModel("+5% 3-stage adapter, data-free", f"SiT-{size}/4", s3, budget=0.05, adapter=ADAPTER,
                  cfg_scales=[cfg_scale] * 3, **ad),
    ]
    return rows


# `ppflow schedule search` on the 1400-step SiT-mini/4 (commands in docs/schedules.md), CFG in every stage, at
# the hand-set PPF-2's and PPF-3's test-FLOPs fractions: what the default search (probes + verified fine-tunes)
# chose -- the hand-set schedules at both budgets -- and what the probes alone (`--verify 0`) chose
HAND_SET = {"PPF-2": "0.5:8x8,1:4x4", "PPF-3": "0.5:8x8,0.75:4x8,1:4x4"}
SEARCHED = dict(HAND_SET)
PROBE_ONLY = {"PPF-2": "0.4:8x8,0.55:8x4,1:4x4", "PPF-3": "0.5:8x8,0.75:8x4,1:4x4"}


def search_models(size: str, searched: dict[str, str], probe_only: dict[str, str] | None = None,
                  cfg_scale: float = 2.0) -> list[DemoModel]:
    """Hand-set PPF-2 / PPF-3 against the searched schedules of the same test-FLOPs budget (`--preset search`).

    Per budget: the hand-set row, the searched row and (with `probe_only`) the probe-only search's row; a row
    whose schedule is already in the table is that model, not trained twice. Every PPF row uses the demo's options
    (`noise_skip`, pooled stage init) and CFG in every stage, and trains from scratch with the baseline's training
    compute (the paper's protocol).
    """
    opts = {**SKIP, "stage_init": "pooled"}

    def row(label: str, schedule: str) -> DemoModel:
        n = len(schedule.split(","))
        return DemoModel(label, f"PPF-{size}-{n}", schedule, model=opts, cfg_scales=[cfg_scale] * n)

    rows = [DemoModel("SiT", f"SiT-{size}/4", "1:4x4")]
    for name, schedule in HAND_SET.items():
        trained = {schedule: f"{name} hand-set"}
        rows.append(row(f"{name} hand-set", schedule))
        for label, found in ((f"{name} budget, searched", searched[name]),
                             (f"{name} budget, probe-only search", (probe_only or {}).get(name))):
            if not found:
                continue
            rows.append(row(label, found))
            if found in trained:
                rows[-1].same_as = trained[found]
            trained.setdefault(found, label)
    return rows


def repro_config(preset: str = "fmnist", out: str | None = None, **kw) -> DemoConfig:
    """The experiment behind docs/results.md (`fmnist`) or a seconds-long pipeline check (`smoke`)."""
    if preset not in PRESETS:
        raise ValueError(f"unknown preset {preset!r}; choose one of {PRESETS}")
    size = "tiny" if preset == "smoke" else "mini"
    base = kw.get("steps") or (4 if preset == "smoke" else 1400)
    settings = {"models": repro_models(size, base, kw.get("cfg_scale", 2.0)), "steps": base,
                "title": "ppflow: the PPFlow main table at Fashion-MNIST scale", "inception": True,
                "num_eval": 300, "inception_ref": 500, "pareto_steps": [8, 12, 16],
                "pareto_models": ["SiT", "PPF-2", "PPF-3"],
                "inception_models": ["SiT", "PPF-2", "PPF-3", "same-patch control"],
                "timing_models": ["SiT", "PPF-2", "PPF-2, CFG everywhere", "PPF-3", "PPF-3, CFG everywhere",
                                  "swap: PPF-2 coarse + SiT fine"], "timing_repeats": 2, "profile_num": 256,
                "grid_models": ["SiT", "PPF-2", "PPF-3", "PPF-2, paper's v output", "PPF-2 adapted +25%, lstsq skip"],
                "profile_models": ["SiT", "PPF-2", "PPF-3", "PPF-2, paper's v output", "same-patch control",
                                   "PPF-2 adapted +25%, lstsq skip", "swap: PPF-2 coarse + SiT fine"]}
    if preset == "switch":
        settings.update(models=switch_models(size, kw.get("cfg_scale", 2.0)), inception=False, num_eval=500,
                        pareto_steps=[], timing_models=["SiT"], timing_repeats=1, profile_num=512,
                        grid_models=None, inception_models=None, pareto_models=None, profile_models=None,
                        title="ppflow: what the stage machinery costs at the switch (Fashion-MNIST)")
    if preset == "adapt":
        base = kw.get("steps") or 5600
        settings.update(models=adapt_models(size, base, kw.get("cfg_scale", 2.0)), steps=base, inception=False,
                        num_eval=500, pareto_steps=[], timing_models=["SiT", "+5% shared, lstsq skip",
                                                                      "+5% coarse-only + SiT fine",
                                                                      "+5% adapter, data-free",
                                                                      "+5% adapter, data-free, guided",
                                                                      "+5% 3-stage adapter, data-free"],
                        timing_repeats=2, profile_num=256, grid_models=None, inception_models=None,
                        pareto_models=None, profile_models=None,
                        title="ppflow: adapting a trained SiT to PPF-2 (Fashion-MNIST)")
    if preset == "search":
        searched = {**SEARCHED, **(kw.get("searched") or {})}
        probe_only = {**PROBE_ONLY, **(kw.get("probe_only") or {})}
        for flag, given in (("searched", searched), ("probe-only", probe_only)):
            if set(given) != set(SEARCHED) or not all(given.values()):
                raise ValueError(f"--preset search needs the {flag} schedules: pass --{flag} PPF-2=SCHEDULE "
                                 f"--{flag} PPF-3=SCHEDULE (from `ppflow schedule search`)")
        models = search_models(size, searched, probe_only, kw.get("cfg_scale", 2.0))
        settings.update(models=models, inception=False, num_eval=500, pareto_steps=[], profile_num=512,
                        timing_models=[m.label for m in models], timing_repeats=2, grid_models=None,
                        inception_models=None, pareto_models=None, profile_models=None,
                        title="ppflow: searched vs hand-set schedules at the paper's budgets (Fashion-MNIST)")
    if preset == "smoke":
        settings.update(data_limit=512, batch_size=16, warmup=0, ema_decay=0.9, sample_steps=4, num_eval=20,
                        eval_batch=20, classifier_steps=8, timing_batch=8, timing_repeats=1, inception=False,
                        threads=1, profile_num=16, profile_bins=4, pareto_steps=[3, 4],
                        timing_models=["SiT", "PPF-2", "PPF-3"])
    settings.update({k: v for k, v in kw.items() if k not in ("steps", "searched", "probe_only")})
    return DemoConfig(out=out or f"runs/repro-{preset}", **settings)


def run_repro(cfg: DemoConfig, docs: str | None = None) -> Path:
    """Run the experiment; with `docs`, also write the report there (e.g. docs/results.md) with its images."""
    report = Demo(cfg).run()
    if docs:
        target = Path(docs)
        assets = target.with_suffix("")  # docs/results/ holds the images
        assets.mkdir(parents=True, exist_ok=True)
        text = report.read_text()
        for png in report.parent.glob("*.png"):
            shutil.copy(png, assets / png.name)
            text = text.replace(f"]({png.name})", f"]({assets.name}/{png.name})")
        for name in ("profile.csv", "results.json"):
            if (report.parent / name).exists():
                shutil.copy(report.parent / name, assets / name)
        target.write_text(keep_findings(text, target.read_text() if target.exists() else ""))
    return report


FINDINGS = ("<!-- findings: written by hand, kept by regeneration -->", "<!-- /findings -->")


def keep_findings(new: str, old: str) -> str:
    """`new` with the hand-written findings block of `old` (between the FINDINGS markers) before its first table."""
    start, end = old.find(FINDINGS[0]), old.find(FINDINGS[1])
    if start < 0 or end < start:
        return new
    block = old[start:end + len(FINDINGS[1])]
    at = new.find("\n## ")
    return new + "\n" + block + "\n" if at < 0 else new[:at] + "\n" + block + "\n" + new[at:]
