"""Denoising speed of a PPFlux transformer against its FLUX base on the same inputs, next to the FLOPs bound.

Both run the same Euler loop over PPFluxPipeline's sigmas for the resolution (shifted as FluxPipeline does);
the base at every step, the PPFlux at each step's stage. Runs alternate (the order rotates every repeat) and
the medians are compared: speed-up = base time / PPFlux time, bound = base FLOPs / PPFlux FLOPs of the
forwards made, efficiency = speed-up / bound. Weights are random: speed does not depend on them.
"""

from __future__ import annotations

import contextlib
import dataclasses
from dataclasses import dataclass

import torch

from ..bench.timing import ESTIMATORS, alternate, stopwatch
from ..sampling.sigmas import FluxShift, stage_grid, step_stages, time_shift, unshifted_boundaries
from ..sampling.solvers import euler
from .flops import ARCHS, TEXT_TOKENS, FluxArch, counts_flops, packed_grid

SIZES = ("tiny", "dev")
DEFAULT_RESOLUTION = {"tiny": 512, "dev": 1024}


@dataclass
class FluxBenchConfig:
    """What to time; `tiny` is a CPU-sized random FLUX, `dev` the FLUX.1-dev shape (bf16, a GPU)."""

    size: str = "tiny"  # 'tiny' (2 double + 4 single blocks, dim 256) or 'dev' (19 + 38 blocks, dim 3072)
    schedule: str = "ppf2"  # PPFlow schedule of the PPFlux transformer
    resolution: int | None = None  # image side in pixels (default: tiny 512, dev 1024)
    text_tokens: int | None = None  # T5 tokens (default: tiny 64, dev 512)
    batch: int = 1  # images per step
    steps: int = 10  # denoising steps (the boundary on the grid)
    repeats: int = 5  # timed runs per model (median taken)
    warmup: int = 1  # untimed runs per model first
    estimator: str = "median"  # 'median' or 'min' of the timed runs
    threads: int | None = None  # torch intra-op threads (None: leave as is)
    device: str = "cpu"
    dtype: str | None = None  # float32 / bfloat16 (default: tiny float32, dev bfloat16)
    compile: bool = False  # torch.compile both models (one graph per stage for the PPFlux)
    cache: float | None = None  # also time both with diffusers' FirstBlockCache at this threshold
    seed: int = 0


def build_base(arch: FluxArch, device: torch.device, dtype: torch.dtype, seed: int = 0):
    """A FluxTransformer2DModel of `arch` with random weights, built without a CPU copy first (meta device)."""
    from diffusers import FluxTransformer2DModel

    kwargs = {k: getattr(arch, k) for k in ("in_channels", "num_layers", "num_single_layers", "num_attention_heads",
                                             "attention_head_dim", "joint_attention_dim", "pooled_projection_dim",
                                             "guidance_embeds", "axes_dims_rope")}
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)  # parameters created in `dtype`, on no device
    try:
        with torch.device("meta"):
            model = FluxTransformer2DModel(patch_size=1, **kwargs)
    finally:
        torch.set_default_dtype(previous)
    model = model.to_empty(device=device)
    g = torch.Generator(device=device).manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0.0, 0.02, generator=g)
    return model.eval()


def denoise(model, x: torch.Tensor, sigmas: list[float], stages: list[int] | None, cond: dict,
            grid: tuple[int, int]) -> torch.Tensor:
    """FluxPipeline's Euler loop x <- x + (sigma_next - sigma) * v, as `sampling.solvers.euler` over t = 1 - sigma.

    `stages[i]`: the PPFlux stage of step i (None: a base FLUX, no stages); x (B, L, C) packed latents.
    """

    def velocity(x: torch.Tensor, t: torch.Tensor, stage: int | None) -> torch.Tensor:
        extra = {} if stage is None else {"stage": stage, "grid": grid}
        return -model(hidden_states=x, timestep=(1 - t).to(x.dtype), return_dict=False, **cond, **extra)[0]

    t = 1 - torch.tensor(sigmas, dtype=torch.float64)  # FLUX's sigma runs 1 -> 0, ppflow's t 0 -> 1
    return euler(velocity, x, t, stages or [None] * (len(sigmas) - 1))


