"""Measurements of the demo/repro contestants: sampling speed, the held-out loss profile and quality against
sampling cost."""

from __future__ import annotations

import torch

from ..bench.timing import alternate, stopwatch
from ..models.flops import schedule_flops
from ..sampling import sample_model
from ..utils.images import to_uint8
from ..utils.plots import line_plot


def loss_profile_stage(demo, models: dict[str, torch.nn.Module]) -> None:
    """Held-out loss per t of every trained contestant (and stage swap) on the same test draws."""
    from ..data.registry import DataConfig, build_dataset
    from ..eval.profile import loss_profile

    if not demo.cfg.profile_num:
        return
    shown = {k: m for k, m in models.items() if not demo.spec(k).same_as
             and (demo.cfg.profile_models is None or k in demo.cfg.profile_models)}
    data = build_dataset(DataConfig(name=demo.cfg.data, path=demo.cfg.data_path, split="test",
                                    image_size=demo.cfg.image_size, limit=demo.cfg.profile_num))
    x1, y = data.get_batch(torch.arange(len(data)))
    prof = loss_profile(shown, x1, y, bins=demo.cfg.profile_bins, seed=demo.cfg.seed, progress=True)
    prof.write(demo.out)
    base = demo.cfg.models[0].label
    for label in shown:
        res = demo.results[label]
        res["profile_loss"] = prof.curves[label]
        res["heldout_loss"] = prof.mean(label)
        res["heldout_loss_ratio"] = prof.mean(label) / prof.mean(base)
    demo.images.append(("profile_ratio.png" if len(shown) > 1 else "profile.png",
                        (f"Held-out loss per noise level relative to {base} ({len(x1)} test images per bin, the "
                        "same noise, times and labels for every model; dashed: stage boundaries). Values and "
                        "absolute losses in profile.csv / profile.json.")))


def pareto_stage(demo, models: dict[str, torch.nn.Module]) -> None:
    """Classifier FID against sampling FLOPs and wall time, each swept model at each of `pareto_steps`."""
    from ..eval import ClassifierTrainConfig, load_classifier
    from ..eval.classifier import classifier_metrics

    if not demo.cfg.pareto_steps:
        return
    cache = demo.out / "cache"
    clf = load_classifier(cache, train_config=ClassifierTrainConfig(max_steps=demo.cfg.classifier_steps))
    n = demo.cfg.num_eval
    g = torch.Generator().manual_seed(demo.cfg.seed + 3)  # the same noise as the main metrics
    noise = torch.randn(n, 1, demo.cfg.image_size, demo.cfg.image_size, generator=g)
    y = torch.arange(n) % 10
    labels = demo.cfg.pareto_models or list(models)
    base = demo.cfg.models[0].label
    rows, series_flops = [], {}
    ref = None
    for label in labels:
        pts = []
        for steps in demo.cfg.pareto_steps:
            done = demo.results[label].get("eval_sampling")
            if done and steps == demo.cfg.sample_steps and "classifier_fid" in demo.results[label]:
                pts.append({"steps": steps, "classifier_fid": demo.results[label]["classifier_fid"],
                            "class_accuracy": demo.results[label]["class_accuracy"],
                            "flops_per_sample": done["flops_per_sample"], "seconds": done["seconds"]})
                continue  # the main metrics: the same noise, labels and sampler
            stats: dict = {}
            images = to_uint8(demo.sample(label, models[label], noise, y, f"pareto {label} {steps} steps",
                                          steps=steps, stats=stats))
            m = classifier_metrics(images, y.numpy(), ref="fashion-mnist-test", cache_dir=cache, model=clf)
            pts.append({"steps": steps, "classifier_fid": m["fid"], "class_accuracy": m["accuracy"], **stats})
        if label == base:
            ref = next((p for p in pts if p["steps"] == demo.cfg.sample_steps), pts[-1])
        demo.results[label]["pareto"] = pts
    ref = ref or demo.results[labels[0]]["pareto"][-1]
    for label in labels:
        pts = demo.results[label]["pareto"]
        for p in pts:
            p["flops_percent"] = 100 * p["flops_per_sample"] / ref["flops_per_sample"]
            rows.append([label, p["steps"], p["flops_percent"], p["seconds"], p["classifier_fid"],
                         p["class_accuracy"]])
        series_flops[label] = ([p["flops_percent"] for p in pts], [p["classifier_fid"] for p in pts])
    line_plot(series_flops, demo.out / "pareto.png", title="quality vs sampling cost (lower left is better)",
              xlabel=f"sampling FLOPs per image (% of {base} at {demo.cfg.sample_steps} steps)",
              ylabel="classifier FID", log_y=True)
    demo.pareto_rows = rows
    demo.images.append(("pareto.png", (f"Classifier FID against sampling FLOPs, {demo.cfg.method} at "
                        f"{', '.join(map(str, demo.cfg.pareto_steps))} steps, {n} samples each (the same noise "
                        "for every point): is PPF a better trade than taking fewer steps of the baseline?")))


def speed_stage(demo, models: dict[str, torch.nn.Module]) -> None:
    """Sampling time of each timed contestant on the same batch, alternating, against its FLOPs bound."""
    g = torch.Generator().manual_seed(demo.cfg.seed + 2)
    noise = torch.randn(demo.cfg.timing_batch, 1, demo.cfg.image_size, demo.cfg.image_size, generator=g)
    y = torch.arange(demo.cfg.timing_batch) % 10
    base = demo.cfg.models[0].label
    timed = {k: m for k, m in models.items()
             if demo.cfg.timing_models is None or k in demo.cfg.timing_models or k == base}
    flops: dict[str, float] = {}
    paper: dict[str, float] = {}  # per sample

    def run(label: str, r: int) -> float:
        model = timed[label]
        seconds, out = stopwatch(torch.device("cpu"), sample_model, model, noise, y, method=demo.cfg.method,
                                 cfg_scales=demo.cfg_scales(label, model), steps=demo.cfg.sample_steps,
                                 full_output=True)
        flops[label], paper[label] = out.flops["total"] / len(noise), out.flops["paper"] / len(noise)
        return seconds

    with torch.no_grad():
        timings = alternate(list(timed), run, demo.cfg.timing_repeats, warmup=1, name="timing sampling",
                            progress=None)
        for label, model in models.items():  # untimed: count the forwards of a two-sample run
            if label not in flops:
                out = sample_model(model, noise[:2], y[:2], cfg_scales=demo.cfg_scales(label, model),
                                   method=demo.cfg.method, steps=demo.cfg.sample_steps, full_output=True)
                flops[label], paper[label] = out.flops["total"] / 2, out.flops["paper"] / 2
    for label, model in models.items():
        res = demo.results[label]
        res["flops_bound"] = flops[base] / flops[label]
        if label in timed:
            sec = timings.summary(label)["seconds"]
            res["sample_seconds"] = sec
            res["speedup"] = timings.summary(base)["seconds"] / sec
            res["efficiency"] = res["speedup"] / res["flops_bound"]
        if hasattr(model, "stage_flops"):  # a stage swap: from the sampler's exact per-member counts
            res["test_flops_percent"] = 100 * paper[label] / paper[base]
        else:
            res["test_flops_percent"] = 100 * schedule_flops(
                model.config, cfg_scales=demo.cfg_scales(label, model),
                baseline_cfg_scale=demo.cfg.cfg_scale)["paper_fraction"]
            res["test_flops_percent_no_cfg"] = 100 * schedule_flops(model.config)["paper_fraction"]
        res["cfg_scales"] = demo.cfg_scales(label, model)
