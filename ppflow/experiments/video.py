"""`ppflow video-demo`: spatio-temporal PPFlow on a tiny Wan video model, converted by a distilled adapter.

1. Clips: a Fashion-MNIST item drifting two pixels a frame across a 32 px frame for 8 frames, captioned
   "a {class} moving {direction}" (data/moving_fashion.py); text states from a frozen random word table. The
   "latent" is the clip in 4x4 space-to-depth (16 x 8 x 8 x 8: 128 tokens under Wan's (1, 2, 2) patches).
2. A tiny `WanTransformer3DModel` is trained from scratch with flow matching and 10% text dropout
   (integrations/diffusers/train.py); both models sample with CFG 3.
3. It is converted to a spatio-temporal schedule by the PPFlow diffusers hook with a data-free distilled adapter
   (the base's own sampling runs recorded, integrations/diffusers/distill.py).
4. Both sample the same prompts from the same noise (Euler, the boundaries on the grid); per-frame classifier
   accuracy and FID (the item cropped at its centroid), direction accuracy (centroid motion), paired agreement
   with the base, measured speed-up and the executed-FLOPs bound.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

from ..bench.timing import alternate, stopwatch
from ..data.fashion_mnist import CLASSES, load_fashion_mnist
from ..data.moving_fashion import DIRECTIONS, centre_crops, direction_of, make_clips
from ..integrations.diffusers import StagePlan, adapter_of, apply
from ..integrations.diffusers.distill import (
    AdapterSection,
    DistillConfig,
    distill,
    load_transformer,
    record_calls,
    save_calls,
)
from ..integrations.diffusers.train import FlowConfig, save_flow_data, train_flow
from ..integrations.diffusers.wan import depth_to_space, space_to_depth
from ..sampling.sigmas import FluxShift, stage_grid
from ..sampling.solvers import euler
from ..utils.report import Report

WORDS = tuple(c.split("/")[0].lower() for c in CLASSES) + DIRECTIONS
NO_SHIFT = FluxShift(dynamic=False, shift=1.0)


@dataclass
class VideoDemoConfig:
    train_clips: int = 12000
    frames: int = 8
    size: int = 32
    item: int = 16
    step: int = 2  # pixels a frame
    latent_factor: int = 4  # the clip in s2d 4x4: (16, 8, 8, 8) -> 128 tokens under Wan's (1, 2, 2) patches
    heads: int = 3  # of 32 dims
    layers: int = 3
    ffn: int = 256
    base_steps: int = 6000
    batch_size: int = 32
    lr: float = 1e-3
    text_dropout: float = 0.1  # for classifier-free guidance
    cfg_scale: float = 3.0
    schedule: str = "0.35:2x4x4,0.65:1x4x4,1:1x2x2"  # frames x rows x cols in latent pixels (bound ~2.1)
    sample_steps: int = 16
    adapter_trajectories: int = 96
    adapter_batch: int = 8
    adapter_steps: int = 1000
    coarse_output: str = "noise_skip"  # the within-block noise given exactly (wan.depth_noise_skip); 'v': none
    adapter_calls_per_step: int = 4
    adapter_rank: int = 8
    adapter_lr: float = 1e-3
    adapter_guided: float | None = None  # CFG folded into the coarse stages (sampled with stage-level CFG) if set
    eval_clips: int = 200
    timing_batch: int = 64
    timing_repeats: int = 3
    metrics: bool = True
    seed: int = 0

    @classmethod
    def quick(cls) -> VideoDemoConfig:
        return cls(train_clips=64, base_steps=4, batch_size=4, heads=2, layers=1, sample_steps=4, adapter_trajectories=2,
                   adapter_batch=2, adapter_steps=2, adapter_calls_per_step=2, adapter_rank=2, eval_clips=8,
                   timing_batch=2, timing_repeats=1, metrics=False)


def text_states(classes: np.ndarray, dirs: np.ndarray, seed: int = 0) -> torch.Tensor:
    """(n, 2, 16): a frozen random vector for the class word and one for the direction."""
    table = torch.randn(len(WORDS), 16, generator=torch.Generator().manual_seed(seed + 123))
    return torch.stack([table[torch.as_tensor(classes)], table[10 + torch.as_tensor(dirs)]], 1)


@torch.no_grad()
def word_sensitivity(model, cfg: VideoDemoConfig, sigmas=(0.9, 0.6, 0.3), n: int = 8, seed: int = 0) -> dict:
    """How much the model's velocity moves when one caption word changes: for each word slot, the mean over
    `sigmas` and the other values of ||v(word) - v(word 0)|| / ||v(word 0)|| on fixed noise and prompts. A model
    that ignores the direction (the base of the first runs: 0.002 against 0.05 for the class) cannot follow it,
    whatever its direction accuracy says by chance."""
    g = torch.Generator().manual_seed(seed)
    f = cfg.latent_factor
    x = torch.randn(n, f * f, cfg.frames, cfg.size // f, cfg.size // f, generator=g)  # (n, C, F, H, W)
    others = np.arange(n) % 10, np.arange(n) % 4
    out = {}
    for slot, count in (("class", 10), ("direction", 4)):
        rel = []
        for sigma in sigmas:
            timestep = torch.full((n,), sigma * 1000.0)
            vs = []
            for k in range(count):
                c, d = (np.full(n, k), others[1]) if slot == "class" else (others[0], np.full(n, k))
                vs.append(model(hidden_states=x, timestep=timestep, encoder_hidden_states=text_states(c, d, cfg.seed),
                                return_dict=False)[0])
            rel += [float((v - vs[0]).flatten(1).norm(dim=1).div(vs[0].flatten(1).norm(dim=1)).mean()) for v in vs[1:]]
        out[slot] = float(np.mean(rel))
    return out


def to_latent(clips: torch.Tensor, f: int) -> torch.Tensor:
    return space_to_depth(clips, (1, f, f))  # (n, f*f, F, 32/f, 32/f)


def from_latent(z: torch.Tensor, f: int) -> torch.Tensor:
    return depth_to_space(z, (1, f, f)).clamp(-1, 1)  # (n, 1, F, 32, 32)


def tiny_wan(cfg: VideoDemoConfig):
    from diffusers import WanTransformer3DModel

    torch.manual_seed(cfg.seed)
    c = cfg.latent_factor ** 2
    return WanTransformer3DModel(patch_size=(1, 2, 2), num_attention_heads=cfg.heads, attention_head_dim=32,
                                 in_channels=c, out_channels=c, text_dim=16, freq_dim=32, ffn_dim=cfg.ffn,
                                 num_layers=cfg.layers, rope_max_seq_len=64)


@torch.no_grad()
def sample(model, text: torch.Tensor, steps: int, seed: int, cfg: VideoDemoConfig, schedule: str | None = None):
    """Euler in sigma over a grid with the stage boundaries on it, CFG at cfg.cfg_scale (zero text states as the
    unconditional input); clips (n, 1, F, 32, 32)."""
    ad = adapter_of(model)
    plan = ad.plan if ad is not None else (StagePlan.parse(schedule, (1, 2, 2)) if schedule else None)
    sigmas = list(stage_grid(steps, plan.unshifted_boundaries() if plan else ())) + [0.0]
    n = len(text)
    f = cfg.latent_factor
    x = torch.randn(n, f * f, cfg.frames, cfg.size // f, cfg.size // f, generator=torch.Generator().manual_seed(seed))

    def velocity(x: torch.Tensor, t: torch.Tensor, stage) -> torch.Tensor:
        timestep = (1 - t) * 1000  # (n,) Wan's sigma x 1000; the hook picks the stage from it
        v = model(hidden_states=x, timestep=timestep, encoder_hidden_states=text, return_dict=False)[0]
        if cfg.cfg_scale != 1.0:
            u = model(hidden_states=x, timestep=timestep, encoder_hidden_states=torch.zeros_like(text),
                      return_dict=False)[0]
            v = u + cfg.cfg_scale * (v - u)
        return -v  # ppflow's t = 1 - sigma runs the other way

    x = euler(velocity, x, 1 - torch.tensor(sigmas, dtype=torch.float64), [None] * (len(sigmas) - 1))
    return from_latent(x, f)


def run_video_demo(cfg: VideoDemoConfig, out: str | Path, threads: int | None = 1, log=print) -> dict:
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    if threads:
        torch.set_num_threads(threads)
    t_start = time.perf_counter()
    train_x, train_y = load_fashion_mnist("train")
    clips, cls, dirs = make_clips(train_x, train_y, cfg.train_clips, cfg.seed, cfg.frames, cfg.size, cfg.item, cfg.step)
    data = save_flow_data(to_latent(clips, cfg.latent_factor), text_states(cls, dirs, cfg.seed),
                          out / "clips.safetensors")
    tiny_wan(cfg).save_pretrained(out / "init")
    log(f"{cfg.train_clips} clips; training the tiny Wan for {cfg.base_steps} steps")
    f = FlowConfig(out=str(out / "base"), seed=cfg.seed, batch_size=cfg.batch_size, max_steps=cfg.base_steps,
                   log_every=max(1, cfg.base_steps // 20), save_every=cfg.base_steps, device="cpu", progress=False)
    f.model.init, f.model.data, f.model.text_dropout = str(out / "init"), str(data), cfg.text_dropout
    f.optim.lr, f.optim.warmup_steps, f.ema.decay, f.ema.warmup = cfg.lr, min(100, cfg.base_steps // 10), 0.999, True
    start = time.perf_counter()
    base_run = train_flow(f)
    base_s = time.perf_counter() - start
    base_dir = str(base_run.ema_dir)
    base = load_transformer(base_dir)

    # ---- the adapter: the base's own sampling runs recorded (prompts only), then distilled
    rng = np.random.default_rng(cfg.seed + 7)
    calls = []
    for j in range(cfg.adapter_trajectories):
        c, d = rng.integers(0, 10, cfg.adapter_batch), rng.integers(0, 4, cfg.adapter_batch)
        steps = int(rng.integers(max(2, cfg.sample_steps // 2), 2 * cfg.sample_steps + 1))
        calls += record_calls(base, lambda c=c, d=d, s=steps, j=j: sample(
            base, text_states(c, d, cfg.seed), s, 10_000 + j, cfg, schedule=cfg.schedule), cfg.schedule,
            boundaries="unshifted", shift=NO_SHIFT)
    calls_path = save_calls(calls, out / "teacher-calls.safetensors")
    log(f"recorded {len(calls)} coarse-stage teacher calls; distilling the adapter for {cfg.adapter_steps} steps")
    d = DistillConfig(out=str(out / "adapter"), seed=cfg.seed, batch_size=cfg.adapter_calls_per_step,
                      max_steps=cfg.adapter_steps, log_every=max(1, cfg.adapter_steps // 20),
                      save_every=cfg.adapter_steps, device="cpu", progress=False,
                      adapter=AdapterSection(base=base_dir, calls=str(calls_path), schedule=cfg.schedule,
                                             rank=cfg.adapter_rank, coarse_output=cfg.coarse_output,
                                             shift={"dynamic": False, "shift": 1.0}, guided=cfg.adapter_guided))
    d.optim.lr, d.optim.warmup_steps, d.ema.decay, d.ema.warmup = cfg.adapter_lr, min(50, cfg.adapter_steps // 10), 0.999, True
    start = time.perf_counter()
    ad_run = distill(d)
    ad_s = time.perf_counter() - start
    adapted = load_transformer(base_dir)
    adapter = apply(adapted, ad_run.ema_dir)
    models = {"base": base, "adapter": adapted}

    # ---- speed: alternate the two on the same prompts; executed FLOPs of one run each
    tc, td = np.arange(cfg.timing_batch) % 10, np.arange(cfg.timing_batch) % 4
    ttext = text_states(tc, td, cfg.seed)

    def run(name: str, r: int) -> float:
        return stopwatch(torch.device("cpu"), sample, models[name], ttext, cfg.sample_steps, 99, cfg)[0]

    timings = alternate(["base", "adapter"], run, cfg.timing_repeats, warmup=1)
    from torch.utils.flop_counter import FlopCounterMode

    flops = {}
    for name, model in models.items():
        with FlopCounterMode(display=False) as fc:
            sample(model, ttext[:1], cfg.sample_steps, 99, cfg)
        flops[name] = fc.get_total_flops()

    # ---- quality: the same prompts and noise for both, paired
    ec, ed = np.arange(cfg.eval_clips) % 10, (np.arange(cfg.eval_clips) // 10) % 4
    etext = text_states(ec, ed, cfg.seed)
    samples = {name: torch.cat([sample(m, etext[i: i + 50], cfg.sample_steps, cfg.seed + i, cfg)
                                for i in range(0, cfg.eval_clips, 50)]) for name, m in models.items()}
    test_x, test_y = load_fashion_mnist("test")
    real, real_c, real_d = make_clips(test_x, test_y, cfg.eval_clips, cfg.seed + 1, cfg.frames, cfg.size, cfg.item,
                                      cfg.step)
    rows = []
    preds = {}
    clf = None
    if cfg.metrics:
        from ..eval.classifier import classifier_metrics, classifier_outputs, load_classifier

        clf = load_classifier()
        ref_clips = make_clips(test_x, test_y, 1000, cfg.seed + 2, cfg.frames, cfg.size, cfg.item, cfg.step)[0]
        ref = centre_crops(ref_clips, cfg.item)  # FID reference: other real clips than the "real clips" row
    for name, clips_ in [*samples.items(), ("real clips", real)]:
        labels = ec if name != "real clips" else real_c
        want_dir = ed if name != "real clips" else real_d
        row = {"model": name, "family": "wan", "schedule": cfg.schedule if name == "adapter" else "1:1x2x2",
               "cache": None, "base": name == "base", "direction_accuracy": float((direction_of(clips_) == want_dir).mean())}
        if name in models:
            sens = word_sensitivity(models[name], cfg)  # does the velocity follow the words at all?
            row.update(class_sensitivity=sens["class"], direction_sensitivity=sens["direction"])
            row["speedup"] = timings.summary("base")["seconds"] / timings.summary(name)["seconds"]
            row["flops_bound"] = flops["base"] / flops[name]
            row["seconds"] = timings.summary(name)["seconds"]
        if clf is not None:
            crops = centre_crops(clips_, cfg.item)
            m = classifier_metrics(crops, np.repeat(labels, cfg.frames), ref=ref, model=clf)
            row.update(frame_accuracy=m["accuracy"], fid=m["fid"])
            preds[name] = classifier_outputs(clf, crops)[1].argmax(1)
        rows.append(row)
    for row in rows:
        name = row["model"]
        if name in samples:
            if name in preds:
                row["paired_agreement"] = float((preds[name] == preds["base"]).mean())
            mse = ((samples[name] - samples["base"]) ** 2).flatten(1).mean(1).clamp_min(1e-10)  # [-1, 1] scale
            row["paired_psnr"] = None if name == "base" else float((10 * torch.log10(4.0 / mse)).mean())
    n_ad, share = adapter.size(adapted)
    report = {"config": asdict(cfg), "threads": torch.get_num_threads(), "seconds": time.perf_counter() - t_start,
              "train": {"base": {"steps": base_run.step, "loss": base_run.loss, "seconds": base_s},
                        "adapter": {"steps": ad_run.step, "loss": ad_run.loss, "seconds": ad_s, "calls": len(calls),
                                    "params": n_ad, "share": share}},
              "rows": rows}
    _grid(samples, real, out)
    rep = format_report(report)
    rep.write(out, html=False, data=report)
    (out / "results.json").write_text(json.dumps(report, indent=2))
    log(rep.markdown())
    return report


def _grid(samples: dict, real: torch.Tensor, out: Path) -> None:
    """One image per model: 8 clips (rows) x frames (columns)."""
    from ..utils.images import save_grid

    for name, clips_ in [*samples.items(), ("real", real)]:
        k = min(8, len(clips_))
        frames = clips_[:k, :, :].permute(0, 2, 1, 3, 4).reshape(-1, 1, clips_.shape[-2], clips_.shape[-1])
        save_grid(frames, out / f"clips-{name.replace(' ', '-')}.png", nrow=clips_.shape[2], scale=2)


def format_report(r: dict) -> Report:
    c, t = r["config"], r["train"]
    rep = Report(f"ppflow video demo ({r['seconds']:.0f} s, {r['threads']} thread(s))")
    rep.text(f"Tiny Wan ({c['layers']} blocks, width {32 * c['heads']}) trained {c['base_steps']} steps (batch "
             f"{c['batch_size']}, {t['base']['seconds']:.0f} s) on {c['train_clips']} moving Fashion-MNIST clips "
             f"({c['frames']} frames of {c['size']} px, {c.get('latent_factor', 2)}x{c.get('latent_factor', 2)} "
             f"space-to-depth), text dropout {c.get('text_dropout', 0)}, CFG {c.get('cfg_scale', 1)}. Adapter: schedule "
             f"{c['schedule']}, coarse output {c.get('coarse_output', 'v')}, LoRA rank {c['adapter_rank']}, "
             f"{t['adapter']['params'] / 1e3:.1f}k parameters "
             f"({100 * t['adapter']['share']:.1f}% of the base), distilled {c['adapter_steps']} steps "
             f"({t['adapter']['seconds']:.0f} s) from {t['adapter']['calls']} recorded coarse-stage calls of the "
             f"base (data-free)" + (f", CFG {c['adapter_guided']} folded into the coarse stages (no unconditional "
                                     "coarse forward)" if c.get("adapter_guided") else "")
             + f". Euler {c['sample_steps']} steps, boundaries on the grid.")

    def f(v, fmt):
        return "-" if v is None else format(v, fmt)

    rep.table(["model", "schedule", "frame accuracy", "frame FID", "direction accuracy", "paired agreement",
               "paired PSNR (dB)", "speed-up", "FLOPs bound"],
              [[w["model"], w["schedule"], f(w.get("frame_accuracy"), ".3f"), f(w.get("fid"), ".2f"),
                f(w["direction_accuracy"], ".3f"), f(w.get("paired_agreement"), ".3f"), f(w.get("paired_psnr"), ".1f"),
                f(w.get("speedup"), ".2f"), f(w.get("flops_bound"), ".2f")] for w in r["rows"]])
    sens = [w for w in r["rows"] if "direction_sensitivity" in w]
    if sens:
        rep.text("Word sensitivity (how far the velocity moves when one caption word changes, relative, on fixed "
                 "noise at sigma 0.9, 0.6, 0.3): " + "; ".join(
                     f"{w['model']}: class {w['class_sensitivity']:.4f}, direction {w['direction_sensitivity']:.4f}"
                     for w in sens) + ".")
    rep.text("Frame accuracy / FID: the Fashion-MNIST classifier on each frame's item, cropped at its intensity "
             "centroid (real clips give the ceiling). Direction: the centroid's motion from the first to the last "
             "frame. Paired: both models sample the same prompts from the same noise. Speed-up: median wall time "
             "of alternating sampling runs; FLOPs bound: executed FLOPs of one sampling run (FlopCounterMode).")
    return rep
