"""Speed-adapter contestants of the demo and the reproduction, and the paired comparison with the source.

An adapter contestant (`DemoModel.adapter`) is distilled from the trained contestant `adapt_from` by
`ppflow.train.distill` with `budget` of that contestant's training compute (teacher trajectories included). Every
contestant is sampled from the same noise and labels, so each can be compared with the source sample for sample:
the share of samples the classifier puts in the same class as the source's, and the mean PSNR between the two.
"""

from __future__ import annotations

import shlex
import time
from pathlib import Path

import numpy as np
import torch

from .config import DemoModel


def adapter_overrides(demo, m: DemoModel) -> dict:
    """The AdaptConfig keys of contestant `m` (its steps from the budget)."""
    source = demo.results[m.adapt_from]
    o = {k: v for k, v in demo.train_overrides(m).items() if not k.startswith("model.")}
    o.update({"model.init": str(Path(source["run_dir"]) / "ema"), "adapter.schedule": m.schedule,
              **{f"adapter.{k}": v for k, v in m.adapter.items()}, "ema.decay": m.adapter_ema or o["ema.decay"],
              "optim.warmup_steps": 0})
    if o.get("adapter.cache") and not Path(o["adapter.cache"]).is_absolute():  # shared by rows: in the demo folder
        o["adapter.cache"] = str(demo.out / o["adapter.cache"])
    o.pop("max_steps", None)
    o["max_steps"] = adapter_steps(demo, m, o)
    o["save_every"] = max(1, o["max_steps"] // 4)
    o["log_every"] = max(1, o["max_steps"] // 50)
    return o


def adapter_steps(demo, m: DemoModel, overrides: dict) -> int:
    """Steps that spend `m.budget` of the source's training compute (FLOPs of matrix products, analytic)."""
    from ..train.config import apply_overrides
    from ..train.distill import AdaptConfig, conversion_flops

    cfg = apply_overrides(AdaptConfig(), {k: v for k, v in overrides.items() if k != "max_steps"})
    config = demo.model_config(m)
    f = conversion_flops(config, cfg.adapter, cfg.batch_size, 1)
    source_steps = demo.results[m.adapt_from]["train_steps"]
    budget = m.budget * source_steps * demo.cfg.batch_size * f["source_step_per_sample"]
    if budget <= f["cache"] + f["step"]:  # smoke sizes: one step, and the row's train_compute says the truth
        demo.notes.append(f"{m.label}: the teacher trajectories alone exceed its budget ({m.budget:g} of "
                          f"{m.adapt_from}'s training); it trains 1 step and its training compute column is the "
                          "real cost")
        return 1
    return int((budget - f["cache"]) // f["step"])


def train_adapter(demo, m: DemoModel) -> torch.nn.Module:
    """Distil (or resume, or reuse) contestant `m`'s adapter; its results row gets the compute and size."""
    from ..convert import load_model
    from ..models.adapter import adapter_size
    from ..train.checkpoint import find_checkpoint, load_checkpoint
    from ..train.config import apply_overrides
    from ..train.distill import AdaptConfig, adapt_train, conversion_flops

    o = adapter_overrides(demo, m)
    run_dir, steps, res = Path(o["out"]), o["max_steps"], demo.results[m.label]
    demo.commands.append("ppflow adapt --method lora-distill ... # as: " + " ".join(
        f"--{k} {shlex.quote(str(v))}" for k, v in o.items()))
    t0 = time.time()
    last = run_dir / "checkpoints" / "last.pt"
    if last.exists() and int(load_checkpoint(find_checkpoint(run_dir))["step"]) >= steps:
        demo.log(f"[{m.label}] reusing the finished adapter in {run_dir}")
    else:
        demo.log(f"[{m.label}] distilling a speed adapter from {m.adapt_from} for {steps} steps")
        result = (adapt_train(resume=run_dir, overrides={"max_steps": steps}) if last.exists()
                  else adapt_train(None, overrides=o))
        res["train_steps_per_sec"] = result.steps_per_sec
        if result.interrupted:
            raise KeyboardInterrupt
    model = load_model(run_dir / "ema").eval()
    cfg = apply_overrides(AdaptConfig(), o)
    f = conversion_flops(model.config, cfg.adapter, cfg.batch_size, steps)
    source = demo.results[m.adapt_from]
    source_flops = source["train_steps"] * demo.cfg.batch_size * f["source_step_per_sample"]
    extra, share = adapter_size(model)
    res.update(train_steps=steps, train_seconds=time.time() - t0, run_dir=str(run_dir),
               metrics_csv=str(run_dir / "metrics.csv"), params=model.num_parameters(), extra_params=share,
               extra_param_count=extra, data_free=cfg.adapter.data_free,
               method="lora-distill" if cfg.adapter.data_free or cfg.adapter.mix < 1 else "lora flow matching",
               guided=cfg.adapter.guided, conversion_compute=f["total"] / source_flops,
               train_compute=source.get("train_compute", 1.0) * (1 + f["total"] / source_flops))
    return model


def paired_stage(demo, preds: dict[str, np.ndarray], images: dict[str, np.ndarray]) -> None:
    """Agreement of every contestant with the source (the first contestant), sample for sample: the share of
    samples the classifier assigns to the source's class, and the mean PSNR (dB) between the two images."""
    base = demo.cfg.models[0].label
    if base not in preds:
        return
    ref = images[base].astype(np.float64)
    for label, pred in preds.items():
        res = demo.results[label]
        res["paired_agreement"] = float((pred == preds[base]).mean())
        mse = ((images[label].astype(np.float64) - ref) ** 2).reshape(len(ref), -1)
        psnr = 10 * np.log10(255.0 ** 2 / np.maximum(mse.mean(1), 1e-10))
        res["paired_psnr"] = float(psnr.mean()) if label != base else None
        res.setdefault("method", _method(demo.spec(label)))
        res.setdefault("data_free", False)
        res.setdefault("extra_params", 0.0)
        if label == base:
            res["source"] = True


def _method(m: DemoModel) -> str:
    if m.swap:
        return "coarse-only + stage swap"
    if m.same_as:
        return "same model" + (f" at step {m.checkpoint}" if m.checkpoint else "")
    if m.adapt_from:
        return "coarse-only fine-tune" if m.train.get("flow.shares") == "1,0" else "shared fine-tune (paper)"
    return "scratch"


def copy_stage(demo, images: dict[str, np.ndarray]) -> None:
    """Copy check (ppflow.eval.copying) of every contestant trained on the first N images only (`data.limit` in
    its `train` options): its evaluation samples against those N images and as many held-out ones."""
    from ..eval.copying import copy_check, reference_images
    from ..train.config import apply_overrides
    from ..train.distill import AdaptConfig

    for label, arr in images.items():
        m = demo.spec(label)
        if not m.train.get("data.limit"):
            continue
        o = demo.train_overrides(m)
        data = apply_overrides(AdaptConfig(), {k: v for k, v in o.items() if k.startswith("data.")}).data
        try:
            train, _, holdout, mirror = reference_images(data, data.limit, demo.cfg.seed)
        except ValueError as e:
            demo.notes.append(f"{label}: no copy check ({e})")
            continue
        x = torch.from_numpy(arr).permute(0, 3, 1, 2).double() / 127.5 - 1  # (n, 1, H, W) model space
        check = copy_check(x, train, holdout, mirror)
        demo.results[label].update(copy_ratio=check.ratio, copy_near_share=check.near_share, copying=check.copying)
        demo.log(f"[{label}] {check.describe()}")
