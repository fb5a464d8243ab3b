"""The flux demo's speed-adapter row: the trained base converted by the PPFlow diffusers hook with a distilled,
data-free stage-gated adapter, compared with the base itself (issue: speed adapters, FLUX side).

The teacher is the plain base transformer. Its own sampling runs (random class prompts, varying step counts,
the demo's Euler loop) are recorded (ppflow.integrations.diffusers.distill.record_calls): the inputs and outputs
of every forward in the coarse stage; no image is read. The adapter (coarse projections, stage embedding, a LoRA
acting only in the coarse stage) is then distilled on those calls by the training engine. The fine stage stays
the base bit for bit.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from ..integrations.diffusers import apply
from ..integrations.diffusers.distill import (
    AdapterSection,
    DistillConfig,
    distill,
    load_transformer,
    record_calls,
    save_calls,
)
from ..sampling.sigmas import FluxShift


def record_teacher(base_dir: str, enc, cfg, out_dir: Path, sample, words, templates,
                   log=print) -> tuple[Path, int, float]:
    """Record the base's coarse-stage calls along its own trajectories (prompts from `templates` x `words`; each
    run stops at its first fine-stage forward: the same calls as a whole run at about half the cost);
    (file, calls, teacher forwards)."""
    teacher = load_transformer(base_dir)
    rng = np.random.default_rng(cfg.seed + 7)
    calls, forwards = [], 0
    for j in range(cfg.adapter_trajectories):
        prompts = [templates[rng.integers(len(templates))].format(words[rng.integers(len(words))])
                   for _ in range(cfg.adapter_batch)]
        steps = int(rng.integers(max(2, cfg.sample_steps // 2), 2 * cfg.sample_steps + 1))  # varied sigmas
        new = record_calls(teacher, lambda p=prompts, s=steps, j=j: sample(teacher, enc, p, s, 10_000 + j, cfg,
                                                                            schedule=cfg.adapter_schedule),
                           cfg.adapter_schedule, shift=FluxShift(), stop_after_coarse=True)
        calls += new
        forwards += (len(new) + 1) * cfg.adapter_batch  # the coarse steps and the fine forward that ends the run
    path = save_calls(calls, out_dir / "teacher-calls.safetensors", {"trajectories": cfg.adapter_trajectories})
    log(f"recorded {len(calls)} coarse-stage teacher calls from {cfg.adapter_trajectories} trajectories")
    return path, len(calls), forwards


def distill_adapter(base_dir: str, calls: Path, cfg, out_dir: Path):
    """Train the adapter; (hooked base, run result, seconds)."""
    d = DistillConfig(out=str(out_dir / "adapter"), seed=cfg.seed, batch_size=cfg.adapter_calls_per_step,
                      max_steps=cfg.adapter_steps, log_every=max(1, cfg.adapter_steps // 20),
                      save_every=cfg.adapter_steps, device="cpu", progress=False,
                      adapter=AdapterSection(base=base_dir, calls=str(calls), schedule=cfg.adapter_schedule,
                                             rank=cfg.adapter_rank, coarse_output=cfg.coarse_output))
    d.optim.lr, d.optim.warmup_steps = cfg.adapter_lr, min(50, cfg.adapter_steps // 10)
    d.ema.decay, d.ema.warmup = 0.999, True
    start = time.perf_counter()
    result = distill(d)
    seconds = time.perf_counter() - start
    model = load_transformer(base_dir)
    apply(model, result.ema_dir)
    return model, result, seconds


METHODS = {"base": "source", "flux-ft": "fine-tune, one stage (FLUX-ft)", "ppflux": "shared fine-tune (paper)",
           "adapter": "lora-distill"}


def result_rows(report: dict, models: dict, side: int) -> list[dict]:
    """One row per model with the keys every conversion results.json carries (issue: speed adapters); `side`:
    the latent's side."""
    from ..flux.flops import FluxArch, counts_flops
    from ..integrations.diffusers import adapter_of
    from ..models.schedule import PyramidSchedule

    c = report["config"]
    base_params = sum(p.numel() for p in models["base"].base.parameters())
    arch, grid = FluxArch.from_config(models["base"].config), (side // 2, side // 2)
    sched = PyramidSchedule.from_string(c["adapter_schedule"], base_patch=(2, 2))
    text = report.get("text_tokens", 0)
    coarse = counts_flops(arch, sched, grid, text, [1] + [0] * (sched.num_stages - 1))["total"]
    fine = counts_flops(arch, sched, grid, text, [0] * (sched.num_stages - 1) + [1])["total"]
    base_train = c["base_steps"] * c["batch_size"] * 3 * fine
    rows = []
    for name, model in models.items():
        q, sp = report["quality"].get(name, {}), report["speeds"].get(name, {})
        row = {"model": name, "method": METHODS.get(name, name), "data_free": name == "adapter",
               "train_compute": 1.0, "classifier_fid": q.get("fid"), "prompt_accuracy": q.get("accuracy"),
               "paired_agreement": q.get("paired_agreement", 1.0 if name == "base" else None),
               "paired_psnr": q.get("paired_psnr"), "extra_params": 0.0,
               "speedup": 1.0 if name == "base" else sp.get("speedup"),
               "flops_bound": 1.0 if name == "base" else sp.get("bound"), "source": name == "base",
               "reference": sp.get("reference")}
        if name in ("ppflux", "flux-ft"):
            row["train_compute"] = 1 + c["finetune_steps"] / c["base_steps"]  # same batch; PPFlux's steps cost less
        if name == "ppflux":
            row["extra_params"] = sum(v.numel() for v in model.extras_state_dict().values()) / base_params
        if name == "adapter":
            row["extra_params"] = adapter_of(model).size(model)[1]
            info = report["adapter"]
            distill_flops = c["adapter_steps"] * c["adapter_calls_per_step"] * c["adapter_batch"] * 3 * coarse
            row["train_compute"] = 1 + (info["teacher_forwards"] * fine + distill_flops) / base_train
        rows.append(row)
    return rows

