"""`ppflow flux demo`: the FLUX fine-tuning recipe end to end on CPU, at toy scale.

1. A tiny FLUX-architecture transformer is trained from scratch (one stage, `ppflow flux train --train.mode
   full`) on Fashion-MNIST with captions made from the class names ("a photo of a sneaker", ...), encoded by
   tiny random CLIP / T5 text models built here with a word-level tokenizer. Default "latent": pixel space at
   16 x 16 (the padded 32 px image average-pooled 2x; FLUX's packing gives 8 x 8 tokens of 4 channels, a coarse
   token 16 channels). `space_to_depth=True` uses the 32 px image in 2x2 space-to-depth instead (4 x 16 x 16,
   tokens of 16 channels, coarse 64 -- as wide as the demo model, which left its coarse stage too little room
   to pass the noise through: measured, see docs/flux.md).
2. That base is adapted to PPFlux (ppf2, pooled average/copy init) and fine-tuned for a fraction of the base
   steps -- against the same base fine-tuned as many steps with a one-stage schedule (the paper's FLUX-ft).
3. Both sample the class prompts with the same Euler loop (PPFluxPipeline's grid and stage rule); the report
   has the measured sampling speed-up beside the FLOPs bound, classifier accuracy of the prompts and
   classifier FID (ppflow.eval.classifier), and one image grid per model (a row per prompt).
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

from ..bench.timing import alternate, executed_flops, stopwatch
from ..data.fashion_mnist import CLASSES, load_fashion_mnist, to_model_space
from ..sampling.sigmas import FluxShift
from ..utils.report import Report

CLASS_WORDS = tuple(c.split("/")[0].lower() for c in CLASSES)  # 't-shirt', 'trouser', ..., 'ankle boot'
TEMPLATES = ("a photo of a {}", "a picture of a {}", "an image of a {}", "a {}")
SPECIALS = ("<pad>", "<bos>", "<unk>", "<eos>")  # ids 0..3; CLIP pools at the first <eos>


@dataclass
class DemoConfig:
    """Sizes of one demo run (the full defaults fit minutes on one CPU core; `quick()` is a smoke test)."""

    train_images: int = 20000  # Fashion-MNIST training images cached
    image_size: int = 16  # pixel-space side (16: the 32 px padded image pooled 2x); 32 with space_to_depth
    space_to_depth: bool = False  # 32 px image as a (4, 16, 16) latent instead of pixels
    base_steps: int = 900  # from-scratch training of the one-stage base
    finetune_steps: int = 270  # PPFlux and FLUX-ft fine-tunes (30% of base_steps)
    batch_size: int = 64
    lr: float = 1e-3
    finetune_lr: float = 3e-4
    coarse_output: str = "noise_skip"  # PPFlux coarse stages: 'noise_skip' or the paper's 'v' (measured: prompt
    # accuracy 0.708 vs 0.692, classifier FID 59.8 vs 62.7, same base and FLUX-ft; docs/flux.md)
    extras_lr_scale: float = 30.0  # the new coarse projections learn 30x faster (measured: at 1x the coarse stage's
    # loss went 1.08 -> 0.92 in 150 steps, at 10x to 0.23, at 30x to 0.21; FLUX-ft's at those sigmas: 0.17)
    dim_heads: int = 2  # attention heads of 32 dims
    double_blocks: int = 2
    single_blocks: int = 2
    sample_steps: int = 16  # Euler steps (the ppf2 boundary on the grid: half coarse)
    eval_per_class: int = 50  # samples per prompt for accuracy and FID
    timing_batch: int = 250  # images per timed sampling run (large enough that the matrix products dominate)
    timing_repeats: int = 3
    metrics: bool = True  # classifier accuracy / FID (trains the Fashion-MNIST CNN once if not cached)
    seed: int = 0
    adapter: bool = True  # also convert the base with a data-free distilled speed adapter (flux_adapter.py)
    adapter_schedule: str = "ppf2"
    adapter_trajectories: int = 512  # recorded teacher sampling runs (prompts only)
    adapter_batch: int = 8  # prompts per recorded run
    adapter_steps: int = 6400  # distillation steps (probed, docs/flux.md: 800 -> FID 1.11x the base's, 6400 -> 1.035x)
    adapter_calls_per_step: int = 8  # recorded calls per step (x adapter_batch samples)
    adapter_rank: int = 16  # rank 32: FID 1.033x but 1.32x speed (its unmerged LoRA doubles a 64-wide coarse layer)
    adapter_lr: float = 3e-3

    @classmethod
    def quick(cls) -> DemoConfig:
        return cls(train_images=256, base_steps=8, finetune_steps=4, batch_size=16, sample_steps=4,
                   eval_per_class=2, timing_batch=16, timing_repeats=2, metrics=False, adapter_trajectories=2,
                   adapter_batch=2, adapter_steps=4, adapter_calls_per_step=2, adapter_rank=2)


class WordTokenizer:
    """Whitespace word-level tokenizer over a fixed vocabulary; pads to `max_length` (ids (B, max_length))."""

    def __init__(self, words: list[str], max_length: int, bos: bool):
        self.vocab = {w: i for i, w in enumerate([*SPECIALS, *words])}
        self.max_length, self.bos = max_length, bos

    def __call__(self, texts: list[str]) -> torch.Tensor:
        out = torch.zeros(len(texts), self.max_length, dtype=torch.long)
        for i, text in enumerate(texts):
            ids = [self.vocab.get(w, 2) for w in text.lower().split()]
            ids = ([1] if self.bos else []) + ids[: self.max_length - 1 - self.bos] + [3]
            out[i, : len(ids)] = torch.tensor(ids)
        return out


class TinyTextEncoders:
    """FLUX's two text encoders at toy size, random and frozen: CLIP (pooled) + T5 (sequence), dim 32."""

    def __init__(self, seed: int = 0, dim: int = 32):
        from transformers import CLIPTextConfig, CLIPTextModel, T5Config, T5EncoderModel

        words = sorted({w for c in CLASS_WORDS for t in TEMPLATES for w in t.format(c).split()})
        n = len(words) + len(SPECIALS)
        longest = max(len(t.format(c).split()) for c in CLASS_WORDS for t in TEMPLATES)
        self.clip_tok, self.t5_tok = WordTokenizer(words, longest + 2, True), WordTokenizer(words, longest + 1, False)
        torch.manual_seed(seed)
        self.clip = CLIPTextModel(CLIPTextConfig(vocab_size=n, hidden_size=dim, intermediate_size=2 * dim,
                                                 num_hidden_layers=1, num_attention_heads=2, projection_dim=dim,
                                                 max_position_embeddings=self.clip_tok.max_length, bos_token_id=1,
                                                 eos_token_id=3, pad_token_id=0)).eval()
        self.t5 = T5EncoderModel(T5Config(vocab_size=n, d_model=dim, d_ff=2 * dim, d_kv=16, num_layers=1, num_heads=2,
                                          relative_attention_num_buckets=8, pad_token_id=0, eos_token_id=3,
                                          decoder_start_token_id=0)).eval()

    @torch.no_grad()
    def __call__(self, texts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """(T5 embeddings (B, T, 32), CLIP pooled (B, 32)), as FluxPipeline.encode_prompt returns them."""
        pooled = self.clip(self.clip_tok(texts)).pooler_output  # (B, 32)
        return self.t5(self.t5_tok(texts)).last_hidden_state, pooled  # (B, T, 32)


def space_to_depth(x: torch.Tensor) -> torch.Tensor:
    """(N, 1, 32, 32) -> (N, 4, 16, 16): the demo's 'latent'."""
    N, C, H, W = x.shape
    return x.view(N, C, H // 2, 2, W // 2, 2).permute(0, 1, 3, 5, 2, 4).reshape(N, C * 4, H // 2, W // 2)


def depth_to_space(z: torch.Tensor) -> torch.Tensor:
    N, C4, h, w = z.shape
    return z.view(N, C4 // 4, 2, 2, h, w).permute(0, 1, 4, 2, 5, 3).reshape(N, C4 // 4, 2 * h, 2 * w)


def to_pixels(images: np.ndarray, cfg: DemoConfig) -> torch.Tensor:
    """uint8 (N, 28, 28) -> (N, 1, S, S) in [-1, 1]: padded to 32 px, average-pooled to `image_size`."""
    x = to_model_space(images)  # (N, 1, 32, 32)
    return x if cfg.image_size == 32 else torch.nn.functional.avg_pool2d(x, 32 // cfg.image_size)


def to_latent(x: torch.Tensor, cfg: DemoConfig) -> torch.Tensor:
    return space_to_depth(x) if cfg.space_to_depth else x  # (N, 4, 16, 16) or (N, 1, S, S)


def from_latent(z: torch.Tensor, cfg: DemoConfig) -> torch.Tensor:
    return depth_to_space(z) if cfg.space_to_depth else z  # (N, 1, S, S)


def latent_shape(cfg: DemoConfig) -> tuple[int, int]:
    """(channels, side) of the demo's latent."""
    if cfg.space_to_depth and cfg.image_size != 32:
        raise ValueError("space_to_depth needs image_size 32")
    return (4, 16) if cfg.space_to_depth else (1, cfg.image_size)


def to_uint8_32(x: torch.Tensor) -> np.ndarray:
    """(N, 1, S, S) in [-1, 1] -> uint8 (N, 32, 32) for the classifier (nearest upsampling)."""
    x = torch.nn.functional.interpolate(x, size=32, mode="nearest") if x.shape[-1] != 32 else x
    return ((x[:, 0] + 1) * 127.5).round().clamp(0, 255).to(torch.uint8).numpy()


def build_cache(cfg: DemoConfig, encoders: TinyTextEncoders):
    """Fashion-MNIST images with class-name captions, through the shared cache builder."""
    from ..flux.captions import build_cache as cache_rows

    images, labels = load_fashion_mnist("train")
    g = np.random.default_rng(cfg.seed)
    rows = g.permutation(len(images))[: cfg.train_images]
    x = to_pixels(images[rows], cfg)  # (N, 1, S, S)
    captions = [TEMPLATES[g.integers(len(TEMPLATES))].format(CLASS_WORDS[labels[i]]) for i in rows]
    how = "space-to-depth 2x2" if cfg.space_to_depth else "pixels"
    return cache_rows(captions, lambda i: x[i], encoders, lambda b: to_latent(b, cfg), batch_size=1000,
                      meta={"resolution": cfg.image_size, "source": f"fashion-mnist {cfg.image_size} px ({how})"})


def tiny_base(cfg: DemoConfig):
    from diffusers import FluxTransformer2DModel

    torch.manual_seed(cfg.seed)
    return FluxTransformer2DModel(patch_size=1, in_channels=4 * latent_shape(cfg)[0], num_layers=cfg.double_blocks,
                                  num_single_layers=cfg.single_blocks, attention_head_dim=32,
                                  num_attention_heads=cfg.dim_heads, joint_attention_dim=32, pooled_projection_dim=32,
                                  guidance_embeds=True, axes_dims_rope=(8, 12, 12))


def _train(cfg: DemoConfig, out: Path, base: str, schedule: str, steps: int, lr: float, cache: str, name: str):
    from ..flux.train import train_flux
    from ..flux.train_config import FluxTrainConfig

    t = FluxTrainConfig(out=str(out / name), seed=cfg.seed, batch_size=cfg.batch_size, max_steps=steps,
                        log_every=max(1, steps // 20), save_every=steps, device="cpu", progress=False)
    t.model.base, t.model.schedule, t.data.cache, t.data.resolution = base, schedule, cache, cfg.image_size
    t.train.mode, t.optim.lr, t.optim.warmup_steps = "full", lr, min(100, steps // 10)
    t.ema.decay, t.ema.warmup = 0.999, True
    t.train.extras_lr_scale, t.model.coarse_output = cfg.extras_lr_scale, cfg.coarse_output
    start = time.perf_counter()
    result = train_flux(t)
    return result, time.perf_counter() - start


@torch.no_grad()
def sample(model, encoders: TinyTextEncoders, prompts: list[str], steps: int, seed: int,
           cfg: DemoConfig, schedule: str | None = None) -> tuple[torch.Tensor, dict]:
    """Euler over PPFluxPipeline's grid (boundaries on it, FLUX's shift), one stage per step; images (N, 1, S, S).

    `model`: a PPFluxTransformer (stage pinned per step), or a diffusers FLUX with or without the PPFlow hook
    (the hook picks the stage from the timestep); `schedule` puts a plain model's grid on that schedule's
    boundaries (the teacher's recorded runs)."""
    from diffusers import FluxPipeline

    from ..flux.bench import denoise
    from ..integrations.diffusers import StagePlan, adapter_of
    from ..sampling.sigmas import inverse_time_shift, stage_grid, step_stages, time_shift

    C, side = latent_shape(cfg)
    grid = (side // 2, side // 2)
    L = grid[0] * grid[1]
    ppflux = hasattr(model, "ppflow_config")
    hook = None if ppflux else adapter_of(model)
    if ppflux:
        mu, net = model.ppflow_config.shift.mu(L), model.sigma_boundaries(L)
    else:
        shift = hook.config.shift if hook is not None else FluxShift()
        plan = hook.plan if hook is not None else (StagePlan.parse(schedule, (2, 2)) if schedule else None)
        mu, net = shift.mu(L), (plan.sigma_boundaries("unshifted", shift, L) if plan else ())
    bounds = [inverse_time_shift(mu, b) for b in net]
    unshifted = stage_grid(steps, bounds)
    stages = step_stages(unshifted, bounds)
    sigmas = [time_shift(mu, float(s)) for s in unshifted] + [0.0]
    embeds, pooled = encoders(prompts)
    B = len(prompts)
    cond = {"encoder_hidden_states": embeds, "pooled_projections": pooled,
            "img_ids": FluxPipeline._prepare_latent_image_ids(B, grid[0], grid[1], "cpu", torch.float32),
            "txt_ids": torch.zeros(embeds.shape[1], 3), "guidance": torch.full((B,), 3.5)}
    noise = torch.randn(B, L, 4 * C, generator=torch.Generator().manual_seed(seed))  # (B, L, 4C)
    x = denoise(model, noise, sigmas, stages if ppflux else None, cond, grid)  # (B, L, 4C)
    z = x.view(B, grid[0], grid[1], C, 2, 2).permute(0, 3, 1, 4, 2, 5).reshape(B, C, side, side)  # unpack
    return from_latent(z, cfg).clamp(-1, 1), {"stages": stages, "sigmas": sigmas[:-1]}


def load_tuned(folder: Path):
    from ..flux.transformer import PPFluxTransformer

    return PPFluxTransformer.from_pretrained(folder).eval()


def run_demo(quick: bool = False, out: str | None = None, threads: int | None = 1, seed: int = 0,
             config: DemoConfig | None = None, log=print) -> dict:
    """Train, adapt, fine-tune, sample, measure; writes report.json, report.md and grids into `out`."""
    from ..utils.images import save_grid
    from .flux_adapter import result_rows

    cfg = config or (DemoConfig.quick() if quick else DemoConfig())
    cfg.seed = seed
    out_dir = Path(out or ("runs/flux-demo-quick" if quick else "runs/flux-demo"))
    out_dir.mkdir(parents=True, exist_ok=True)
    if threads:
        torch.set_num_threads(threads)
    t_start = time.perf_counter()
    enc = TinyTextEncoders(cfg.seed)
    cache = build_cache(cfg, enc)
    cache_path = str(cache.save(out_dir / "cache.safetensors"))
    tiny_base(cfg).save_pretrained(out_dir / "init")
    log(f"cached {len(cache)} captioned images; training the one-stage base for {cfg.base_steps} steps")
    base_run, base_s = _train(cfg, out_dir, str(out_dir / "init"), "1:2x2", cfg.base_steps, cfg.lr, cache_path, "base")
    base_dir = str(base_run.ema_dir / "transformer")
    runs = {"base": (base_run, base_s)}
    for name, schedule in (("ppflux", "ppf2"), ("flux-ft", "1:2x2")):
        log(f"fine-tuning {name} ({schedule}) for {cfg.finetune_steps} steps from the base")
        runs[name] = _train(cfg, out_dir, base_dir, schedule, cfg.finetune_steps, cfg.finetune_lr, cache_path, name)
    models = {name: load_tuned(r.ema_dir) for name, (r, _) in runs.items()}
    adapter_info = None
    if cfg.adapter:
        from .flux_adapter import distill_adapter, record_teacher

        log(f"recording the base's own sampling runs ({cfg.adapter_trajectories} x {cfg.adapter_batch} prompts) and "
            f"distilling a {cfg.adapter_schedule} speed adapter for {cfg.adapter_steps} steps (data-free)")
        calls, n_calls, teacher_forwards = record_teacher(base_dir, enc, cfg, out_dir, sample, CLASS_WORDS,
                                                          TEMPLATES, log)
        models["adapter"], ad_run, ad_s = distill_adapter(base_dir, calls, cfg, out_dir)
        runs["adapter"] = (ad_run, ad_s)
        adapter_info = {"calls": n_calls, "teacher_forwards": teacher_forwards}

    # ---- sampling speed: alternate each converted model with its reference on the same prompts, median of repeats
    prompts_t = [f"a photo of a {CLASS_WORDS[i % 10]}" for i in range(cfg.timing_batch)]
    side = latent_shape(cfg)[1]
    speeds = {}
    pairs = [("ppflux", "flux-ft")] + ([("adapter", "base")] if cfg.adapter else [])
    for fast, ref in pairs:
        stages = []

        def run(name: str, r: int, fast=fast, stages=stages) -> float:
            seconds, (_, info) = stopwatch(torch.device("cpu"), sample, models[name], enc, prompts_t,
                                           cfg.sample_steps, cfg.seed + 99, cfg)
            if name == fast:
                stages[:] = info["stages"]
            return seconds

        timings = alternate([ref, fast], run, cfg.timing_repeats, warmup=1)
        fl = {name: executed_flops(sample, models[name], enc, prompts_t[:8], cfg.sample_steps, cfg.seed + 99, cfg)
              for name in (ref, fast)}
        sp = {"fast_s": timings.summary(fast)["seconds"], "ref_s": timings.summary(ref)["seconds"],
              "bound": fl[ref] / fl[fast], "stages": stages, "reference": ref}
        sp["speedup"] = sp["ref_s"] / sp["fast_s"]
        sp["efficiency"] = sp["speedup"] / sp["bound"]
        speeds[fast] = sp
    speed = {"ppflux_s": speeds["ppflux"]["fast_s"], "flux_ft_s": speeds["ppflux"]["ref_s"],
             **{k: speeds["ppflux"][k] for k in ("bound", "stages", "speedup", "efficiency")}}

    # ---- quality: every class prompt, the same noise for every model (paired with the base)
    labels = np.repeat(np.arange(10), cfg.eval_per_class)
    if cfg.metrics:  # FID reference: the test split at the demo's resolution (so FID measures the generator)
        from ..eval.classifier import classifier_metrics, classifier_outputs, load_classifier

        clf = load_classifier()
        test_x, test_y = load_fashion_mnist("test")
        ref = to_uint8_32(to_pixels(test_x[:5000], cfg))
        real, real_labels = to_uint8_32(to_pixels(test_x[5000:], cfg)), test_y[5000:]
    prompts = [f"a photo of a {CLASS_WORDS[k]}" for k in labels]
    quality, samples, preds = {}, {}, {}
    for name, model in models.items():
        images = torch.cat([sample(model, enc, prompts[i: i + 500], cfg.sample_steps, cfg.seed + i, cfg)[0]
                            for i in range(0, len(prompts), 500)])  # (N, 1, S, S)
        per_row = min(8, cfg.eval_per_class)
        rows = torch.cat([images[k * cfg.eval_per_class: k * cfg.eval_per_class + per_row] for k in range(10)])
        save_grid(rows, out_dir / f"grid-{name}.png", nrow=per_row, scale=64 // cfg.image_size)
        q = {"n": len(images)}
        samples[name] = to_uint8_32(images)
        if cfg.metrics:
            m = classifier_metrics(samples[name], labels, ref=ref, model=clf)
            preds[name] = classifier_outputs(clf, samples[name])[1].argmax(1)
            q.update(accuracy=m["accuracy"], fid=m["fid"], classifier_test_accuracy=m["classifier_test_accuracy"])
        quality[name] = q
    for name, q in quality.items():  # paired with the base: same prompts, same noise
        if name in preds and "base" in preds:
            q["paired_agreement"] = float((preds[name] == preds["base"]).mean())
        mse = ((samples[name].astype(np.float64) - samples["base"].astype(np.float64)) ** 2).reshape(len(labels), -1)
        q["paired_psnr"] = None if name == "base" else float((10 * np.log10(255.0 ** 2 / np.maximum(
            mse.mean(1), 1e-10))).mean())
    if cfg.metrics:  # the ceiling: real test images at the demo's resolution, and their classifier FID to ref
        m = classifier_metrics(real[: len(labels)], real_labels[: len(labels)], ref=ref, model=clf)
        quality["real test images"] = {"n": len(labels), "accuracy": m["accuracy"], "fid": m["fid"]}
    report = {"config": asdict(cfg), "threads": torch.get_num_threads(), "seconds": time.perf_counter() - t_start,
              "train": {name: {"steps": r.step, "final_loss": r.loss, "seconds": s, "steps_per_sec": r.steps_per_sec}
                        for name, (r, s) in runs.items()},
              "speed": speed, "speeds": speeds, "quality": quality, "adapter": adapter_info}
    report["text_tokens"] = enc.t5_tok.max_length
    report["rows"] = result_rows(report, models, side)
    rep = format_report(report)
    rep.write(out_dir, html=False, data=report)
    log(rep.markdown())
    return report


def format_report(r: dict) -> Report:
    """The demo's report: training, prompt accuracy and classifier FID per model, then the sampling speed."""
    c, s = r["config"], r["speed"]
    rep = Report(f"ppflow flux demo ({r['seconds']:.0f} s, {r['threads']} thread(s))")
    rep.text(f"base: tiny FLUX ({c['double_blocks']} double + {c['single_blocks']} single blocks, dim "
             f"{32 * c['dim_heads']}) from scratch on {c['image_size']} px Fashion-MNIST "
             f"({'space-to-depth' if c['space_to_depth'] else 'pixels'}), {c['base_steps']} steps; fine-tunes "
             f"{c['finetune_steps']} steps each; batch {c['batch_size']}; {c['sample_steps']} Euler steps; PPFlux coarse "
             f"output {c.get('coarse_output', 'v')}")
    rows = []
    for name in [*r["train"], *(k for k in r["quality"] if k not in r["train"])]:
        t, q = r["train"].get(name), r["quality"].get(name, {})
        rows.append([name, f"{t['seconds']:.0f}" if t else "-", f"{t['steps_per_sec']:.2f}" if t else "-",
                     f"{t['final_loss']:.4f}" if t and t["final_loss"] is not None else "-",
                     f"{q['accuracy']:.3f}" if q.get("accuracy") is not None else "-",
                     f"{q['fid']:.2f}" if q.get("fid") is not None else "-"])
    rep.table(["model", "train s", "steps/s", "final loss", "prompt accuracy", "classifier FID"], rows)
    rep.text(f"sampling {c['timing_batch']} images: PPFlux {s['ppflux_s']:.3f} s vs FLUX-ft {s['flux_ft_s']:.3f} s "
             f"(median of {c['timing_repeats']}): speed-up {s['speedup']:.2f}x, executed-FLOPs bound {s['bound']:.2f}x, "
             f"efficiency {s['efficiency']:.2f}; stages per step {s['stages']}")
    ad = r.get("speeds", {}).get("adapter")
    if ad:
        rep.text(f"sampling {c['timing_batch']} images: speed adapter {ad['fast_s']:.3f} s vs the base itself "
                 f"{ad['ref_s']:.3f} s: speed-up {ad['speedup']:.2f}x, executed-FLOPs bound {ad['bound']:.2f}x; the adapter was "
                 f"distilled data-free from {r['adapter']['calls']} recorded coarse-stage calls of the base")
    if r.get("rows"):
        def f(v, fmt):
            return "-" if v is None else format(v, fmt)

        rep.table(["model", "method", "data-free", "train compute (x base)", "classifier FID", "prompt accuracy",
                   "paired agreement", "paired PSNR (dB)", "extra params (% of base)", "speed-up", "vs", "FLOPs bound"],
                  [[w["model"], w["method"], "yes" if w["data_free"] else "no", f(w["train_compute"], ".3f"),
                    f(w["classifier_fid"], ".2f"), f(w["prompt_accuracy"], ".3f"), f(w["paired_agreement"], ".3f"),
                    f(w["paired_psnr"], ".1f"), f(100 * w["extra_params"], ".1f"), f(w["speedup"], ".2f"),
                    w["reference"] or "-", f(w["flops_bound"], ".2f")] for w in r["rows"]])
        rep.text("Paired: every model samples the same prompts from the same noise; agreement is the share of samples "
                 "the classifier puts in the same class as the base's sample, PSNR the mean over samples between the "
                 "two images. The adapter's speed-up is against the base itself, PPFlux's against FLUX-ft.")
    return rep