def bench_flux(cfg: FluxBenchConfig, log=None) -> dict:
    """Time base FLUX vs PPFlux denoising loops; returns settings, runs and speed-up / bound / efficiency."""
    from diffusers import FluxPipeline

    from .transformer import PPFluxTransformer

    if cfg.size not in SIZES:
        raise ValueError(f"unknown size {cfg.size!r}; choose one of {SIZES}")
    if cfg.estimator not in ESTIMATORS:
        raise ValueError(f"unknown estimator {cfg.estimator!r}; choose median or min")
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    device = torch.device(cfg.device)
    dtype = getattr(torch, cfg.dtype or ("bfloat16" if cfg.size == "dev" else "float32"))
    res = cfg.resolution or DEFAULT_RESOLUTION[cfg.size]
    T = cfg.text_tokens or TEXT_TOKENS[cfg.size]
    arch, grid = ARCHS[cfg.size], packed_grid(res)
    base = build_base(arch, device, dtype, cfg.seed)
    ppf = PPFluxTransformer.from_flux(base, cfg.schedule)
    ppf.schedule.check_latent(2 * grid[0], 2 * grid[1])
    L = grid[0] * grid[1]
    mu = FluxShift().mu(L)
    bounds = unshifted_boundaries(ppf.schedule)
    unshifted = stage_grid(cfg.steps, bounds)
    stages = step_stages(unshifted, bounds)
    sigmas = [time_shift(mu, float(s)) for s in unshifted] + [0.0]
    g = torch.Generator(device=device).manual_seed(cfg.seed)
    B = cfg.batch
    cond = {
        "encoder_hidden_states": torch.randn(B, T, arch.joint_attention_dim, generator=g, device=device, dtype=dtype),
        "pooled_projections": torch.randn(B, arch.pooled_projection_dim, generator=g, device=device, dtype=dtype),
        "img_ids": FluxPipeline._prepare_latent_image_ids(B, grid[0], grid[1], device, dtype),
        "txt_ids": torch.zeros(T, 3, device=device, dtype=dtype),
        "guidance": torch.full((B,), 3.5, device=device) if arch.guidance_embeds else None,
    }
    noise = torch.randn(B, L, arch.in_channels, generator=g, device=device, dtype=dtype)
    ppf_name = f"PPFlux {cfg.schedule}"
    models = {"FLUX": (base, None), ppf_name: (ppf, stages)}
    if cfg.compile:
        if cfg.cache is not None:
            raise ValueError("--cache and --compile together are not supported by this benchmark")
        models = {k: (torch.compile(m, dynamic=False), s) for k, (m, s) in models.items()}
    cached = {}
    if cfg.cache is not None:  # the same models with diffusers' FirstBlockCache on the base's blocks
        cached = {f"FLUX + FBC {cfg.cache:g}": "FLUX", f"{ppf_name} + FBC {cfg.cache:g}": ppf_name}
    full_steps: dict[str, int] = {}

    def run(name: str, r: int) -> float:
        model, st = models[cached.get(name, name)]
        ctx = contextlib.nullcontext()
        if name in cached:
            from diffusers import FirstBlockCacheConfig

            base.enable_cache(FirstBlockCacheConfig(threshold=cfg.cache))
            ctx = model.cache_context("cond")
        computed = []  # steps whose last block ran (FirstBlockCache skips the rest when it reuses)
        last = base.single_transformer_blocks[-1].proj_mlp
        hook = last.register_forward_pre_hook(lambda m, a: computed.append(1)) if cached else None
        try:
            with ctx:
                elapsed, _ = stopwatch(device, denoise, model, noise, sigmas, st, cond, grid)
        finally:
            if hook is not None:
                hook.remove()
            if name in cached:
                base.disable_cache()
        if cached:
            full_steps[name] = len(computed)
        return elapsed

    names = [*models, *cached]
    with torch.inference_mode():
        timings = alternate(names, run, cfg.repeats, cfg.warmup, name="bench flux", log=log)
    counts = [B * stages.count(s) for s in range(ppf.schedule.num_stages)]
    fl = counts_flops(arch, ppf.schedule, grid, T, counts)
    runs = {n: timings.summary(n, cfg.estimator) for n in names}
    base_s, ppf_s = runs[names[0]]["seconds"], runs[names[1]]["seconds"]
    speedup, bound = base_s / ppf_s, fl["baseline_total"] / fl["total"]
    result = {
        "settings": {**dataclasses.asdict(cfg), "resolution": res, "text_tokens": T, "dtype": str(dtype),
                     "image_tokens": L, "threads": torch.get_num_threads(), "torch": torch.__version__,
                     "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"},
        "stages": stages, "sigmas": sigmas[:-1],
        "runs": runs,
        "forwards": counts, "gflops": fl["total"] / 1e9, "baseline_gflops": fl["baseline_total"] / 1e9,
        "speedup": speedup, "bound": bound, "efficiency": speedup / bound,
        "bound_text_free": fl["baseline_text_free"] / fl["text_free"],
        "full_steps": full_steps,
    }
    if cached:
        flux_c, ppf_c = (runs[n]["seconds"] for n in cached)
        result["cache"] = {"threshold": cfg.cache, "speedup_flux_cache": base_s / flux_c,
                           "speedup_ppflux_cache": base_s / ppf_c,
                           "product": speedup * base_s / flux_c}  # what multiplying the two speed-ups predicts
    return result


def format_report(result: dict) -> str:
    """Plain-text summary of a `bench_flux` result."""
    s = result["settings"]
    lines = [(f"FLUX denoising benchmark: size {s['size']}, {s['resolution']} px ({s['image_tokens']} image + "
              f"{s['text_tokens']} text tokens), batch {s['batch']}, {s['steps']} Euler steps, {s['dtype']}, "
              f"{s['repeats']} repeats ({s['estimator']}), {s['threads']} threads, {s['device_name']}, "
              f"torch {s['torch']}{', compiled' if s['compile'] else ''}"),
             f"stages per step: {result['stages']}",
             f"{'run':<26} {'median s':>9} {'min s':>9}"]
    for name, r in result["runs"].items():
        lines.append(f"{name:<26} {r['median']:>9.3f} {r['min']:>9.3f}")
    if "cache" in result:
        c = result["cache"]
        lines.append(f"FirstBlockCache {c['threshold']:g}: FLUX {c['speedup_flux_cache']:.3f}x, PPFlux "
                     f"{c['speedup_ppflux_cache']:.3f}x (the product of the two alone: {c['product']:.3f}x); "
                     f"steps with every block run: {result['full_steps']}")
    lines.append(f"speed-up {result['speedup']:.3f}  FLOPs bound {result['bound']:.3f} "
                 f"(text-free {result['bound_text_free']:.3f})  efficiency {result['efficiency']:.3f}")
    return "\n".join(lines)
