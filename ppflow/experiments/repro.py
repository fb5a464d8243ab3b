"""Small-scale reproduction of the paper's main table on Fashion-MNIST (`ppflow repro --preset fmnist`).

Rows as in the paper: the SiT baseline; PPF-2 and PPF-3 trained from scratch for the same steps; PPF-2 and PPF-3
adapted from the trained baseline with 10% extra steps; the stage-CFG ablation (PPF-2 with CFG everywhere).
"""

from __future__ import annotations

import shutil
from pathlib import Path

from .demo import Demo, DemoConfig, DemoModel

PRESETS = ("fmnist", "smoke")


def repro_config(preset: str = "fmnist", out: str | None = None, **kw) -> DemoConfig:
    """The experiment behind docs/results.md (`fmnist`) or a seconds-long pipeline check (`smoke`)."""
    if preset not in PRESETS:
        raise ValueError(f"unknown preset {preset!r}; choose one of {PRESETS}")
    size = "mini" if preset == "fmnist" else "tiny"
    base = kw.get("steps") or (2000 if preset == "fmnist" else 4)
    extra = max(1, base // 10)  # adaptation: <= 10% of the baseline's training steps
    s2, s3 = "0.5:8x8,1:4x4", "0.5:8x8,0.75:4x8,1:4x4"
    models = [
        DemoModel("SiT", f"SiT-{size}/4", "1:4x4"),
        DemoModel("PPF-2 (scratch)", f"PPF-{size}-2", s2),
        DemoModel("PPF-3 (scratch)", f"PPF-{size}-3", s3),
        # fine-tuning a trained model at the from-scratch rate (1e-3) undoes much of it; 1e-4 as DiT/SiT/PPFlow
        DemoModel("PPF-2 (adapted)", f"PPF-{size}-2", s2, adapt_from="SiT", steps=extra, lr=1e-4),
        DemoModel("PPF-3 (adapted)", f"PPF-{size}-3", s3, adapt_from="SiT", steps=extra, lr=1e-4),
        DemoModel("PPF-2 (scratch), CFG everywhere", f"PPF-{size}-2", s2, same_as="PPF-2 (scratch)",
                  cfg_scales=[kw.get("cfg_scale", 2.0)] * 2),
    ]
    settings = {"models": models, "steps": base, "title": "ppflow: the PPFlow main table at Fashion-MNIST scale",
                    "inception": True, "num_eval": 600, "inception_ref": 1000}
    if preset == "smoke":
        settings.update(data_limit=512, batch_size=16, warmup=0, ema_decay=0.9, sample_steps=4, num_eval=20,
                        eval_batch=20, classifier_steps=8, timing_batch=8, timing_repeats=1, inception=False,
                        threads=1)
    settings.update({k: v for k, v in kw.items() if k != "steps"})
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
        target.write_text(text)
    return report
