"""`ppflow flux stack`: the PPFlow hook stacked with diffusers' cache hooks on the trained FLUX toy of a
`ppflow flux demo` run, against the base itself: speed-up, executed-FLOPs bound, prompt accuracy, classifier FID
and paired agreement per (schedule, cache) row. Reuses the run's base and adapter; trains nothing.
"""

from __future__ import annotations

import contextlib
import json
from dataclasses import fields
from pathlib import Path

import numpy as np
import torch

from ..bench.diffusers import CACHES, cache_config, parse_cache
from ..bench.timing import alternate, executed_flops, stopwatch
from ..data.fashion_mnist import load_fashion_mnist
from ..integrations.diffusers import apply
from ..integrations.diffusers.distill import load_transformer
from ..utils.report import Report
from .flux_demo import CLASS_WORDS, DemoConfig, TinyTextEncoders, sample, to_pixels, to_uint8_32


def subjects(caches) -> dict[str, tuple[bool, str | None]]:
    out = {"base": (False, None), "adapter": (True, None)}
    for c in caches:
        out[f"base+{c}"] = (False, c)
        out[f"adapter+{c}"] = (True, c)
    return out


def build(run: Path, adapter: bool, cache: str | None):
    model = load_transformer(str(run / "base" / "ema" / "transformer"))
    if adapter:
        apply(model, run / "adapter" / "ema")
    if cache:
        model.enable_cache(cache_config(cache))
    return model


@torch.no_grad()
def run_stacking(run_dir: str | Path, out: str | Path | None = None, caches=CACHES, threads: int | None = 1,
                 timing_repeats: int = 3, log=print) -> dict:
    run = Path(run_dir)
    report_file = run / "report.json"
    if not report_file.is_file() or not (run / "adapter" / "ema").is_dir():
        raise FileNotFoundError(f"{run} is not a finished `ppflow flux demo` run with an adapter (report.json, "
                                "adapter/ema): run the demo first")
    for c in caches:
        parse_cache(c)  # a wrong spec fails before anything loads
    saved = json.loads(report_file.read_text("utf-8"))["config"]
    cfg = DemoConfig(**{f.name: saved[f.name] for f in fields(DemoConfig) if f.name in saved})
    out = Path(out or run / "stack")
    out.mkdir(parents=True, exist_ok=True)
    if threads:
        torch.set_num_threads(threads)
    enc = TinyTextEncoders(cfg.seed)
    rows_of = subjects(caches)
    models = {label: build(run, a, c) for label, (a, c) in rows_of.items()}

    def draw(model, prompts, steps, seed):
        ctx = model.cache_context("cond") if getattr(model, "_cache_config", None) else contextlib.nullcontext()
        with ctx:
            images = sample(model, enc, prompts, steps, seed, cfg)[0]
        if getattr(model, "_cache_config", None):
            model._reset_stateful_cache()  # what a pipeline does at the end of a call
        return images

    # speed and executed FLOPs, the same prompts for every row
    prompts_t = [f"a photo of a {CLASS_WORDS[i % 10]}" for i in range(cfg.timing_batch)]
    timings = alternate(list(models), lambda name, r: stopwatch(torch.device("cpu"), draw, models[name], prompts_t,
                                                                 cfg.sample_steps, cfg.seed + 99)[0],
                        timing_repeats, warmup=1)
    flops = {name: executed_flops(draw, model, prompts_t[:8], cfg.sample_steps, cfg.seed + 99)
             for name, model in models.items()}
    # quality, paired with the base
    from ..eval.classifier import classifier_metrics, classifier_outputs, load_classifier

    clf = load_classifier()
    labels = np.repeat(np.arange(10), cfg.eval_per_class)
    prompts = [f"a photo of a {CLASS_WORDS[k]}" for k in labels]
    test_x, _ = load_fashion_mnist("test")
    ref = to_uint8_32(to_pixels(test_x[:5000], cfg))
    rows, preds = [], {}
    base_s = timings.summary("base")["seconds"]
    for name, model in models.items():
        images = to_uint8_32(torch.cat([draw(model, prompts[i: i + 500], cfg.sample_steps, cfg.seed + i)
                                        for i in range(0, len(prompts), 500)]))
        m = classifier_metrics(images, labels, ref=ref, model=clf)
        preds[name] = classifier_outputs(clf, images)[1].argmax(1)
        adapter, cache = rows_of[name]
        rows.append({"model": name, "family": "flux", "schedule": cfg.adapter_schedule if adapter else "1:2x2",
                     "cache": cache, "speedup": base_s / timings.summary(name)["seconds"],
                     "flops_bound": flops["base"] / flops[name], "prompt_accuracy": m["accuracy"], "fid": m["fid"],
                     "base": name == "base"})
    for row in rows:
        row["paired_agreement"] = float((preds[row["model"]] == preds["base"]).mean())
    result = {"run": str(run), "threads": torch.get_num_threads(), "timing_batch": cfg.timing_batch,
              "sample_steps": cfg.sample_steps, "rows": rows}
    rep = Report(f"PPFlow hook + diffusers caches on the FLUX toy of {run}")
    rep.table(["model", "schedule", "cache", "speed-up", "FLOPs bound", "prompt accuracy", "classifier FID",
               "paired agreement"],
              [[r["model"], r["schedule"], r["cache"] or "-", f"{r['speedup']:.2f}", f"{r['flops_bound']:.2f}",
                f"{r['prompt_accuracy']:.3f}", f"{r['fid']:.2f}", f"{r['paired_agreement']:.3f}"] for r in rows])
    rep.text(f"{cfg.sample_steps} Euler steps; speed: median of {timing_repeats} alternating runs of "
             f"{cfg.timing_batch} images; FLOPs: executed (FlopCounterMode, cache skips included); quality: "
             f"{len(labels)} samples, the same prompts and noise for every row.")
    rep.write(out, html=False, data=result)
    log(rep.markdown())
    return result



